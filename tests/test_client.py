"""The Python client against a real server on 127.0.0.1.

Network I/O runs on the real reactor; the client's timers (backoff, retries,
dead-server detection) run on a ``Clock`` wherever the test is about time.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from typing import Any, cast

import jwt as pyjwt
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from tests.helpers.client import (
    FAST,
    ClientTestCase,
    ServerFixture,
    ignore_closed,
    make_hub,
    pause,
    reconnect_call,
    wait_until,
)
from warpsocket.client.blocking import BlockingClient
from warpsocket.client.client import ClientClosedError, DeliveryError, Message, WarpSocketClient
from warpsocket.client.options import ClientOptions
from warpsocket.client.state import ClientState, InvalidTransitionError, check_transition
from warpsocket.core.backoff import Backoff
from warpsocket.core.client import ClientCoreOptions, Status
from warpsocket.core.history import HistoryLimits
from warpsocket.core.server import CoreOptions
from warpsocket.protocol.codes import ErrorCode
from warpsocket.protocol.envelope import Envelope, MessageType
from warpsocket.server.context import Context
from warpsocket.server.middleware import Reject
from warpsocket.server.protocol import WarpSocketServerProtocol


class StateMachineTests(unittest.SynchronousTestCase):
    def test_allowedTransitions(self) -> None:
        check_transition(ClientState.DISCONNECTED, ClientState.CONNECTING)
        check_transition(ClientState.CONNECTING, ClientState.OPEN)
        check_transition(ClientState.OPEN, ClientState.DISCONNECTED)
        check_transition(ClientState.DISCONNECTED, ClientState.RECONNECTING)
        check_transition(ClientState.RECONNECTING, ClientState.CONNECTING)
        check_transition(ClientState.OPEN, ClientState.CLOSED)

    def test_impossibleTransitions(self) -> None:
        for old, new in [
            (ClientState.DISCONNECTED, ClientState.OPEN),
            (ClientState.RECONNECTING, ClientState.OPEN),
            (ClientState.OPEN, ClientState.RECONNECTING),
            (ClientState.OPEN, ClientState.CONNECTING),
            (ClientState.CLOSED, ClientState.OPEN),
        ]:
            self.assertRaises(InvalidTransitionError, check_transition, old, new)


class BasicTests(ClientTestCase):
    @inlineCallbacks
    def test_connectSendCallSubscribe(self) -> Any:
        hub = make_hub()
        handled: list[Any] = []
        hub.on("note", lambda ctx, data: handled.append(data))
        hub.on("add", lambda ctx, data: data[0] + data[1])
        server = ServerFixture(self, hub)
        client = self.client(server.url)
        states: list[tuple[str, str]] = []
        client.on_state(lambda old, new: states.append((old.value, new.value)))
        seen: list[Any] = []
        client.subscribe("chat", lambda message: seen.append(message.data))
        yield client.connect()
        self.assertEqual(client.state, ClientState.OPEN)
        self.assertEqual(states, [("disconnected", "connecting"), ("connecting", "open")])
        self.assertEqual((yield client.call("add", [2, 3])), 5)
        outcome = yield client.send("note", {"n": 1}, ack=True)
        self.assertEqual(outcome.status, Status.ACKED)
        self.assertEqual(handled, [{"n": 1}])
        for i in range(3):
            hub.publish("chat", "say", i)
        yield wait_until(lambda: len(seen) == 3)
        self.assertEqual(seen, [0, 1, 2])

    @inlineCallbacks
    def test_rejectedAndMissingHandlers(self) -> Any:
        hub = make_hub()

        def refuse(ctx: Context, data: Any) -> None:
            raise Reject(ErrorCode.FORBIDDEN, "no")

        hub.on("refuse", refuse)
        server = ServerFixture(self, hub)
        client = self.client(server.url)
        yield client.connect()
        error = yield self.assertFailure(client.send("refuse", 1, ack=True), DeliveryError)
        self.assertEqual((error.code, error.status), (4102, Status.REJECTED))
        error = yield self.assertFailure(client.call("nothing"), DeliveryError)
        self.assertEqual(error.code, ErrorCode.NO_HANDLER)

    @inlineCallbacks
    def test_serverAckedSendIsAutoAcknowledged(self) -> Any:
        hub = make_hub()
        server = ServerFixture(self, hub)
        client = self.client(server.url)
        got: list[Any] = []
        client.on("job", lambda message: got.append(message.data))
        yield client.connect()
        assert client.session is not None
        waiter = hub.send(client.session, "job", {"id": 7}, ack=True)
        assert waiter is not None
        yield waiter
        self.assertEqual(got, [{"id": 7}])

    @inlineCallbacks
    def test_manualAck(self) -> Any:
        hub = make_hub()
        server = ServerFixture(self, hub)
        client = self.client(server.url, auto_ack=False)
        received: list[Message] = []
        client.on("job", received.append)
        yield client.connect()
        assert client.session is not None
        waiter = hub.send(client.session, "job", 1, ack=True)
        assert waiter is not None
        acked: list[bool] = []
        waiter.addCallback(lambda _: acked.append(True))
        yield wait_until(lambda: len(received) == 1)
        yield pause(0.05)
        self.assertEqual(acked, [])  # not until the application says so
        received[0].ack()
        yield waiter
        self.assertEqual(acked, [True])


class ReconnectTests(ClientTestCase):
    @inlineCallbacks
    def test_backoffScheduleOnRefusedConnections(self) -> Any:
        """Nothing listens: attempts follow 1s, 2s, 4s, 8s ... capped at 8s (no jitter)."""
        server = ServerFixture(self, make_hub())
        url = server.url
        yield server.stop()
        clock = Clock()
        client = self.client(url, clock, backoff=Backoff(initial=1, factor=2, maximum=8, jitter=0))
        client.connect().addErrback(ignore_closed)
        delays = []
        for _ in range(6):
            yield wait_until(lambda: client.state is ClientState.RECONNECTING)
            call = reconnect_call(clock)
            delays.append(call.getTime() - clock.seconds())
            clock.advance(call.getTime() - clock.seconds())
            self.assertEqual(client.state, ClientState.CONNECTING)
        self.assertEqual(delays, [1, 2, 4, 8, 8, 8])
        self.assertEqual(client.stats.attempts, 7)  # the first try and six retries
        self.assertEqual(client.stats.connections, 0)

    @inlineCallbacks
    def test_jitterStaysWithinBounds(self) -> Any:
        server = ServerFixture(self, make_hub())
        url = server.url
        yield server.stop()
        clock = Clock()
        rng = random.Random(7)
        backoff = Backoff(initial=1, factor=2, maximum=30, jitter=0.5, random=rng.random)
        client = self.client(url, clock, backoff=backoff)
        client.connect().addErrback(ignore_closed)
        for attempt in range(5):
            yield wait_until(lambda: client.state is ClientState.RECONNECTING)
            call = reconnect_call(clock)
            delay = call.getTime() - clock.seconds()
            ceiling = min(2**attempt, 30)
            self.assertTrue(ceiling / 2 <= delay <= ceiling, (attempt, delay))
            clock.advance(delay)

    @inlineCallbacks
    def test_maxAttemptsGivesUp(self) -> Any:
        server = ServerFixture(self, make_hub())
        url = server.url
        yield server.stop()
        client = self.client(url, max_attempts=2)
        opened = client.connect()
        yield self.assertFailure(opened, ClientClosedError)
        self.assertEqual(client.state, ClientState.CLOSED)
        self.assertEqual(client.stats.attempts, 2)  # max_attempts=N: exactly N attempts

    @inlineCallbacks
    def test_predicateStopsAfterRefusal(self) -> Any:
        hub = make_hub()
        server = ServerFixture(self, hub)
        client = self.client(server.url)
        yield client.connect()
        next(iter(hub.port.connections.values())).close(int(ErrorCode.FORBIDDEN), "go away")
        yield wait_until(lambda: client.state is ClientState.CLOSED)
        self.assertEqual(client.stats.attempts, 1)

    @inlineCallbacks
    def test_customPredicate(self) -> Any:
        hub = make_hub()
        server = ServerFixture(self, hub)
        client = self.client(server.url, should_reconnect=lambda code: code != 1000)
        yield client.connect()
        server.drop_all()  # abnormal close: reconnect
        yield wait_until(lambda: client.stats.connections == 2)
        hub.port.close_all(ErrorCode.GOING_AWAY, "")  # predicate allows it: reconnects
        yield wait_until(lambda: client.stats.connections == 3)

    @inlineCallbacks
    def test_manualReconnect(self) -> Any:
        server = ServerFixture(self, make_hub())
        client = self.client(server.url)
        yield client.connect()
        first = client.session
        client.reconnect()
        yield wait_until(lambda: client.stats.connections == 2)
        self.assertEqual(client.state, ClientState.OPEN)
        self.assertEqual(client.session, first)  # resumed, not a new session

    @inlineCallbacks
    def test_goingAwayHintSpreadsReconnects(self) -> Any:
        hub = make_hub(reconnect_hint_ms=3000)
        server = ServerFixture(self, hub)
        clock = Clock()
        client = self.client(server.url, clock)
        yield client.connect()
        port = server.port
        yield server.stop()
        yield wait_until(lambda: client.state is ClientState.RECONNECTING)
        call = reconnect_call(clock)
        delay = call.getTime() - clock.seconds()
        self.assertTrue(3.0 <= delay <= 6.0, delay)
        # The node comes back on the same port; the client returns after the hint.
        ServerFixture(self, hub, port=port)
        clock.advance(delay)
        yield wait_until(lambda: client.state is ClientState.OPEN)

    @inlineCallbacks
    def test_deadServerDetected(self) -> Any:
        """No frame for the heartbeat timeout: the client drops and reconnects."""
        hub = make_hub(clock=Clock())  # the server's heartbeats never run
        server = ServerFixture(self, hub)
        clock = Clock()
        client = self.client(server.url, clock, heartbeat_timeout=60.0)
        yield client.connect()
        clock.advance(30)
        self.assertEqual(client.state, ClientState.OPEN)
        clock.advance(31)  # > 60 s of silence (welcome said 60 s too)
        yield wait_until(lambda: client.state is ClientState.RECONNECTING)
        clock.advance(1)
        yield wait_until(lambda: client.state is ClientState.OPEN)
        self.assertEqual(client.stats.reconnects, 1)


class DeliveryTests(ClientTestCase):
    @inlineCallbacks
    def test_offlineQueueFlushedInPriorityOrder(self) -> Any:
        hub = make_hub()
        handled: list[Any] = []
        hub.on("note", lambda ctx, data: handled.append(data))
        server = ServerFixture(self, hub)
        url, port = server.url, server.port
        yield server.stop()
        client = self.client(url)
        outcomes = [client.send("note", i, ack=True) for i in range(5)]
        urgent = client.send("note", "urgent", ack=True, priority=5)
        client.send("note", "fire-and-forget")
        self.assertEqual(client.queue_length, 7)
        client.connect().addErrback(ignore_closed)
        yield pause(0.05)
        ServerFixture(self, hub, port=port)
        yield wait_until(lambda: len(handled) == 7)
        self.assertEqual(handled, ["urgent", 0, 1, 2, 3, 4, "fire-and-forget"])
        for outcome in [*outcomes, urgent]:
            assert outcome is not None
            self.assertEqual((yield outcome).status, Status.ACKED)

    @inlineCallbacks
    def test_queueFullPolicy(self) -> Any:
        client = self.client("ws://127.0.0.1:9/ws", core=ClientCoreOptions(max_queue=2))
        first = client.send("x", 1, ack=True)
        second = client.send("x", 2, ack=True)
        third = client.send("x", 3, ack=True)
        assert first is not None and second is not None and third is not None
        first.addErrback(ignore_closed)
        second.addErrback(ignore_closed)
        error = yield self.assertFailure(third, DeliveryError)
        self.assertEqual(error.code, ErrorCode.QUEUE_FULL)
        self.assertFalse(first.called)

    @inlineCallbacks
    def test_deadlineExpiresQueuedMessage(self) -> Any:
        clock = Clock()
        client = self.client("ws://127.0.0.1:9/ws", clock)
        waiter = client.send("x", 1, ack=True, timeout=5)
        assert waiter is not None
        client.connect().addErrback(ignore_closed)
        clock.advance(6)
        error = yield self.assertFailure(waiter, DeliveryError)
        self.assertEqual((error.status, error.code), (Status.EXPIRED, ErrorCode.TIMEOUT))

    @inlineCallbacks
    def test_resumeReplaysMissedMessages(self) -> Any:
        hub = make_hub()
        server = ServerFixture(self, hub)
        client = self.client(server.url)
        seen: list[int] = []
        client.subscribe("chat", lambda message: seen.append(message.data))
        yield client.connect()
        session = client.session
        hub.publish("chat", "n", 0)
        yield wait_until(lambda: seen == [0])
        server.drop_all()
        for i in range(1, 20):
            hub.publish("chat", "n", i)
        yield wait_until(lambda: len(seen) == 20)
        self.assertEqual(seen, list(range(20)))
        self.assertEqual(client.session, session)
        self.assertEqual(client.rooms, {"chat"})

    @inlineCallbacks
    def test_unrecoverableStreamIsReported(self) -> Any:
        hub = make_hub(core=CoreOptions(history=HistoryLimits(max_messages=3)))
        server = ServerFixture(self, hub)
        client = self.client(server.url)
        lost: list[str] = []
        client.on_lost(lambda stream, reason: lost.append(stream))
        seen: list[int] = []
        client.subscribe("chat", lambda message: seen.append(message.data))
        yield client.connect()
        hub.publish("chat", "n", 0)
        yield wait_until(lambda: seen == [0])
        server.drop_all()
        for i in range(1, 10):  # more than the history keeps
            hub.publish("chat", "n", i)
        yield wait_until(lambda: lost == ["room:chat"])
        hub.publish("chat", "n", 10)
        yield wait_until(lambda: seen[-1] == 10)
        self.assertEqual(seen, [0, 10])

    @inlineCallbacks
    def test_roomsRestoredOnNewSession(self) -> Any:
        """Even when the session expired, the client's rooms are rejoined."""
        hub_clock = Clock()
        hub = make_hub(hub_clock, core=CoreOptions(session_ttl_ms=1000))
        server = ServerFixture(self, hub)
        clock = Clock()
        client = self.client(server.url, clock)
        seen: list[int] = []
        lost: list[str] = []
        client.on_lost(lambda stream, reason: lost.append(stream))
        client.subscribe("chat", lambda message: seen.append(message.data))
        yield client.connect()
        first = client.session
        server.drop_all()
        yield wait_until(lambda: client.state is ClientState.RECONNECTING)
        hub_clock.advance(2)
        hub.port.tick()  # the session expires on the server
        clock.advance(reconnect_call(clock).getTime() - clock.seconds())
        yield wait_until(lambda: client.state is ClientState.OPEN)
        self.assertEqual(lost, ["direct"])  # its direct stream went with the session
        self.assertNotEqual(client.session, first)
        hub.publish("chat", "n", 1)
        yield wait_until(lambda: seen == [1])

    @inlineCallbacks
    def test_randomCutsDuringAckedTrafficBothWays(self) -> Any:
        """Connections cut at random points: nothing lost, nothing duplicated."""
        hub = make_hub()
        handled: list[int] = []
        hub.on("n", lambda ctx, data: handled.append(data))
        server = ServerFixture(self, hub)
        client = self.client(server.url)
        received: list[int] = []
        client.on("d", lambda message: received.append(message.data))
        client.subscribe("room", lambda message: received.append(message.data))
        yield client.connect()
        session = client.session
        assert session is not None
        rng = random.Random(1234)
        outcomes = []
        server_acks = []
        cuts = 0
        count = 300
        for i in range(count):
            outcomes.append(client.send("n", i, ack=True))
            if i % 2:
                waiter = hub.send(session, "d", 10_000 + i, ack=True, timeout=60)
                assert waiter is not None
                server_acks.append(waiter)
            else:
                hub.publish("room", "r", 10_000 + i)
            if rng.random() < 0.06 and hub.connection_count:
                server.drop_all()
                cuts += 1
            if rng.random() < 0.3:
                yield pause(0.002)
        results = yield Deferred.fromCoroutine(_gather(outcomes))
        self.assertEqual([r.status for r in results], [Status.ACKED] * count)
        for waiter in server_acks:
            yield waiter
        self.assertEqual(sorted(handled), list(range(count)))
        self.assertEqual(len(handled), len(set(handled)))
        self.assertEqual(sorted(received), [10_000 + i for i in range(count)])
        direct = [v for v in received if (v - 10_000) % 2]
        room = [v for v in received if not (v - 10_000) % 2]
        self.assertEqual(direct, sorted(direct))
        self.assertEqual(room, sorted(room))
        self.assertGreaterEqual(cuts, 3)
        # A cut during a handshake ends an attempt, not an open connection.
        self.assertTrue(1 <= client.stats.reconnects <= cuts, (client.stats.reconnects, cuts))


