"""The HTTP API in a cluster: two nodes on a real redis-server (a missing
binary fails these tests). Any node accepts a call for any session, and an
Idempotency-Key is honoured whichever node the retry lands on."""

from __future__ import annotations

import io
import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

from tests.helpers.cluster import ClusterCase, Node, reactor
from tests.wsclient import async_test, connect, wait_until
from warpsocket.server.web import add_http_api

KEY = b"cluster-api-key-0123456789"


class ClusterApiTests(ClusterCase):
    async def api(
        self,
        node: Node,
        method: bytes,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        idempotency: bytes | None = None,
    ) -> tuple[int, Any, Headers]:
        headers = Headers({b"authorization": [b"Bearer " + KEY]})
        if idempotency is not None:
            headers.addRawHeader(b"idempotency-key", idempotency)
        payload = raw if raw is not None else None if body is None else json.dumps(body).encode()
        producer = None if payload is None else FileBodyProducer(io.BytesIO(payload))
        url = f"http://127.0.0.1:{node.port}/api/{path}".encode()
        response = await Agent(reactor).request(method, url, headers, producer)
        content = await readBody(response)
        return response.code, json.loads(content), response.headers

    async def two_nodes(self) -> tuple[Node, Node]:
        self.redis = self.start_redis()
        a, b = self.node("a"), self.node("b")
        for node in (a, b):
            add_http_api(node.service.site, node.hub, [KEY])
        await self.healthy(a, b)
        return a, b

    @async_test
    async def test_calls_on_a_session_held_by_another_node(self) -> None:
        a, b = await self.two_nodes()
        client = await self.client(a)
        session = client.session
        code, body, _ = await self.api(b, b"POST", "join", {"session": session, "room": "desk"})
        self.assertEqual((code, body), (200, {"joined": "desk"}), body)
        self.assertEqual((await client.next_of("subscribe"))["room"], "desk")
        code, body, _ = await self.api(
            b, b"POST", "publish", {"room": "desk", "event": "t", "data": 1}
        )
        self.assertEqual(code, 200, body)
        event = await client.next_of("event")
        self.assertEqual((event["stream"], event["data"]), ("room:desk", 1))
        code, body, _ = await self.api(b, b"GET", "history/room:desk")
        self.assertEqual([e["data"] for e in body["events"]], [1])
        sending = Deferred.fromCoroutine(
            self.api(
                b, b"POST", "send", {"session": session, "event": "dm", "data": 2, "ack": True}
            )
        )
        direct = await client.wait_for(lambda m: m.get("stream") == "direct")
        client.ack(direct["id"])
        code, body, _ = await sending
        self.assertEqual((code, body), (200, {"delivered": "acked"}), body)
        code, body, _ = await self.api(b, b"POST", "leave", {"session": session, "room": "desk"})
        self.assertEqual((code, body), (200, {"left": "desk"}), body)
        self.assertEqual((await client.next_of("unsubscribe"))["room"], "desk")
        await wait_until(lambda: not a.hub.room_members("desk"), what="the leave")
        code, body, _ = await self.api(
            b, b"POST", "disconnect", {"session": session, "code": 4102, "reason": "out"}
        )
        self.assertEqual((code, body["connected"]), (200, True), body)
        await client.closed
        self.assertEqual((client.close_code, client.close_reason), (4102, "out"))

    @async_test
    async def test_forget_and_user_disconnect_across_nodes(self) -> None:
        a, b = await self.two_nodes()
        client = await self.client(a)
        session = client.session
        code, body, _ = await self.api(
            b, b"POST", "disconnect", {"session": session, "forget": True}
        )
        self.assertEqual((code, body["forgotten"]), (200, True), body)
        await client.closed
        again = await self.client(b, session=session)  # the other node: its record says no
        self.assertNotEqual(again.session, session)
        # A user's sessions on both nodes: each node closes its own.
        users = []
        for node in (a, b):
            user_client = await connect(node.port)
            self.clients.append(user_client)
            node.hub.core.set_identity(max(node.hub.port.connections), "ann", {})
            await user_client.hello()
            users.append(user_client)
        code, body, _ = await self.api(a, b"POST", "disconnect", {"user": "ann"})
        self.assertEqual((code, body), (200, {"sessions": 2}), body)
        for user_client in users:
            await user_client.closed
        self.assertFalse(again.closed.called)

    @async_test
    async def test_unknown_sessions_and_garbage_on_the_channel(self) -> None:
        a, b = await self.two_nodes()
        client = await self.client(a)
        # Hostile or broken messages on the cluster's request channel are dropped.
        cmd = a.backend.connections.cmd
        for junk in ("not json", "[]", '{"id": 1}', '{"id": "x", "reply": "r", "body": {"op": 5}}'):
            await cmd.publish("t:api:requests", junk)
            await cmd.publish("t:api:replies:a", junk)
        # Every node says "not here": the answer must not wait for a timeout
        # (made longer than this test's own, so waiting for it fails the test).
        for node in (a, b):
            node.service.site.resource.children[b"api"].sessions.timeout = 3600
        for path in ("join", "leave"):
            code, body, _ = await self.api(b, b"POST", path, {"session": "nobody", "room": "r"})
            self.assertEqual((code, body["error"]["name"]), (404, "bad_state"), body)
        code, body, _ = await self.api(b, b"POST", "disconnect", {"session": "nobody"})
        self.assertEqual((code, body["error"]["name"]), (404, "bad_state"), body)
        code, body, _ = await self.api(b, b"POST", "send", {"session": "nobody", "event": "e"})
        self.assertEqual((code, body["error"]["name"]), (404, "bad_state"), body)
        code, body, _ = await self.api(b, b"POST", "join", {"session": client.session, "room": "r"})
        self.assertEqual(code, 200, body)

    @async_test
    async def test_a_retry_on_another_node_publishes_once(self) -> None:
        a, b = await self.two_nodes()
        member = await self.client(a, rooms=["news"])
        publish = {"room": "news", "event": "story", "data": {"n": 1}}
        code, first, headers = await self.api(a, b"POST", "publish", publish, idempotency=b"k-1")
        self.assertEqual(code, 200, first)
        self.assertIsNone(headers.getRawHeaders(b"idempotent-replayed"))
        code, again, headers = await self.api(b, b"POST", "publish", publish, idempotency=b"k-1")
        self.assertEqual((code, again), (200, first))
        self.assertEqual(headers.getRawHeaders(b"idempotent-replayed"), [b"true"])
        other = dict(publish, data={"n": 2})
        code, body, _ = await self.api(b, b"POST", "publish", other, idempotency=b"k-1")
        self.assertEqual((code, body["error"]["name"]), (409, "bad_state"), body)
        # A refusal is not remembered: the key is free for a corrected retry.
        code, body, _ = await self.api(b, b"POST", "publish", {"room": "news"}, idempotency=b"k-2")
        self.assertEqual(code, 400, body)
        code, body, _ = await self.api(a, b"POST", "publish", other, idempotency=b"k-2")
        self.assertEqual((code, body["offset"]), (200, 2), body)
        await member.wait_for(lambda m: m.get("type") == "event" and m["data"] == {"n": 2})
        heard = [m["data"] for m in member.messages if m.get("type") == "event"]
        self.assertEqual(heard, [{"n": 1}, {"n": 2}])  # published once each

    @async_test
    async def test_without_redis_a_keyed_request_does_nothing(self) -> None:
        a, _ = await self.two_nodes()
        self.redis.kill()
        await wait_until(lambda: a.backend.connections.cmd is None, what="redis to be gone")
        publish = {"room": "news", "event": "story", "data": 1}
        code, body, _ = await self.api(a, b"POST", "publish", publish, idempotency=b"k-9")
        self.assertEqual((code, body["error"]["name"]), (503, "unavailable"), body)
        code, body, _ = await self.api(a, b"GET", "info")
        self.assertEqual(code, 200, body)  # the node still answers what it can
