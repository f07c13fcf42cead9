"""Tests for warpsocket.protocol.codecs and warpsocket.protocol.codes."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from warpsocket.protocol import (
    CODE_INFO,
    JSON_SUBPROTOCOL,
    MSGPACK_SUBPROTOCOL,
    CodecRegistry,
    Envelope,
    ErrorCode,
    JsonCodec,
    MessageType,
    MsgpackCodec,
    ProtocolError,
    default_codecs,
)
from warpsocket.protocol.codes import Use
from warpsocket.protocol.datamodel import check_value

PROTOCOL_DOC = Path(__file__).parent.parent / "docs" / "protocol.md"

EVENT: dict[str, Any] = {"type": "event", "id": "m-1", "timestamp": 1764300000000}


def _pack(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def _nested_empty(depth: int) -> Any:
    """``depth`` levels of lists around nothing."""
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def _nested(depth: int) -> Any:
    """``depth`` levels of lists around an integer."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


class ProtocolErrorAssertions(unittest.TestCase):
    def assertProtocolError(
        self, decode: Callable[[], object], code: ErrorCode, ref: str | None = None
    ) -> ProtocolError:
        try:
            decoded = decode()
        except ProtocolError as exc:
            self.assertEqual((exc.code, exc.ref), (code, ref), exc.message)
            return exc
        self.fail(f"accepted: {decoded!r}")


class JsonCodecTests(ProtocolErrorAssertions):
    def setUp(self) -> None:
        self.codec = JsonCodec()

    def test_attributes(self) -> None:
        self.assertEqual(self.codec.subprotocol, JSON_SUBPROTOCOL)
        self.assertFalse(self.codec.binary)

    def test_replyOnlyFastPathEqualsTheGeneralEncoding(self) -> None:
        """Acks and other type/id/timestamp/ref envelopes take a shortcut in
        ``encode``: byte for byte what the general path produces."""
        general = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        texts = ["c-1", 'a " and \\', "é ünï 字 😀", "tab\tnew\nline\u0001", "x" * 128]
        for kind in (MessageType.ACK, MessageType.HEARTBEAT, MessageType.RESULT):
            for ident in texts:
                for ref in texts:
                    envelope = Envelope(type=kind, id=ident, timestamp=2**53 - 1, ref=ref)
                    expected = general.encode(envelope.to_wire()).encode("utf-8")
                    self.assertEqual(self.codec.encode(envelope), expected)
                    self.assertEqual(self.codec.decode(expected, False), envelope)
        # Anything more than those four fields takes the general path.
        for extra in ({"data": 0}, {"code": 4300}, {"ack": True}, {"ttl": 5}, {"event": "e"}):
            envelope = Envelope(type=MessageType.ACK, id="a", timestamp=1, ref="r", **extra)
            wire = json.loads(self.codec.encode(envelope))
            self.assertEqual(wire, envelope.to_wire())
        with self.assertRaises(UnicodeEncodeError):  # a lone surrogate, as before
            self.codec.encode(Envelope(type=MessageType.ACK, id="\ud800", timestamp=1, ref="r"))

    def test_binaryFrameRejected(self) -> None:
        payload = json.dumps(EVENT).encode("utf-8")
        self.assertProtocolError(lambda: self.codec.decode(payload, True), ErrorCode.BAD_FRAME)

    def test_invalidUtf8Rejected(self) -> None:
        for payload in (
            b'{"type":"event","id":"\xff","timestamp":1}',
            b'{"type":"event","id":"\xc0\xaf","timestamp":1}',  # overlong
            b'{"type":"event","id":"\xed\xa0\x80","timestamp":1}',  # encoded surrogate
            b'{"type":"event","id":"\xe6\x97","timestamp":1}',  # truncated sequence
        ):
            self.assertProtocolError(
                partial(self.codec.decode, payload, False), ErrorCode.BAD_FRAME
            )

    def test_nonFiniteRejected(self) -> None:
        for constant in ("NaN", "Infinity", "-Infinity"):
            payload = f'{{"type":"event","id":"m-1","timestamp":1,"data":{constant}}}'
            self.assertProtocolError(
                partial(self.codec.decode, payload.encode(), False), ErrorCode.BAD_FRAME
            )

    def test_encodeCompactUtf8(self) -> None:
        envelope = Envelope(
            type=MessageType.EVENT,
            id="m-1",
            timestamp=1,
            data={"text": "héllo 日本 😀", "list": [1, 2]},
            ack=True,
        )
        encoded = self.codec.encode(envelope)
        self.assertEqual(
            encoded,
            '{"type":"event","id":"m-1","timestamp":1,'
            '"data":{"text":"héllo 日本 😀","list":[1,2]},"ack":true}'.encode(),
        )
        self.assertNotIn(b"\\u", encoded)
        self.assertEqual(self.codec.decode(encoded, False), envelope)

    def test_encodeNoSpaces(self) -> None:
        envelope = Envelope(type=MessageType.CALL, id="c", timestamp=1, event="f", data={"a": [1]})
        self.assertNotIn(b" ", self.codec.encode(envelope))

    def test_encodeRefusesNaN(self) -> None:
        envelope = Envelope(type=MessageType.EVENT, id="m-1", timestamp=1, data=float("nan"))
        self.assertRaises(ValueError, self.codec.encode, envelope)

    def test_deepNestingIsProtocolError(self) -> None:
        """Deeply nested JSON must be refused with a ProtocolError, not crash the decoder."""
        payload = b'{"type":"event","id":"m-1","timestamp":1,"data":' + b"[" * 100_000
        payload += b"]" * 100_000 + b"}"
        exc = self.assertRaises(ProtocolError, self.codec.decode, payload, False)
        self.assertEqual((exc.code, exc.ref), (ErrorCode.BAD_ENVELOPE, None))

    def test_nestingBeyondTheModelNamesTheId(self) -> None:
        """Nesting the decoder can still read (the old poison, ~970 levels) is
        refused by the data model with 4001 and the envelope's id."""
        for depth in (64, 100, 500):
            payload = b'{"type":"event","id":"m-1","timestamp":1,"data":' + b"[" * depth
            payload += b"]" * depth + b"}"
            exc = self.assertRaises(ProtocolError, self.codec.decode, payload, False)
            self.assertEqual((exc.code, exc.ref), (ErrorCode.BAD_ENVELOPE, "m-1"), depth)
        accepted = b'{"type":"event","id":"m-1","timestamp":1,"data":' + b"[" * 63
        accepted += b"]" * 63 + b"}"
        self.assertEqual(self.codec.decode(accepted, False).data, _nested_empty(63))

    def test_loneSurrogateDoesNotBreakEncoding(self) -> None:
        """Lone surrogate escapes cannot be re-encoded as UTF-8: refused as bad frames."""
        payload = b'{"type":"event","id":"m-\\ud800","timestamp":1,"data":"\\udfff"}'
        exc = self.assertRaises(ProtocolError, self.codec.decode, payload, False)
        self.assertEqual(exc.code, ErrorCode.BAD_FRAME)
        paired = b'{"type":"event","id":"m-1","timestamp":1,"data":"\\ud83d\\ude00"}'
        self.assertEqual(self.codec.decode(paired, False).data, "\U0001f600")


