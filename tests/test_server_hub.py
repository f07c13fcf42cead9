"""End-to-end tests of the hub over real sockets on 127.0.0.1.

Each test runs a WarpSocketService on an ephemeral port; its timers
(heartbeats, timeouts, retries, session expiry) run on a ``Clock`` that the
test advances, so nothing here sleeps for protocol time.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import FrozenInstanceError
from typing import Any

import msgpack
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import LogEvent, globalLogPublisher
from twisted.python.failure import Failure

from tests.wsclient import (
    JSON_SUBPROTOCOL,
    MSGPACK_SUBPROTOCOL,
    HandshakeRefusedError,
    Message,
    ServerTestCase,
    WsClient,
    async_test,
    http_get,
    wait_until,
)
from warpsocket.backends.memory import MemoryBackend
from warpsocket.core.history import HistoryLimits
from warpsocket.core.server import CoreOptions
from warpsocket.protocol.codes import ErrorCode
from warpsocket.protocol.envelope import Envelope
from warpsocket.server.context import Context
from warpsocket.server.hub import MAX_HELD_FRAMES, STREAM_COLLECT_TICKS, AckTimeoutError
from warpsocket.server.middleware import Handshake, Middleware, Reject


def is_event(stream: str | None = None, event: str | None = None) -> Callable[[Message], bool]:
    def match(message: Message) -> bool:
        return (
            message.get("type") == "event"
            and (stream is None or message.get("stream") == stream)
            and (event is None or message.get("event") == event)
        )

    return match


def events_of(client: WsClient, stream: str) -> list[Message]:
    return [m for m in client.messages if m.get("type") == "event" and m.get("stream") == stream]


class UserFromQuery(Middleware):
    """Authenticates by ``?user=<name>`` (a stand-in for real credentials)."""

    def on_connect(self, handshake: Handshake) -> None:
        users = handshake.params.get("user")
        if users:
            handshake.user = users[0]


async def barrier(client: WsClient) -> None:
    """A call round trip: everything the server sent before it has arrived."""
    reply = await client.request({"type": "call", "event": "ping"})
    assert reply["type"] in ("result", "error"), reply


# ---------------------------------------------------------------- handshake


class HandshakeTests(ServerTestCase):
    @async_test
    async def test_no_subprotocol_gets_json(self) -> None:
        self.start_server()
        client = await self.connect(protocols=None)
        self.assertIsNone(client.subprotocol)
        payload, is_binary = client.frames[0]
        self.assertFalse(is_binary)
        self.assertEqual(json.loads(payload)["type"], "welcome")

    @async_test
    async def test_first_supported_subprotocol_wins(self) -> None:
        self.start_server()
        client = await self.connect(protocols=["x.unknown", JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL])
        self.assertEqual(client.subprotocol, JSON_SUBPROTOCOL)

    @async_test
    async def test_msgpack_round_trip_in_binary_frames(self) -> None:
        hub = self.start_server()
        hub.on("echo", lambda ctx, data: data)
        client = await self.connect(protocols=[MSGPACK_SUBPROTOCOL])
        self.assertEqual(client.subprotocol, MSGPACK_SUBPROTOCOL)
        data = {"text": "héllo ✓", "n": [1, 2.5, None, True], "nested": {"k": "v"}}
        reply = await client.request({"type": "call", "event": "echo", "data": data})
        self.assertEqual(reply["type"], "result")
        self.assertEqual(reply["data"], data)
        self.assertTrue(all(is_binary for _, is_binary in client.frames))
        self.assertEqual(msgpack.unpackb(client.frames[-1][0])["data"], data)
        # A text frame on a msgpack connection is a bad frame.
        client.send_raw(b'{"type":"heartbeat","id":"x","timestamp":1}', binary=False)
        error = await client.next_of("error")
        self.assertEqual(error["code"], 4000)

    @async_test
    async def test_only_unknown_subprotocols_refused_with_400(self) -> None:
        self.start_server()
        with self.assertRaises(HandshakeRefusedError) as caught:
            await self.connect(protocols=["warpsocket.v9.xml"])
        self.assertEqual(caught.exception.status, 400)
        self.assertEqual(self.hub.connection_count, 0)
        self.assertEqual(
            self.metric("warpsocket_rejected_handshakes_total", {"reason": "unsupported_codec"}),
            1.0,
        )

    @async_test
    async def test_healthz_and_metrics(self) -> None:
        self.start_server()
        code, body, _ = await http_get(self.port, "/healthz")
        self.assertEqual((code, body), (200, b"ok\n"))
        await self.connect()
        await self.connect()
        code, body, headers = await http_get(self.port, "/metrics")
        self.assertEqual(code, 200)
        self.assertIn(b"warpsocket_connections 2.0", body)
        self.assertIn(b"warpsocket_sessions 2.0", body)
        self.assertTrue(headers.getRawHeaders(b"content-type", [b""])[0].startswith(b"text/plain"))

    @async_test
    async def test_welcome_contents(self) -> None:
        self.start_server(
            CoreOptions(node="n7", heartbeat_interval_ms=5_000, heartbeat_timeout_ms=9_000),
            open_rooms=True,
        )
        client = await self.connect(hello=False)
        hello = client.send({"type": "hello", "data": {"rooms": ["b", "a"]}})
        welcome = await client.next_message()
        self.assertEqual(welcome["type"], "welcome")
        self.assertEqual(welcome["ref"], hello["id"])
        data = welcome["data"]
        self.assertFalse(data["resumed"])
        self.assertEqual(data["rooms"], ["a", "b"])
        self.assertEqual(data["denied"], {})
        self.assertEqual(data["heartbeat"], {"interval": 5_000, "timeout": 9_000})
        self.assertEqual(
            data["limits"],
            {
                "max_message_size": 1_048_576,
                "max_pending": 1_000,
                "max_depth": 64,
                "max_values": 131_072,
            },
        )
        self.assertEqual(data["node"], "n7")
        self.assertEqual(set(data["streams"]), {"direct", "broadcast", "room:a", "room:b"})
        for position in data["streams"].values():
            self.assertEqual(position["offset"], 0)
            self.assertTrue(position["recovered"])
        self.assertEqual(self.hub.session_count, 1)
        self.assertTrue(self.hub.is_connected(data["session"]))


# ---------------------------------------------------------------- bad input


class BadInputTests(ServerTestCase):
    async def _usable(self, client: WsClient) -> None:
        reply = await client.request({"type": "call", "event": "ping", "data": 1})
        self.assertEqual(reply["type"], "result")
        self.assertEqual(reply["data"], "pong")

    def _start(self, **core: Any) -> None:
        hub = self.start_server(CoreOptions(**core))
        hub.on("ping", lambda ctx, data: "pong")

    @async_test
    async def test_garbage_text_is_4000_and_connection_stays(self) -> None:
        self._start()
        client = await self.connect()
        client.send_raw(b"this is {not json")
        error = await client.next_message()
        self.assertEqual((error["type"], error["code"]), ("error", 4000))
        self.assertEqual(error["data"]["name"], "bad_frame")
        self.assertNotIn("ref", error)
        client.send_raw(b"\x00\x01binary", binary=True)
        self.assertEqual((await client.next_message())["code"], 4000)
        await self._usable(client)
        self.assertEqual(self.metric("warpsocket_protocol_errors_total", {"code": "4000"}), 2.0)

    @async_test
    async def test_json_array_is_4001(self) -> None:
        self._start()
        client = await self.connect()
        client.send_raw(b'[{"type": "event"}]')
        error = await client.next_message()
        self.assertEqual((error["type"], error["code"]), ("error", 4001))
        await self._usable(client)

    @async_test
    async def test_invalid_field_is_4001_with_ref(self) -> None:
        self._start()
        client = await self.connect()
        sent = client.send({"type": "event", "event": "x", "ttl": -5})
        error = await client.next_message()
        self.assertEqual((error["code"], error["ref"]), (4001, sent["id"]))

    @async_test
    async def test_unknown_type_is_4002_with_ref(self) -> None:
        self._start()
        client = await self.connect()
        sent = client.send({"type": "teleport"})
        error = await client.next_message()
        self.assertEqual((error["type"], error["code"], error["ref"]), ("error", 4002, sent["id"]))
        await self._usable(client)

    @async_test
    async def test_event_before_hello_is_4003(self) -> None:
        self._start()
        client = await self.connect(hello=False)
        sent = client.send({"type": "event", "event": "ping"})
        error = await client.next_message()
        self.assertEqual((error["code"], error["ref"]), (4003, sent["id"]))
        welcome = await client.hello()
        self.assertEqual(welcome["type"], "welcome")
        await self._usable(client)

    @async_test
    async def test_second_hello_and_server_only_types_are_4006(self) -> None:
        self._start()
        client = await self.connect()
        error = await client.hello()
        self.assertEqual((error["type"], error["code"]), ("error", 4006))
        reply = await client.request({"type": "result", "ref": "zzz"})
        self.assertEqual(reply["code"], 4006)
        await self._usable(client)

    @async_test
    async def test_oversized_message_closes_1009_and_others_keep_going(self) -> None:
        self._start(max_message_size=2_048)
        bystander = await self.connect()
        client = await self.connect()
        self.assertEqual(
            client.welcome and client.welcome["data"]["limits"]["max_message_size"], 2_048
        )
        # Just under the limit is fine.
        small = client.send({"type": "event", "event": "nothing", "data": "x" * 1_800})
        self.assertEqual((await client.reply_to(small["id"]))["code"], 4301)
        client.send({"type": "event", "event": "ping", "data": "x" * 4_000})
        code, _ = await client.wait_closed()
        self.assertEqual(code, 1009)
        await self._usable(bystander)
        await wait_until(lambda: self.hub.connection_count == 1, what="detach")


# ---------------------------------------------------------------- sessions and resume


class SlowBackend(MemoryBackend):
    """The memory backend, but stream preparation waits for the test (as Redis may)."""

    def __init__(self) -> None:
        super().__init__(HistoryLimits())
        self.gate: Deferred[None] = Deferred()

    def prepare(self, keys: Any) -> Deferred[None]:
        gate: Deferred[None] = Deferred()
        self.gate.addCallback(lambda _: gate.callback(None))
        return gate


class HeldFramesTests(ServerTestCase):
    @async_test
    async def test_frames_held_behind_the_backend_are_bounded(self) -> None:
        backend = SlowBackend()
        self.start_server(backend=backend)
        client = await self.connect(hello=False)
        client.send({"type": "hello", "data": {}})
        sent = [client.send({"type": "event", "event": "x"}) for _ in range(MAX_HELD_FRAMES + 5)]
        refused = [await client.next_message() for _ in range(5)]
        self.assertEqual(
            [(m["code"], m["ref"]) for m in refused], [(4206, e["id"]) for e in sent[-5:]]
        )
        backend.gate.callback(None)
        welcome = await client.next_message()
        self.assertEqual(welcome["type"], "welcome")
        answers = [await client.next_message() for _ in range(MAX_HELD_FRAMES)]
        self.assertEqual(
            [(m["code"], m["ref"]) for m in answers],
            [(4301, e["id"]) for e in sent[:MAX_HELD_FRAMES]],
        )

    @async_test
    async def test_heartbeats_are_answered_while_frames_wait_for_the_backend(self) -> None:
        backend = SlowBackend()
        self.start_server(backend=backend, open_rooms=True)
        backend.gate.callback(None)  # the hello goes through
        client = await self.connect()
        backend.gate = Deferred()  # the subscribe waits, and the event behind it
        subscribe = client.send({"type": "subscribe", "room": "r"})
        event = client.send({"type": "event", "event": "x", "ack": True})
        beat = client.send({"type": "heartbeat"})
        answer = await client.next_message()
        self.assertEqual((answer["type"], answer.get("ref")), ("heartbeat", beat["id"]))
        backend.gate.callback(None)
        later = [await client.next_message() for _ in range(2)]
        # The held frames then follow, in order.
        self.assertEqual([m["ref"] for m in later], [subscribe["id"], event["id"]])


class ResumeTests(ServerTestCase):
    @async_test
    async def test_resume_replays_missed_messages_in_order(self) -> None:
        hub = self.start_server(open_rooms=True)
        first = await self.connect(rooms=["chat"])
        session = first.session
        assert session is not None
        for n in (1, 2):
            hub.publish("chat", "say", {"n": n})
        await first.wait_for(lambda m: m.get("offset") == 2 and m.get("stream") == "room:chat")
        await first.drop()
        await wait_until(lambda: not hub.is_connected(session), what="detach")
        for n in (3, 4, 5):
            hub.publish("chat", "say", {"n": n})
        hub.send(session, "dm", "while you were away")
        hub.broadcast("news", "b1")

        second = await self.connect(session=session, streams=first.positions, rooms=["chat"])
        welcome = second.welcome
        assert welcome is not None
        self.assertTrue(welcome["data"]["resumed"])
        self.assertEqual(welcome["data"]["session"], session)
        # protocol.md 4.2: the welcome carries the current positions.
        streams = welcome["data"]["streams"]
        self.assertEqual(streams["room:chat"]["offset"], 5)
        self.assertTrue(streams["room:chat"]["recovered"])
        self.assertEqual(streams["direct"]["offset"], 1)
        self.assertTrue(streams["direct"]["recovered"])
        hub.publish("chat", "say", {"n": 6})
        await second.wait_for(lambda m: m.get("offset") == 6 and m.get("stream") == "room:chat")
        await barrier(second)
        room = events_of(second, "room:chat")
        self.assertEqual([m["offset"] for m in room], [3, 4, 5, 6])
        self.assertEqual([m["data"]["n"] for m in room], [3, 4, 5, 6])
        self.assertEqual([m["data"] for m in events_of(second, "direct")], ["while you were away"])
        self.assertEqual([m["data"] for m in events_of(second, "broadcast")], ["b1"])
        self.assertEqual(
            self.metric("warpsocket_resumes_total", {"outcome": "resumed"}),
            1.0,
        )

    @async_test
    async def test_trimmed_history_is_not_recovered(self) -> None:
        hub = self.start_server(CoreOptions(history=HistoryLimits(max_messages=2)), open_rooms=True)
        first = await self.connect(rooms=["chat"])
        session = first.session
        assert session is not None
        hub.publish("chat", "say", 1)
        await first.wait_for(is_event("room:chat"))
        await first.drop()
        await wait_until(lambda: not hub.is_connected(session), what="detach")
        for n in (2, 3, 4, 5):
            hub.publish("chat", "say", n)
        second = await self.connect(session=session, streams=first.positions, rooms=["chat"])
        assert second.welcome is not None
        chat = second.welcome["data"]["streams"]["room:chat"]
        self.assertEqual((chat["offset"], chat["recovered"]), (5, False))
        self.assertTrue(second.welcome["data"]["streams"]["direct"]["recovered"])
        hub.publish("chat", "say", 6)
        event = await second.wait_for(is_event("room:chat"))
        self.assertEqual((event["offset"], event["data"]), (6, 6))
        self.assertEqual(len(events_of(second, "room:chat")), 1)

    @async_test
    async def test_wrong_epoch_is_not_recovered(self) -> None:
        hub = self.start_server(open_rooms=True)
        hub.publish("chat", "say", 1)
        client = await self.connect(
            rooms=["chat"], streams={"room:chat": {"offset": 0, "epoch": "other-epoch"}}
        )
        assert client.welcome is not None
        chat = client.welcome["data"]["streams"]["room:chat"]
        # Not recovered (the other epoch is gone), but this epoch is whole: replayed.
        self.assertEqual((chat["offset"], chat["recovered"]), (0, False))
        event = await client.wait_for(is_event("room:chat"))
        self.assertEqual((event["offset"], event["data"]), (1, 1))

    @async_test
    async def test_session_replaced_closes_old_connection_4400(self) -> None:
        hub = self.start_server()
        closes: list[int | None] = []
        hub.on_close(lambda ctx, code: closes.append(code))
        old = await self.connect()
        new = await self.connect(session=old.session)
        assert new.welcome is not None
        self.assertTrue(new.welcome["data"]["resumed"])
        code, reason = await old.wait_closed()
        self.assertEqual((code, reason), (4400, "session_replaced"))
        assert old.session is not None
        hub.send(old.session, "hi", 1)
        event = await new.wait_for(is_event("direct"))
        self.assertEqual(event["data"], 1)
        # The replaced connection does not end the session.
        self.assertEqual(closes, [])
        self.assertTrue(hub.is_connected(old.session))

    @async_test
    async def test_replaced_connection_cannot_take_the_session_back(self) -> None:
        hub = self.start_server()
        old = await self.connect()
        session = old.session
        assert session is not None
        old.freeze()  # it has not read the server's close frame yet ...
        new = await self.connect(session=session)
        before = self.metric("warpsocket_bytes_in_total")
        sent = old.send({"type": "hello", "data": {"session": session}})  # ... says hello again
        size = len(json.dumps(sent).encode())
        await wait_until(
            lambda: self.metric("warpsocket_bytes_in_total") >= before + size, what="old hello"
        )
        old.thaw()
        code, _ = await old.wait_closed()
        self.assertEqual(code, 4400)
        await barrier(new)
        self.assertIsNone(new.close_code)
        info = hub.core.sessions.get(session)
        assert info is not None and info.conn is not None
        self.assertEqual(hub._protocols[info.conn].session, session)
        self.assertEqual(self.metric("warpsocket_messages_in_total", {"type": "hello"}), 2.0)
        self.assertEqual(old.queue, [])
        self.assertEqual(self.metric("warpsocket_resumes_total", {"outcome": "resumed"}), 1.0)

    @async_test
    async def test_expired_session_starts_over_and_fails_pending_acks(self) -> None:
        hub = self.start_server(CoreOptions(session_ttl_ms=30_000))
        client = await self.connect()
        session = client.session
        assert session is not None
        waiter = hub.send(session, "job", 1, ack=True, timeout=600)
        assert waiter is not None
        await client.wait_for(is_event("direct"))
        await client.drop()
        await wait_until(lambda: not hub.is_connected(session), what="detach")
        self.advance(31)
        failure = self.failureResultOf(waiter, AckTimeoutError)
        self.assertEqual(failure.value.code, ErrorCode.TIMEOUT)
        self.assertIsNone(hub.session_info(session))
        again = await self.connect(session=session, streams=client.positions)
        assert again.welcome is not None
        self.assertFalse(again.welcome["data"]["resumed"])
        self.assertNotEqual(again.session, session)
        self.assertFalse(again.welcome["data"]["streams"]["direct"]["recovered"])


# ---------------------------------------------------------------- handlers


class HandlerTests(ServerTestCase):
    @async_test
    async def test_plain_deferred_and_async_handlers(self) -> None:
        hub = self.start_server()

        @hub.on("double")
        def double(ctx: Context, data: int) -> int:
            return data * 2

        def later(ctx: Context, data: int) -> Deferred[int]:
            return deferLater(reactor, 0.01, lambda: data * 3)

        async def coroutine(ctx: Context, data: int) -> dict[str, Any]:
            await deferLater(reactor, 0.01, lambda: None)
            return {"n": data * 4, "session": ctx.session, "event": ctx.event}

        hub.on("triple", later)
        hub.on("quad", coroutine)
        client = await self.connect()
        for method, expected in (("double", 2), ("triple", 3)):
            reply = await client.request({"type": "call", "event": method, "data": 1})
            self.assertEqual((reply["type"], reply["data"]), ("result", expected))
        reply = await client.request({"type": "call", "event": "quad", "data": 1})
        self.assertEqual(reply["data"], {"n": 4, "session": client.session, "event": "quad"})
        # An acknowledged event is answered with an ack once the handler is done.
        reply = await client.request({"type": "event", "event": "triple", "data": 1, "ack": True})
        self.assertEqual(reply["type"], "ack")

    @async_test
    async def test_reject_other_errors_and_missing_handler(self) -> None:
        hub = self.start_server()
        errors: list[Failure] = []
        hub.on_error(lambda ctx, failure: errors.append(failure))

        def refuse(ctx: Context, data: Any) -> None:
            raise Reject(ErrorCode.FORBIDDEN, "not you")

        async def refuse_later(ctx: Context, data: Any) -> None:
            await deferLater(reactor, 0, lambda: None)
            raise Reject(ErrorCode.QUEUE_FULL)

        def broken(ctx: Context, data: Any) -> None:
            raise ZeroDivisionError("boom")

        hub.on("refuse", refuse)
        hub.on("refuse_later", refuse_later)
        hub.on("broken", broken)
        hub.on("ok", lambda ctx, data: "fine")
        client = await self.connect()
        reply = await client.request({"type": "call", "event": "refuse"})
        self.assertEqual((reply["type"], reply["code"]), ("error", 4102))
        self.assertEqual(reply["data"], {"name": "forbidden", "message": "not you"})
        reply = await client.request({"type": "event", "event": "refuse_later", "ack": True})
        self.assertEqual(reply["code"], 4206)
        reply = await client.request({"type": "call", "event": "broken"})
        self.assertEqual((reply["type"], reply["code"]), ("error", 4300))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual([f.type for f in errors], [ZeroDivisionError])
        reply = await client.request({"type": "call", "event": "missing"})
        self.assertEqual((reply["code"], reply["data"]["name"]), (4301, "no_handler"))
        # Fire-and-forget events are answered only when refused.
        sent = client.send({"type": "event", "event": "missing"})
        self.assertEqual((await client.next_message())["ref"], sent["id"])
        # Still open and serving after all that.
        reply = await client.request({"type": "call", "event": "ok"})
        self.assertEqual(reply["data"], "fine")
        self.assertIsNone(client.close_code)

    @async_test
    async def test_unencodable_result_is_4300_not_a_dropped_connection(self) -> None:
        hub = self.start_server()
        hub.on("bad", lambda ctx, data: {1, 2, 3})
        hub.on("nan", lambda ctx, data: float("nan"))
        hub.on("ok", lambda ctx, data: "fine")
        client = await self.connect()
        call = {"type": "call", "id": "bad-1", "event": "bad"}
        reply = await client.request(call)
        self.assertEqual((reply["type"], reply["code"]), ("error", 4300))
        reply = await client.request(call)  # the retry gets the recorded answer
        self.assertEqual(reply["code"], 4300)
        reply = await client.request({"type": "call", "event": "nan"})
        self.assertEqual(reply["code"], 4300)
        self.assertEqual(len(self.flushLoggedErrors(TypeError, ValueError)), 2)
        reply = await client.request({"type": "call", "event": "ok"})
        self.assertEqual(reply["data"], "fine")

    @async_test
    async def test_acked_event_is_deduplicated(self) -> None:
        hub = self.start_server()
        calls: list[Any] = []
        hub.on("count", lambda ctx, data: calls.append(data))
        client = await self.connect()
        envelope = {"type": "event", "id": "dup-1", "event": "count", "data": 7, "ack": True}
        client.send(envelope)
        client.send(envelope)
        first = await client.reply_to("dup-1")
        second = await client.reply_to("dup-1")
        self.assertEqual((first["type"], second["type"]), ("ack", "ack"))
        self.assertEqual(calls, [7])
        # Calls too: the retry gets the recorded result, never a second run.
        call = {"type": "call", "id": "dup-2", "event": "count", "data": 8}
        client.send(call)
        client.send(call)
        replies = [await client.reply_to("dup-2"), await client.reply_to("dup-2")]
        self.assertEqual([r["type"] for r in replies], ["result", "result"])
        self.assertEqual(calls, [7, 8])
        # A retry on a new connection of the same session is recognised too.
        again = await self.connect(session=client.session)
        reply = await again.request(envelope)
        self.assertEqual(reply["type"], "ack")
        self.assertEqual(calls, [7, 8])
        # Fire-and-forget events are not deduplicated.
        plain = {"type": "event", "id": "ff-1", "event": "count", "data": 9}
        again.send(plain)
        again.send(plain)
        await barrier(again)
        self.assertEqual(calls, [7, 8, 9, 9])

    @async_test
    async def test_retry_while_first_copy_is_in_flight(self) -> None:
        hub = self.start_server()
        pending: list[Deferred[None]] = []

        def slow(ctx: Context, data: Any) -> Deferred[None]:
            pending.append(Deferred())
            return pending[-1]

        hub.on("slow", slow)
        hub.on("ping", lambda ctx, data: "pong")
        client = await self.connect()
        envelope = {"type": "event", "id": "slow-1", "event": "slow", "ack": True}
        client.send(envelope)
        client.send(envelope)
        await barrier(client)
        self.assertEqual(len(pending), 1)
        self.assertEqual([m for m in client.queue if m.get("ref") == "slow-1"], [])
        pending[0].callback(None)
        reply = await client.reply_to("slow-1")
        self.assertEqual(reply["type"], "ack")
        self.assertEqual(len(pending), 1)

    @async_test
    async def test_expired_ttl_is_4302(self) -> None:
        hub = self.start_server()
        calls: list[Any] = []
        hub.on("x", lambda ctx, data: calls.append(data))
        self.clock.advance(100)
        client = await self.connect()
        sent = client.send({"type": "event", "event": "x", "ack": True, "timestamp": 1, "ttl": 5})
        reply = await client.reply_to(sent["id"])
        self.assertEqual(reply["code"], 4302)
        self.assertEqual(calls, [])

    @async_test
    async def test_hooks(self) -> None:
        hub = self.start_server()
        opened: list[tuple[str, bool]] = []
        closed: list[tuple[str, int | None]] = []
        errors: list[tuple[str | None, type[BaseException] | None]] = []

        @hub.on_open
        def on_open(ctx: Context, resumed: bool) -> None:
            opened.append((ctx.session, resumed))

        @hub.on_close
        def on_close(ctx: Context, code: int | None) -> None:
            closed.append((ctx.session, code))
            raise RuntimeError("hook broke")

        @hub.on_error
        def on_error(ctx: Context | None, failure: Failure) -> None:
            errors.append((ctx.session if ctx else None, failure.type))

        client = await self.connect()
        session = client.session
        assert session is not None
        self.assertEqual(opened, [(session, False)])
        await client.close(1000)
        await wait_until(lambda: bool(closed), what="on_close")
        self.assertEqual(closed, [(session, 1000)])
        self.assertEqual(errors, [(session, RuntimeError)])
        again = await self.connect(session=session)
        self.assertEqual(opened, [(session, False), (session, True)])
        await again.drop()
        await wait_until(lambda: len(closed) == 2, what="second on_close")
        self.assertEqual(closed[1][0], session)
        self.assertNotEqual(closed[1][1], 1000)

    @async_test
    async def test_auth_envelope(self) -> None:
        hub = self.start_server()
        client = await self.connect()
        reply = await client.request({"type": "auth", "data": {"token": "t"}})
        self.assertEqual(reply["code"], 4100)

        def authenticate(ctx: Context, token: str) -> None:
            if token != "good":
                raise Reject(ErrorCode.UNAUTHORIZED, "bad token")

        hub.authenticator = authenticate
        reply = await client.request({"type": "auth", "data": {"token": "bad"}})
        self.assertEqual(reply["code"], 4100)
        reply = await client.request({"type": "auth", "data": {"token": "good"}})
        self.assertEqual(reply["type"], "ack")


class UserAndClaimsFromQuery(Middleware):
    def on_connect(self, handshake: Handshake) -> None:
        handshake.user = handshake.params["user"][0]
        handshake.claims = {"role": "member", "rooms": ["a", "b"]}


class SessionInfoTests(ServerTestCase):
    @async_test
    async def test_session_info_is_a_read_only_snapshot(self) -> None:
        hub = self.start_server(open_rooms=True, middleware=[UserAndClaimsFromQuery()])
        client = await self.connect(path="/ws?user=alice", rooms=["a", "b"])
        session = client.session
        assert session is not None
        info = hub.session_info(session)
        assert info is not None
        self.assertEqual(
            (info.id, info.user, dict(info.claims), info.rooms, info.connected),
            (session, "alice", {"role": "member", "rooms": ["a", "b"]}, {"a", "b"}, True),
        )
        self.assertIsInstance(info.rooms, frozenset)
        with self.assertRaises(FrozenInstanceError):
            info.user = "mallory"  # type: ignore[misc]
        with self.assertRaises(TypeError):
            info.claims["role"] = "admin"  # type: ignore[index]
        info.claims["rooms"].append("admin-room")
        # Nothing reaches the core's record through the view.
        record = hub.core.sessions[session]
        self.assertEqual(
            (record.user, dict(record.claims)),
            ("alice", {"role": "member", "rooms": ["a", "b"]}),
        )

        hub.leave(session, "a")
        await client.drop()
        await wait_until(lambda: not hub.is_connected(session), what="detach")
        later = hub.session_info(session)
        assert later is not None
        self.assertEqual((later.rooms, later.connected), ({"b"}, False))
        # A snapshot: the earlier view still says what was true when taken.
        self.assertEqual((info.rooms, info.connected), ({"a", "b"}, True))
        self.assertIsNone(hub.session_info("no-such-session"))


# ---------------------------------------------------------------- sending


class SendTests(ServerTestCase):
    @async_test
    async def test_send_send_user_and_send_group(self) -> None:
        hub = self.start_server(middleware=[UserFromQuery()])
        alice1 = await self.connect(path="/ws?user=alice")
        alice2 = await self.connect(path="/ws?user=alice")
        bob = await self.connect(path="/ws?user=bob")
        anon = await self.connect()
        assert alice1.session and alice2.session and bob.session and anon.session
        self.assertEqual(hub.sessions_of_user("alice"), {alice1.session, alice2.session})

        hub.send(anon.session, "note", {"x": 1})
        event = await anon.wait_for(is_event("direct"))
        self.assertEqual(
            {k: event[k] for k in ("event", "data", "stream", "offset")},
            {"event": "note", "data": {"x": 1}, "stream": "direct", "offset": 1},
        )
        self.assertEqual(event["epoch"], anon.positions["direct"]["epoch"])

        self.assertEqual(self.successResultOf(hub.send_user("alice", "for-alice", 1)), 2)
        self.assertEqual(self.successResultOf(hub.send_user("nobody", "x")), 0)
        for client in (alice1, alice2):
            event = await client.wait_for(is_event("direct"))
            self.assertEqual((event["event"], event["data"]), ("for-alice", 1))

        hub.send_group([bob.session, anon.session], "group", 2)
        for client, offset in ((bob, 1), (anon, 2)):
            event = await client.wait_for(is_event("direct"))
            self.assertEqual((event["event"], event["offset"]), ("group", offset))
        for client in (alice1, alice2, bob, anon):
            await barrier(client)
        self.assertEqual(
            [len(events_of(c, "direct")) for c in (alice1, alice2, bob, anon)], [1, 1, 1, 2]
        )

    @async_test
    async def test_unencodable_payload_is_refused_before_it_is_stored(self) -> None:
        hub = self.start_server(open_rooms=True)
        client = await self.connect(rooms=["r"])
        assert client.session is not None
        for bad in ({1, 2}, b"bytes", float("inf"), "\ud800", [object()]):
            with self.subTest(bad=bad):
                self.assertRaises((TypeError, ValueError), hub.publish, "r", "x", bad)
                self.assertRaises((TypeError, ValueError), hub.send, client.session, "x", bad)
                self.assertRaises((TypeError, ValueError), hub.broadcast, "x", bad)
        stored = await hub.publish("r", "x", "good")
        self.assertEqual(stored.offset, 1)
        await client.drop()
        await wait_until(lambda: not hub.is_connected(client.session or ""), what="detach")
        # Resuming replays the stream: nothing poisonous is in it.
        again = await self.connect(session=client.session, streams={}, rooms=["r"])
        assert again.welcome is not None
        self.assertTrue(again.welcome["data"]["resumed"])

    @async_test
    async def test_publish_and_broadcast(self) -> None:
        hub = self.start_server(open_rooms=True)
        inside = await self.connect(rooms=["room1"])
        outside = await self.connect()
        stored = await hub.publish("room1", "update", [1, 2])
        self.assertEqual((stored.stream, stored.offset), ("room:room1", 1))
        event = await inside.wait_for(is_event("room:room1"))
        self.assertEqual(
            (event["event"], event["data"], event["id"]), ("update", [1, 2], stored.id)
        )
        hub.broadcast("all", "hello everyone")
        for client in (inside, outside):
            event = await client.wait_for(is_event("broadcast"))
            self.assertEqual(
                (event["event"], event["data"], event["offset"]), ("all", "hello everyone", 1)
            )
        await barrier(outside)
        self.assertEqual(events_of(outside, "room:room1"), [])

    @async_test
    async def test_acked_send_resolves_on_ack(self) -> None:
        hub = self.start_server()
        client = await self.connect()
        assert client.session is not None
        waiter = hub.send(client.session, "job", {"id": 1}, ack=True)
        assert waiter is not None
        event = await client.wait_for(is_event("direct"))
        self.assertIs(event["ack"], True)
        self.assertFalse(waiter.called)
        self.assertEqual(self.metric("warpsocket_acks_pending"), 1.0)
        client.ack(event["id"])
        await waiter
        self.assertEqual(self.metric("warpsocket_acks_pending"), 0.0)
        # Cumulative acknowledgement of several.
        waiters = [hub.send(client.session, "job", n, ack=True) for n in range(3)]
        await client.wait_for(lambda m: m.get("offset") == 4)
        client.send({"type": "ack", "stream": "direct", "offset": 4})
        await DeferredList([w for w in waiters if w is not None], fireOnOneErrback=True)
        self.assertEqual(hub.core.sessions[client.session].pending, {})

    @async_test
    async def test_acked_send_retries_then_times_out(self) -> None:
        hub = self.start_server(CoreOptions(ack_retry_ms=10_000))
        client = await self.connect()
        assert client.session is not None
        waiter = hub.send(client.session, "job", 1, ack=True, timeout=25)
        assert waiter is not None
        first = await client.wait_for(is_event("direct"))
        self.advance(10)
        retry = await client.wait_for(is_event("direct"))
        self.assertEqual((retry["id"], retry["offset"]), (first["id"], first["offset"]))
        self.advance(10)
        await client.wait_for(is_event("direct"))
        self.assertFalse(waiter.called)
        self.advance(5)
        failure = self.failureResultOf(waiter, AckTimeoutError)
        self.assertEqual(failure.value.code, ErrorCode.TIMEOUT)
        self.assertEqual(failure.value.session, client.session)
        # A late ack is harmless.
        client.ack(first["id"])
        await barrier(client)

    @async_test
    async def test_client_room_publish_needs_permission(self) -> None:
        hub = self.start_server()
        hub.on("ping", lambda ctx, data: "pong")
        member = await self.connect(rooms=["chat"])
        assert member.welcome is not None
        self.assertEqual(member.welcome["data"]["denied"], {"chat": 4102})
        self.assertEqual(member.welcome["data"]["rooms"], [])
        publisher = await self.connect()
        reply = await publisher.request(
            {"type": "event", "event": "say", "room": "chat", "data": "hi", "ack": True}
        )
        self.assertEqual((reply["type"], reply["code"]), ("error", 4102))
        reply = await publisher.request({"type": "subscribe", "room": "chat"})
        self.assertEqual((reply["type"], reply["code"]), ("error", 4102))

    @async_test
    async def test_client_room_publish_with_open_rooms(self) -> None:
        hub = self.start_server(open_rooms=True)
        member = await self.connect(rooms=["chat"])
        publisher = await self.connect()
        reply = await publisher.request(
            {"type": "event", "event": "say", "room": "chat", "data": {"t": "hi"}, "ack": True}
        )
        self.assertEqual(reply["type"], "ack")
        event = await member.wait_for(is_event("room:chat"))
        self.assertEqual((event["event"], event["data"], event["offset"]), ("say", {"t": "hi"}, 1))
        self.assertEqual(hub.room_members("chat"), {member.session})

    @async_test
    async def test_subscribe_unsubscribe_and_presence(self) -> None:
        hub = self.start_server(open_rooms=True)
        client = await self.connect()
        hub.publish("news", "old", 1)
        reply = await client.request({"type": "subscribe", "room": "news"})
        self.assertEqual(reply["type"], "ack")
        self.assertEqual(reply["data"]["stream"], "room:news")
        self.assertEqual((reply["data"]["offset"], reply["data"]["recovered"]), (1, True))
        self.assertEqual(hub.room_members("news"), {client.session})
        self.assertEqual(hub.rooms(), ["news"])
        hub.publish("news", "new", 2)
        event = await client.wait_for(is_event("room:news"))
        self.assertEqual((event["data"], event["offset"]), (2, 2))
        # Subscribing with a position replays what came after it.
        other = await self.connect()
        reply = await other.request(
            {"type": "subscribe", "room": "news", "offset": 0, "epoch": reply["data"]["epoch"]}
        )
        self.assertEqual((reply["data"]["offset"], reply["data"]["recovered"]), (2, True))
        replayed = [await other.wait_for(is_event("room:news")) for _ in range(2)]
        self.assertEqual([m["offset"] for m in replayed], [1, 2])
        reply = await client.request({"type": "unsubscribe", "room": "news"})
        self.assertEqual(reply["type"], "ack")
        self.assertEqual(hub.room_members("news"), {other.session})
        hub.publish("news", "after", 3)
        await other.wait_for(is_event("room:news"))
        await barrier(client)
        self.assertEqual([m["data"] for m in events_of(client, "room:news")], [2])

    @async_test
    async def test_server_side_join_and_leave(self) -> None:
        hub = self.start_server()
        client = await self.connect()
        session = client.session
        assert session is not None
        hub.publish("vip", "before", 0)
        hub.join(session, "vip")
        notice = await client.next_of("subscribe")
        self.assertEqual((notice["room"], notice["offset"]), ("vip", 1))
        self.assertEqual(hub.room_members("vip"), {session})
        self.assertEqual(self.metric("warpsocket_rooms"), 1.0)
        hub.publish("vip", "inside", 1)
        event = await client.wait_for(is_event("room:vip"))
        self.assertEqual((event["data"], event["offset"]), (1, 2))
        hub.leave(session, "vip")
        notice = await client.next_of("unsubscribe")
        self.assertEqual(notice["room"], "vip")
        self.assertEqual(hub.room_members("vip"), set())
        self.assertEqual(self.metric("warpsocket_rooms"), 0.0)
        hub.publish("vip", "outside", 2)
        await barrier(client)
        self.assertEqual([m["data"] for m in events_of(client, "room:vip")], [1])

    @async_test
    async def test_streams_of_rooms_that_are_gone_are_forgotten(self) -> None:
        hub = self.start_server(CoreOptions(history=HistoryLimits(max_age_ms=5_000)))
        client = await self.connect()
        assert client.session is not None
        await hub.join(client.session, "temp")
        hub.publish("temp", "x", 1)
        hub.leave(client.session, "temp")
        streams = len(hub.store)  # type: ignore[arg-type]
        self.advance(STREAM_COLLECT_TICKS + 6)  # past the history age, through a sweep
        self.assertEqual(len(hub.store), streams - 1)  # type: ignore[arg-type]
        self.assertTrue(hub.is_connected(client.session))  # its own streams stay

    @async_test
    async def test_ttl_on_publish_becomes_placeholder_on_replay(self) -> None:
        hub = self.start_server(open_rooms=True)
        first = await self.connect(rooms=["r"])
        session = first.session
        assert session is not None
        await first.drop()
        await wait_until(lambda: not hub.is_connected(session), what="detach")
        hub.publish("r", "short", "gone", ttl=1)
        hub.publish("r", "long", "kept")
        self.advance(2)
        second = await self.connect(session=session, streams=first.positions)
        replay = [await second.wait_for(is_event("room:r")) for _ in range(2)]
        self.assertEqual(replay[0]["code"], 4302)
        self.assertNotIn("data", replay[0])
        self.assertEqual((replay[1]["offset"], replay[1]["data"]), (2, "kept"))


# ---------------------------------------------------------------- encode once


class FanoutTests(ServerTestCase):
    async def _crowd(self, count: int, protocols: list[str]) -> list[WsClient]:
        connecting = [
            Deferred.fromCoroutine(
                self.connect(rooms=["big"], protocols=[protocols[i % len(protocols)]])
            )
            for i in range(count)
        ]
        results = await DeferredList(connecting, fireOnOneErrback=True, consumeErrors=True)
        return [client for _, client in results]

    @async_test
    async def test_room_of_50_is_encoded_once(self) -> None:
        hub = self.start_server(open_rooms=True)
        clients = await self._crowd(50, [JSON_SUBPROTOCOL])
        self.assertEqual(len(hub.room_members("big")), 50)
        codec = hub.codecs.get(JSON_SUBPROTOCOL)
        assert codec is not None
        encodes: list[Envelope] = []
        original = codec.encode

        def counting(envelope: Envelope) -> bytes:
            encodes.append(envelope)
            return original(envelope)

        self.patch(codec, "encode", counting)
        before = self.metric("warpsocket_encodes_total")
        hub.publish("big", "tick", {"n": 1})
        self.assertEqual(self.metric("warpsocket_encodes_total") - before, 1.0)
        self.assertEqual(len(encodes), 1)
        frames = []
        for client in clients:
            await client.wait_for(is_event("room:big"))
            frames.append(client.frames[-1][0])
        self.assertEqual(len(set(frames)), 1)
        self.assertEqual(json.loads(frames[0])["data"], {"n": 1})
        self.assertEqual(self.metric("warpsocket_messages_out_total", {"type": "event"}), 50.0)

    @async_test
    async def test_mixed_codecs_encode_once_per_codec(self) -> None:
        hub = self.start_server(open_rooms=True)
        clients = await self._crowd(10, [JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL])
        before = self.metric("warpsocket_encodes_total")
        hub.publish("big", "tick", {"n": 2})
        self.assertEqual(self.metric("warpsocket_encodes_total") - before, 2.0)
        for client in clients:
            event = await client.wait_for(is_event("room:big"))
            self.assertEqual(event["data"], {"n": 2})
            self.assertEqual(client.frames[-1][1], client.subprotocol == MSGPACK_SUBPROTOCOL)


# ---------------------------------------------------------------- middleware


class MiddlewareTests(ServerTestCase):
    @async_test
    async def test_connect_middleware_refuses_with_403(self) -> None:
        class NeedsToken(Middleware):
            def on_connect(self, handshake: Handshake) -> None:
                if handshake.params.get("token") != ["secret"]:
                    raise Reject(ErrorCode.FORBIDDEN, "bad token")
                handshake.annotations["checked"] = True

        class Unauthorized(Middleware):
            def on_connect(self, handshake: Handshake) -> None:
                if "nope" in handshake.params:
                    raise Reject(ErrorCode.UNAUTHORIZED)

        hub = self.start_server(middleware=[Unauthorized(), NeedsToken()])
        seen: list[Any] = []
        hub.on("who", lambda ctx, data: seen.append(ctx.annotations) or ctx.peer)
        with self.assertRaises(HandshakeRefusedError) as caught:
            await self.connect(path="/ws?token=wrong")
        self.assertEqual(caught.exception.status, 403)
        with self.assertRaises(HandshakeRefusedError) as caught:
            await self.connect(path="/ws?nope=1")
        self.assertEqual(caught.exception.status, 401)
        self.assertEqual(hub.connection_count, 0)
        client = await self.connect(path="/ws?token=secret")
        reply = await client.request({"type": "call", "event": "who"})
        self.assertRegex(reply["data"], r"^tcp4?:127\.0\.0\.1:\d+$")
        self.assertEqual(seen, [{"checked": True}])

    @async_test
    async def test_inbound_transform_and_reject(self) -> None:
        class Inbound(Middleware):
            def on_inbound(self, ctx: Context, envelope: Envelope) -> Envelope:
                if envelope.event == "spam":
                    raise Reject(ErrorCode.RATE_LIMITED, "slow down")
                if envelope.event == "shout" and isinstance(envelope.data, str):
                    return envelope.evolve(data=envelope.data.upper())
                return envelope

        hub = self.start_server(middleware=[Inbound()])
        handled: list[Any] = []
        hub.on("shout", lambda ctx, data: handled.append(data) or data)
        hub.on("spam", lambda ctx, data: handled.append("spam"))
        client = await self.connect()
        reply = await client.request({"type": "call", "event": "shout", "data": "hey"})
        self.assertEqual(reply["data"], "HEY")
        reply = await client.request({"type": "event", "event": "spam", "ack": True})
        self.assertEqual((reply["type"], reply["code"]), ("error", 4200))
        self.assertEqual(reply["data"]["message"], "slow down")
        self.assertEqual(handled, ["HEY"])

    @async_test
    async def test_crashing_inbound_middleware_is_4501(self) -> None:
        class Buggy(Middleware):
            def on_inbound(self, ctx: Context, envelope: Envelope) -> Envelope:
                if envelope.event == "crash":
                    raise KeyError("oops")
                return envelope

        hub = self.start_server(middleware=[Buggy()])
        errors: list[Failure] = []
        hub.on_error(lambda ctx, failure: errors.append(failure))
        hub.on("ok", lambda ctx, data: "fine")
        client = await self.connect()
        reply = await client.request({"type": "call", "event": "crash"})
        self.assertEqual((reply["type"], reply["code"]), ("error", 4501))
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        self.assertEqual([f.type for f in errors], [KeyError])
        reply = await client.request({"type": "call", "event": "ok"})
        self.assertEqual(reply["data"], "fine")

    @async_test
    async def test_outbound_transforms_publishes_once(self) -> None:
        seen: list[Envelope] = []

        class Outbound(Middleware):
            def on_outbound(self, ctx: Context | None, envelope: Envelope) -> Envelope:
                seen.append(envelope)
                return envelope.evolve(
                    data={"wrapped": envelope.data}, event="v2." + (envelope.event or "")
                )

        hub = self.start_server(open_rooms=True, middleware=[Outbound()])
        clients = [await self.connect(rooms=["r"]) for _ in range(3)]
        hub.publish("r", "update", 5)
        for client in clients:
            event = await client.wait_for(is_event("room:r"))
            self.assertEqual((event["event"], event["data"]), ("v2.update", {"wrapped": 5}))
        self.assertEqual(len(seen), 1)
        assert clients[0].session is not None
        hub.send(clients[0].session, "dm", 1)
        event = await clients[0].wait_for(is_event("direct"))
        self.assertEqual((event["event"], event["data"]), ("v2.dm", {"wrapped": 1}))

    @async_test
    async def test_logging_middleware(self) -> None:
        logged: list[LogEvent] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        hub = self.start_server(debug=True, open_rooms=True)
        hub.on("echo", lambda ctx, data: data)
        client = await self.connect(rooms=["r"])
        reply = await client.request({"type": "call", "event": "echo", "data": "logged"})
        self.assertEqual(reply["data"], "logged")
        hub.publish("r", "pub", 1)
        await client.wait_for(is_event("room:r"))
        formats = [event.get("log_format", "") for event in logged]
        self.assertIn("handshake from {peer} origin={origin} path={path}", formats)
        inbound = [e for e in logged if e.get("log_format", "").startswith("in ")]
        self.assertIn("call", [e["envelope"]["type"] for e in inbound])
        outbound = [e for e in logged if e.get("log_format", "").startswith("out ")]
        self.assertEqual([e["envelope"]["event"] for e in outbound], ["pub"])


# ---------------------------------------------------------------- timers


class TimerTests(ServerTestCase):
    @async_test
    async def test_heartbeat_sent_and_answered(self) -> None:
        self.start_server(CoreOptions(heartbeat_interval_ms=25_000, heartbeat_timeout_ms=60_000))
        client = await self.connect()
        self.advance(24)
        await barrier_without_handler(client)
        beats = [m for m in client.messages if m["type"] == "heartbeat" and "ref" not in m]
        self.assertEqual(beats, [])
        answers = self.hub.metrics.traffic.messages_in

        async def beat_answered() -> Any:
            seen = answers["heartbeat"]
            beat = await client.next_of("heartbeat")
            # The fake clock must not move on before the server has read the
            # answer (WsClient answers at once), or it would look missing.
            await wait_until(lambda: answers["heartbeat"] > seen, what="answer read")
            return beat

        self.advance(1)
        beat = await beat_answered()
        self.assertNotIn("ref", beat)
        # The client answered, so it lives on.
        for _ in range(4):
            self.advance(25)
            await beat_answered()
        self.assertIsNone(client.close_code)
        # A client heartbeat is answered with a ref.
        sent = client.send({"type": "heartbeat"})
        reply = await client.reply_to(sent["id"])
        self.assertEqual(reply["type"], "heartbeat")

    @async_test
    async def test_silent_client_closed_4204(self) -> None:
        hub = self.start_server(
            CoreOptions(heartbeat_interval_ms=25_000, heartbeat_timeout_ms=60_000)
        )
        closes: list[int | None] = []
        hub.on_close(lambda ctx, code: closes.append(code))
        client = await self.connect()
        client.answer_heartbeats = False
        self.advance(50)
        await client.wait_for(lambda m: m["type"] == "heartbeat" and m["timestamp"] == 50_000)
        self.assertIsNone(client.close_code)
        self.advance(25)
        code, reason = await client.wait_closed()
        self.assertEqual((code, reason), (4204, "heartbeat_timeout"))
        # The server side reports its own close code, not the client's reply.
        await wait_until(lambda: bool(closes), what="on_close")
        self.assertEqual(closes, [4204])
        self.assertEqual(self.metric("warpsocket_disconnects_total", {"code": "4204"}), 1.0)

    @async_test
    async def test_idle_client_closed_4203(self) -> None:
        self.start_server(
            CoreOptions(
                heartbeat_interval_ms=10_000, heartbeat_timeout_ms=30_000, idle_timeout_ms=25_000
            )
        )
        self.hub.on("work", lambda ctx, data: None)
        idle = await self.connect()
        busy = await self.connect()
        for _ in range(2):
            self.advance(10)
            await idle.next_of("heartbeat")
            await busy.next_of("heartbeat")
            await busy.request({"type": "event", "event": "work", "ack": True})
            # The idle client's heartbeat answer must have arrived too.
            await barrier_without_handler(idle)
        self.assertIsNone(idle.close_code)
        self.advance(10)
        code, _ = await idle.wait_closed()
        self.assertEqual(code, 4203)
        self.assertIsNone(busy.close_code)

    @async_test
    async def test_no_hello_closed_4205(self) -> None:
        self.start_server(CoreOptions(handshake_timeout_ms=10_000))
        silent = await self.connect(hello=False)
        polite = await self.connect()
        self.advance(9)
        await barrier_without_handler(polite)
        self.assertIsNone(silent.close_code)
        self.advance(1)
        code, reason = await silent.wait_closed()
        self.assertEqual((code, reason), (4205, "handshake_timeout"))
        self.assertIsNone(polite.close_code)

    @async_test
    async def test_dead_client_does_not_stop_the_timers(self) -> None:
        """A connection the server closed but that never finishes the close
        handshake must not break later ticks (acked-send retries go to it)."""
        hub = self.start_server(
            CoreOptions(heartbeat_interval_ms=25_000, heartbeat_timeout_ms=60_000),
            open_rooms=True,
        )
        dead = await self.connect(rooms=["r"])
        session = dead.session
        assert session is not None
        waiter = hub.send(session, "job", 1, ack=True, timeout=100)
        assert waiter is not None
        await dead.wait_for(is_event("direct"))
        dead.freeze()
        self.advance(75)  # heartbeat timeout: the server sends its close frame
        hub.publish("r", "after-close", 1)  # must not be written after the close frame
        hub.send(session, "after-close", 2)
        self.advance(10)  # an ack retry falls due on the closing connection
        self.advance(20)
        failure = self.failureResultOf(waiter, AckTimeoutError)
        self.assertEqual(failure.value.code, ErrorCode.TIMEOUT)
        # The ticker still runs: a new connection without hello is timed out.
        late = await self.connect(hello=False)
        self.advance(10)
        code, _ = await late.wait_closed()
        self.assertEqual(code, 4205)
        dead.thaw()
        code, _ = await dead.wait_closed()
        self.assertEqual(code, 4204)
        self.assertEqual(dead.after_close, [])


async def barrier_without_handler(client: WsClient) -> None:
    """A heartbeat round trip (needs no handler and is no application traffic)."""
    sent = client.send({"type": "heartbeat"})
    await client.reply_to(sent["id"])


# ---------------------------------------------------------------- threads


class ThreadTests(ServerTestCase):
    @async_test
    async def test_publish_from_worker_threads(self) -> None:
        hub = self.start_server(open_rooms=True)
        client = await self.connect(rooms=["t"])
        blob = "x" * 5_000

        def work(worker: int) -> list[int]:
            offsets = []
            for n in range(25):
                # Off the reactor thread: a concurrent.futures.Future (threads.py).
                future: Any = hub.publish("t", "tick", {"worker": worker, "n": n, "blob": blob})
                stored = future.result(timeout=10)
                assert stored.offset is not None
                offsets.append(stored.offset)
            return offsets

        results = await DeferredList(
            [deferToThread(work, worker) for worker in range(4)], fireOnOneErrback=True
        )
        self.assertEqual(sorted(o for _, offsets in results for o in offsets), list(range(1, 101)))
        await client.wait_for(lambda m: m.get("offset") == 100)
        events = events_of(client, "room:t")
        self.assertEqual([m["offset"] for m in events], list(range(1, 101)))
        for worker in range(4):
            mine = [m["data"]["n"] for m in events if m["data"]["worker"] == worker]
            self.assertEqual(mine, list(range(25)))
        self.assertTrue(all(m["data"]["blob"] == blob for m in events))

    @async_test
    async def test_send_from_thread(self) -> None:
        hub = self.start_server()
        client = await self.connect()
        session = client.session
        assert session is not None
        await deferToThread(hub.send, session, "from-thread", 42)
        event = await client.wait_for(is_event("direct"))
        self.assertEqual((event["event"], event["data"]), ("from-thread", 42))
        members = await deferToThread(hub.room_members, "none")
        self.assertEqual(members, set())
