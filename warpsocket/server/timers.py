"""Connection timers on time: one delayed call, always armed for the earliest deadline.

The hello timeout, the heartbeat timeout, idle eviction and the heartbeat
itself (protocol.md section 9) fall due at times the core knows
(``ServerCore.next_timer_ms``). A fixed periodic tick would act up to one
period late and drift the heartbeat; this wakes up exactly when the next
one is due instead. Housekeeping without such a bound (ack retries, session
expiry) stays on the service's periodic tick.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class ConnectionTimers:
    """Calls ``run(due_ms)`` when ``next_due()`` is reached, then re-arms.

    ``run`` receives the deadline it was woken for, so that it may treat the
    clock as at least that late: a float clock can read a hair early.
    """

    def __init__(
        self,
        clock: IReactorTime,
        next_due: Callable[[], int | None],
        run: Callable[[int], None],
    ) -> None:
        self.clock = clock
        self.next_due = next_due
        self.run = run
        self._call: IDelayedCall | None = None
        self._due_ms: int | None = None
        self.running = False

    def start(self) -> None:
        self.running = True
        self._fire(int(self.clock.seconds() * 1000))

    def stop(self) -> None:
        self.running = False
        self._cancel()

    def wake_by(self, due_ms: int) -> None:
        """A deadline earlier than any armed one appeared (a new connection, say)."""
        if self.running and (self._due_ms is None or due_ms < self._due_ms):
            self._arm(due_ms)

    def _fire(self, due_ms: int) -> None:
        self._call = None
        self._due_ms = None
        try:
            self.run(due_ms)
        finally:
            following = self.next_due()
            if self.running and following is not None:
                # Never again for a deadline already run (``run`` failed?): a
                # second later, not in a busy loop.
                self._arm(following if following > due_ms else due_ms + 1000)

    def _arm(self, due_ms: int) -> None:
        self._cancel()
        delay = max(0.0, due_ms / 1000 - self.clock.seconds())
        self._due_ms = due_ms
        self._call = self.clock.callLater(delay, self._fire, due_ms)

    def _cancel(self) -> None:
        call, self._call = self._call, None
        self._due_ms = None
        if call is not None and call.active():
            call.cancel()
