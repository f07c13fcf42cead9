"""One hostile message must never poison a room (issues: hardening, data model).

Over real sockets: each value outside the data model (protocol.md 2.1) is
published into a room that has a JSON member and a MessagePack member, between
good messages. The publisher gets ``4001`` with its ``ref`` and keeps its
connection; members see every good message with consecutive offsets; a
JSON and a MessagePack client resuming from offset 0 get an exact replay.
"""

from __future__ import annotations

import json
from typing import Any

import msgpack

from tests.wsclient import (
    JSON_SUBPROTOCOL,
    MSGPACK_SUBPROTOCOL,
    ServerTestCase,
    WsClient,
    async_test,
    new_id,
)
from warpsocket.protocol.datamodel import DataModelError

ROOM = "r"
STREAM = "room:r"


def json_event(ident: str, data_text: str) -> bytes:
    """A client room event whose ``data`` is exactly ``data_text`` (JSON source)."""
    head = f'{{"type":"event","id":"{ident}","timestamp":1,"room":"{ROOM}","event":"x","ack":true'
    return (head + ',"data":' + data_text + "}").encode("utf-8")


def msgpack_event(ident: str, data: Any) -> bytes:
    envelope = {
        "type": "event",
        "id": ident,
        "timestamp": 1,
        "room": ROOM,
        "event": "x",
        "ack": True,
        "data": data,
    }
    packed: bytes = msgpack.packb(envelope, use_bin_type=True)
    return packed


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# JSON sources the server used to accept and then failed to deliver (or that
# sit right at the edges of the data model).
HOSTILE_JSON = {
    "overflowing float": "1e400",
    "overflowing negative float": "-1e400",
    "integer past uint64": "18446744073709551616",
    "integer below int64": "-9223372036854775809",
    "integer 10**30": "1" + "0" * 30,
    "integer 2**53": str(2**53),
    "nested 64 levels": nested(64),
    "nested 500 levels": nested(500),
    "nested 964 levels": nested(964),
    "nested 970 levels": nested(970),
}
HOSTILE_MSGPACK: dict[str, Any] = {
    "infinity": float("inf"),
    "nan": float("nan"),
    "uint64 max": 2**64 - 1,
    "int64 min": -(2**63),
    "bin": b"\x00\x01",
    "bin key": {b"k": 1},
    "nested 200 levels": json.loads(nested(200)),
    "object bomb": [{}] * 200_000,
}
# Deeper than the JSON decoder itself can go (Python's recursion limit): no id.
UNREADABLE = {"nested 964 levels", "nested 970 levels"}
# Edges that are inside the model: accepted and delivered unchanged to both codecs.
EDGE_JSON = {
    "largest safe integer": str(2**53 - 1),
    "smallest safe integer": str(-(2**53 - 1)),
    "large finite float": "1.7976931348623157e308",
    "nested 63 levels": nested(63),
}


