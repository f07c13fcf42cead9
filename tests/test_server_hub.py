"""End-to-end tests of the hub over real sockets on 127.0.0.1.

Each test runs a WarpSocketService on an ephemeral port; its timers
(heartbeats, timeouts, retries, session expiry) run on a ``Clock`` that the
test advances, so nothing here sleeps for protocol time. What needs no
socket (handlers, hooks, sends, rooms, middleware, timers) is tested
through warpsocket.testing in test_hub_harness.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import FrozenInstanceError
from typing import Any

import msgpack
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.threads import deferToThread
from twisted.logger import LogEvent, globalLogPublisher

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
from warpsocket.core.server import CoreOptions
from warpsocket.protocol.codes import ErrorCode
from warpsocket.protocol.envelope import Envelope
from warpsocket.server.hub import AckTimeoutError
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


class ResumeTests(ServerTestCase):
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
        self.assertEqual(hub.port.connections[info.conn].session, session)
        self.assertEqual(self.metric("warpsocket_messages_in_total", {"type": "hello"}), 2.0)
        self.assertEqual(old.queue, [])
        self.assertEqual(self.metric("warpsocket_resumes_total", {"outcome": "resumed"}), 1.0)


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
