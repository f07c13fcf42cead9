"""When rules fire (engine.py) and how held writes leave (wire.py), on a Clock."""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from warpsocket.mock.engine import ScenarioEngine, Values
from warpsocket.mock.scenario import EventAction, FaultAction, parse_scenario
from warpsocket.mock.wire import ShapedTransport, ShapingFactory


class Recording:
    """A Performer that writes down what fired, and when."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.log: list[tuple[float, str, Any, str | None]] = []
        self.sessions: set[str] = set()

    def emit(self, action: EventAction, values: Values, session: str | None) -> None:
        self.log.append((self.clock.seconds(), action.event, action.data.render(values), session))

    def fault(self, action: FaultAction, session: str | None) -> None:
        self.log.append((self.clock.seconds(), action.fault, None, session))

    def alive(self, session: str) -> bool:
        return session in self.sessions


def engine(document: dict[str, Any]) -> tuple[ScenarioEngine, Recording, Clock]:
    clock = Clock()
    performer = Recording(clock)
    return ScenarioEngine(parse_scenario(document), clock, performer), performer, clock


class EngineTests(unittest.TestCase):
    def test_timeline_at_every_count(self) -> None:
        scenario = {
            "events": [
                {
                    "at": "1.5s",
                    "every": "1s",
                    "count": 3,
                    "room": "r",
                    "event": "tick",
                    "data": {"n": "{{seq}}", "t": "{{now}}"},
                }
            ],
            "faults": [{"at": "2s", "fault": "cut"}],
        }
        rules, seen, clock = engine(scenario)
        rules.start()
        clock.advance(1.4)
        self.assertEqual(seen.log, [])
        clock.pump([0.1, 0.5, 0.5, 1, 1, 10])
        self.assertEqual(
            seen.log,
            [
                (1.5, "tick", {"n": 1, "t": 1500}, None),
                (2.0, "cut", None, None),
                (2.5, "tick", {"n": 2, "t": 2500}, None),
                (3.5, "tick", {"n": 3, "t": 3500}, None),
            ],
        )
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_every_without_count_runs_until_stopped(self) -> None:
        rules, seen, clock = engine({"events": [{"every": 1, "broadcast": True, "event": "b"}]})
        rules.start()
        clock.pump([0] + [1] * 5)
        self.assertEqual([t for t, *_ in seen.log], [0, 1, 2, 3, 4, 5])
        rules.stop()
        clock.advance(10)
        self.assertEqual(len(seen.log), 6)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_connect_is_relative_to_the_welcome_and_per_session(self) -> None:
        rules, seen, clock = engine(
            {
                "events": [
                    {"on": "connect", "at": "500ms", "event": "hi", "data": "{{session}}/{{user}}"}
                ]
            }
        )
        seen.sessions |= {"s1", "s2"}
        clock.advance(10)
        rules.connected("s1", "alice", frozenset())
        clock.advance(0.2)
        rules.connected("s2", None, frozenset())
        clock.pump([0.3, 0.2])
        self.assertEqual(seen.log, [(10.5, "hi", "s1/alice", "s1"), (10.7, "hi", "s2/null", "s2")])

    def test_times_limits_the_triggers_acted_on(self) -> None:
        rules, seen, clock = engine(
            {"faults": [{"on": "connect", "times": 1, "at": 1, "fault": "stall", "for": "1s"}]}
        )
        seen.sessions |= {"s1", "s2"}
        rules.connected("s1", None, frozenset())
        rules.connected("s2", None, frozenset())
        clock.advance(1)
        self.assertEqual(seen.log, [(1.0, "stall", None, "s1")])

    def test_event_trigger_sees_the_data(self) -> None:
        rules, seen, clock = engine(
            {
                "events": [
                    {"on": {"event": "ping"}, "event": "pong", "data": ["{{data.n}}", "{{event}}"]}
                ]
            }
        )
        seen.sessions.add("s")
        rules.client_event("s", None, "ping", {"n": 7})
        rules.client_event("s", None, "other", {"n": 8})
        clock.advance(0)
        self.assertEqual(seen.log, [(0, "pong", [7, "ping"], "s")])

    def test_join_fires_once_per_entry_into_the_room(self) -> None:
        rules, seen, clock = engine(
            {"events": [{"on": "join news", "room": "news", "event": "hl", "data": "{{room}}"}]}
        )
        seen.sessions.add("s")
        rules.connected("s", None, frozenset({"news", "other"}))
        rules.rooms_now("s", None, frozenset({"news", "other"}))  # a resume: no new join
        clock.advance(0)
        self.assertEqual(len(seen.log), 1)
        rules.rooms_now("s", None, frozenset({"other"}))  # left
        rules.rooms_now("s", None, frozenset({"other", "news"}))  # joined again
        clock.advance(0)
        self.assertEqual([entry[2] for entry in seen.log], ["news", "news"])

    def test_a_gone_session_stops_its_repeats_and_a_restart_forgets_all(self) -> None:
        rules, seen, clock = engine(
            {
                "events": [
                    {"on": "connect", "every": 1, "event": "beat"},
                    {"every": 1, "count": 3, "room": "r", "event": "tick"},
                ]
            }
        )
        rules.start()
        seen.sessions |= {"s1", "s2"}
        rules.connected("s1", None, frozenset())
        rules.connected("s2", None, frozenset())
        clock.advance(0)
        seen.sessions.discard("s1")
        clock.advance(1)
        self.assertEqual(
            [(e, s) for _, e, _, s in seen.log],
            [("tick", None), ("beat", "s1"), ("beat", "s2"), ("tick", None), ("beat", "s2")],
        )
        rules.forget_sessions()
        clock.pump([1, 1, 1])
        # The timeline carries on; the sessions' rules are gone.
        self.assertEqual([e for _, e, _, _ in seen.log[5:]], ["tick"])


class Sink(Protocol):
    pass


class WireTests(unittest.TestCase):
    def shaped(self) -> tuple[ShapedTransport, StringTransport, Clock]:
        clock = Clock()
        factory = ShapingFactory(None, clock)
        below = StringTransport()
        transport = ShapedTransport(factory, Sink())
        transport.makeConnection(below)
        return transport, below, clock

    def test_straight_through_by_default(self) -> None:
        transport, below, _ = self.shaped()
        transport.write(b"abc")
        self.assertEqual(below.value(), b"abc")

    def test_delay_keeps_order_and_each_write_leaves_late(self) -> None:
        transport, below, clock = self.shaped()
        transport.reshape(delay=0.3)
        transport.write(b"a")
        clock.advance(0.1)
        transport.write(b"b")
        transport.reshape(delay=0.0)
        transport.write(b"c")  # behind held ones: waits its turn
        clock.advance(0.19)
        self.assertEqual(below.value(), b"")
        clock.advance(0.01)
        self.assertEqual(below.value(), b"a")
        clock.advance(0.1)
        self.assertEqual(below.value(), b"abc")
        transport.write(b"d")
        self.assertEqual(below.value(), b"abcd")

    def test_stall_then_everything_at_once(self) -> None:
        transport, below, clock = self.shaped()
        transport.reshape(stall_until=2.0)
        transport.write(b"1")
        clock.advance(1)
        transport.write(b"2")
        transport.loseConnection()  # the close waits for the held bytes
        self.assertFalse(below.disconnecting)
        clock.advance(0.99)
        self.assertEqual(below.value(), b"")
        clock.advance(0.01)
        self.assertEqual(below.value(), b"12")
        self.assertTrue(below.disconnecting)

    def test_clear_releases_at_once_and_abort_drops(self) -> None:
        transport, below, clock = self.shaped()
        transport.reshape(stall_until=100.0)
        transport.write(b"x")
        transport.reshape(delay=0.0, stall_until=0.0)
        clock.advance(0)
        self.assertEqual(below.value(), b"x")
        transport.reshape(stall_until=100.0)
        transport.write(b"y")
        transport.abortConnection()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(below.value(), b"x")

    def test_too_much_held_aborts_the_connection(self) -> None:
        transport, below, clock = self.shaped()
        transport.factory.max_held = 10
        transport.reshape(stall_until=100.0)
        transport.write(b"12345")
        transport.write(b"67890")
        self.assertFalse(below.disconnected)
        transport.write(b"x")
        self.assertTrue(below.disconnected)
        self.assertEqual((below.value(), clock.getDelayedCalls()), (b"", []))


class PruneTests(unittest.TestCase):
    def test_rooms_of_expired_sessions_are_forgotten(self) -> None:
        rules, seen, _clock = engine({"events": [{"on": "join r", "room": "r", "event": "e"}]})
        for i in range(300):
            seen.sessions.add(f"s{i}")
            rules.connected(f"s{i}", None, frozenset({"r"}))
            seen.sessions.discard(f"s{i}")  # expired at once
        self.assertLess(len(rules._joined), 256)
