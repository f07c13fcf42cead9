"""ClientPool over real sockets: key affinity (rendezvous hashing), order per
key, one member cut while the others carry on, several nodes, rooms."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial import unittest

from tests.helpers.client import FAST, ServerFixture, make_hub, wait_until
from warpsocket.client.client import Message
from warpsocket.client.options import ClientOptions
from warpsocket.client.pool import ClientPool
from warpsocket.server.context import Context


class PoolTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.hub = make_hub()
        # key -> [(session, seq)] in arrival order.
        self.arrived: defaultdict[str, list[tuple[str, int]]] = defaultdict(list)

        @self.hub.on("put")
        def put(ctx: Context, data: Any) -> None:
            self.arrived[data["key"]].append((ctx.session, data["seq"]))

        @self.hub.on("whoami")
        def whoami(ctx: Context, data: Any) -> str:
            return ctx.session

        self.server = ServerFixture(self, self.hub)

    def pool(self, urls: Any = None, size: int = 4) -> ClientPool:
        pool = ClientPool(urls or self.server.url, size, ClientOptions(backoff=FAST))
        self.addCleanup(pool.close)
        return pool


class AffinityTests(unittest.SynchronousTestCase):
    def test_a_key_always_maps_to_one_member_and_keys_spread(self) -> None:
        pool = ClientPool("ws://127.0.0.1:1/ws", 4)
        keys = [f"channel-{i}" for i in range(400)]
        first = [pool.index_for(key) for key in keys]
        self.assertEqual(first, [pool.index_for(key) for key in keys])
        counts = [first.count(i) for i in range(4)]
        self.assertTrue(all(60 <= count <= 140 for count in counts), counts)

    def test_growing_the_pool_moves_only_the_keys_of_the_new_member(self) -> None:
        urls = "ws://127.0.0.1:1/ws"
        four, five = ClientPool(urls, 4), ClientPool(urls, 5)
        keys = [f"k{i}" for i in range(1000)]
        moved = [key for key in keys if four.index_for(key) != five.index_for(key)]
        self.assertTrue(all(five.index_for(key) == 4 for key in moved))
        self.assertLess(len(moved), 300)  # about a fifth

    def test_bad_arguments(self) -> None:
        self.assertRaises(ValueError, ClientPool, [], 2)
        self.assertRaises(ValueError, ClientPool, "ws://127.0.0.1:1/ws", 0)


class OrderingTests(PoolTestCase):
    @inlineCallbacks
    def test_order_per_key_holds_and_each_key_has_one_session(self) -> Any:
        pool = self.pool()
        yield pool.connect()
        self.assertEqual(len(set(pool.sessions)), 4)
        sends = []
        for seq in range(30):
            for k in range(12):
                key = f"key-{k}"
                sends.append(pool.send("put", {"key": key, "seq": seq}, key=key, ack=True))
        yield gatherResults(sends)
        for k in range(12):
            key = f"key-{k}"
            arrivals = self.arrived[key]
            self.assertEqual([seq for _, seq in arrivals], list(range(30)))
            self.assertEqual({session for session, _ in arrivals}, {pool.member_for(key).session})
        used = {session for arrivals in self.arrived.values() for session, _ in arrivals}
        self.assertGreater(len(used), 1)

    @inlineCallbacks
    def test_keyless_calls_are_spread_round_robin(self) -> Any:
        pool = self.pool(size=3)
        yield pool.connect()
        sessions = yield gatherResults([pool.call("whoami") for _ in range(6)])
        self.assertEqual(sessions, pool.sessions * 2)


class MemberFailureTests(PoolTestCase):
    @inlineCallbacks
    def test_one_member_cut_resumes_its_keys_and_the_others_are_unaffected(self) -> Any:
        pool = self.pool()
        yield pool.connect()
        keys = [f"key-{k}" for k in range(16)]
        victim = pool.member_for(keys[0])
        victim_session = victim.session
        for seq in range(5):
            yield gatherResults(
                [pool.send("put", {"key": k, "seq": seq}, key=k, ack=True) for k in keys]
            )
        # Cut the victim's TCP connection from the server side, then keep sending.
        for connection in list(self.hub.port.connections.values()):
            if connection.session == victim_session:
                connection.abort()
        sends = []
        for seq in range(5, 25):
            sends += [pool.send("put", {"key": k, "seq": seq}, key=k, ack=True) for k in keys]
        yield gatherResults(sends)
        yield wait_until(lambda: victim.stats.resumes >= 1)
        for key in keys:
            arrivals = self.arrived[key]
            self.assertEqual([seq for _, seq in arrivals], list(range(25)), key)
            self.assertEqual({s for s, _ in arrivals}, {pool.member_for(key).session})
        self.assertEqual(victim.session, victim_session)  # resumed, not a new session
        others = [member for member in pool.members if member is not victim]
        self.assertEqual([member.stats.reconnects for member in others], [0, 0, 0])
        self.assertEqual(victim.stats.reconnects, 1)


class SeveralNodesTests(PoolTestCase):
    @inlineCallbacks
    def test_members_spread_over_urls_and_a_room_is_joined_once(self) -> Any:
        other_hub = make_hub()
        other = ServerFixture(self, other_hub)
        pool = self.pool([self.server.url, other.url], size=4)
        got: list[Any] = []

        def take(message: Message) -> None:
            got.append(message.data)

        pool.subscribe("news", take)
        yield pool.connect()
        self.assertEqual([m.url for m in pool.members], [self.server.url, other.url] * 2)
        self.assertEqual(len(self.hub.core.sessions), 2)
        self.assertEqual(len(other_hub.core.sessions), 2)
        member = pool.member_for("news")
        hub = self.hub if member.url == self.server.url else other_hub
        yield hub.publish("news", "story", 1)
        yield hub.publish("news", "story", 2)
        yield wait_until(lambda: len(got) == 2)
        self.assertEqual(got, [1, 2])
        self.assertEqual(sum(1 for m in pool.members if "news" in m.rooms), 1)
