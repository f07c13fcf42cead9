"""The server's memory of acknowledged client messages (protocol.md section 6)."""

from __future__ import annotations

import math
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
        # At most the first record's ``created_ms`` (inf: none): ``trim``,
        # called for every tracked message, looks at the records only when
        # the first may be due, as it would find out by looking.
        self._oldest_ms: float = math.inf

    def __len__(self) -> int:
        return len(self._records)

    def lookup(self, key: DedupKey, now_ms: int) -> DedupRecord | None:
        self.trim(now_ms)
        return self._records.get(key)

    def begin(self, key: DedupKey, now_ms: int) -> DedupRecord:
        """Record that ``key`` is being handled; the caller checked lookup first."""
        record = DedupRecord(now_ms)
        records = self._records
        records[key] = record
        if now_ms < self._oldest_ms:
            self._oldest_ms = now_ms  # (the first record)
        while len(records) > self.limits.max_records:
            records.popitem(last=False)
            self._oldest_ms = -math.inf  # another one is first: look next time
        return record

    def settle(self, key: DedupKey, reply: Envelope) -> None:
        record = self._records.get(key)
        if record is not None:
            record.reply = reply

    def forget(self, key: DedupKey) -> None:
        self._records.pop(key, None)
        self._oldest_ms = -math.inf

    def trim(self, now_ms: int) -> None:
        horizon = now_ms - self.limits.max_age_ms
        if self._oldest_ms >= horizon:
            return
        records = self._records
        while records:
            created = next(iter(records.values())).created_ms
            if created >= horizon:
                self._oldest_ms = created
                return
            records.popitem(last=False)
        self._oldest_ms = math.inf
