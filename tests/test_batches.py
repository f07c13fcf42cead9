"""The ``batch`` extension on the server (protocol.md 18), over real sockets.

Frames are counted where the server takes them (``hub.port.received``) and
where the client receives them (``WsClient.frames``).
"""

from __future__ import annotations

import json
from typing import Any

import msgpack
from twisted.internet.task import Clock

from tests.helpers.cluster import ClusterCase
from tests.helpers.security import SecureTestCase
from tests.wsclient import ServerTestCase, WsClient, async_test, connect, new_id
from warpsocket.core.server import CoreOptions
from warpsocket.protocol.codecs import MSGPACK_SUBPROTOCOL
from warpsocket.protocol.codes import ErrorCode
from warpsocket.protocol.datamodel import DEFAULT_MAX_DEPTH
from warpsocket.protocol.envelope import Envelope, MessageType
from warpsocket.protocol.protobuf import ProtobufCodec
from warpsocket.server.batches import BatchParams
from warpsocket.server.context import Context
from warpsocket.server.hub import Hub
from warpsocket.server.options import HubOptions
from warpsocket.server.security.config import SecurityOptions
from warpsocket.server.service import WarpSocketService

Message = dict[str, Any]


def inner(kind: str = "event", **fields: Any) -> Message:
    return {"type": kind, "id": new_id(), "timestamp": 1_764_300_000_000, **fields}


def batch_of(envelopes: list[Message]) -> Message:
    return {"type": "batch", "data": envelopes}


class BatchServerMixin:
    """Helpers shared by the plain and the secured test cases."""

    received: list[bytes]

    def count_frames(self, hub: Any) -> None:
        """Count every whole message the server takes from now on."""
        self.received = []
        take = hub.port.received

        def counting(conn_id: int, payload: bytes, is_binary: bool) -> None:
            self.received.append(payload)
            take(conn_id, payload, is_binary)

        hub.port.received = counting

    async def agree(self, client: WsClient, extensions: list[str] | None = None) -> Message:
        data = {"session": None, "streams": {}, "rooms": [], "extensions": extensions or ["batch"]}
        welcome = await client.request({"type": "hello", "data": data})
        assert welcome["type"] == "welcome", welcome
        client.session = welcome["data"]["session"]
        return welcome


def refs(reply: Message) -> list[tuple[str, str | None, int | None]]:
    return [(m["type"], m.get("ref"), m.get("code")) for m in reply["data"]]


