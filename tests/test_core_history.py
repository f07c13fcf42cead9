"""Tests for warpsocket.core.history and warpsocket.core.store (protocol.md 5)."""

from __future__ import annotations

from twisted.trial import unittest

from warpsocket.core.history import HistoryLimits, Position, StreamHistory, expired_placeholder
from warpsocket.core.ids import SequentialIds
from warpsocket.core.keys import wire_name
from warpsocket.core.store import MemoryStreamStore
from warpsocket.protocol import Envelope, ErrorCode, MessageType

T0 = 1_764_300_000_000


def template(ident: str, *, ttl: int | None = None, timestamp: int = T0) -> Envelope:
    return Envelope(
        type=MessageType.EVENT, id=ident, timestamp=timestamp, event="e", data=ident, ttl=ttl
    )


def history(max_messages: int = 1000, max_age_ms: int = 300_000) -> StreamHistory:
    return StreamHistory("room:chat", "e1", HistoryLimits(max_messages, max_age_ms))


def offsets(messages: list[Envelope] | None) -> list[int | None] | None:
    return None if messages is None else [m.offset for m in messages]


class HistoryLimitsTests(unittest.SynchronousTestCase):
    def test_defaults(self) -> None:
        limits = HistoryLimits()
        self.assertEqual((limits.max_messages, limits.max_age_ms), (1000, 300_000))

    def test_validation(self) -> None:
        self.assertRaises(ValueError, HistoryLimits, 0, 1)
        self.assertRaises(ValueError, HistoryLimits, 1, 0)


class OffsetTests(unittest.SynchronousTestCase):
    def test_empty_stream(self) -> None:
        stream = history()
        self.assertEqual(stream.position, Position(0, "e1"))
        self.assertEqual(len(stream), 0)
        self.assertEqual(stream.read_after(Position(0, "e1"), T0), [])

    def test_offsets_are_consecutive_from_one(self) -> None:
        stream = history()
        stored = [stream.append(template(f"m{i}"), T0 + i) for i in range(3)]
        self.assertEqual([m.offset for m in stored], [1, 2, 3])
        self.assertEqual({m.stream for m in stored}, {"room:chat"})
        self.assertEqual({m.epoch for m in stored}, {"e1"})
        self.assertEqual([m.id for m in stored], ["m0", "m1", "m2"])
        self.assertEqual(stream.position, Position(3, "e1"))
        self.assertEqual(stream.last_offset, 3)

    def test_template_is_not_changed(self) -> None:
        original = template("m1")
        history().append(original, T0)
        self.assertIsNone(original.offset)
        self.assertIsNone(original.stream)

    def test_read_after(self) -> None:
        stream = history()
        for i in range(5):
            stream.append(template(f"m{i}"), T0)
        self.assertEqual(offsets(stream.read_after(Position(0, "e1"), T0)), [1, 2, 3, 4, 5])
        self.assertEqual(offsets(stream.read_after(Position(3, "e1"), T0)), [4, 5])
        self.assertEqual(stream.read_after(Position(5, "e1"), T0), [])

    def test_other_epoch(self) -> None:
        stream = history()
        stream.append(template("m1"), T0)
        self.assertIsNone(stream.read_after(Position(0, "e0"), T0))
        self.assertIsNone(stream.read_after(Position(1, "e0"), T0))

    def test_position_from_the_future(self) -> None:
        stream = history()
        stream.append(template("m1"), T0)
        self.assertIsNone(stream.read_after(Position(2, "e1"), T0))


