"""The cluster: many nodes sharing one real Redis (docs/cluster.md).

Every test starts real redis-server (and redis-sentinel) processes on free
ports; a missing binary fails the test, it is never skipped. Nodes are a Hub
plus a WarpSocketService each, in this process, on their own ports, running
on the real reactor (their clocks must agree, as real nodes' do).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.trial import unittest

from tests.helpers.cluster import ClusterCase, events, reactor
from tests.redis_harness import RedisProcess, SentinelSetup
from tests.wsclient import WsClient, async_test, connect, http_get, sleep, wait_until
from warpsocket.backends.base import BackendUnavailableError
from warpsocket.backends.memory import MemoryBackend
from warpsocket.backends.redis import CLAIM_TTL_MS, RedisBackend, RedisOptions, parse_redis_url
from warpsocket.core.history import HistoryLimits, Position
from warpsocket.protocol.envelope import Envelope, MessageType


def template(n: int) -> Envelope:
    return Envelope(type=MessageType.EVENT, id=f"m{n}", timestamp=1, event="e", data=n)


def now_ms() -> int:
    return int(reactor.seconds() * 1000)


# ---------------------------------------------------------------- the shared suite


class BackendContract:
    """What every backend promises; run against memory and Redis alike.

    Not a TestCase itself: each subclass adds one and ``make_backend``.
    """

    make_backend: Callable[[], Awaitable[Any]]

    @async_test
    async def test_publish_assigns_offsets_and_delivers_in_order(self) -> None:
        test: Any = self
        backend = await self.make_backend()
        got: list[tuple[str, int | None]] = []
        backend.set_delivery(lambda key, stored: got.append((key, stored.offset)))
        await backend.prepare(["room:a"])
        start = backend.store.position("room:a")
        stored = [await backend.publish("room:a", template(n), now_ms()) for n in range(5)]
        test.assertEqual([s.offset for s in stored], [start.offset + n for n in range(1, 6)])
        test.assertEqual({s.stream for s in stored}, {"room:a"})
        await wait_until(lambda: len(got) == 5, what="delivery")
        test.assertEqual(got, [("room:a", s.offset) for s in stored])
        position = Position(start.offset + 2, stored[0].epoch)
        found = backend.store.read_after("room:a", position, now_ms())
        test.assertEqual([m.data for m in found], [2, 3, 4])
        test.assertIsNone(backend.store.read_after("room:a", Position(0, "other-epoch"), now_ms()))
        test.assertIsNone(backend.health)


class MemoryBackendTests(BackendContract, unittest.TestCase):
    async def make_backend(self) -> Any:
        return MemoryBackend(HistoryLimits())


class RedisBackendTests(BackendContract, ClusterCase):
    async def make_backend(self) -> Any:
        self.start_redis()
        backend = RedisBackend(self.redis_options("c:"), HistoryLimits())
        backend.start()
        self.addCleanup(backend.stop)
        await wait_until(lambda: backend.health is None, 10, "redis backend healthy")
        return backend

    def test_url_parsing(self) -> None:
        address = parse_redis_url("rediss://:s%40cret@redis.example:6380/3")
        self.assertEqual(
            (address.host, address.port, address.db, address.password, address.tls),
            ("redis.example", 6380, 3, "s@cret", True),
        )
        self.assertRaises(ValueError, parse_redis_url, "http://x")
        self.assertRaises(ValueError, RedisOptions, url=None)

    def test_a_port_taken_before_the_first_start_is_chosen_anew(self) -> None:
        # Another test process may bind a free port before this Redis does.
        import socket

        from tests.redis_harness import redis_command

        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            busy = taken.getsockname()[1]
            redis = RedisProcess()
            self.addCleanup(redis.cleanup)
            redis.port = busy
            redis.start()
            self.assertNotEqual(redis.port, busy)
            self.assertEqual(redis_command(redis.port, "PING"), b"+PONG\r\n")
            # Once started, a restart keeps its port (the tests rely on it).
            started = redis.port
            redis.restart()
            self.assertEqual(redis.port, started)

    def test_missing_redis_server_fails(self) -> None:
        # The harness raises (the test fails), it never skips.
        import tests.redis_harness as harness

        original = harness.shutil.which
        harness.shutil.which = lambda name: None  # type: ignore[assignment]
        try:
            self.assertRaises(RuntimeError, RedisProcess().start)
        finally:
            harness.shutil.which = original


# ---------------------------------------------------------------- nodes


class FanoutTests(ClusterCase):
    @async_test
    async def test_room_broadcast_and_unicast_across_three_nodes(self) -> None:
        self.start_redis()
        nodes = [self.node(f"n{i}") for i in range(3)]
        await self.healthy(*nodes)
        clients = [await self.client(node, rooms=["chat"]) for node in nodes]
        # A client room publish on node 0 reaches the room on every node, once.
        reply = await clients[0].request(
            {"type": "event", "event": "say", "room": "chat", "data": "hi", "ack": True}
        )
        self.assertEqual(reply["type"], "ack", reply)
        for n in range(5):
            await nodes[n % 3].hub.publish("chat", "say", n)
        await nodes[1].hub.broadcast("all", "everyone")
        for client in clients:
            await wait_until(lambda c=client: len(events(c, "room:chat")) == 6, what="room")
            await wait_until(lambda c=client: events(c, "broadcast") == ["everyone"])
            self.assertEqual(events(client, "room:chat"), ["hi", 0, 1, 2, 3, 4])
            offsets = [m["offset"] for m in client.messages if m.get("stream") == "room:chat"]
            self.assertEqual(offsets, [1, 2, 3, 4, 5, 6])
        # Unicast to a session that lives on another node.
        target = clients[2].session
        assert target is not None
        await nodes[0].hub.send(target, "dm", "psst")
        await wait_until(lambda: events(clients[2], "direct") == ["psst"], what="unicast")
        # Presence: every node sees the sessions of every node.
        await wait_until(
            lambda: all(len(n.hub.core.room_sessions.get("chat", ())) == 1 for n in nodes)
        )
        await sleep(1.2)  # presence is written on the next tick
        present = await nodes[0].hub.presence("chat")
        self.assertEqual(present, {c.session for c in clients})

    @async_test
    async def test_healthz_degraded_and_publish_rejected_while_redis_is_down(self) -> None:
        redis = self.start_redis()
        node = self.node("solo")
        await self.healthy(node)
        code, body, _ = await http_get(node.port, "/healthz")
        self.assertEqual((code, body), (200, b"ok\n"))
        client = await self.client(node, rooms=["r"])
        redis.kill()
        await wait_until(lambda: node.hub.health is not None, what="degraded")
        code, body, _ = await http_get(node.port, "/healthz")
        self.assertEqual(code, 503)
        self.assertTrue(body.startswith(b"degraded: "), body)
        with self.assertRaises(BackendUnavailableError):
            await node.hub.publish("r", "x", 1)
        reply = await client.request(
            {"type": "event", "event": "say", "room": "r", "data": 1, "ack": True}
        )
        self.assertEqual((reply["type"], reply["code"]), ("error", 4304))
        self.assertFalse(client.closed.called)  # local clients stay connected
        redis.start()
        await self.healthy(node)
        await node.hub.publish("r", "x", 2)
        await wait_until(lambda: events(client, "room:r") == [2], what="healed delivery")


class FailoverTests(ClusterCase):
    @async_test
    async def test_node_death_client_resumes_on_another_node_exactly_once(self) -> None:
        self.start_redis()
        a, b = self.node("a"), self.node("b")
        await self.healthy(a, b)
        client = await self.client(a, rooms=["live"])
        watcher = await self.client(b, rooms=["live"])
        session = client.session
        assert session is not None
        for n in range(3):
            await b.hub.publish("live", "tick", n)
        await wait_until(lambda: events(client, "room:live") == [0, 1, 2])
        await b.hub.send(session, "dm", "before")
        await wait_until(lambda: events(client, "direct") == ["before"])
        await sleep(0.1)
        a.kill()
        await client.wait_closed()
        # While the client is away, the cluster keeps going.
        for n in range(3, 6):
            await b.hub.publish("live", "tick", n)
        await b.hub.send(session, "dm", "while away")
        resumed = WsClient()
        resumed = await connect(b.port)
        self.clients.append(resumed)
        self.addCleanup(self._close, resumed)
        welcome = await resumed.hello(session=session, streams=client.positions, rooms=[])
        data = welcome["data"]
        self.assertTrue(data["resumed"], data)
        self.assertEqual(data["rooms"], ["live"])
        self.assertTrue(all(s["recovered"] for s in data["streams"].values()), data)
        await b.hub.publish("live", "tick", 6)
        await wait_until(lambda: len(events(resumed, "room:live")) == 4, what="replay and live")
        self.assertEqual(events(client, "room:live") + events(resumed, "room:live"), list(range(7)))
        self.assertEqual(events(resumed, "direct"), ["while away"])
        self.assertEqual(len(events(watcher, "room:live")), 7)

    @async_test
    async def test_shared_dedup_recognises_a_retry_on_another_node(self) -> None:
        self.start_redis()
        a, b = self.node("a"), self.node("b")
        await self.healthy(a, b)
        first = await self.client(a, rooms=["r"])
        message = {
            "type": "event",
            "id": "retry-1",
            "event": "say",
            "room": "r",
            "data": 1,
            "ack": True,
        }
        reply = await first.request(dict(message))
        self.assertEqual(reply["type"], "ack")
        second = await self.client(b, session=first.session)
        again = await second.request(dict(message))
        self.assertEqual((again["type"], again["ref"]), ("ack", "retry-1"))
        await sleep(0.3)
        self.assertEqual(a.backend.store.position("room:r").offset, 1)


class DedupClaimTests(ClusterCase):
    @async_test
    async def test_claim_of_a_message_whose_connection_died_is_released(self) -> None:
        """Claimed in Redis, then the connection drops before handling: a retry is handled."""
        redis = self.start_redis()
        a = self.node("a")
        await self.healthy(a)
        handled: list[Any] = []
        a.hub.on("n", lambda ctx, data: handled.append(data))
        first = await self.client(a)
        redis.command("CLIENT", "PAUSE", "600", "WRITE")  # the claim (SET NX) waits
        message = {"type": "event", "id": "m-1", "event": "n", "data": 1, "ack": True}
        first.send(dict(message))
        await sleep(0.1)
        principal = a.hub.core.sessions[first.session].principal
        first.drop()  # the claim is in flight when the connection dies
        await sleep(1.0)
        # Released at once (not left to expire): the key is gone.
        self.assertEqual(redis.command("EXISTS", a.backend.keys.dedup(principal, "m-1")), b":0\r\n")
        second = await self.client(a, session=first.session)
        reply = await second.request(dict(message))
        self.assertEqual((reply["type"], reply["ref"]), ("ack", "m-1"))
        self.assertEqual(handled, [1])

    @async_test
    async def test_claim_of_a_dead_node_expires(self) -> None:
        """A claim never settled (its node died) lives CLAIM_TTL_MS, not the dedup age."""
        redis = self.start_redis()
        a = self.node("a")
        await self.healthy(a)
        key = "t:dedup:s:x:m-1"
        claimed = await a.backend.claim("s:x", "m-1", 0)
        self.assertTrue(claimed.first)
        ttl = int(redis.command("PTTL", key).strip(b":\r\n"))
        self.assertTrue(0 < ttl <= CLAIM_TTL_MS, ttl)


class HotClaimTests(ClusterCase):
    """Tracked events and calls of a clustered node take the inbound hot path
    (inbound.py ``_hot_claim``): claimed in Redis without a Deferred each,
    the connection's later frames held, every guarantee of the general path kept."""

    @async_test
    async def test_a_retry_on_another_node_gets_the_recorded_result(self) -> None:
        self.start_redis()
        a, b = self.node("a"), self.node("b")
        await self.healthy(a, b)
        handled: list[Any] = []

        def lookup(ctx: Any, data: Any) -> Any:
            handled.append(data)
            return {"name": "Zoë ✓", "n": data, "tags": ["a", {"b": None}], "ok": True}

        a.hub.on("lookup", lookup)
        b.hub.on("lookup", lookup)
        first = await self.client(a)
        call = {"type": "call", "id": "c-1", "event": "lookup", "data": 7}
        result = await first.request(dict(call))
        self.assertEqual(result["type"], "result")
        event = {"type": "event", "id": "e-1", "event": "lookup", "data": 8, "ack": True}
        ack = await first.request(dict(event))
        self.assertEqual((ack["type"], ack["ref"]), ("ack", "e-1"))
        second = await self.client(b, session=first.session)
        again = await second.request(dict(call))
        self.assertEqual((again["type"], again["ref"]), ("result", "c-1"))
        self.assertEqual(again["data"], result["data"])
        self.assertEqual(again["id"], result["id"])
        ack_again = await second.request(dict(event))
        self.assertEqual((ack_again["type"], ack_again["id"]), ("ack", ack["id"]))
        self.assertEqual(handled, [7, 8])

    @async_test
    async def test_pipelined_messages_keep_their_order_while_claims_wait(self) -> None:
        redis = self.start_redis()
        a = self.node("a")
        await self.healthy(a)
        seen: list[Any] = []
        a.hub.on("n", lambda ctx, data: seen.append(data))
        a.hub.on("c", lambda ctx, data: seen.append(data) or data)
        client = await self.client(a)
        deferred_claims: list[str] = []
        claim = a.backend.claim
        a.backend.claim = lambda p, m, now: deferred_claims.append(m) or claim(p, m, now)  # type: ignore[method-assign]
        redis.command("CLIENT", "PAUSE", "300", "WRITE")  # the claims wait
        sent = []
        for n in range(30):
            if n % 3 == 0:
                sent.append(client.send({"type": "call", "id": f"m{n}", "event": "c", "data": n}))
            elif n % 3 == 1:
                sent.append(
                    client.send(
                        {"type": "event", "id": f"m{n}", "event": "n", "data": n, "ack": True}
                    )
                )
            else:  # untracked: held behind the tracked ones all the same
                client.send({"type": "event", "id": f"m{n}", "event": "n", "data": n})
        replies = [await client.reply_to(m["id"]) for m in sent]
        await wait_until(lambda: len(seen) == 30, what="every message handled")
        self.assertEqual(seen, list(range(30)))
        self.assertEqual([r["ref"] for r in replies], [m["id"] for m in sent])
        self.assertEqual({r["type"] for r in replies}, {"ack", "result"})
        self.assertEqual(deferred_claims, [])  # all hot: no Deferred per claim

    @async_test
    async def test_a_backend_without_claim_then_claims_by_deferred(self) -> None:
        """``claim_then`` is new in the backend interface: a backend written
        before it still works, through its Deferred ``claim``."""
        self.start_redis()
        a = self.node("a")
        await self.healthy(a)
        handled: list[Any] = []
        a.hub.on("n", lambda ctx, data: handled.append(data))
        inbound = a.hub.port._inbound
        inbound._claim_then = inbound._claim_by_deferred  # as if the backend had none
        claimed: list[str] = []
        claim = a.backend.claim
        a.backend.claim = lambda p, m, now: claimed.append(m) or claim(p, m, now)  # type: ignore[method-assign]
        client = await self.client(a)
        for n in range(3):
            client.send({"type": "event", "id": f"m{n}", "event": "n", "data": n, "ack": True})
        replies = [await client.reply_to(f"m{n}") for n in range(3)]
        self.assertEqual([r["type"] for r in replies], ["ack"] * 3)
        self.assertEqual((handled, claimed), ([0, 1, 2], ["m0", "m1", "m2"]))
        # Its claim failing is answered as trouble is: handled here, nothing left held.
        a.backend.claim = lambda p, m, now: fail(ConnectionError("redis gone"))  # type: ignore[method-assign]
        client.send({"type": "event", "id": "m3", "event": "n", "data": 3, "ack": True})
        client.send({"type": "event", "id": "m4", "event": "n", "data": 4, "ack": True})
        self.assertEqual((await client.reply_to("m4"))["type"], "ack")
        self.assertEqual(handled, [0, 1, 2, 3, 4])

    @async_test
    async def test_an_id_another_node_is_handling_is_answered_as_it_answers(self) -> None:
        redis = self.start_redis()
        a = self.node("a")
        await self.healthy(a)
        handled: list[Any] = []
        a.hub.on("n", lambda ctx, data: handled.append(data))
        client = await self.client(a)
        principal = a.hub.core.sessions[client.session].principal
        key = a.backend.keys.dedup(principal, "m-1")
        redis.command("SET", key, "", "PX", "5000")  # claimed elsewhere, no answer yet
        client.send({"type": "event", "id": "m-1", "event": "n", "data": 1, "ack": True})
        client.send({"type": "event", "id": "m-2", "event": "n", "data": 2, "ack": True})
        await sleep(0.4)
        self.assertEqual(handled, [])  # m-2 waits behind m-1
        answer = Envelope(type=MessageType.ACK, id="other-node", timestamp=1, ref="m-1")
        stored = json.dumps(answer.to_wire())
        redis.command("SET", key, stored, "PX", "5000")
        first = await client.reply_to("m-1")
        self.assertEqual(first["id"], "other-node")
        second = await client.reply_to("m-2")
        self.assertEqual(second["type"], "ack")
        self.assertEqual(handled, [2])


