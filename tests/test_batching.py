"""Write coalescing (warpsocket/server/wire/batching.py), over real sockets.

The frames one input event causes must reach every connection complete and
in order, in one transport write per connection, and never after a frame
that was written later (a close frame, above all).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.threads import deferToThread

from tests.helpers.security import SecureTestCase
from tests.wsclient import ServerTestCase, WsClient, async_test, sleep
from warpsocket.protocol.codes import ErrorCode
from warpsocket.server.context import Context
from warpsocket.server.protocol import WarpSocketServerProtocol
from warpsocket.server.security.config import SecurityOptions
from warpsocket.server.security.limits import buffered_bytes
from warpsocket.server.wire.batching import WriteBatch


class WriteCounter:
    """Counts (and passes on) the writes to one server-side connection's transport."""

    def __init__(self, protocol: WarpSocketServerProtocol) -> None:
        self.writes: list[bytes] = []
        data_frames = protocol._write
        # Autobahn's own writes (the close frame) go to the transport.
        transport: Any = protocol.transport
        others = transport.write

        def write_frames(data: bytes) -> None:
            self.writes.append(data)
            data_frames(data)

        def write_other(data: bytes) -> None:
            self.writes.append(data)
            others(data)

        protocol._write = write_frames
        transport.write = write_other


def masked_frame(envelope: dict[str, Any]) -> bytes:
    """A client's text frame (masked, RFC 6455 5.3) carrying ``envelope``."""
    full = {"id": f"f{id(envelope)}", "timestamp": 1, **envelope}
    payload = json.dumps(full).encode("utf-8")
    assert len(payload) < 126
    mask = b"\x01\x02\x03\x04"
    body = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return bytes((0x81, 0x80 | len(payload))) + mask + body


def opcodes(data: bytes) -> list[int]:
    """The opcodes of the unmasked server frames in ``data``."""
    found: list[int] = []
    at = 0
    while at < len(data):
        length, head = data[at + 1] & 0x7F, 2
        if length == 126:
            length, head = int.from_bytes(data[at + 2 : at + 4], "big"), 4
        elif length == 127:
            length, head = int.from_bytes(data[at + 2 : at + 10], "big"), 10
        found.append(data[at] & 0x0F)
        at += head + length
    return found


class BatchingTests(ServerTestCase):
    async def two_members(self) -> tuple[WsClient, WsClient]:
        self.start_server(open_rooms=True)
        return await self.connect(rooms=["r"]), await self.connect(rooms=["r"])

    def events(self, client: WsClient, count: int) -> list[Any]:
        return [m["data"] for m in client.messages if m["type"] == "event"][:count]

    @async_test
    async def test_a_burst_in_a_handler_leaves_in_one_write_per_member(self) -> None:
        caller, member = await self.two_members()

        def burst(ctx: Context, data: Any) -> str:
            for i in range(20):
                self.hub.publish("r", "tick", i)
            return "done"

        self.hub.on("burst", burst)
        to_member = WriteCounter(self.server_side(member))
        to_caller = WriteCounter(self.server_side(caller))
        result = await caller.request({"type": "call", "event": "burst"})
        self.assertEqual(result["data"], "done")
        await member.wait_for(lambda m: m.get("data") == 19)
        self.assertEqual(self.events(member, 20), list(range(20)))
        self.assertEqual(len(to_member.writes), 1)
        # The caller's 20 events and its result share one write, events first.
        self.assertEqual(len(to_caller.writes), 1)
        kinds = [m["type"] for m in caller.messages if m["type"] in ("event", "result")]
        self.assertEqual(kinds, ["event"] * 20 + ["result"])

    @async_test
    async def test_a_close_after_a_burst_comes_after_its_frames(self) -> None:
        caller, member = await self.two_members()

        def burst_then_close(ctx: Context, data: Any) -> None:
            for i in range(5):
                self.hub.publish("r", "tick", i)
            self.server_side(member).sendClose(int(ErrorCode.SLOW_CONSUMER), "test")

        self.hub.on("burst", burst_then_close)
        counter = WriteCounter(self.server_side(member))
        caller.send({"type": "event", "event": "burst"})
        code, _ = await member.wait_closed()
        self.assertEqual(code, int(ErrorCode.SLOW_CONSUMER))
        self.assertEqual(self.events(member, 5), list(range(5)))
        # On the wire: five text frames, then the close frame.
        self.assertEqual(opcodes(b"".join(counter.writes)), [0x1] * 5 + [0x8])

    @async_test
    async def test_hub_batch_holds_frames_until_the_block_ends(self) -> None:
        _, member = await self.two_members()
        counter = WriteCounter(self.server_side(member))
        with self.hub.batch():
            for i in range(5):
                self.hub.publish("r", "tick", i)
            self.assertEqual(counter.writes, [])
        self.assertEqual(len(counter.writes), 1)
        await member.wait_for(lambda m: m.get("data") == 4)
        self.assertEqual(self.events(member, 5), list(range(5)))
        # Outside a batch every publish is written at once.
        self.hub.publish("r", "tick", 5)
        self.hub.publish("r", "tick", 6)
        self.assertEqual(len(counter.writes), 3)
        await member.wait_for(lambda m: m.get("data") == 6)

    @async_test
    async def test_hub_batch_refuses_other_threads(self) -> None:
        self.start_server()
        with self.assertRaises(RuntimeError):
            await deferToThread(self.hub.batch)

    @async_test
    async def test_a_connection_gone_during_a_batch_costs_the_others_nothing(self) -> None:
        _, member = await self.two_members()
        third = await self.connect(rooms=["r"])
        gone = self.server_side(member)
        with self.hub.batch():
            self.hub.publish("r", "tick", 1)
            gone.transport.abortConnection()  # type: ignore[union-attr]
            self.hub.publish("r", "tick", 2)
        await third.wait_for(lambda m: m.get("data") == 2)
        self.assertEqual(self.events(third, 2), [1, 2])
        await member.wait_closed()


