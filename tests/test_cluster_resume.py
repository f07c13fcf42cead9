"""Resume in a cluster is reported exactly: ``recovered: false`` only after a real loss.

Each test is a deterministic reproduction of a spurious ``recovered: false``
(or a spurious ack failure) that the cluster chaos run
(``python -m chaos --redis --quick --seed 5``) reported as
``unrecovered-without-redis-restart``. They run real redis-server processes
(tests/redis_harness.py) and drive the nodes' ticks by hand where the race
needs one at a precise moment.
"""

from __future__ import annotations

from typing import Any

from tests.helpers.cluster import ClusterCase, events, reactor
from tests.helpers.security import SECRET, hs256
from tests.wsclient import async_test, connect, sleep, wait_until
from warpsocket.backends.base import SessionRecord
from warpsocket.core.keys import direct_key
from warpsocket.core.server import hash_resume_token
from warpsocket.server.security.auth import JWTAuthenticator
from warpsocket.server.security.config import SecurityOptions


class ExactResumeTests(ClusterCase):
    @async_test
    async def test_streams_ready_at_hello_stay_followed_until_the_welcome(self) -> None:
        """A tick while a hello waits for one stream must not drop the others.

        The hello's ``direct`` and ``room:r`` streams are ready at once; another
        room needs a snapshot (held back by ``CLIENT PAUSE``). A tick meanwhile
        stopped following the ready streams (no local member reads them), and
        the welcome then read a stream the node no longer mirrored: a made-up
        epoch at offset 0 with ``recovered: false``, followed by the real
        epoch's whole history as "epoch changed".
        """
        redis = self.start_redis()
        a = self.node("a")
        await self.healthy(a)
        keeper = await self.client(a, rooms=["r"])  # keeps room:r followed on a
        client = await self.client(a, rooms=["r"])
        session = client.session
        assert session is not None
        for n in range(3):
            await a.hub.publish("r", "n", n)
        await a.hub.send(session, "dm", "hello")
        await wait_until(lambda: len(events(client, "room:r")) == 3, what="room events")
        await wait_until(lambda: events(client, "direct") == ["hello"], what="direct event")
        positions = dict(client.positions)
        positions.pop("broadcast", None)
        await client.drop()
        await wait_until(lambda: a.hub.core.sessions[session].conn is None, what="detached")
        self.assertIn(direct_key(session), list(a.backend.following()))

        redis.command("CLIENT", "PAUSE", "1500", "WRITE")  # snapshots wait
        resumed = await connect(a.port)
        self.clients.append(resumed)
        self.addCleanup(self._close, resumed)
        welcomed = resumed.hello(session=session, streams=positions, rooms=["r", "fresh"])
        await sleep(0.2)
        self.assertFalse(welcomed.called, "room:fresh needs a snapshot first")
        await keeper.drop()
        await wait_until(lambda: len(a.hub.core.connections) == 1, what="keeper gone")
        a.hub.port.tick()  # nobody on a reads direct or room:r right now
        welcome = await welcomed
        streams = welcome["data"]["streams"]
        self.assertTrue(welcome["data"]["resumed"], welcome)
        for name in ("direct", "room:r"):
            self.assertEqual(
                (streams[name]["epoch"], streams[name]["recovered"]),
                (positions[name]["epoch"], True),
                f"{name}: {welcome}",
            )
        await a.hub.publish("r", "n", 3)
        await a.hub.send(session, "dm", "again")
        await wait_until(lambda: events(resumed, "room:r") == [3], what="live room event")
        await wait_until(lambda: events(resumed, "direct") == ["again"], what="live direct event")
        for stream in ("direct", "room:r"):
            epochs = {m["epoch"] for m in resumed.messages if m.get("stream") == stream}
            self.assertEqual(epochs, {positions[stream]["epoch"]}, stream)

    @async_test
    async def test_pending_acks_of_a_detached_session_survive_ticks(self) -> None:
        """A detached session's pending acks are not failed as if its epoch had changed.

        Its ``direct`` stream is no longer followed on the node; reading its
        position there made up a new epoch, and the pending ack failed with
        4304 although nothing was lost.
        """
        self.start_redis()
        a = self.node("a")
        await self.healthy(a)
        client = await self.client(a)
        session = client.session
        assert session is not None
        acked = a.hub.send(session, "dm", "ack me", ack=True)
        outcome: list[Any] = []
        acked.addBoth(outcome.append)
        sent = await client.wait_for(lambda m: m.get("stream") == "direct")
        await client.drop()
        await wait_until(lambda: a.hub.core.sessions[session].conn is None, what="detached")
        a.hub.port.tick()  # stops following direct (no local member)
        a.hub.port.tick()  # retries pending acks
        await sleep(0.1)
        self.assertEqual(outcome, [])
        resumed = await self.client(a, session=session, streams=client.positions)
        assert resumed.welcome is not None
        self.assertTrue(resumed.welcome["data"]["streams"]["direct"]["recovered"])
        again = await resumed.wait_for(lambda m: m.get("stream") == "direct")
        self.assertEqual((again["id"], again["offset"]), (sent["id"], sent["offset"]))
        resumed.send({"type": "ack", "stream": "direct", "offset": again["offset"]})
        await wait_until(lambda: outcome == [None], what="ack")

    @async_test
    async def test_session_record_is_written_again_after_redis_lost_it(self) -> None:
        """Redis restarts without persistence: the node holding a session saves it again.

        The session's ``direct`` stream lives on under a new epoch (the client
        was told), but its record was gone: when its node died, the client
        resumed on another node as a new session, told that its ``direct``
        stream was lost although every message of the new epoch was in Redis.
        """
        redis = self.start_redis()
        a, b = self.node("a"), self.node("b")
        await self.healthy(a, b)
        client = await self.client(a, rooms=["r"])
        session = client.session
        assert session is not None
        before = {n.backend.node: n.backend.stats["reconnects"] for n in (a, b)}
        redis.restart()
        await wait_until(
            lambda: all(
                n.backend.stats["reconnects"] >= before[n.backend.node] + 2 for n in (a, b)
            ),
            what="both nodes saw the restart",
        )
        await self.healthy(a, b)
        await a.hub.send(session, "dm", "after the restart")
        await wait_until(lambda: events(client, "direct") == ["after the restart"], what="dm")
        await sleep(0.2)
        a.kill()
        await client.wait_closed()
        resumed = await self.client(b, session=session, streams=client.positions, rooms=["r"])
        assert resumed.welcome is not None
        data = resumed.welcome["data"]
        self.assertEqual((data["session"], data["resumed"]), (session, True), data)
        self.assertEqual(data["rooms"], ["r"])
        self.assertTrue(data["streams"]["direct"]["recovered"], data)
        await b.hub.send(session, "dm", "on b")
        await wait_until(lambda: events(resumed, "direct") == ["on b"], what="dm on b")
        last = [m for m in resumed.messages if m.get("stream") == "direct"][-1]
        self.assertEqual(last["offset"], client.positions["direct"]["offset"] + 1)

    @async_test
    async def test_session_saved_while_redis_was_down_is_written_on_reconnect(self) -> None:
        """A session detached during an outage is saved when Redis is back.

        Redis restarted empty: nothing else writes its record before the node
        dies, and the client could only start a new session.
        """
        redis = self.start_redis()
        a, b = self.node("a"), self.node("b")
        await self.healthy(a, b)
        client = await self.client(a, rooms=["r"])
        session = client.session
        assert session is not None
        redis.kill()
        await wait_until(lambda: a.hub.health is not None, what="degraded")
        await client.drop()
        await wait_until(lambda: a.hub.core.sessions[session].conn is None, what="detached")
        redis.start()
        await self.healthy(a, b)
        await sleep(0.2)
        a.kill()
        resumed = await self.client(b, session=session, rooms=["r"])
        assert resumed.welcome is not None
        data = resumed.welcome["data"]
        self.assertEqual((data["session"], data["resumed"]), (session, True), data)


