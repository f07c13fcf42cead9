"""The ``warpsocket`` command: one-shot ``send``, ``call`` and ``listen``, and
``serve`` (``twistd -n warpsocket``, command_serve.py) (docs/cli.md).

Built on ``BlockingClient``: the reactor runs in a daemon thread and this
module's code in the main thread, so a script gets an exit code that says
what happened and Ctrl-C stops ``listen`` cleanly.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Sequence
from typing import Any, TextIO

from warpsocket import command_bench, command_connect
from warpsocket.client.blocking import BlockingClient
from warpsocket.client.client import ClientClosedError, ConnectTimeoutError, DeliveryError, Message
from warpsocket.client.options import ClientOptions
from warpsocket.command_serve import serve
from warpsocket.core.client import Status
from warpsocket.protocol.codecs import JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL
from warpsocket.protocol.codes import ErrorCode
from warpsocket.protocol.protobuf import PROTOBUF_SUBPROTOCOL

# Exit codes (docs/cli.md).
OK = 0
REFUSED = 1  # the server answered with an error code
USAGE = 2  # bad arguments (argparse's own code)
UNREACHABLE = 3  # no welcome within --connect-timeout
NO_ANSWER = 4  # the deadline passed (expired), or the client gave the message up

CODECS = {
    "json": JSON_SUBPROTOCOL,
    "msgpack": MSGPACK_SUBPROTOCOL,
    "protobuf": PROTOBUF_SUBPROTOCOL,
}

# Commands in their own modules: ``add_parser(commands)`` and ``run(args) -> int``.
_EXTRA: dict[str, Any] = {
    "connect": command_connect,
    "bench": command_bench,
}


class CommandError(Exception):
    """Ends the command: ``exit_code`` and the line for stderr."""

    def __init__(self, exit_code: int, line: str) -> None:
        super().__init__(line)
        self.exit_code = exit_code
        self.line = line


def _json_argument(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not JSON: {text!r} (quote strings: '\"hi\"')") from None


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return value


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return int(text)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="warpsocket",
        description="Talk to a WarpSocket server from a terminal or a script (docs/cli.md).",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("url", metavar="URL", help="ws:// or wss:// URL of the server")
        sub.add_argument("--token", help="a token to authenticate with")
        sub.add_argument("--codec", choices=sorted(CODECS), default="json")
        sub.add_argument("--ca-file", help="PEM CA certificate to trust for wss://")
        sub.add_argument(
            "--connect-timeout",
            type=_positive,
            default=10.0,
            help="seconds to wait for the welcome (default 10)",
        )

    send = commands.add_parser("send", help="send one event; --ack waits for the server's ack")
    common(send)
    send.add_argument("event", metavar="EVENT")
    send.add_argument("data", metavar="DATA", type=_json_argument, help="JSON value")
    send.add_argument("--ack", action="store_true", help="wait for the server's acknowledgement")
    send.add_argument("--room", help="send as a room event (the room is given with the event)")
    send.add_argument("--timeout", type=_positive, default=30.0, help="ack deadline (default 30)")

    call = commands.add_parser("call", help="call an RPC method and print its result")
    common(call)
    call.add_argument("method", metavar="METHOD")
    call.add_argument("data", metavar="DATA", type=_json_argument, help="JSON value")
    call.add_argument("--timeout", type=_positive, default=30.0, help="seconds (default 30)")

    commands.add_parser(
        "serve",
        help="run a server: twistd -n warpsocket with the same options (serve --help)",
        add_help=False,
    )

    commands.add_parser(
        "mock", help="play a scenario file as a server (mock --help, docs/mock.md)", add_help=False
    )

    listen = commands.add_parser("listen", help="join rooms and print their events as JSON lines")
    common(listen)
    listen.add_argument("rooms", metavar="ROOM", nargs="+")
    listen.add_argument("--count", type=_count, help="exit after this many events")
    for extra in _EXTRA.values():
        extra.add_parser(commands)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: returns (and exits with) the exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["serve"]:
        return serve(arguments[1:])
    if arguments[:1] == ["mock"]:
        from warpsocket.mock.command import main as mock

        return mock(arguments[1:])
    args = parser().parse_args(arguments)
    if args.command in _EXTRA:
        return int(_EXTRA[args.command].run(args))
    code = run(args, sys.stdout, sys.stderr)
    sys.stdout.flush()
    return code


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    options = ClientOptions(subprotocol=CODECS[args.codec], watch_network=False)
    kwargs: dict[str, Any] = {}
    if args.token is not None:
        token: str = args.token
        kwargs["token"] = lambda: token
    if args.ca_file is not None:
        kwargs["ca_file"] = args.ca_file
    try:
        client = BlockingClient(args.url, options, **kwargs)
    except (ValueError, OSError) as exc:
        err.write(f"warpsocket: bad URL or CA file: {exc}\n")
        return USAGE
    try:
        try:
            client.connect(timeout=args.connect_timeout)
        except ConnectTimeoutError:
            raise CommandError(
                UNREACHABLE, f"unreachable: no welcome within {args.connect_timeout:g} s"
            ) from None
        if args.command == "send":
            _send(client, args, out)
        elif args.command == "call":
            result = client.call(args.method, args.data, timeout=args.timeout)
            _line(out, result)
        else:
            _listen(client, args, out)
    except DeliveryError as exc:
        return _refused(exc, err)
    except ClientClosedError as exc:
        err.write(f"failed: {exc}\n")
        return NO_ANSWER
    except CommandError as exc:
        err.write(exc.line + "\n")
        return exc.exit_code
    finally:
        client.close()
    return OK


def _send(client: BlockingClient, args: argparse.Namespace, out: TextIO) -> None:
    outcome = client.send(
        args.event,
        args.data,
        ack=args.ack,
        room=args.room,
        timeout=args.timeout if args.ack else None,
    )
    if outcome is not None:
        _line(out, {"status": outcome.status.value, "id": outcome.id, "data": outcome.data})


def _listen(client: BlockingClient, args: argparse.Namespace, out: TextIO) -> None:
    done = threading.Event()
    lock = threading.Lock()
    seen = [0]

    def heard(message: Message) -> None:  # on the reactor thread
        with lock:
            if done.is_set():
                return
            envelope = message.envelope
            _line(
                out,
                {
                    "stream": message.stream,
                    "offset": message.offset,
                    "epoch": envelope.epoch,
                    "event": message.event,
                    "data": message.data,
                },
            )
            seen[0] += 1
            if args.count is not None and seen[0] >= args.count:
                done.set()

    for room in args.rooms:
        client.subscribe(room, heard)
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass


def _refused(error: DeliveryError, err: TextIO) -> int:
    outcome = error.outcome
    if outcome.status is Status.REJECTED:
        name = _code_name(outcome.code)
        err.write(f"{name} ({outcome.code}): {outcome.message}\n")
        return REFUSED
    err.write(f"{outcome.status.value}: {outcome.message or 'no answer in time'}\n")
    return NO_ANSWER


def _code_name(code: int | None) -> str:
    try:
        return ErrorCode(code).wire_name if code is not None else "error"
    except ValueError:
        return f"code_{code}"  # an application's own code


def _line(out: TextIO, value: Any) -> None:
    out.write(json.dumps(value, ensure_ascii=False) + "\n")
    out.flush()


if __name__ == "__main__":
    sys.exit(main())