class PoisonTests(ServerTestCase):
    async def members(self) -> tuple[WsClient, WsClient, WsClient]:
        self.start_server(open_rooms=True)
        json_member = await self.connect(rooms=[ROOM])
        msgpack_member = await self.connect(protocols=[MSGPACK_SUBPROTOCOL], rooms=[ROOM])
        publisher = await self.connect(rooms=[ROOM])
        return json_member, msgpack_member, publisher

    async def publish_good(self, client: WsClient, text: str) -> None:
        answer = await client.request(
            {"type": "event", "room": ROOM, "event": "x", "data": {"text": text}, "ack": True}
        )
        self.assertEqual(answer["type"], "ack", answer)

    async def check_room(self, good: list[Any], *members: WsClient) -> None:
        """Every member has exactly the good messages, at offsets 1..n."""
        for member in members:
            events = [
                await member.wait_for(lambda m: m.get("type") == "event" and m["stream"] == STREAM)
                for _ in good
            ]
            self.assertEqual([e["offset"] for e in events], list(range(1, len(good) + 1)))
            self.assertEqual([e["data"] for e in events], good)
            self.assertFalse(member.closed.called)

    async def check_replays(self, good: list[Any], epoch: str) -> None:
        for protocols in ([JSON_SUBPROTOCOL], [MSGPACK_SUBPROTOCOL]):
            late = await self.connect(
                protocols=protocols,
                rooms=[ROOM],
                streams={STREAM: {"offset": 0, "epoch": epoch}},
            )
            assert late.welcome is not None
            self.assertTrue(late.welcome["data"]["streams"][STREAM]["recovered"])
            replay = [
                await late.wait_for(lambda m: m.get("type") == "event" and m["stream"] == STREAM)
                for _ in good
            ]
            self.assertEqual([e["data"] for e in replay], good)
            self.assertEqual([e["offset"] for e in replay], list(range(1, len(good) + 1)))
            await late.close()

    @async_test
    async def test_hostile_json_values_never_reach_the_room(self) -> None:
        json_member, msgpack_member, publisher = await self.members()
        good: list[Any] = []
        for name, source in HOSTILE_JSON.items():
            with self.subTest(name=name):
                text = f"before {name}"
                await self.publish_good(publisher, text)
                good.append({"text": text})
                ident = new_id("bad")
                publisher.send_raw(json_event(ident, source))
                # Nesting the decoder itself cannot read has no readable id;
                # everything else is answered with its ref.
                error = await publisher.next_of("error")
                self.assertEqual(error["code"], 4001, name)
                self.assertIn(error.get("ref"), (ident, None), name)
                if name not in UNREADABLE:
                    self.assertEqual(error.get("ref"), ident, name)
                self.assertFalse(publisher.closed.called, name)
        await self.publish_good(publisher, "after")
        good.append({"text": "after"})
        await self.check_room(good, json_member, msgpack_member)
        epoch = json_member.positions[STREAM]["epoch"]
        await self.check_replays(good, epoch)

    @async_test
    async def test_hostile_msgpack_values_never_reach_the_room(self) -> None:
        json_member, msgpack_member, _ = await self.members()
        publisher = await self.connect(protocols=[MSGPACK_SUBPROTOCOL], rooms=[ROOM])
        good: list[Any] = []
        for name, value in HOSTILE_MSGPACK.items():
            with self.subTest(name=name):
                text = f"before {name}"
                await self.publish_good(publisher, text)
                good.append({"text": text})
                ident = new_id("bad")
                publisher.send_raw(msgpack_event(ident, value), binary=True)
                error = await publisher.reply_to(ident)
                self.assertEqual((error["type"], error["code"]), ("error", 4001), name)
                self.assertFalse(publisher.closed.called, name)
        await self.publish_good(publisher, "after")
        good.append({"text": "after"})
        await self.check_room(good, json_member, msgpack_member)
        await self.check_replays(good, json_member.positions[STREAM]["epoch"])

    @async_test
    async def test_edges_inside_the_model_reach_both_codecs_unchanged(self) -> None:
        json_member, msgpack_member, publisher = await self.members()
        good: list[Any] = []
        for name, source in EDGE_JSON.items():
            ident = new_id("edge")
            publisher.send_raw(json_event(ident, source))
            answer = await publisher.reply_to(ident)
            self.assertEqual(answer["type"], "ack", (name, answer))
            good.append(json.loads(source))
        await self.check_room(good, json_member, msgpack_member)
        await self.check_replays(good, json_member.positions[STREAM]["epoch"])

    @async_test
    async def test_a_retry_of_a_refused_id_is_answered_again(self) -> None:
        """Nothing was recorded for the refused id: its retry is refused the same way."""
        _, _, publisher = await self.members()
        for _ in range(2):
            publisher.send_raw(json_event("same-id", "1e400"))
            error = await publisher.reply_to("same-id")
            self.assertEqual(error["code"], 4001)
            self.assertIn("data", error["data"]["message"])

    @async_test
    async def test_application_data_outside_the_model_is_refused_before_it_is_stored(
        self,
    ) -> None:
        json_member, msgpack_member, _ = await self.members()
        assert json_member.session is not None
        hub = self.hub
        bad_values: list[Any] = [
            2**53,
            -(2**63),
            float("inf"),
            json.loads(nested(70)),
            {1: "int key"},
            [b"bytes"],
            {"ok": {"deeper": float("nan")}},
        ]
        for bad in bad_values:
            with self.subTest(bad=repr(bad)[:40]):
                self.assertRaises(DataModelError, hub.publish, ROOM, "x", bad)
                self.assertRaises(DataModelError, hub.send, json_member.session, "x", bad)
                self.assertRaises(DataModelError, hub.broadcast, "x", bad)
        stored = await hub.publish(ROOM, "x", {"fine": [1, 2.5, "three", None, True]})
        self.assertEqual((stored.offset, stored.data), (1, {"fine": [1, 2.5, "three", None, True]}))
        await self.check_room(
            [{"fine": [1, 2.5, "three", None, True]}], json_member, msgpack_member
        )


