"""The mock server over real sockets, driven by the Python client: every fault of
tests/mock_scenarios/every_fault.yaml, the scenario's events and RPC methods,
and the control endpoint (good and bad requests)."""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial import unittest
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

from tests.helpers.client import FAST
from tests.wsclient import async_test, http_get, sleep, wait_until
from warpsocket.client.client import DeliveryError, Message, Opened, WarpSocketClient
from warpsocket.client.options import ClientOptions
from warpsocket.client.state import ClientState
from warpsocket.mock import MockService, load_scenario

HERE = os.path.join(os.path.dirname(__file__), "mock_scenarios")
EVERY_FAULT = os.path.join(HERE, "every_fault.yaml")


async def http(
    port: int,
    method: bytes,
    path: str,
    body: bytes | None = None,
    kind: bytes = b"application/json",
) -> tuple[int, Any]:
    headers = Headers({b"content-type": [kind]})
    producer = FileBodyProducer(_bytes_io(body)) if body is not None else None
    url = f"http://127.0.0.1:{port}{path}".encode()
    response = await Agent(reactor).request(method, url, headers, producer)
    raw: bytes = await readBody(response)
    return response.code, json.loads(raw) if raw.strip() else None


def _bytes_io(body: bytes) -> Any:
    from io import BytesIO

    return BytesIO(body)


class MockCase(unittest.TestCase):
    scenario_file = EVERY_FAULT

    def setUp(self) -> None:
        self.service = MockService(load_scenario(self.scenario_file), ["tcp:0:interface=127.0.0.1"])
        self.service.startService()
        self.port = self.service.ports[0].getHost().port
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self.clients: list[WarpSocketClient] = []

    async def stop(self) -> None:
        for client in self.clients:
            await client.close()
        await self.service.stopService()

    def tearDown(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.stop())

    def client(self, token: str | None = "tok-alice", **options: Any) -> WarpSocketClient:
        client = WarpSocketClient(
            self.url,
            ClientOptions(backoff=FAST, watch_network=False, **options),
            token=(lambda: token) if token is not None else None,
        )
        client.opens: list[Opened] = []  # type: ignore[attr-defined]
        client.seen: list[Message] = []  # type: ignore[attr-defined]
        client.on_open(client.opens.append)  # type: ignore[attr-defined]
        client.on("*", client.seen.append)  # type: ignore[attr-defined]
        self.clients.append(client)
        return client

    async def connected(self, token: str | None = "tok-alice", rooms: tuple[str, ...] = ()) -> Any:
        client: Any = self.client(token)
        for room in rooms:
            client.subscribe(room)
        await client.connect(timeout=10)
        return client

    async def reopened(self, client: Any, opens: int) -> Opened:
        await wait_until(lambda: len(client.opens) > opens, what="a new welcome")
        opened: Opened = client.opens[-1]
        return opened

    def events(self, client: Any, name: str) -> list[Any]:
        return [m.data for m in client.seen if m.event == name]


class ScenarioPlayTests(MockCase):
    @async_test
    async def test_events_rpc_and_templates(self) -> None:
        client = await self.connected(rooms=("feed",))
        await wait_until(lambda: len(self.events(client, "item")) == 3, what="3 feed items")
        await wait_until(lambda: self.events(client, "note"), what="the connect note")
        (note,) = self.events(client, "note")
        self.assertEqual(note, {"session": client.session, "user": "alice", "text": "hello alice"})
        self.assertEqual([item["n"] for item in self.events(client, "item")], [1, 2, 3])
        self.assertTrue(all(isinstance(item["at"], int) for item in self.events(client, "item")))
        client.send("echo", {"text": "ping"})
        await wait_until(lambda: self.events(client, "echoed"), what="the echo")
        self.assertEqual(self.events(client, "echoed"), [{"text": "ping", "seq": 1}])
        self.assertEqual(await client.call("add", {"a": 2}), {"sum": 2, "by": "alice"})
        started = reactor.seconds()
        self.assertEqual(await client.call("slow"), "done")
        self.assertGreaterEqual(reactor.seconds() - started, 0.19)
        with self.assertRaises(DeliveryError) as refused:
            await client.call("broken", {"why": "on purpose"})
        self.assertEqual(refused.exception.outcome.code, 4350)
        self.assertEqual(refused.exception.outcome.message, "broken: on purpose")
        # The feed's join trigger fires once: a resume is no new join.
        self.assertEqual(self.service.engine.fired["events[1]"], 3)

    @async_test
    async def test_an_unknown_token_is_refused(self) -> None:
        client: Any = self.client("tok-mallory")
        client.connect().addErrback(lambda _: None)
        await wait_until(lambda: client.state is ClientState.CLOSED, what="the refusal")
        self.assertEqual(client._last_close_code, 4100)


