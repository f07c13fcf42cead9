"""Keep CPython's cyclic collector off what the process had when the server started.

A full collection visits every object the collector tracks. The modules,
classes, functions and set-up a server starts with (65,000 objects for the
default server, more with an application on top) live as long as the
process, yet each full collection visits them again. While connections
arrive, full collections run every few thousand connections, so a server
filling up (a start, a deploy, every client reconnecting after a failover)
pays for its start-up heap many times over: freezing it took the collector
from 80.0 to 58.6 us per connection (medians of five runs each,
``python bench/gcprofile.py``; docs/performance.md "Fifth round").

``gc.freeze()`` moves every tracked object to a permanent generation that
collections skip. Objects made later are collected as before, including
those that only a frozen object refers to (they count as referenced from
outside). What it costs: a frozen object that becomes part of unreachable
cycles is not freed until ``gc.unfreeze()``. So the heap is collected once
before it is frozen, and thawed again when the last server that froze it
stops (a test suite starts and stops many).

Left alone: a process whose collector is disabled (it manages the collector
itself), and a heap frozen by someone else before (kept frozen when we stop).
"""

from __future__ import annotations

import gc


class StartupHeap:
    """``freeze`` when a server starts, ``thaw`` when it stops; nested servers share one freeze."""

    def __init__(self) -> None:
        self._holders = 0
        # Whether we froze it (not the application before us): only then we thaw it.
        self._ours = False

    @property
    def frozen_by_us(self) -> bool:
        return self._ours

    def freeze(self) -> None:
        self._holders += 1
        if self._holders > 1 or not gc.isenabled() or gc.get_freeze_count() > 0:
            return
        gc.collect()  # garbage frozen now would never be freed
        gc.freeze()
        self._ours = True

    def thaw(self) -> None:
        if self._holders == 0:
            return
        self._holders -= 1
        if self._holders == 0 and self._ours:
            self._ours = False
            gc.unfreeze()


# One per process, as the collector is.
STARTUP_HEAP = StartupHeap()

__all__ = ["STARTUP_HEAP", "StartupHeap"]
