"""Acknowledged sends to sessions attached to other nodes (docs/cluster.md).

A client acknowledges on the node it is connected to. That node announces
each acknowledgement to the cluster (``Backend.announce_ack``); the node
that sent the message keeps the waiter here and fires it. Delivery never
depends on this: the message is in the session's ``direct`` stream and is
delivered (and replayed on resume) like any other; only the sender's
notification travels this way, and a lost notice makes the waiter time out.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from warpsocket.backends.base import AckNotice
from warpsocket.core.server import QueueFullError

# Notices remembered for messages whose sender has not registered them yet
# (the client can acknowledge before the append's reply reaches the sender).
MAX_SEEN_SESSIONS = 4096
MAX_SEEN_REFS = 256


@dataclass
class _Waiting:
    offset: int
    epoch: str | None
    message_id: str
    waiter: Deferred[None]
    timer: IDelayedCall


@dataclass
class _Seen:
    """What was announced for one session: the highest cumulative offset per
    epoch, and the ids acknowledged one by one (both bounded)."""

    through: dict[str | None, int] = field(default_factory=dict)
    refs: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def covers(self, offset: int, epoch: str | None, message_id: str) -> bool:
        return message_id in self.refs or offset <= self.through.get(epoch, -1)


class RemoteAcks:
    def __init__(
        self,
        clock: IReactorTime,
        max_per_session: int,
        timed_out: Callable[[str, int], Exception],
    ) -> None:
        self.clock = clock
        self.max_per_session = max_per_session
        self.timed_out = timed_out
        self._waiting: dict[str, dict[int, _Waiting]] = {}
        self._seen: OrderedDict[str, _Seen] = OrderedDict()

    def __len__(self) -> int:
        return sum(len(waiting) for waiting in self._waiting.values())

    def check(self, session: str) -> None:
        """Raise QueueFullError when ``session`` has too many messages waiting here."""
        if len(self._waiting.get(session, ())) >= self.max_per_session:
            raise QueueFullError(f"session {session} has too many pending acks")

    def wait(
        self, session: str, offset: int, epoch: str | None, message_id: str, timeout_s: float
    ) -> Deferred[None]:
        """Fires when the client acknowledges the stored message, or fails
        with ``timed_out(session, offset)`` after ``timeout_s``."""
        seen = self._seen.get(session)
        if seen is not None and seen.covers(offset, epoch, message_id):
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        timer = self.clock.callLater(timeout_s, self._expire, session, offset)
        waiting = self._waiting.setdefault(session, {})
        waiting[offset] = _Waiting(offset, epoch, message_id, waiter, timer)
        return waiter

    def acknowledged(self, notice: AckNotice) -> None:
        self._remember(notice)
        waiting = self._waiting.get(notice.session)
        if not waiting:
            return
        done = [
            entry
            for entry in waiting.values()
            if entry.message_id == notice.ref
            or (
                notice.through is not None
                and entry.offset <= notice.through
                and entry.epoch == notice.epoch
            )
        ]
        for entry in done:
            del waiting[entry.offset]
            entry.timer.cancel()
        if not waiting:
            del self._waiting[notice.session]
        for entry in done:
            entry.waiter.callback(None)

    def fail_all(self, error: Callable[[str, int], Exception]) -> None:
        """Shutdown: every waiter fails with ``error(session, offset)``."""
        waiting, self._waiting = self._waiting, {}
        for session, entries in waiting.items():
            for entry in entries.values():
                entry.timer.cancel()
                entry.waiter.errback(error(session, entry.offset))

    def _expire(self, session: str, offset: int) -> None:
        waiting = self._waiting.get(session, {})
        entry = waiting.pop(offset, None)
        if not waiting:
            self._waiting.pop(session, None)
        if entry is not None:
            entry.waiter.errback(self.timed_out(session, offset))

    def _remember(self, notice: AckNotice) -> None:
        seen = self._seen.pop(notice.session, None) or _Seen()
        self._seen[notice.session] = seen  # most recently used last
        while len(self._seen) > MAX_SEEN_SESSIONS:
            self._seen.popitem(last=False)
        if notice.through is not None:
            seen.through[notice.epoch] = max(seen.through.get(notice.epoch, -1), notice.through)
            while len(seen.through) > 2:  # the current epoch, and maybe the one before
                del seen.through[next(iter(seen.through))]
        if notice.ref is not None:
            seen.refs[notice.ref] = None
            while len(seen.refs) > MAX_SEEN_REFS:
                seen.refs.popitem(last=False)
