"""Slow-message alerts: thresholds, and what happens when one is crossed.

Four kinds (docs/observability.md): ``handler`` (a handler ran longer than
its threshold), ``delivery`` (from a message's acceptance by the publishing
node to its write to this node's members), ``ack`` (an acknowledged send
still waits for the client's ack) and ``buffer`` (a connection's outbound
buffer has not drained for that long). Each crossing logs one structured
warning, counts in ``warpsocket_slow_total{kind}`` and calls the hooks given
to ``Hub.on_slow``. Times come from the hub's clock (``IReactorTime``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from warpsocket.protocol.envelope import Envelope

SLOW_KINDS = ("handler", "delivery", "ack", "buffer")


@dataclass(frozen=True)
class SlowThresholds:
    """Seconds past which a message counts as slow; None switches a kind off.

    - ``handler``: time in an application handler (sync or async).
    - ``delivery``: publish (the message's acceptance) to delivery on this node.
    - ``ack``: an acknowledged ``hub.send`` waiting for the client's ack.
    - ``buffer``: a connection's outbound buffer not drained (checked each tick).
    """

    handler: float | None = None
    delivery: float | None = None
    ack: float | None = None
    buffer: float | None = None

    def __post_init__(self) -> None:
        for kind in SLOW_KINDS:
            value = getattr(self, kind)
            if value is not None and not value > 0:
                raise ValueError(f"slow {kind} threshold must be a positive number of seconds")

    @property
    def any(self) -> bool:
        return any(getattr(self, kind) is not None for kind in SLOW_KINDS)


@dataclass(frozen=True)
class SlowEvent:
    """One crossing, as logged and handed to ``Hub.on_slow`` hooks."""

    kind: str
    seconds: float
    threshold: float
    message_id: str | None = None
    event: str | None = None
    stream: str | None = None
    offset: int | None = None
    session: str | None = None
    trace_id: str | None = None


SlowHook = Callable[[SlowEvent], Any]


# Module level: a Logger read through an instance takes the class's name instead.
_log = Logger(namespace="warpsocket.slow")


class SlowWatch:
    """Checks the thresholds and reports crossings (logged as ``warpsocket.slow``)."""

    log = _log

    def __init__(self, thresholds: SlowThresholds, clock: IReactorTime, counter: Any) -> None:
        self.thresholds = thresholds
        self.clock = clock
        self.counter = counter
        self.hooks: list[SlowHook] = []
        # Connection -> when its outbound buffer was first seen not empty.
        self._buffer_since: dict[object, float] = {}
        self._buffer_reported: set[object] = set()

    def report(self, slow: SlowEvent) -> None:
        self.counter.labels(slow.kind).inc()
        _log.warn(
            "slow {slow_kind}: {seconds:.3f}s over {threshold}s (message {message_id}, "
            "stream {stream}, offset {offset}, session {session})",
            slow_kind=slow.kind,
            seconds=slow.seconds,
            threshold=slow.threshold,
            message_id=slow.message_id,
            stream=slow.stream,
            offset=slow.offset,
            session=slow.session,
            trace_id=slow.trace_id,
        )
        for hook in list(self.hooks):
            try:
                hook(slow)
            except Exception:
                _log.failure("on_slow hook failed")

    # ------------------------------------------------------------ the kinds

    def handler(self, envelope: Envelope, session: str, seconds: float) -> None:
        threshold = self.thresholds.handler
        if threshold is not None and seconds > threshold:
            self.report(
                SlowEvent(
                    "handler",
                    seconds,
                    threshold,
                    envelope.id,
                    envelope.event or envelope.type.value,
                    session=session,
                    trace_id=_trace_id(envelope),
                )
            )

    def delivered(self, key: str, stored: Envelope) -> None:
        threshold = self.thresholds.delivery
        if threshold is None:
            return
        seconds = self.clock.seconds() - stored.timestamp / 1000
        if seconds > threshold:
            self.report(
                SlowEvent(
                    "delivery",
                    seconds,
                    threshold,
                    stored.id,
                    stored.event,
                    key,
                    stored.offset,
                    trace_id=_trace_id(stored),
                )
            )

    def ack_wait(self, session: str, stored: Envelope, waiter: Deferred[None]) -> None:
        """An acked send is stored: warn if its ack has not come ``ack`` seconds on."""
        threshold = self.thresholds.ack
        if threshold is None:
            return
        started = self.clock.seconds()

        def overdue() -> None:
            self.report(
                SlowEvent(
                    "ack",
                    self.clock.seconds() - started,
                    threshold,
                    stored.id,
                    stored.event,
                    stored.stream,
                    stored.offset,
                    session,
                    _trace_id(stored),
                )
            )

        call: IDelayedCall = self.clock.callLater(threshold, overdue)

        def settled(result: object) -> object:
            if call.active():
                call.cancel()
            return result

        waiter.addBoth(settled)

    def buffers(self, connections: dict[Any, Any]) -> None:
        """Each tick: connections whose outbound buffer has stayed non-empty."""
        threshold = self.thresholds.buffer
        if threshold is None:
            return
        now = self.clock.seconds()
        since = self._buffer_since
        for conn_id, connection in connections.items():
            pending = outbound_bytes(connection)
            if not pending:
                since.pop(conn_id, None)
                self._buffer_reported.discard(conn_id)
                continue
            first = since.setdefault(conn_id, now)
            if now - first > threshold and conn_id not in self._buffer_reported:
                self._buffer_reported.add(conn_id)
                self.report(
                    SlowEvent(
                        "buffer",
                        now - first,
                        threshold,
                        session=getattr(connection, "session", None),
                    )
                )
        for gone in [c for c in since if c not in connections]:
            del since[gone]
            self._buffer_reported.discard(gone)


def outbound_bytes(connection: Any) -> int | None:
    """Bytes a connection has not sent yet, when its transport can tell."""
    guard = getattr(connection, "outbound", None)
    meter = getattr(guard, "meter", None)
    if meter is None:
        return None
    try:
        return int(meter())
    except Exception:
        return None


def _trace_id(envelope: Envelope) -> str | None:
    return envelope.trace.trace_id if envelope.trace is not None else None


__all__ = ["SLOW_KINDS", "SlowEvent", "SlowHook", "SlowThresholds", "SlowWatch", "outbound_bytes"]