class MsgpackCodecTests(ProtocolErrorAssertions):
    def setUp(self) -> None:
        self.codec = MsgpackCodec()

    def decode(self, value: Any) -> Envelope:
        return self.codec.decode(_pack(value), True)

    def test_attributes(self) -> None:
        self.assertEqual(self.codec.subprotocol, MSGPACK_SUBPROTOCOL)
        self.assertTrue(self.codec.binary)

    def test_roundTrip(self) -> None:
        envelope = Envelope(
            type=MessageType.EVENT,
            id="m-1",
            timestamp=1,
            data={"nested": [1, -2, 0.5, None, True, "日本"]},
            stream="direct",
            offset=3,
            epoch="ep",
            ack=True,
        )
        encoded = self.codec.encode(envelope)
        self.assertEqual(self.codec.decode(encoded, True), envelope)
        self.assertEqual(msgpack.unpackb(encoded), envelope.to_wire())

    def test_textFrameRejected(self) -> None:
        payload = _pack(EVENT)
        self.assertProtocolError(lambda: self.codec.decode(payload, False), ErrorCode.BAD_FRAME)

    def test_notMsgpackRejected(self) -> None:
        for payload in (b"", b"\xc1", _pack(EVENT)[:-3], _pack(EVENT) + b"\x00"):
            self.assertProtocolError(partial(self.codec.decode, payload, True), ErrorCode.BAD_FRAME)

    def test_notAMapRejected(self) -> None:
        for value in ([EVENT], "event", 1, None):
            self.assertProtocolError(partial(self.decode, value), ErrorCode.BAD_ENVELOPE, None)

    def test_binValueRejected(self) -> None:
        """bin is outside the data model: 4001 with the id, so an acked send gets its answer."""
        self.assertProtocolError(
            lambda: self.decode({**EVENT, "data": b"\x00\x01"}), ErrorCode.BAD_ENVELOPE, "m-1"
        )

    def test_binFieldRejected(self) -> None:
        self.assertProtocolError(
            lambda: self.decode({**EVENT, "id": b"m-1"}), ErrorCode.BAD_ENVELOPE
        )

    def test_binKeyRejected(self) -> None:
        self.assertProtocolError(
            lambda: self.decode({**EVENT, "data": {b"k": 1}}), ErrorCode.BAD_ENVELOPE, "m-1"
        )

    def test_extTypeRejected(self) -> None:
        for ext in (msgpack.ExtType(1, b"x"), msgpack.Timestamp(1)):
            self.assertProtocolError(
                partial(self.decode, {**EVENT, "data": ext}), ErrorCode.BAD_FRAME
            )

    def test_intMapKeyRejected(self) -> None:
        self.assertProtocolError(lambda: self.decode({**EVENT, 1: "x"}), ErrorCode.BAD_FRAME)
        self.assertProtocolError(
            lambda: self.decode({**EVENT, "data": {1: "x"}}), ErrorCode.BAD_FRAME
        )

    def test_nestingLimit(self) -> None:
        """No value deeper than level 64 (the envelope map is level 1, data level 2)."""
        accepted = self.decode({**EVENT, "data": _nested(62)})
        self.assertEqual(accepted.data, _nested(62))
        self.assertProtocolError(
            lambda: self.decode({**EVENT, "data": _nested(63)}), ErrorCode.BAD_ENVELOPE, "m-1"
        )
        self.assertProtocolError(
            lambda: self.decode({**EVENT, "data": _nested(1000)}), ErrorCode.BAD_ENVELOPE, "m-1"
        )

    def test_nonFiniteFloatRejected(self) -> None:
        for value in (float("nan"), float("inf"), float("-inf")):
            self.assertProtocolError(
                partial(self.decode, {**EVENT, "data": {"x": [value]}}),
                ErrorCode.BAD_ENVELOPE,
                "m-1",
            )

    def test_floatWhereIntegerRequired(self) -> None:
        self.assertProtocolError(
            lambda: self.decode({**EVENT, "timestamp": 1.0}), ErrorCode.BAD_ENVELOPE, "m-1"
        )

    def test_integerBeyondSafeRangeRejected(self) -> None:
        for value in (2**53, 2**64 - 1, -1, -(2**63)):
            self.assertProtocolError(
                partial(self.decode, {**EVENT, "timestamp": value}),
                ErrorCode.BAD_ENVELOPE,
                "m-1",
            )

    def test_dataModelViolationsNameTheEnvelope(self) -> None:
        """Values outside the data model are refused with 4001 and the envelope's id."""
        for data in (b"bin", {b"k": 1}, float("nan"), _nested(64), 2**53, -(2**63), 2**64 - 1):
            try:
                self.decode({**EVENT, "data": data})
            except ProtocolError as exc:
                self.assertEqual(
                    (exc.code, exc.ref), (ErrorCode.BAD_ENVELOPE, "m-1"), repr(data)[:40]
                )
            else:
                self.fail(f"accepted data {data!r}")