class FaultTests(MockCase):
    @async_test
    async def test_cut_resumes_with_everything_recovered(self) -> None:
        client = await self.connected(rooms=("feed",))
        session = client.session
        client.send("cut")
        opened = await self.reopened(client, 1)
        self.assertEqual((opened.session, opened.resumed, opened.lost), (session, True, ()))
        self.assertEqual(client._last_close_code, 1006)

    @async_test
    async def test_close_with_a_code(self) -> None:
        client = await self.connected()
        client.send("close")
        opened = await self.reopened(client, 1)
        self.assertEqual(client._last_close_code, 4999)
        self.assertTrue(opened.recovered)

    @async_test
    async def test_delay_holds_every_frame_then_clear_lifts_it(self) -> None:
        client = await self.connected()
        await sleep(0.3)  # past the first connection's timeline delay
        started = reactor.seconds()
        await client.call("add", {"a": 1})
        self.assertLess(reactor.seconds() - started, 0.4)
        client.send("delay")
        await sleep(0.05)
        started = reactor.seconds()
        self.assertEqual(await client.call("add", {"a": 1}), {"sum": 1, "by": "alice"})
        self.assertGreaterEqual(reactor.seconds() - started, 0.49)
        client.send("clear")
        await sleep(0.6)  # the held frames leave
        started = reactor.seconds()
        await client.call("add", {"a": 1})
        self.assertLess(reactor.seconds() - started, 0.4)
        self.assertEqual(len(client.opens), 1)  # delayed, never dropped

    @async_test
    async def test_stall_stops_writes_then_sends_them_all(self) -> None:
        client = await self.connected()
        await sleep(0.3)
        client.send("stall")
        await sleep(0.05)
        started = reactor.seconds()
        self.assertEqual(await client.call("add", {"a": 5}), {"sum": 5, "by": "alice"})
        self.assertGreaterEqual(reactor.seconds() - started, 0.4)
        self.assertEqual(len(client.opens), 1)

    @async_test
    async def test_restart_comes_back_with_new_epochs(self) -> None:
        client = await self.connected(rooms=("feed",))
        await wait_until(lambda: len(self.events(client, "item")) == 3, what="feed items")
        old_hub = self.service.hub
        client.send("restart")
        opened = await self.reopened(client, 1)
        self.assertIsNot(self.service.hub, old_hub)
        self.assertEqual(self.service.generation, 1)
        self.assertFalse(opened.resumed)
        self.assertFalse(opened.recovered)
        self.assertIn("room:feed", opened.lost)
        # The new hub plays the scenario too: the feed's join fires again.
        await wait_until(lambda: len(self.events(client, "item")) == 6, what="the new feed")
        self.assertEqual(await client.call("add", {"a": 3}), {"sum": 3, "by": "alice"})

    @async_test
    async def test_refuse_tokens_4101_once_then_resume(self) -> None:
        client = await self.connected()
        client.send("refuse")
        await wait_until(lambda: self.service.refuse_count == 1, what="refusal armed")
        client.send("cut")
        opened = await self.reopened(client, 1)
        self.assertEqual(self.service.tokens_refused, 1)
        self.assertEqual(self.service.refuse_count, 0)
        self.assertTrue(opened.recovered)

    @async_test
    async def test_go_away_with_a_hint(self) -> None:
        client = await self.connected()
        closed_at: list[float] = []
        client.on_state(
            lambda old, new: (
                closed_at.append(reactor.seconds()) if new is ClientState.DISCONNECTED else None
            )
        )
        # Triggered by the session's event: that session is sent away.
        client.send("go_away")
        await wait_until(lambda: bool(closed_at), what="the 4500")
        self.assertEqual(client._last_close_code, 4500)
        opened = await self.reopened(client, 1)
        # The client waited for the hint (0.3 s, up to twice that with jitter).
        self.assertGreaterEqual(reactor.seconds() - closed_at[0], 0.29)
        self.assertTrue(opened.recovered)
        # For the whole server (the control endpoint): the drain path.
        fault = b'{"fault": "go_away", "retry_after": "500ms"}'
        status, body = await http(self.port, b"POST", "/mock/fault", fault)
        self.assertEqual((status, body["affected"]), (200, 1))
        await wait_until(lambda: len(closed_at) == 2, what="the second 4500")
        code, text, _ = await http_get(self.port, "/healthz")
        self.assertEqual((code, text), (503, b"draining\n"))
        opened = await self.reopened(client, 2)
        self.assertGreaterEqual(reactor.seconds() - closed_at[1], 0.49)
        self.assertTrue(opened.recovered)
        code, text, _ = await http_get(self.port, "/healthz")
        self.assertEqual(code, 200)


