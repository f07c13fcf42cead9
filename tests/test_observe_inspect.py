"""The live inspector over a real socket: the key check (401/403, constant
time, no leak), the login cookie, the JSON state and a connection's envelopes
(secrets masked); and the structured logs (JSON lines, redacted --debug)."""

from __future__ import annotations

import io
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.error import ConnectionRefusedError
from twisted.logger import Logger, globalLogPublisher
from twisted.python import usage
from twisted.trial import unittest
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

from tests.helpers.client import ServerFixture, pause, wait_until
from tests.helpers.processes import ServerProcess, free_port
from tests.wsclient import connect, http_get, reactor
from warpsocket.protocol.envelope import Envelope, MessageType
from warpsocket.server.cli import Options
from warpsocket.server.hub import Hub, HubOptions
from warpsocket.server.middleware import LoggingMiddleware
from warpsocket.server.observe.logs import json_line, log_observer
from warpsocket.server.observe.redact import REDACTED
from warpsocket.server.web import add_inspector

KEY = b"correct horse battery staple"
REPO = Path(__file__).resolve().parent.parent


class InspectorTests(unittest.TestCase):
    def setUp(self) -> None:
        self.hub = Hub(HubOptions(open_rooms=True, inspect=True))
        self.server = ServerFixture(self, self.hub)
        add_inspector(self.server.service.site, self.hub, KEY)
        self.base = f"http://127.0.0.1:{self.server.port}"

    async def get(self, path: str, headers: dict[bytes, list[bytes]] | None = None) -> Any:
        agent = Agent(reactor)
        response = await agent.request(b"GET", (self.base + path).encode(), Headers(headers or {}))
        body = await readBody(response)
        return response, body

    def test_key_check(self) -> Deferred[None]:
        async def run() -> None:
            for path in ("/inspect/state", "/inspect/connection/1"):
                response, body = await self.get(path)
                self.assertEqual(response.code, 401)
                response, body = await self.get(path, {b"x-inspect-key": [b"wrong key!"]})
                self.assertEqual((response.code, body), (403, b"forbidden\n"))
            response, body = await self.get("/inspect")
            self.assertEqual(response.code, 401)
            self.assertIn(b'<form method="post" action="/inspect/login">', body)
            self.assertNotIn(KEY, body)
            response, body = await self.get(
                "/inspect/state", {b"x-inspect-key": [b"garbage-cookie"], b"cookie": [b"x=y"]}
            )
            self.assertEqual(response.code, 403)
            response, body = await self.get(
                "/inspect/state", {b"cookie": [b"warpsocket_inspect=guessed"]}
            )
            self.assertEqual(response.code, 403)

        return ensureDeferred(run())

    def test_login_sets_a_cookie_not_the_key(self) -> Deferred[None]:
        async def run() -> None:
            agent = Agent(reactor)
            form = FileBodyProducer(io.BytesIO(b"key=" + KEY.replace(b" ", b"+")))
            response = await agent.request(
                b"POST",
                (self.base + "/inspect/login").encode(),
                Headers({b"content-type": [b"application/x-www-form-urlencoded"]}),
                form,
            )
            await readBody(response)
            self.assertEqual(response.code, 303)
            (cookie,) = response.headers.getRawHeaders(b"set-cookie")
            self.assertNotIn(KEY, cookie)
            self.assertIn(b"HttpOnly", cookie)
            token = cookie.split(b";")[0]
            response, body = await self.get("/inspect", {b"cookie": [token]})
            self.assertEqual(response.code, 200)
            self.assertIn(b"/inspect/state", body)
            response, body = await self.get("/inspect/state", {b"cookie": [token]})
            self.assertEqual(response.code, 200)
            bad = FileBodyProducer(io.BytesIO(b"key=nope"))
            response = await agent.request(
                b"POST",
                (self.base + "/inspect/login").encode(),
                Headers({b"content-type": [b"application/x-www-form-urlencoded"]}),
                bad,
            )
            body = await readBody(response)
            self.assertEqual(response.code, 403)
            self.assertIsNone(response.headers.getRawHeaders(b"set-cookie"))

        return ensureDeferred(run())

    def test_state_and_envelopes(self) -> Deferred[None]:
        auth = {b"x-inspect-key": [KEY]}

        async def run() -> None:
            client = await connect(self.server.port)
            self.addCleanup(client.drop)
            await client.hello(rooms=["chat"])
            response, body = await self.get("/inspect/state", auth)
            self.assertEqual(response.code, 200)
            state = json.loads(body)
            self.assertEqual(state["health"], "ok")
            self.assertEqual(state["backend"]["health"], "ok")
            (conn,) = state["connections"]
            self.assertEqual((conn["state"], conn["rooms"]), ("open", ["chat"]))
            self.assertEqual(conn["pending_acks"], 0)
            self.assertEqual(state["rooms"][0]["room"], "chat")
            self.assertEqual(state["rooms"][0]["members"], [conn["session"]])
            path = f"/inspect/connection/{conn['id']}"
            response, body = await self.get(path, auth)
            self.assertEqual(json.loads(body)["envelopes"], [])  # recording starts now
            client.send(
                {
                    "type": "event",
                    "id": "e-1",
                    "timestamp": 1,
                    "event": "note",
                    "room": "chat",
                    "ack": True,
                    "data": {"token": "s3cret", "text": "x" * 1000},
                }
            )
            await wait_until(lambda: len(client.messages) >= 3)
            response, body = await self.get(path, auth)
            recent = json.loads(body)["envelopes"]
            self.assertNotIn(b"s3cret", body)
            kinds = [(e["dir"], e["envelope"]["type"]) for e in recent]
            self.assertIn(("in", "event"), kinds)
            self.assertIn(("out", "ack"), kinds)
            inbound = next(e["envelope"] for e in recent if e["dir"] == "in")
            self.assertTrue(inbound["data"].endswith("..."))
            self.assertLess(len(inbound["data"]), 300)
            response, body = await self.get("/inspect/connection/999", auth)
            self.assertEqual(response.code, 404)

        return ensureDeferred(run())


