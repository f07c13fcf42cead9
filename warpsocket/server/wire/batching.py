"""Write coalescing: the frames one input event causes leave in one write per connection.

A burst of publishes (an application loop, one read of many client frames,
one read of many Redis pub/sub messages) writes one frame per publish to every
member; one read of Redis command replies (a turn's dedup claims, decided on a
cluster node) lets many handlers answer at once. Handing each frame to the
transport on its own costs a trip through the transport's write path per
frame and per member; while a batch is open, frames are appended to a
per-connection list instead, and each connection gets one
``transport.write`` when the outermost batch closes.

A batch closes when the code that opened it returns (``close``), except for
the frames answering what clients sent (``close_soon``, from the protocol's
``dataReceived``): those leave at the end of the reactor turn, when every
connection that was readable in it has been served. That is when Twisted's
own transport sends them (on its next iteration), and it matters: a
``send()`` on loopback wakes the reader's process, and one wake-up per
answer, each between two reads, cost a round trip about 10 us of kernel
time (an IPI per wake-up in a VM) where answers sent together wake the
reader once. One ``callLater(0)`` per turn schedules it, not one per frame.
The one exception is a connection's welcome, which its protocol writes at
once (``WarpSocketServerProtocol.onMessage``): its client waits for nothing
else, and nothing else of that connection can be waiting.

Order is kept: every other write to a connection (autobahn's control and
close frames, a frame written outside any batch) goes after what that
connection has waiting, which it first flushes or joins.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from twisted.logger import Logger

CallLater = Callable[..., Any]


class Corked(Protocol):
    def uncork(self) -> None:
        """Write the frames held for this connection (one transport write)."""


class WriteBatch:
    """Open while ``depth > 0``; ``dirty`` are the connections holding frames."""

    __slots__ = ("_call_later", "_scheduled", "depth", "dirty")
    log = Logger()

    def __init__(self, call_later: CallLater | None = None) -> None:
        self.depth = 0
        self.dirty: list[Corked] = []
        # The reactor's ``callLater``, for ``close_soon`` (None: it closes at once).
        self._call_later = call_later
        self._scheduled = False

    def close_soon(self) -> None:
        """``close``, but the frames leave at the end of this reactor turn."""
        self.depth -= 1
        if self.depth == 0 and self.dirty:
            if self._call_later is None:
                self.flush()
            elif not self._scheduled:
                self._scheduled = True
                self._call_later(0, self._turn_over)

    def _turn_over(self) -> None:
        self._scheduled = False
        if self.depth == 0:  # (else the batch open now flushes them when it closes)
            self.flush()

    def open(self) -> None:
        self.depth += 1

    def close(self) -> None:
        self.depth -= 1
        if self.depth == 0:
            self.flush()

    def flush(self) -> None:
        # A flush can write (a slow consumer's close frame) but never opens a
        # batch, so nothing is added to ``dirty`` while it runs.
        dirty = self.dirty
        if dirty:
            self.dirty = []
            for connection in dirty:
                try:
                    connection.uncork()
                except Exception:  # one broken transport must not hold the others' frames
                    self.log.failure("flushing a connection's frames failed")

    @contextmanager
    def __call__(self) -> Iterator[None]:
        """``with batch():`` the frames written inside leave together at the end."""
        self.open()
        try:
            yield
        finally:
            self.close()