class CodecRegistryTests(unittest.TestCase):
    def test_defaultCodecs(self) -> None:
        registry = default_codecs()
        self.assertEqual(
            registry.subprotocols,
            [JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL, "warpsocket.v1.protobuf"],
        )
        self.assertIsInstance(registry.default, JsonCodec)
        self.assertIsInstance(registry.get(MSGPACK_SUBPROTOCOL), MsgpackCodec)
        self.assertIsNone(registry.get("x"))

    def test_noOfferGetsJson(self) -> None:
        self.assertIsInstance(default_codecs().negotiate([]), JsonCodec)

    def test_firstSupportedOfferWins(self) -> None:
        registry = default_codecs()
        self.assertIsInstance(registry.negotiate(["x", MSGPACK_SUBPROTOCOL]), MsgpackCodec)
        self.assertIsInstance(
            registry.negotiate([MSGPACK_SUBPROTOCOL, JSON_SUBPROTOCOL]), MsgpackCodec
        )
        self.assertIsInstance(
            registry.negotiate([JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL]), JsonCodec
        )
        self.assertIsInstance(registry.negotiate(iter(["y", JSON_SUBPROTOCOL])), JsonCodec)

    def test_onlyUnknownOffersRefused(self) -> None:
        self.assertIsNone(default_codecs().negotiate(["x", "warpsocket.v2.json"]))

    def test_duplicateRegisterRaises(self) -> None:
        registry = default_codecs()
        self.assertRaises(ValueError, registry.register, JsonCodec())
        self.assertRaises(ValueError, CodecRegistry, [MsgpackCodec(), MsgpackCodec()])

    def test_firstRegisteredIsDefault(self) -> None:
        registry = CodecRegistry([MsgpackCodec(), JsonCodec()])
        self.assertIsInstance(registry.default, MsgpackCodec)
        self.assertIsInstance(registry.negotiate([]), MsgpackCodec)