class WriteBatchTests(ServerTestCase):
    def test_nested_batches_flush_once_at_the_outermost_end(self) -> None:
        flushed: list[str] = []

        class Connection:
            def __init__(self, name: str) -> None:
                self.name = name

            def uncork(self) -> None:
                flushed.append(self.name)

        batch = WriteBatch()
        with batch():
            with batch():
                batch.dirty.append(Connection("a"))
            self.assertEqual(flushed, [])
            batch.dirty.append(Connection("b"))
        self.assertEqual(flushed, ["a", "b"])
        self.assertEqual((batch.depth, batch.dirty), (0, []))

    def test_one_failing_connection_does_not_hold_the_others(self) -> None:
        flushed: list[str] = []

        class Broken:
            def uncork(self) -> None:
                raise OSError("gone")

        class Fine:
            def uncork(self) -> None:
                flushed.append("fine")

        batch = WriteBatch()
        with batch():
            batch.dirty.extend([Broken(), Fine()])
        self.assertEqual(flushed, ["fine"])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)


class EndOfTurnTests(ServerTestCase):
    """What a read of client frames causes leaves at the end of the reactor
    turn (``WriteBatch.close_soon``), once per turn whatever the reads."""

    def test_close_soon_flushes_once_at_the_end_of_the_turn(self) -> None:
        flushed: list[str] = []
        later: list[Any] = []

        class Connection:
            def __init__(self, name: str) -> None:
                self.name = name

            def uncork(self) -> None:
                flushed.append(self.name)

        batch = WriteBatch(lambda delay, f: later.append((delay, f)))
        for name in ("a", "b"):  # two reads in one turn
            batch.open()
            batch.dirty.append(Connection(name))
            batch.close_soon()
        self.assertEqual(flushed, [])
        self.assertEqual([delay for delay, _ in later], [0])  # one call for the turn
        later.pop()[1]()
        self.assertEqual(flushed, ["a", "b"])
        self.assertEqual(batch.dirty, [])

    def test_a_batch_open_at_the_end_of_the_turn_flushes_when_it_closes(self) -> None:
        flushed: list[str] = []
        later: list[Any] = []

        class Connection:
            def uncork(self) -> None:
                flushed.append("a")

        batch = WriteBatch(lambda delay, f: later.append(f))
        batch.open()
        batch.dirty.append(Connection())
        batch.close_soon()
        batch.open()  # a timer's ``with hub.batch():`` running first
        later.pop()()
        self.assertEqual(flushed, [])
        batch.close()
        self.assertEqual(flushed, ["a"])

    def test_without_a_reactor_close_soon_is_close(self) -> None:
        flushed: list[str] = []

        class Connection:
            def uncork(self) -> None:
                flushed.append("a")

        batch = WriteBatch()
        batch.open()
        batch.dirty.append(Connection())
        batch.close_soon()
        self.assertEqual(flushed, ["a"])

    @async_test
    async def test_an_answer_leaves_after_the_read_in_the_same_turn(self) -> None:
        self.start_server(open_rooms=True)
        client = await self.connect()
        self.hub.on("echo", lambda ctx, data: data)
        server_side = self.server_side(client)
        counter = WriteCounter(server_side)
        answered = await client.request({"type": "call", "event": "echo", "data": 1})
        self.assertEqual(answered["data"], 1)
        self.assertEqual(len(counter.writes), 1)
        # A frame written outside any batch while one waits goes after it.
        frames: list[bytes] = []
        server_side._write = frames.append  # type: ignore[method-assign]
        server_side.dataReceived(masked_frame({"type": "call", "event": "echo", "data": 2}))
        self.assertEqual(frames, [])  # not during the read
        assert client.session is not None
        self.hub.send(client.session, "after", 3)
        self.assertEqual(frames, [])  # joins the waiting frames
        await sleep(0)
        self.assertEqual(len(frames), 1)
        self.assertEqual(opcodes(frames[0]), [0x1, 0x1])
        self.assertIn(b'"result"', frames[0].split(b'"after"')[0])


