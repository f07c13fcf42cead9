"""Run the shared, language-neutral envelope vectors (tests/vectors/envelopes.json).

One test method is generated per vector and codec, so a failure names the
vector. Vectors follow docs/protocol.md; the implementation must pass all.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
from twisted.trial import unittest

from tests.helpers.protobuf import NotExpressibleError, frame_of
from warpsocket.protocol import ErrorCode, JsonCodec, MsgpackCodec, ProtocolError
from warpsocket.protocol.protobuf import ProtobufCodec

VECTORS_PATH = Path(__file__).parent / "vectors" / "envelopes.json"

# Vector name -> why the implementation fails it. Remove an entry once fixed
# (trial reports an "unexpected success" as a reminder).

Vector = dict[str, Any]


def _load_vectors() -> dict[str, Any]:
    with VECTORS_PATH.open(encoding="utf-8") as f:
        loaded: dict[str, Any] = json.load(f)
    return loaded


VECTORS = _load_vectors()
_JSON = JsonCodec()
_MSGPACK = MsgpackCodec()
_PROTOBUF = ProtobufCodec()


def _parse_strict(text: str) -> Any:
    """Parse vector text as JSON the way the JSON codec does (no NaN/Infinity)."""

    def reject(name: str) -> Any:
        raise ValueError(name)

    return json.loads(text, parse_constant=reject)


def _pack(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def _assertRaisesProtocolError(
    case: unittest.TestCase, vector: Vector, decode: Callable[[], object]
) -> None:
    try:
        decoded = decode()
    except ProtocolError as exc:
        case.assertEqual(
            (int(exc.code), exc.ref),
            (vector["code"], vector["ref"]),
            f"vector {vector['name']!r}: wrong code/ref ({exc.message})",
        )
    else:
        case.fail(f"vector {vector['name']!r} was accepted: {decoded!r}")


def _checkValidJson(case: unittest.TestCase, vector: Vector) -> None:
    envelope = _JSON.decode(vector["json"].encode("utf-8"), is_binary=False)
    case.assertEqual(envelope.to_wire(), vector["expected"])
    encoded = _JSON.encode(envelope)
    again = _JSON.decode(encoded, is_binary=False)
    case.assertEqual(again, envelope)
    case.assertEqual(again.to_wire(), vector["expected"])
    case.assertEqual(_JSON.encode(again), encoded)


def _checkValidMsgpack(case: unittest.TestCase, vector: Vector) -> None:
    envelope = _MSGPACK.decode(_pack(vector["expected"]), is_binary=True)
    case.assertEqual(envelope.to_wire(), vector["expected"])
    # The frame as sent (unknown fields, nulls) must decode the same way.
    as_sent = _MSGPACK.decode(_pack(_parse_strict(vector["json"])), is_binary=True)
    case.assertEqual(as_sent.to_wire(), vector["expected"])
    encoded = _MSGPACK.encode(envelope)
    case.assertEqual(_MSGPACK.decode(encoded, is_binary=True), envelope)


def _checkValidProtobuf(case: unittest.TestCase, vector: Vector) -> None:
    envelope = _PROTOBUF.decode(frame_of(vector["expected"]), is_binary=True)
    case.assertEqual(envelope.to_wire(), vector["expected"])
    # The frame as sent (unknown fields, nulls) must decode the same way.
    as_sent = _PROTOBUF.decode(frame_of(_parse_strict(vector["json"])), is_binary=True)
    case.assertEqual(as_sent.to_wire(), vector["expected"])
    encoded = _PROTOBUF.encode(envelope)
    case.assertEqual(_PROTOBUF.decode(encoded, is_binary=True).to_wire(), vector["expected"])


def _checkInvalidJson(case: unittest.TestCase, vector: Vector) -> None:
    _assertRaisesProtocolError(
        case, vector, lambda: _JSON.decode(vector["json"].encode("utf-8"), is_binary=False)
    )


def _checkInvalidMsgpack(case: unittest.TestCase, vector: Vector) -> None:
    value = _parse_strict(vector["json"])
    try:
        payload = _pack(value)
    except OverflowError:
        # An integer beyond 64 bits: MessagePack cannot even express it, so
        # the vector is JSON-only (tests/vectors/README.md).
        case.assertTrue(vector["name"].startswith("data_integer_"), vector["name"])
        return
    _assertRaisesProtocolError(case, vector, lambda: _MSGPACK.decode(payload, is_binary=True))


def _checkInvalidProtobuf(case: unittest.TestCase, vector: Vector) -> None:
    try:
        payload = frame_of(_parse_strict(vector["json"]))
    except NotExpressibleError:
        # A field of the wrong type, or an integer beyond 64 bits: the
        # schema cannot carry it, so the problem cannot arise in Protobuf.
        return
    _assertRaisesProtocolError(case, vector, lambda: _PROTOBUF.decode(payload, is_binary=True))


def _attach(
    cls: type[unittest.TestCase],
    prefix: str,
    vector: Vector,
    check: Callable[[unittest.TestCase, Vector], None],
) -> None:
    name = f"test_{prefix}_{vector['name']}"

    def test(self: unittest.TestCase) -> None:
        check(self, vector)

    test.__name__ = name
    test.__qualname__ = f"{cls.__name__}.{name}"
    test.__doc__ = f"{prefix} vector {vector['name']!r}"
    setattr(cls, name, test)


class ValidVectorTests(unittest.TestCase):
    """Valid vectors decode to ``expected`` and round-trip through both codecs."""


class InvalidVectorTests(unittest.TestCase):
    """Invalid vectors raise ProtocolError with the vector's code and ref."""


