"""Bounded per-stream history with offsets and epochs (protocol.md section 5)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice

from warpsocket.protocol.codes import ErrorCode
from warpsocket.protocol.envelope import Envelope


@dataclass(frozen=True, slots=True)
class Position:
    """The last message of a stream that a reader has processed."""

    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class HistoryLimits:
    """How much of each stream is kept for replay. Both bounds apply."""

    max_messages: int = 1000
    max_age_ms: int = 300_000

    def __post_init__(self) -> None:
        if self.max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        if self.max_age_ms < 1:
            raise ValueError("max_age_ms must be at least 1")


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
    caller can never replay with a silent gap.

    The deque is created on the first append: most streams (every session's
    ``direct`` stream) are asked for their position and never written.
    """

    __slots__ = ("_entries", "epoch", "last_offset", "limits", "wire_name")

    def __init__(self, wire_name: str, epoch: str, limits: HistoryLimits) -> None:
        self.wire_name = wire_name
        self.epoch = epoch
        self.limits = limits
        self.last_offset = 0
        # (appended_at_ms, envelope); offsets are consecutive inside the deque.
        self._entries: deque[tuple[int, Envelope]] | None = None

    def __len__(self) -> int:
        return len(self._entries) if self._entries is not None else 0

    @property
    def position(self) -> Position:
        return Position(self.last_offset, self.epoch)

    def append(self, template: Envelope, now_ms: int) -> Envelope:
        """Assign the next offset to ``template`` and remember it."""
        self.last_offset += 1
        stored = template.evolve(stream=self.wire_name, offset=self.last_offset, epoch=self.epoch)
        entries = self._entries
        if entries is None:
            entries = self._entries = deque(maxlen=self.limits.max_messages)
        entries.append((now_ms, stored))
        self.trim(now_ms)
        return stored

    def trim(self, now_ms: int) -> None:
        horizon = now_ms - self.limits.max_age_ms
        entries = self._entries
        while entries and entries[0][0] < horizon:
            entries.popleft()

    def read_after(self, position: Position, now_ms: int) -> list[Envelope] | None:
        """Every message after ``position``, oldest first; None if any is gone."""
        if position.epoch != self.epoch or position.offset > self.last_offset:
            return None
        if position.offset == self.last_offset:
            return []
        self.trim(now_ms)
        entries = self._entries
        if entries is None:
            return None  # offsets were assigned, but nothing is kept (not reached)
        first_kept = self.last_offset - len(entries) + 1
        if position.offset + 1 < first_kept:
            return None
        missed = islice(entries, position.offset + 1 - first_kept, None)
        return [
            expired_placeholder(envelope) if envelope.expired(now_ms) else envelope
            for _, envelope in missed
        ]


EpochSource = Callable[[], str]
