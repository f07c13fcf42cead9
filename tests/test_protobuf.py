"""The Protobuf codec (protocol.md 2.2): schema, token lists, hostile frames,
parity with the JSON codec, and a room shared by all three codecs over real
sockets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from tests.helpers.client import ClientTestCase, ServerFixture, make_hub, wait_until
from tests.helpers.protobuf import frame_of
from warpsocket.protocol import ErrorCode, JsonCodec, ProtocolError
from warpsocket.protocol.codecs import MSGPACK_SUBPROTOCOL, default_codecs
from warpsocket.protocol.datamodel import DataLimits
from warpsocket.protocol.envelope import Envelope, MessageType
from warpsocket.protocol.proto import generate
from warpsocket.protocol.proto.schema import SERIALIZED
from warpsocket.protocol.protobuf import (
    PROTOBUF_SUBPROTOCOL,
    EnvelopeMessage,
    ProtobufCodec,
)

VECTORS = Path(__file__).parent / "vectors" / "protobuf.json"
CODEC = ProtobufCodec()
HEAD: dict[str, Any] = {"type": "event", "id": "m-1", "timestamp": 1764300000000, "event": "x"}


def frame(**fields: Any) -> bytes:
    """An Envelope message with raw ``Value`` columns (dicts of column lists)."""
    message = EnvelopeMessage()
    for name, value in fields.items():
        if name in ("data", "extra"):
            column = getattr(message, name)
            column.SetInParent()
            for part, items in value.items():
                getattr(column, part).extend(items)
        else:
            setattr(message, name, value)
    encoded: bytes = message.SerializeToString()
    return encoded


def head(**more: Any) -> dict[str, Any]:
    return {"type": "event", "id": "m-1", "timestamp": 5, "event": "x", **more}


class SchemaTests(unittest.TestCase):
    def test_schema_module_is_the_compiled_proto(self) -> None:
        """schema.py is regenerated whenever warpsocket.proto changes."""
        self.assertEqual(SERIALIZED, generate.compile_proto())

    def test_registered_by_default_after_json_and_msgpack(self) -> None:
        registry = default_codecs()
        self.assertEqual(registry.subprotocols[-1], PROTOBUF_SUBPROTOCOL)
        self.assertIsInstance(registry.negotiate([PROTOBUF_SUBPROTOCOL]), ProtobufCodec)


class HostileFrameTests(unittest.TestCase):
    def assertRefused(self, payload: bytes, code: ErrorCode, ref: str | None = "m-1") -> str:
        with self.assertRaises(ProtocolError) as caught:
            CODEC.decode(payload, is_binary=True)
        self.assertEqual((caught.exception.code, caught.exception.ref), (code, ref))
        return caught.exception.message

    def test_text_frames_and_garbage_are_bad_frames(self) -> None:
        good = frame(**head())
        with self.assertRaises(ProtocolError) as caught:
            CODEC.decode(good, is_binary=False)
        self.assertEqual(caught.exception.code, ErrorCode.BAD_FRAME)
        for junk in (b"\xff\xff\xff", b"\x0a\x05ab", b"\x08"):
            self.assertRefused(junk, ErrorCode.BAD_FRAME, None)

    def test_invalid_utf8_is_a_bad_frame(self) -> None:
        # Field 5 (event), length 2, bytes that are not UTF-8 (a surrogate half).
        payload = frame(type="event", id="m-1", timestamp=5) + b"\x2a\x03\xed\xa0\x80"
        self.assertRefused(payload, ErrorCode.BAD_FRAME, None)

    def test_missing_fields_read_as_absent(self) -> None:
        self.assertRefused(frame(id="m-1", timestamp=5), ErrorCode.BAD_ENVELOPE)
        self.assertRefused(
            frame(type="event", timestamp=5, event="x"), ErrorCode.BAD_ENVELOPE, None
        )
        self.assertRefused(frame(type="event", id="m-1", event="x"), ErrorCode.BAD_ENVELOPE)
        self.assertRefused(frame(type="nope", id="m-1", timestamp=5), ErrorCode.UNKNOWN_TYPE)
        # An explicitly empty id is as invalid as in JSON.
        self.assertRefused(frame(type="event", id="", timestamp=5), ErrorCode.BAD_ENVELOPE, None)

    def test_numbers_outside_the_model(self) -> None:
        self.assertRefused(frame(**head(timestamp=2**53)), ErrorCode.BAD_ENVELOPE)
        self.assertRefused(frame(**head(code=2**40)), ErrorCode.BAD_ENVELOPE)
        for column in (
            {"shape": [3], "ints": [2**53]},
            {"shape": [3], "ints": [-(2**60)]},
            {"shape": [4], "floats": [float("nan")]},
            {"shape": [4], "floats": [float("inf")]},
        ):
            message = self.assertRefused(frame(**head(data=column)), ErrorCode.BAD_ENVELOPE)
            self.assertIn("data", message)

    def test_malformed_columns(self) -> None:
        cases = {
            "ends early": {"shape": [2 << 3 | 6, 3], "ints": [1]},
            "after the end": {"shape": [3, 3], "ints": [1, 2]},
            "column ends": {"shape": [5]},
            "column ends ": {"shape": [1 << 3 | 7, 0]},  # a member without its name
            "left over in ints": {"shape": [0], "ints": [1]},
            "left over in strings": {"shape": [5], "strings": ["a", "b"]},
            "a count on a scalar": {"shape": [1 << 3 | 3], "ints": [1]},
            "duplicate key": {"shape": [2 << 3 | 7, 0, 0], "strings": ["a", "a"]},
            "ends early ": {"shape": []},
        }
        for problem, column in cases.items():
            message = self.assertRefused(frame(**head(data=column)), ErrorCode.BAD_ENVELOPE)
            self.assertIn(problem.strip(), message)

    def test_huge_counts_cost_nothing(self) -> None:
        """A count claims members that are not there: refused, nothing allocated."""
        column = {"shape": [4_000_000_000 << 3 | 6]}
        self.assertRefused(frame(**head(data=column)), ErrorCode.BAD_ENVELOPE)

    def test_too_many_values(self) -> None:
        codec = ProtobufCodec(DataLimits(max_depth=64, max_values=10))
        column = {"shape": [11 << 3 | 6] + [3] * 11, "ints": [1] * 11}
        with self.assertRaises(ProtocolError) as caught:
            codec.decode(frame(**head(data=column)), is_binary=True)
        self.assertEqual(caught.exception.code, ErrorCode.BAD_ENVELOPE)

    def test_extra_fields(self) -> None:
        extra = {"shape": [1 << 3 | 7, 5], "strings": ["future", "yes"]}
        envelope = CODEC.decode(frame(**head(extra=extra)), is_binary=True)
        self.assertEqual(dict(envelope.extra), {"future": "yes"})
        # A named field may not come again through extra, nor extra be a non-object.
        clash = {"shape": [1 << 3 | 7, 5], "strings": ["room", "r"]}
        message = self.assertRefused(frame(**head(extra=clash)), ErrorCode.BAD_ENVELOPE)
        self.assertIn("repeats", message)
        not_object = {"shape": [3], "ints": [1]}
        self.assertRefused(frame(**head(extra=not_object)), ErrorCode.BAD_ENVELOPE)

    def test_depth_bound_is_the_data_models(self) -> None:
        """Nested arrays: exactly what the JSON codec accepts, and no more."""
        json_codec = JsonCodec()
        for depth in (61, 62, 63, 64):
            for inner in ([], [1]):
                value: Any = inner
                for _ in range(depth - 1):
                    value = [value]
                raw = head(data=value)
                try:
                    json_codec.decode(json.dumps(raw).encode(), is_binary=False)
                    json_ok = True
                except ProtocolError:
                    json_ok = False
                try:
                    decoded = CODEC.decode(frame_of(raw), is_binary=True)
                    self.assertEqual(decoded.data, value)
                    ok = True
                except ProtocolError as exc:
                    self.assertEqual(exc.code, ErrorCode.BAD_ENVELOPE)
                    ok = False
                self.assertEqual(ok, json_ok, (depth, inner))


# The data model (protocol.md 2.1), with floats that JSON round-trips exactly.
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53 - 1), 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=40,
)


class PropertyTests(unittest.TestCase):
    @settings(max_examples=300, deadline=None)
    @given(VALUES)
    def test_every_value_round_trips_exactly(self, value: Any) -> None:
        envelope = Envelope(type=MessageType.EVENT, id="m", timestamp=1, event="x", data=value)
        decoded = CODEC.decode(CODEC.encode(envelope), is_binary=True)
        self.assertEqual(decoded, envelope)
        # Types too: 1 and 1.0 stay apart, as in MessagePack.
        self.assertEqual(json.dumps(decoded.data), json.dumps(value))

    @settings(max_examples=200, deadline=None)
    @given(st.dictionaries(st.sampled_from(["ack", "ttl", "room", "code", "x"]), VALUES))
    def test_accepts_exactly_what_json_accepts(self, fields: dict[str, Any]) -> None:
        raw = {**HEAD, **fields}
        try:
            expected: Any = JsonCodec().decode(json.dumps(raw).encode(), is_binary=False)
        except ProtocolError as exc:
            expected = (exc.code, exc.ref)
        try:
            payload = frame_of(raw)
        except Exception:
            return  # a field of the wrong type has no Protobuf form
        try:
            got: Any = CODEC.decode(payload, is_binary=True)
        except ProtocolError as exc:
            got = (exc.code, exc.ref)
        self.assertEqual(got, expected)


class VectorTests(unittest.TestCase):
    """tests/vectors/protobuf.json: exact bytes, shared with the TypeScript client."""

    def test_vectors(self) -> None:
        vectors = json.loads(VECTORS.read_text(encoding="utf-8"))["vectors"]
        self.assertGreaterEqual(len(vectors), 5)
        for vector in vectors:
            payload = bytes.fromhex(vector["hex"])
            envelope = CODEC.decode(payload, is_binary=True)
            self.assertEqual(envelope.to_wire(), vector["envelope"], vector["name"])
            self.assertEqual(CODEC.encode(envelope).hex(), vector["hex"], vector["name"])


class OverTheWireTests(ClientTestCase):
    @inlineCallbacks
    def test_one_room_three_codecs_and_a_resume(self) -> Any:
        """Protobuf, JSON and MessagePack members of one room see the same
        events; a Protobuf member cut off resumes with nothing lost."""
        hub = make_hub()
        server = ServerFixture(self, hub)
        received: dict[str, list[Any]] = {}
        clients = {}
        for name, subprotocol in (
            ("protobuf", PROTOBUF_SUBPROTOCOL),
            ("json", "warpsocket.v1.json"),
            ("msgpack", MSGPACK_SUBPROTOCOL),
        ):
            client = self.client(server.url, subprotocol=subprotocol)
            seen: list[Any] = []
            received[name] = seen
            client.subscribe("room", lambda message, seen=seen: seen.append(message.data))
            yield client.connect()
            clients[name] = client
        self.assertEqual(clients["protobuf"].codec.subprotocol, PROTOBUF_SUBPROTOCOL)
        payloads = [{"n": 1, "f": 1.5, "deep": [[[{"k": None}]]]}, "two", [True, False], -7]
        outcome = yield clients["protobuf"].send("say", payloads[0], room="room", ack=True)
        self.assertEqual(outcome.status.value, "acked")
        for payload in payloads[1:3]:
            hub.publish("room", "say", payload)
        yield wait_until(lambda: all(len(seen) == 3 for seen in received.values()))
        server.drop_all()
        hub.publish("room", "say", payloads[3])
        yield wait_until(lambda: all(len(seen) == 4 for seen in received.values()), timeout=10)
        for name, seen in received.items():
            self.assertEqual(seen, payloads, name)


class ExtensionFieldTests(unittest.TestCase):
    def test_a_signed_mapping_keeps_its_sig_through_protobuf(self) -> None:
        """Extension fields the Envelope does not name (``sig``) travel in field 15."""
        from warpsocket.crypto.wire import encode_wire, wire_of

        wire = {**HEAD, "data": {"n": 1}, "sig": {"alg": "HS256", "kid": "k1", "value": "abc"}}
        envelope = CODEC.decode(encode_wire(CODEC, wire), is_binary=True)
        self.assertEqual(dict(envelope.extra), {"sig": wire["sig"]})
        self.assertEqual(wire_of(envelope), wire)