class WelcomeTests(ServerTestCase):
    @async_test
    async def test_the_welcome_leaves_during_the_read_of_the_hello(self) -> None:
        self.start_server(open_rooms=True)
        client = await self.connect(hello=False)
        server_side = self.server_side(client)
        frames: list[bytes] = []
        server_side._write = frames.append  # type: ignore[method-assign]
        server_side.dataReceived(masked_frame({"type": "hello", "data": {"rooms": ["r"]}}))
        # Written before the read returned, not at the end of the reactor turn.
        self.assertEqual(len(frames), 1)
        self.assertIn(b'"welcome"', frames[0])
        # An answer to a later read waits for the end of the turn again.
        server_side.dataReceived(masked_frame({"type": "heartbeat"}))
        self.assertEqual(len(frames), 1)
        await sleep(0)
        self.assertEqual(len(frames), 2)
        self.assertIn(b'"heartbeat"', frames[1])


class RedisDeliveryBatchTests(ServerTestCase):
    def test_one_read_of_published_messages_is_delivered_in_one_batch(self) -> None:
        """The Redis subscriber wraps each read in the hub's batch: the messages
        one read carries are delivered while one batch is open."""
        from twisted.internet.testing import StringTransport

        from warpsocket.backends.redis import parse_redis_url
        from warpsocket.backends.redis.connection import ConnectionFactory, Subscriber

        events: list[str] = []
        batch = WriteBatch()

        def on_message(channel: Any, message: Any) -> None:
            events.append(f"{message} depth={batch.depth}")

        factory = ConnectionFactory(
            Subscriber, parse_redis_url("redis://127.0.0.1:1"), None, on_message, batch
        )
        subscriber = factory.buildProtocol(None)
        subscriber.makeConnection(StringTransport())

        def published(channel: bytes, body: bytes) -> bytes:
            parts = [b"message", channel, body]
            return b"*3\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)

        subscriber.dataReceived(published(b"ws:s", b"one") + published(b"ws:s", b"two"))
        self.assertEqual(events, ["one depth=1", "two depth=1"])
        self.assertEqual(batch.depth, 0)

    def test_one_read_of_command_replies_is_handled_in_one_batch(self) -> None:
        """The command connection does the same: the replies one read carries
        (a turn's dedup claims, answered by their handlers) are handled while
        one batch is open, so that the answers leave together when it ends."""
        from twisted.internet.testing import StringTransport

        from warpsocket.backends.redis import parse_redis_url
        from warpsocket.backends.redis.connection import CommandProtocol, ConnectionFactory

        batch = WriteBatch()
        flushed: list[str] = []

        class Connection:
            def uncork(self) -> None:
                flushed.append("answers")

        factory = ConnectionFactory(
            CommandProtocol, parse_redis_url("redis://127.0.0.1:1"), None, batch=batch
        )
        command = factory.buildProtocol(None)
        command.makeConnection(StringTransport())
        command.connectionMade()
        heard: list[str] = []

        def answered(reply: Any, name: str) -> None:
            heard.append(f"{name} depth={batch.depth}")
            batch.dirty.append(Connection())  # a handler's answer, held

        command.execute_command("PING").addCallback(answered, "first")
        command.execute_command("PING").addCallback(answered, "second")
        command.dataReceived(b"+PONG\r\n+PONG\r\n")
        self.assertEqual(heard, ["first depth=1", "second depth=1"])
        self.assertEqual(flushed, ["answers", "answers"])  # when the read ended
        self.assertEqual(batch.depth, 0)


class CongestedCloseTests(SecureTestCase):
    @async_test
    async def test_one_close_frame_when_a_congested_connection_is_closed_in_a_batch(self) -> None:
        """Releasing held frames before a close frame must not let the outbound
        meter close the connection in between (two close frames, RFC 6455 5.5.1)."""
        self.start_secure(
            SecurityOptions(max_outbound_buffer=16 * 1024, slow_consumer_grace=1_000),
            open_rooms=True,
        )
        slow = await self.open()
        await slow.hello(rooms=["feed"])
        server_side = self.shrink_buffers(slow)
        slow.freeze()
        n = 0
        while buffered_bytes(server_side.transport) <= 20 * 1024:
            self.hub.publish("feed", "tick", {"n": n, "pad": "y" * 4_000})
            n += 1
            await sleep(0.005)
        self.assertTrue(server_side.can_send and server_side.outbound.congested)
        counter = WriteCounter(server_side)
        with self.hub.batch():
            # Over the hard cap once released, then closed by the application.
            self.hub.publish("feed", "tick", {"n": n, "pad": "z" * 60_000})
            self.hub.port.close_all(ErrorCode.GOING_AWAY, "bye")
        self.assertEqual(opcodes(b"".join(counter.writes)), [0x1, 0x8])
        self.assertEqual(server_side.localCloseCode, int(ErrorCode.GOING_AWAY))
        slow.thaw()
        code, _ = await slow.wait_closed()
        self.assertEqual(code, int(ErrorCode.GOING_AWAY))