class SessionRecordTests(ClusterCase):
    @async_test
    async def test_a_record_saved_offline_does_not_replace_a_newer_one(self) -> None:
        """Only node a lost Redis while the session moved to b: on reconnect,
        a's older record must not replace the one b saved since."""
        self.start_redis()
        a, b = self.node("a"), self.node("b")
        await self.healthy(a, b)
        connections = a.backend.connections
        cmd, connections.cmd = connections.cmd, None  # a alone cannot reach Redis
        a.backend.save_session(SessionRecord("s1", "u", rooms=("old",)), 60_000)
        a.backend.save_session(SessionRecord("s2", "u", rooms=("only-a",)), 60_000)
        await sleep(0.01)
        b.backend.save_session(SessionRecord("s1", "u", rooms=("new",)), 60_000)
        self.assertEqual(await self.rooms_in_redis(b, "s1"), ("new",))
        connections.cmd = cmd
        a.backend.sessions.write_again(unsaved_only=True)  # what a reconnect does
        self.assertEqual(await self.rooms_in_redis(a, "s2"), ("only-a",))
        self.assertEqual(await self.rooms_in_redis(a, "s1"), ("new",))

    @async_test
    async def test_a_users_sessions_are_found_from_another_node(self) -> None:
        self.start_redis()
        a, b = self.node("a"), self.node("b")
        await self.healthy(a, b)
        a.backend.save_session(SessionRecord("s1", "alice"), 60_000)
        b.backend.save_session(SessionRecord("s2", "alice"), 60_000)
        self.assertEqual(await self.rooms_in_redis(b, "s1"), ())
        found = await b.backend.sessions_of_user("alice")
        self.assertEqual(found, {"s1", "s2"})

    @async_test
    async def test_an_authenticated_client_is_reached_by_user_from_another_node(self) -> None:
        self.start_redis()
        secured = SecurityOptions(authenticator=JWTAuthenticator(SECRET, ["HS256"]))
        a, b = self.node("a", security=secured), self.node("b")
        await self.healthy(a, b)
        client = await connect(a.port)
        self.clients.append(client)
        self.addCleanup(self._close, client)
        token = hs256(sub="alice", exp=int(reactor.seconds()) + 60)
        hello = {"token": token, "streams": {}, "rooms": []}
        welcome = await client.request({"type": "hello", "data": hello})
        self.assertEqual(welcome["type"], "welcome", welcome)
        self.assertEqual(await b.hub.send_user("alice", "note", "hi"), 1)
        note = await client.wait_for(lambda m: m.get("event") == "note")
        self.assertEqual(note["data"], "hi")

    async def rooms_in_redis(self, node: Any, session: str) -> tuple[str, ...]:
        for _ in range(100):
            record = await node.backend.load_session(session)
            if record is not None:
                return tuple(record.rooms)
            await sleep(0.01)
        raise AssertionError(f"no record of {session} in Redis")


