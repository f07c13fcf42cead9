"""The hub's application behaviour through warpsocket.testing (no socket).

Handlers, hooks, middleware, sends, rooms and timers, driven through
``HubHarness``; what is about the network (handshakes, frames, the security
gate, threads) stays in test_server_hub.py and the others, on real sockets.
Also runs the example of docs/testing.md.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial import reporter, runner, unittest

from warpsocket.backends.memory import MemoryBackend
from warpsocket.core.history import HistoryLimits
from warpsocket.core.server import CoreOptions
from warpsocket.protocol.codes import ErrorCode
from warpsocket.protocol.envelope import Envelope, MessageType
from warpsocket.server.context import Context
from warpsocket.server.hub import (
    MAX_HELD_FRAMES,
    STREAM_COLLECT_TICKS,
    AckTimeoutError,
    Hub,
    HubOptions,
)
from warpsocket.server.middleware import Handshake, Middleware, Reject
from warpsocket.testing import FakeClient, FakeConnection, HubHarness

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "testing.md"
EXAMPLE = re.compile(r"<!-- example -->\n```python\n(?P<code>.*?)```", re.S)
README_EXAMPLE = re.compile(r"## Testing your application\n.*?```python\n(?P<code>.*?)```", re.S)


class UserFromQuery(Middleware):
    """Authenticates by ``?user=<name>`` (a stand-in for real credentials)."""

    def on_connect(self, handshake: Handshake) -> None:
        users = handshake.params.get("user")
        if users:
            handshake.user = users[0]


class Base(unittest.TestCase):
    def start(self, core: CoreOptions | None = None, **kwargs: Any) -> Hub:
        options_keys = {"open_rooms", "debug", "reconnect_hint_ms"}
        options = {k: kwargs.pop(k) for k in list(kwargs) if k in options_keys}
        self.harness = HubHarness(
            options=HubOptions(core=core or CoreOptions(), **options), **kwargs
        )
        self.addCleanup(self.harness.stop)
        self.hub = self.harness.hub
        return self.hub

    def connect(self, **kwargs: Any) -> FakeClient:
        return self.harness.connect(**kwargs)

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.hub.metrics.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value


class DocsExampleTests(unittest.TestCase):
    def test_the_example_in_docs_testing_md_passes(self) -> None:
        [code] = [m["code"] for m in EXAMPLE.finditer(GUIDE.read_text("utf-8"))]
        namespace: dict[str, Any] = {"__name__": "docs_testing_example"}
        exec(compile(code, str(GUIDE), "exec"), namespace)
        suite = runner.TestLoader().loadClass(namespace["ChatTests"])
        result = reporter.TestResult()
        suite.run(result)
        self.assertEqual(result.testsRun, 4)
        problems = [str(f) for _, f in result.errors + result.failures]
        self.assertTrue(result.wasSuccessful(), problems)

    def test_the_example_in_the_readme_runs(self) -> None:
        found = README_EXAMPLE.search((ROOT / "README.md").read_text("utf-8"))
        assert found is not None
        namespace: dict[str, Any] = {}
        exec(compile(found["code"], "README.md", "exec"), namespace)
        namespace["harness"].stop()
        self.assertEqual(len(namespace["bob"].events("room:lobby")), 1)


class HarnessTests(Base):
    def test_welcome_carries_a_resume_token_and_resuming_needs_it(self) -> None:
        self.start()
        first = self.connect()
        assert first.session is not None and first.resume_token
        first.disconnect()
        stranger = self.connect(session=first.session)
        assert stranger.welcome is not None
        self.assertFalse(stranger.welcome.data["resumed"])
        self.assertNotEqual(stranger.session, first.session)
        wrong = self.connect(session=first.session, resume_token="x" * 43)
        self.assertNotEqual(wrong.session, first.session)
        again = first.reconnect()
        self.assertEqual(again.session, first.session)
        assert again.welcome is not None
        self.assertTrue(again.welcome.data["resumed"])

    def test_a_hub_must_run_on_a_clock(self) -> None:
        self.assertRaises(TypeError, HubHarness, Hub())
        harness = HubHarness(Hub(clock=Clock()))
        harness.stop()

    def test_fake_connection_frames_once_per_codec(self) -> None:
        hub = self.start(open_rooms=True)
        clients = [self.connect(rooms=["r"], codec=codec) for codec in ("warpsocket.v1.json",) * 3]
        clients.append(self.connect(rooms=["r"], codec="warpsocket.v1.msgpack"))
        encodes = hub.metrics.traffic.encodes
        hub.publish("r", "x", 1)
        self.assertEqual(hub.metrics.traffic.encodes - encodes, 2)
        self.assertEqual([len(c.events("room:r")) for c in clients], [1, 1, 1, 1])

    def test_closed_by_the_hub_is_detached_with_its_code(self) -> None:
        hub = self.start()
        closes: list[int | None] = []
        hub.on_close(lambda ctx, code: closes.append(code))
        first = self.connect()
        # Resumed while the first is still open: 4400 session_replaced.
        second = self.connect(session=first.session, resume_token=first.resume_token)
        self.assertEqual(second.session, first.session)
        self.assertEqual(first.close_code, 4400)
        self.assertEqual(hub.connection_count, 1)
        self.assertEqual(self.metric("warpsocket_disconnects_total", {"code": "4400"}), 1.0)
        self.assertEqual(closes, [])  # the session stays attached to the new connection

    def test_connection_without_a_harness(self) -> None:
        hub = Hub(clock=Clock())
        codec = hub.codecs.default
        handshake = Handshake("peer", "host", "/ws", {}, {}, None)
        connection = FakeConnection(codec, handshake)
        conn_id = hub.port.attach(connection, handshake)
        hello = Envelope(type=MessageType.HELLO, id="h1", timestamp=0, data={})
        hub.port.received(conn_id, codec.encode(hello), codec.binary)
        [welcome] = connection.sent
        self.assertEqual(
            (welcome.type, connection.session), (MessageType.WELCOME, welcome.data["session"])
        )
        hub.port.detach(conn_id, 1000)
        self.assertEqual(hub.connection_count, 0)


# ---------------------------------------------------------------- handlers


class HandlerTests(Base):
    def test_plain_deferred_and_async_handlers(self) -> None:
        hub = self.start()
        clock = self.harness.clock

        @hub.on("double")
        def double(ctx: Context, data: int) -> int:
            return data * 2

        def later(ctx: Context, data: int) -> Deferred[int]:
            result: Deferred[int] = Deferred()
            clock.callLater(0.01, result.callback, data * 3)
            return result

        async def coroutine(ctx: Context, data: int) -> dict[str, Any]:
            return {"n": data * 4, "session": ctx.session, "event": ctx.event}

        hub.on("triple", later)
        hub.on("quad", coroutine)
        client = self.connect()
        self.assertEqual(client.call("double", 1).data, 2)
        call = client.envelope(MessageType.CALL, event="triple", data=1)
        self.assertEqual(client.feed(call), [])  # not answered before the handler is done
        self.harness.advance(0.01)
        [reply] = client.take()
        self.assertEqual((reply.type, reply.ref, reply.data), (MessageType.RESULT, call.id, 3))
        reply = client.call("quad", 1)
        self.assertEqual(reply.data, {"n": 4, "session": client.session, "event": "quad"})
        event = client.envelope(MessageType.EVENT, event="triple", data=1, ack=True)
        client.feed(event)
        self.harness.advance(0.01)
        [reply] = client.take()
        self.assertEqual((reply.type, reply.ref), (MessageType.ACK, event.id))

    def test_reject_other_errors_and_missing_handler(self) -> None:
        hub = self.start()
        errors: list[Failure] = []
        hub.on_error(lambda ctx, failure: errors.append(failure))

        def refuse(ctx: Context, data: Any) -> None:
            raise Reject(ErrorCode.FORBIDDEN, "not you")

        async def refuse_later(ctx: Context, data: Any) -> None:
            raise Reject(ErrorCode.QUEUE_FULL)

        def broken(ctx: Context, data: Any) -> None:
            raise ZeroDivisionError("boom")

        hub.on("refuse", refuse)
        hub.on("refuse_later", refuse_later)
        hub.on("broken", broken)
        hub.on("ok", lambda ctx, data: "fine")
        client = self.connect()
        reply = client.call("refuse")
        self.assertEqual((reply.type, reply.code), (MessageType.ERROR, 4102))
        self.assertEqual(reply.data, {"name": "forbidden", "message": "not you"})
        reply = client.send("refuse_later", ack=True)
        assert reply is not None
        self.assertEqual(reply.code, 4206)
        reply = client.call("broken")
        self.assertEqual((reply.type, reply.code), (MessageType.ERROR, 4300))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual([f.type for f in errors], [ZeroDivisionError])
        reply = client.call("missing")
        self.assertEqual((reply.code, reply.data["name"]), (4301, "no_handler"))
        # Fire-and-forget events are answered only when refused.
        event = client.envelope(MessageType.EVENT, event="missing")
        [refusal] = client.feed(event)
        self.assertEqual(refusal.ref, event.id)
        self.assertEqual(client.call("ok").data, "fine")
        self.assertIsNone(client.close_code)

    def test_unencodable_result_is_4300_not_a_dropped_connection(self) -> None:
        hub = self.start()
        hub.on("bad", lambda ctx, data: {1, 2, 3})
        hub.on("nan", lambda ctx, data: float("nan"))
        hub.on("ok", lambda ctx, data: "fine")
        client = self.connect()
        reply = client.request("call", id="bad-1", event="bad")
        self.assertEqual((reply.type, reply.code), (MessageType.ERROR, 4300))
        reply = client.request("call", id="bad-1", event="bad")  # the recorded answer
        self.assertEqual(reply.code, 4300)
        self.assertEqual(client.call("nan").code, 4300)
        self.assertEqual(len(self.flushLoggedErrors(TypeError, ValueError)), 2)
        self.assertEqual(client.call("ok").data, "fine")

    def test_acked_event_is_deduplicated(self) -> None:
        hub = self.start()
        calls: list[Any] = []
        hub.on("count", lambda ctx, data: calls.append(data))
        client = self.connect()
        fields = {"id": "dup-1", "event": "count", "data": 7, "ack": True}
        first, second = client.request("event", **fields), client.request("event", **fields)
        self.assertEqual((first.type, second.type), (MessageType.ACK, MessageType.ACK))
        self.assertEqual(calls, [7])
        # Calls too: the retry gets the recorded result, never a second run.
        replies = [client.request("call", id="dup-2", event="count", data=8) for _ in range(2)]
        self.assertEqual([r.type for r in replies], [MessageType.RESULT] * 2)
        self.assertEqual(calls, [7, 8])
        # A retry on a new connection of the same session is recognised too.
        again = client.reconnect()
        self.assertEqual(again.request("event", **fields).type, MessageType.ACK)
        self.assertEqual(calls, [7, 8])
        # Fire-and-forget events are not deduplicated.
        for _ in range(2):
            again.feed(again.envelope(MessageType.EVENT, id="ff-1", event="count", data=9))
        self.assertEqual(calls, [7, 8, 9, 9])

    def test_retry_while_first_copy_is_in_flight(self) -> None:
        hub = self.start()
        pending: list[Deferred[None]] = []

        def slow(ctx: Context, data: Any) -> Deferred[None]:
            pending.append(Deferred())
            return pending[-1]

        hub.on("slow", slow)
        client = self.connect()
        envelope = client.envelope(MessageType.EVENT, id="slow-1", event="slow", ack=True)
        self.assertEqual(client.feed(envelope) + client.feed(envelope), [])
        self.assertEqual(len(pending), 1)
        pending[0].callback(None)
        [reply] = client.take()
        self.assertEqual((reply.type, reply.ref), (MessageType.ACK, "slow-1"))
        self.assertEqual(len(pending), 1)

    def test_expired_ttl_is_4302(self) -> None:
        hub = self.start()
        calls: list[Any] = []
        hub.on("x", lambda ctx, data: calls.append(data))
        self.harness.advance(100)
        client = self.connect()
        reply = client.request("event", event="x", ack=True, timestamp=1, ttl=5)
        self.assertEqual(reply.code, 4302)
        self.assertEqual(calls, [])

    def test_hooks(self) -> None:
        hub = self.start()
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

        client = self.connect()
        session = client.session
        assert session is not None
        self.assertEqual(opened, [(session, False)])
        client.disconnect(1000)
        self.assertEqual(closed, [(session, 1000)])
        self.assertEqual(errors, [(session, RuntimeError)])
        again = client.reconnect()
        self.assertEqual(opened, [(session, False), (session, True)])
        again.disconnect(None)  # the network failed: no close code
        self.assertEqual(closed[1], (session, None))

    def test_auth_envelope(self) -> None:
        hub = self.start()
        client = self.connect()
        self.assertEqual(client.request("auth", data={"token": "t"}).code, 4100)

        def authenticate(ctx: Context, token: str) -> None:
            if token != "good":
                raise Reject(ErrorCode.UNAUTHORIZED, "bad token")

        hub.authenticator = authenticate
        self.assertEqual(client.request("auth", data={"token": "bad"}).code, 4100)
        self.assertEqual(client.request("auth", data={"token": "good"}).type, MessageType.ACK)


# ---------------------------------------------------------------- sending


class SendTests(Base):
    def test_send_send_user_and_send_group(self) -> None:
        hub = self.start(middleware=[UserFromQuery()])
        alice1 = self.connect(params={"user": ["alice"]})
        alice2 = self.connect(params={"user": ["alice"]})
        bob = self.connect(params={"user": ["bob"]})
        anon = self.connect()
        assert alice1.session and alice2.session and bob.session and anon.session
        self.assertEqual(hub.sessions_of_user("alice"), {alice1.session, alice2.session})

        hub.send(anon.session, "note", {"x": 1})
        [event] = anon.events("direct")
        self.assertEqual(
            (event.event, event.data, event.stream, event.offset), ("note", {"x": 1}, "direct", 1)
        )
        self.assertEqual(event.epoch, anon.positions["direct"]["epoch"])

        self.assertEqual(self.successResultOf(hub.send_user("alice", "for-alice", 1)), 2)
        self.assertEqual(self.successResultOf(hub.send_user("nobody", "x")), 0)
        for client in (alice1, alice2):
            [event] = client.events("direct")
            self.assertEqual((event.event, event.data), ("for-alice", 1))

        hub.send_group([bob.session, anon.session], "group", 2)
        for client, offset in ((bob, 1), (anon, 2)):
            event = client.events("direct")[-1]
            self.assertEqual((event.event, event.offset), ("group", offset))
        self.assertEqual(
            [len(c.events("direct")) for c in (alice1, alice2, bob, anon)], [1, 1, 1, 2]
        )

    def test_unencodable_payload_is_refused_before_it_is_stored(self) -> None:
        hub = self.start(open_rooms=True)
        client = self.connect(rooms=["r"])
        assert client.session is not None
        for bad in ({1, 2}, b"bytes", float("inf"), "\ud800", [object()]):
            with self.subTest(bad=bad):
                self.assertRaises((TypeError, ValueError), hub.publish, "r", "x", bad)
                self.assertRaises((TypeError, ValueError), hub.send, client.session, "x", bad)
                self.assertRaises((TypeError, ValueError), hub.broadcast, "x", bad)
        stored = self.successResultOf(hub.publish("r", "x", "good"))
        self.assertEqual(stored.offset, 1)
        client.disconnect(None)
        # Resuming replays the stream: nothing poisonous is in it.
        again = self.connect(
            session=client.session, resume_token=client.resume_token, streams={}, rooms=["r"]
        )
        assert again.welcome is not None
        self.assertTrue(again.welcome.data["resumed"])

    def test_publish_and_broadcast(self) -> None:
        hub = self.start(open_rooms=True)
        inside = self.connect(rooms=["room1"])
        outside = self.connect()
        stored = self.successResultOf(hub.publish("room1", "update", [1, 2]))
        self.assertEqual((stored.stream, stored.offset), ("room:room1", 1))
        [event] = inside.events("room:room1")
        self.assertEqual((event.event, event.data, event.id), ("update", [1, 2], stored.id))
        hub.broadcast("all", "hello everyone")
        for client in (inside, outside):
            [event] = client.events("broadcast")
            self.assertEqual((event.event, event.data, event.offset), ("all", "hello everyone", 1))
        self.assertEqual(outside.events("room:room1"), [])

    def test_acked_send_resolves_on_ack(self) -> None:
        hub = self.start()
        client = self.connect()
        assert client.session is not None
        waiter = hub.send(client.session, "job", {"id": 1}, ack=True)
        [event] = client.events("direct")
        self.assertIs(event.ack, True)
        self.assertNoResult(waiter)
        self.assertEqual(self.metric("warpsocket_acks_pending"), 1.0)
        client.feed(client.envelope(MessageType.ACK, ref=event.id))
        self.successResultOf(waiter)
        self.assertEqual(self.metric("warpsocket_acks_pending"), 0.0)
        # Cumulative acknowledgement of several.
        waiters = [hub.send(client.session, "job", n, ack=True) for n in range(3)]
        client.ack(client.events("direct")[-1])
        for each in waiters:
            self.successResultOf(each)
        self.assertEqual(hub.core.sessions[client.session].pending, {})

    def test_acked_send_retries_then_times_out(self) -> None:
        hub = self.start(CoreOptions(ack_retry_ms=10_000))
        client = self.connect()
        assert client.session is not None
        waiter = hub.send(client.session, "job", 1, ack=True, timeout=25)
        [first] = client.events("direct")
        self.harness.advance(10)
        retry = client.events("direct")[-1]
        self.assertEqual((retry.id, retry.offset), (first.id, first.offset))
        self.harness.advance(10)
        self.assertEqual(len(client.events("direct")), 3)
        self.assertNoResult(waiter)
        self.harness.advance(5)
        failure = self.failureResultOf(waiter, AckTimeoutError)
        self.assertEqual(failure.value.code, ErrorCode.TIMEOUT)
        self.assertEqual(failure.value.session, client.session)
        # A late ack is harmless.
        client.feed(client.envelope(MessageType.ACK, ref=first.id))
        self.assertEqual(client.heartbeat().type, MessageType.HEARTBEAT)

    def test_client_room_publish_needs_permission(self) -> None:
        self.start()
        member = self.connect(rooms=["chat"])
        assert member.welcome is not None
        self.assertEqual(member.welcome.data["denied"], {"chat": 4102})
        self.assertEqual(member.welcome.data["rooms"], [])
        publisher = self.connect()
        reply = publisher.send("say", "hi", room="chat", ack=True)
        assert reply is not None
        self.assertEqual((reply.type, reply.code), (MessageType.ERROR, 4102))
        reply = publisher.subscribe("chat")
        self.assertEqual((reply.type, reply.code), (MessageType.ERROR, 4102))

    def test_client_room_publish_with_open_rooms(self) -> None:
        hub = self.start(open_rooms=True)
        member = self.connect(rooms=["chat"])
        publisher = self.connect()
        reply = publisher.send("say", {"t": "hi"}, room="chat", ack=True)
        assert reply is not None
        self.assertEqual(reply.type, MessageType.ACK)
        [event] = member.events("room:chat")
        self.assertEqual((event.event, event.data, event.offset), ("say", {"t": "hi"}, 1))
        self.assertEqual(hub.room_members("chat"), {member.session})

    def test_subscribe_unsubscribe_and_presence(self) -> None:
        hub = self.start(open_rooms=True)
        client = self.connect()
        hub.publish("news", "old", 1)
        reply = client.subscribe("news")
        self.assertEqual(reply.type, MessageType.ACK)
        self.assertEqual(reply.data["stream"], "room:news")
        self.assertEqual((reply.data["offset"], reply.data["recovered"]), (1, True))
        self.assertEqual(hub.room_members("news"), {client.session})
        self.assertEqual(hub.rooms(), ["news"])
        hub.publish("news", "new", 2)
        [event] = client.events("room:news")
        self.assertEqual((event.data, event.offset), (2, 2))
        # Subscribing with a position replays what came after it.
        other = self.connect()
        answer = other.request("subscribe", room="news", offset=0, epoch=reply.data["epoch"])
        self.assertEqual((answer.data["offset"], answer.data["recovered"]), (2, True))
        self.assertEqual([m.offset for m in other.events("room:news")], [1, 2])
        self.assertEqual(client.unsubscribe("news").type, MessageType.ACK)
        self.assertEqual(hub.room_members("news"), {other.session})
        hub.publish("news", "after", 3)
        self.assertEqual(len(other.events("room:news")), 3)
        self.assertEqual([m.data for m in client.events("room:news")], [2])

    def test_server_side_join_and_leave(self) -> None:
        hub = self.start()
        client = self.connect()
        session = client.session
        assert session is not None
        hub.publish("vip", "before", 0)
        hub.join(session, "vip")
        [notice] = client.take()
        self.assertEqual(
            (notice.type, notice.room, notice.offset), (MessageType.SUBSCRIBE, "vip", 1)
        )
        self.assertEqual(hub.room_members("vip"), {session})
        self.assertEqual(self.metric("warpsocket_rooms"), 1.0)
        hub.publish("vip", "inside", 1)
        [event] = client.events("room:vip")
        self.assertEqual((event.data, event.offset), (1, 2))
        hub.leave(session, "vip")
        notice = client.take()[-1]
        self.assertEqual((notice.type, notice.room), (MessageType.UNSUBSCRIBE, "vip"))
        self.assertEqual(hub.room_members("vip"), set())
        self.assertEqual(self.metric("warpsocket_rooms"), 0.0)
        hub.publish("vip", "outside", 2)
        self.assertEqual([m.data for m in client.events("room:vip")], [1])

    def test_streams_of_rooms_that_are_gone_are_forgotten(self) -> None:
        hub = self.start(CoreOptions(history=HistoryLimits(max_age_ms=5_000)))
        client = self.connect()
        assert client.session is not None
        self.successResultOf(hub.join(client.session, "temp"))
        hub.publish("temp", "x", 1)
        hub.leave(client.session, "temp")
        streams = len(hub.store)  # type: ignore[arg-type]
        self.harness.advance(STREAM_COLLECT_TICKS + 6)  # past the history age, through a sweep
        self.assertEqual(len(hub.store), streams - 1)  # type: ignore[arg-type]
        self.assertTrue(hub.is_connected(client.session))  # its own streams stay

    def test_ttl_on_publish_becomes_placeholder_on_replay(self) -> None:
        hub = self.start(open_rooms=True)
        first = self.connect(rooms=["r"])
        first.disconnect(None)
        self.assertFalse(hub.is_connected(first.session or ""))
        hub.publish("r", "short", "gone", ttl=1)
        hub.publish("r", "long", "kept")
        self.harness.advance(2)
        second = first.reconnect()
        replay = second.events("room:r")
        self.assertEqual(replay[0].code, 4302)
        self.assertIsNone(replay[0].data)
        self.assertEqual((replay[1].offset, replay[1].data), (2, "kept"))


# ---------------------------------------------------------------- middleware


class MiddlewareTests(Base):
    def test_inbound_transform_and_reject(self) -> None:
        class Inbound(Middleware):
            def on_inbound(self, ctx: Context, envelope: Envelope) -> Envelope:
                if envelope.event == "spam":
                    raise Reject(ErrorCode.RATE_LIMITED, "slow down")
                if envelope.event == "shout" and isinstance(envelope.data, str):
                    return envelope.evolve(data=envelope.data.upper())
                return envelope

        hub = self.start(middleware=[Inbound()])
        handled: list[Any] = []
        hub.on("shout", lambda ctx, data: handled.append(data) or data)
        hub.on("spam", lambda ctx, data: handled.append("spam"))
        client = self.connect()
        self.assertEqual(client.call("shout", "hey").data, "HEY")
        reply = client.send("spam", ack=True)
        assert reply is not None
        self.assertEqual((reply.type, reply.code), (MessageType.ERROR, 4200))
        self.assertEqual(reply.data["message"], "slow down")
        self.assertEqual(handled, ["HEY"])

    def test_crashing_inbound_middleware_is_4501(self) -> None:
        class Buggy(Middleware):
            def on_inbound(self, ctx: Context, envelope: Envelope) -> Envelope:
                if envelope.event == "crash":
                    raise KeyError("oops")
                return envelope

        hub = self.start(middleware=[Buggy()])
        errors: list[Failure] = []
        hub.on_error(lambda ctx, failure: errors.append(failure))
        hub.on("ok", lambda ctx, data: "fine")
        client = self.connect()
        reply = client.call("crash")
        self.assertEqual((reply.type, reply.code), (MessageType.ERROR, 4501))
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        self.assertEqual([f.type for f in errors], [KeyError])
        self.assertEqual(client.call("ok").data, "fine")

    def test_outbound_transforms_publishes_once(self) -> None:
        seen: list[Envelope] = []

        class Outbound(Middleware):
            def on_outbound(self, ctx: Context | None, envelope: Envelope) -> Envelope:
                seen.append(envelope)
                return envelope.evolve(
                    data={"wrapped": envelope.data}, event="v2." + (envelope.event or "")
                )

        hub = self.start(open_rooms=True, middleware=[Outbound()])
        clients = [self.connect(rooms=["r"]) for _ in range(3)]
        hub.publish("r", "update", 5)
        for client in clients:
            [event] = client.events("room:r")
            self.assertEqual((event.event, event.data), ("v2.update", {"wrapped": 5}))
        self.assertEqual(len(seen), 1)
        assert clients[0].session is not None
        hub.send(clients[0].session, "dm", 1)
        [event] = clients[0].events("direct")
        self.assertEqual((event.event, event.data), ("v2.dm", {"wrapped": 1}))


# ---------------------------------------------------------------- timers


class TimerTests(Base):
    def test_heartbeat_sent_and_answered(self) -> None:
        hub = self.start(CoreOptions(heartbeat_interval_ms=25_000, heartbeat_timeout_ms=60_000))
        client = self.connect()
        self.harness.advance(24)
        self.assertEqual([m for m in client.take() if m.type is MessageType.HEARTBEAT], [])
        answers = hub.metrics.traffic.messages_in
        for _ in range(5):
            seen = answers["heartbeat"]
            self.harness.advance(1 if _ == 0 else 25)
            [beat] = [m for m in client.take() if m.type is MessageType.HEARTBEAT]
            self.assertIsNone(beat.ref)
            self.assertEqual(answers["heartbeat"], seen + 1)  # the fake client answered
        self.assertIsNone(client.close_code)
        # A client heartbeat is answered with a ref.
        self.assertEqual(client.heartbeat().type, MessageType.HEARTBEAT)

    def test_silent_client_closed_4204(self) -> None:
        hub = self.start(CoreOptions(heartbeat_interval_ms=25_000, heartbeat_timeout_ms=60_000))
        closes: list[int | None] = []
        hub.on_close(lambda ctx, code: closes.append(code))
        client = self.connect()
        client.answer_heartbeats = False
        self.harness.advance(50)
        self.assertEqual(client.received[-1].timestamp, 50_000)
        self.assertIsNone(client.close_code)
        self.harness.advance(25)
        self.assertEqual(
            (client.close_code, client.connection.close_reason), (4204, "heartbeat_timeout")
        )
        self.assertEqual(closes, [4204])
        self.assertEqual(self.metric("warpsocket_disconnects_total", {"code": "4204"}), 1.0)

    def test_idle_client_closed_4203(self) -> None:
        hub = self.start(
            CoreOptions(
                heartbeat_interval_ms=10_000, heartbeat_timeout_ms=30_000, idle_timeout_ms=25_000
            )
        )
        hub.on("work", lambda ctx, data: None)
        idle = self.connect()
        busy = self.connect()
        for _ in range(2):
            self.harness.advance(10)
            busy.send("work", ack=True)
        self.assertIsNone(idle.close_code)
        self.harness.advance(10)
        self.assertEqual(idle.close_code, 4203)
        self.assertIsNone(busy.close_code)

    def test_no_hello_closed_4205(self) -> None:
        self.start(CoreOptions(handshake_timeout_ms=10_000))
        silent = self.connect(hello=False)
        polite = self.connect()
        self.harness.advance(9)
        self.assertIsNone(silent.close_code)
        self.harness.advance(1)
        self.assertEqual(
            (silent.close_code, silent.connection.close_reason), (4205, "handshake_timeout")
        )
        self.assertIsNone(polite.close_code)


# ---------------------------------------------------------------- held frames


class SlowBackend(MemoryBackend):
    """The memory backend, but stream preparation waits for the test (as Redis may)."""

    def __init__(self) -> None:
        super().__init__(HistoryLimits())
        self.gate: Deferred[None] = Deferred()

    def prepare(self, keys: Any) -> Deferred[None]:
        gate: Deferred[None] = Deferred()
        self.gate.addCallback(lambda _: gate.callback(None))
        return gate


class HeldFramesTests(Base):
    def test_frames_held_behind_the_backend_are_bounded(self) -> None:
        backend = SlowBackend()
        self.start(backend=backend)
        client = self.connect(hello=False)
        client.feed(client.envelope(MessageType.HELLO, data={}))
        sent = [client.envelope(MessageType.EVENT, event="x") for _ in range(MAX_HELD_FRAMES + 5)]
        refused = [reply for envelope in sent for reply in client.feed(envelope)]
        self.assertEqual([(m.code, m.ref) for m in refused], [(4206, e.id) for e in sent[-5:]])
        backend.gate.callback(None)
        welcome, *answers = client.take()
        self.assertEqual(welcome.type, MessageType.WELCOME)
        self.assertEqual(
            [(m.code, m.ref) for m in answers], [(4301, e.id) for e in sent[:MAX_HELD_FRAMES]]
        )

    def test_heartbeats_are_answered_while_frames_wait_for_the_backend(self) -> None:
        backend = SlowBackend()
        self.start(backend=backend, open_rooms=True)
        backend.gate.callback(None)  # the hello goes through
        client = self.connect()
        backend.gate = Deferred()  # the subscribe waits, and the event behind it
        subscribe = client.envelope(MessageType.SUBSCRIBE, room="r")
        event = client.envelope(MessageType.EVENT, event="x", ack=True)
        beat = client.envelope(MessageType.HEARTBEAT)
        answers = client.feed(subscribe) + client.feed(event) + client.feed(beat)
        self.assertEqual([(a.type, a.ref) for a in answers], [(MessageType.HEARTBEAT, beat.id)])
        backend.gate.callback(None)
        # The held frames then follow, in order.
        self.assertEqual([m.ref for m in client.take()], [subscribe.id, event.id])


# ---------------------------------------------------------------- resume


class ResumeTests(Base):
    def test_resume_replays_missed_messages_in_order(self) -> None:
        hub = self.start(open_rooms=True)
        first = self.connect(rooms=["chat"])
        session = first.session
        assert session is not None
        for n in (1, 2):
            hub.publish("chat", "say", {"n": n})
        first.disconnect(None)
        self.assertFalse(hub.is_connected(session))
        for n in (3, 4, 5):
            hub.publish("chat", "say", {"n": n})
        hub.send(session, "dm", "while you were away")
        hub.broadcast("news", "b1")

        second = first.reconnect()
        welcome = second.welcome
        assert welcome is not None
        self.assertTrue(welcome.data["resumed"])
        self.assertEqual(welcome.data["session"], session)
        # protocol.md 4.2: the welcome carries the current positions.
        streams = welcome.data["streams"]
        self.assertEqual(
            (streams["room:chat"]["offset"], streams["room:chat"]["recovered"]), (5, True)
        )
        self.assertEqual((streams["direct"]["offset"], streams["direct"]["recovered"]), (1, True))
        hub.publish("chat", "say", {"n": 6})
        room = second.events("room:chat")
        self.assertEqual([m.offset for m in room], [3, 4, 5, 6])
        self.assertEqual([m.data["n"] for m in room], [3, 4, 5, 6])
        self.assertEqual([m.data for m in second.events("direct")], ["while you were away"])
        self.assertEqual([m.data for m in second.events("broadcast")], ["b1"])
        self.assertEqual(self.metric("warpsocket_resumes_total", {"outcome": "resumed"}), 1.0)

    def test_trimmed_history_is_not_recovered(self) -> None:
        hub = self.start(CoreOptions(history=HistoryLimits(max_messages=2)), open_rooms=True)
        first = self.connect(rooms=["chat"])
        hub.publish("chat", "say", 1)
        first.disconnect(None)
        for n in (2, 3, 4, 5):
            hub.publish("chat", "say", n)
        second = first.reconnect()
        assert second.welcome is not None
        chat = second.welcome.data["streams"]["room:chat"]
        self.assertEqual((chat["offset"], chat["recovered"]), (5, False))
        self.assertTrue(second.welcome.data["streams"]["direct"]["recovered"])
        hub.publish("chat", "say", 6)
        [event] = second.events("room:chat")
        self.assertEqual((event.offset, event.data), (6, 6))

    def test_wrong_epoch_is_not_recovered(self) -> None:
        hub = self.start(open_rooms=True)
        hub.publish("chat", "say", 1)
        client = self.connect(
            rooms=["chat"], streams={"room:chat": {"offset": 0, "epoch": "other-epoch"}}
        )
        assert client.welcome is not None
        chat = client.welcome.data["streams"]["room:chat"]
        # Not recovered (the other epoch is gone), but this epoch is whole: replayed.
        self.assertEqual((chat["offset"], chat["recovered"]), (0, False))
        [event] = client.events("room:chat")
        self.assertEqual((event.offset, event.data), (1, 1))

    def test_session_replaced_closes_old_connection_4400(self) -> None:
        hub = self.start()
        closes: list[int | None] = []
        hub.on_close(lambda ctx, code: closes.append(code))
        old = self.connect()
        new = self.connect(session=old.session, resume_token=old.resume_token)
        assert new.welcome is not None and old.session is not None
        self.assertTrue(new.welcome.data["resumed"])
        self.assertEqual((old.close_code, old.connection.close_reason), (4400, "session_replaced"))
        hub.send(old.session, "hi", 1)
        [event] = new.events("direct")
        self.assertEqual(event.data, 1)
        self.assertEqual(old.events("direct"), [])
        # The replaced connection does not end the session.
        self.assertEqual(closes, [])
        self.assertTrue(hub.is_connected(old.session))

    def test_expired_session_starts_over_and_fails_pending_acks(self) -> None:
        hub = self.start(CoreOptions(session_ttl_ms=30_000))
        client = self.connect()
        session = client.session
        assert session is not None
        waiter = hub.send(session, "job", 1, ack=True, timeout=600)
        client.disconnect(None)
        self.harness.advance(31)
        failure = self.failureResultOf(waiter, AckTimeoutError)
        self.assertEqual(failure.value.code, ErrorCode.TIMEOUT)
        self.assertIsNone(hub.session_info(session))
        again = client.reconnect()
        assert again.welcome is not None
        self.assertFalse(again.welcome.data["resumed"])
        self.assertNotEqual(again.session, session)
        self.assertFalse(again.welcome.data["streams"]["direct"]["recovered"])