async def _gather(waiters: list[Any]) -> list[Any]:
    return [await waiter for waiter in waiters]


class DurableQueueTests(ClientTestCase):
    @inlineCallbacks
    def test_queueSurvivesClientRestart(self) -> Any:
        hub = make_hub()
        handled: list[Any] = []
        hub.on("note", lambda ctx, data: handled.append(data))
        server = ServerFixture(self, hub)
        url, port = server.url, server.port
        yield server.stop()
        path = os.path.join(self.mktemp() + ".queue")
        first = self.client(url, queue_path=path)
        for i in range(3):
            waiter = first.send("note", i, ack=True)
            assert waiter is not None
            waiter.addErrback(ignore_closed)
        # The process "dies": the client object is dropped without closing.
        first.factory.stopTrying()
        ServerFixture(self, hub, port=port)
        second = self.client(url, queue_path=path)
        self.assertEqual(second.queue_length, 3)
        yield second.connect()
        yield wait_until(lambda: len(handled) == 3)
        self.assertEqual(handled, [0, 1, 2])
        yield wait_until(lambda: second.core.inflight_count == 0)
        # A third start has nothing left to send.
        third = WarpSocketClient(url, ClientOptions(queue_path=path))
        self.assertEqual(third.queue_length, 0)
        with open(path, encoding="utf-8") as journal:
            self.assertEqual([json.loads(line) for line in journal], [])


