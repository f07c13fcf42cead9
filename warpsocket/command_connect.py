"""``warpsocket connect``: an interactive session that speaks the protocol
(docs/cli.md, "connect").

The Python client (``WarpSocketClient``) underneath, on the reactor in the
main thread; commands come from stdin as lines. On a terminal they are
words (``send say {"text": "hi"} --ack``) and the output is readable text;
in a pipe every line in is a JSON object (``{"cmd": "send", ...}``) and
every line out one JSON object, so scripts can drive it. Both go through
the same ``Command``: a bad line is answered with an error line and the
session goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from twisted.internet import stdio
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from warpsocket.client.client import (
    ClientClosedError,
    DeliveryError,
    Message,
    Opened,
    WarpSocketClient,
)
from warpsocket.client.options import ClientOptions
from warpsocket.client.state import ClientState
from warpsocket.core.client import ClientAction, Outcome, RoomChanged, Status
from warpsocket.protocol.codecs import JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL
from warpsocket.protocol.codes import ErrorCode
from warpsocket.protocol.envelope import Envelope, MessageType

CODECS = {"json": JSON_SUBPROTOCOL, "msgpack": MSGPACK_SUBPROTOCOL}
MAX_LINE = 1_048_576  # bytes of one input line

HELP = """\
send EVENT DATA [--ack]      send an event (DATA is JSON); --ack waits for the server's ack
call METHOD DATA             call an RPC method and print its result
join ROOM / leave ROOM       join or leave a room
publish ROOM EVENT DATA      publish an event into a room (acknowledged)
cut                          drop the TCP connection abruptly: watch the resume
stats                        the client's counters
help                         this text
quit                         close and exit"""

# Fields each command takes in JSON mode (besides "cmd" and an optional "id").
FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "send": (("event",), ("data", "ack")),
    "call": (("method",), ("data", "timeout")),
    "join": (("room",), ()),
    "leave": (("room",), ()),
    "publish": (("room", "event"), ("data",)),
    "cut": ((), ()),
    "stats": ((), ()),
    "help": ((), ()),
    "quit": ((), ()),
}


class BadCommandError(ValueError):
    """An input line that is not a command: answered, the session goes on."""

    ref: Any = None  # the "id" of the line, when it had one


@dataclass
class Command:
    cmd: str
    event: str | None = None
    method: str | None = None
    room: str | None = None
    data: Any = None
    ack: bool = False
    timeout: float = 30.0
    ref: Any = None  # the caller's "id", echoed in every answer to this command
    extra: dict[str, Any] = field(default_factory=dict)


def add_parser(commands: Any) -> None:
    """Register ``connect`` with the top-level parser (command.py)."""
    connect = commands.add_parser(
        "connect", help="an interactive session: events, acks, errors, resumes (wscat-like)"
    )
    connect.add_argument("url", metavar="URL", help="ws:// or wss:// URL of the server")
    connect.add_argument("--token", help="a token to authenticate with")
    connect.add_argument(
        "--room", action="append", default=[], dest="rooms", help="join ROOM (repeatable)"
    )
    connect.add_argument("--codec", choices=("json", "msgpack"), default="json")
    connect.add_argument("--ca-file", help="PEM CA certificate to trust for wss://")
    connect.add_argument(
        "--format",
        choices=("auto", "text", "json"),
        default="auto",
        help="text on a terminal, JSON lines in a pipe (default auto)",
    )


# ------------------------------------------------------------ parsing


def parse_json_line(line: str) -> Command:
    """``{"cmd": "send", "event": "say", "data": 1, "ack": true, "id": 7}``."""
    try:
        raw = json.loads(line)
    except ValueError as exc:
        raise BadCommandError(f"not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise BadCommandError('a line is one JSON object: {"cmd": "send", ...}')
    ref = raw.pop("id", None)
    name = raw.pop("cmd", None)
    try:
        if not isinstance(name, str) or name not in FIELDS:
            raise BadCommandError(f"unknown cmd {name!r}: one of {', '.join(FIELDS)}")
        required, optional = FIELDS[name]
        unknown = sorted(set(raw) - set(required) - set(optional))
        if unknown:
            raise BadCommandError(f"{name}: unknown field {unknown[0]!r}")
        for key in required:
            if not isinstance(raw.get(key), str) or not raw[key]:
                raise BadCommandError(f"{name}: {key!r} must be a non-empty string")
        if not isinstance(raw.get("ack", False), bool):
            raise BadCommandError(f"{name}: 'ack' must be true or false")
        timeout = raw.get("timeout", 30.0)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise BadCommandError(f"{name}: 'timeout' must be a positive number of seconds")
    except BadCommandError as exc:
        exc.ref = ref
        raise
    return Command(
        name,
        event=raw.get("event"),
        method=raw.get("method"),
        room=raw.get("room"),
        data=raw.get("data"),
        ack=raw.get("ack", False),
        timeout=float(timeout),
        ref=ref,
    )


def parse_text_line(line: str) -> Command:
    """``send say {"text": "hi"} --ack``: words, then one JSON value."""
    name, _, rest = line.strip().partition(" ")
    rest = rest.strip()
    if name not in FIELDS:
        raise BadCommandError(f"unknown command {name!r} (try help)")
    required, optional = FIELDS[name]
    words: list[str] = []
    for _ in required:
        word, _, rest = rest.partition(" ")
        if not word:
            raise BadCommandError(f"usage: {_usage(name)}")
        words.append(word)
        rest = rest.strip()
    command = Command(name)
    for key, word in zip(required, words, strict=True):
        setattr(command, key, word)
    if "data" in optional:
        if rest.endswith("--ack") and "ack" in optional:
            command.ack = True
            rest = rest[: -len("--ack")].strip()
        if not rest:
            raise BadCommandError(f"usage: {_usage(name)}")
        try:
            command.data = json.loads(rest)
        except ValueError:
            raise BadCommandError(f'DATA is not JSON: {rest!r} (quote strings: "hi")') from None
    elif rest:
        raise BadCommandError(f"usage: {_usage(name)}")
    return command


def _usage(name: str) -> str:
    words = {"send": "EVENT DATA [--ack]", "call": "METHOD DATA", "join": "ROOM"}
    words |= {"leave": "ROOM", "publish": "ROOM EVENT DATA"}
    return f"{name} {words.get(name, '')}".strip()


# ------------------------------------------------------------ output


def code_name(code: int | None) -> str:
    try:
        return ErrorCode(code).wire_name if code is not None else "error"
    except ValueError:
        return f"code_{code}"  # an application's own code


class Output:
    """One record per line: a JSON object, or a line of text for a person."""

    def __init__(self, out: TextIO, json_lines: bool) -> None:
        self.out = out
        self.json_lines = json_lines

    def emit(self, record: dict[str, Any]) -> None:
        if self.json_lines:
            line = json.dumps(record, ensure_ascii=False, default=repr)
        else:
            line = _text(record)
        self.out.write(line + "\n")
        self.out.flush()


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=repr)


def _text(record: dict[str, Any]) -> str:
    kind = record["type"]
    if kind == "event":
        return f"< {record['stream']} #{record['offset']} {record['event']} {_dump(record['data'])}"
    if kind == "welcome":
        if record["resumed"]:
            lost = record["lost"]
            what = f"lost {', '.join(lost)}" if lost else "nothing lost"
            return f"* resumed session {record['session']}: {what}"
        again = "reconnected, new session" if record["reconnect"] else "connected: session"
        return f"* {again} {record['session']}"
    if kind == "error":
        where = f" [{record['room']}]" if "room" in record else ""
        code = f" ({record['code']})" if record.get("code") is not None else ""
        return f"! {record['name']}{code}{where}: {record.get('message', '')}"
    if kind == "ack":
        return f"ok {record['cmd']} {record.get('message_id')} {_dump(record.get('data'))}"
    if kind == "result":
        return f"= {_dump(record['data'])}"
    if kind == "state":
        closed = record.get("close_code")
        if not closed:
            return f"* {record['state']}"
        name = f" {record['name']}" if record["name"] != "close" else ""
        reason = f": {record['reason']}" if record.get("reason") else ""
        return f"* {record['state']} (close code {closed}{name}{reason})"
    if kind == "lost":
        return f"! lost {record['stream']}: {record['reason']}"
    if kind in ("joined", "left"):
        return f"* {kind} {record['room']}"
    if kind == "cut":
        return "* cut: dropping the TCP connection"
    if kind == "sent":
        return f"> sent {record.get('message_id')}"
    if kind == "help":
        return str(record["text"])
    if kind == "stats":
        return "\n".join(f"  {k}: {_dump(v)}" for k, v in record.items() if k != "type")
    return _dump(record)


# ------------------------------------------------------------ the session


class WatchedClient(WarpSocketClient):
    """The client, telling ``watch`` of every action and of errors that
    answer nothing (a refused hello, a frame the server could not read)."""

    watch: Callable[[list[ClientAction]], None] | None = None
    stray_error: Callable[[Envelope], None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        receive = self.core.receive

        def receive_watched(envelope: Envelope, now_ms: int) -> list[ClientAction]:
            stray = envelope.type is MessageType.ERROR and envelope.ref is None
            if stray and self.stray_error is not None:
                self.stray_error(envelope)
            return receive(envelope, now_ms)

        self.core.receive = receive_watched  # type: ignore[method-assign]

    last_close_reason: str | None = None

    def _transport_closed(self, protocol: Any, code: int | None, reason: str | None) -> None:
        self.last_close_reason = reason  # the client keeps the code only
        super()._transport_closed(protocol, code, reason)

    def _run(self, actions: list[ClientAction]) -> None:
        if self.watch is not None:
            self.watch(actions)
        super()._run(actions)


class ConnectSession:
    """Runs commands against one client and reports what happens."""

    def __init__(self, client: WatchedClient, output: Output, rooms: list[str]) -> None:
        self.client = client
        self.output = output
        self.pending: set[Deferred[Any]] = set()
        self.counts: dict[str, int] = {}
        self.done: Deferred[None] = Deferred()
        self.exit_code = 0  # 1 once the client gives up by itself (a refusal)
        self._closing = False
        client.watch = self._watch
        client.stray_error = self._stray_error
        client.on("*", self._event)
        client.on_open(self._opened)
        client.on_lost(self._lost)
        client.on_state(self._state)
        for room in rooms:
            client.subscribe(room)

    # ------------------------------------------------------------ what happens

    def _event(self, message: Message) -> None:
        envelope = message.envelope
        self.counts[message.stream] = self.counts.get(message.stream, 0) + 1
        self.output.emit(
            {
                "type": "event",
                "stream": message.stream,
                "offset": message.offset,
                "epoch": envelope.epoch,
                "event": message.event,
                "data": message.data,
                "message_id": envelope.id,
            }
        )

    def _opened(self, opened: Opened) -> None:
        self.output.emit(
            {
                "type": "welcome",
                "session": opened.session,
                "resumed": opened.resumed,
                "recovered": opened.recovered,
                "lost": list(opened.lost),
                "reconnect": opened.reconnect,
                "rooms": sorted(self.client.rooms),
            }
        )

    def _lost(self, stream: str, reason: str) -> None:
        self.output.emit({"type": "lost", "stream": stream, "reason": reason})

    def _state(self, old: ClientState, new: ClientState) -> None:
        record: dict[str, Any] = {"type": "state", "state": new.value}
        close_code = getattr(self.client, "_last_close_code", None)
        if new in (ClientState.DISCONNECTED, ClientState.RECONNECTING) and close_code:
            record["close_code"] = close_code
            record["name"] = code_name(close_code) if close_code >= 4000 else "close"
            if self.client.last_close_reason:
                record["reason"] = self.client.last_close_reason
        self.output.emit(record)
        if new is ClientState.CLOSED and not self._closing:
            self.exit_code = 1
            self._finish()  # given up (e.g. a refused token): nothing more will come

    def _watch(self, actions: list[ClientAction]) -> None:
        for action in actions:
            if isinstance(action, RoomChanged):
                if action.joined:
                    self.output.emit({"type": "joined", "room": action.room})
                elif action.code is not None:
                    self.output.emit(
                        {
                            "type": "error",
                            "code": action.code,
                            "name": code_name(action.code),
                            "room": action.room,
                            "message": f"could not join {action.room!r}",
                        }
                    )
                else:
                    self.output.emit({"type": "left", "room": action.room})

    def _stray_error(self, envelope: Envelope) -> None:
        data = envelope.data if isinstance(envelope.data, dict) else {}
        self.output.emit(
            {
                "type": "error",
                "code": envelope.code,
                "name": code_name(envelope.code),
                "message": str(data.get("message", "")),
            }
        )

    # ------------------------------------------------------------ commands

    def bad_line(self, why: str, ref: Any = None) -> None:
        record: dict[str, Any] = {"type": "error", "name": "bad_command", "message": why}
        if ref is not None:
            record["id"] = ref
        self.output.emit(record)

    def run(self, command: Command) -> None:
        try:
            self._run(command)
        except ClientClosedError as exc:
            self._answer_error(command, None, str(exc))

    def _run(self, command: Command) -> None:
        client = self.client
        name = command.cmd
        if name == "send":
            assert command.event is not None
            sent = client.send(command.event, command.data, ack=command.ack)
            if sent is None:
                self._emit(command, {"type": "sent"})
            else:
                self._track(command, sent)
        elif name == "publish":
            assert command.event is not None and command.room is not None
            published = client.send(command.event, command.data, ack=True, room=command.room)
            assert published is not None
            self._track(command, published)
        elif name == "call":
            assert command.method is not None
            self._track(command, client.call(command.method, command.data, timeout=command.timeout))
        elif name == "join":
            assert command.room is not None
            client.subscribe(command.room)
        elif name == "leave":
            assert command.room is not None
            client.unsubscribe(command.room)
            self._emit(command, {"type": "left", "room": command.room})
        elif name == "cut":
            self._emit(command, {"type": "cut"})
            client.reconnect()
        elif name == "stats":
            self._emit(command, self.stats())
        elif name == "help":
            self._emit(command, {"type": "help", "text": HELP})
        elif name == "quit":
            self.quit()

    def stats(self) -> dict[str, Any]:
        client = self.client
        counters = dataclasses.asdict(client.stats)
        counters.pop("reconnect_times", None)
        return {
            "type": "stats",
            "state": client.state.value,
            "session": client.session,
            "rooms": sorted(client.rooms),
            "queued": client.queue_length,
            "pending": len(self.pending),
            "events": dict(sorted(self.counts.items())),
            **counters,
        }

    def _emit(self, command: Command, record: dict[str, Any]) -> None:
        record.setdefault("cmd", command.cmd)
        if command.ref is not None:
            record["id"] = command.ref
        self.output.emit(record)

    def _track(self, command: Command, answer: Deferred[Any]) -> None:
        self.pending.add(answer)

        def settled(result: Any) -> None:
            self.pending.discard(answer)
            if isinstance(result, Failure):
                self._failed(command, result)
            elif isinstance(result, Outcome):
                self._emit(
                    command,
                    {"type": "ack", "message_id": result.id, "data": result.data},
                )
            else:
                self._emit(command, {"type": "result", "data": result})

        answer.addBoth(settled)

    def _failed(self, command: Command, failure: Failure) -> None:
        error = failure.value
        if isinstance(error, DeliveryError):
            outcome = error.outcome
            if outcome.status is Status.REJECTED:
                self._answer_error(command, outcome.code, outcome.message, outcome.id)
            else:
                self._answer_error(command, int(ErrorCode.EXPIRED), "no answer in time", outcome.id)
        elif isinstance(error, ClientClosedError):
            self._answer_error(command, None, str(error))
        else:
            self._answer_error(command, None, repr(error))

    def _answer_error(
        self, command: Command, code: int | None, message: str, message_id: str | None = None
    ) -> None:
        record: dict[str, Any] = {
            "type": "error",
            "code": code,
            "name": code_name(code) if code is not None else "failed",
            "message": message,
        }
        if message_id is not None:
            record["message_id"] = message_id
        self._emit(command, record)

    # ------------------------------------------------------------ ending

    def end_of_input(self) -> None:
        """stdin closed: finish what was asked (queued sends, awaited
        answers), then close."""
        client = self.client

        def idle() -> bool:
            if client.state is ClientState.CLOSED:
                return True
            return (
                not self.pending and client.queue_length == 0 and client.state is (ClientState.OPEN)
            )

        if idle():
            self.quit()
            return

        def check() -> None:
            if idle():
                poll.stop()
                self.quit()

        poll = LoopingCall(check)
        poll.clock = client.clock
        poll.start(0.05, now=False)

    def quit(self) -> None:
        if self._closing:
            return
        self._closing = True
        self.client.close().addBoth(lambda _: self._finish())

    def _finish(self) -> None:
        if not self.done.called:
            self.done.callback(None)


class CommandLines(Protocol):
    """stdin, one command a line; a line longer than ``MAX_LINE`` is
    answered with an error and skipped up to its end."""

    def __init__(self, session: ConnectSession, json_lines: bool) -> None:
        self.session = session
        self.parse = parse_json_line if json_lines else parse_text_line
        self._buffer = b""
        self._skipping = False

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while True:
            line, newline, rest = self._buffer.partition(b"\n")
            if not newline:
                if len(self._buffer) > MAX_LINE:
                    self._too_long()
                    self._skipping, self._buffer = True, b""
                return
            self._buffer = rest
            if self._skipping:
                self._skipping = False  # the end of the long line
            elif len(line) > MAX_LINE:
                self._too_long()
            else:
                self._line(line)

    def _too_long(self) -> None:
        if not self._skipping:
            self.session.bad_line(f"line longer than {MAX_LINE} bytes: skipped")

    def _line(self, line: bytes) -> None:
        text_line = line.decode("utf-8", "replace").strip()
        if not text_line:
            return
        try:
            command = self.parse(text_line)
        except BadCommandError as exc:
            self.session.bad_line(str(exc), exc.ref)
            return
        self.session.run(command)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.session.end_of_input()


def _read_terminal(lines: CommandLines, reactor: Any) -> None:
    """A terminal gets readline: line editing and the history of this
    session (up arrow). ``input`` blocks, so it runs in its own thread and
    hands each line to the reactor."""
    # Importing readline gives input() editing and history; it is not on
    # every platform, and plain input() still works without it.
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401
    while True:
        try:
            line = input()
        except (EOFError, KeyboardInterrupt):
            break
        reactor.callFromThread(lines.dataReceived, line.encode("utf-8", "replace") + b"\n")
    reactor.callFromThread(lines.connectionLost)


def run(args: argparse.Namespace) -> int:
    """The ``connect`` command: returns the exit code once the session ends."""
    from twisted.internet import reactor

    json_lines = args.format == "json" or (args.format == "auto" and not os.isatty(0))
    output = Output(sys.stdout, json_lines)
    options = ClientOptions(subprotocol=CODECS[args.codec], watch_network=False)
    kwargs: dict[str, Any] = {}
    if args.token is not None:
        token: str = args.token
        kwargs["token"] = lambda: token
    if args.ca_file is not None:
        kwargs["ca_file"] = args.ca_file
    try:
        client = WatchedClient(args.url, options, **kwargs)
    except (ValueError, OSError) as exc:
        sys.stderr.write(f"warpsocket: bad URL or CA file: {exc}\n")
        return 2
    session = ConnectSession(client, output, list(args.rooms))
    if not json_lines:
        output.emit({"type": "help", "text": "type help for the commands"})
    lines = CommandLines(session, json_lines)
    if os.isatty(0) and not json_lines:
        threading.Thread(target=_read_terminal, args=(lines, reactor), daemon=True).start()
    else:
        stdio.StandardIO(lines, reactor=reactor)
    client.connect().addErrback(lambda _: None)  # the state lines say what happens
    session.done.addBoth(lambda _: reactor.stop())
    reactor.run()
    return session.exit_code


__all__ = ["Command", "ConnectSession", "add_parser", "run"]