class ControlTests(MockCase):
    @async_test
    async def test_fault_emit_and_state(self) -> None:
        client = await self.connected()
        status, body = await http(self.port, b"GET", "/mock/state")
        self.assertEqual(status, 200)
        self.assertEqual(body["scenario"], "every fault")
        self.assertEqual([s["id"] for s in body["sessions"]], [client.session])
        fault = json.dumps({"fault": "cut", "session": client.session}).encode()
        status, body = await http(self.port, b"POST", "/mock/fault", fault)
        self.assertEqual((status, body), (200, {"ok": True, "fault": "cut", "affected": 1}))
        await self.reopened(client, 1)
        emit = {"session": client.session, "event": "poke", "data": {"to": "{{user}}"}}
        status, _ = await http(self.port, b"POST", "/mock/emit", json.dumps(emit).encode())
        self.assertEqual(status, 200)
        await wait_until(lambda: self.events(client, "poke"), what="the emitted event")
        self.assertEqual(self.events(client, "poke"), [{"to": "alice"}])
        refuse = json.dumps({"fault": "refuse_tokens", "code": 4100}).encode()
        status, _ = await http(self.port, b"POST", "/mock/fault", refuse)
        self.assertEqual(status, 200)
        await http(self.port, b"POST", "/mock/fault", b'{"fault": "cut"}')
        await wait_until(lambda: client.state is ClientState.CLOSED, what="the 4100")
        self.assertEqual(client._last_close_code, 4100)  # not retried: unauthorized

    @async_test
    async def test_bad_requests_get_4xx_and_change_nothing(self) -> None:
        client = await self.connected()
        session = client.session
        cases: list[tuple[bytes, str, bytes | None, bytes, int, str]] = [
            (b"POST", "/mock/fault", b"{not json", b"application/json", 400, "not JSON"),
            (b"POST", "/mock/fault", b"[1, 2]", b"application/json", 400, "JSON object"),
            (
                b"POST",
                "/mock/fault",
                b'{"fault": "explode"}',
                b"application/json",
                400,
                "body.fault",
            ),
            (b"POST", "/mock/fault", b'{"fault": "stall"}', b"application/json", 400, "body.for"),
            (
                b"POST",
                "/mock/fault",
                b'{"fault": "cut", "sesion": "x"}',
                b"application/json",
                400,
                "body.sesion",
            ),
            (
                b"POST",
                "/mock/fault",
                b'{"fault": "stall", "for": "-1s"}',
                b"application/json",
                400,
                "bad duration",
            ),
            (
                b"POST",
                "/mock/fault",
                b'{"fault": "close", "code": 1006}',
                b"application/json",
                400,
                "body.code",
            ),
            (
                b"POST",
                "/mock/fault",
                b'{"fault": "cut", "session": "nobody"}',
                b"application/json",
                404,
                "session",
            ),
            (b"POST", "/mock/fault", b'{"fault": "cut"}', b"text/plain", 415, "content-type"),
            (
                b"POST",
                "/mock/fault",
                b"{" + b" " * 70_000 + b"}",
                b"application/json",
                413,
                "larger",
            ),
            (b"GET", "/mock/fault", None, b"application/json", 405, "POST"),
            (b"POST", "/mock/emit", b'{"data": 1}', b"application/json", 400, "body.event"),
            (
                b"POST",
                "/mock/emit",
                b'{"event": "x", "room": "r", "data": "{{eval}}"}',
                b"application/json",
                400,
                "placeholder",
            ),
            (b"POST", "/mock/nothing", b"{}", b"application/json", 404, "no such control"),
        ]
        for method, path, body, kind, status, words in cases:
            got, answer = await http(self.port, method, path, body, kind)
            self.assertEqual(got, status, (path, body, answer))
            self.assertIn(words, answer["error"], (path, body))
        # Nothing happened to the client or the server.
        self.assertEqual(await client.call("add", {"a": 1}), {"sum": 1, "by": "alice"})
        self.assertEqual((client.session, len(client.opens)), (session, 1))
        self.assertEqual(self.service.generation, 0)
        self.assertFalse(self.service.hub.port.draining)


class RestrictedControlTests(MockCase):
    scenario_file = os.path.join(HERE, "every_fault.json")

    @async_test
    async def test_only_what_the_scenario_allows(self) -> None:
        client = await self.connected(token=None)  # no auth section: no token
        status, body = await http(self.port, b"POST", "/mock/fault", b'{"fault": "restart"}')
        self.assertEqual(status, 403)
        self.assertIn("control.faults", body["error"])
        status, body = await http(self.port, b"POST", "/mock/emit", b'{"event": "x", "room": "r"}')
        self.assertEqual(status, 403)
        status, body = await http(
            self.port, b"POST", "/mock/fault", b'{"fault": "stall", "for": "1s"}'
        )
        self.assertEqual((status, body["affected"]), (200, 1))
        status, body = await http(self.port, b"GET", "/mock/state")
        self.assertEqual((body["stalled"], body["delayed"]), (1, 0))
        self.assertEqual(self.service.generation, 0)
        self.assertEqual(len(client.opens), 1)
