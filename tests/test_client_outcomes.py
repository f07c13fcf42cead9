"""An outcome the application is told stays true: over real sockets on 127.0.0.1.

A failed (closed, given up) or expired message leaves the queue and no copy
is ever handled afterwards, even one that a black-holed link held back.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock

from chaos.proxy import ChaosProxy
from tests.helpers.client import (
    ClientTestCase,
    ServerFixture,
    ignore_closed,
    make_hub,
    pause,
    reactor,
    reconnect_call,
    spy_inbound,
    wait_until,
)
from warpsocket.client.client import ClientClosedError, DeliveryError, WarpSocketClient
from warpsocket.client.options import ClientOptions, DisconnectCause
from warpsocket.client.state import ClientState
from warpsocket.core.backoff import Backoff
from warpsocket.core.client import Status
from warpsocket.protocol.codes import ErrorCode
from warpsocket.protocol.envelope import MessageType


class Proxy:
    """chaos.proxy in front of a server: stalls hold bytes in the kernel buffers."""

    def __init__(self, test: ClientTestCase, backend_port: int) -> None:
        import random

        self.proxy = ChaosProxy(reactor, backend_port, random.Random(1))
        self.port = self.proxy.listen()
        test.addCleanup(self.proxy.close)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


class BlackHole(Protocol):
    """Accepts the connection and never answers."""


class FailedIsFinalTests(ClientTestCase):
    @inlineCallbacks
    def test_closeFailsQueuedMessagesForGood(self) -> Any:
        hub = make_hub()
        handled: list[Any] = []
        hub.on("note", lambda ctx, data: handled.append(data))
        server = ServerFixture(self, hub)
        url, port = server.url, server.port
        yield server.stop()
        client = self.client(url)
        waiters = [client.send("note", i, ack=True) for i in range(3)]
        client.send("note", "fire-and-forget")
        client.connect().addErrback(ignore_closed)
        yield pause(0.05)
        yield client.close()
        for waiter in waiters:
            assert waiter is not None
            error = yield self.assertFailure(waiter, ClientClosedError)
            self.assertEqual(error.outcome.status, Status.FAILED)
            self.assertFalse(error.outcome.sent)  # the server never saw it
        self.assertEqual(client.queue_length, 0)
        # A later connect() to a live server sends none of them.
        ServerFixture(self, hub, port=port)
        yield client.connect()
        outcome = yield client.send("note", "after", ack=True)
        self.assertEqual(outcome.status, Status.ACKED)
        self.assertEqual(handled, ["after"])

    @inlineCallbacks
    def test_sendAfterCloseFailsAtOnce(self) -> Any:
        server = ServerFixture(self, make_hub())
        client = self.client(server.url)
        yield client.connect()
        yield client.close()
        self.assertRaises(ClientClosedError, client.send, "note", 1, ack=True)
        self.assertRaises(ClientClosedError, client.send, "note", 1)
        self.assertRaises(ClientClosedError, client.call, "add", [1, 2])
        self.assertEqual(client.queue_length, 0)

    @inlineCallbacks
    def test_givingUpFailsQueuedMessagesForGood(self) -> Any:
        hub = make_hub()
        handled: list[Any] = []
        hub.on("note", lambda ctx, data: handled.append(data))
        server = ServerFixture(self, hub)
        url, port = server.url, server.port
        yield server.stop()
        client = self.client(url, max_attempts=2)
        waiter = client.send("note", 1, ack=True)
        assert waiter is not None
        yield self.assertFailure(client.connect(), ClientClosedError)
        error = yield self.assertFailure(waiter, ClientClosedError)
        self.assertEqual((error.outcome.status, error.outcome.sent), (Status.FAILED, False))
        self.assertEqual(client.stats.attempts, 2)
        ServerFixture(self, hub, port=port)
        yield client.connect()
        yield client.send("note", 2, ack=True)
        self.assertEqual(handled, [2])

    @inlineCallbacks
    def test_closeFailsInFlightMessagesAndTheJournalForgetsThem(self) -> Any:
        """Sent but unanswered at close(): failed, sent=True; no restart re-sends it."""
        hub = make_hub()
        received = spy_inbound(hub)
        hub.on("slow", lambda ctx, data: None)  # answered: but the proxy holds it back
        server = ServerFixture(self, hub)
        proxy = Proxy(self, server.port)
        path = self.mktemp() + ".queue"
        client = self.client(proxy.url, queue_path=path)
        yield client.connect()
        proxy.proxy.stall(1.0, 0.2, "up")
        waiter = client.send("slow", 1, ack=True)
        assert waiter is not None
        yield pause(0.02)
        yield client.close()
        error = yield self.assertFailure(waiter, ClientClosedError)
        self.assertTrue(error.outcome.sent)
        restarted = WarpSocketClient(proxy.url, ClientOptions(queue_path=path))
        self.assertEqual(restarted.queue_length, 0)
        self.assertEqual(os.path.getsize(path), 0)
        yield wait_until(lambda: any(e.event == "slow" for e in received), 2)


class ExpiredIsFinalTests(ClientTestCase):
    """The ISSUE's black hole: expired sends must not be handled when the bytes arrive."""

    @inlineCallbacks
    def check_black_hole(self, server_behind_s: float) -> Any:
        hub_clock, clock = Clock(), Clock()
        hub_clock.advance(1_000 - server_behind_s)
        clock.advance(1_000)
        hub = make_hub(hub_clock)
        handled: list[Any] = []
        hub.on("note", lambda ctx, data: handled.append(data))
        received = spy_inbound(hub)
        server = ServerFixture(self, hub)
        proxy = Proxy(self, server.port)
        client = self.client(proxy.url, clock)
        yield client.connect()
        proxy.proxy.stall(1.0, 0.5, "up", protect=True)  # client -> server held 0.5 s
        waiters = [client.send("note", i, ack=True, timeout=2) for i in range(2)]
        yield pause(0.05)
        clock.advance(2)  # the client's deadline
        for waiter in waiters:
            assert waiter is not None
            error = yield self.assertFailure(waiter, DeliveryError)
            self.assertEqual((error.status, error.code), (Status.EXPIRED, ErrorCode.TIMEOUT))
            self.assertTrue(error.outcome.sent)
        hub_clock.advance(2)  # the same moment on the server's clock; then the bytes flow
        yield wait_until(lambda: len([e for e in received if e.event == "note"]) == 2)
        yield pause(0.05)
        self.assertEqual(handled, [])

    def test_expiredCopiesHeldInTheNetworkAreNotHandled(self) -> Any:
        return self.check_black_hole(0)

    def test_evenWhenTheServerClockIsBehind(self) -> Any:
        """Server 30 s slow: the copy's timestamp is on the server's clock, not ours."""
        return self.check_black_hole(30)

    @inlineCallbacks
    def test_answeredInTimeIsAcked(self) -> Any:
        """The stamped ttl does not refuse a message that arrives in time."""
        hub_clock, clock = Clock(), Clock()
        hub_clock.advance(1_500)  # server 500 s ahead: our timestamp would be long past
        clock.advance(1_000)
        hub = make_hub(hub_clock)
        handled: list[Any] = []
        hub.on("note", lambda ctx, data: handled.append(data))
        server = ServerFixture(self, hub)
        client = self.client(server.url, clock)
        yield client.connect()
        outcome = yield client.send("note", 1, ack=True, timeout=2)
        self.assertEqual((outcome.status, handled), (Status.ACKED, [1]))