class BoundTests(unittest.SynchronousTestCase):
    def test_count_bound(self) -> None:
        stream = history(max_messages=3)
        for i in range(5):
            stream.append(template(f"m{i}"), T0)
        self.assertEqual(len(stream), 3)
        # 3, 4, 5 are kept: 1 and 2 are gone.
        self.assertIsNone(stream.read_after(Position(0, "e1"), T0))
        self.assertIsNone(stream.read_after(Position(1, "e1"), T0))
        self.assertEqual(offsets(stream.read_after(Position(2, "e1"), T0)), [3, 4, 5])
        self.assertEqual(offsets(stream.read_after(Position(4, "e1"), T0)), [5])

    def test_age_bound(self) -> None:
        stream = history(max_age_ms=1_000)
        stream.append(template("m1"), T0)
        stream.append(template("m2"), T0 + 500)
        stream.append(template("m3"), T0 + 900)
        # Exactly max_age old is still kept.
        self.assertEqual(offsets(stream.read_after(Position(0, "e1"), T0 + 1_000)), [1, 2, 3])
        # One ms later message 1 is gone: from 0 nothing can be read, from 1 all.
        self.assertIsNone(stream.read_after(Position(0, "e1"), T0 + 1_001))
        self.assertEqual(offsets(stream.read_after(Position(1, "e1"), T0 + 1_001)), [2, 3])
        self.assertIsNone(stream.read_after(Position(2, "e1"), T0 + 1_901))
        self.assertEqual(len(stream), 0)

    def test_all_trimmed(self) -> None:
        stream = history(max_age_ms=10)
        for i in range(3):
            stream.append(template(f"m{i}"), T0)
        later = T0 + 1_000
        # Nothing kept: any position behind the head cannot be served...
        for offset in (0, 1, 2):
            self.assertIsNone(stream.read_after(Position(offset, "e1"), later))
        # ...but the head itself has nothing to miss.
        self.assertEqual(stream.read_after(Position(3, "e1"), later), [])
        # Offsets keep counting after the history emptied.
        self.assertEqual(stream.append(template("m4"), later).offset, 4)
        self.assertEqual(offsets(stream.read_after(Position(3, "e1"), later)), [4])

    def test_append_trims_by_age(self) -> None:
        stream = history(max_age_ms=100)
        stream.append(template("m1"), T0)
        stream.append(template("m2"), T0 + 200)
        self.assertEqual(len(stream), 1)

    def test_never_a_silent_gap(self) -> None:
        """Every read either returns all of (position, head] or None."""
        stream = history(max_messages=4, max_age_ms=50)
        now = T0
        for i in range(30):
            now += 7 * (i % 5)
            stream.append(template(f"m{i}"), now)
            for offset in range(stream.last_offset + 1):
                got = offsets(stream.read_after(Position(offset, "e1"), now))
                if got is not None:
                    self.assertEqual(got, list(range(offset + 1, stream.last_offset + 1)))


class PlaceholderTests(unittest.SynchronousTestCase):
    def test_expired_messages_become_placeholders(self) -> None:
        stream = history()
        stream.append(template("m1", ttl=100), T0)
        stream.append(template("m2"), T0)
        stream.append(template("m3", ttl=10_000), T0)
        fresh = stream.read_after(Position(0, "e1"), T0 + 99)
        assert fresh is not None
        self.assertEqual([m.data for m in fresh], ["m1", "m2", "m3"])
        replay = stream.read_after(Position(0, "e1"), T0 + 100)
        assert replay is not None
        placeholder, kept, alive = replay
        self.assertEqual(placeholder.code, int(ErrorCode.EXPIRED))
        self.assertIsNone(placeholder.data)
        self.assertIsNone(placeholder.event)
        self.assertEqual(
            (placeholder.id, placeholder.stream, placeholder.offset, placeholder.epoch),
            ("m1", "room:chat", 1, "e1"),
        )
        self.assertEqual(placeholder.type, MessageType.EVENT)
        self.assertIsNone(placeholder.ttl)
        self.assertEqual((kept.data, kept.code), ("m2", None))
        self.assertEqual((alive.data, alive.code), ("m3", None))

    def test_placeholder_is_a_valid_wire_event(self) -> None:
        stored = history().append(template("m1", ttl=5), T0)
        wire = expired_placeholder(stored).to_wire()
        self.assertEqual(Envelope.from_wire(wire), expired_placeholder(stored))
        self.assertNotIn("data", wire)


class StoreTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.store = MemoryStreamStore(HistoryLimits(), SequentialIds("ep"))

    def test_wire_names(self) -> None:
        self.assertEqual(wire_name("direct:s-1"), "direct")
        self.assertEqual(wire_name("broadcast"), "broadcast")
        self.assertEqual(wire_name("room:chat"), "room:chat")

    def test_streams_are_independent(self) -> None:
        a = self.store.append("room:a", template("m1"), T0)
        b = self.store.append("direct:s-1", template("m2"), T0)
        self.assertEqual((a.stream, a.offset), ("room:a", 1))
        self.assertEqual((b.stream, b.offset), ("direct", 1))
        self.assertNotEqual(a.epoch, b.epoch)
        self.assertEqual(len(self.store), 2)
        self.assertEqual(self.store.position("room:a"), Position(1, "ep-1"))
        self.assertEqual(offsets(self.store.read_after("direct:s-1", Position(0, "ep-2"), T0)), [1])

    def test_drop_changes_the_epoch(self) -> None:
        self.store.append("direct:s-1", template("m1"), T0)
        before = self.store.position("direct:s-1")
        self.store.drop("direct:s-1")
        self.store.drop("direct:unknown")  # no error
        after = self.store.position("direct:s-1")
        self.assertEqual(after.offset, 0)
        self.assertNotEqual(after.epoch, before.epoch)
        self.assertIsNone(self.store.read_after("direct:s-1", before, T0))


class CollectTests(unittest.SynchronousTestCase):
    def test_unused_streams_whose_history_aged_out_are_forgotten(self) -> None:
        limits = HistoryLimits(max_messages=10, max_age_ms=1_000)
        epochs = iter(f"e{i}" for i in range(100))
        store = MemoryStreamStore(limits, lambda: next(epochs))
        store.append("room:gone", template("m1"), T0)
        store.append("room:kept", template("m2"), T0)
        store.position("room:fresh")  # created, never written
        old = store.position("room:gone")
        in_use = {"room:kept"}.__contains__
        self.assertEqual(store.collect(in_use, T0 + 10), 1)  # only the empty one
        self.assertEqual(store.collect(in_use, T0 + 2_000), 1)  # "gone" aged out
        self.assertEqual(len(store), 1)
        # Coming back, it is a new epoch: a reader of the old one is told.
        self.assertNotEqual(store.position("room:gone").epoch, old.epoch)
        self.assertIsNone(store.read_after("room:gone", old, T0 + 2_001))


class UnwrittenStreamTests(unittest.SynchronousTestCase):
    """A stream read but never written keeps only its epoch (``MemoryStreamStore._epochs``)
    and answers exactly as an empty history would."""

    def test_never_written_streams_answer_as_empty_histories(self) -> None:
        limits = HistoryLimits(max_messages=10)
        epochs = iter(f"e{i}" for i in range(100))
        store = MemoryStreamStore(limits, lambda: next(epochs))
        empty = StreamHistory("direct", "x", limits)
        start = store.position("direct:s1")
        self.assertEqual(start, Position(empty.position.offset, start.epoch))
        self.assertEqual(store.position("direct:s1"), start)  # the same epoch, kept
        self.assertEqual(store.read_after("direct:s1", start, T0), [])
        self.assertEqual(empty.read_after(Position(0, "x"), T0), [])
        for offset, same_epoch in ((1, True), (0, False), (-1, True)):
            epoch = start.epoch if same_epoch else "other"
            self.assertIsNone(store.read_after("direct:s1", Position(offset, epoch), T0))
            # ... as the empty history answers the same question.
            theirs = Position(offset, "x" if same_epoch else "other")
            self.assertIsNone(empty.read_after(theirs, T0))
        self.assertEqual(store._streams, {})
        # The first append continues the epoch readers were given.
        stored = store.append("direct:s1", template("m1"), T0)
        self.assertEqual((stored.offset, stored.epoch, stored.stream), (1, start.epoch, "direct"))
        self.assertEqual(store.read_after("direct:s1", start, T0), [stored])
        self.assertEqual(store._epochs, {})

    def test_dropped_or_collected_unwritten_streams_come_back_with_a_new_epoch(self) -> None:
        epochs = iter(f"e{i}" for i in range(100))
        store = MemoryStreamStore(HistoryLimits(), lambda: next(epochs))
        first = store.position("direct:s1")
        store.position("direct:s2")
        store.drop("direct:s1")
        self.assertNotEqual(store.position("direct:s1").epoch, first.epoch)
        self.assertEqual(len(store), 2)
        in_use = {"direct:s1"}.__contains__
        self.assertEqual(store.collect(in_use, T0), 1)
        self.assertEqual(len(store), 1)
