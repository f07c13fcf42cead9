"""``warpsocket connect`` in pipe mode, through its installed entry point in a
subprocess against a real server (docs/cli.md, "connect"): JSON lines in,
JSON lines out, a ``cut`` followed by a resume that loses nothing, and bad
lines answered with an error line while the session goes on."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests.wsclient import ServerTestCase, async_test, reactor, sleep
from warpsocket.command_connect import MAX_LINE, BadCommandError, parse_json_line, parse_text_line
from warpsocket.protocol.codes import ErrorCode
from warpsocket.server.context import Context
from warpsocket.server.hub import Hub, HubOptions
from warpsocket.server.middleware import Reject
from warpsocket.server.security.auth import StaticKeyAuthenticator
from warpsocket.server.security.config import SecurityOptions
from warpsocket.server.service import WarpSocketService

SCRIPT = os.path.join(os.path.dirname(sys.executable), "warpsocket")


class Session(ProcessProtocol):
    """A running ``warpsocket connect``: its output as parsed JSON lines."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []
        self.buffer = b""
        self.stderr = bytearray()
        self.ended: Deferred[BaseException] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.buffer += data
        *complete, self.buffer = self.buffer.split(b"\n")
        for line in complete:
            self.lines.append(json.loads(line))  # every line out is JSON: fails otherwise

    def errReceived(self, data: bytes) -> None:
        self.stderr.extend(data)

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(reason.value)

    def write(self, **command: Any) -> None:
        assert self.transport is not None
        self.transport.write(json.dumps(command).encode() + b"\n")

    def write_raw(self, line: bytes) -> None:
        assert self.transport is not None
        self.transport.write(line + b"\n")

    async def line(
        self, match: Callable[[dict[str, Any]], bool], after: int = 0, timeout: float = 20
    ) -> dict[str, Any]:
        """The first line from index ``after`` on that matches."""
        give_up = reactor.seconds() + timeout
        while True:
            for line in self.lines[after:]:
                if match(line):
                    return line
            if reactor.seconds() > give_up or self.ended.called:
                raise AssertionError(f"no such line in {self.lines}; stderr {self.stderr!r}")
            await sleep(0.02)


