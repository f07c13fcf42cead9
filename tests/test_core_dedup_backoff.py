"""Tests for warpsocket.core.dedup (protocol.md 6) and warpsocket.core.backoff."""

from __future__ import annotations

from twisted.trial import unittest

from warpsocket.core.backoff import Backoff
from warpsocket.core.dedup import DedupKey, DedupLimits, DedupWindow
from warpsocket.core.messages import ack_envelope

T0 = 1_764_300_000_000
KEY: DedupKey = ("s:sess-1", "m-1")


class DedupTests(unittest.SynchronousTestCase):
    def test_limits_validation(self) -> None:
        self.assertEqual(DedupLimits(), DedupLimits(100_000, 300_000))
        self.assertRaises(ValueError, DedupLimits, 0, 1)
        self.assertRaises(ValueError, DedupLimits, 1, 0)

    def test_begin_settle_lookup(self) -> None:
        window = DedupWindow(DedupLimits())
        self.assertIsNone(window.lookup(KEY, T0))
        record = window.begin(KEY, T0)
        self.assertEqual((record.created_ms, record.reply), (T0, None))
        found = window.lookup(KEY, T0 + 1)
        assert found is not None
        self.assertIsNone(found.reply, "in progress: no reply yet")
        reply = ack_envelope("n-1", T0 + 2, "m-1")
        window.settle(KEY, reply)
        found = window.lookup(KEY, T0 + 3)
        assert found is not None
        self.assertEqual(found.reply, reply)
        self.assertEqual(len(window), 1)

    def test_keys_are_per_principal(self) -> None:
        window = DedupWindow(DedupLimits())
        window.begin(KEY, T0)
        self.assertIsNone(window.lookup(("s:sess-2", "m-1"), T0))
        self.assertIsNone(window.lookup(("s:sess-1", "m-2"), T0))

    def test_settle_unknown_key_is_ignored(self) -> None:
        window = DedupWindow(DedupLimits())
        window.settle(KEY, ack_envelope("n-1", T0, "m-1"))
        self.assertEqual(len(window), 0)

    def test_forget(self) -> None:
        window = DedupWindow(DedupLimits())
        window.begin(KEY, T0)
        window.forget(KEY)
        window.forget(KEY)
        self.assertIsNone(window.lookup(KEY, T0))

    def test_count_bound_forgets_oldest(self) -> None:
        window = DedupWindow(DedupLimits(max_records=2))
        keys = [("p", f"m-{i}") for i in range(3)]
        for i, key in enumerate(keys):
            window.begin(key, T0 + i)
        self.assertEqual(len(window), 2)
        self.assertIsNone(window.lookup(keys[0], T0 + 3))
        self.assertIsNotNone(window.lookup(keys[1], T0 + 3))
        self.assertIsNotNone(window.lookup(keys[2], T0 + 3))

    def test_age_bound(self) -> None:
        window = DedupWindow(DedupLimits(max_age_ms=1_000))
        window.begin(("p", "old"), T0)
        window.begin(("p", "new"), T0 + 500)
        self.assertIsNotNone(window.lookup(("p", "old"), T0 + 1_000))
        self.assertIsNone(window.lookup(("p", "old"), T0 + 1_001))
        self.assertIsNotNone(window.lookup(("p", "new"), T0 + 1_001))
        window.trim(T0 + 1_501)
        self.assertEqual(len(window), 0)


class BackoffTests(unittest.SynchronousTestCase):
    def test_exact_schedule_without_jitter(self) -> None:
        backoff = Backoff(initial=1.0, factor=2.0, maximum=30.0, jitter=0.0)
        self.assertEqual([backoff.delay(n) for n in range(7)], [1, 2, 4, 8, 16, 30, 30])

    def test_cap_and_huge_attempts(self) -> None:
        backoff = Backoff(initial=0.5, maximum=10.0, jitter=0.0)
        self.assertEqual(backoff.ceiling(100), 10.0)
        self.assertEqual(backoff.delay(10**9), 10.0)
        self.assertEqual(Backoff(factor=1.0, jitter=0.0).delay(1_000), 1.0)

    def test_jitter_bounds(self) -> None:
        low = Backoff(jitter=0.5, random=lambda: 0.0)
        high = Backoff(jitter=0.5, random=lambda: 0.999999)
        for attempt in range(8):
            ceiling = low.ceiling(attempt)
            self.assertEqual(low.delay(attempt), ceiling)
            self.assertAlmostEqual(high.delay(attempt), ceiling * (1 - 0.5 * 0.999999))
            self.assertGreater(high.delay(attempt), ceiling / 2)
            self.assertLessEqual(high.delay(attempt), ceiling)

    def test_full_jitter(self) -> None:
        backoff = Backoff(jitter=1.0, random=lambda: 0.999)
        self.assertAlmostEqual(backoff.delay(3), 8 * 0.001)

    def test_default_random_stays_in_range(self) -> None:
        backoff = Backoff()
        for attempt in range(10):
            delay = backoff.delay(attempt)
            self.assertTrue(backoff.ceiling(attempt) / 2 <= delay <= backoff.ceiling(attempt))

    def test_validation(self) -> None:
        self.assertRaises(ValueError, Backoff, initial=0)
        self.assertRaises(ValueError, Backoff, initial=-1)
        self.assertRaises(ValueError, Backoff, initial=5, maximum=4)
        self.assertRaises(ValueError, Backoff, factor=0.5)
        self.assertRaises(ValueError, Backoff, jitter=-0.1)
        self.assertRaises(ValueError, Backoff, jitter=1.1)
        self.assertRaises(ValueError, Backoff().ceiling, -1)
        self.assertRaises(ValueError, Backoff().delay, -1)