def _docCodeTable() -> list[list[str]]:
    """The rows of 4xxx codes in the table of section 10 (other sections have
    tables of their own)."""
    text = PROTOCOL_DOC.read_text(encoding="utf-8")
    section = text.split("\n## 10. ", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if re.match(r"\| 4\d{3} \|", line):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


_DOC_USE = {"error": Use.ERROR, "close": Use.CLOSE, "error, close": Use.BOTH}
_DOC_RETRY = {"yes": True, "no": False}


class ErrorCodeTests(unittest.TestCase):
    def test_everyCodeHasInfo(self) -> None:
        self.assertEqual(set(CODE_INFO), set(ErrorCode))
        for code in ErrorCode:
            self.assertIs(code.info, CODE_INFO[code])
            self.assertEqual(code.wire_name, CODE_INFO[code].name)
            self.assertTrue(code.info.description, code)

    def test_applicationRange(self) -> None:
        for code in ErrorCode:
            self.assertTrue(4000 <= code <= 4999, code)

    def test_namesUnique(self) -> None:
        names = [info.name for info in CODE_INFO.values()]
        self.assertEqual(len(names), len(set(names)))
        for code in ErrorCode:
            self.assertEqual(code.wire_name, code.name.lower())

    def test_useIsErrorOrClose(self) -> None:
        for code, info in CODE_INFO.items():
            self.assertIn(info.use, (Use.ERROR, Use.CLOSE, Use.BOTH), code)

    def test_protocolDocTableMatches(self) -> None:
        rows = _docCodeTable()
        self.assertEqual(len(rows), len(ErrorCode))
        documented = {}
        for row in rows:
            self.assertEqual(len(row), 5, row)
            number, name, use, retry, _meaning = row
            self.assertIn(use, _DOC_USE, row)
            self.assertIn(retry, _DOC_RETRY, row)
            documented[int(number)] = (name, _DOC_USE[use], _DOC_RETRY[retry])
        self.assertEqual(len(documented), len(rows), "duplicate code rows in the doc")
        self.assertEqual(
            documented,
            {int(code): (info.name, info.use, info.retry) for code, info in CODE_INFO.items()},
        )

    def test_protocolError(self) -> None:
        exc = ProtocolError(ErrorCode.BAD_ENVELOPE, "boom", "m-1")
        self.assertEqual((exc.code, exc.message, exc.ref), (ErrorCode.BAD_ENVELOPE, "boom", "m-1"))
        self.assertEqual(str(exc), "bad_envelope (4001): boom")
        self.assertIsNone(ProtocolError(ErrorCode.BAD_FRAME, "x").ref)


class JsonFastPathTests(unittest.TestCase):
    """The JSON codec skips the value walk when the text shows every value is
    inside the data model: it must never skip one that is not."""

    @settings(max_examples=400, deadline=None)
    @given(
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers(min_value=-(2**70), max_value=2**70)
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(max_size=20),
            lambda children: (
                st.lists(children, max_size=5)
                | st.dictionaries(st.text(max_size=8), children, max_size=5)
            ),
            max_leaves=40,
        ),
        st.integers(min_value=0, max_value=70),
    )
    def test_the_fast_path_never_admits_what_the_walk_refuses(self, value: Any, depth: int) -> None:
        for _ in range(depth):
            value = [value]
        codec = JsonCodec()
        payload = json.dumps({**EVENT, "data": value}).encode()
        if codec._plainly_inside(payload):
            check_value(value)  # must not raise

    def test_overflowing_numbers_take_the_walk(self) -> None:
        codec = JsonCodec()
        for text in ("1e400", "-1E+309", str(2**53), "12345678901234567890", "[1e999]"):
            payload = b'{"type":"event","id":"m-1","timestamp":1,"data":' + text.encode() + b"}"
            self.assertFalse(codec._plainly_inside(payload), text)