class BatchTests(BatchServerMixin, ServerTestCase):
    async def client(self, protocols: tuple[str, ...] = ()) -> WsClient:
        hub = self.start_server(open_rooms=True)
        hub.on("note", lambda ctx, data: None)
        hub.on("double", lambda ctx, data: data * 2)
        self.count_frames(hub)
        client = await self.connect(hello=False, protocols=protocols or None)
        await self.agree(client)
        return client

    @async_test
    async def test_the_welcome_grants_batch_with_its_bounds(self) -> None:
        self.start_server()
        client = await self.connect(hello=False)
        welcome = await self.agree(client)
        self.assertEqual(
            welcome["data"]["extensions"]["batch"], {"max_envelopes": 64, "max_bytes": 65536}
        )

    @async_test
    async def test_many_acked_sends_arrive_in_one_frame_and_are_acked_in_one_frame(self) -> None:
        client = await self.client()
        before_in, before_out = len(self.received), len(client.frames)
        sent = [inner(event="note", data=i, ack=True) for i in range(20)]
        client.send(batch_of(sent))
        reply = await client.next_message()
        self.assertEqual(len(self.received) - before_in, 1)  # one frame in
        self.assertEqual(reply["type"], "batch")
        self.assertEqual(refs(reply), [("ack", m["id"], None) for m in sent])
        self.assertEqual(len(client.frames) - before_out, 1)  # one frame out
        self.assertEqual(self.hub.metrics.traffic.messages_in["event"], 20)

    @async_test
    async def test_results_and_acks_keep_the_order_of_the_batch(self) -> None:
        client = await self.client()
        call = inner("call", event="double", data=21)
        note = inner(event="note", ack=True)
        ping = inner("heartbeat")
        client.send(batch_of([call, note, ping]))
        reply = await client.next_message()
        self.assertEqual(
            refs(reply),
            [
                ("result", call["id"], None),
                ("ack", note["id"], None),
                ("heartbeat", ping["id"], None),
            ],
        )
        self.assertEqual(reply["data"][0]["data"], 42)

    @async_test
    async def test_one_reply_is_sent_alone(self) -> None:
        client = await self.client()
        note = inner(event="note", ack=True)
        client.send(batch_of([note, inner(event="note")]))  # the second asks for no ack
        reply = await client.next_message()
        self.assertEqual((reply["type"], reply["ref"]), ("ack", note["id"]))

    @async_test
    async def test_an_invalid_inner_envelope_costs_only_itself(self) -> None:
        client = await self.client()
        first, last = inner(event="note", ack=True), inner(event="note", ack=True)
        bad_ttl = inner(event="note", ttl=0)
        unknown = inner("nope")
        client.send(batch_of([first, bad_ttl, unknown, {"type": "event"}, 7, last]))
        reply = await client.next_message()
        self.assertEqual(
            refs(reply),
            [
                ("ack", first["id"], None),
                ("error", bad_ttl["id"], ErrorCode.BAD_ENVELOPE),
                ("error", unknown["id"], ErrorCode.UNKNOWN_TYPE),
                ("error", None, ErrorCode.BAD_ENVELOPE),
                ("error", None, ErrorCode.BAD_ENVELOPE),
                ("ack", last["id"], None),
            ],
        )

    @async_test
    async def test_a_batch_or_hello_inside_a_batch_is_refused_alone(self) -> None:
        client = await self.client()
        nested = {**inner(), **batch_of([inner(event="note", ack=True)])}
        hello = inner("hello", data={"session": None})
        note = inner(event="note", ack=True)
        client.send(batch_of([nested, hello, note]))
        reply = await client.next_message()
        self.assertEqual(
            refs(reply),
            [
                ("error", nested["id"], ErrorCode.BAD_BATCH),
                ("error", hello["id"], ErrorCode.BAD_BATCH),
                ("ack", note["id"], None),
            ],
        )

    @async_test
    async def test_a_batch_breaking_the_bounds_is_refused_whole(self) -> None:
        client = await self.client()
        too_many = client.send(batch_of([inner(event="note", ack=True) for _ in range(65)]))
        empty = client.send(batch_of([]))
        big = client.send(batch_of([inner(event="note", data="x" * 70_000)]))
        not_array = client.send({"type": "batch", "data": {"a": 1}})
        for sent, code in (
            (too_many, ErrorCode.BAD_BATCH),
            (empty, ErrorCode.BAD_BATCH),
            (big, ErrorCode.BAD_BATCH),
            (not_array, ErrorCode.BAD_ENVELOPE),
        ):
            reply = await client.reply_to(sent["id"])
            self.assertEqual((reply["type"], reply["code"]), ("error", code), reply)
        self.assertEqual(self.hub.metrics.traffic.messages_in["event"], 0)

    @async_test
    async def test_a_value_outside_the_data_model_refuses_the_whole_frame(self) -> None:
        client = await self.client()
        sent = client.send(batch_of([inner(event="note", ack=True), inner(data=2**60)]))
        reply = await client.reply_to(sent["id"])
        self.assertEqual(reply["code"], ErrorCode.BAD_ENVELOPE)
        self.assertIn("data[1].data", reply["data"]["message"])

    @async_test
    async def test_depth_is_bounded_per_inner_envelope(self) -> None:
        client = await self.client()

        def nested(levels: int) -> Any:
            value: Any = 0
            for _ in range(levels):
                value = [value]
            return value

        # Alone, data may nest 62 deep around a scalar (protocol.md 2.1): in a batch too.
        deepest = inner(event="note", data=nested(DEFAULT_MAX_DEPTH - 2), ack=True)
        client.send(batch_of([deepest, inner(event="note", ack=True)]))
        reply = await client.next_message()
        self.assertEqual(reply["type"], "batch", reply)
        self.assertEqual(refs(reply)[0], ("ack", deepest["id"], None))
        too_deep = client.send(batch_of([inner(event="note", data=nested(DEFAULT_MAX_DEPTH - 1))]))
        refused = await client.reply_to(too_deep["id"])
        self.assertEqual(refused["code"], ErrorCode.BAD_ENVELOPE)

    @async_test
    async def test_msgpack_batches(self) -> None:
        client = await self.client((MSGPACK_SUBPROTOCOL,))
        sent = [inner(event="note", data=i, ack=True) for i in range(5)]
        client.send(batch_of(sent))
        reply = await client.next_message()
        self.assertTrue(client.frames[-1][1])  # binary
        self.assertEqual(refs(reply), [("ack", m["id"], None) for m in sent])

    @async_test
    async def test_without_the_extension_a_batch_is_an_unknown_type(self) -> None:
        hub = self.start_server()
        hub.on("note", lambda ctx, data: None)
        client = await self.connect()  # a hello that asks for nothing
        sent = client.send(batch_of([inner(event="note", ack=True)]))
        reply = await client.reply_to(sent["id"])
        self.assertEqual(reply["code"], ErrorCode.UNKNOWN_TYPE)
        self.assertEqual(hub.metrics.traffic.messages_in["event"], 0)

    @async_test
    async def test_before_welcome_a_batch_needs_hello_first(self) -> None:
        self.start_server()
        client = await self.connect(hello=False)
        sent = client.send(batch_of([inner(event="note")]))
        reply = await client.reply_to(sent["id"])
        self.assertEqual(reply["code"], ErrorCode.HELLO_REQUIRED)

    @async_test
    async def test_stream_events_keep_their_order_after_the_replies(self) -> None:
        client = await self.client()
        subscribe = inner("subscribe", room="r")
        publish = inner(event="note", room="r", data="hi", ack=True)
        client.send(batch_of([subscribe, publish]))
        first = await client.next_message()
        second = await client.next_message()
        third = await client.next_message()
        # The subscribe's ack leaves before the room's event, whose publish
        # is acknowledged after it, exactly as without a batch.
        self.assertEqual((first["type"], first["ref"]), ("ack", subscribe["id"]))
        self.assertEqual((second["type"], second["data"]), ("event", "hi"))
        self.assertEqual((third["type"], third["ref"]), ("ack", publish["id"]))

    @async_test
    async def test_deduplication_applies_per_inner_envelope(self) -> None:
        client = await self.client()
        calls: list[Any] = []

        def count(ctx: Context, data: Any) -> None:
            calls.append(data)

        self.hub.on("count", count)
        once = inner(event="count", data=1, ack=True)
        client.send(batch_of([once, once]))
        reply = await client.next_message()
        self.assertEqual(refs(reply), [("ack", once["id"], None)] * 2)
        self.assertEqual(calls, [1])


