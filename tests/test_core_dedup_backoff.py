"""Tests for warpsocket.core.dedup (protocol.md 6) and warpsocket.core.backoff."""

from __future__ import annotations

import gc

from twisted.trial import unittest

from warpsocket.core.backoff import Backoff
from warpsocket.core.dedup import DedupKey, DedupLimits, DedupWindow
from warpsocket.core.messages import ack_envelope, error_envelope, result_envelope
from warpsocket.protocol.codecs import JsonCodec
from warpsocket.protocol.codes import ErrorCode
from warpsocket.protocol.compact import CompactData
from warpsocket.protocol.envelope import Envelope, MessageType

T0 = 1_764_300_000_000
KEY: DedupKey = ("s:sess-1", "m-1")


class KeptReplyTests(unittest.SynchronousTestCase):
    """What the window keeps of a reply: the collector stops tracking a plain
    ack or result; every reply comes back equal, and encodes to the same bytes."""

    def replies(self) -> list[Envelope]:
        packed = CompactData(b'{"a":1,"b":"\\u00e9"}')
        return [
            ack_envelope("n-1", T0, "m-1"),
            ack_envelope("n-2", T0, "m-2", data="ok"),
            result_envelope("n-3", T0, "m-3", packed),
            result_envelope("n-4", T0, "m-4", 2.5),
            result_envelope("n-5", T0, "m-5", None),
            result_envelope("n-6", T0, "m-6", True),
            result_envelope("n-7", T0, "m-7", {"nested": [1, {"x": None}]}),
            error_envelope("n-8", T0, ErrorCode.INTERNAL_ERROR, "internal error", "m-8"),
            Envelope(MessageType.RESULT, "n-9", T0, 1, ref="m-9", trace=None, ttl=5),
        ]

    def test_a_reply_comes_back_equal_and_encodes_the_same(self) -> None:
        codec = JsonCodec()
        window = DedupWindow(DedupLimits())
        for reply in self.replies():
            key = ("p", reply.ref or "")
            window.begin(key, T0)
            window.settle(key, reply)
            found = window.lookup(key, T0 + 1)
            assert found is not None and found.reply is not None
            self.assertEqual(found.reply, reply)
            self.assertEqual(codec.encode(found.reply), codec.encode(reply))

    def test_plain_replies_are_not_tracked_by_the_collector(self) -> None:
        window = DedupWindow(DedupLimits())
        tracked = {}
        for reply in self.replies():
            key = ("p", reply.ref or "")
            window.begin(key, T0)
            window.settle(key, reply)
        gc.collect()
        for shard in window._shards:
            for key, entry in shard.items():
                tracked[key[1]] = gc.is_tracked(entry)
        # Acks and results of atoms or encoded JSON: untracked; a result of
        # containers, an error (its data is a dict) and an unusual envelope
        # are kept as they are.
        expected = {f"m-{n}": n >= 7 for n in range(1, 10)}
        self.assertEqual(tracked, expected)


class DedupTests(unittest.SynchronousTestCase):
    def test_limits_validation(self) -> None:
        self.assertEqual(DedupLimits(), DedupLimits(100_000, 300_000))
        self.assertRaises(ValueError, DedupLimits, 0, 1)
        self.assertRaises(ValueError, DedupLimits, 1, 0)

    def test_begin_settle_lookup(self) -> None:
        window = DedupWindow(DedupLimits())
        self.assertIsNone(window.lookup(KEY, T0))
        window.begin(KEY, T0)
        found = window.lookup(KEY, T0 + 1)
        assert found is not None
        self.assertEqual((found.created_ms, found.reply), (T0, None), "in progress: no reply yet")
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

    def test_a_record_exactly_at_the_age_bound_is_kept(self) -> None:
        window = DedupWindow(DedupLimits(max_records=100, max_age_ms=1_000))  # one shard
        window.begin(("p", "older"), T0 - 1)
        window.begin(("p", "edge"), T0)
        # The older one is due, so this lookup trims; the edge is not yet.
        self.assertIsNotNone(window.lookup(("p", "edge"), T0 + 1_000))
        self.assertEqual(len(window), 1)
        self.assertIsNone(window.lookup(("p", "edge"), T0 + 1_001))

    def test_a_clock_that_went_back_stamps_with_the_time_it_left(self) -> None:
        window = DedupWindow(DedupLimits(max_records=100, max_age_ms=1_000))
        window.begin(("p", "late"), T0 + 5_000)
        window.begin(("p", "early"), T0)  # the clock went back
        found = window.lookup(("p", "early"), T0 + 6_000)
        assert found is not None
        self.assertEqual(found.created_ms, T0 + 5_000)
        self.assertIsNone(window.lookup(("p", "early"), T0 + 6_001))
        self.assertEqual(len(window), 0)

    def test_what_leaves_a_shard_cannot_hide_an_expired_record(self) -> None:
        # The hint that lets a lookup skip the trim is the time of the
        # record that went, or the first's: never later than the first's.
        for drop in ("count", "forget"):
            window = DedupWindow(DedupLimits(max_records=2, max_age_ms=1_000))
            window.begin(("p", "a"), T0)
            window.begin(("p", "b"), T0 + 10)
            if drop == "count":
                window.begin(("p", "c"), T0 + 20)  # "a" forgotten by count
            else:
                window.forget(("p", "a"))
            self.assertIsNone(window.lookup(("p", "b"), T0 + 1_011), drop)
            self.assertEqual(len(window), 1 if drop == "count" else 0, drop)

    def test_age_bound(self) -> None:
        window = DedupWindow(DedupLimits(max_age_ms=1_000))
        window.begin(("p", "old"), T0)
        window.begin(("p", "new"), T0 + 500)
        self.assertIsNotNone(window.lookup(("p", "old"), T0 + 1_000))
        self.assertIsNone(window.lookup(("p", "old"), T0 + 1_001))
        self.assertIsNotNone(window.lookup(("p", "new"), T0 + 1_001))
        window.trim(T0 + 1_501)
        self.assertEqual(len(window), 0)