class ConnectTests(ServerTestCase):
    timeout = 60

    def setUp(self) -> None:
        self.assertTrue(os.access(SCRIPT, os.X_OK), f"{SCRIPT} is not installed")
        hub = self.start_server(
            can_join=lambda session, room: room != "vault",
            can_publish=lambda session, room, envelope: True,
        )
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self.said: list[Any] = []
        hub.on("echo", lambda ctx, data: {"echo": data})
        hub.on("say", lambda ctx, data: self.said.append(data))

        def refuse(ctx: Context, data: Any) -> None:
            raise Reject(ErrorCode.FORBIDDEN, "not you")

        hub.on("refuse", refuse)

    def connect_session(self, *args: str) -> Session:
        session = Session()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        reactor.spawnProcess(session, SCRIPT, [SCRIPT, "connect", self.url, *args], env=env)

        async def stop() -> None:
            if not session.ended.called:
                session.transport.signalProcess("KILL")  # type: ignore[union-attr]
                await session.ended

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        return session

    async def quit(self, session: Session) -> None:
        session.write(cmd="quit")
        await session.ended
        self.assertNotIn(b"Traceback", bytes(session.stderr))

    @async_test
    async def test_commands_answer_with_json_lines(self) -> None:
        session = self.connect_session("--room", "lobby")
        welcome = await session.line(lambda m: m["type"] == "welcome")
        self.assertEqual((welcome["resumed"], welcome["rooms"]), (False, ["lobby"]))
        session.write(cmd="send", event="say", data={"text": "hi"}, ack=True, id=1)
        acked = await session.line(lambda m: m.get("id") == 1)
        self.assertEqual((acked["type"], acked["cmd"]), ("ack", "send"))
        self.assertEqual(self.said, [{"text": "hi"}])
        session.write(cmd="call", method="echo", data=[5], id=2)
        result = await session.line(lambda m: m.get("id") == 2)
        self.assertEqual((result["type"], result["data"]), ("result", {"echo": [5]}))
        session.write(cmd="send", event="refuse", data=None, ack=True, id=3)
        refused = await session.line(lambda m: m.get("id") == 3)
        self.assertEqual(
            (refused["type"], refused["code"], refused["name"], refused["message"]),
            ("error", 4102, "forbidden", "not you"),
        )
        session.write(cmd="publish", room="lobby", event="said", data="yo", id=4)
        event = await session.line(lambda m: m["type"] == "event")
        self.assertEqual(
            (event["stream"], event["offset"], event["event"], event["data"]),
            ("room:lobby", 1, "said", "yo"),
        )
        self.assertIsInstance(event["epoch"], str)
        self.assertEqual((await session.line(lambda m: m.get("id") == 4))["type"], "ack")
        session.write(cmd="join", room="news")
        await session.line(lambda m: m["type"] == "joined" and m["room"] == "news")
        self.assertTrue(self.hub.room_members("news"))
        session.write(cmd="join", room="vault")
        refused = await session.line(lambda m: m.get("room") == "vault")
        self.assertEqual(
            (refused["type"], refused["name"], refused["code"]), ("error", "forbidden", 4102)
        )
        session.write(cmd="leave", room="news", id=5)
        self.assertEqual((await session.line(lambda m: m.get("id") == 5))["type"], "left")
        session.write(cmd="stats", id=6)
        stats = await session.line(lambda m: m.get("id") == 6)
        self.assertEqual((stats["state"], stats["rooms"]), ("open", ["lobby"]))
        self.assertEqual(stats["events"], {"room:lobby": 1})
        await self.quit(session)

    @async_test
    async def test_cut_then_resume_loses_nothing(self) -> None:
        session = self.connect_session("--room", "lobby")
        first = await session.line(lambda m: m["type"] == "welcome")
        await self.hub.publish("lobby", "n", 1)
        await session.line(lambda m: m["type"] == "event" and m["data"] == 1)
        mark = len(session.lines)
        session.write(cmd="cut")
        await session.line(lambda m: m["type"] == "state" and m["state"] != "open", after=mark)
        # Published while the client is away (or coming back): the resume brings them.
        for n in (2, 3, 4):
            await self.hub.publish("lobby", "n", n)
        await self.hub.send(first["session"], "direct", "to you")
        resumed = await session.line(lambda m: m["type"] == "welcome", after=mark)
        self.assertEqual(
            (resumed["session"], resumed["resumed"], resumed["lost"], resumed["reconnect"]),
            (first["session"], True, [], True),
        )
        await session.line(lambda m: m["type"] == "event" and m["data"] == 4)
        await session.line(lambda m: m["type"] == "event" and m["stream"] == "direct")
        events = [m for m in session.lines if m["type"] == "event" and m["stream"] != "direct"]
        self.assertEqual([(m["offset"], m["data"]) for m in events], [(n, n) for n in (1, 2, 3, 4)])
        session.write(cmd="stats", id="s")
        stats = await session.line(lambda m: m.get("id") == "s")
        self.assertEqual((stats["reconnects"], stats["resumes"]), (1, 1))
        await self.quit(session)

    @async_test
    async def test_bad_lines_are_answered_and_the_session_goes_on(self) -> None:
        session = self.connect_session()
        await session.line(lambda m: m["type"] == "welcome")
        bad = [
            b"not json",
            b"[1, 2]",
            b'{"cmd": "fly"}',
            b'{"cmd": "send", "data": 1}',
            b'{"cmd": "send", "event": "say", "ack": "yes", "id": 9}',
            b'{"cmd": "join", "room": "x", "colour": "red"}',
            b"\xff\xfe",
            b'{"cmd": "send", "event": "say", "data": "' + b"x" * (MAX_LINE + 10) + b'"}',
        ]
        mark = len(session.lines)
        for line in bad:
            session.write_raw(line)
        session.write(cmd="call", method="echo", data="still here", id="ok")
        result = await session.line(lambda m: m.get("id") == "ok")
        self.assertEqual(result["data"], {"echo": "still here"})
        errors = [m for m in session.lines[mark:] if m["type"] == "error"]
        self.assertEqual([m["name"] for m in errors], ["bad_command"] * len(bad))
        self.assertEqual(errors[4]["id"], 9)  # the id of a bad command is echoed
        self.assertIn("'ack' must be true or false", errors[4]["message"])
        self.assertIn("longer than", errors[-1]["message"])
        self.assertEqual(self.said, [])
        await self.quit(session)

    @async_test
    async def test_end_of_input_waits_for_answers_then_exits(self) -> None:
        session = self.connect_session()
        session.write(cmd="send", event="say", data=1)
        session.write(cmd="call", method="echo", data=2, id="c")
        assert session.transport is not None
        session.transport.closeStdin()
        ended = await session.ended
        self.assertEqual(getattr(ended, "exitCode", 0), 0, session.stderr)
        self.assertEqual(self.said, [1])
        result = await session.line(lambda m: m.get("id") == "c")
        self.assertEqual(result["data"], {"echo": 2})
        self.assertEqual(session.lines[-1], {"type": "state", "state": "closed"})


