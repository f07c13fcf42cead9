"""Bounded per-stream history with offsets and epochs (protocol.md section 5)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice

from warpsocket.protocol.codes import ErrorCode
from warpsocket.protocol.compact import CompactData, payload_size
from warpsocket.protocol.envelope import Envelope


@dataclass(frozen=True, slots=True)
class Position:
    """The last message of a stream that a reader has processed."""

    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class HistoryLimits:
    """How much of each stream is kept for replay. Every bound applies.

    ``max_bytes`` bounds one stream, ``max_node_bytes`` all of a node's
    in-memory streams together (oldest messages evicted first, whatever
    their stream). Sizes are payloads kept as compact JSON plus a fixed
    per-message overhead (``ENTRY_OVERHEAD``).
    """

    max_messages: int = 1000
    max_age_ms: int = 300_000
    max_bytes: int = 16 * 1024 * 1024
    max_node_bytes: int = 512 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        if self.max_age_ms < 1:
            raise ValueError("max_age_ms must be at least 1")
        if self.max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        if self.max_node_bytes < self.max_bytes:
            raise ValueError("max_node_bytes must be at least max_bytes")


# What one kept message costs beyond its payload: the envelope object, its id
# and event strings, the entry tuple and deque slots (bench/history_memory.py
# measures about 0.9 KiB of RSS per small stored message).
ENTRY_OVERHEAD = 1024


def entry_size(envelope: Envelope) -> int:
    """The bytes a kept message is charged against the history's bounds."""
    return (
        ENTRY_OVERHEAD
        + payload_size(envelope.data)
        + len(envelope.id)
        + (len(envelope.event) if envelope.event is not None else 0)
    )


def compact(envelope: Envelope) -> Envelope:
    """The form a history keeps: the payload as compact JSON (protocol/compact.py)."""
    data = envelope.data
    if data is None or type(data) is CompactData:
        return envelope
    packed = CompactData.of(data)
    return envelope if packed is data else envelope.evolve(data=packed)


class NodeBudget:
    """The node-wide bound on history bytes: the oldest message goes first.

    Appends are remembered in order as (stream, offset); a remembered message
    a stream already let go of (age, count, its own bytes) is skipped, and the
    order is rebuilt without such entries when they outnumber the live ones.
    """

    __slots__ = ("_order", "entries", "limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.entries = 0
        self._order: deque[tuple[StreamHistory, int]] = deque()

    def added(self, stream: StreamHistory, offset: int, size: int) -> None:
        self.used += size
        self.entries += 1
        self._order.append((stream, offset))
        if self.used > self.limit:
            self._evict()
        elif len(self._order) > 2 * self.entries + 1024:
            self._order = deque(item for item in self._order if item[0].holds(item[1]))

    def removed(self, size: int) -> None:
        self.used -= size
        self.entries -= 1

    def _evict(self) -> None:
        order = self._order
        while self.used > self.limit and order:
            stream, offset = order.popleft()
            if stream.holds(offset):
                # Per stream and overall, appends are in order: it is the head.
                stream.evict_oldest()


def expired_placeholder(envelope: Envelope) -> Envelope:
    """What replaces a message whose TTL elapsed: keeps its offset, drops its payload."""
    return Envelope(
        type=envelope.type,
        id=envelope.id,
        timestamp=envelope.timestamp,
        stream=envelope.stream,
        offset=envelope.offset,
        epoch=envelope.epoch,
        code=int(ErrorCode.EXPIRED),
    )


def unencodable_placeholder(envelope: Envelope) -> Envelope:
    """What a member gets for a stream event its codec failed to encode: the
    offset without the payload, so it sees no gap (protocol.md 5.2)."""
    return expired_placeholder(envelope).evolve(code=int(ErrorCode.INTERNAL_ERROR))


class StreamHistory:
    """One stream: assigns offsets and keeps the newest messages for replay.

    Messages are kept with the time they were appended; ``read_after`` returns
    ``None`` whenever it cannot return *every* message after a position, so a
    caller can never replay with a silent gap. Payloads are kept as compact
    JSON (``compact``) and every bound of ``HistoryLimits`` applies.

    The deque is created on the first append: most streams (every session's
    ``direct`` stream) are asked for their position and never written.
    """

    __slots__ = (
        "_entries",
        "_position",
        "budget",
        "bytes",
        "epoch",
        "last_offset",
        "limits",
        "wire_name",
    )

    def __init__(
        self,
        wire_name: str,
        epoch: str,
        limits: HistoryLimits,
        budget: NodeBudget | None = None,
    ) -> None:
        self.wire_name = wire_name
        self.epoch = epoch
        self.limits = limits
        self.budget = budget
        self.last_offset = 0
        self.bytes = 0
        # (appended_at_ms, envelope, size); offsets are consecutive inside the deque.
        self._entries: deque[tuple[int, Envelope, int]] | None = None
        # The latest ``position``, shared by every reader that asks before the
        # next append (each session keeps the one it started from).
        self._position: Position | None = None

    def __len__(self) -> int:
        return len(self._entries) if self._entries is not None else 0

    @property
    def position(self) -> Position:
        position = self._position
        if position is None or position.offset != self.last_offset:
            position = self._position = Position(self.last_offset, self.epoch)
        return position

    def append(self, template: Envelope, now_ms: int) -> Envelope:
        """Assign the next offset to ``template`` and remember it (compactly).

        Returns the stored envelope, whose ``data`` is the compact form.
        """
        self.last_offset += 1
        stored = compact(template).evolve(
            stream=self.wire_name, offset=self.last_offset, epoch=self.epoch
        )
        entries = self._entries
        if entries is None:
            entries = self._entries = deque()
        size = entry_size(stored)
        entries.append((now_ms, stored, size))
        self.bytes += size
        if self.budget is not None:
            self.budget.added(self, self.last_offset, size)
        limits = self.limits
        # A message larger than the stream's whole budget evicts itself too:
        # delivered live, never kept (a resume from before it is not recovered).
        while entries and (len(entries) > limits.max_messages or self.bytes > limits.max_bytes):
            self.evict_oldest()
        self.trim(now_ms)
        return stored

    def holds(self, offset: int) -> bool:
        """True while the message at ``offset`` is kept."""
        entries = self._entries
        if not entries:
            return False
        return self.last_offset - len(entries) < offset <= self.last_offset

    def evict_oldest(self) -> None:
        entries = self._entries
        if not entries:
            return
        _, _, size = entries.popleft()
        self.bytes -= size
        if self.budget is not None:
            self.budget.removed(size)

    def clear(self) -> None:
        """Let every kept message go (the stream is forgotten)."""
        while self._entries:
            self.evict_oldest()

    def trim(self, now_ms: int) -> None:
        horizon = now_ms - self.limits.max_age_ms
        entries = self._entries
        while entries and entries[0][0] < horizon:
            self.evict_oldest()

    def read_after(self, position: Position, now_ms: int) -> list[Envelope] | None:
        """Every message after ``position``, oldest first; None if any is gone."""
        if position.epoch != self.epoch or position.offset > self.last_offset:
            return None
        if position.offset == self.last_offset:
            return []
        self.trim(now_ms)
        entries = self._entries
        if entries is None:
            return None  # offsets were assigned, but nothing is kept
        first_kept = self.last_offset - len(entries) + 1
        if position.offset + 1 < first_kept:
            return None
        missed = islice(entries, position.offset + 1 - first_kept, None)
        return [
            expired_placeholder(envelope) if envelope.expired(now_ms) else envelope
            for _, envelope, _ in missed
        ]


EpochSource = Callable[[], str]
