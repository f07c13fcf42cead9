"""Where stream histories live: the interface and the in-memory default."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from warpsocket.core.history import HistoryLimits, NodeBudget, Position, StreamHistory
from warpsocket.core.keys import wire_name
from warpsocket.protocol.envelope import Envelope


class StreamStore(Protocol):
    """Stream histories as the server core sees them.

    Keys are internal (``direct:<session>``, ``broadcast``, ``room:<name>``);
    the envelopes carry the wire name (``direct`` for every session's own
    stream). Reads are synchronous: a backend whose source of truth is remote
    warms a node-local mirror before the core reads it.
    """

    def position(self, key: str) -> Position: ...

    def read_after(self, key: str, position: Position, now_ms: int) -> list[Envelope] | None: ...

    def append(self, key: str, template: Envelope, now_ms: int) -> Envelope: ...

    def drop(self, key: str) -> None: ...


@runtime_checkable
class LocalStreamStore(Protocol):
    """A store whose histories live in this process: it knows their size and
    can forget the streams nobody uses any more."""

    @property
    def bytes(self) -> int: ...

    def collect(self, in_use: Callable[[str], bool], now_ms: int) -> int: ...


class MemoryStreamStore:
    """Histories in this process. Lost on restart, which the epoch reveals."""

    def __init__(self, limits: HistoryLimits, new_epoch: Callable[[], str]) -> None:
        self.limits = limits
        self._new_epoch = new_epoch
        self._streams: dict[str, StreamHistory] = {}
        # Streams read but never written yet (every session's own stream,
        # most of them): only their epoch, a string, until the first append,
        # instead of a history and a position per session for the collector.
        self._epochs: dict[str, str] = {}
        # Every stream of this store together: bounded by max_node_bytes.
        self.budget = NodeBudget(limits.max_node_bytes)

    def __len__(self) -> int:
        return len(self._streams) + len(self._epochs)

    def _stream(self, key: str) -> StreamHistory:
        stream = self._streams.get(key)
        if stream is None:
            epoch = self._epochs.pop(key, None) or self._new_epoch()
            stream = StreamHistory(wire_name(key), epoch, self.limits, self.budget)
            self._streams[key] = stream
        return stream

    def _epoch(self, key: str) -> str:
        """The epoch of a stream never written: chosen on first sight, kept."""
        epoch = self._epochs.get(key)
        if epoch is None:
            epoch = self._epochs[key] = self._new_epoch()
        return epoch

    def position(self, key: str) -> Position:
        stream = self._streams.get(key)
        if stream is None:
            return Position(0, self._epoch(key))  # as an empty history's
        return stream.position

    def read_after(self, key: str, position: Position, now_ms: int) -> list[Envelope] | None:
        stream = self._streams.get(key)
        if stream is None:
            # As an empty history answers: nothing after its start, else a gap.
            if position.offset == 0 and position.epoch == self._epoch(key):
                return []
            return None
        return stream.read_after(position, now_ms)

    def append(self, key: str, template: Envelope, now_ms: int) -> Envelope:
        return self._stream(key).append(template, now_ms)

    def drop(self, key: str) -> None:
        self._epochs.pop(key, None)
        stream = self._streams.pop(key, None)
        if stream is not None:
            stream.clear()

    @property
    def bytes(self) -> int:
        """What every kept message of this store is charged, in bytes."""
        return self.budget.used

    def collect(self, in_use: Callable[[str], bool], now_ms: int) -> int:
        """Forget streams nobody uses whose history has aged out; returns how many.

        Without this, rooms that came and went would accumulate for ever. A
        forgotten stream that comes back gets a new epoch, so a client still
        holding the old one is told ``recovered: false``: never a silent gap.
        """
        forgotten = 0
        for key in [key for key in self._epochs if not in_use(key)]:
            del self._epochs[key]
            forgotten += 1
        for key in list(self._streams):
            if in_use(key):
                continue
            stream = self._streams[key]
            stream.trim(now_ms)
            if len(stream) == 0:
                del self._streams[key]
                forgotten += 1
        return forgotten