class RefusedTests(unittest.TestCase):
    timeout = 60

    @async_test
    async def test_a_refused_token_ends_the_session_with_exit_1(self) -> None:
        self.assertTrue(os.access(SCRIPT, os.X_OK), f"{SCRIPT} is not installed")
        security = SecurityOptions(authenticator=StaticKeyAuthenticator({"good-key": "ann"}))
        hub = Hub(HubOptions(security=security), clock=Clock())
        service = WarpSocketService(hub, ["tcp:0:interface=127.0.0.1"])
        service.startService()
        self.addCleanup(service.stopService)
        url = f"ws://127.0.0.1:{service.ports[0].getHost().port}/ws"
        out, err, code = await getProcessOutputAndValue(
            SCRIPT, ("connect", url, "--token", "bad-key"), env=dict(os.environ), reactor=reactor
        )
        self.assertEqual(code, 1, err)
        lines = [json.loads(line) for line in out.splitlines()]
        closed = [m for m in lines if m.get("close_code")]
        self.assertEqual(
            [(m["state"], m["close_code"], m["name"], m["reason"]) for m in closed],
            [("disconnected", 4100, "unauthorized", "unauthorized")],
        )
        self.assertEqual(lines[-1], {"type": "state", "state": "closed"})
        out, err, code = await getProcessOutputAndValue(
            SCRIPT,
            ("connect", url, "--token", "good-key"),
            env=dict(os.environ),
            reactor=reactor,
            stdinBytes=b'{"cmd": "stats", "id": 1}\n',
        )
        self.assertEqual(code, 0, err)
        welcome = [json.loads(line) for line in out.splitlines() if b'"welcome"' in line]
        self.assertEqual(len(welcome), 1, out)


class TextTests(ServerTestCase):
    timeout = 60

    @async_test
    async def test_text_format_in_a_pipe(self) -> None:
        self.assertTrue(os.access(SCRIPT, os.X_OK), f"{SCRIPT} is not installed")
        hub = self.start_server(open_rooms=True)
        hub.on("echo", lambda ctx, data: {"echo": data})
        url = f"ws://127.0.0.1:{self.port}/ws"
        lines = b"\n".join(
            [b'call echo {"n": 1}', b"publish lobby said 2", b"send x", b"stats", b"help", b""]
        )
        out, err, code = await getProcessOutputAndValue(
            SCRIPT,
            ("connect", url, "--room", "lobby", "--format", "text"),
            env=dict(os.environ),
            reactor=reactor,
            stdinBytes=lines,
        )
        self.assertEqual(code, 0, err)
        text = out.decode()
        self.assertIn("* connected: session ", text)
        self.assertIn('= {"echo": {"n": 1}}', text)
        self.assertIn("< room:lobby #1 said 2", text)
        self.assertIn("! bad_command: usage: send EVENT DATA [--ack]", text)
        self.assertIn("  state: ", text)
        self.assertIn("cut   ", text)  # the help
        self.assertTrue(text.rstrip().endswith("* closed"), text)


class ParseTests(unittest.TestCase):
    """The two input forms give the same commands."""

    def test_text_and_json_lines(self) -> None:
        text = parse_text_line('send say {"text": "hi there"} --ack')
        same = parse_json_line('{"cmd":"send","event":"say","data":{"text":"hi there"},"ack":true}')
        self.assertEqual(text, same)
        publish = parse_text_line("publish lobby said [1, 2]")
        self.assertEqual((publish.room, publish.event, publish.data), ("lobby", "said", [1, 2]))
        self.assertEqual(parse_text_line("cut").cmd, "cut")

    def test_bad_text_lines(self) -> None:
        for line, why in [
            ("fly", "unknown command"),
            ("send say", "usage: send EVENT DATA [--ack]"),
            ("send say hi", "DATA is not JSON"),
            ("join", "usage: join ROOM"),
            ("stats now", "usage: stats"),
        ]:
            with self.assertRaises(BadCommandError) as caught:
                parse_text_line(line)
            self.assertIn(why, str(caught.exception))


class TerminalTests(ServerTestCase):
    """On a terminal (a pty here): text, and input through readline."""

    timeout = 60

    @async_test
    async def test_a_terminal_session(self) -> None:
        self.assertTrue(os.access(SCRIPT, os.X_OK), f"{SCRIPT} is not installed")
        hub = self.start_server(open_rooms=True)
        hub.on("echo", lambda ctx, data: {"echo": data})
        terminal = Terminal()
        url = f"ws://127.0.0.1:{self.port}/ws"
        env = dict(os.environ, TERM="dumb")
        reactor.spawnProcess(terminal, SCRIPT, [SCRIPT, "connect", url], env=env, usePTY=True)

        async def stop() -> None:
            if not terminal.ended.called:
                terminal.transport.signalProcess("KILL")  # type: ignore[union-attr]
                await terminal.ended

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        await terminal.seen(b"* connected: session ")
        assert terminal.transport is not None
        terminal.transport.write(b'call echo "hi"\r')
        await terminal.seen(b'= {"echo": "hi"}')
        terminal.transport.write(b"quit\r")
        await terminal.ended
        self.assertIn(b"* closed", terminal.output)
        self.assertNotIn(b"Traceback", terminal.output)


class Terminal(ProcessProtocol):
    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: Deferred[BaseException] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output.extend(data)

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(reason.value)

    async def seen(self, text: bytes, timeout: float = 20) -> None:
        give_up = reactor.seconds() + timeout
        while text not in self.output:
            if reactor.seconds() > give_up or self.ended.called:
                raise AssertionError(f"{text!r} not in {bytes(self.output)!r}")
            await sleep(0.02)