class BatchObservedTests(BatchServerMixin, ServerTestCase):
    @async_test
    async def test_the_inspector_sees_each_envelope_of_a_batch_both_ways(self) -> None:
        self.clock = Clock()
        self.clients = []
        self.hub = Hub(HubOptions(inspect=True, open_rooms=True), clock=self.clock)
        self.hub.on("note", lambda ctx, data: None)
        self.service = WarpSocketService(self.hub, ["tcp:0:interface=127.0.0.1"])
        self.service.startService()
        self.addCleanup(self._stop_server)
        self.port = self.service.ports[0].getHost().port
        client = await self.connect(hello=False)
        await self.agree(client)
        assert self.hub.observe is not None and self.hub.observe.tap is not None
        tap = self.hub.observe.tap
        [conn_id] = self.hub.port.connections
        tap.watch(conn_id)
        sent = [inner(event="note", data=i, ack=True) for i in range(3)]
        client.send(batch_of(sent))
        reply = await client.next_message()
        self.assertEqual(reply["type"], "batch")
        seen = [
            (r["dir"], r["envelope"]["type"], r["envelope"].get("ref")) for r in tap.watch(conn_id)
        ]
        ids = [m["id"] for m in sent]
        self.assertEqual(
            seen, [("in", "event", None)] * 3 + [("out", "ack", ident) for ident in ids]
        )


