"""The HTTP API's history, disconnect and per-key rate limits over real
sockets (docs/http-api.md): each answered with JSON naming a registry code,
bad input refused with a clear error and nothing else lost."""

from __future__ import annotations

from typing import Any

from twisted.python import usage
from twisted.trial import unittest

from tests.test_http_api import KEY, OTHER_KEY, HttpApiTestCase
from tests.wsclient import async_test
from warpsocket.core.history import HistoryLimits
from warpsocket.core.server import CoreOptions
from warpsocket.server.cli import Options
from warpsocket.server.hub import Hub
from warpsocket.server.web import add_http_api


class HistoryTests(HttpApiTestCase):
    async def get(self, path: str) -> Any:
        return await self.call(b"GET", "/api/history/" + path)

    @async_test
    async def test_events_in_order_with_offsets_and_placeholders(self) -> None:
        self.start_api()
        for n in (1, 2, 3):
            await self.hub.publish("news", "story", {"n": n}, ttl=5 if n == 2 else None)
        code, body, _ = await self.get("room:news")
        self.assertEqual(code, 200, body)
        self.assertEqual((body["stream"], body["last"], body["more"]), ("room:news", 3, False))
        self.assertIsInstance(body["epoch"], str)
        self.assertEqual([e["offset"] for e in body["events"]], [1, 2, 3])
        self.assertEqual(body["events"][0]["data"], {"n": 1})
        self.assertEqual(body["events"][1]["ttl"], 5)
        self.advance(6)  # the second one expires: a placeholder keeps its offset
        code, later, _ = await self.get(f"room:news?after=1&epoch={body['epoch']}")
        self.assertEqual(code, 200, later)
        expired, third = later["events"]
        self.assertEqual(
            (expired["offset"], expired["placeholder"], expired["code"]), (2, "expired", 4302)
        )
        self.assertNotIn("data", expired)
        self.assertEqual((third["offset"], third["event"], third["data"]), (3, "story", {"n": 3}))
        code, page, _ = await self.get("room:news?limit=2")
        self.assertEqual(([e["offset"] for e in page["events"]], page["more"]), ([1, 2], True))
        code, empty, _ = await self.get("room:news?after=3")
        self.assertEqual((code, empty["events"]), (200, []))

    @async_test
    async def test_direct_and_broadcast_streams(self) -> None:
        self.start_api()
        client = await self.connect()
        await self.hub.send(client.session or "", "dm", "hello")
        await self.hub.broadcast("all", 1)
        code, body, _ = await self.get(f"direct:{client.session}")
        self.assertEqual((code, body["events"][0]["data"]), (200, "hello"), body)
        code, body, _ = await self.get("broadcast")
        self.assertEqual((code, body["events"][0]["event"]), (200, "all"), body)

    @async_test
    async def test_gone_history_and_another_epoch_are_stream_gap(self) -> None:
        self.start_api(core=CoreOptions(history=HistoryLimits(max_messages=2)))
        for n in range(5):
            await self.hub.publish("busy", "tick", n)
        error = self.assertRefused(await self.get("room:busy?after=1"), 410, "stream_gap")
        self.assertEqual(error["code"], 4401)
        self.assertIn("after offset 1", error["message"])
        _, body, _ = await self.get("room:busy?after=3")
        self.assertEqual([e["data"] for e in body["events"]], [3, 4])
        self.assertRefused(await self.get("room:busy?epoch=old"), 410, "stream_gap")

    @async_test
    async def test_bad_queries_are_400_and_the_server_keeps_serving(self) -> None:
        self.start_api()
        await self.hub.publish("news", "story", 1)
        for query in (
            "room:news?after=-1",
            "room:news?after=x",
            "room:news?after=2",  # past the end
            "room:news?limit=0",
            "room:news?limit=1001",
            "room:news?after=1&after=2",
            "room:news?colour=red",
            "rooms:news",
            "direct:",
            "room:" + "x" * 300,
        ):
            self.assertRefused(await self.get(query), 400, "bad_envelope")
        self.assertRefused(await self.post("history/room:news"), 405, "unknown_type")
        self.assertRefused(
            await self.call(b"GET", "/api/history/room:news", key=b"x" * 32), 401, "unauthorized"
        )
        code, body, _ = await self.get("room:news")
        self.assertEqual((code, len(body["events"])), (200, 1))