class ResumeTokenTests(ClusterCase):
    @async_test
    async def test_another_node_resumes_only_with_the_resume_token(self) -> None:
        """The session record in Redis keeps the token's hash, never the token:
        node b resumes a session of node a for its token, and for a bare id
        creates a new session without adopting the owner's."""
        redis = self.start_redis()
        a, b = self.node("a"), self.node("b")
        await self.healthy(a, b)
        owner = await self.client(a, rooms=["r"])
        assert owner.session is not None and owner.welcome is not None
        token = owner.welcome["data"]["resume_token"]
        await owner.drop()
        await wait_until(lambda: a.hub.core.sessions[owner.session].conn is None, what="detach")
        stored = redis.command("GET", b.backend.keys.session(owner.session)).decode()
        self.assertIn(hash_resume_token(token), stored)
        self.assertNotIn(token, stored)
        thief = await connect(b.port)
        self.clients.append(thief)
        self.addCleanup(self._close, thief)
        stolen = await thief.hello(session=owner.session, rooms=[], resume_token=None)
        self.assertFalse(stolen["data"]["resumed"])
        self.assertNotEqual(stolen["data"]["session"], owner.session)
        self.assertNotIn(owner.session, b.hub.core.sessions)
        back = await connect(b.port)
        self.clients.append(back)
        self.addCleanup(self._close, back)
        welcome = await back.hello(session=owner.session, resume_token=token)
        self.assertTrue(welcome["data"]["resumed"])
        self.assertEqual(welcome["data"]["rooms"], ["r"])


# ---------------------------------------------------------------- on a Redis Cluster


class RedisClusterExactResumeTests(ExactResumeTests):
    redis_cluster = True


class RedisClusterSessionRecordTests(SessionRecordTests):
    redis_cluster = True


class RedisClusterResumeTokenTests(ResumeTokenTests):
    redis_cluster = True
