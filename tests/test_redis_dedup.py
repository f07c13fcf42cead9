"""Shared dedup on one real Redis: a turn's claims and records go together.

To one Redis they are plain ``SET`` commands written at once and answered by
one callback (``CommandProtocol.send_commands``); to a Redis that refuses
``SET NX GET`` (before 7.0), and to a Redis Cluster, one script call
(docs/cluster.md, "Shared dedup"). Every test runs a real redis-server on a
free port (tests/redis_harness.py); a missing one fails, never skips.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import txredisapi
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.helpers.cluster import ClusterCase, Node
from tests.redis_harness import RedisProcess
from tests.wsclient import async_test, sleep, wait_until
from warpsocket.backends.redis.connection import set_command, set_options
from warpsocket.protocol.envelope import Envelope, MessageType


def _calls(redis: RedisProcess, *commands: str) -> int:
    """How many times Redis ran ``commands``, from INFO commandstats."""
    total = 0
    for line in redis.command("INFO", "commandstats").decode().splitlines():
        if line.startswith(tuple(f"cmdstat_{c}:" for c in commands)):
            total += int(line.split("calls=")[1].split(",")[0])
    return total


def _evals(redis: RedisProcess) -> int:
    return _calls(redis, "eval", "evalsha")


def _rejected_evals(redis: RedisProcess) -> int:
    """Script calls Redis refused before running them (a cluster's MOVED among them)."""
    total = 0
    for line in redis.command("INFO", "commandstats").decode().splitlines():
        if line.startswith(("cmdstat_eval:", "cmdstat_evalsha:")):
            total += int(line.split("rejected_calls=")[1].split(",")[0])
    return total


def _reply(ref: str) -> Envelope:
    return Envelope(type=MessageType.ACK, id=f"a-{ref}", timestamp=1, ref=ref)


class _Writes:
    """Counts what a node writes to its command connection: each txredisapi
    command (``execute_command``) and each ``send_commands`` batch (its one
    write, ``_write``), whichever way the bytes then leave."""

    def __init__(self, node: Node) -> None:
        self.count = 0
        cmd = node.backend.connections.cmd
        execute, write = cmd.execute_command, cmd._write

        def execute_counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return execute(*args, **kwargs)

        def write_counted(data: bytes) -> None:
            self.count += 1
            write(data)

        cmd.execute_command = execute_counted
        cmd._write = write_counted


class QuietCase(ClusterCase):
    """Nodes that send nothing on their own meanwhile (no canary each second)."""

    async def quiet_node(self) -> Node:
        a = self.node("a", replace(self.redis_options(), canary_interval=3600.0))
        await self.healthy(a)
        return a


class DedupBatchTests(QuietCase):
    """One turn's dedup work is one write: plain commands (``native``)."""

    native = True

    async def dedup_node(self) -> tuple[RedisProcess, Node]:
        redis = self.start_redis()
        a = await self.quiet_node()
        a.backend.dedup.native = self.native
        return redis, a

    def assert_calls(self, redis: RedisProcess, before: tuple[int, int], sets: int) -> None:
        """``sets`` SET commands since ``before``, or one script call instead."""
        evals, plain = _evals(redis) - before[0], _calls(redis, "set") - before[1]
        if self.native:
            self.assertEqual((evals, plain), (0, sets))
        else:
            self.assertEqual(evals, 1)

    def counts(self, redis: RedisProcess) -> tuple[int, int]:
        return _evals(redis), _calls(redis, "set")

    @async_test
    async def test_one_turns_claims_and_records_go_together(self) -> None:
        redis, a = await self.dedup_node()
        writes = _Writes(a)
        before = self.counts(redis)
        claims = [a.backend.claim("s:p", f"m{n}", 0) for n in range(20)]
        for n in range(5):
            a.backend.record("s:p", f"old{n}", _reply(f"old{n}"))
        got = [await claim for claim in claims]
        self.assertTrue(all(claim.first for claim in got))
        self.assert_calls(redis, before, 25)
        self.assertEqual(writes.count, 1)
        # Claimed again in one later turn: answered with what is there.
        before = self.counts(redis)
        a.backend.record("s:p", "m1", _reply("m1"))
        again = [
            await c for c in [a.backend.claim("s:p", "m1", 0), a.backend.claim("s:p", "m2", 0)]
        ]
        assert again[0].reply is not None
        self.assertEqual((again[0].first, again[0].reply.ref), (False, "m1"))
        self.assertEqual((again[1].first, again[1].reply), (False, None))  # claimed, no answer yet
        self.assert_calls(redis, before, 3)
        self.assertEqual(writes.count, 2)

    @async_test
    async def test_claims_answered_by_callback_share_the_turns_write(self) -> None:
        redis, a = await self.dedup_node()
        a.backend.record("s:p", "done", _reply("done"))
        await sleep(0.1)
        writes = _Writes(a)
        before = self.counts(redis)
        heard: list[tuple[Any, Any]] = []

        def decided(claim: Any, context: Any) -> None:
            if context == "broken":
                raise RuntimeError("a waiter's bug")
            heard.append((context, claim))

        a.backend.claim_then("s:p", "broken", 0, decided, "broken")
        for n in range(5):
            a.backend.claim_then("s:p", f"n{n}", 0, decided, n)
        a.backend.claim_then("s:p", "done", 0, decided, "done")
        deferred = a.backend.claim("s:p", "n0", 0)  # the same id again, the same turn
        self.assertEqual(heard, [])  # answered when Redis answers
        await wait_until(lambda: len(heard) == 6, what="every claim answered")
        self.assertEqual([context for context, _ in heard], [0, 1, 2, 3, 4, "done"])
        self.assertTrue(all(claim.first for _, claim in heard[:5]))
        done = heard[5][1]
        self.assertEqual((done.first, done.reply.ref), (False, "done"))
        self.assertEqual(((await deferred).first, (await deferred).reply), (False, None))
        self.assert_calls(redis, before, 8)
        self.assertEqual(writes.count, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @async_test
    async def test_every_kind_of_reply_is_recorded_as_its_json(self) -> None:
        from warpsocket.core.messages import error_envelope
        from warpsocket.protocol.codecs import packed_result
        from warpsocket.protocol.datamodel import DataLimits

        redis, a = await self.dedup_node()
        data = {"name": 'Zoë ✓ "q"', "n": [1, 2.5, None, True], "nested": {"": {}}}
        packed = packed_result({"name": "Zoë ✓", "n": 2.5, "ok": True, "none": None}, DataLimits())
        self.assertIsNotNone(packed)
        replies = {
            "ack": _reply("ack"),
            "result": Envelope(type=MessageType.RESULT, id="r", timestamp=5, ref="c1", data=data),
            "packed": Envelope(type=MessageType.RESULT, id="p", timestamp=6, ref="c2", data=packed),
            "error": error_envelope("x", 7, 4300, "handler failed", "c3"),
            "ünïcode ✓": _reply("ünïcode ✓"),
        }
        for name, reply in replies.items():
            a.backend.record("s:p", name, reply)
        await sleep(0.2)
        for name, reply in replies.items():
            stored = redis.command("GET", a.backend.keys.dedup("s:p", name))
            text = stored.split(b"\r\n", 1)[1].rsplit(b"\r\n", 1)[0].decode()
            self.assertEqual(json.loads(text), json.loads(json.dumps(reply.to_wire())), name)
            ttl = int(redis.command("PTTL", a.backend.keys.dedup("s:p", name)).strip(b":\r\n"))
            self.assertTrue(a.backend.dedup.age_ms - 5000 < ttl <= a.backend.dedup.age_ms, ttl)
            claim = await a.backend.claim("s:p", name, 0)
            self.assertEqual(claim.reply.to_wire(), reply.to_wire(), name)


class DedupScriptTests(DedupBatchTests):
    """The same, with one script call per turn (a Redis before 7.0)."""

    native = False


class DedupErrorTests(ClusterCase):
    @async_test
    async def test_an_error_reply_costs_only_its_own_claim(self) -> None:
        """A claim Redis refuses (here: its key holds a list) is answered as
        if Redis were away (first: the node's own window applies); the other
        claims of the turn get their real answers."""
        redis = self.start_redis()
        a = self.node("a")
        await self.healthy(a)
        redis.command("RPUSH", a.backend.keys.dedup("s:p", "odd"), "x")
        a.backend.record("s:p", "done", _reply("done"))
        await sleep(0.1)
        got = [
            await claim
            for claim in [
                a.backend.claim("s:p", "odd", 0),
                a.backend.claim("s:p", "new", 0),
                a.backend.claim("s:p", "done", 0),
            ]
        ]
        self.assertEqual([c.first for c in got], [True, True, False])
        assert got[2].reply is not None
        self.assertEqual(got[2].reply.ref, "done")
        # Not a reason to drop the connection (READONLY would be).
        cmd = a.backend.connections.cmd
        await sleep(0.1)
        self.assertIs(a.backend.connections.cmd, cmd)
        self.assertTrue(cmd.connected)
        # (A script call fails as a whole: every claim of its turn answered first.)

    @async_test
    async def test_a_value_that_is_not_utf8_is_taken_and_costs_nothing_else(self) -> None:
        redis = self.start_redis()
        a = self.node("a")
        await self.healthy(a)
        key = a.backend.keys.dedup("s:p", "bin")
        script = "return redis.call('SET', KEYS[1], string.char(255, 254))"
        redis.command("EVAL", script, "1", key)
        got = [await c for c in [a.backend.claim("s:p", "bin", 0), a.backend.claim("s:p", "ok", 0)]]
        self.assertEqual([(c.first, c.reply) for c in got], [(False, None), (True, None)])


class DedupFallbackTests(ClusterCase):
    @async_test
    async def test_a_redis_that_refuses_set_nx_get_gets_the_script(self) -> None:
        """Redis before 7.0 answers ``SET .. NX .. GET`` with a syntax error:
        that turn's claims are sent again as the script, and so are later ones."""
        redis = self.start_redis()
        a = self.node("a")
        await self.healthy(a)
        dedup = a.backend.dedup
        # What an older Redis answers, from a Redis 7: an option it does not know.
        dedup._claim_options = set_options("NX", "PX", 1000, "GET", "NOTANOPTION")
        a.backend.record("s:p", "done", _reply("done"))
        await sleep(0.1)
        before = _evals(redis)
        # One turn: two claims and a record (records are plain SETs either way).
        turn = [a.backend.claim("s:p", n, 0) for n in ("x", "y", "done")]
        a.backend.record("s:p", "z", _reply("z"))
        got = [await claim for claim in turn]
        self.assertEqual([c.first for c in got], [True, True, False])
        assert got[2].reply is not None
        self.assertEqual(got[2].reply.ref, "done")
        self.assertFalse(dedup.native)
        self.assertEqual(_evals(redis) - before, 1)
        again = [await c for c in [a.backend.claim("s:p", "x", 0), a.backend.claim("s:p", "z", 0)]]
        self.assertEqual((again[0].first, again[0].reply), (False, None))
        assert again[1].reply is not None
        self.assertEqual(again[1].reply.ref, "z")
        self.assertEqual(_evals(redis) - before, 2)


class ClusterDedupTests(QuietCase):
    """On a Redis Cluster of three masters: each master gets the plain
    commands of its keys in one write; what a master redirects (a slot moved
    or being moved) goes again by script through the cluster client's routing."""

    redis_cluster = True

    def key(self, a: Node, message_id: str) -> str:
        return str(a.backend.keys.dedup("s:p", message_id))

    def ids_in_slot(self, a: Node, slot: int, count: int, prefix: str) -> list[str]:
        from warpsocket.backends.redis.slots import key_slot

        found = []
        for n in range(200_000):
            if key_slot(self.key(a, f"{prefix}{n}")) == slot:
                found.append(f"{prefix}{n}")
                if len(found) == count:
                    return found
        raise AssertionError("no ids found")

    def per_master(self, cluster: Any, *commands: str) -> list[int]:
        return [_calls(master, *commands) for master in cluster.masters]

    def move_slot(self, cluster: Any, slot: int, source: Any, target: Any, *keys: str) -> None:
        """MIGRATING/IMPORTING, then ``keys`` moved to ``target`` (the slot still the source's)."""
        source_id = source.command("CLUSTER", "MYID").split(b"\r\n")[1].decode()
        target_id = target.command("CLUSTER", "MYID").split(b"\r\n")[1].decode()
        target.command("CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id)
        source.command("CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id)
        if keys:
            reply = source.command(
                "MIGRATE", "127.0.0.1", str(target.port), "", "0", "5000", "KEYS", *keys
            )
            self.assertEqual(reply, b"+OK\r\n")
        self.target_id = target_id

    async def stored(self, master: Any, key: str) -> None:
        await wait_until(lambda: master.command("EXISTS", key) == b":1\r\n", what=key)

    def hand_over(self, cluster: Any, slot: int) -> None:
        for master in cluster.masters:
            master.command("CLUSTER", "SETSLOT", str(slot), "NODE", self.target_id)

    @async_test
    async def test_each_master_gets_its_keys_in_one_write(self) -> None:
        cluster = self.start_redis()
        a = await self.quiet_node()
        conns = a.backend.connections.cmd.conns
        self.assertEqual(len(conns), 3)
        writes = {address: 0 for address in conns}
        for address, conn in conns.items():

            def counted(data: bytes, address: Any = address, write: Any = conn._write) -> None:
                writes[address] += 1
                write(data)

            conn._write = counted
        ids = [f"m{n}" for n in range(30)]
        recorded = [f"old{n}" for n in range(6)]
        owners = [cluster.owner(self.key(a, i)) for i in ids + recorded]
        self.assertEqual({o.port for o in owners}, {m.port for m in cluster.masters})
        sets, evals = self.per_master(cluster, "set"), self.per_master(cluster, "eval", "evalsha")
        claims = [a.backend.claim("s:p", i, 0) for i in ids]
        for i in recorded:
            a.backend.record("s:p", i, _reply(i))
        got = [await claim for claim in claims]
        self.assertTrue(all(claim.first for claim in got))
        expected = [sum(o is m for o in owners) for m in cluster.masters]
        after = self.per_master(cluster, "set")
        self.assertEqual([x - y for x, y in zip(after, sets, strict=True)], expected)
        self.assertEqual(self.per_master(cluster, "eval", "evalsha"), evals)
        self.assertEqual(list(writes.values()), [1, 1, 1])  # one write per master
        # A later turn: answered with what each master holds.
        a.backend.record("s:p", "m1", _reply("m1"))
        again = [await c for c in [a.backend.claim(p, "m1", 0) for p in ("s:p",)]]
        assert again[0].reply is not None
        self.assertEqual((again[0].first, again[0].reply.ref), (False, "m1"))
        taken = [await a.backend.claim("s:p", i, 0) for i in ids[2:5]]
        self.assertEqual([(c.first, c.reply) for c in taken], [(False, None)] * 3)
        self.assertEqual(self.per_master(cluster, "eval", "evalsha"), evals)

    @async_test
    async def test_a_slot_handed_over_is_followed_and_learned(self) -> None:
        """The node's map still names the old master, which answers MOVED: the
        turn's claims and records of that slot go again by script to the new
        one, and the next turn's plain commands go to it directly."""
        from warpsocket.backends.redis.slots import key_slot

        cluster = self.start_redis()
        a = await self.quiet_node()
        source, target = cluster.masters[0], cluster.masters[1]
        slot = key_slot(self.key(a, "seed"))
        while cluster.owner(self.key(a, self.ids_in_slot(a, slot, 1, "p")[0])) is not source:
            slot = (slot + 97) % 16384
        done, fresh, later, recorded = self.ids_in_slot(a, slot, 4, "q")
        elsewhere = next(
            f"e{n}" for n in range(1000) if cluster.owner(self.key(a, f"e{n}")) is target
        )
        a.backend.record("s:p", done, _reply(done))
        await self.stored(source, self.key(a, done))
        self.move_slot(cluster, slot, source, target, self.key(a, done))
        self.hand_over(cluster, slot)
        turn = [a.backend.claim("s:p", i, 0) for i in (done, fresh, elsewhere)]
        a.backend.record("s:p", recorded, _reply(recorded))
        got = [await claim for claim in turn]
        assert got[0].reply is not None
        self.assertEqual((got[0].first, got[0].reply.ref), (False, done))
        self.assertEqual([c.first for c in got[1:]], [True, True])
        await self.stored(target, self.key(a, recorded))
        # Three plain commands were redirected (two claims and the record);
        # the new master was learned from them, so each went again straight
        # to it, never to the old master a second time.
        self.assertEqual(a.backend.stats.get("moved", 0), 3)
        self.assertEqual(_rejected_evals(source), 0)
        # Learned: the next turn goes to the new master as plain commands.
        cmd = a.backend.connections.cmd
        self.assertEqual(cmd.slots.master_of(slot)[1], target.port)
        moved, evals = a.backend.stats["moved"], _evals(target)
        self.assertTrue((await a.backend.claim("s:p", later, 0)).first)
        retry = await a.backend.claim("s:p", recorded, 0)
        assert retry.reply is not None
        self.assertEqual(retry.reply.ref, recorded)
        self.assertEqual((a.backend.stats["moved"], _evals(target)), (moved, evals))

    @async_test
    async def test_an_error_reply_costs_only_its_own_claim(self) -> None:
        """As on one Redis: a claim a master refuses (its key holds a list) is
        answered first (the node's own window), the turn's other claims, on
        every master, get their real answers, and the connections stay."""
        cluster = self.start_redis()
        a = await self.quiet_node()
        cluster.command("RPUSH", self.key(a, "odd"), "x")
        others = [f"n{n}" for n in range(9)]
        a.backend.record("s:p", "n0", _reply("n0"))
        await self.stored(cluster.owner(self.key(a, "n0")), self.key(a, "n0"))
        cmd = a.backend.connections.cmd
        got = [await c for c in [a.backend.claim("s:p", i, 0) for i in ["odd", *others]]]
        self.assertEqual([c.first for c in got], [True, False] + [True] * 8)
        assert got[1].reply is not None
        self.assertEqual(got[1].reply.ref, "n0")
        await sleep(0.1)
        self.assertIs(a.backend.connections.cmd, cmd)  # not dropped (READONLY would be)

    @async_test
    async def test_a_master_lost_with_batches_in_flight_answers_every_claim(self) -> None:
        """Batches wait on all three masters; one master dies. The cluster's
        command connections go as one, so every claim of the turn is
        answered as if Redis were away (first: the node's own window), none
        is left waiting; with the master back, claims go to Redis again."""
        cluster = self.start_redis()
        a = await self.quiet_node()
        ids = [f"w{n}" for n in range(12)]
        owners = {cluster.owner(self.key(a, i)).port for i in ids}
        self.assertEqual(len(owners), 3)
        cluster.command("CLIENT", "PAUSE", "3000", "WRITE")
        heard: list[Any] = []
        for i in ids:
            a.backend.claim_then("s:p", i, 0, lambda claim, i: heard.append((i, claim)), i)
        await sleep(0.2)
        self.assertEqual(heard, [])  # written, waiting on the paused masters
        cluster.masters[0].kill()
        await wait_until(lambda: len(heard) == len(ids), 5, "every claim answered")
        self.assertEqual(sorted(i for i, _ in heard), sorted(ids))
        self.assertTrue(all(claim.first and claim.reply is None for _, claim in heard))
        cluster.masters[0].start()
        cluster.command("CLIENT", "UNPAUSE")
        cluster.wait_until_ok()
        await self.healthy(a, timeout=30)
        claimed = await a.backend.claim("s:p", "after", 0)
        self.assertTrue(claimed.first)
        again = await a.backend.claim("s:p", "after", 0)
        self.assertEqual((again.first, again.reply), (False, None))  # held in Redis

    @async_test
    async def test_a_slot_being_migrated_is_asked_of_its_new_master(self) -> None:
        """While a slot migrates, the old master answers ASK for a key it no
        longer holds: the claim goes to the new master (ASKING, then the
        script) and gets what is recorded there."""
        from warpsocket.backends.redis.slots import key_slot

        cluster = self.start_redis()
        a = await self.quiet_node()
        source, target = cluster.masters[2], cluster.masters[0]
        slot = 16383
        self.assertIs(cluster.owner(self.key(a, self.ids_in_slot(a, slot, 1, "p")[0])), source)
        done, fresh = self.ids_in_slot(a, slot, 2, "r")
        a.backend.record("s:p", done, _reply(done))
        await self.stored(source, self.key(a, done))
        self.move_slot(cluster, slot, source, target, self.key(a, done))
        got = [await c for c in [a.backend.claim("s:p", i, 0) for i in (done, fresh)]]
        assert got[0].reply is not None
        self.assertEqual((got[0].first, got[0].reply.ref), (False, done))
        self.assertTrue(got[1].first)
        self.assertGreater(a.backend.stats.get("ask", 0), 0)
        # Each redirected claim alone: never split over the two masters (TRYAGAIN).
        self.assertEqual(a.backend.stats.get("tryagain", 0), 0)
        self.assertEqual(key_slot(self.key(a, fresh)), slot)
        # The new key was created where the slot is going (ASKING).
        count = ("CLUSTER", "COUNTKEYSINSLOT", str(slot))
        self.assertEqual(target.command(*count), b":2\r\n")  # done and fresh
        self.assertEqual(source.command(*count), b":0\r\n")


class SendCommandsTests(QuietCase):
    """``CommandProtocol.send_commands``: replies are matched by order, among
    txredisapi's own commands on the same connection."""

    async def command_connection(self) -> tuple[RedisProcess, Any]:
        redis = self.start_redis()
        a = await self.quiet_node()
        return redis, a.backend.connections.cmd

    @async_test
    async def test_replies_come_back_together_in_order_among_other_commands(self) -> None:
        _, cmd = await self.command_connection()
        heard: list[Any] = []
        before = cmd.set("t:before", "1")
        options = set_options("PX", 60_000)
        commands = b"".join(set_command(f"t:k{n}", b"v%d" % n, options) for n in range(3))
        commands += b"*2\r\n$3\r\nGET\r\n$4\r\nt:k1\r\n*2\r\n$4\r\nINCR\r\n$4\r\nt:k2\r\n"
        cmd.send_commands(commands, 5, heard.append, heard.append)
        after = cmd.get("t:k0")
        self.assertEqual(await before, "OK")
        self.assertEqual(await after, "v0")
        self.assertEqual(len(heard), 1)
        replies = heard[0]
        self.assertEqual(replies[:4], ["OK", "OK", "OK", "v1"])
        self.assertIsInstance(replies[4], txredisapi.ResponseError)  # "v2" is no integer

    @async_test
    async def test_an_eager_batch_then_a_command_in_one_turn_keep_their_order(self) -> None:
        _, cmd = await self.command_connection()
        heard: list[Any] = []
        cmd.send_commands(set_command("t:e", b"1", set_options()), 1, heard.append, heard.append)
        after = cmd.incr("t:e")
        self.assertEqual(await after, 2)
        self.assertEqual(heard, [["OK"]])

    @async_test
    async def test_a_lost_connection_fails_what_waits(self) -> None:
        redis, cmd = await self.command_connection()
        redis.command("CLIENT", "PAUSE", "2000", "ALL")
        failed: list[Any] = []
        answered: list[Any] = []
        cmd.send_commands(
            set_command("t:k", b"v", set_options()), 1, answered.append, failed.append
        )
        waiting = cmd.get("t:k")
        cmd.transport.abortConnection()
        await wait_until(lambda: bool(failed), what="failed")
        self.assertIsInstance(failed[0], txredisapi.ConnectionError)
        with self.assertRaises(txredisapi.ConnectionError):
            await waiting
        self.assertEqual(answered, [])

    @async_test
    async def test_what_is_sent_when_the_connection_is_lost_is_refused(self) -> None:
        _, cmd = await self.command_connection()
        refused: list[Any] = []

        def failed(reason: Exception) -> None:
            # Sent again from the failure's listener: refused at once, not
            # left waiting on a connection that is gone.
            cmd.send_commands(b"*1\r\n$4\r\nPING\r\n", 1, refused.append, refused.append)

        cmd.send_commands(b"*1\r\n$4\r\nPING\r\n", 1, lambda _: None, failed)
        cmd.transport.abortConnection()
        await wait_until(lambda: bool(refused), what="refused")
        self.assertIsInstance(refused[0], txredisapi.ConnectionError)
        self.assertEqual(len(cmd._expected), 0)

    @async_test
    async def test_no_reply_within_the_timeout_drops_the_connection(self) -> None:
        redis, cmd = await self.command_connection()
        cmd.replyTimeout = 0.3
        redis.command("CLIENT", "PAUSE", "3000", "ALL")
        failed: list[Any] = []
        cmd.send_commands(b"*1\r\n$4\r\nPING\r\n", 1, failed.append, failed.append)
        await sleep(0.1)
        self.assertEqual(failed, [])
        await wait_until(lambda: bool(failed), 0.6, "timed out by the batch's own timer")
        self.assertIsInstance(failed[0], txredisapi.ConnectionError)
        self.assertFalse(cmd.connected)  # dropped: the backend opens a new one

    @async_test
    async def test_no_commands_are_answered_at_once(self) -> None:
        _, cmd = await self.command_connection()
        heard: list[Any] = []
        cmd.send_commands(b"", 0, heard.append, heard.append)
        self.assertEqual(heard, [[]])
        self.assertEqual(await cmd.ping(), "PONG")

    @async_test
    async def test_commands_leave_at_once_not_after_the_next_poll(self) -> None:
        from warpsocket._compat import socket_buffered

        _, cmd = await self.command_connection()
        heard: list[Any] = []
        cmd.send_commands(b"*1\r\n$4\r\nPING\r\n", 1, heard.append, heard.append)
        self.assertEqual(socket_buffered(cmd.transport), 0)  # handed to the kernel
        await wait_until(lambda: bool(heard), what="the reply")
        self.assertEqual(heard, [["PONG"]])


class _Master:
    """A master's command connection that answers what the test says."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.batches: list[tuple[bytes, int]] = []
        self.answer: Any = None  # replies for the next batch: a list, or a function of it

    def send_commands(self, commands: bytes, count: int, answered: Any, failed: Any) -> None:
        self.batches.append((commands, count))
        replies = self.answer(commands) if callable(self.answer) else self.answer
        answered(replies if replies is not None else [None] * count)


class _Cluster:
    """The cluster client's surface that ``Dedup`` uses: masters by slot,
    scripts (``eval``, answered "claimed" for every claim) and redirects learned."""

    def __init__(self, masters: dict[int, _Master | None]) -> None:
        self.masters = masters
        self.scripts: list[tuple[list[str], list[Any]]] = []
        self.learned: list[str] = []

    def connection_at(self, slot: int) -> _Master | None:
        return self.masters[slot]

    def eval(self, script: str, keys: list[str], args: list[Any]) -> Any:
        from twisted.internet.defer import succeed

        self.scripts.append((keys, args))
        return succeed([1] * (len(keys) - int(args[2])))

    def learn_redirect(self, message: str) -> None:
        self.learned.append(message)


class _Link:
    def __init__(self, cmd: _Cluster) -> None:
        self.cmd = cmd
        self.troubles: list[str] = []

    def trouble(self, conn: Any, failure: Any) -> None:
        self.conn_was_cmd = conn is self.cmd
        self.troubles.append(failure.getErrorMessage())


class DedupRoutingTests(unittest.TestCase):
    """A Redis Cluster's plain path on stand-ins (no Redis): what goes where
    when a master is unknown, when a master redirects, when it is too old."""

    def dedup(self, masters: dict[int, _Master | None]) -> tuple[Any, _Link, Clock]:
        from warpsocket.backends.redis.dedup import Dedup
        from warpsocket.backends.redis.keys import Keys

        link = _Link(_Cluster(masters))
        clock = Clock()
        # A key's slot: the digit after "m" in its message id.
        dedup = Dedup(link, Keys("t:"), 60_000, clock, slot_of=lambda key: int(key[-2]))
        return dedup, link, clock

    def claims(self, dedup: Any, ids: list[str]) -> list[Any]:
        heard: list[Any] = []
        for message_id in ids:
            dedup.claim_then("s:p", message_id, 0, lambda c, i: heard.append((i, c)), message_id)
        return heard

    def test_a_key_of_an_unknown_master_goes_by_script(self) -> None:
        known = _Master("a")
        dedup, link, clock = self.dedup({1: known, 2: None})
        heard = self.claims(dedup, ["m1a", "m2a", "m1b"])
        clock.advance(0)
        self.assertEqual([count for _, count in known.batches], [2])
        self.assertEqual([keys for keys, _ in link.cmd.scripts], [["t:dedup:s:p:m2a"]])
        self.assertEqual(sorted(i for i, c in heard if c.first), ["m1a", "m1b", "m2a"])

    def test_redirected_commands_go_again_alone_and_moved_is_learned(self) -> None:
        master = _Master("a")
        moved = txredisapi.ResponseError("MOVED 1 127.0.0.1:7001")
        asked = txredisapi.ResponseError("ASK 1 127.0.0.1:7002")
        # Records first: m1r (moved), then claims m1a (moved), m1b (asked), m1c (claimed).
        master.answer = [moved, moved, asked, None]
        dedup, link, clock = self.dedup({1: master})
        dedup.record("s:p", "m1r", _reply("m1r"))
        heard = self.claims(dedup, ["m1a", "m1b", "m1c"])
        clock.advance(0)
        self.assertEqual(len(link.cmd.learned), 3)  # each redirect, in order
        self.assertEqual(link.cmd.learned[0], "MOVED 1 127.0.0.1:7001")
        # Each key alone (never a script split over two masters), the record too.
        self.assertEqual(
            [keys for keys, _ in link.cmd.scripts],
            [["t:dedup:s:p:m1r"], ["t:dedup:s:p:m1a"], ["t:dedup:s:p:m1b"]],
        )
        self.assertEqual([i for i, _ in heard], ["m1c", "m1a", "m1b"])
        self.assertEqual(link.troubles, [])  # a redirect is no trouble

    def test_a_cluster_too_old_for_set_nx_get_gets_scripts_per_slot(self) -> None:
        old = _Master("a")
        refused = txredisapi.ResponseError("ERR syntax error")
        wrong = txredisapi.ResponseError("WRONGTYPE Operation against a key")
        old.answer = [wrong, refused, refused, refused]  # a record, then three claims
        dedup, link, clock = self.dedup({1: old, 2: old})
        dedup.record("s:p", "m1r", _reply("m1r"))
        heard = self.claims(dedup, ["m1a", "m2a", "m1b"])
        clock.advance(0)
        self.assertFalse(dedup.native)
        # The claims again, one script per slot; the other error is reported.
        self.assertEqual(
            sorted(keys for keys, _ in link.cmd.scripts),
            [["t:dedup:s:p:m1a", "t:dedup:s:p:m1b"], ["t:dedup:s:p:m2a"]],
        )
        self.assertEqual(link.troubles, ["WRONGTYPE Operation against a key"])
        self.assertTrue(link.conn_was_cmd)
        self.assertEqual(sorted(i for i, c in heard if c.first), ["m1a", "m1b", "m2a"])
        # Later turns: scripts from the start.
        self.claims(dedup, ["m2b"])
        clock.advance(0)
        self.assertEqual(len(old.batches), 1)
        self.assertEqual(link.cmd.scripts[-1][0], ["t:dedup:s:p:m2b"])
