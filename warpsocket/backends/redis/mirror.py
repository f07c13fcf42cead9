"""A node-local copy of a stream whose source of truth is Redis.

The mirror is what the core reads synchronously. It is fed by pub/sub (live
messages) and by snapshots from Redis (on first use, and whenever pub/sub
skipped an offset, changed epoch or reconnected), and it never hands out a
message while an earlier one is missing: ``read_after`` answers None
(``recovered: false``) rather than a list with a hole.
"""

from __future__ import annotations

import json
from collections import deque
from itertools import islice

from warpsocket.core.history import (
    HistoryLimits,
    Position,
    compact,
    entry_size,
    expired_placeholder,
)
from warpsocket.protocol.envelope import Envelope

Entry = tuple[int, Envelope]  # (appended_at_ms, stored envelope)


def encode_entry(template: Envelope) -> str:
    """The JSON kept in Redis: the envelope without stream, offset and epoch."""
    wire = template.to_wire()
    for name in ("stream", "offset", "epoch"):
        wire.pop(name, None)
    return json.dumps(wire, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def decode_entry(raw: str | bytes, wire_name: str, epoch: str) -> Entry:
    """Parse ``offset|appended_at_ms|json`` back into a stored envelope."""
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    offset_text, appended_text, body = text.split("|", 2)
    wire = json.loads(body)
    wire.update(stream=wire_name, offset=int(offset_text), epoch=epoch)
    # Kept compact, as the in-memory histories keep theirs (core/history.py).
    return int(appended_text), compact(Envelope.from_wire(wire))


class Mirror:
    def __init__(self, limits: HistoryLimits, epoch: str | None = None) -> None:
        self.limits = limits
        # None until the first snapshot; a provisional epoch for a stream this
        # node creates (a new session's direct stream), confirmed by the snapshot.
        self.epoch = epoch
        self.loaded = False
        # The provisional epoch reached Redis (``Streams._announce_epoch``).
        self.announced = False
        self.last_offset = 0
        self._entries: deque[Entry] = deque(maxlen=limits.max_messages)
        # Bytes of the kept entries, bounded by ``limits.max_bytes`` like a
        # memory history (Redis itself keeps ``max_messages`` per stream).
        self.bytes = 0
        # Live messages that arrived ahead of a missing one, waiting for a snapshot.
        self._ahead: dict[int, Entry] = {}
        self.needs_snapshot = True

    @property
    def ready(self) -> bool:
        return self.epoch is not None and (self.loaded or self.last_offset == 0)

    @property
    def position(self) -> Position:
        return Position(self.last_offset, self.epoch or "")

    def load(self, epoch: str, last_offset: int, entries: list[Entry]) -> list[Envelope]:
        """Install a snapshot; return the messages local members have not had, in order."""
        if self.epoch is None:
            fresh: list[Envelope] = []  # first load: nobody here has read this stream yet
        elif epoch != self.epoch:
            fresh = [envelope for _, envelope in entries]  # history lost: all of it is new
        else:
            fresh = [e for _, e in entries if (e.offset or 0) > self.last_offset]
        self.epoch = epoch
        self.loaded = True
        self._entries.clear()
        self.bytes = 0
        for entry in entries:
            self._keep(entry)
        self.last_offset = last_offset
        self._ahead = {o: v for o, v in self._ahead.items() if v[1].epoch == epoch}
        self.needs_snapshot = False
        return fresh + self._drain_ahead()

    def apply(self, appended_at: int, envelope: Envelope) -> list[Envelope] | None:
        """A live message. Returns what to deliver now, or None when a snapshot is needed."""
        offset = envelope.offset or 0
        if not self.loaded or self.needs_snapshot:
            self._ahead[offset] = (appended_at, envelope)
            return None
        if envelope.epoch != self.epoch:
            self._ahead = {offset: (appended_at, envelope)}
            self.needs_snapshot = True
            return None
        if offset <= self.last_offset:
            return []  # already have it
        if offset > self.last_offset + 1:
            self._ahead[offset] = (appended_at, envelope)
            self.needs_snapshot = True
            return None
        self._append(appended_at, envelope)
        return [envelope, *self._drain_ahead()]

    def _append(self, appended_at: int, envelope: Envelope) -> None:
        self._keep((appended_at, envelope))
        self.last_offset = envelope.offset or self.last_offset + 1

    def _keep(self, entry: Entry) -> None:
        entries = self._entries
        if len(entries) == entries.maxlen and entries:
            self.bytes -= entry_size(entries[0][1])  # the deque drops it
        entries.append(entry)
        self.bytes += entry_size(entry[1])
        while entries and self.bytes > self.limits.max_bytes:
            self.bytes -= entry_size(entries.popleft()[1])

    def _drain_ahead(self) -> list[Envelope]:
        delivered: list[Envelope] = []
        for offset in sorted(self._ahead):
            appended_at, envelope = self._ahead[offset]
            if offset <= self.last_offset:
                del self._ahead[offset]
            elif offset == self.last_offset + 1 and envelope.epoch == self.epoch:
                del self._ahead[offset]
                self._append(appended_at, envelope)
                delivered.append(envelope)
            else:
                break
        # Bounded: whatever cannot be drained waits for the snapshot, which
        # replaces it; never more than one history's worth.
        while len(self._ahead) > self.limits.max_messages:
            del self._ahead[min(self._ahead)]
        return delivered

    def read_after(self, position: Position, now_ms: int) -> list[Envelope] | None:
        if not self.ready or position.epoch != self.epoch or position.offset > self.last_offset:
            return None
        if position.offset == self.last_offset:
            return []
        horizon = now_ms - self.limits.max_age_ms
        while self._entries and self._entries[0][0] < horizon:
            self.bytes -= entry_size(self._entries.popleft()[1])
        first_kept = self.last_offset - len(self._entries) + 1
        if position.offset + 1 < first_kept:
            return None
        missed = islice(self._entries, position.offset + 1 - first_kept, None)
        return [
            expired_placeholder(envelope) if envelope.expired(now_ms) else envelope
            for _, envelope in missed
        ]