class NetworkChangeTests(ClientTestCase):
    """rtnetlink notices an address change (needs root, as CI and the dev machines are)."""

    def change_network(self) -> None:
        address = f"127.0.{random.randint(100, 250)}.{random.randint(2, 250)}/8"
        subprocess.run(["ip", "addr", "add", address, "dev", "lo"], check=True)
        subprocess.run(["ip", "addr", "del", address, "dev", "lo"], check=True)

    @inlineCallbacks
    def test_reconnectsAtOnceWhenTheNetworkChanges(self) -> Any:
        hub = make_hub()
        server = ServerFixture(self, hub)
        url, port = server.url, server.port
        yield server.stop()
        clock = Clock()
        client = self.client(url, clock, backoff=Backoff(initial=600, maximum=600, jitter=0))
        client.connect().addErrback(ignore_closed)
        yield wait_until(lambda: client.state is ClientState.RECONNECTING)
        self.assertEqual(reconnect_call(clock).getTime() - clock.seconds(), 600)
        ServerFixture(self, hub, port=port)
        self.change_network()
        yield wait_until(lambda: reconnect_call(clock).getTime() == clock.seconds())
        clock.advance(0)
        yield wait_until(lambda: client.state is ClientState.OPEN)

    @inlineCallbacks
    def test_openConnectionIsProbedAfterAChange(self) -> Any:
        hub = make_hub()
        server = ServerFixture(self, hub)
        clock = Clock()
        client = self.client(server.url, clock)
        yield client.connect()
        # The server stops reading: the path is silently dead.
        for connection in hub.port.connections.values():
            cast(WarpSocketServerProtocol, connection).transport.pauseProducing()
        self.change_network()
        yield wait_until(lambda: client._probe_deadline is not None)
        clock.advance(client.options.network_probe_timeout + client.options.tick_interval)
        yield wait_until(lambda: client.state is not ClientState.OPEN)

    @inlineCallbacks
    def test_probeAnsweredKeepsTheConnection(self) -> Any:
        server = ServerFixture(self, make_hub())
        clock = Clock()
        client = self.client(server.url, clock)
        yield client.connect()
        self.assertIsNotNone(client.stats.rtt_seconds)  # measured by the handshake
        client.stats.rtt_seconds = None
        self.change_network()
        yield wait_until(lambda: client.stats.rtt_seconds is not None)  # probe answered
        self.assertIsNone(client._probe_deadline)
        clock.advance(client.options.network_probe_timeout + 1)
        self.assertEqual(client.state, ClientState.OPEN)


