"""Replay protection for signed envelopes: a timestamp window and the ids
seen within it, in bounded memory (protocol.md "Extension: signatures")."""

from __future__ import annotations

import heapq

from warpsocket.protocol.codes import ErrorCode

DEFAULT_WINDOW_MS = 300_000
DEFAULT_MAX_ENTRIES = 100_000


class ReplayGuard:
    """Refuses an envelope whose timestamp is outside ``now +- window_ms``
    (``STALE``) or whose (key id, id, timestamp) it saw already (``REPLAYED``).

    An entry is kept until its timestamp leaves the window: a replay of it
    after that is stale. Past ``max_entries`` the oldest entry is dropped and
    the window's lower edge moves up over it, so what is forgotten is stale
    rather than accepted again: memory is bounded, and no replay gets through.
    """

    def __init__(
        self, window_ms: int = DEFAULT_WINDOW_MS, max_entries: int = DEFAULT_MAX_ENTRIES
    ) -> None:
        if window_ms <= 0 or max_entries < 1:
            raise ValueError("window_ms and max_entries must be positive")
        self.window_ms = window_ms
        self.max_entries = max_entries
        self._seen: set[tuple[str, str, int]] = set()
        self._by_time: list[tuple[int, tuple[str, str, int]]] = []
        self._floor = -1  # timestamps <= this can no longer be judged

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, kid: str, ident: str, timestamp: int, now_ms: int) -> ErrorCode | None:
        """None and remember it; or the code to refuse it with."""
        self._expire(now_ms)
        if abs(timestamp - now_ms) > self.window_ms or timestamp <= self._floor:
            return ErrorCode.STALE
        entry = (kid, ident, timestamp)
        if entry in self._seen:
            return ErrorCode.REPLAYED
        self._seen.add(entry)
        heapq.heappush(self._by_time, (timestamp, entry))
        while len(self._seen) > self.max_entries:
            oldest, dropped = heapq.heappop(self._by_time)
            self._seen.discard(dropped)
            self._floor = max(self._floor, oldest)
        return None

    def _expire(self, now_ms: int) -> None:
        edge = now_ms - self.window_ms
        by_time = self._by_time
        while by_time and by_time[0][0] < edge:
            _, entry = heapq.heappop(by_time)
            self._seen.discard(entry)