class LogTests(unittest.TestCase):
    def test_json_lines(self) -> None:
        out = io.StringIO()
        observer = log_observer("json", out)
        log = Logger(namespace="warpsocket.test", observer=observer)
        log.info("hello {who}", who="world", token="s3cret", trace_id="ab" * 16)
        log.debug("not shown without debug")
        try:
            _ = 1 / 0
        except ZeroDivisionError:
            log.failure("it broke")
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        self.assertEqual(len(lines), 2)
        first = lines[0]
        self.assertEqual(
            (first["level"], first["namespace"], first["message"], first["trace_id"]),
            ("info", "warpsocket.test", "hello world", "ab" * 16),
        )
        self.assertEqual(first["fields"]["token"], REDACTED)
        self.assertNotIn("s3cret", out.getvalue())
        self.assertTrue(first["time"].endswith("+00:00"))
        self.assertIn("ZeroDivisionError", lines[1]["error"])
        self.assertEqual(lines[1]["level"], "critical")

    def test_json_line_has_the_current_span(self) -> None:
        from opentelemetry.sdk.trace import TracerProvider

        tracer = TracerProvider().get_tracer("t")
        with tracer.start_as_current_span("s") as span:
            line = json.loads(json_line({"log_format": "x", "log_namespace": "n", "log_time": 0}))
        self.assertEqual(line["trace_id"], f"{span.get_span_context().trace_id:032x}")

    def test_text_lines(self) -> None:
        out = io.StringIO()
        log = Logger(namespace="warpsocket.test", observer=log_observer("text", out))
        log.info("hello {who}", who="world")
        self.assertIn("[warpsocket.test#info] hello world", out.getvalue())

    def test_debug_envelopes_are_redacted_and_cut(self) -> None:
        seen: list[str] = []

        def observe(event: Any) -> None:
            if "envelope" in event:
                seen.append(json_line(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        auth = Envelope(
            type=MessageType.AUTH, id="a", timestamp=1, data={"token": "jwt.s3cret.sig"}
        )
        big = Envelope(
            type=MessageType.EVENT,
            id="b",
            timestamp=1,
            data={"resume_token": "r3sume", "x": "y" * 5000},
        )
        ctx: Any = type("Ctx", (), {"session": "s"})()
        LoggingMiddleware().on_inbound(ctx, auth)
        LoggingMiddleware().on_outbound(None, big)
        text = "\n".join(seen)
        self.assertEqual(len(seen), 2)
        self.assertNotIn("s3cret", text)
        self.assertNotIn("r3sume", text)
        self.assertLess(len(seen[1]), 1000)

    def test_cli_options(self) -> None:
        with tempfile.NamedTemporaryFile("wb", delete=False) as key:
            key.write(KEY + b"\n")
        self.addCleanup(os.unlink, key.name)
        options = Options()
        options.parseOptions(
            [
                "--log-format",
                "json",
                "--inspect-key-file",
                key.name,
                "--slow-handler",
                "0.5",
                "--slow-ack",
                "2",
                "--tracing",
            ]
        )
        hub_options = options["hub_options"]
        self.assertEqual((hub_options.slow.handler, hub_options.slow.ack), (0.5, 2.0))
        self.assertTrue(hub_options.inspect and hub_options.tracing)
        self.assertEqual(options["inspect_key"], KEY)
        self.assertRaises(usage.UsageError, Options().parseOptions, ["--log-format", "xml"])
        with tempfile.NamedTemporaryFile("wb", delete=False) as short:
            short.write(b"short")
        self.addCleanup(os.unlink, short.name)
        self.assertRaises(
            usage.UsageError, Options().parseOptions, ["--inspect-key-file", short.name]
        )


class TwistdJsonLogTests(unittest.TestCase):
    """``twistd warpsocket --log-format json --debug`` as a real process: every
    line of its output is one JSON object, and no secret reaches it."""

    timeout = 40

    def test_json_lines_without_secrets(self) -> Deferred[None]:
        port = free_port()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
        process = ServerProcess()
        cwd = self.mktemp()
        os.makedirs(cwd)
        args = [
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "warpsocket",
            "--endpoint",
            f"tcp:{port}:interface=127.0.0.1",
            "--open-rooms",
            "--log-format",
            "json",
            "--debug",
        ]
        reactor.spawnProcess(process, sys.executable, [sys.executable, *args], env=env, path=cwd)

        async def run() -> None:
            try:
                code = 0
                for _ in range(200):
                    try:
                        code, _, _ = await http_get(port, "/healthz?token=s3cret-query")
                        break
                    except (ConnectionRefusedError, OSError):
                        await pause(0.1)
                self.assertEqual(code, 200)
                client = await connect(port)
                await client.hello()
                client.send(
                    {"type": "auth", "id": "a-1", "timestamp": 1, "data": {"token": "s3cret-jwt"}}
                )
                await client.next_of("error")
                client.drop()
                await wait_until(lambda: b"a-1" in process.output, 10)
            finally:
                process.transport.signalProcess("TERM")  # type: ignore[union-attr]
                await process.ended
            text = process.output.decode("utf-8")
            lines = [line for line in text.splitlines() if line.strip()]
            self.assertTrue(lines)
            parsed = [json.loads(line) for line in lines]  # every line is JSON
            self.assertTrue(
                all({"time", "level", "namespace", "message"} <= set(p) for p in parsed)
            )
            self.assertNotIn("s3cret", text)
            self.assertIn("/healthz", text)  # the access log, without its query string
            self.assertIn(REDACTED, text)

        return ensureDeferred(run())
