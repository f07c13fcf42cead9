"""The ``warpsocket`` console script, run through its installed entry point in
a subprocess against a real server (docs/cli.md): what it prints and the
exit code that says what happened."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import sys
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError, ProcessTerminated
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

from tests.helpers.processes import ServerProcess
from tests.wsclient import ServerTestCase, async_test, http_get, reactor, sleep, wait_until
from warpsocket.protocol.codes import ErrorCode
from warpsocket.server.context import Context
from warpsocket.server.middleware import Reject

SCRIPT = os.path.join(os.path.dirname(sys.executable), "warpsocket")


class CommandTests(ServerTestCase):
    timeout = 60

    def setUp(self) -> None:
        # The entry point must be installed (pip install -e .): a missing one fails.
        self.assertTrue(os.access(SCRIPT, os.X_OK), f"{SCRIPT} is not installed")
        hub = self.start_server(open_rooms=True)
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self.said: list[Any] = []
        hub.on("echo", lambda ctx, data: {"echo": data})
        hub.on("say", lambda ctx, data: self.said.append(data))

        def refuse(ctx: Context, data: Any) -> None:
            raise Reject(ErrorCode.FORBIDDEN, "not you")

        hub.on("refuse", refuse)
        hub.on("never", lambda ctx, data: Deferred())  # answers nothing

    def warpsocket(self, *args: str) -> Deferred[tuple[bytes, bytes, int]]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        return getProcessOutputAndValue(SCRIPT, args, env=env, reactor=reactor)

    @async_test
    async def test_send_with_ack_exits_0_once_acknowledged(self) -> None:
        out, err, code = await self.warpsocket("send", self.url, "say", '{"text": "hi"}', "--ack")
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["status"], "acked")
        self.assertEqual(self.said, [{"text": "hi"}])

    @async_test
    async def test_send_without_ack_is_delivered(self) -> None:
        out, err, code = await self.warpsocket("send", self.url, "say", "[1, 2]")
        self.assertEqual((code, out), (0, b""), err)
        await wait_until(lambda: self.said == [[1, 2]], what="the event")

    @async_test
    async def test_send_to_a_room_reaches_its_members(self) -> None:
        member = await self.connect(rooms=["chat"])
        out, err, code = await self.warpsocket(
            "send", self.url, "said", '{"text": "yo"}', "--room", "chat", "--ack"
        )
        self.assertEqual((code, json.loads(out)["status"]), (0, "acked"), err)
        event = await member.next_of("event")
        self.assertEqual((event["stream"], event["data"]), ("room:chat", {"text": "yo"}))

    @async_test
    async def test_refused_send_names_the_code(self) -> None:
        out, err, code = await self.warpsocket("send", self.url, "refuse", "1", "--ack")
        self.assertEqual(code, 1, err)
        self.assertEqual(out, b"")
        self.assertTrue(err.startswith(b"forbidden (4102): not you"), err)

    @async_test
    async def test_call_prints_the_result(self) -> None:
        out, err, code = await self.warpsocket("call", self.url, "echo", '{"n": 5}')
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out), {"echo": {"n": 5}})
        out, err, code = await self.warpsocket("call", self.url, "missing", "null")
        self.assertEqual(code, 1, err)
        self.assertTrue(err.startswith(b"no_handler (4301)"), err)

    @async_test
    async def test_no_answer_in_time_exits_4(self) -> None:
        out, err, code = await self.warpsocket("call", self.url, "never", "1", "--timeout", "0.5")
        self.assertEqual((code, out), (4, b""), err)
        self.assertTrue(err.startswith(b"expired: "), err)

    @async_test
    async def test_call_over_msgpack(self) -> None:
        out, err, code = await self.warpsocket(
            "call", self.url, "echo", '"x"', "--codec", "msgpack"
        )
        self.assertEqual((code, json.loads(out)), (0, {"echo": "x"}), err)

    @async_test
    async def test_listen_prints_json_lines(self) -> None:
        listening = self.warpsocket("listen", self.url, "news", "alerts", "--count", "3")
        await wait_until(
            lambda: self.hub.room_members("news") and self.hub.room_members("alerts"),
            timeout=20,
            what="the listener to join",
        )
        await self.hub.publish("news", "story", {"n": 1})
        await self.hub.publish("alerts", "fire", "now")
        await self.hub.publish("news", "story", {"n": 2})
        out, err, code = await listening
        self.assertEqual(code, 0, err)
        lines = [json.loads(line) for line in out.splitlines()]
        self.assertEqual(
            [(m["stream"], m["offset"], m["event"], m["data"]) for m in lines],
            [
                ("room:news", 1, "story", {"n": 1}),
                ("room:alerts", 1, "fire", "now"),
                ("room:news", 2, "story", {"n": 2}),
            ],
        )
        self.assertTrue(all(isinstance(m["epoch"], str) for m in lines))

    @async_test
    async def test_unreachable_and_bad_arguments(self) -> None:
        self.service.ports[0].stopListening()
        out, err, code = await self.warpsocket(
            "send", self.url, "say", "1", "--connect-timeout", "0.5"
        )
        self.assertEqual(code, 3, err)
        self.assertTrue(err.startswith(b"unreachable"), err)
        for args in (
            ("send", self.url, "say", "{not json"),
            ("call", self.url),
            ("listen", self.url),
            ("listen", self.url, "room", "--count", "0"),
            ("send", "http://x", "say", "1"),
            ("bogus",),
        ):
            out, err, code = await self.warpsocket(*args)
            self.assertEqual(code, 2, (args, err))
            self.assertEqual(out, b"")


class ServeTests(unittest.TestCase):
    """``warpsocket serve``: twistd in the foreground, same options."""

    timeout = 60

    def serve(self, *args: str) -> ServerProcess:
        self.assertTrue(os.access(SCRIPT, os.X_OK), f"{SCRIPT} is not installed")
        process = ServerProcess()
        cwd = self.mktemp()
        os.makedirs(cwd)
        reactor.spawnProcess(
            process, SCRIPT, [SCRIPT, "serve", *args], env=dict(os.environ), path=cwd
        )

        async def stop() -> None:
            if not process.ended.called:
                process.transport.signalProcess("KILL")  # type: ignore[union-attr]
                await process.ended

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        return process

    async def until_serving(self, process: ServerProcess, port: int) -> None:
        give_up = reactor.seconds() + 30
        while True:
            if process.ended.called:
                self.fail(f"server exited early:\n{process.output.decode()}")
            try:
                code, _, _ = await http_get(port, "/healthz")
            except (ConnectError, OSError):
                code = 0
            if code == 200:
                return
            if reactor.seconds() > give_up:
                self.fail(f"server did not come up:\n{process.output.decode()}")
            await sleep(0.1)

    @async_test
    async def test_serve_with_the_http_api_and_a_listener(self) -> None:
        keys = os.path.abspath(self.mktemp())
        with open(keys, "wb") as handle:
            handle.write(b"a-key-of-enough-length\n")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        process = self.serve(
            "--endpoint", f"tcp:{port}:interface=127.0.0.1", "--open-rooms", "--api-key-file", keys
        )
        await self.until_serving(process, port)
        url = f"ws://127.0.0.1:{port}/ws"
        listening = getProcessOutputAndValue(
            SCRIPT, ("listen", url, "news", "--count", "1"), env=dict(os.environ), reactor=reactor
        )
        agent = Agent(reactor)
        headers = Headers({b"authorization": [b"Bearer a-key-of-enough-length"]})

        async def members() -> int:
            response = await agent.request(
                b"GET", f"http://127.0.0.1:{port}/api/presence/news".encode(), headers
            )
            count: int = json.loads(await readBody(response))["count"]
            return count

        give_up = reactor.seconds() + 20
        while await members() == 0:
            self.assertLess(reactor.seconds(), give_up, "the listener never joined")
            await sleep(0.05)
        body = FileBodyProducer(io.BytesIO(b'{"room": "news", "event": "story", "data": 7}'))
        response = await agent.request(
            b"POST", f"http://127.0.0.1:{port}/api/publish".encode(), headers, body
        )
        self.assertEqual(response.code, 200, await readBody(response))
        out, err, code = await listening
        self.assertEqual(code, 0, err)
        heard = json.loads(out)
        self.assertEqual(
            (heard["stream"], heard["event"], heard["data"]), ("room:news", "story", 7)
        )
        process.transport.signalProcess("TERM")  # type: ignore[union-attr]
        ended = await process.ended
        self.assertIsInstance(ended, ProcessTerminated)
        assert isinstance(ended, ProcessTerminated)
        self.assertEqual(ended.signal, signal.SIGTERM, process.output.decode())
        self.assertNotIn(b"Traceback", process.output)

    @async_test
    async def test_serve_refuses_a_bad_option(self) -> None:
        process = self.serve("--no-such-option")
        ended = await process.ended
        self.assertIsInstance(ended, ProcessTerminated)
        assert isinstance(ended, ProcessTerminated)
        self.assertEqual(ended.exitCode, 1)
        self.assertIn(b"--no-such-option", process.output)