class ShardedWindowTests(unittest.SynchronousTestCase):
    """A large window is split into shards of 4,096-8,191 records, so that no
    dict it resizes holds more (see ``SHARD_RECORDS``); the bounds hold over
    the whole window."""

    def test_the_default_window_is_16_shards_of_6250(self) -> None:
        window = DedupWindow(DedupLimits())
        self.assertEqual(len(window._shards), 16)
        self.assertEqual(window._shard_records, 6250)
        self.assertEqual(len(DedupWindow(DedupLimits(max_records=8191))._shards), 1)
        self.assertEqual(len(DedupWindow(DedupLimits(max_records=8192))._shards), 2)

    def test_the_count_bound_holds_over_the_whole_window(self) -> None:
        window = DedupWindow(DedupLimits(max_records=20_000))  # 4 shards of 5,000
        keys = [("p", f"m-{i}") for i in range(60_000)]
        for i, key in enumerate(keys):
            window.begin(key, T0 + i)
        self.assertLessEqual(len(window), 20_000)
        # Every shard full: the window holds all its records.
        self.assertEqual([len(shard) for shard in window._shards], [5_000] * 4)
        # The newest are remembered, the oldest forgotten, shard by shard
        # (each shard gets a quarter of the keys, give or take a few dozen).
        self.assertTrue(all(window.lookup(key, T0 + 60_000) for key in keys[-16_000:]))
        self.assertFalse(any(window.lookup(key, T0 + 60_000) for key in keys[:38_000]))
        for shard in window._shards:
            created = [entry[0] for entry in shard.values()]
            self.assertEqual(created, sorted(created), "each shard: oldest first")

    def test_the_age_bound_holds_in_every_shard(self) -> None:
        window = DedupWindow(DedupLimits(max_records=100_000, max_age_ms=1_000))
        old = [("p", f"old-{i}") for i in range(1_000)]
        for key in old:
            window.begin(key, T0)
        window.begin(("p", "new"), T0 + 500)
        # A lookup never finds an expired record, whichever shard it is in.
        self.assertFalse(any(window.lookup(key, T0 + 1_001) for key in old[:100]))
        self.assertIsNotNone(window.lookup(("p", "new"), T0 + 1_001))
        window.trim(T0 + 1_001)
        self.assertEqual(len(window), 1)
        window.trim(T0 + 1_501)
        self.assertEqual(len(window), 0)

    def test_every_window_has_shards_of_4096_to_8191(self) -> None:
        for max_records in range(8_192, 3_000_000, 7_919):
            window = DedupWindow(DedupLimits(max_records=max_records))
            shards = len(window._shards)
            self.assertEqual(shards & (shards - 1), 0, "a power of two")
            self.assertTrue(4_096 <= window._shard_records < 8_192, max_records)
            self.assertLessEqual(shards * window._shard_records, max_records)

    def test_one_id_from_many_sessions_is_spread(self) -> None:
        # Clients that count their ids send the same ids from every session:
        # the whole key picks the shard, so those fill the window evenly.
        window = DedupWindow(DedupLimits())  # 16 shards of 6,250
        keys = [(f"s:session-{n}", "1") for n in range(50_000)]
        for key in keys:
            window.begin(key, T0)
        self.assertEqual(len(window), 50_000)
        self.assertTrue(all(window.lookup(key, T0 + 1) for key in keys))

    def test_forget_and_settle_find_the_shard(self) -> None:
        window = DedupWindow(DedupLimits())
        keys = [("p", f"m-{i}") for i in range(200)]
        for key in keys:
            window.begin(key, T0)
        for key in keys[::2]:
            window.settle(key, ack_envelope("n", T0, key[1]))
        for key in keys[1::2]:
            window.forget(key)
        self.assertEqual(len(window), 100)
        for key in keys[::2]:
            found = window.lookup(key, T0 + 1)
            assert found is not None and found.reply is not None
            self.assertEqual(found.reply.ref, key[1])
        self.assertFalse(any(window.lookup(key, T0 + 1) for key in keys[1::2]))


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
