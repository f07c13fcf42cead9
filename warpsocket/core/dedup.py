"""The server's memory of acknowledged client messages (protocol.md section 6)."""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from warpsocket.protocol.compact import CompactData
from warpsocket.protocol.envelope import Envelope, MessageType, is_plain_reply


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

# A record as the window keeps it: ``(created_ms, reply)`` with the reply
# envelope (None while the first copy is being handled) or, for a plain ack
# or result, ``(created_ms, type, id, timestamp, ref, encoded, data)``: its
# fields, strings, numbers and bytes only. The collector stops tracking a
# tuple of such atoms the first time it sees it; an envelope (and a result's
# ``CompactData``) it visits at every full collection for as long as the
# window keeps it: with a full window of 100,000 records, that was most of
# what an acknowledged message cost it.
_Entry = tuple[Any, ...]
# The types kept flat, with their wire names (``.value`` is a slower property).
_FLAT_TYPES = {kind: kind.value for kind in (MessageType.ACK, MessageType.RESULT)}
_ATOMS = (str, int, float, bool, type(None))


def _entry(created_ms: int, reply: Envelope) -> _Entry:
    data = reply.data
    if type(data) is CompactData:
        encoded, data = True, data.json
    elif type(data) in _ATOMS:
        encoded = False
    else:
        return (created_ms, reply)  # (a result of containers: kept as it is)
    name = _FLAT_TYPES.get(reply.type)
    if name is None or not is_plain_reply(reply) or reply.extra:
        return (created_ms, reply)
    return (created_ms, name, reply.id, reply.timestamp, reply.ref, encoded, data)


def _record(entry: _Entry) -> DedupRecord:
    if len(entry) == 2:
        return DedupRecord(entry[0], entry[1])
    created_ms, kind, ident, timestamp, ref, encoded, data = entry
    value = CompactData(data) if encoded else data
    return DedupRecord(created_ms, Envelope(MessageType(kind), ident, timestamp, value, ref=ref))


# Records per shard: at least this many and fewer than twice as many (a
# window of fewer than twice this many records is one dict). A dict's
# resize copies its whole table in one step, whether it grows or packs the
# slots its deletions left, and a window that forgets one record per new
# one packs itself every few times its size (2.5 at 100,000). At 100,000
# records in one ``OrderedDict`` that stopped every connection of the node
# for 12-18 ms every 250,000 acknowledged messages (bench/dedup_window.py,
# bench/inprocess.py --stalls); 16 shards of 6,250 records stall 1-3 ms,
# no longer than the collector's young collections. Fewer shards stall
# longer (they fill, and pack, together); more cost each message a little
# more.
SHARD_RECORDS = 4096


class DedupWindow:
    """Bounded by count and age; the oldest records are forgotten first.

    The records are split over shards by their key's hash (a power of two of
    them, see ``SHARD_RECORDS``), each an insertion-ordered dict of at most
    ``max_records // shards`` records: the count bound forgets the oldest
    record of the shard a new one joins, which, keys being spread evenly, is
    within a few hundredths of the oldest overall. A window of fewer than
    ``2 * SHARD_RECORDS`` records is one shard, exactly oldest first. A
    record is stamped no earlier than the one before it: after the clock
    goes back, the age bound counts from the time it went back from.

    Records are kept as tuples (see ``_entry``); ``lookup`` hands out a
    ``DedupRecord``.
    """

    def __init__(self, limits: DedupLimits) -> None:
        self.limits = limits
        self._max_age_ms = limits.max_age_ms
        count = 1
        while count * 2 * SHARD_RECORDS <= limits.max_records:
            count *= 2
        # The shard of a key: its hash & mask. The hash is of the whole key,
        # so one id sent by many sessions (clients that count their ids) is
        # spread like any other, and string hashes are salted per process
        # (unless PYTHONHASHSEED is set), so no client can aim at one shard.
        self._mask = count - 1
        self._shard_records = limits.max_records // count
        self._shards: list[OrderedDict[DedupKey, _Entry]] = [OrderedDict() for _ in range(count)]
        # Per shard, at most its first record's ``created_ms`` (inf: none):
        # ``lookup``, called for every tracked message, looks at a shard's
        # records only when its first may be due, as it would find out by looking.
        self._oldest_ms: list[float] = [math.inf] * count
        # The latest ``created_ms`` given: a record is never stamped earlier
        # than the one before it (a clock that went back stamps them with
        # the time it went back from), so each shard's records are in order
        # of age and whatever leaves a shard leaves its hint a lower bound.
        self._stamp_ms = -math.inf

    def __len__(self) -> int:
        return sum(len(shard) for shard in self._shards)

    def lookup(self, key: DedupKey, now_ms: int) -> DedupRecord | None:
        index = hash(key) & self._mask
        if self._oldest_ms[index] < now_ms - self._max_age_ms:
            self._trim_shard(index, now_ms)
        entry = self._shards[index].get(key)
        return None if entry is None else _record(entry)

    def begin(self, key: DedupKey, now_ms: int) -> None:
        """Record that ``key`` is being handled; the caller checked lookup first."""
        if now_ms < self._stamp_ms:
            now_ms = int(self._stamp_ms)
        else:
            self._stamp_ms = now_ms
        index = hash(key) & self._mask
        records = self._shards[index]
        records[key] = (now_ms, None)
        if now_ms < self._oldest_ms[index]:
            self._oldest_ms[index] = now_ms  # (the first record)
        if len(records) > self._shard_records:
            # The next is no older than this one: its time is the hint, which
            # saves reading the next (far away in memory) on every message.
            self._oldest_ms[index] = records.popitem(last=False)[1][0]

    def settle(self, key: DedupKey, reply: Envelope) -> None:
        records = self._shards[hash(key) & self._mask]
        entry = records.get(key)
        if entry is not None:
            records[key] = _entry(entry[0], reply)  # (in place: the order stays)

    def forget(self, key: DedupKey) -> None:
        # (The hint stays a lower bound: the rest are no older than the first.)
        self._shards[hash(key) & self._mask].pop(key, None)

    def trim(self, now_ms: int) -> None:
        """Forget every record older than the age bound (``lookup`` does this
        for the shard it looks in)."""
        horizon = now_ms - self._max_age_ms
        for index, oldest_ms in enumerate(self._oldest_ms):
            if oldest_ms < horizon:
                self._trim_shard(index, now_ms)

    def _trim_shard(self, index: int, now_ms: int) -> None:
        horizon = now_ms - self._max_age_ms
        records = self._shards[index]
        while records:
            created = next(iter(records.values()))[0]
            if created >= horizon:
                self._oldest_ms[index] = created
                return
            records.popitem(last=False)
        self._oldest_ms[index] = math.inf