class RedisClusterHotClaimTests(HotClaimTests):
    redis_cluster = True


class RedisTroubleTests(ClusterCase):
    @async_test
    async def test_redis_restart_during_traffic_heals_every_node(self) -> None:
        redis = self.start_redis()
        nodes = [self.node(f"n{i}") for i in range(3)]
        await self.healthy(*nodes)
        clients = [await self.client(node, rooms=["t"]) for node in nodes]
        accepted: list[int] = []
        rejected: list[int] = []

        async def traffic(start: int, count: int) -> None:
            for n in range(start, start + count):
                try:
                    await nodes[n % 3].hub.publish("t", "n", n)
                    accepted.append(n)
                except BackendUnavailableError:
                    rejected.append(n)
                await sleep(0.01)

        running = Deferred.fromCoroutine(traffic(0, 60))
        await sleep(0.2)
        redis.restart()
        await running
        await self.healthy(*nodes)
        # Not deaf: canaries came back to every node, and a real publish arrives everywhere.
        await nodes[0].hub.publish("t", "n", 1000)
        for client in clients:
            await wait_until(lambda c=client: 1000 in events(c, "room:t"), what="after heal")
            got = [d for d in events(client, "room:t") if d != 1000]
            self.assertEqual(len(got), len(set(got)), "no duplicates")
            self.assertEqual(sorted(got), sorted(got))
            # Everything accepted before the restart or after the heal arrived; the
            # restart lost Redis' data, which clients learn as an epoch change.
        self.assertTrue(rejected or accepted)
        self.assertEqual(set(accepted) & set(rejected), set())

    @async_test
    async def test_flushed_redis_is_an_epoch_change(self) -> None:
        redis = self.start_redis()
        a = self.node("a")
        await self.healthy(a)
        client = await self.client(a, rooms=["f"])
        for n in range(3):
            await a.hub.publish("f", "n", n)
        await wait_until(lambda: len(events(client, "room:f")) == 3)
        old = dict(client.positions)
        redis.command("FLUSHALL")
        await sleep(2.5)  # the node notices on its next tick (its liveness key is gone)
        await a.hub.publish("f", "n", 3)
        await wait_until(lambda: 3 in events(client, "room:f"), what="post-flush event")
        last = [m for m in client.messages if m.get("stream") == "room:f"][-1]
        self.assertNotEqual(last["epoch"], old["room:f"]["epoch"])
        other = await self.client(a, streams={"room:f": old["room:f"]}, rooms=["f"])
        assert other.welcome is not None
        self.assertFalse(other.welcome["data"]["streams"]["room:f"]["recovered"])


