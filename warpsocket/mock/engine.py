"""When a scenario's rules fire: timers and triggers, on a clock, without I/O.

``ScenarioEngine`` schedules each rule of a ``Scenario`` when its trigger
happens (the start, a session's welcome, its join of a room, a client
event), ``at`` seconds later and then ``every`` seconds (``count`` times),
and hands each firing to a ``Performer`` with the values its templates see.
The server (server.py) is the performer; the tests give a recording one and
a ``twisted.internet.task.Clock``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from warpsocket.mock.scenario import EventAction, FaultAction, Rule, Scenario

Values = Mapping[str, Any]


class Performer(Protocol):
    def emit(self, action: EventAction, values: Values, session: str | None) -> object:
        """Send one event (its data rendered with ``values``)."""

    def fault(self, action: FaultAction, session: str | None) -> object:
        """Inject a fault into one session's connection, or into all (None)."""

    def alive(self, session: str) -> bool:
        """Whether the session still exists (its repeating rules stop when not)."""


class ScenarioEngine:
    log = Logger()

    def __init__(self, scenario: Scenario, clock: IReactorTime, performer: Performer) -> None:
        self.scenario = scenario
        self.clock = clock
        self.performer = performer
        self.fired: dict[str, int] = {}  # rule path -> firings ({{seq}})
        self._acted: dict[str, int] = {}  # rule path -> triggers acted on (``times``)
        self._calls: dict[IDelayedCall, str | None] = {}
        self._joined: dict[str, set[str]] = {}  # session -> rooms whose join fired
        self._prune_at = 256

    # ------------------------------------------------------------ triggers

    def start(self) -> None:
        for rule in self.scenario.rules:
            if rule.trigger.kind == "start":
                self._trigger(rule, None, {})

    def stop(self) -> None:
        for call in list(self._calls):
            if call.active():
                call.cancel()
        self._calls.clear()

    def forget_sessions(self) -> None:
        """Every session is gone (a restart): their pending firings with them."""
        for call, session in list(self._calls.items()):
            if session is not None:
                del self._calls[call]
                if call.active():
                    call.cancel()
        self._joined.clear()

    def connected(self, session: str, user: str | None, rooms: frozenset[str]) -> None:
        """A welcome into a session (new or resumed), which is in ``rooms``."""
        if len(self._joined) >= self._prune_at:
            # Sessions expire without telling: forget the rooms of the gone ones.
            for gone in [s for s in self._joined if not self.performer.alive(s)]:
                del self._joined[gone]
            self._prune_at = max(256, 2 * len(self._joined))
        for rule in self.scenario.rules:
            if rule.trigger.kind == "connect":
                self._trigger(rule, session, {"session": session, "user": user})
        self.rooms_now(session, user, rooms)

    def rooms_now(self, session: str, user: str | None, rooms: frozenset[str]) -> None:
        """The session is in ``rooms``: a join trigger fires once per room it entered."""
        known = self._joined.setdefault(session, set())
        for room in sorted(rooms - known):
            for rule in self.scenario.rules:
                if rule.trigger.kind == "join" and rule.trigger.name == room:
                    self._trigger(rule, session, {"session": session, "user": user, "room": room})
        known.intersection_update(rooms)
        known.update(rooms)

    def client_event(self, session: str, user: str | None, event: str, data: Any) -> None:
        for rule in self.scenario.rules:
            if rule.trigger.kind == "event" and rule.trigger.name == event:
                values = {"session": session, "user": user, "event": event, "data": data}
                self._trigger(rule, session, values)

    def session_gone(self, session: str) -> None:
        self._joined.pop(session, None)

    # ------------------------------------------------------------ timing

    def _trigger(self, rule: Rule, session: str | None, values: dict[str, Any]) -> None:
        times = rule.timing.times
        acted = self._acted.get(rule.path, 0)
        if times is not None and acted >= times:
            return
        self._acted[rule.path] = acted + 1
        remaining = rule.timing.count if rule.timing.every is not None else 1
        self._schedule(rule.timing.at, rule, session, values, remaining)

    def _schedule(
        self,
        delay: float,
        rule: Rule,
        session: str | None,
        values: dict[str, Any],
        remaining: int | None,
    ) -> None:
        holder: list[IDelayedCall] = []

        def fire() -> None:
            self._calls.pop(holder[0], None)
            self._fire(rule, session, values, remaining)

        call = self.clock.callLater(delay, fire)
        holder.append(call)
        self._calls[call] = session

    def _fire(
        self, rule: Rule, session: str | None, values: dict[str, Any], remaining: int | None
    ) -> None:
        if session is not None and not self.performer.alive(session):
            return
        seq = self.fired.get(rule.path, 0) + 1
        self.fired[rule.path] = seq
        action = rule.action
        try:
            if isinstance(action, EventAction):
                now = int(self.clock.seconds() * 1000)
                self.performer.emit(action, {**values, "seq": seq, "now": now}, session)
            else:
                self.performer.fault(action, session)
        except Exception:
            self.log.failure("scenario rule {path} failed", path=rule.path)
        every = rule.timing.every
        if every is not None and (remaining is None or remaining > 1):
            self._schedule(
                every, rule, session, values, None if remaining is None else remaining - 1
            )
