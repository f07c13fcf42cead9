"""The cyclic collector while a server runs (server/heap.py): the start-up heap
frozen out of it, and the young generation's threshold of CPython 3.13."""

from __future__ import annotations

import gc
import sys
import weakref

from twisted.trial import unittest

from tests.wsclient import ServerTestCase, async_test
from warpsocket.server.heap import (
    OLD_DEFAULT_THRESHOLDS,
    YOUNG_THRESHOLD,
    YOUNG_THRESHOLD_OF_3_13,
    StartupHeap,
    YoungThreshold,
)
from warpsocket.server.hub import Hub
from warpsocket.server.service import WarpSocketService


class Cycle:
    """An object in a reference cycle: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


def _require_thawed(case: unittest.TestCase) -> None:
    # The freeze is per process: a frozen heap here means another server still
    # holds it, and these tests could not tell our freeze from that one.
    case.assertEqual(gc.get_freeze_count(), 0, "the heap is frozen before the test")
    case.assertTrue(gc.isenabled())


class StartupHeapTests(unittest.TestCase):
    def setUp(self) -> None:
        _require_thawed(self)
        self.addCleanup(gc.unfreeze)
        self.addCleanup(gc.enable)

    def test_freeze_keeps_frozen_cycles_until_thawed(self) -> None:
        heap = StartupHeap()
        cycle = Cycle()
        alive = weakref.ref(cycle)
        heap.freeze()
        self.assertGreater(gc.get_freeze_count(), 0)
        self.assertTrue(heap.frozen_by_us)
        del cycle
        gc.collect()
        self.assertIsNotNone(alive(), "a frozen object is out of every collection")
        heap.thaw()
        self.assertEqual(gc.get_freeze_count(), 0)
        gc.collect()
        self.assertIsNone(alive(), "thawed, it is collected again")

    def test_objects_made_after_the_freeze_are_collected(self) -> None:
        holder: list[Cycle] = []  # frozen with the heap
        heap = StartupHeap()
        heap.freeze()
        self.addCleanup(heap.thaw)
        cycle = Cycle()
        garbage = weakref.ref(cycle)
        del cycle
        # Referred to only by a frozen object: reachable from outside, so kept.
        holder.append(Cycle())
        kept = weakref.ref(holder[0])
        gc.collect()
        self.assertIsNone(garbage())
        self.assertIsNotNone(kept())
        self.assertIs(holder[0].me, holder[0])

    def test_garbage_at_the_start_is_collected_before_the_freeze(self) -> None:
        cycle = Cycle()
        alive = weakref.ref(cycle)
        del cycle
        heap = StartupHeap()
        heap.freeze()
        self.addCleanup(heap.thaw)
        self.assertIsNone(alive(), "garbage frozen would never be freed")

    def test_nested_holders_share_one_freeze(self) -> None:
        heap = StartupHeap()
        heap.freeze()
        frozen = gc.get_freeze_count()
        made_since = [[] for _ in range(1000)]
        heap.freeze()
        self.assertLess(gc.get_freeze_count(), frozen + len(made_since), "frozen once only")
        heap.thaw()
        self.assertGreater(gc.get_freeze_count(), 0, "the other holder still runs")
        heap.thaw()
        self.assertEqual(gc.get_freeze_count(), 0)
        heap.thaw()  # one too many: nothing to do
        self.assertEqual(gc.get_freeze_count(), 0)

    def test_a_disabled_collector_is_left_alone(self) -> None:
        gc.disable()
        heap = StartupHeap()
        heap.freeze()
        self.assertEqual(gc.get_freeze_count(), 0)
        self.assertFalse(heap.frozen_by_us)
        heap.thaw()
        self.assertFalse(gc.isenabled())

    def test_an_application_freeze_is_kept(self) -> None:
        gc.freeze()  # the application's own, before the server starts
        heap = StartupHeap()
        heap.freeze()
        self.assertFalse(heap.frozen_by_us)
        heap.thaw()
        self.assertGreater(gc.get_freeze_count(), 0)


# What a running server sets, on the CPython that runs the tests.
_RAISED = (
    (2000, 10, 10)
    if sys.implementation.name == "cpython" and sys.version_info < (3, 13)
    else (700, 10, 10)
)


def _old_defaults(case: unittest.TestCase) -> None:
    """The thresholds of CPython 3.12 and before, whichever CPython runs the
    tests (3.13's defaults would leave nothing to raise); put back after."""
    case.addCleanup(gc.set_threshold, *gc.get_threshold())
    gc.set_threshold(*OLD_DEFAULT_THRESHOLDS)


class YoungThresholdTests(unittest.TestCase):
    def setUp(self) -> None:
        _old_defaults(self)
        self.addCleanup(gc.enable)

    def test_the_old_default_is_raised_while_held_and_put_back(self) -> None:
        young = YoungThreshold(applies=True)
        young.hold()
        self.assertEqual(gc.get_threshold(), (YOUNG_THRESHOLD_OF_3_13, 10, 10))
        self.assertEqual(YOUNG_THRESHOLD_OF_3_13, 2000)
        self.assertTrue(young.raised_by_us)
        young.release()
        self.assertEqual(gc.get_threshold(), (700, 10, 10))
        self.assertFalse(young.raised_by_us)

    def test_nested_holders_share_one_change(self) -> None:
        young = YoungThreshold(applies=True)
        young.hold()
        young.hold(5000)  # the second holder's value is not applied over the first
        self.assertEqual(gc.get_threshold(), (2000, 10, 10))
        young.release()
        self.assertEqual(gc.get_threshold(), (2000, 10, 10), "the other holder still runs")
        young.release()
        self.assertEqual(gc.get_threshold(), (700, 10, 10))
        young.release()  # one too many: nothing to do
        self.assertEqual(gc.get_threshold(), (700, 10, 10))

    def test_thresholds_the_application_set_are_left_alone(self) -> None:
        for theirs in ((500, 10, 10), (700, 20, 10), (50_000, 10, 10)):
            gc.set_threshold(*theirs)
            young = YoungThreshold(applies=True)
            young.hold()
            self.assertEqual(gc.get_threshold(), theirs)
            self.assertFalse(young.raised_by_us)
            young.release()
            self.assertEqual(gc.get_threshold(), theirs)

    def test_a_change_the_application_makes_meanwhile_is_kept(self) -> None:
        young = YoungThreshold(applies=True)
        young.hold()
        gc.set_threshold(10_000, 10, 10)
        young.release()
        self.assertEqual(gc.get_threshold(), (10_000, 10, 10))

    def test_a_disabled_collector_is_left_alone(self) -> None:
        gc.disable()
        young = YoungThreshold(applies=True)
        young.hold()
        self.assertEqual(gc.get_threshold(), (700, 10, 10))
        young.release()
        self.assertFalse(gc.isenabled())

    def test_cpython_3_13_and_later_are_left_alone(self) -> None:
        young = YoungThreshold(applies=False)  # (what 3.13+ constructs)
        young.hold()
        self.assertEqual(gc.get_threshold(), (700, 10, 10))
        self.assertFalse(young.raised_by_us)
        young.release()

    def test_a_threshold_that_is_not_a_positive_int_is_refused_before_holding(self) -> None:
        young = YoungThreshold(applies=True)
        for bad in (0, -5, 2000.0, True, "2000"):
            with self.assertRaises(ValueError):
                young.hold(bad)  # type: ignore[arg-type]
        young.hold()  # no holder was counted by the refusals
        young.release()
        self.assertEqual(gc.get_threshold(), (700, 10, 10))

    def test_a_lower_value_is_never_applied(self) -> None:
        young = YoungThreshold(applies=True)
        young.hold(100)
        self.assertEqual(gc.get_threshold(), (700, 10, 10))
        young.release()

    def test_the_young_generation_is_collected_less_often(self) -> None:
        # What the change is for: 1,700 new containers make two young
        # collections at the old threshold, none at the raised one (with room
        # for the few the test itself makes).
        def young_collections_for(count: int) -> int:
            seen: list[int] = []

            def track(phase: str, info: dict[str, int]) -> None:
                if phase == "start":
                    seen.append(info["generation"])

            gc.collect()
            gc.callbacks.append(track)
            try:
                kept = [[] for _ in range(count)]
            finally:
                gc.callbacks.remove(track)
            del kept
            return len(seen)

        self.assertGreaterEqual(young_collections_for(1700), 2)
        young = YoungThreshold(applies=True)
        young.hold()
        self.addCleanup(young.release)
        self.assertEqual(young_collections_for(1700), 0)


class ServiceFreezeTests(ServerTestCase):
    def setUp(self) -> None:
        _require_thawed(self)

    @async_test
    async def test_a_running_server_freezes_its_start_up_heap(self) -> None:
        before_start = Cycle()
        alive = weakref.ref(before_start)
        del before_start  # garbage: collected by the start, not frozen
        self.start_server()
        self.assertIsNone(alive())
        self.assertGreater(gc.get_freeze_count(), 0)
        client = await self.connect()
        self.assertIsNotNone(client.session)
        await self.service.stopService()
        self.assertEqual(gc.get_freeze_count(), 0, "thawed when the server stopped")

    def test_freeze_heap_false_leaves_the_collector_alone(self) -> None:
        service = WarpSocketService(Hub(), ["tcp:0:interface=127.0.0.1"], freeze_heap=False)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(gc.get_freeze_count(), 0)

    @async_test
    async def test_two_servers_thaw_when_the_last_stops(self) -> None:
        self.start_server()
        other = WarpSocketService(Hub(), ["tcp:0:interface=127.0.0.1"])
        other.startService()
        await other.stopService()
        self.assertGreater(gc.get_freeze_count(), 0, "the first server still runs")
        await self.service.stopService()
        self.assertEqual(gc.get_freeze_count(), 0)


class ServiceYoungThresholdTests(ServerTestCase):
    def setUp(self) -> None:
        # Per process: a server still running here would hold it already.
        self.assertFalse(YOUNG_THRESHOLD.raised_by_us, "a server still holds the threshold")
        _old_defaults(self)

    @async_test
    async def test_a_running_server_raises_the_young_threshold(self) -> None:
        self.start_server()
        self.assertEqual(gc.get_threshold(), _RAISED)
        client = await self.connect()
        self.assertIsNotNone(client.session)
        other = WarpSocketService(Hub(), ["tcp:0:interface=127.0.0.1"])
        other.startService()
        await other.stopService()
        self.assertEqual(gc.get_threshold(), _RAISED, "the first server still runs")
        await self.service.stopService()
        self.assertEqual(gc.get_threshold(), (700, 10, 10), "put back when the server stopped")

    @async_test
    async def test_a_stop_that_failed_keeps_it_and_can_be_tried_again(self) -> None:
        self.start_server()
        close_all = self.hub.port.close_all

        def broken(*args: object) -> None:
            raise RuntimeError("a bug while closing")

        self.hub.port.close_all = broken  # type: ignore[method-assign]
        with self.assertRaises(RuntimeError):
            await self.service.stopService()
        self.assertTrue(self.service.running, "not stopped: its ports still listen")
        self.assertEqual(gc.get_threshold(), _RAISED, "held while the server runs")
        self.hub.port.close_all = close_all  # type: ignore[method-assign]
        await self.service.stopService()
        self.assertFalse(self.service.running)
        self.assertEqual(gc.get_threshold(), (700, 10, 10))

    def test_a_bad_threshold_is_refused_when_the_service_is_made(self) -> None:
        with self.assertRaises(ValueError):
            WarpSocketService(Hub(), ["tcp:0:interface=127.0.0.1"], young_gc_threshold=0)

    def test_none_leaves_the_thresholds_alone(self) -> None:
        service = WarpSocketService(Hub(), ["tcp:0:interface=127.0.0.1"], young_gc_threshold=None)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(gc.get_threshold(), (700, 10, 10))
