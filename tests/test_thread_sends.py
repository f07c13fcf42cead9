"""Hub sends from real non-reactor threads return ``concurrent.futures.Future``s."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.threads import deferToThread

from tests.wsclient import ServerTestCase, async_test, wait_until
from warpsocket.core.server import CoreOptions, UnknownSessionError
from warpsocket.server.hub import AckTimeoutError

THREADS = 4
SENDS = 500


class ThreadSendTests(ServerTestCase):
    @async_test
    async def test_sends_from_threads_return_futures_in_order(self) -> None:
        hub = self.start_server()
        client = await self.connect()
        session = client.session
        assert session is not None

        def work(worker: int) -> list[Any]:
            futures = [hub.send(session, "n", [worker, n]) for n in range(SENDS)]
            assert all(isinstance(f, Future) for f in futures), futures[0]
            return [f.result(timeout=15) for f in futures]  # type: ignore[attr-defined]

        results = await DeferredList(
            [deferToThread(work, worker) for worker in range(THREADS)], fireOnOneErrback=True
        )
        self.assertEqual([r for _, rs in results for r in rs], [None] * THREADS * SENDS)
        await wait_until(
            lambda: sum(m.get("event") == "n" for m in client.messages) == THREADS * SENDS,
            what="all sends",
        )
        for worker in range(THREADS):
            mine = [
                m["data"][1]
                for m in client.messages
                if m.get("event") == "n" and m["data"][0] == worker
            ]
            self.assertEqual(mine, list(range(SENDS)))

    @async_test
    async def test_acked_send_future_settles_with_the_ack(self) -> None:
        hub = self.start_server()
        client = await self.connect()
        session = client.session
        assert session is not None
        future: Future[None] = await deferToThread(
            lambda: hub.send(session, "job", 1, ack=True)  # returns at once, not at the ack
        )
        self.assertIsInstance(future, Future)
        message = await client.wait_for(lambda m: m.get("event") == "job")
        self.assertFalse(future.done())
        client.ack(message["id"])
        await wait_until(future.done, what="ack")
        self.assertIsNone(future.result())

    @async_test
    async def test_a_thread_can_block_on_the_ack(self) -> None:
        hub = self.start_server()
        client = await self.connect()
        session = client.session
        assert session is not None
        waiting = deferToThread(
            lambda: hub.send(session, "job", 1, ack=True).result(timeout=15)  # type: ignore[attr-defined]
        )
        message = await client.wait_for(lambda m: m.get("event") == "job")
        self.assertNoResult(waiting)
        client.ack(message["id"])
        self.assertIsNone(await waiting)

    @async_test
    async def test_failures_reach_the_future(self) -> None:
        hub = self.start_server(CoreOptions(ack_retry_ms=60_000))
        client = await self.connect()
        session = client.session
        assert session is not None
        future: Future[None] = await deferToThread(
            lambda: hub.send(session, "job", 1, ack=True, timeout=5)
        )
        await client.wait_for(lambda m: m.get("event") == "job")
        self.advance(5)
        await wait_until(future.done, what="timeout")
        error = future.exception()
        self.assertIsInstance(error, AckTimeoutError)
        # A synchronous refusal raises in the calling thread, as on the reactor.
        with self.assertRaises(UnknownSessionError):
            await deferToThread(lambda: hub.send("no-such-session", "x", ack=True))

    @async_test
    async def test_every_send_kind_and_plain_values(self) -> None:
        hub = self.start_server(open_rooms=True)
        client = await self.connect(rooms=["r"])
        session = client.session
        assert session is not None

        def work() -> dict[str, Any]:
            calls: dict[str, Any] = {
                "publish": hub.publish("r", "p", 1),
                "broadcast": hub.broadcast("b", 2),
                "send_group": hub.send_group([session], "g", 3),
                "send_user": hub.send_user("nobody", "u", 4),
                "join": hub.join(session, "other"),
            }
            kinds = {name: type(value).__name__ for name, value in calls.items()}
            return {
                "kinds": kinds,
                "stored": calls["publish"].result(timeout=15).offset,
                "users": calls["send_user"].result(timeout=15),
                "group": calls["send_group"].result(timeout=15),
                # Plain values stay plain values.
                "members": hub.room_members("r"),
                "connected": hub.is_connected(session),
                "info": hub.session_info(session),
            }

        got = await deferToThread(work)
        self.assertEqual(set(got["kinds"].values()), {"Future"})
        self.assertEqual(
            (got["stored"], got["users"], got["group"], got["members"], got["connected"]),
            (1, 0, None, {session}, True),
        )
        self.assertEqual((got["info"].id, got["info"].connected), (session, True))
        for event in ("p", "b", "g"):
            await client.wait_for(lambda m, e=event: m.get("event") == e)  # type: ignore[misc]

    @async_test
    async def test_on_the_reactor_thread_sends_still_return_deferreds(self) -> None:
        hub = self.start_server()
        client = await self.connect()
        assert client.session is not None
        sent = hub.send(client.session, "x", 1)
        self.assertIsInstance(sent, Deferred)
        await sent