class BatchRateTests(BatchServerMixin, SecureTestCase):
    @async_test
    async def test_each_inner_envelope_costs_a_token_of_the_message_rate(self) -> None:
        # A burst of 20 tokens and a frozen clock: the hello takes one, the
        # batch frame one (its first envelope), then 18 more envelopes pass.
        hub = self.start_secure(SecurityOptions(message_rate=10, message_burst=20))
        hub.on("note", lambda ctx, data: None)
        client = await self.connect(hello=False)
        await self.agree(client)
        sent = [inner(event="note", data=i, ack=True) for i in range(30)]
        client.send(batch_of(sent))
        reply = await client.next_message()
        answers = refs(reply)
        self.assertEqual(answers[:19], [("ack", m["id"], None) for m in sent[:19]])
        self.assertEqual(
            answers[19:], [("error", m["id"], ErrorCode.RATE_LIMITED) for m in sent[19:]]
        )
        self.assertEqual(hub.metrics.traffic.messages_in["event"], 19)

    @async_test
    async def test_refusals_inside_a_batch_are_answered_only_as_far_as_they_pay(self) -> None:
        # Tiny envelopes over the rate must not make the server write more
        # than it reads: answers are paid from the refused bytes
        # (security.md "Refusals"), as for frames that come alone.
        hub = self.start_secure(SecurityOptions(message_rate=20, message_burst=40))
        hub.on("m", lambda ctx, data: None)
        client = await self.connect(hello=False)
        await self.agree(client)
        sent = client.send(batch_of([inner(event="m", ack=True) for _ in range(64)]))
        size = len(json.dumps(sent).encode())
        reply = await client.next_message()
        refused = [m for m in reply["data"] if m.get("code") == ErrorCode.RATE_LIMITED]
        self.assertEqual(hub.metrics.traffic.messages_in["event"], 39)  # 40 - the hello's token
        self.assertGreater(len(refused), 0)
        self.assertLess(len(refused), 25)  # 25 refused, not all answered
        # What the answers took (less the last, which may overdraw) is paid by
        # the 512-byte allowance and the refused envelopes' share of the frame.
        sizes = [len(json.dumps(m, separators=(",", ":")).encode()) for m in refused]
        self.assertLessEqual(sum(sizes) - max(sizes), 512 + 25 * (size // 64 + 6))
        self.assertIsNone(client.close_code)  # fewer refusals than a burst: still open


class BatchClusterTests(BatchServerMixin, ClusterCase):
    @async_test
    async def test_inner_envelopes_wait_for_their_dedup_claims_in_order(self) -> None:
        # Redis: each acked event first claims its id in the cluster, so the
        # inner envelopes are held and fed in order; their acks come later,
        # alone. Every one is handled once and acknowledged.
        self.start_redis()
        node = self.node("a")
        await self.healthy(node)
        seen: list[Any] = []
        node.hub.on("note", lambda ctx, data: seen.append(data))
        client = await connect(node.port)
        self.clients.append(client)
        self.addCleanup(self._close, client)
        await self.agree(client)
        sent = [inner(event="note", data=i, ack=True) for i in range(10)]
        client.send(batch_of([*sent, sent[3]]))  # a retry of the fourth, in the same batch
        acked: list[str] = []
        while len(acked) < 11:
            message = await client.next_message()
            found = message["data"] if message["type"] == "batch" else [message]
            acked += [m["ref"] for m in found if m["type"] == "ack"]
        self.assertEqual(acked, [m["id"] for m in sent] + [sent[3]["id"]])
        self.assertEqual(seen, list(range(10)))
        self.assertTrue(node.hub.backend.clustered)


class BatchesOffTests(BatchServerMixin, ServerTestCase):
    def test_the_command_line_turns_them_off(self) -> None:
        from warpsocket.server.cli import Options

        options = Options()
        options.parseOptions([])
        self.assertTrue(options["hub_options"].batches)
        options = Options()
        options.parseOptions(["--no-batches"])
        self.assertFalse(options["hub_options"].batches)

    @async_test
    async def test_a_hub_without_batches_grants_none_and_refuses_them(self) -> None:
        self.clock = Clock()
        self.clients = []
        self.hub = Hub(HubOptions(batches=False), clock=self.clock)
        self.hub.on("note", lambda ctx, data: None)
        self.service = WarpSocketService(self.hub, ["tcp:0:interface=127.0.0.1"])
        self.service.startService()
        self.addCleanup(self._stop_server)
        self.port = self.service.ports[0].getHost().port
        client = await self.connect(hello=False)
        welcome = await self.agree(client)
        self.assertEqual(welcome["data"]["extensions"], {})
        sent = client.send(batch_of([inner(event="note", ack=True)]))
        reply = await client.reply_to(sent["id"])
        self.assertEqual(reply["code"], ErrorCode.UNKNOWN_TYPE)


class ParamsTests(ServerTestCase):
    def test_bounds_follow_a_small_message_size(self) -> None:
        from warpsocket.server.batches import offered_batches

        params = BatchParams.for_core(CoreOptions(max_message_size=16_384))
        self.assertEqual(params.max_bytes, 2_048)  # max_values: 16384 / 8
        params = BatchParams.for_core(CoreOptions(max_message_size=1_500))
        self.assertEqual(params.max_bytes, 1_024)  # max_values: at least 1024
        tiny = CoreOptions(max_message_size=512)
        self.assertNotIn("batch", offered_batches(tiny).extensions)

    def test_bad_configured_bounds_are_refused(self) -> None:
        with self.assertRaises(ValueError):
            BatchParams(1, 65536)
        from warpsocket.server.batches import offered_batches

        with self.assertRaises(ValueError):
            offered_batches(CoreOptions(extensions={"batch": {"max_envelopes": "x"}}))
        too_large = {"batch": {"max_envelopes": 8, "max_bytes": 65_536}}
        with self.assertRaises(ValueError):  # more than max_values (16384 / 8)
            offered_batches(CoreOptions(max_message_size=16_384, extensions=too_large))
        own = {"batch": {"max_envelopes": 8, "max_bytes": 2_048}}
        core = CoreOptions(max_message_size=16_384, extensions=own)
        self.assertIs(offered_batches(core), core)

    def test_protobuf_carries_a_batch_at_the_deepest_inner_depth(self) -> None:
        codec = ProtobufCodec()
        value: Any = 0
        for _ in range(DEFAULT_MAX_DEPTH - 2):
            value = [value]
        note = inner(event="note", data=value)
        batch = Envelope(MessageType.BATCH, "b1", 1, data=[note])
        decoded = codec.decode(codec.encode(batch), True)
        self.assertEqual(decoded.data, [note])
        # One level more is outside the model, as it would be alone.
        deeper = Envelope(MessageType.BATCH, "b2", 1, data=[{**note, "data": [value]}])
        with self.assertRaises(Exception) as raised:
            codec.decode(codec.encode(deeper), True)
        self.assertIn("deeper", str(raised.exception))

    def test_json_and_msgpack_frames_decode_to_the_same_batch(self) -> None:
        note = inner(event="note", data={"k": [1, 2.5, "s", None, True]})
        raw = {"type": "batch", "id": "b1", "timestamp": 1, "data": [note]}
        from warpsocket.protocol.codecs import JsonCodec, MsgpackCodec

        from_json = JsonCodec().decode(json.dumps(raw).encode(), False)
        from_msgpack = MsgpackCodec().decode(msgpack.packb(raw), True)
        self.assertEqual(from_json, from_msgpack)
        self.assertEqual(from_json.type, MessageType.BATCH)