class TokenTests(ClientTestCase):
    @inlineCallbacks
    def test_tokenProviderOnEveryConnectAndRefreshBeforeExpiry(self) -> Any:
        hub = make_hub()
        seen: list[tuple[str, Any]] = []

        receive = hub.core.receive

        def spy(conn: int, envelope: Envelope, now: int) -> Any:
            if envelope.type in (MessageType.HELLO, MessageType.AUTH):
                seen.append((envelope.type.value, envelope.data.get("token")))
            return receive(conn, envelope, now)

        hub.core.receive = spy  # type: ignore[method-assign]
        server = ServerFixture(self, hub)
        clock = Clock()
        issued: list[str] = []

        def token() -> str:
            issued.append(
                pyjwt.encode(
                    {"sub": "u", "exp": int(clock.seconds()) + 40, "n": len(issued)},
                    "secret",
                    algorithm="HS256",
                )
            )
            return issued[-1]

        client = WarpSocketClient(
            server.url,
            ClientOptions(backoff=FAST, heartbeat_timeout=10_000),
            clock=clock,
            token=token,
        )
        self.addCleanup(client.close)
        yield client.connect()
        clock.advance(19)
        self.assertEqual(len(issued), 1)
        clock.advance(1)  # half its life (40 s < 2 x refresh_before)
        yield wait_until(lambda: len(seen) == 2)
        self.assertEqual(seen, [("hello", issued[0]), ("auth", issued[1])])
        server.drop_all()  # a reconnect asks the provider again
        yield wait_until(lambda: client.state is ClientState.RECONNECTING)
        clock.advance(1)
        yield wait_until(lambda: len(seen) == 3)
        self.assertEqual(seen[2], ("hello", issued[2]))


class BlockingClientTests(ClientTestCase):
    @inlineCallbacks
    def test_fromPlainBlockingCode(self) -> Any:
        """The blocking facade, used from a non-reactor thread, as a script would."""
        hub = make_hub()
        hub.on("add", lambda ctx, data: data[0] + data[1])
        handled: list[Any] = []
        hub.on("note", lambda ctx, data: handled.append(data))
        server = ServerFixture(self, hub)

        def script() -> tuple[Any, Any, ClientState]:
            client = BlockingClient(server.url, ClientOptions(backoff=FAST))
            client.connect()
            total = client.call("add", [20, 22])
            outcome = client.send("note", "hi", ack=True)
            state = client.state
            client.close()
            return total, outcome.status, state

        total, status, state = yield deferToThread(script)
        self.assertEqual((total, status, state), (42, Status.ACKED, ClientState.OPEN))
        self.assertEqual(handled, ["hi"])
