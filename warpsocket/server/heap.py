"""CPython's cyclic collector while a server runs: the start-up heap frozen
out of it, and its young generation's threshold as CPython 3.13 sets it.

**The start-up heap.**

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

**The young generation's threshold.** A collection of the young generation
runs every 700 net new container objects on CPython 3.12 and before, every
2,000 from 3.13 on (``gc.get_threshold()``: ``(700, 10, 10)`` against
``(2000, 10, 10)``). About every eleventh collection takes the middle
generation along, and about every eleventh of those the whole heap, as
long as what survived grew by a quarter since the last full one. A
connection makes about 43 new containers (its records, meters, deadlines,
Autobahn's own), so at 700 a server filling with 10,000 connections makes
4 full collections where 2,000 makes 1, each visiting every connection open
so far (at 100,000 connections the quarter rule paces them more than the
count does: 14 against 10). While a server runs on an interpreter that
still has the old defaults, the first threshold is raised to 3.13's, and
put back when the last server that raised it stops (unless someone changed
the thresholds meanwhile). Cyclic garbage waits for 2,000 allocations
instead of 700 before a young collection finds it.

Left alone: a disabled collector, thresholds the application set itself
(anything but the old defaults), and CPython 3.13 and later, whose defaults
are already these (3.14's incremental collector reads them differently).
"""

from __future__ import annotations

import gc
import sys


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


# CPython's thresholds up to 3.12; 3.13 raised the first to 2,000.
OLD_DEFAULT_THRESHOLDS = (700, 10, 10)
YOUNG_THRESHOLD_OF_3_13 = 2000


class YoungThreshold:
    """``hold`` when a server starts, ``release`` when it stops; nested servers
    share one change, made by the first and undone after the last.
    ``applies``: whether this interpreter is one to change (CPython 3.12 and
    before: 3.13 has these thresholds already, and 3.14's incremental
    collector reads them differently; other Pythons have other collectors)."""

    def __init__(
        self, applies: bool = sys.implementation.name == "cpython" and sys.version_info < (3, 13)
    ) -> None:
        self._applies = applies
        self._holders = 0
        # (what was there, what we set) while our change is in force.
        self._change: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None

    @property
    def raised_by_us(self) -> bool:
        return self._change is not None

    def hold(self, young: int = YOUNG_THRESHOLD_OF_3_13) -> None:
        check_young_threshold(young)
        self._holders += 1
        if self._holders > 1 or not self._applies or not gc.isenabled():
            return
        before = gc.get_threshold()
        if before != OLD_DEFAULT_THRESHOLDS or young <= before[0]:
            return
        gc.set_threshold(young, before[1], before[2])
        self._change = (before, gc.get_threshold())

    def release(self) -> None:
        if self._holders == 0:
            return
        self._holders -= 1
        if self._holders == 0 and self._change is not None:
            before, ours = self._change
            self._change = None
            if gc.get_threshold() == ours:  # (not if the application changed them since)
                gc.set_threshold(*before)


def check_young_threshold(young: int) -> None:
    """A young threshold must be a positive whole number of objects."""
    if isinstance(young, bool) or not isinstance(young, int) or young < 1:
        raise ValueError(f"a young collection threshold is a positive int, not {young!r}")


# One each per process, as the collector is.
STARTUP_HEAP = StartupHeap()
YOUNG_THRESHOLD = YoungThreshold()

__all__ = [
    "OLD_DEFAULT_THRESHOLDS",
    "STARTUP_HEAP",
    "YOUNG_THRESHOLD",
    "YOUNG_THRESHOLD_OF_3_13",
    "StartupHeap",
    "YoungThreshold",
    "check_young_threshold",
]