class SentinelTests(ClusterCase):
    @async_test
    async def test_sentinel_failover_during_traffic(self) -> None:
        setup = SentinelSetup()
        self.addCleanup(setup.cleanup)
        setup.wait_for_replica_sync()
        options = RedisOptions(
            url=None,
            sentinels=(f"127.0.0.1:{setup.sentinel.port}",),
            service=setup.service,
            prefix="s:",
        )
        a, b = self.node("a", options), self.node("b", options)
        await self.healthy(a, b)
        client = await self.client(b, rooms=["s"])
        for n in range(3):
            await a.hub.publish("s", "n", n)
        await wait_until(lambda: events(client, "room:s") == [0, 1, 2])
        old_master = setup.current_master_port()
        setup.sentinel.command("SENTINEL", "FAILOVER", setup.service)
        await wait_until(lambda: setup.current_master_port() != old_master, 20, "failover")
        sent: list[int] = []
        for n in range(3, 40):
            try:
                await a.hub.publish("s", "n", n)
                sent.append(n)
            except BackendUnavailableError:
                pass
            await sleep(0.05)
        await self.healthy(a, b, timeout=20)
        await a.hub.publish("s", "n", 99)
        sent.append(99)
        await wait_until(lambda: 99 in events(client, "room:s"), 20, "after failover")
        got = events(client, "room:s")
        self.assertEqual(len(got), len(set(got)))
        self.assertEqual([d for d in got if d in sent or d < 3], got)


# ---------------------------------------------------------------- on a Redis Cluster


class RedisClusterBackendTests(RedisBackendTests):
    redis_cluster = True


class RedisClusterFanoutTests(FanoutTests):
    redis_cluster = True


class RedisClusterFailoverTests(FailoverTests):
    redis_cluster = True


class RedisClusterDedupClaimTests(DedupClaimTests):
    redis_cluster = True


class RedisClusterTroubleTests(RedisTroubleTests):
    """A restart or flush of every master; one master alone: tests/test_redis_cluster.py."""

    redis_cluster = True
