"""The last envelopes of the connections being inspected (a ring buffer each).

Only connections someone inspects are recorded: ``watch`` starts it, and a
connection nobody has looked at for ``WATCH_SECONDS`` is dropped. Envelopes
are kept as safe wire mappings (secrets masked, payloads cut: redact.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from warpsocket.protocol.envelope import Envelope
from warpsocket.server.observe.redact import safe_wire

# Envelopes kept per inspected connection, and how long a watch lasts unread.
RING_SIZE = 50
WATCH_SECONDS = 60.0
MAX_WATCHED = 16


class EnvelopeTap:
    def __init__(self, seconds: Callable[[], float], size: int = RING_SIZE) -> None:
        self._seconds = seconds
        self.size = size
        # Connection id -> (recent envelopes, last time the inspector read them).
        self.watched: dict[Any, tuple[deque[dict[str, Any]], list[float]]] = {}

    def watch(self, conn_id: Any) -> list[dict[str, Any]]:
        """Start (or keep) recording ``conn_id``; returns what was recorded."""
        now = self._seconds()
        for stale in [c for c, (_, seen) in self.watched.items() if now - seen[0] > WATCH_SECONDS]:
            del self.watched[stale]
        entry = self.watched.get(conn_id)
        if entry is None:
            if len(self.watched) >= MAX_WATCHED:
                oldest = min(self.watched, key=lambda c: self.watched[c][1][0])
                del self.watched[oldest]
            entry = self.watched[conn_id] = (deque(maxlen=self.size), [now])
        entry[1][0] = now
        return list(entry[0])

    def _record(self, conn_id: Any, direction: str, envelope: Envelope) -> None:
        entry = self.watched.get(conn_id)
        if entry is not None:
            entry[0].append(
                {"dir": direction, "at": round(self._seconds(), 3), "envelope": safe_wire(envelope)}
            )

    def inbound(self, conn_id: Any, envelope: Envelope) -> None:
        if self.watched:
            self._record(conn_id, "in", envelope)

    def outbound(self, conn_ids: Iterable[Any], envelope: Envelope) -> None:
        watched = self.watched
        if not watched:
            return
        targets = conn_ids if isinstance(conn_ids, (set, frozenset)) else set(conn_ids)
        for conn_id in watched:
            if conn_id in targets:
                self._record(conn_id, "out", envelope)


__all__ = ["MAX_WATCHED", "RING_SIZE", "WATCH_SECONDS", "EnvelopeTap"]
