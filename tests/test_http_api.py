"""The HTTP server API (docs/http-api.md) over real sockets: a WebSocket
member receives what an HTTP call published, and hostile requests get a
JSON error naming a registry code, leaving the server serving."""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial import unittest
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from tests.wsclient import ServerTestCase, async_test, reactor
from warpsocket.core.server import CoreOptions
from warpsocket.server.cli import Options, makeService
from warpsocket.server.http_api import load_api_keys
from warpsocket.server.hub import Hub, HubOptions
from warpsocket.server.idempotency import IdempotencyCache
from warpsocket.server.security.config import SecurityOptions
from warpsocket.server.service import WarpSocketService
from warpsocket.server.web import add_http_api

KEY = b"k" * 32
OTHER_KEY = b"second-key-for-rotation"
Reply = tuple[int, Any, Headers]


class ChunkedBody(FileBodyProducer):
    """A body of unknown length: the Agent sends it chunked (no Content-Length)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.length = UNKNOWN_LENGTH


class HttpApiTestCase(ServerTestCase):
    def start_api(self, max_body: int | None = None, **kwargs: Any) -> Hub:
        hub = self.start_server(**kwargs)
        add_http_api(self.service.site, hub, [KEY, OTHER_KEY], max_body)
        return hub

    async def call(
        self,
        method: bytes,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        key: bytes | None = KEY,
        authorization: bytes | None = None,
        idempotency: bytes | None = None,
        chunked: bool = False,
        port: int | None = None,
    ) -> Reply:
        headers = Headers({b"content-type": [b"application/json"]})
        if authorization is not None:
            headers.addRawHeader(b"authorization", authorization)
        elif key is not None:
            headers.addRawHeader(b"authorization", b"Bearer " + key)
        if idempotency is not None:
            headers.addRawHeader(b"idempotency-key", idempotency)
        payload = raw if raw is not None else None if body is None else json.dumps(body).encode()
        producer: Any = None
        if payload is not None:
            producer = ChunkedBody(payload) if chunked else FileBodyProducer(io.BytesIO(payload))
        url = f"http://127.0.0.1:{port or self.port}{path}".encode("ascii")
        response: IResponse = await Agent(reactor).request(method, url, headers, producer)
        content: bytes = await readBody(response)
        try:
            decoded = json.loads(content)
        except ValueError:
            decoded = content
        return response.code, decoded, response.headers

    async def post(self, path: str, body: Any = None, **kwargs: Any) -> Reply:
        return await self.call(b"POST", "/api/" + path, body, **kwargs)

    def assertRefused(self, reply: Reply, status: int, name: str) -> dict[str, Any]:
        code, body, headers = reply
        self.assertEqual(code, status, body)
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(body["error"]["name"], name, body)
        self.assertIsInstance(body["error"]["code"], int)
        self.assertTrue(body["error"]["message"])
        error: dict[str, Any] = body["error"]
        return error


class DeliveryTests(HttpApiTestCase):
    @async_test
    async def test_publish_reaches_a_websocket_member(self) -> None:
        self.start_api(open_rooms=True)
        client = await self.connect(rooms=["chat"])
        code, body, _ = await self.post(
            "publish", {"room": "chat", "event": "news", "data": {"n": 1, "s": "é"}, "ttl": 30}
        )
        self.assertEqual(code, 200, body)
        self.assertEqual(body["offset"], 1)
        self.assertIsInstance(body["epoch"], str)
        event = await client.next_of("event")
        self.assertEqual(event["stream"], "room:chat")
        self.assertEqual(event["event"], "news")
        self.assertEqual(event["data"], {"n": 1, "s": "é"})
        self.assertEqual(event["offset"], body["offset"])
        self.assertEqual(event["id"], body["id"])

    @async_test
    async def test_broadcast_reaches_every_connection(self) -> None:
        self.start_api()
        clients = [await self.connect(), await self.connect()]
        code, body, _ = await self.post("broadcast", {"event": "notice", "data": [1, None]})
        self.assertEqual(code, 200, body)
        for client in clients:
            event = await client.next_of("event")
            self.assertEqual((event["stream"], event["data"]), ("broadcast", [1, None]))

    @async_test
    async def test_send_to_a_session_is_stored_and_delivered(self) -> None:
        self.start_api()
        client = await self.connect()
        code, body, _ = await self.post(
            "send", {"session": client.session, "event": "dm", "data": "hi"}
        )
        self.assertEqual((code, body), (200, {"delivered": "stored"}))
        event = await client.next_of("event")
        self.assertEqual((event["stream"], event["event"], event["data"]), ("direct", "dm", "hi"))

    @async_test
    async def test_acked_send_answers_once_the_client_acknowledges(self) -> None:
        self.start_api()
        client = await self.connect()
        answer = Deferred.fromCoroutine(
            self.post("send", {"session": client.session, "event": "dm", "ack": True})
        )
        event = await client.next_of("event")
        self.assertTrue(event.get("ack"))
        self.assertFalse(answer.called)  # the response waits for the client
        client.ack(event["id"])
        code, body, _ = await answer
        self.assertEqual((code, body), (200, {"delivered": "acked"}))

    @async_test
    async def test_acked_send_times_out_with_504(self) -> None:
        self.start_api()
        client = await self.connect()
        answer = Deferred.fromCoroutine(
            self.post("send", {"session": client.session, "event": "dm", "ack": True, "timeout": 3})
        )
        await client.next_of("event")  # delivered, never acknowledged
        self.advance(4)
        error = self.assertRefused(await answer, 504, "timeout")
        self.assertIn("offset", error["message"])

    @async_test
    async def test_send_to_an_unknown_session_is_404(self) -> None:
        self.start_api()
        reply = await self.post("send", {"session": "nobody", "event": "dm"})
        self.assertRefused(reply, 404, "bad_state")

    @async_test
    async def test_send_to_a_user_counts_its_sessions(self) -> None:
        self.start_api()
        code, body, _ = await self.post("send", {"user": "ann", "event": "dm", "data": 1})
        self.assertEqual((code, body), (200, {"sessions": 0}))

    @async_test
    async def test_join_and_leave_a_session(self) -> None:
        self.start_api()  # rooms closed to clients: only the server puts them in
        client = await self.connect()
        code, body, _ = await self.post("join", {"session": client.session, "room": "desk"})
        self.assertEqual((code, body), (200, {"joined": "desk"}), body)
        notice = await client.next_of("subscribe")
        self.assertEqual(notice["room"], "desk")
        code, _, _ = await self.post("publish", {"room": "desk", "event": "ticket", "data": 9})
        self.assertEqual(code, 200)
        event = await client.next_of("event")
        self.assertEqual((event["stream"], event["data"]), ("room:desk", 9))
        code, body, _ = await self.post("leave", {"session": client.session, "room": "desk"})
        self.assertEqual((code, body), (200, {"left": "desk"}), body)
        self.assertEqual((await client.next_of("unsubscribe"))["room"], "desk")
        self.assertEqual(self.hub.room_members("desk"), set())
        for path in ("join", "leave"):
            reply = await self.post(path, {"session": "nobody", "room": "desk"})
            self.assertRefused(reply, 404, "bad_state")
            reply = await self.post(path, {"session": client.session})
            self.assertRefused(reply, 400, "bad_envelope")

    @async_test
    async def test_join_beyond_max_rooms_is_429(self) -> None:
        self.start_api(core=CoreOptions(max_rooms=1))
        client = await self.connect()
        code, _, _ = await self.post("join", {"session": client.session, "room": "one"})
        self.assertEqual(code, 200)
        reply = await self.post("join", {"session": client.session, "room": "two"})
        self.assertRefused(reply, 429, "queue_full")

    @async_test
    async def test_presence_and_info(self) -> None:
        self.start_api(open_rooms=True)
        first = await self.connect(rooms=["a/b c"])
        second = await self.connect(rooms=["a/b c"])
        code, body, _ = await self.call(b"GET", "/api/presence/a%2Fb%20c")
        self.assertEqual(code, 200, body)
        self.assertEqual(body["room"], "a/b c")
        self.assertEqual(body["count"], 2)
        self.assertEqual(body["sessions"], sorted([first.session, second.session]))
        code, body, _ = await self.call(b"GET", "/api/presence/empty")
        self.assertEqual((code, body["count"], body["sessions"]), (200, 0, []))
        code, body, _ = await self.call(b"GET", "/api/info")
        self.assertEqual(code, 200, body)
        self.assertEqual(body["node"], "node")
        self.assertEqual(body["health"], "ok")
        self.assertEqual((body["connections"], body["sessions"], body["rooms"]), (2, 2, 1))


class RefusalTests(HttpApiTestCase):
    @async_test
    async def test_missing_wrong_or_malformed_keys_are_401(self) -> None:
        self.start_api(open_rooms=True)
        client = await self.connect(rooms=["chat"])
        publish = {"room": "chat", "event": "x"}
        for kwargs in (
            {"key": None},
            {"key": b"k" * 31},
            {"key": KEY + b"x"},
            {"authorization": b"Basic " + KEY},
            {"authorization": b"Bearer"},
            {"authorization": b"Bearer \xff\xfe"},
        ):
            _, _, headers = reply = await self.post("publish", publish, **kwargs)
            self.assertRefused(reply, 401, "unauthorized")
            self.assertEqual(
                headers.getRawHeaders(b"www-authenticate"), [b'Bearer realm="warpsocket"']
            )
        # GETs need the key as well.
        self.assertRefused(await self.call(b"GET", "/api/info", key=None), 401, "unauthorized")
        self.assertEqual(client.drain(), [])  # nothing was published
        # Either configured key works (a rotation).
        code, _, _ = await self.post("publish", publish, key=OTHER_KEY)
        self.assertEqual(code, 200)

    @async_test
    async def test_bad_json_and_bad_fields_are_400(self) -> None:
        self.start_api(open_rooms=True)
        client = await self.connect(rooms=["chat"])
        cases: Sequence[tuple[bytes, str]] = [
            (b"{not json", "bad_frame"),
            (b"\xff\xfe{}", "bad_frame"),
            (b'{"room": "chat", "event": "x", "data": NaN}', "bad_frame"),
            (b'{"room": "chat", "event": "x", "data": 1' + b"0" * 5000 + b"}", "bad_frame"),
            (b"[" * 100_000 + b"]" * 100_000, "bad_frame"),
            (b"", "bad_frame"),
            (b"[1, 2]", "bad_envelope"),
            (b'{"event": "x"}', "bad_envelope"),
            (b'{"room": "chat", "event": "x", "extra": 1}', "bad_envelope"),
            (b'{"room": "", "event": "x"}', "bad_envelope"),
            (b'{"room": 5, "event": "x"}', "bad_envelope"),
            (b'{"room": "chat", "event": "' + b"e" * 257 + b'"}', "bad_envelope"),
            (b'{"room": "\\ud800", "event": "x"}', "bad_envelope"),
            (b'{"room": "chat", "event": "x", "ttl": -1}', "bad_envelope"),
            (b'{"room": "chat", "event": "x", "ttl": true}', "bad_envelope"),
        ]
        for raw, name in cases:
            self.assertRefused(await self.post("publish", raw=raw), 400, name)
        sends: Sequence[dict[str, Any]] = [
            {"event": "x"},
            {"event": "x", "session": "s", "user": "u"},
            {"event": "x", "session": "s", "ack": 1},
            {"event": "x", "session": "s", "timeout": 5},
            {"event": "x", "session": "s", "ack": True, "timeout": 301},
            {"event": "x", "user": "u", "ack": True},
        ]
        for send in sends:
            self.assertRefused(await self.post("send", send), 400, "bad_envelope")
        self.assertEqual(client.drain(), [])

    @async_test
    async def test_out_of_model_data_names_its_path(self) -> None:
        self.start_api(open_rooms=True, core=CoreOptions(max_message_size=4096))
        client = await self.connect(rooms=["chat"])
        cases: Sequence[tuple[Any, str]] = [
            ({"n": [1, 2, 2**53]}, "data.n[2]"),
            ({"s": "\ud800"}, "data.s"),
            ([0.5, {"deep": _nest(80)}], "data[1].deep"),
        ]
        for data, path in cases:
            raw = json.dumps({"room": "chat", "event": "x", "data": data}).encode()
            error = self.assertRefused(await self.post("publish", raw=raw), 400, "bad_envelope")
            self.assertTrue(error["path"].startswith(path), (error, path))
        overflow = b'{"room": "chat", "event": "x", "data": {"f": 1e400}}'  # parses as inf
        error = self.assertRefused(await self.post("publish", raw=overflow), 400, "bad_envelope")
        self.assertEqual(error["path"], "data.f")
        too_many = json.dumps({"event": "x", "data": [0] * 1500}, separators=(",", ":")).encode()
        error = self.assertRefused(await self.post("broadcast", raw=too_many), 400, "bad_envelope")
        self.assertTrue(error["path"].startswith("data"))
        self.assertEqual(client.drain(), [])

    @async_test
    async def test_oversized_bodies_are_413_and_the_server_keeps_serving(self) -> None:
        self.start_api(open_rooms=True, max_body=1000)
        client = await self.connect(rooms=["chat"])
        big = {"room": "chat", "event": "x", "data": "y" * 2000}
        self.assertRefused(await self.post("publish", big), 413, "message_too_large")
        reply = await self.post("publish", big, chunked=True)
        self.assertRefused(reply, 413, "message_too_large")
        small = {"room": "chat", "event": "x", "data": "y" * 100}
        code, _, _ = await self.post("publish", small, chunked=True)
        self.assertEqual(code, 200)
        event = await client.next_of("event")
        self.assertEqual(event["data"], "y" * 100)

    @async_test
    async def test_unknown_paths_and_methods(self) -> None:
        self.start_api()
        self.assertRefused(await self.call(b"GET", "/api/nothing"), 404, "unknown_type")
        self.assertRefused(await self.call(b"GET", "/api/presence/"), 404, "unknown_type")
        reply = await self.call(b"GET", "/api/publish")
        self.assertRefused(reply, 405, "unknown_type")
        self.assertEqual(reply[2].getRawHeaders(b"allow"), [b"POST"])
        self.assertRefused(await self.post("info", {}), 405, "unknown_type")

    @async_test
    async def test_openapi_document_names_every_route(self) -> None:
        self.start_api(open_rooms=True)
        code, spec, _ = await self.call(b"GET", "/api/openapi.json", key=None)
        self.assertEqual(code, 200)
        self.assertEqual(spec["openapi"], "3.1.0")
        routes = {(path, method.upper()) for path, item in spec["paths"].items() for method in item}
        self.assertEqual(
            routes,
            {
                ("/api/publish", "POST"),
                ("/api/broadcast", "POST"),
                ("/api/send", "POST"),
                ("/api/join", "POST"),
                ("/api/leave", "POST"),
                ("/api/presence/{room}", "GET"),
                ("/api/history/{stream}", "GET"),
                ("/api/disconnect", "POST"),
                ("/api/info", "GET"),
            },
        )
        schemas = spec["components"]["schemas"]
        for path, method in routes:
            # Each documented route exists: with the key and no body it is
            # refused as a bad request (POST) or answered (GET), never 404/405.
            concrete = path.replace("{room}", "r").replace("{stream}", "room:r")
            code, body, _ = await self.call(method.encode(), concrete, raw=b"{}")
            self.assertIn(code, (200, 400), (path, body))
            operation = spec["paths"][path][method.lower()]
            for status, answer in operation["responses"].items():
                for media in answer.get("content", {}).values():
                    self.assertIn(media["schema"]["$ref"].rsplit("/", 1)[1], schemas, status)
        # The fields the API accepts are the documented ones.
        publish = schemas["Publish"]["properties"]
        self.assertEqual(set(publish), {"room", "event", "data", "ttl"})
        reply = await self.post("publish", {"room": "r", "event": "e", "other": 1})
        self.assertRefused(reply, 400, "bad_envelope")

    @async_test
    async def test_off_unless_configured(self) -> None:
        self.start_server(open_rooms=True)
        code, _, _ = await self.post("publish", {"room": "chat", "event": "x"})
        self.assertEqual(code, 404)


class IdempotencyTests(HttpApiTestCase):
    @async_test
    async def test_a_retried_publish_publishes_once(self) -> None:
        self.start_api(open_rooms=True)
        client = await self.connect(rooms=["chat"])
        publish = {"room": "chat", "event": "x", "data": 1}
        first = await self.post("publish", publish, idempotency=b"order-17")
        again = await self.post("publish", publish, idempotency=b"order-17")
        self.assertEqual((first[0], again[0]), (200, 200))
        self.assertEqual(again[1], first[1])
        self.assertIsNone(first[2].getRawHeaders(b"idempotent-replayed"))
        self.assertEqual(again[2].getRawHeaders(b"idempotent-replayed"), [b"true"])
        # Another key, or none, publishes anew.
        other = await self.post("publish", publish, idempotency=b"order-18")
        self.assertEqual(other[1]["offset"], 2)
        code, body, _ = await self.post("publish", {"room": "chat", "event": "end"})
        self.assertEqual(body["offset"], 3)
        offsets = [(await client.next_of("event"))["offset"] for _ in range(3)]
        self.assertEqual(offsets, [1, 2, 3])
        # The same key on another endpoint is another key.
        code, _, headers = await self.post("broadcast", {"event": "b"}, idempotency=b"order-17")
        self.assertEqual(code, 200)
        self.assertIsNone(headers.getRawHeaders(b"idempotent-replayed"))

    @async_test
    async def test_another_body_or_a_running_first_is_409(self) -> None:
        self.start_api(open_rooms=True)
        client = await self.connect()
        await self.post("publish", {"room": "r", "event": "x"}, idempotency=b"k1")
        reply = await self.post("publish", {"room": "r", "event": "y"}, idempotency=b"k1")
        self.assertIn("another body", self.assertRefused(reply, 409, "bad_state")["message"])
        send = {"session": client.session, "event": "dm", "ack": True}
        first = Deferred.fromCoroutine(self.post("send", send, idempotency=b"k2"))
        event = await client.next_of("event")
        reply = await self.post("send", send, idempotency=b"k2")
        self.assertIn("still running", self.assertRefused(reply, 409, "bad_state")["message"])
        client.ack(event["id"])
        self.assertEqual((await first)[1], {"delivered": "acked"})
        again = await self.post("send", send, idempotency=b"k2")
        self.assertEqual((again[0], again[1]), (200, {"delivered": "acked"}))
        self.assertEqual(client.drain(), [])  # sent once

    @async_test
    async def test_an_ack_timeout_is_remembered_a_refusal_is_not(self) -> None:
        self.start_api(open_rooms=True)
        client = await self.connect()
        send = {"session": client.session, "event": "dm", "ack": True, "timeout": 2}
        first = Deferred.fromCoroutine(self.post("send", send, idempotency=b"t1"))
        await client.next_of("event")
        self.advance(3)
        self.assertRefused(await first, 504, "timeout")
        reply = await self.post("send", send, idempotency=b"t1")
        self.assertRefused(reply, 504, "timeout")
        self.assertEqual(reply[2].getRawHeaders(b"idempotent-replayed"), [b"true"])
        # Nothing stored after a refusal: the key is free for the corrected call.
        bad = await self.post("publish", {"room": "r"}, idempotency=b"t2")
        self.assertRefused(bad, 400, "bad_envelope")
        code, _, _ = await self.post("publish", {"room": "r", "event": "e"}, idempotency=b"t2")
        self.assertEqual(code, 200)

    @async_test
    async def test_keys_expire_and_must_be_well_formed(self) -> None:
        self.start_api(open_rooms=True)
        publish = {"room": "r", "event": "x"}
        first = await self.post("publish", publish, idempotency=b"day")
        self.clock.advance(86_401)
        later = await self.post("publish", publish, idempotency=b"day")
        self.assertEqual((first[1]["offset"], later[1]["offset"]), (1, 2))
        for bad in (b"k" * 129, b"with space", b"\xff"):
            reply = await self.post("publish", publish, idempotency=bad)
            self.assertRefused(reply, 400, "bad_envelope")

    def test_the_cache_is_bounded(self) -> None:
        cache = IdempotencyCache(Clock(), max_entries=2)
        for key in (b"a", b"b", b"c"):
            self.assertIsNone(cache.begin(b"/api/publish", key, b"{}"))
            cache.finish(b"/api/publish", key, 200, b"ok", True)
        self.assertEqual(len(cache), 2)
        self.assertIsNone(cache.begin(b"/api/publish", b"a", b"{}"))  # evicted: runs again
        replay = cache.begin(b"/api/publish", b"c", b"{}")
        assert replay is not None
        self.assertEqual((replay.status, replay.body), (200, b"ok"))


class AddressListTests(HttpApiTestCase):
    @async_test
    async def test_the_address_lists_apply_to_the_api(self) -> None:
        options = HubOptions(
            core=CoreOptions(),
            security=SecurityOptions(trusted_proxies=1, deny_ips=("203.0.113.0/24",)),
        )
        self.hub = Hub(options)
        self.service = WarpSocketService(self.hub, ["tcp:0:interface=127.0.0.1"])
        add_http_api(self.service.site, self.hub, [KEY])
        self.service.startService()
        self.addCleanup(self.service.stopService)
        port = self.service.ports[0].getHost().port
        agent = Agent(reactor)
        answers = []
        for forwarded in (b"203.0.113.9", b"198.51.100.1"):
            headers = Headers(
                {b"authorization": [b"Bearer " + KEY], b"x-forwarded-for": [forwarded]}
            )
            url = f"http://127.0.0.1:{port}/api/info".encode()
            response = await agent.request(b"GET", url, headers)
            answers.append((response.code, await readBody(response)))
        self.assertEqual(answers[0], (403, b"4104 address_rejected\n"))
        self.assertEqual(answers[1][0], 200)


class KeyFileTests(unittest.TestCase):
    def key_file(self, text: bytes) -> str:
        handle, path = tempfile.mkstemp()
        os.write(handle, text)
        os.close(handle)
        self.addCleanup(os.unlink, path)
        return path

    def test_keys_one_a_line_with_comments(self) -> None:
        path = self.key_file(b"# rotation\n" + KEY + b"\n\n  " + OTHER_KEY + b"  \n")
        self.assertEqual(load_api_keys(path), (KEY, OTHER_KEY))

    def test_weak_empty_or_missing_files_are_usage_errors(self) -> None:
        for text in (b"", b"# only a comment\n", b"short\n", b"has a space in the key!!\n"):
            options = Options()
            with self.assertRaises(usage.UsageError):
                options.parseOptions(["--api-key-file", self.key_file(text)])
        with self.assertRaises(usage.UsageError):
            Options().parseOptions(["--api-key-file", "/nonexistent/keys"])

    def test_the_option_mounts_the_api(self) -> None:
        options = Options()
        options.parseOptions(["--endpoint", "tcp:0", "--api-key-file", self.key_file(KEY + b"\n")])
        service: Any = makeService(options)
        self.assertIn(b"api", service.site.resource.children)
        plain = Options()
        plain.parseOptions(["--endpoint", "tcp:0"])
        self.assertNotIn(b"api", makeService(plain).site.resource.children)  # type: ignore[attr-defined]


def _nest(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value