class DisconnectTests(HttpApiTestCase):
    @async_test
    async def test_a_session_is_closed_with_the_code_and_can_resume(self) -> None:
        self.start_api(open_rooms=True)
        client = await self.connect(rooms=["desk"])
        session = client.session
        code, body, _ = await self.post(
            "disconnect", {"session": session, "code": 4102, "reason": "bye"}
        )
        self.assertEqual(code, 200, body)
        self.assertEqual(body, {"session": session, "connected": True, "forgotten": False})
        await client.closed
        self.assertEqual((client.close_code, client.close_reason), (4102, "bye"))
        again = await self.connect(session=session)
        self.assertEqual(
            (again.session, again.welcome and again.welcome["data"]["resumed"]), (session, True)
        )
        # Detached sessions are still known: disconnecting one closes nothing.
        await self.post("disconnect", {"session": session})
        await again.closed
        self.assertEqual(again.close_code, 4500)  # going_away by default: the client comes back
        code, body, _ = await self.post("disconnect", {"session": session})
        self.assertEqual((code, body["connected"]), (200, False))

    @async_test
    async def test_forget_makes_the_next_hello_a_new_session(self) -> None:
        self.start_api(open_rooms=True)
        client = await self.connect(rooms=["desk"])
        session = client.session
        code, body, _ = await self.post("disconnect", {"session": session, "forget": True})
        self.assertEqual((code, body["forgotten"]), (200, True), body)
        await client.closed
        again = await self.connect(session=session)
        assert again.welcome is not None
        self.assertNotEqual(again.session, session)
        self.assertFalse(again.welcome["data"]["resumed"])

    @async_test
    async def test_every_session_of_a_user(self) -> None:
        self.start_api()
        clients = []
        for _ in range(2):
            client = await self.connect(hello=False)
            newest = max(self.hub.port.connections)
            self.hub.core.set_identity(newest, "ann", {})
            await client.hello()
            clients.append(client)
        other = await self.connect()
        code, body, _ = await self.post("disconnect", {"user": "ann", "code": 4100})
        self.assertEqual((code, body), (200, {"sessions": 2}), body)
        for client in clients:
            await client.closed
            self.assertEqual(client.close_code, 4100)
        self.assertTrue(self.hub.is_connected(other.session or ""))
        code, body, _ = await self.post("disconnect", {"user": "nobody"})
        self.assertEqual((code, body), (200, {"sessions": 0}))

    @async_test
    async def test_bad_input_is_refused_and_nothing_is_closed(self) -> None:
        self.start_api()
        client = await self.connect()
        session = client.session
        for body in (
            {},
            {"session": session, "user": "ann"},
            {"session": session, "code": 999},
            {"session": session, "code": 5000},
            {"session": session, "code": True},
            {"session": session, "reason": "x" * 124},
            {"session": session, "reason": 7},
            {"session": session, "forget": "yes"},
            {"session": session, "colour": "red"},
        ):
            self.assertRefused(await self.post("disconnect", body), 400, "bad_envelope")
        self.assertRefused(await self.post("disconnect", raw=b"{nope"), 400, "bad_frame")
        self.assertRefused(await self.post("disconnect", {"session": "nobody"}), 404, "bad_state")
        self.assertRefused(
            await self.post("disconnect", {"session": session}, key=b"wrong" * 8),
            401,
            "unauthorized",
        )
        self.assertTrue(self.hub.is_connected(session or ""))


class RateLimitTests(HttpApiTestCase):
    def start_limited(self, rate: float, burst: int) -> Hub:
        hub = self.start_server()
        add_http_api(self.service.site, hub, [KEY, OTHER_KEY], None, rate=rate, burst=burst)
        return hub

    @async_test
    async def test_each_key_has_its_bucket(self) -> None:
        self.start_limited(rate=0.5, burst=2)
        for _ in range(2):
            code, _, _ = await self.call(b"GET", "/api/info")
            self.assertEqual(code, 200)
        reply = await self.call(b"GET", "/api/info")
        error = self.assertRefused(reply, 429, "rate_limited")
        self.assertEqual(error["code"], 4200)
        self.assertEqual(reply[2].getRawHeaders(b"retry-after"), [b"2"])
        # Refused before anything is done: a publish is not stored.
        self.assertRefused(
            await self.post("publish", {"room": "r", "event": "e"}), 429, "rate_limited"
        )
        self.assertEqual(self.hub.store.position("room:r").offset, 0)
        code, _, _ = await self.call(b"GET", "/api/info", key=OTHER_KEY)
        self.assertEqual(code, 200)  # another key, another bucket
        code, _, _ = await self.call(b"GET", "/api/openapi.json")
        self.assertEqual(code, 200)  # describes the API: not counted
        self.advance(2)
        code, _, _ = await self.call(b"GET", "/api/info")
        self.assertEqual(code, 200)

    @async_test
    async def test_a_wrong_key_is_401_not_counted(self) -> None:
        self.start_limited(rate=1, burst=1)
        for _ in range(3):
            self.assertRefused(
                await self.call(b"GET", "/api/info", key=b"w" * 32), 401, "unauthorized"
            )
        code, _, _ = await self.call(b"GET", "/api/info")
        self.assertEqual(code, 200)


class RateOptionTests(unittest.TestCase):
    def test_options(self) -> None:
        options = Options()
        options.parseOptions(["--endpoint", "tcp:0", "--api-rate", "0", "--api-burst", "5"])
        self.assertEqual((options["api-rate"], options["api-burst"]), (0.0, 5))
        for bad in (["--api-rate", "-1"], ["--api-burst", "0"], ["--api-rate", "inf"]):
            with self.assertRaises(usage.UsageError):
                Options().parseOptions(["--endpoint", "tcp:0", *bad])
