"""Acknowledged sends across nodes (warpsocket/server/remote_acks.py).

The cluster tests run real redis-server processes (a missing binary fails
them); the RemoteAcks unit tests run on a Clock.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.helpers.cluster import ClusterCase
from tests.wsclient import WsClient, async_test, sleep, wait_until
from warpsocket.backends.base import AckNotice
from warpsocket.core.server import QueueFullError
from warpsocket.protocol.codes import ErrorCode
from warpsocket.server.hub import AckTimeoutError
from warpsocket.server.remote_acks import RemoteAcks


def direct_event(client: WsClient, data: Any) -> Deferred[dict[str, Any]]:
    return client.wait_for(lambda m: m.get("stream") == "direct" and m.get("data") == data)


class CrossNodeAckTests(ClusterCase):
    @async_test
    async def test_acked_send_to_a_session_on_another_node(self) -> None:
        self.start_redis()
        a, b = self.node("a"), self.node("b")
        await self.healthy(a, b)
        client = await self.client(b)
        assert client.session is not None
        by_ref = a.hub.send(client.session, "e", 1, ack=True, timeout=10)
        event = await direct_event(client, 1)
        self.assertTrue(event["ack"])
        self.assertFalse(by_ref.called)  # not before the client says so
        client.ack(event["id"])
        await by_ref
        cumulative = [a.hub.send(client.session, "e", n, ack=True, timeout=10) for n in (2, 3)]
        last = await direct_event(client, 3)
        client.send({"type": "ack", "stream": "direct", "offset": last["offset"]})
        for waiter in cumulative:
            await waiter

    @async_test
    async def test_unacknowledged_remote_send_times_out(self) -> None:
        self.start_redis()
        a, b = self.node("a"), self.node("b")
        await self.healthy(a, b)
        client = await self.client(b)
        assert client.session is not None
        waiter = a.hub.send(client.session, "e", 1, ack=True, timeout=0.5)
        await direct_event(client, 1)
        with self.assertRaises(AckTimeoutError):
            await waiter

    @async_test
    async def test_ack_after_the_session_moved_settles_the_senders_waiter(self) -> None:
        self.start_redis()
        a, b = self.node("a"), self.node("b")
        await self.healthy(a, b)
        first = await self.client(a)
        session = first.session
        assert session is not None
        waiter = a.hub.send(session, "e", 1, ack=True, timeout=10)
        event = await direct_event(first, 1)
        await first.drop()  # the ack never left
        await wait_until(lambda: not a.hub.is_connected(session), what="detached on a")
        resumed = await self.client(b, session=session, streams=first.positions)
        self.assertEqual(resumed.session, session)
        self.assertFalse(waiter.called)
        # a still tracks the message (its core has the pending ack); the
        # client acknowledges on b, cumulatively.
        resumed.send({"type": "ack", "stream": "direct", "offset": event["offset"]})
        await waiter


class CrossNodeAckEpochTests(ClusterCase):
    @async_test
    async def test_cumulative_acks_of_a_new_direct_epoch_are_announced(self) -> None:
        """After Redis lost its data the direct offsets start again at 1: an ack
        through 1 of the new epoch is news, though the old epoch was acked to 2."""
        redis = self.start_redis()
        a, b = self.node("a"), self.node("b")
        await self.healthy(a, b)
        client = await self.client(a)
        session = client.session
        assert session is not None
        before = [b.hub.send(session, "e", n, ack=True, timeout=10) for n in (1, 2)]
        last = await direct_event(client, 2)
        client.send({"type": "ack", "stream": "direct", "offset": last["offset"]})
        for waiter in before:
            await waiter
        redis.command("FLUSHALL")
        await sleep(2.5)  # the nodes notice on their next tick
        await self.healthy(a, b)
        after = b.hub.send(session, "e", 3, ack=True, timeout=5)
        event = await direct_event(client, 3)
        self.assertNotEqual(event["epoch"], last["epoch"])
        self.assertLessEqual(event["offset"], last["offset"])
        client.send({"type": "ack", "stream": "direct", "offset": event["offset"]})
        await after


class RemoteAcksTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.acks = RemoteAcks(self.clock, 2, lambda s, o: AckTimeoutError(s, o, ErrorCode.TIMEOUT))

    def test_by_ref_and_cumulative_within_the_epoch(self) -> None:
        one = self.acks.wait("s", 1, "E", "m1", 5)
        two = self.acks.wait("s", 2, "E", "m2", 5)
        self.acks.acknowledged(AckNotice("s", through=2, epoch="other"))
        self.assertFalse(one.called or two.called)  # another epoch's offsets
        self.acks.acknowledged(AckNotice("s", ref="m2"))
        self.assertTrue(two.called)
        self.assertFalse(one.called)
        self.acks.acknowledged(AckNotice("s", through=1, epoch="E"))
        self.assertTrue(one.called)
        self.assertEqual(len(self.acks), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_notice_before_the_wait_settles_it_at_once(self) -> None:
        self.acks.acknowledged(AckNotice("s", ref="m9"))
        self.acks.acknowledged(AckNotice("s", through=4, epoch="E"))
        self.assertTrue(self.acks.wait("s", 9, "E", "m9", 5).called)
        self.assertTrue(self.acks.wait("s", 4, "E", "m4", 5).called)
        self.assertFalse(self.acks.wait("s", 5, "E", "m5", 5).called)

    def test_timeout_and_bound(self) -> None:
        failures: list[Any] = []
        self.acks.wait("s", 1, "E", "m1", 5).addErrback(failures.append)
        self.acks.wait("s", 2, "E", "m2", 10).addErrback(failures.append)
        with self.assertRaises(QueueFullError):
            self.acks.check("s")
        self.acks.check("t")  # per session
        self.clock.advance(5)
        self.assertEqual([f.value.offset for f in failures], [1])
        self.assertIsInstance(failures[0].value, AckTimeoutError)
        self.acks.check("s")  # room again
        self.clock.advance(5)
        self.assertEqual(len(failures), 2)
        self.assertEqual(len(self.acks), 0)

    def test_the_same_offset_in_two_epochs_is_two_messages(self) -> None:
        """After Redis lost its data, direct offsets start again under a new epoch."""
        failures: list[Any] = []
        old = self.acks.wait("s", 5, "E1", "m-old", 30)
        old.addErrback(failures.append)
        self.clock.advance(20)
        new = self.acks.wait("s", 5, "E2", "m-new", 30)
        self.acks.acknowledged(AckNotice("s", through=5, epoch="E2"))
        self.assertTrue(new.called)
        self.assertFalse(old.called)
        self.clock.advance(10)  # the old one times out on its own schedule
        self.assertEqual([f.value.offset for f in failures], [5])
        self.assertEqual(len(self.acks), 0)

    def test_early_notices_by_id_are_kept_for_a_minute(self) -> None:
        self.acks.acknowledged(AckNotice("s", ref="m1"))
        self.clock.advance(61)
        self.assertFalse(self.acks.wait("s", 1, "E", "m1", 5).called)


# ---------------------------------------------------------------- on a Redis Cluster


class RedisClusterCrossNodeAckTests(CrossNodeAckTests):
    redis_cluster = True


class RedisClusterCrossNodeAckEpochTests(CrossNodeAckEpochTests):
    redis_cluster = True
