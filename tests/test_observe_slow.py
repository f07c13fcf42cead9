"""Slow-message alerts on a fake clock: each kind's threshold, the structured
warning, the counter and the ``on_slow`` hook; the client's ``slow`` event."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogEvent, globalLogPublisher
from twisted.trial import unittest

from tests.helpers.client import ClientTestCase, ServerFixture, make_hub, wait_until
from warpsocket.client.observe import SlowAck
from warpsocket.core.keys import room_key
from warpsocket.protocol.envelope import Envelope, MessageType
from warpsocket.server.context import Context
from warpsocket.server.hub import HubOptions
from warpsocket.server.observe.slow import SlowEvent, SlowThresholds
from warpsocket.testing import HubHarness


def slow_count(harness: HubHarness, kind: str) -> float:
    value = harness.hub.metrics.registry.get_sample_value("warpsocket_slow_total", {"kind": kind})
    return value or 0.0


class SlowAlertTests(unittest.TestCase):
    def setUp(self) -> None:
        self.logged: list[LogEvent] = []

        def observe(event: LogEvent) -> None:
            if event.get("log_namespace") == "warpsocket.slow":
                self.logged.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def harness(self, **thresholds: float) -> tuple[HubHarness, list[SlowEvent]]:
        harness = HubHarness(options=HubOptions(open_rooms=True, slow=SlowThresholds(**thresholds)))
        seen: list[SlowEvent] = []
        harness.hub.on_slow(seen.append)
        return harness, seen

    def test_slow_handler(self) -> None:
        harness, seen = self.harness(handler=1.0)

        @harness.hub.on("work")
        def work(ctx: Context, seconds: float) -> Deferred[None]:
            return deferLater(harness.clock, seconds, lambda: None)

        alice = harness.connect()
        alice.feed(alice.envelope(MessageType.EVENT, event="work", data=0.5, ack=True))
        harness.advance(1)
        self.assertEqual(seen, [])
        sent = alice.envelope(MessageType.EVENT, event="work", data=2.0, ack=True)
        alice.feed(sent)
        harness.advance(3)
        (slow,) = seen
        self.assertEqual(
            (slow.kind, slow.message_id, slow.event, slow.session, slow.threshold),
            ("handler", sent.id, "work", alice.session, 1.0),
        )
        self.assertAlmostEqual(slow.seconds, 2.0, delta=0.01)
        self.assertEqual(slow_count(harness, "handler"), 1.0)
        (event,) = self.logged
        self.assertEqual(event["log_level"].name, "warn")
        self.assertEqual((event["message_id"], event["session"]), (sent.id, alice.session))

    def test_slow_ack(self) -> None:
        harness, seen = self.harness(ack=2.0)
        alice = harness.connect()
        assert alice.session is not None
        acked = harness.hub.send(alice.session, "first", 1, ack=True)
        harness.turn()
        (first,) = alice.events("direct")
        alice.ack(first)
        self.assertIsNone(self.successResultOf(acked))
        harness.hub.send(alice.session, "second", 2, ack=True).addErrback(lambda f: None)
        harness.advance(1.5)
        self.assertEqual(seen, [])
        harness.advance(1)
        (slow,) = seen
        (second,) = alice.events("direct")[1:]
        self.assertEqual(
            (slow.kind, slow.message_id, slow.stream, slow.offset, slow.session),
            ("ack", second.id, "direct", second.offset, alice.session),
        )
        harness.advance(5)
        self.assertEqual(len(seen), 1)  # once per message
        self.assertEqual(slow_count(harness, "ack"), 1.0)

    def test_slow_delivery(self) -> None:
        harness, seen = self.harness(delivery=0.5)
        bob = harness.connect(rooms=["chat"])
        harness.advance(10)
        harness.hub.publish("chat", "fresh", 1)
        harness.turn()
        self.assertEqual(seen, [])
        # A message accepted 3 s ago by its node reaches this one now (a
        # lagging cluster link): the backend hands it to the delivery path.
        now_ms = harness.hub.now_ms()
        late = Envelope(
            type=MessageType.EVENT, id="late-1", timestamp=now_ms - 3000, event="late", data=2
        )
        harness.hub.backend.publish(room_key("chat"), late, now_ms)
        harness.turn()
        (slow,) = seen
        self.assertEqual(
            (slow.kind, slow.message_id, slow.stream), ("delivery", "late-1", "room:chat")
        )
        self.assertEqual(slow.offset, bob.events("room:chat")[-1].offset)
        self.assertAlmostEqual(slow.seconds, 3.0, delta=0.01)

    def test_slow_outbound_buffer(self) -> None:
        harness, seen = self.harness(buffer=2.0)
        alice = harness.connect()
        pending = [0]
        alice.connection.outbound = SimpleNamespace(meter=lambda: pending[0])  # type: ignore[attr-defined]
        harness.advance(5)
        self.assertEqual(seen, [])
        pending[0] = 4096
        harness.advance(2)
        self.assertEqual(seen, [])
        harness.advance(2.5)
        (slow,) = seen
        self.assertEqual((slow.kind, slow.session), ("buffer", alice.session))
        self.assertEqual(slow.seconds, 3.0)  # measured at the ticks (1 s apart)
        harness.advance(5)
        self.assertEqual(len(seen), 1)  # once per backlog
        pending[0] = 0
        harness.advance(1)
        pending[0] = 10
        harness.advance(4)
        self.assertEqual(len(seen), 2)

    def test_hook_failure_is_logged_not_raised(self) -> None:
        harness, seen = self.harness(handler=0.1)
        harness.hub.on_slow(lambda slow: 1 / 0)

        @harness.hub.on("work")
        def work(ctx: Context, data: Any) -> Deferred[None]:
            return deferLater(harness.clock, 1, lambda: None)

        alice = harness.connect()
        alice.feed(alice.envelope(MessageType.EVENT, event="work", ack=True))
        harness.advance(2)
        self.assertEqual(len(seen), 1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_off_by_default(self) -> None:
        harness = HubHarness()
        self.assertIsNone(harness.hub.observe)
        self.assertRaises(RuntimeError, harness.hub.on_slow, lambda slow: None)
        self.assertRaises(ValueError, SlowThresholds, handler=0)


class ClientSlowAckTests(ClientTestCase):
    def test_slow_event_when_the_ack_is_late(self) -> Any:
        hub = make_hub()
        release: list[Deferred[None]] = []

        @hub.on("hang")
        def hang(ctx: Context, data: Any) -> Deferred[None]:
            waiting: Deferred[None] = Deferred()
            release.append(waiting)
            return waiting

        server = ServerFixture(self, hub)
        clock = Clock()
        client = self.client(server.url, slow_ack=1.0)
        client.clock = clock  # the slow timers only: the connection runs on the reactor
        slow: list[SlowAck] = []
        client.on_slow(slow.append)

        async def run() -> None:
            await client.connect()
            quick = client.send("hang", 1, ack=True)
            await wait_until(lambda: len(release) == 1)
            release[0].callback(None)
            assert quick is not None
            await quick
            clock.advance(2)
            self.assertEqual(slow, [])
            late = client.send("hang", 2, ack=True)
            await wait_until(lambda: len(release) == 2)
            clock.advance(0.5)
            self.assertEqual(slow, [])
            clock.advance(0.6)
            (event,) = slow
            self.assertEqual((event.event, event.threshold), ("hang", 1.0))
            self.assertAlmostEqual(event.seconds, 1.1, delta=0.01)
            release[1].callback(None)
            assert late is not None
            await late
            clock.advance(5)
            self.assertEqual(len(slow), 1)

        return ensureDeferred(run())