class ReconnectCauseTests(ClientTestCase):
    @inlineCallbacks
    def test_shouldReconnectTellsRefusedCutClosedAndTimeout(self) -> Any:
        hub = make_hub()
        server = ServerFixture(self, hub)
        url, port = server.url, server.port
        seen: list[tuple[int | None, DisconnectCause]] = []

        def record(code: int | None, cause: DisconnectCause) -> bool:
            seen.append((code, cause))
            return True

        client = self.client(url, should_reconnect=record)
        yield client.connect()
        server.drop_all()
        yield wait_until(lambda: len(seen) == 1)
        yield wait_until(lambda: client.state is ClientState.OPEN)
        hub.port.close_all(ErrorCode.GOING_AWAY, "")
        yield wait_until(lambda: len(seen) == 2)
        yield wait_until(lambda: client.state is ClientState.OPEN)
        yield server.stop()
        yield wait_until(lambda: len(seen) >= 4)
        self.assertEqual(seen[0], (1006, DisconnectCause.CUT))
        self.assertEqual(seen[1], (int(ErrorCode.GOING_AWAY), DisconnectCause.CLOSED))
        self.assertEqual(seen[3], (None, DisconnectCause.REFUSED))
        ServerFixture(self, hub, port=port)
        yield wait_until(lambda: client.state is ClientState.OPEN)

    def test_oneArgumentPredicatesStillWork(self) -> None:
        options = ClientOptions(should_reconnect=lambda code: code != 1000)
        self.assertFalse(options.reconnect_wanted(1000, DisconnectCause.CLOSED))
        self.assertTrue(options.reconnect_wanted(1006, DisconnectCause.CUT))

    @inlineCallbacks
    def test_handshakeIntoABlackHoleIsBoundedByTheHeartbeatTimeout(self) -> Any:
        port = reactor.listenTCP(0, Factory.forProtocol(BlackHole), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        clock = Clock()
        causes: list[DisconnectCause] = []
        client = self.client(
            f"ws://127.0.0.1:{port.getHost().port}/ws",
            clock,
            heartbeat_timeout=3.0,
            backoff=Backoff(initial=1, maximum=1, jitter=0),
            should_reconnect=lambda code, cause: causes.append(cause) or True,
        )
        client.connect().addErrback(ignore_closed)
        yield wait_until(lambda: client._attempt_protocol is not None)
        clock.advance(2.9)
        self.assertEqual(client.state, ClientState.CONNECTING)
        clock.advance(0.1)  # 3 s: the heartbeat timeout, not Autobahn's 5 s
        yield wait_until(lambda: client.state is ClientState.RECONNECTING)
        self.assertEqual(causes, [DisconnectCause.TIMEOUT])
        self.assertEqual(reconnect_call(clock).getTime() - clock.seconds(), 1)


class SignalTests(ClientTestCase):
    @inlineCallbacks
    def test_onOpenSaysResumedAndLost(self) -> Any:
        hub = make_hub()
        server = ServerFixture(self, hub)
        client = self.client(server.url)
        opened: list[Any] = []
        client.on_open(opened.append)
        yield client.connect()
        server.drop_all()
        yield wait_until(lambda: len(opened) == 2)
        first, second = opened
        self.assertEqual((first.resumed, first.reconnect), (False, False))
        self.assertEqual((second.resumed, second.recovered, second.reconnect), (True, True, True))
        self.assertEqual(second.session, first.session)
        self.assertEqual(client.stats.resumes, 1)

    @inlineCallbacks
    def test_resumeTokenIsPresentedWithTheSession(self) -> Any:
        """The welcome's resume token (None from a server that issues none) goes in the
        next hello with the session, and the session resumes either way."""
        hub = make_hub()
        seen = spy_inbound(hub)
        server = ServerFixture(self, hub)
        client = self.client(server.url)
        opened: list[Any] = []
        client.on_open(opened.append)
        yield client.connect()
        issued = client.core.resume_token
        server.drop_all()
        yield wait_until(lambda: len(opened) == 2)
        hellos = [e.data for e in seen if e.type is MessageType.HELLO]
        self.assertEqual(hellos[1]["session"], client.session)
        self.assertEqual(hellos[1].get("resume_token"), issued)
        self.assertTrue(opened[1].resumed)

    @inlineCallbacks
    def test_rttFromTheHandshakeAndOwnHeartbeats(self) -> Any:
        hub = make_hub()
        received = spy_inbound(hub)
        server = ServerFixture(self, hub)
        clock = Clock()
        client = self.client(server.url, clock, ping_interval=5.0)
        yield client.connect()
        self.assertIsNotNone(client.stats.rtt_seconds)
        client.stats.rtt_seconds = None
        clock.advance(5)
        yield wait_until(
            lambda: any(e.type is MessageType.HEARTBEAT and e.ref is None for e in received)
        )
        yield wait_until(lambda: client.stats.rtt_seconds is not None)

    @inlineCallbacks
    def test_connectTimeout(self) -> Any:
        server = ServerFixture(self, make_hub())
        url, port = server.url, server.port
        yield server.stop()
        clock = Clock()
        client = self.client(url, clock)
        connecting = client.connect(timeout=5)
        yield wait_until(lambda: client.state is ClientState.RECONNECTING)
        clock.advance(5)
        yield self.assertFailure(connecting, TimeoutError)
        yield wait_until(lambda: client.state is ClientState.RECONNECTING)  # it keeps trying
        ServerFixture(self, make_hub(), port=port)
        clock.advance(reconnect_call(clock).getTime() - clock.seconds())
        yield client.connect(timeout=5)
        self.assertEqual(client.state, ClientState.OPEN)
