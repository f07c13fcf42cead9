"""Redis Cluster: slots, routing, sharded pub/sub, a slot migrated live, one master lost.

The shared cluster suites (tests/test_cluster*.py) run every test on a
Redis Cluster too (``RedisCluster...`` classes); this module covers what only
a cluster has. Every cluster here is three real redis-server masters on free
ports (tests/redis_harness.py); a missing redis-server fails, never skips.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage
from twisted.trial import unittest

from tests.helpers.cluster import ClusterCase, events
from tests.redis_harness import RedisProcess
from tests.wsclient import async_test, sleep, wait_until
from warpsocket.backends.base import BackendUnavailableError
from warpsocket.backends.redis import RedisBackend, RedisOptions
from warpsocket.backends.redis.keys import Keys
from warpsocket.backends.redis.slots import (
    SlotMap,
    SlotRange,
    crc16,
    key_slot,
    parse_cluster_slots,
    parse_redirect,
)
from warpsocket.server.cli import Options


class SlotTests(unittest.TestCase):
    def test_crc16_and_key_slots_match_redis(self) -> None:
        # The reference values of the Redis Cluster specification.
        self.assertEqual(crc16(b"123456789"), 0x31C3)
        self.assertEqual(key_slot("foo"), 12182)
        self.assertEqual(key_slot("{user1000}.following"), key_slot("{user1000}.followers"))
        self.assertEqual(key_slot("{user1000}.following"), key_slot("user1000"))
        # An empty tag is no tag; only the first {...} counts.
        self.assertEqual(key_slot("foo{}{bar}"), crc16(b"foo{}{bar}") % 16384)
        self.assertEqual(key_slot("foo{{bar}}zap"), key_slot("{bar"))
        self.assertEqual(key_slot("foo{bar}{zap}"), key_slot("bar"))

    def test_a_streams_keys_and_channel_share_one_slot(self) -> None:
        keys = Keys("p:", cluster=True)
        for stream in ("room:chat", "broadcast", "direct:s1", "room:a}b", "room:{x}", "room:}{"):
            names = {keys.meta(stream), keys.history(stream), keys.channel(stream)}
            self.assertEqual(len({key_slot(n) for n in names}), 1, (stream, names))
        # Different streams spread over the slots.
        spread = {key_slot(keys.meta(f"room:r{n}")) for n in range(50)}
        self.assertGreater(len(spread), 40)
        # One Redis: the names stay as they were.
        self.assertEqual(Keys("p:").meta("room:chat"), "p:s:room:chat")

    def test_slot_map(self) -> None:
        slots = SlotMap(
            [SlotRange(5461, 16383, ("h", 2)), SlotRange(0, 5460, ("h", 1))],
        )
        self.assertTrue(slots.covers_all())
        self.assertEqual(slots.master_of(0), ("h", 1))
        self.assertEqual(slots.master_of(5461), ("h", 2))
        self.assertEqual(slots.masters, [("h", 1), ("h", 2)])
        slots.move(7, ("h", 3))
        self.assertEqual(slots.master_of(7), ("h", 3))
        self.assertIn(("h", 3), slots.masters)
        self.assertFalse(SlotMap([SlotRange(0, 100, ("h", 1))]).covers_all())
        self.assertIsNone(SlotMap([SlotRange(0, 100, ("h", 1))]).master_of(101))

    def test_cluster_slots_reply_is_validated(self) -> None:
        good = [[0, 16383, [b"", 7000, b"id"]]]
        self.assertEqual(parse_cluster_slots(good, "10.0.0.1").master_of(9), ("10.0.0.1", 7000))
        for bad in (
            None,
            b"x",
            [[0]],
            [[0, 16384, [b"h", 7000]]],
            [[5, 1, [b"h", 7000]]],
            [[0, 1, [b"h", 70000]]],
            [[0, 1, [b"h"]]],
            [[0, 1, b"h"]],
        ):
            with self.assertRaises(ValueError, msg=repr(bad)):
                parse_cluster_slots(bad, "h")

    def test_redirects(self) -> None:
        self.assertEqual(
            parse_redirect("MOVED 3999 127.0.0.1:6381"), ("MOVED", 3999, ("127.0.0.1", 6381))
        )
        self.assertEqual(parse_redirect("ASK 1 ::1:7000"), ("ASK", 1, ("::1", 7000)))
        for other in ("ERR x", "MOVED 1", "MOVED x h:1", "ASK 1 h:p", "MOVED 1 h"):
            self.assertIsNone(parse_redirect(other))

    def test_options(self) -> None:
        options = RedisOptions(url=None, cluster=("127.0.0.1:7000",))
        self.assertEqual(options.cluster, ("127.0.0.1:7000",))
        self.assertRaises(ValueError, RedisOptions, url=None, cluster=("nope",))
        self.assertRaises(ValueError, RedisOptions, cluster=("127.0.0.1:7000",))  # and a URL


class CommandBuilderTests(unittest.TestCase):
    def test_the_fast_builder_writes_what_txredisapi_writes(self) -> None:
        import txredisapi

        from warpsocket.backends.redis.connection import build_command

        reference = txredisapi.RedisProtocol("utf-8")
        for args in (
            ("SET", "k", "v", "PX", 10, "GET"),
            ("EVALSHA", "abc", 2, "k1", "k2", 1.5, b"raw\r\n", "\u00e9\u2603", 0, -3, True),
            ("PING",),
        ):
            self.assertEqual(
                build_command(args, "utf-8", "strict"), reference._build_command(*args)
            )


class CommandLineTests(unittest.TestCase):
    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(list(args))
        return options

    def test_redis_cluster_option(self) -> None:
        options = self.parse(
            "--redis-cluster", "127.0.0.1:7000", "--redis-cluster", "10.0.0.2:7001"
        )
        backend = options["backend"]
        self.assertIsInstance(backend, RedisBackend)
        self.assertEqual(backend.options.cluster, ("127.0.0.1:7000", "10.0.0.2:7001"))
        self.assertIsNone(backend.options.url)
        self.assertTrue(backend.keys.cluster)
        for args in (
            ("--redis-cluster", "no-port"),
            ("--redis-cluster", "127.0.0.1:7000", "--redis", "redis://127.0.0.1:6379/0"),
            ("--redis-cluster", "127.0.0.1:7000", "--redis-sentinel", "127.0.0.1:26379"),
        ):
            self.assertRaises(usage.UsageError, self.parse, *args)


def _ids(reply: bytes) -> list[bytes]:
    """The channel names in a raw ``PUBSUB SHARDCHANNELS`` reply."""
    return [line for line in reply.split(b"\r\n") if line and line[:1] not in b"*$:"]


class DiscoveryStopTests(unittest.TestCase):
    """``ClusterConnections.stop`` during a slot map read: the seeds not yet
    tried are not tried any more (a stopped backend opened the next seed as
    the cancelled attempt failed over to it, and left it connecting)."""

    def test_stop_while_reading_the_slot_map_opens_nothing_more(self) -> None:
        from twisted.internet.defer import Deferred
        from twisted.internet.task import Clock
        from twisted.logger import Logger

        from warpsocket.backends.redis import cluster as cluster_module

        attempts: list[Deferred[Any]] = []

        def open_connection(reactor: Any, timeout: float, factory: Any) -> Deferred[Any]:
            attempt: Deferred[Any] = Deferred()  # never connects by itself
            attempts.append(attempt)
            return attempt

        self.patch(cluster_module, "open_connection", open_connection)
        options = RedisOptions(url=None, cluster=("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"))
        connections = cluster_module.ClusterConnections(
            options,
            Clock(),
            later=lambda *args: None,
            stats={},
            log=Logger(),
            on_message=lambda channel, message: None,
            on_connected=lambda kind, conn: None,
            on_lost=lambda kind, lost: None,
        )
        connections.start()
        self.assertEqual(len(attempts), 2)  # the first seed, for cmd and for sub
        connections.stop()
        self.assertEqual(len(attempts), 2)  # no later seed tried
        self.assertTrue(all(attempt.called for attempt in attempts))  # all cancelled
        self.flushLoggedErrors()


class RedisClusterTests(ClusterCase):
    redis_cluster = True

    def room_on(self, cluster: Any, master: RedisProcess, avoid: str = "") -> str:
        """A room name whose stream lives on ``master``."""
        keys = Keys("t:", cluster=True)
        for n in range(1000):
            room = f"r{n}"
            if room != avoid and cluster.owner(keys.meta(f"room:{room}")) is master:
                return room
        raise AssertionError("no room found")

    @async_test
    async def test_pubsub_is_sharded_and_spread_over_the_masters(self) -> None:
        cluster = self.start_redis()
        a, b = self.node("a"), self.node("b")
        await self.healthy(a, b)
        rooms = [self.room_on(cluster, master) for master in cluster.masters]
        client = await self.client(b, rooms=rooms)
        for n, room in enumerate(rooms):
            await a.hub.publish(room, "n", n)
        for n, room in enumerate(rooms):
            await wait_until(lambda r=room, n=n: events(client, f"room:{r}") == [n])
        keys = Keys("t:", cluster=True)
        for master, room in zip(cluster.masters, rooms, strict=True):
            channel = keys.channel(f"room:{room}").encode()
            # The room's channel is a shard channel of its master only.
            self.assertIn(channel, _ids(master.command("PUBSUB", "SHARDCHANNELS")))
            for other in cluster.masters:
                if other is not master:
                    self.assertNotIn(channel, _ids(other.command("PUBSUB", "SHARDCHANNELS")))
            # Not classic pub/sub, which every master would carry.
            self.assertNotIn(channel, _ids(master.command("PUBSUB", "CHANNELS")))
        # Every master carries a canary of each node: each shard subscriber is proven.
        self.assertEqual(len(a.backend.canary_channels), 3)
        # Other single-key calls are routed by their key too.
        cmd = a.backend.connections.cmd
        for n in range(6):
            self.assertEqual(int(await cmd.incr(f"t:counter:{n}")), 1)
            self.assertEqual(int(await cmd.delete(f"t:counter:{n}")), 1)
            self.assertIsNone(await cmd.get(f"t:counter:{n}"))

    @async_test
    async def test_a_slot_migrated_live_is_followed(self) -> None:
        """MIGRATING/IMPORTING, keys moved (ASK), then the slot handed over (MOVED)."""
        cluster = self.start_redis()
        source, target = cluster.masters[0], cluster.masters[1]
        room = self.room_on(cluster, source)
        keys = Keys("t:", cluster=True)
        slot = str(key_slot(keys.meta(f"room:{room}")))
        a, b = self.node("a"), self.node("b")
        await self.healthy(a, b)
        client = await self.client(b, rooms=[room])
        for n in range(3):
            await a.hub.publish(room, "n", n)
        await wait_until(lambda: events(client, f"room:{room}") == [0, 1, 2])
        source_id = source.command("CLUSTER", "MYID").split(b"\r\n")[1].decode()
        target_id = target.command("CLUSTER", "MYID").split(b"\r\n")[1].decode()
        target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        moved = [keys.meta(f"room:{room}"), keys.history(f"room:{room}")]
        reply = source.command(
            "MIGRATE", "127.0.0.1", str(target.port), "", "0", "5000", "KEYS", *moved
        )
        self.assertEqual(reply, b"+OK\r\n")
        # The source answers ASK; the target TRYAGAIN (the channel, a key of the
        # script, is not there), so the publish is retried until the slot is handed over.
        publishing = a.hub.publish(room, "n", 3)
        await sleep(0.1)
        for master in cluster.masters:
            master.command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        await publishing
        for n in range(4, 7):
            await a.hub.publish(room, "n", n)  # MOVED, then the new owner directly
        await wait_until(lambda: events(client, f"room:{room}") == list(range(7)), 15, "all")
        offsets = [m["offset"] for m in client.messages if m.get("stream") == f"room:{room}"]
        self.assertEqual(offsets, list(range(1, 8)))
        stats = a.backend.stats
        self.assertGreater(stats.get("ask", 0), 0, stats)
        self.assertGreater(stats.get("tryagain", 0), 0, stats)
        self.assertGreater(stats.get("moved", 0), 0, stats)
        await self.healthy(a, b)

    @async_test
    async def test_one_master_killed_and_restarted(self) -> None:
        """Its shard's streams start a new epoch; the other shards' carry on recovered."""
        cluster = self.start_redis()
        lost_master = cluster.masters[2]
        kept_room = self.room_on(cluster, cluster.masters[0])
        lost_room = self.room_on(cluster, lost_master)
        a, b = self.node("a"), self.node("b")
        await self.healthy(a, b)
        client = await self.client(b, rooms=[kept_room, lost_room])
        # A session of node a whose record lives on the master that will be lost
        # (node a's own liveness key lives on another one: t:node:a, slot 0-5460).
        self.assertIs(cluster.owner("t:node:a"), cluster.masters[0])
        for _ in range(30):
            resident = await self.client(a)
            if cluster.owner(f"t:session:{resident.session}") is lost_master:
                break
        else:
            raise AssertionError("no session record on the lost master")
        record = f"t:session:{resident.session}"
        self.assertEqual(lost_master.command("EXISTS", record), b":1\r\n")
        for n in range(3):
            await a.hub.publish(kept_room, "n", n)
            await a.hub.publish(lost_room, "n", n)
        await wait_until(lambda: len(events(client, f"room:{lost_room}")) == 3)
        before = dict(client.positions)
        lost_master.kill()
        await wait_until(lambda: a.hub.health is not None, 10, "degraded")
        lost_master.start()
        cluster.wait_until_ok()
        await self.healthy(a, b, timeout=20)
        await a.hub.publish(kept_room, "n", 3)
        await a.hub.publish(lost_room, "n", 3)
        await wait_until(lambda: events(client, f"room:{kept_room}") == [0, 1, 2, 3])
        await wait_until(lambda: 3 in events(client, f"room:{lost_room}"), what="lost shard")
        kept = [m for m in client.messages if m.get("stream") == f"room:{kept_room}"]
        lost = [m for m in client.messages if m.get("stream") == f"room:{lost_room}"]
        self.assertEqual(kept[-1]["epoch"], before[f"room:{kept_room}"]["epoch"])
        self.assertNotEqual(lost[-1]["epoch"], before[f"room:{lost_room}"]["epoch"])
        # Node a noticed that shard's data loss (its liveness key there was gone)
        # and wrote its session records again.
        await wait_until(
            lambda: lost_master.command("EXISTS", record) == b":1\r\n", 10, "record rewritten"
        )
        # A client resuming from the old positions: one stream recovered, one not.
        other = await self.client(a, streams=before, rooms=[kept_room, lost_room])
        assert other.welcome is not None
        streams = other.welcome["data"]["streams"]
        self.assertTrue(streams[f"room:{kept_room}"]["recovered"], streams)
        self.assertFalse(streams[f"room:{lost_room}"]["recovered"], streams)
        await sleep(0.1)

    @async_test
    async def test_failover_to_a_replica_during_traffic(self) -> None:
        """A master dies, its replica is promoted: as with Sentinel, nothing is lost
        that was accepted, nothing is delivered twice, and every node heals."""
        cluster = self.start_redis()
        master = cluster.masters[1]
        replica = cluster.add_replica(master)
        room = self.room_on(cluster, master)
        a, b = self.node("a"), self.node("b")
        await self.healthy(a, b)
        client = await self.client(b, rooms=[room])
        for n in range(3):
            await a.hub.publish(room, "n", n)
        await wait_until(lambda: events(client, f"room:{room}") == [0, 1, 2])
        # What it replicated is what survives (replication is asynchronous):
        # everything the master took so far reaches the replica first.
        written = _replication(master, "master_repl_offset")
        await wait_until(
            lambda: _replication(replica, "slave_repl_offset") >= written, 10, "replica caught up"
        )
        master.kill()
        sent = [0, 1, 2]
        refused = []
        for n in range(3, 60):
            try:
                await a.hub.publish(room, "n", n)
                sent.append(n)
            except BackendUnavailableError:
                refused.append(n)  # the sender is told; never delivered
            await sleep(0.05)
        self.assertTrue(refused)
        await wait_until(lambda: b"role:master" in replica.command("INFO", "replication"), 20)
        await self.healthy(a, b, timeout=20)
        await a.hub.publish(room, "n", 99)
        sent.append(99)
        await wait_until(lambda: 99 in events(client, f"room:{room}"), 20, "after failover")
        got = events(client, f"room:{room}")
        self.assertEqual(got, sorted(got))  # in order, once each
        self.assertEqual(len(got), len(set(got)))
        self.assertEqual([d for d in got if d in sent], got)  # nothing unaccepted
        self.assertEqual(set(sent) - set(got), set())  # nothing accepted lost
        stream = [m for m in client.messages if m.get("stream") == f"room:{room}"]
        self.assertEqual({m["epoch"] for m in stream}, {stream[0]["epoch"]})  # same epoch


def _replication(redis: RedisProcess, field: str) -> int:
    """A number from ``INFO replication`` (an offset: how far the stream of
    writes got on this node)."""
    text = redis.command("INFO", "replication").decode("utf-8", "replace")
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split(":", 1)[1])
    raise AssertionError(f"no {field} in INFO replication: {text!r}")