class CompactHistoryTests(ServerTestCase):
    @async_test
    async def test_a_stored_message_costs_about_its_wire_size(self) -> None:
        """100,000 empty maps (100 KB of msgpack, ~7 MB as Python dicts) are kept
        as their compact JSON, and delivered and replayed unchanged."""
        self.start_server(open_rooms=True)
        member = await self.connect(protocols=[MSGPACK_SUBPROTOCOL], rooms=[ROOM])
        publisher = await self.connect(protocols=[MSGPACK_SUBPROTOCOL], rooms=[ROOM])
        bomb: list[Any] = [{}] * 100_000
        frame = msgpack_event("bomb", bomb)
        before = self.hub.store.bytes  # type: ignore[attr-defined]
        publisher.send_raw(frame, binary=True)
        answer = await publisher.reply_to("bomb")
        self.assertEqual(answer["type"], "ack")
        kept = self.hub.store.bytes - before  # type: ignore[attr-defined]
        self.assertLess(kept, 3 * len(json.dumps(bomb)))
        event = await member.wait_for(lambda m: m.get("type") == "event" and m["stream"] == STREAM)
        self.assertEqual(event["data"], bomb)

    @async_test
    async def test_history_bytes_are_bounded_per_stream(self) -> None:
        from warpsocket.core.history import HistoryLimits
        from warpsocket.core.server import CoreOptions

        limits = HistoryLimits(max_bytes=64 * 1024, max_node_bytes=64 * 1024)
        self.start_server(CoreOptions(history=limits), open_rooms=True)
        member = await self.connect(rooms=[ROOM])
        for index in range(40):
            await self.hub.publish(ROOM, "x", {"blob": "x" * 4000, "n": index})
        self.assertLessEqual(self.hub.store.bytes, 64 * 1024)  # type: ignore[attr-defined]
        # Live delivery is whole; a resume from before the kept window is told so.
        events = [
            await member.wait_for(lambda m: m.get("type") == "event" and m["stream"] == STREAM)
            for _ in range(40)
        ]
        self.assertEqual([e["data"]["n"] for e in events], list(range(40)))
        epoch = events[0]["epoch"]
        late = await self.connect(rooms=[ROOM], streams={STREAM: {"offset": 0, "epoch": epoch}})
        assert late.welcome is not None
        self.assertFalse(late.welcome["data"]["streams"][STREAM]["recovered"])
        recent = await self.connect(rooms=[ROOM], streams={STREAM: {"offset": 35, "epoch": epoch}})
        assert recent.welcome is not None
        self.assertTrue(recent.welcome["data"]["streams"][STREAM]["recovered"])
        replay = [
            await recent.wait_for(lambda m: m.get("type") == "event" and m["stream"] == STREAM)
            for _ in range(4)
        ]
        self.assertEqual([e["offset"] for e in replay], [36, 37, 38, 39])

    @async_test
    async def test_history_bytes_are_exported(self) -> None:
        self.start_server(open_rooms=True)
        await self.connect(rooms=[ROOM])
        await self.hub.publish(ROOM, "x", {"blob": "y" * 10_000})
        self.advance(1)
        self.assertGreater(self.metric("warpsocket_history_bytes"), 10_000)


