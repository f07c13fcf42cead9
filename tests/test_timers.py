"""Connection timers hold their documented windows (protocol.md section 9).

The core and ``ConnectionTimers`` on a ``task.Clock`` (the issue's case:
interval 1 s, timeout 3 s, idle 3 s, hello 2 s), then the same over real
sockets, where WebSocket pings and pongs count as traffic.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.helpers.core import event, hello, make_server
from tests.wsclient import ServerTestCase, WsClient, async_test, http_get, wait_until
from warpsocket.core.server import Action, Close, CoreOptions, Fanout
from warpsocket.protocol import Envelope, ErrorCode, MessageType
from warpsocket.server.timers import ConnectionTimers

START = 1_000.0  # seconds: any epoch (a small one keeps float sums exact enough)
EPSILON = 0.001  # one clock resolution step (the core counts milliseconds)


class Node:
    """A ``ServerCore`` whose timers run on a Clock, as the hub runs them."""

    def __init__(self, **options: Any) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.core = make_server(**options)
        self.actions: list[tuple[float, Action]] = []
        self.timers = ConnectionTimers(self.clock, self.core.next_timer_ms, self._run)
        self.core.on_deadline = self.timers.wake_by
        self.timers.start()

    def _run(self, due_ms: int) -> None:
        now = max(self.now_ms(), due_ms)
        for action in self.core.run_timers(now):
            self.actions.append((self.clock.seconds(), action))

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    def connect(self, conn: int) -> None:
        self.core.open(conn, self.now_ms())
        self.core.receive(conn, hello(f"h{conn}"), self.now_ms())

    def receive(self, conn: int, envelope: Envelope) -> None:
        self.core.receive(conn, envelope, self.now_ms())

    def closes(self) -> list[tuple[float, int, ErrorCode]]:
        return [
            (round(at - START, 3), action.conn, action.code)
            for at, action in self.actions
            if isinstance(action, Close)
        ]

    def beats(self) -> list[float]:
        return [
            round(at - START, 3)
            for at, action in self.actions
            if isinstance(action, Fanout) and action.envelope.type is MessageType.HEARTBEAT
        ]

    def advance_to(self, seconds: float) -> None:
        """Move to START + seconds, stopping at each delayed call's own time, so
        that every timer runs with the clock reading exactly its time."""
        target = START + seconds
        while True:
            pending = [call.getTime() for call in self.clock.getDelayedCalls()]
            due = min((t for t in pending if t <= target + 1e-9), default=None)
            if due is None:
                break
            self.clock.advance(max(0.0, due - self.clock.seconds()))
        if self.clock.seconds() < target:
            self.clock.advance(target - self.clock.seconds())


def heartbeat_answer() -> Envelope:
    return Envelope(type=MessageType.HEARTBEAT, id="a", timestamp=0, ref="x")


class WindowTests(unittest.TestCase):
    def test_heartbeats_keep_their_interval(self) -> None:
        node = Node(heartbeat_interval_ms=1_000, heartbeat_timeout_ms=3_000)
        node.advance_to(0.37)
        node.connect(1)
        for step in range(1, 30):
            node.advance_to(0.37 + step * 0.25)
            node.receive(1, heartbeat_answer())
        # Every second from the start, however the connection's traffic falls.
        self.assertEqual(node.beats(), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])

    def test_a_late_run_does_not_shift_the_heartbeats(self) -> None:
        node = Node(heartbeat_interval_ms=1_000, heartbeat_timeout_ms=3_000)
        node.connect(1)
        node.clock.advance(1.4)  # the reactor was busy: the beat due at 1.0 goes at 1.4
        node.receive(1, heartbeat_answer())
        node.advance_to(3.0)
        self.assertEqual(node.beats(), [1.4, 2.0, 3.0])

    def test_silent_peer_closed_at_the_timeout_exactly(self) -> None:
        rng = random.Random(22)
        for sample in range(60):
            node = Node(heartbeat_interval_ms=1_000, heartbeat_timeout_ms=3_000)
            last = round(rng.uniform(0, 2), 3)  # the last frame, anywhere between beats
            node.connect(1)
            node.advance_to(last)
            node.receive(1, heartbeat_answer())
            node.advance_to(last + 3 - EPSILON)
            self.assertEqual(node.closes(), [], sample)
            node.advance_to(last + 3)
            self.assertEqual(
                node.closes(), [(round(last + 3, 3), 1, ErrorCode.HEARTBEAT_TIMEOUT)], sample
            )
            node.advance_to(last + 10)
            self.assertEqual(len(node.closes()), 1)  # closed once

    def test_idle_closed_at_the_idle_timeout_exactly(self) -> None:
        node = Node(heartbeat_interval_ms=1_000, heartbeat_timeout_ms=3_000, idle_timeout_ms=3_000)
        node.connect(1)
        node.connect(2)
        node.advance_to(0.5)
        node.receive(1, event("m1"))  # application traffic: idle counts from here
        for step in range(1, 35):  # both answer every heartbeat: alive, not busy
            node.advance_to(0.1 * step)
            node.receive(1, heartbeat_answer())
            node.receive(2, heartbeat_answer())
        node.advance_to(3.5 - EPSILON)
        self.assertEqual(node.closes(), [(3.0, 2, ErrorCode.IDLE_TIMEOUT)])
        node.advance_to(3.5)
        self.assertEqual(node.closes()[1:], [(3.5, 1, ErrorCode.IDLE_TIMEOUT)])

    def test_hello_timeout_exactly(self) -> None:
        node = Node(handshake_timeout_ms=2_000)
        node.advance_to(0.123)
        node.core.open(1, node.now_ms())
        node.advance_to(2.123 - EPSILON)
        self.assertEqual(node.closes(), [])
        node.advance_to(2.123)
        self.assertEqual(node.closes(), [(2.123, 1, ErrorCode.HANDSHAKE_TIMEOUT)])

    def test_a_new_connection_wakes_the_timers_earlier(self) -> None:
        node = Node(heartbeat_interval_ms=25_000, heartbeat_timeout_ms=60_000)
        node.core.open(1, node.now_ms())
        # The armed wake-up was the first heartbeat (25 s); the hello timeout is 10 s.
        node.clock.advance(10)
        self.assertEqual(node.closes(), [(10.0, 1, ErrorCode.HANDSHAKE_TIMEOUT)])

    def test_closed_connections_leave_the_heap(self) -> None:
        node = Node()
        for conn in range(3_000):
            node.connect(conn)
            node.core.close(conn, node.now_ms())
        self.assertLess(len(node.core._deadlines), 2_000)

    def test_stopped_timers_do_not_fire(self) -> None:
        node = Node(handshake_timeout_ms=2_000)
        node.core.open(1, node.now_ms())
        node.timers.stop()
        self.assertEqual(node.clock.getDelayedCalls(), [])
        node.timers.wake_by(node.now_ms() + 10)
        self.assertEqual(node.clock.getDelayedCalls(), [])

    def test_a_failing_run_retries_a_second_later(self) -> None:
        clock = Clock()
        runs: list[float] = []

        def run(due_ms: int) -> None:
            runs.append(clock.seconds())
            raise RuntimeError("bug")

        timers = ConnectionTimers(clock, lambda: 0, run)
        self.assertRaises(RuntimeError, timers.start)
        clock.advance(0.999)
        self.assertEqual(runs, [0.0])
        self.assertRaises(RuntimeError, clock.advance, 0.001)
        self.assertEqual(runs, [0.0, 1.0])


class OverSocketsTests(ServerTestCase):
    """The issue's probe: --heartbeat-interval 1 --heartbeat-timeout 3."""

    async def beat_answered(self, client: WsClient) -> None:
        """The next heartbeat arrives and the server has read the client's answer."""
        answers = self.hub.metrics.traffic.messages_in
        seen = answers["heartbeat"]
        await client.next_of("heartbeat")
        await wait_until(lambda: answers["heartbeat"] > seen, what="answer read")

    def closed_4204(self) -> float:
        return self.metric("warpsocket_disconnects_total", {"code": "4204"})

    async def settle(self) -> None:
        """Let frames in flight arrive (real sockets), without moving the hub's clock."""
        await http_get(self.port, "/healthz")

    @async_test
    async def test_silent_peer_closed_within_the_timeout(self) -> None:
        self.start_server(CoreOptions(heartbeat_interval_ms=1_000, heartbeat_timeout_ms=3_000))
        client = await self.connect()
        self.clock.advance(1)
        await self.beat_answered(client)
        client.answer_heartbeats = False
        self.clock.advance(0.37)  # off the heartbeat phase: its own heartbeat is its last frame
        sent = client.send({"type": "heartbeat"})
        await client.reply_to(sent["id"])
        for step in (0.63, 1, 1):
            self.clock.advance(step)
            await client.next_of("heartbeat")  # beats at 2.0, 3.0 and 4.0, unanswered
        self.clock.advance(0.369)  # 4.369: not yet
        await self.settle()
        self.assertEqual(self.closed_4204(), 0.0)
        self.clock.advance(0.001)  # 4.37: the last frame plus the timeout, to the ms
        await self.settle()
        self.assertEqual(self.closed_4204(), 1.0)
        code, _ = await client.wait_closed()
        self.assertEqual(code, 4204)

    @async_test
    async def test_heartbeats_arrive_every_interval(self) -> None:
        self.start_server(CoreOptions(heartbeat_interval_ms=1_000, heartbeat_timeout_ms=3_000))
        client = await self.connect()
        for _ in range(5):
            self.clock.advance(1)
            await self.beat_answered(client)
        stamps = [m["timestamp"] for m in client.messages if m["type"] == "heartbeat"]
        stamps = [s for s in stamps if s >= 1_000]  # the server's own beats
        self.assertEqual([b - a for a, b in itertools.pairwise(stamps)], [1_000] * 4)

    @async_test
    async def test_ping_frames_keep_a_peer_alive_but_not_busy(self) -> None:
        self.start_server(
            CoreOptions(
                heartbeat_interval_ms=1_000, heartbeat_timeout_ms=3_000, idle_timeout_ms=8_000
            )
        )
        pinger = await self.connect()
        ponger = await self.connect()
        silent = await self.connect()
        for client in (pinger, ponger, silent):
            client.answer_heartbeats = False
        assert pinger.protocol is not None and ponger.protocol is not None
        for _ in range(7):  # 7 s: well past the 3 s heartbeat timeout
            pinger.protocol.sendPing()
            ponger.protocol.sendPong()  # unsolicited pongs are frames too (RFC 6455 5.5.3)
            await wait_until(lambda: self.server_heard_all(pinger, ponger), what="frames")
            self.clock.advance(1)
            await self.settle()
        self.assertEqual((await silent.wait_closed())[0], 4204)
        self.assertIsNone(pinger.close_code)
        self.assertIsNone(ponger.close_code)
        # Pings are no application traffic: idle eviction still applies.
        self.clock.advance(1)
        self.assertEqual((await pinger.wait_closed())[0], 4203)
        self.assertEqual((await ponger.wait_closed())[0], 4203)

    def server_heard_all(self, *clients: WsClient) -> bool:
        now = int(self.clock.seconds() * 1000)
        for client in clients:
            conn = self.hub.core.connections.get(self.server_side(client).conn_id or -1)
            if conn is None or conn.last_rx_ms != now:
                return False
        return True

    @async_test
    async def test_disconnect_counted_when_the_close_is_decided(self) -> None:
        hub = self.start_server(
            CoreOptions(heartbeat_interval_ms=1_000, heartbeat_timeout_ms=3_000)
        )
        dead = await self.connect()
        dead.answer_heartbeats = False
        dead.freeze()  # will not answer the close frame either
        self.clock.advance(3)
        await self.settle()
        # Decided and sent: counted, though the TCP connection is still open.
        self.assertEqual(self.metric("warpsocket_disconnects_total", {"code": "4204"}), 1.0)
        self.assertEqual(hub.connection_count, 1)
        dead.thaw()
        code, _ = await dead.wait_closed()
        self.assertEqual(code, 4204)
        await wait_until(lambda: hub.connection_count == 0, what="detach")
        self.assertEqual(self.metric("warpsocket_disconnects_total", {"code": "4204"}), 1.0)
        # A close the peer starts is counted when it ends, under the peer's code.
        polite = await self.connect()
        await polite.close(1000)
        await wait_until(lambda: hub.connection_count == 0, what="detach")
        self.assertEqual(self.metric("warpsocket_disconnects_total", {"code": "1000"}), 1.0)
