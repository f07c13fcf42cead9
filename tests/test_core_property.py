"""Property tests: one ClientCore and one ServerCore over a simulated, faulty link.

Frames travel through per-direction FIFO queues (encoded with the JSON codec,
so every frame the cores produce is also checked against the wire rules).
Hypothesis draws a schedule that interleaves publishes, client sends and
calls, partial delivery, duplicated frames, dropped connections, reconnects
and time. At the end the link heals and the guarantees of docs/protocol.md
section 12 are checked:

- per stream, the client application sees offsets strictly consecutive within
  each epoch segment; in the main property every published message exactly
  once and in order, in the lossy property every missing message covered by
  a ``StreamLost`` (``recovered: false``);
- the server handler ran exactly once per acked client message or call, and
  the client got exactly one ``Outcome`` per message, matching the server's
  decision (lossy: or ``expired`` when the deadline passed first);
- every acknowledged direct send got exactly one ``AckResult`` and its
  Deferred fired once, the same way (main: success).

The server side is exactly what the hub runs: the core, and the hub's
``Outbox`` (server/outbox.py) over a ``MemoryBackend`` for every publish,
direct send and client room event, with the actions performed as the hub's
``ActionRunner`` would, onto the simulated link.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, cast

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial import unittest

from warpsocket.backends.memory import MemoryBackend
from warpsocket.core.client import (
    ClientAction,
    ClientCore,
    ClientCoreOptions,
    Deliver,
    Outcome,
    Reconnect,
    Status,
    StreamLost,
    Transmit,
    Welcomed,
)
from warpsocket.core.dedup import DedupLimits
from warpsocket.core.history import HistoryLimits
from warpsocket.core.ids import SequentialIds
from warpsocket.core.keys import BROADCAST, direct_key, room_key
from warpsocket.core.server import (
    AckResult,
    Action,
    Close,
    CoreOptions,
    Dispatch,
    Fanout,
    Publish,
    Send,
    ServerCore,
    UnknownSessionError,
)
from warpsocket.core.store import MemoryStreamStore
from warpsocket.protocol import Envelope, ErrorCode, JsonCodec, MessageType
from warpsocket.server.metrics import HubMetrics
from warpsocket.server.outbox import AckTimeoutError, Outbox

ROOMS = ("a", "b")
START_MS = 1_764_300_000_000

Step = tuple[str, int, int]
Position = tuple[str, int]  # (epoch, offset)


class RecordingStore(MemoryStreamStore):
    """A MemoryStreamStore that remembers every append, per internal key, in order."""

    def __init__(self, limits: HistoryLimits) -> None:
        super().__init__(limits, SequentialIds("epoch"))
        self.appended: dict[str, list[Position]] = defaultdict(list)

    def append(self, key: str, template: Envelope, now_ms: int) -> Envelope:
        stored = super().append(key, template, now_ms)
        assert stored.epoch is not None and stored.offset is not None
        self.appended[key].append((stored.epoch, stored.offset))
        return stored


@dataclass(frozen=True)
class Config:
    server: CoreOptions
    client: ClientCoreOptions
    lossy: bool


def allow_all(*_: object) -> bool:
    return True


class World:
    """The simulated link, both applications and everything they observed."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.now = START_MS
        self.codec = JsonCodec()
        self.store = RecordingStore(config.server.history)
        self.server = ServerCore(
            self.store,
            config.server,
            SequentialIds("srv"),
            SequentialIds("sess"),
            can_join=allow_all,
            can_publish=allow_all,
        )
        # The hub's send and publish path, over the backend the hub uses by default.
        self.outbox = Outbox(
            self.server,
            MemoryBackend(store=self.store),
            run=self.server_actions,
            now_ms=lambda: self.now,
            clock=Clock(),
            metrics=HubMetrics(),
        )
        self.client = ClientCore(config.client, SequentialIds("cli"))
        for room in ROOMS:
            assert self.client.subscribe(room, self.now) == []  # offline: hello asks
        self.conn: int | None = None
        self.conn_ids = iter(range(1, 1_000_000))
        self.to_server: list[bytes] = []
        self.to_client: list[bytes] = []
        self.counter = 0
        # What the client application saw: per wire stream, delivered
        # positions and ``None`` for every StreamLost.
        self.log: dict[str, list[Position | None]] = defaultdict(list)
        self.sessions: list[str] = []  # sessions the client was welcomed into, in order
        self.starts: dict[str, Position] = {}  # stream / direct key -> first welcome position
        self.sent: dict[str, str] = {}  # tracked client message id -> "ok" | "bad" | "call"
        self.handled: Counter[str] = Counter()
        self.decisions: dict[str, tuple[Status, int | None, Any]] = {}
        self.outcomes: dict[str, list[Outcome]] = defaultdict(list)
        self.direct_acked: list[tuple[str, int]] = []
        self.ack_results: dict[tuple[str, int], list[ErrorCode | None]] = defaultdict(list)
        # How each acked send's Deferred (what the application holds) ended.
        self.ack_outcomes: dict[tuple[str, int], list[ErrorCode | None]] = defaultdict(list)
        self.reconnects: list[Reconnect] = []
        self.closes: list[ErrorCode] = []

    # ------------------------------------------------------------ the link

    def connect(self) -> None:
        if self.conn is not None:
            return
        self.conn = next(self.conn_ids)
        self.server.open(self.conn, self.now)
        self.client_actions(self.client.connected(self.now))

    def drop(self) -> None:
        """The connection is lost: both queues with it."""
        if self.conn is None:
            return
        conn, self.conn = self.conn, None
        self.to_server.clear()
        self.to_client.clear()
        self.server.close(conn, self.now)
        self.client_actions(self.client.disconnected(self.now))

    def deliver_to_server(self, count: int) -> None:
        for _ in range(count):
            if self.conn is None or not self.to_server:
                return
            envelope = self.codec.decode(self.to_server.pop(0), False)
            self.server_actions(self.server.receive(self.conn, envelope, self.now))

    def deliver_to_client(self, count: int) -> None:
        for _ in range(count):
            if self.conn is None or not self.to_client:
                return
            envelope = self.codec.decode(self.to_client.pop(0), False)
            self.client_actions(self.client.receive(envelope, self.now))

    @staticmethod
    def duplicate(queue: list[bytes], which: int, where: int) -> None:
        """Copy one frame in flight to a later place in the same queue."""
        if not queue:
            return
        index = which % len(queue)
        later = index + 1 + where % (len(queue) - index)
        queue.insert(later, queue[index])

    def advance(self, ms: int) -> None:
        self.now += ms
        self.server_actions(self.server.tick(self.now))
        self.client_actions(self.client.tick(self.now))

    # ------------------------------------------------------------ the server side

    def server_actions(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                if action.conn == self.conn:
                    self.to_client.append(self.codec.encode(action.envelope))
            elif isinstance(action, Fanout):
                if self.conn in action.conns:
                    self.to_client.append(self.codec.encode(action.envelope))
            elif isinstance(action, Close):
                self.closes.append(action.code)
                if action.conn == self.conn:
                    self.drop()
            elif isinstance(action, Dispatch):
                self.handle(action.session, action.envelope)
            elif isinstance(action, AckResult):
                self.ack_results[(action.session, action.offset)].append(action.code)
                self.outbox.ack_result(action)
            elif isinstance(action, Publish):
                self.outbox.perform(action)

    def handle(self, session: str, envelope: Envelope) -> None:
        """The server application: settles every message at once."""
        tracked = envelope.ack or envelope.type is MessageType.CALL
        if tracked:
            self.handled[envelope.id] += 1
        decision: tuple[Status, int | None, Any]
        if envelope.event == "bad":
            decision = (Status.REJECTED, int(ErrorCode.HANDLER_ERROR), None)
            actions = self.server.settle(
                session, envelope, self.now, error=(ErrorCode.HANDLER_ERROR, "refused")
            )
        elif envelope.type is MessageType.CALL:
            decision = (Status.RESULT, None, {"echo": envelope.data})
            actions = self.server.settle(session, envelope, self.now, result=decision[2])
        else:
            decision = (Status.ACKED, None, None)
            actions = self.server.settle(session, envelope, self.now)
        if tracked:
            self.decisions.setdefault(envelope.id, decision)
        self.server_actions(actions)

    def publish(self, key: str) -> None:
        self.counter += 1
        self.outbox.publish(key, "news", {"n": self.counter}, None)

    def send_direct(self, ack: bool) -> None:
        session = self.client.session
        if session is None:
            return  # the client knows no session yet: nobody to send to
        self.counter += 1
        try:
            sent = self.outbox.send(session, "note", {"n": self.counter}, ack=ack)
        except UnknownSessionError:
            return  # expired (lossy property only)
        if ack:
            # The memory backend appended it synchronously: its offset is the last one.
            key = (session, self.store.appended[direct_key(session)][-1][1])
            self.direct_acked.append(key)

            def ended(result: Failure | None) -> None:
                code = None
                if isinstance(result, Failure):
                    result.trap(AckTimeoutError)
                    code = cast(AckTimeoutError, result.value).code
                self.ack_outcomes[key].append(code)

            sent.addBoth(ended)

    # ------------------------------------------------------------ the client side

    def client_actions(self, actions: list[ClientAction]) -> None:
        for action in actions:
            if isinstance(action, Transmit):
                if self.conn is not None:
                    self.to_server.append(self.codec.encode(action.envelope))
            elif isinstance(action, Deliver):
                event = action.envelope
                assert event.stream is not None and event.epoch is not None
                assert event.offset is not None
                self.log[event.stream].append((event.epoch, event.offset))
                if event.ack:
                    self.client_actions(self.client.acknowledge(event, self.now))
            elif isinstance(action, StreamLost):
                self.log[action.stream].append(None)
            elif isinstance(action, Outcome):
                self.outcomes[action.id].append(action)
            elif isinstance(action, Welcomed):
                self.welcomed(action)
            elif isinstance(action, Reconnect):
                self.reconnects.append(action)
                self.drop()

    def welcomed(self, action: Welcomed) -> None:
        if not self.sessions or self.sessions[-1] != action.session:
            self.sessions.append(action.session)
        for name, info in action.data["streams"].items():
            key = "direct:" + action.session if name == "direct" else name
            self.starts.setdefault(key, (info["epoch"], info["offset"]))

    def send(self, kind: str) -> None:
        self.counter += 1
        if kind == "call":
            ident, actions = self.client.call("echo", [self.counter], self.now)
        elif kind == "fire":
            ident, actions = self.client.send("fire", self.counter, self.now)
        elif kind == "room":
            ident, actions = self.client.send("say", self.counter, self.now, ack=True, room="a")
        else:
            ident, actions = self.client.send(kind, self.counter, self.now, ack=True)
        if kind != "fire":
            self.sent[ident] = kind
        self.client_actions(actions)

    # ------------------------------------------------------------ running

    def run(self, step: Step) -> None:
        name, a, b = step
        if name == "room":
            self.publish(room_key(ROOMS[a % len(ROOMS)]))
        elif name == "broadcast":
            self.publish(BROADCAST)
        elif name == "direct":
            self.send_direct(ack=bool(a % 2))
        elif name == "send":
            self.send(("ok", "bad", "call", "fire", "room")[a % 5])
        elif name == "to_server":
            self.deliver_to_server(a)
        elif name == "to_client":
            self.deliver_to_client(a)
        elif name == "dup_server":
            self.duplicate(self.to_server, a, b)
        elif name == "dup_client":
            self.duplicate(self.to_client, a, b)
        elif name == "drop":
            self.drop()
        elif name == "connect":
            self.connect()
        elif name == "advance":
            self.advance(a)
        else:
            raise AssertionError(f"unknown step {name}")

    def quiesce(self) -> None:
        """Connect if needed and deliver everything until nothing moves."""
        for _ in range(2_000):
            if len(self.reconnects) > 20:
                raise AssertionError(f"reconnect loop: {self.reconnects[-1]}")
            if self.conn is None:
                self.connect()
            elif self.to_server:
                self.deliver_to_server(len(self.to_server))
            elif self.to_client:
                self.deliver_to_client(len(self.to_client))
            else:
                assert self.client.open, "quiescent but not welcomed"
                return
        raise AssertionError("the link never went quiet")

    def heal(self, ticks: int, tick_ms: int) -> None:
        self.quiesce()
        for _ in range(ticks):
            self.advance(tick_ms)
            self.quiesce()

    # ------------------------------------------------------------ expectations

    def expected(self) -> dict[str, list[Position]]:
        """Per wire stream, what the client should see after its first welcome on it."""
        keys = ["broadcast", *("room:" + r for r in ROOMS)]
        result: dict[str, list[Position]] = {}
        for key in keys:
            result[key] = self._after_start(key)
        result["direct"] = [p for s in self.sessions for p in self._after_start("direct:" + s)]
        return result

    def _after_start(self, key: str) -> list[Position]:
        start = self.starts.get(key)
        published = self.store.appended.get(key, [])
        if start is None:
            return []
        epoch, offset = start
        return [p for p in published if p[0] == epoch and p[1] > offset]

    def check_streams(self, test: unittest.SynchronousTestCase) -> None:
        test.assertEqual(self.reconnects, [], "a correct server never makes a gap")
        test.assertNotIn(ErrorCode.SESSION_REPLACED, self.closes)
        expected = self.expected()
        for stream in set(self.log) | set(expected):
            log = self.log.get(stream, [])
            want = expected.get(stream, [])
            check_segments(test, stream, log)
            if not self.config.lossy:
                test.assertNotIn(None, log, f"{stream}: StreamLost in the main property")
                test.assertEqual(log, want, f"{stream}: not every message exactly once in order")
            else:
                check_covered(test, stream, log, want)

    def check_client_messages(self, test: unittest.SynchronousTestCase) -> None:
        for ident, kind in self.sent.items():
            outcomes = self.outcomes.get(ident, [])
            test.assertEqual(len(outcomes), 1, f"{kind} {ident}: outcomes {outcomes}")
            outcome = outcomes[0]
            handled = self.handled[ident]
            if self.config.lossy and outcome.status is Status.EXPIRED:
                if outcome.code == ErrorCode.EXPIRED:
                    # The server refused a copy past its stamped ttl: never handled.
                    test.assertEqual(handled, 0, f"{kind} {ident} handled {handled} times")
                    continue
                # The deadline passed before an answer: handled at most once.
                test.assertEqual(outcome.code, int(ErrorCode.TIMEOUT))
                test.assertLessEqual(handled, 1, f"{kind} {ident} handled {handled} times")
                continue
            if kind == "room":
                # Published by the server core itself (no Dispatch): acked.
                test.assertEqual((outcome.status, outcome.code), (Status.ACKED, None))
                continue
            test.assertEqual(handled, 1, f"{kind} {ident} handled {handled} times")
            status, code, data = self.decisions[ident]
            test.assertEqual((outcome.status, outcome.code), (status, code), f"{kind} {ident}")
            if status is Status.RESULT:
                test.assertEqual(outcome.data, data)
        test.assertEqual(set(self.outcomes), set(self.sent), "outcomes for unknown messages")

    def check_direct_acks(self, test: unittest.SynchronousTestCase) -> None:
        for key in self.direct_acked:
            results = self.ack_results.get(key, [])
            test.assertEqual(len(results), 1, f"direct {key}: AckResults {results}")
            if self.config.lossy:
                test.assertIn(results[0], (None, ErrorCode.TIMEOUT))
            else:
                test.assertIsNone(results[0], f"direct {key} failed: {results[0]}")
        test.assertEqual(set(self.ack_results), set(self.direct_acked))
        test.assertEqual(self.ack_outcomes, self.ack_results, "Deferreds disagree with AckResults")


def check_segments(
    test: unittest.SynchronousTestCase, stream: str, log: list[Position | None]
) -> None:
    """Within an epoch segment (no StreamLost in between) offsets go up by exactly 1."""
    previous: Position | None = None
    lost = False
    for item in log:
        if item is None:
            lost = True
            continue
        if previous is not None:
            if item[0] != previous[0]:
                test.assertTrue(lost, f"{stream}: epoch changed without StreamLost")
            elif lost:
                test.assertGreater(item[1], previous[1], f"{stream}: went back after a loss")
            else:
                test.assertEqual(item[1], previous[1] + 1, f"{stream}: {previous} -> {item}")
        previous, lost = item, False


def check_covered(
    test: unittest.SynchronousTestCase,
    stream: str,
    log: list[Position | None],
    want: list[Position],
) -> None:
    """Delivered is an in-order subsequence of ``want``; every hole has a StreamLost."""
    index = {position: i for i, position in enumerate(want)}
    last = -1
    lost = False
    for item in log:
        if item is None:
            lost = True
            continue
        test.assertIn(item, index, f"{stream}: delivered {item} that was never expected")
        here = index[item]
        test.assertGreater(here, last, f"{stream}: {item} duplicated or out of order")
        if here != last + 1:
            test.assertTrue(lost, f"{stream}: {want[last + 1 : here]} lost silently")
        last, lost = here, False
    if last != len(want) - 1:
        test.assertTrue(lost, f"{stream}: tail {want[last + 1 :]} lost silently")


# ---------------------------------------------------------------- strategies


def steps(max_advance: st.SearchStrategy[int], max_steps: int) -> st.SearchStrategy[list[Step]]:
    def step(name: str, a: st.SearchStrategy[int]) -> st.SearchStrategy[Step]:
        return st.tuples(st.just(name), a, st.integers(0, 7))

    small = st.integers(0, 7)
    deliver = st.integers(1, 6)
    return st.lists(
        st.one_of(
            step("room", small),
            step("broadcast", small),
            step("direct", small),
            step("send", small),
            step("send", small),
            step("to_server", deliver),
            step("to_server", deliver),
            step("to_client", deliver),
            step("to_client", deliver),
            step("dup_server", small),
            step("dup_client", small),
            step("drop", small),
            step("connect", small),
            step("connect", small),
            step("advance", max_advance),
        ),
        max_size=max_steps,
    )


# A run lasts at most 80 steps x 6 s + healing (< 500 s of simulated time):
# well inside every retention window, so everything must be recovered.
MAIN = Config(
    server=CoreOptions(
        node="n1",
        session_ttl_ms=600_000,
        ack_timeout_ms=600_000,
        history=HistoryLimits(max_age_ms=900_000),
        dedup=DedupLimits(max_age_ms=900_000),
    ),
    # Deadline beyond the whole run, and below the dedup age (protocol.md 6).
    client=ClientCoreOptions(ack_deadline_ms=600_000),
    lossy=False,
)


def lossy_config(max_messages: int, max_age_ms: int) -> Config:
    return Config(
        server=CoreOptions(
            node="n1",
            history=HistoryLimits(max_messages=max_messages, max_age_ms=max_age_ms),
            dedup=DedupLimits(max_age_ms=300_000),
        ),
        # The default deadline (60 s) is shorter than the session TTL (120 s):
        # a message is never retried on a new session (another principal).
        client=ClientCoreOptions(),
        lossy=True,
    )


def run_world(config: Config, schedule: list[Step], heal_ticks: int, heal_ms: int) -> World:
    world = World(config)
    world.connect()
    for step in schedule:
        world.run(step)
    world.heal(heal_ticks, heal_ms)
    return world


class LinkPropertyTests(unittest.SynchronousTestCase):
    @settings(
        max_examples=3000,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(schedule=steps(st.integers(1, 6_000), 80))
    def test_exactly_once_in_order(self, schedule: list[Step]) -> None:
        """Within the retention window nothing is lost, duplicated or reordered."""
        world = run_world(MAIN, schedule, heal_ticks=3, heal_ms=6_000)
        world.check_streams(self)
        world.check_client_messages(self)
        world.check_direct_acks(self)

    @settings(
        max_examples=2500,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        schedule=steps(st.one_of(st.integers(1, 3_000), st.integers(20_000, 150_000)), 80),
        max_messages=st.integers(1, 4),
        max_age_ms=st.sampled_from([2_000, 30_000, 300_000]),
    )
    def test_losses_are_reported(
        self, schedule: list[Step], max_messages: int, max_age_ms: int
    ) -> None:
        """Beyond the window every loss is reported; nothing is duplicated."""
        world = run_world(
            lossy_config(max_messages, max_age_ms), schedule, heal_ticks=8, heal_ms=10_000
        )
        world.check_streams(self)
        world.check_client_messages(self)
        world.check_direct_acks(self)