class _FlakyCodec:
    """JSON, except that it cannot encode a payload holding "boom" (as an
    application's own codec might fail)."""

    subprotocol = "test.flaky"
    binary = False

    def __init__(self) -> None:
        from warpsocket.protocol.codecs import JsonCodec

        self._json = JsonCodec()

    def encode(self, envelope: Any) -> bytes:
        payload = self._json.encode(envelope)
        if b"boom" in payload:
            raise ValueError("this codec cannot carry boom")
        return payload

    def decode(self, payload: bytes, is_binary: bool) -> Any:
        return self._json.decode(payload, is_binary)


class EncodeFailureTests(ServerTestCase):
    @async_test
    async def test_an_encode_failure_costs_one_envelope_never_the_connection(self) -> None:
        from warpsocket.protocol.codecs import CodecRegistry, JsonCodec

        self.start_server(open_rooms=True, codecs=CodecRegistry([JsonCodec(), _FlakyCodec()]))
        flaky = await self.connect(protocols=["test.flaky"], rooms=[ROOM])
        plain = await self.connect(rooms=[ROOM])
        for data in ("one", "boom", "three"):
            await self.hub.publish(ROOM, "x", data)
        events = [
            await flaky.wait_for(lambda m: m.get("type") == "event" and m["stream"] == STREAM)
            for _ in range(3)
        ]
        # The undeliverable one is a placeholder at its offset: no gap.
        self.assertEqual([e["offset"] for e in events], [1, 2, 3])
        self.assertEqual([e.get("data") for e in events], ["one", None, "three"])
        self.assertEqual(events[1]["code"], 4501)
        self.assertFalse(flaky.closed.called)
        others = [
            await plain.wait_for(lambda m: m.get("type") == "event" and m["stream"] == STREAM)
            for _ in range(3)
        ]
        self.assertEqual([e["data"] for e in others], ["one", "boom", "three"])
        self.assertEqual(self.metric("warpsocket_encode_failures_total"), 1)
        self.flushLoggedErrors(ValueError)


class _BrokenCodec(_FlakyCodec):
    """Cannot encode anything about offset 2, placeholders included."""

    subprotocol = "test.broken"

    def encode(self, envelope: Any) -> bytes:
        if envelope.offset == 2:
            raise ValueError("this codec cannot carry offset 2")
        return super().encode(envelope)


class UnsendableFanoutTests(ServerTestCase):
    @async_test
    async def test_a_codec_that_cannot_encode_fails_once_not_once_per_member(self) -> None:
        from warpsocket.protocol.codecs import CodecRegistry, JsonCodec

        self.start_server(open_rooms=True, codecs=CodecRegistry([JsonCodec(), _BrokenCodec()]))
        members = [await self.connect(protocols=["test.broken"], rooms=[ROOM]) for _ in range(3)]
        for data in ("one", "two", "three"):
            await self.hub.publish(ROOM, "x", data)
        for member in members:
            first = await member.wait_for(lambda m: m.get("type") == "event")
            last = await member.wait_for(lambda m: m.get("type") == "event")
            self.assertEqual((first["data"], last["data"]), ("one", "three"))
            self.assertFalse(member.closed.called)
        # Tried, logged and counted once for the fan-out, not once per member.
        self.assertEqual(self.metric("warpsocket_encode_failures_total"), 1)
        self.flushLoggedErrors(ValueError)