for _vector in VECTORS["valid"]:
    _attach(ValidVectorTests, "json", _vector, _checkValidJson)
    _attach(ValidVectorTests, "msgpack", _vector, _checkValidMsgpack)
    _attach(ValidVectorTests, "protobuf", _vector, _checkValidProtobuf)

for _vector in VECTORS["invalid"]:
    _attach(InvalidVectorTests, "json", _vector, _checkInvalidJson)
    # Frames that are not JSON at all have no MessagePack equivalent.
    if _vector["code"] != ErrorCode.BAD_FRAME:
        _attach(InvalidVectorTests, "msgpack", _vector, _checkInvalidMsgpack)
        _attach(InvalidVectorTests, "protobuf", _vector, _checkInvalidProtobuf)


class VectorFileTests(unittest.TestCase):
    """The vector file itself is well formed, so other runners can trust it."""

    def test_shape(self) -> None:
        self.assertEqual(set(VECTORS), {"description", "valid", "invalid"})
        self.assertIsInstance(VECTORS["description"], str)
        self.assertGreaterEqual(len(VECTORS["valid"]), 30)
        self.assertGreaterEqual(len(VECTORS["invalid"]), 45)
        for vector in VECTORS["valid"]:
            self.assertEqual(set(vector), {"name", "json", "expected"}, vector)
            self.assertIsInstance(vector["json"], str)
        for vector in VECTORS["invalid"]:
            self.assertEqual(set(vector), {"name", "json", "code", "ref"}, vector)
            self.assertIsInstance(vector["json"], str)
            self.assertIn(vector["code"], {int(code) for code in ErrorCode})
            self.assertIsInstance(vector["ref"], (str, type(None)))

    def test_namesUniqueIdentifiers(self) -> None:
        names = [v["name"] for v in VECTORS["valid"] + VECTORS["invalid"]]
        self.assertEqual(len(names), len(set(names)))
        for name in names:
            self.assertRegex(name, re.compile(r"^[a-z0-9_]+$"))

    def test_expectedIsCanonical(self) -> None:
        """``expected`` holds present fields only, with ``ack`` omitted when false."""
        for vector in VECTORS["valid"]:
            expected = vector["expected"]
            self.assertLessEqual({"type", "id", "timestamp"}, set(expected), vector["name"])
            self.assertNotIn(None, expected.values(), vector["name"])
            self.assertNotEqual(expected.get("ack"), False, vector["name"])

    def test_everyMessageTypeCovered(self) -> None:
        types = {v["expected"]["type"] for v in VECTORS["valid"]}
        self.assertEqual(
            types,
            {
                "hello",
                "welcome",
                "event",
                "ack",
                "call",
                "result",
                "error",
                "heartbeat",
                "subscribe",
                "unsubscribe",
                "auth",
            },
        )
