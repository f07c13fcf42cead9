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
from dataclasses import dataclass

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from warpsocket.backends.base import AckNotice
from warpsocket.core.server import QueueFullError

# Notices remembered for messages whose sender has not registered them yet
# (the client can acknowledge before the append's reply reaches the sender):
# bounded in count, and only the recent ones matter.
MAX_SEEN_SESSIONS = 4096
MAX_SEEN_REFS = 16_384
SEEN_SECONDS = 60.0

# A waiter is known by its message's place: offset and direct epoch (after a
# Redis data loss the offsets start again under a new epoch).
_Place = tuple[int, "str | None"]


@dataclass
class _Waiting:
    offset: int
    epoch: str | None
    message_id: str
    waiter: Deferred[None]
    timer: IDelayedCall


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
        self._waiting: dict[str, dict[_Place, _Waiting]] = {}
        # session -> {epoch: highest cumulative offset announced}
        self._through: OrderedDict[str, dict[str | None, int]] = OrderedDict()
        # (session, message id) -> when it was announced
        self._refs: OrderedDict[tuple[str, str], float] = OrderedDict()

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
        if self._seen(session, offset, epoch, message_id):
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        place = (offset, epoch)
        timer = self.clock.callLater(timeout_s, self._expire, session, place)
        self._waiting.setdefault(session, {})[place] = _Waiting(
            offset, epoch, message_id, waiter, timer
        )
        return waiter

    def acknowledged(self, notice: AckNotice) -> None:
        self._remember(notice)
        waiting = self._waiting.get(notice.session)
        if not waiting:
            return
        done = [
            place
            for place, entry in waiting.items()
            if entry.message_id == notice.ref
            or (
                notice.through is not None
                and entry.offset <= notice.through
                and entry.epoch == notice.epoch
            )
        ]
        entries = [waiting.pop(place) for place in done]
        if not waiting:
            del self._waiting[notice.session]
        for entry in entries:
            entry.timer.cancel()
            entry.waiter.callback(None)

    def fail_all(self, error: Callable[[str, int], Exception]) -> None:
        """Shutdown: every waiter fails with ``error(session, offset)``."""
        waiting, self._waiting = self._waiting, {}
        for session, entries in waiting.items():
            for entry in entries.values():
                entry.timer.cancel()
                entry.waiter.errback(error(session, entry.offset))

    def _expire(self, session: str, place: _Place) -> None:
        waiting = self._waiting.get(session, {})
        entry = waiting.pop(place, None)
        if not waiting:
            self._waiting.pop(session, None)
        if entry is not None:
            entry.waiter.errback(self.timed_out(session, entry.offset))

    def _seen(self, session: str, offset: int, epoch: str | None, message_id: str) -> bool:
        announced = self._refs.get((session, message_id))
        if announced is not None and self.clock.seconds() - announced < SEEN_SECONDS:
            return True
        return offset <= self._through.get(session, {}).get(epoch, -1)

    def _remember(self, notice: AckNotice) -> None:
        if notice.through is not None:
            through = self._through.pop(notice.session, None) or {}
            self._through[notice.session] = through  # most recently used last
            through[notice.epoch] = max(through.get(notice.epoch, -1), notice.through)
            while len(through) > 2:  # the current epoch, and maybe the one before
                del through[next(iter(through))]
            while len(self._through) > MAX_SEEN_SESSIONS:
                self._through.popitem(last=False)
        if notice.ref is not None:
            key = (notice.session, notice.ref)
            self._refs.pop(key, None)
            self._refs[key] = self.clock.seconds()
            while len(self._refs) > MAX_SEEN_REFS:
                self._refs.popitem(last=False)
