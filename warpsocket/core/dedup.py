"""The server's memory of acknowledged client messages (protocol.md section 6)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from warpsocket.protocol.envelope import Envelope


@dataclass(frozen=True, slots=True)
class DedupLimits:
    """How long the server remembers acknowledged client message ids
    (``CoreOptions.dedup``), so that a retry is answered, not handled again.

    ``max_records`` ids per node at most and none older than ``max_age_ms``;
    a retry that arrives later than that is handled as a new message.
    """

    max_records: int = 100_000
    max_age_ms: int = 300_000

    def __post_init__(self) -> None:
        if self.max_records < 1 or self.max_age_ms < 1:
            raise ValueError("dedup limits must be positive")


@dataclass(slots=True)
class DedupRecord:
    created_ms: int
    reply: Envelope | None = None  # None while the first copy is being handled


DedupKey = tuple[str, str]  # (principal, message id)


class DedupWindow:
    """Bounded by count and age; the oldest records are forgotten first."""

    def __init__(self, limits: DedupLimits) -> None:
        self.limits = limits
        self._records: OrderedDict[DedupKey, DedupRecord] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def lookup(self, key: DedupKey, now_ms: int) -> DedupRecord | None:
        self.trim(now_ms)
        return self._records.get(key)

    def begin(self, key: DedupKey, now_ms: int) -> DedupRecord:
        """Record that ``key`` is being handled; the caller checked lookup first."""
        record = DedupRecord(now_ms)
        self._records[key] = record
        while len(self._records) > self.limits.max_records:
            self._records.popitem(last=False)
        return record

    def settle(self, key: DedupKey, reply: Envelope) -> None:
        record = self._records.get(key)
        if record is not None:
            record.reply = reply

    def forget(self, key: DedupKey) -> None:
        self._records.pop(key, None)

    def trim(self, now_ms: int) -> None:
        horizon = now_ms - self.limits.max_age_ms
        records = self._records
        while records:
            key, record = next(iter(records.items()))
            if record.created_ms >= horizon:
                break
            del records[key]
