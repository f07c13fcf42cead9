"""Write coalescing: the frames one input event causes leave in one write per connection.

A burst of publishes (an application loop, one read of many client frames,
one read of many Redis pub/sub messages) writes one frame per publish to every
member. Handing each frame to the transport on its own costs a trip through
the transport's write path per frame and per member; while a batch is open,
frames are appended to a per-connection list instead, and each connection
gets one ``transport.write`` when the outermost batch closes.

Nothing waits for a timer: a batch closes when the code that opened it
returns, so a frame leaves exactly when it would have without the batch
(Twisted sends on the next reactor iteration either way), only cheaper.
Order is kept: every other write to a connection (autobahn's control and
close frames) first flushes what that connection has waiting.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from twisted.logger import Logger


class Corked(Protocol):
    def uncork(self) -> None:
        """Write the frames held for this connection (one transport write)."""


class WriteBatch:
    """Open while ``depth > 0``; ``dirty`` are the connections holding frames."""

    __slots__ = ("depth", "dirty")
    log = Logger()

    def __init__(self) -> None:
        self.depth = 0
        self.dirty: list[Corked] = []

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
