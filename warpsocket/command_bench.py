"""``warpsocket bench``: a small load generator for sizing a deployment
(docs/cli.md, "bench").

``--connections`` clients (the Python client, so the full protocol) and a
steady ``--rate`` of messages of ``--size`` bytes for ``--duration``
seconds, in one of two modes:

- ``acked``: each message is sent with ``ack: true`` (to ``--event``'s
  handler, or as a publish into ``--room``) by the clients in turn; the
  latency is the round trip to the acknowledgement.
- ``fanout``: every client joins ``--room``; each message is published into
  it (over the HTTP API with ``--api-key``, else by the first client, which
  needs a room it may publish to) and the latency is from the publish to each
  member's receipt. Received should be sent x connections.

Prints throughput and latency percentiles; a progress line each second
(redrawn on a terminal); ``--json`` for one machine-readable object.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from warpsocket.client.client import Message, WarpSocketClient
from warpsocket.client.options import ClientOptions
from warpsocket.client.state import ClientState
from warpsocket.command_connect import CODECS, code_name

TICK = 0.01  # seconds between send rounds: the rate is spread over them


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"not a positive number: {text!r}")
    return value


def add_parser(commands: Any) -> None:
    """Register ``bench`` with the top-level parser (command.py)."""
    bench = commands.add_parser("bench", help="a load generator: throughput and latency")
    bench.add_argument("url", metavar="URL", help="ws:// or wss:// URL of the server")
    bench.add_argument("--connections", type=_positive_int, default=10, help="default 10")
    bench.add_argument("--rate", type=_positive_float, default=100.0, help="messages/s, total")
    bench.add_argument("--size", type=int, default=100, help="payload bytes (default 100)")
    bench.add_argument("--duration", type=_positive_float, default=10.0, help="seconds")
    bench.add_argument("--mode", choices=("acked", "fanout"), default="acked")
    bench.add_argument("--room", default="bench", help="the room (default bench)")
    bench.add_argument("--event", help="acked: send this event (a handler) instead of publishing")
    bench.add_argument("--api-key", help="fanout: publish over the HTTP API with this key")
    bench.add_argument("--api-url", help="the HTTP API's base URL (default: from URL, /api)")
    bench.add_argument("--token", help="a token for every connection")
    bench.add_argument("--codec", choices=sorted(CODECS), default="json")
    bench.add_argument(
        "--drain", type=_positive_float, default=5.0, help="seconds to wait at the end"
    )
    bench.add_argument("--json", action="store_true", help="print one JSON object")


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def api_url(ws_url: str) -> str:
    parts = urlsplit(ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    return urlunsplit((scheme, parts.netloc, "/api", "", ""))


@dataclass
class Tally:
    sent: int = 0
    acked: int = 0
    received: int = 0
    errors: int = 0
    error_names: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)

    def failed(self, why: str) -> None:
        self.errors += 1
        self.error_names[why] = self.error_names.get(why, 0) + 1


class Bench:
    def __init__(self, args: argparse.Namespace, reactor: Any, err: TextIO) -> None:
        self.args = args
        self.reactor = reactor
        self.err = err
        self.tty = err.isatty()
        self.tally = Tally()
        self.padding = "x" * max(0, args.size)
        self.clients: list[WarpSocketClient] = []
        self.started = 0.0
        self.stopped_sending: float | None = None
        self._next = 0
        self._last_report = (0.0, 0)
        self._agent: Any = None

    # ------------------------------------------------------------ setup

    def connect_all(self) -> Deferred[Any]:
        args = self.args
        options = ClientOptions(subprotocol=CODECS[args.codec], watch_network=False)
        kwargs: dict[str, Any] = {"reactor": self.reactor}
        if args.token is not None:
            token: str = args.token
            kwargs["token"] = lambda: token
        opened = []
        for _ in range(args.connections):
            client = WarpSocketClient(args.url, options, **kwargs)
            if args.mode == "fanout":
                client.subscribe(args.room, self._heard)
            self.clients.append(client)
            opened.append(client.connect(timeout=30))
        return gatherResults(opened, consumeErrors=True)

    def members_joined(self) -> bool:
        return all(
            self.args.room in c.core.rooms and c.state is ClientState.OPEN for c in self.clients
        )

    # ------------------------------------------------------------ sending

    def start(self) -> Deferred[None]:
        self.started = self.reactor.seconds()
        done: Deferred[None] = Deferred()
        sender = LoopingCall(self._send_due)
        sender.clock = self.reactor
        progress = LoopingCall(self._progress)
        progress.clock = self.reactor

        def stop_sending() -> None:
            sender.stop()
            # A busy machine may run the last rounds late: the run still
            # sends exactly rate x duration messages.
            self._send_until(self.total())
            self.stopped_sending = self.reactor.seconds()
            self._wait_drained(done, progress)

        sender.start(TICK)
        progress.start(1.0, now=False)
        self.reactor.callLater(self.args.duration, stop_sending)
        return done

    def total(self) -> int:
        duration: float = self.args.duration
        rate: float = self.args.rate
        return math.ceil(duration * rate)

    def _send_due(self) -> None:
        elapsed = self.reactor.seconds() - self.started
        self._send_until(min(int(elapsed * self.args.rate) + 1, self.total()))

    def _send_until(self, due: int) -> None:
        while self.tally.sent < due:
            self._send_one()

    def _payload(self) -> dict[str, Any]:
        return {"t": self.reactor.seconds(), "n": self.tally.sent, "pad": self.padding}

    def _send_one(self) -> None:
        args = self.args
        payload = self._payload()
        self.tally.sent += 1
        if args.mode == "fanout" and args.api_key:
            self._publish_over_http(payload)
            return
        if args.mode == "fanout":
            client = self.clients[0]
        else:
            client = self.clients[self._next % len(self.clients)]
            self._next += 1
        room = None if args.event and args.mode == "acked" else args.room
        event = args.event or "bench"
        sent = client.send(event, payload, ack=True, room=room)
        assert sent is not None
        start = payload["t"]
        sent.addCallbacks(lambda _: self._acked(start), self._failed)

    def _acked(self, start: float) -> None:
        self.tally.acked += 1
        if self.args.mode == "acked":
            self.tally.latencies.append(self.reactor.seconds() - start)

    def _failed(self, failure: Failure) -> None:
        error = failure.value
        outcome = getattr(error, "outcome", None)
        code = getattr(outcome, "code", None)
        if code is not None:
            self.tally.failed(code_name(code))
        else:
            self.tally.failed(type(error).__name__)

    def _publish_over_http(self, payload: dict[str, Any]) -> None:
        from twisted.web.client import Agent, FileBodyProducer, readBody
        from twisted.web.http_headers import Headers

        if self._agent is None:
            self._agent = Agent(self.reactor)
        base = self.args.api_url or api_url(self.args.url)
        body = json.dumps({"room": self.args.room, "event": "bench", "data": payload}).encode()
        headers = Headers(
            {
                b"authorization": [b"Bearer " + self.args.api_key.encode()],
                b"content-type": [b"application/json"],
            }
        )
        asked = self._agent.request(
            b"POST",
            (base.rstrip("/") + "/publish").encode(),
            headers,
            FileBodyProducer(BytesIO(body)),
        )

        def answered(response: Any) -> Deferred[None]:
            code = response.code
            read: Deferred[bytes] = readBody(response)

            def check(raw: bytes) -> None:
                if code == 200:
                    self.tally.acked += 1
                    return
                try:
                    name = json.loads(raw)["error"]["name"]
                except (ValueError, KeyError, TypeError):
                    name = f"http_{code}"
                self.tally.failed(str(name))

            checked: Deferred[None] = read.addCallback(check)
            return checked

        asked.addCallback(answered).addErrback(self._failed)

    # ------------------------------------------------------------ receiving

    def _heard(self, message: Message) -> None:
        data = message.data
        if isinstance(data, dict) and isinstance(data.get("t"), float):
            self.tally.received += 1
            self.tally.latencies.append(self.reactor.seconds() - data["t"])

    def expected(self) -> int:
        if self.args.mode == "fanout":
            return self.tally.sent * len(self.clients)
        return self.tally.sent

    def _done_count(self) -> int:
        tally = self.tally
        if self.args.mode == "fanout":
            return tally.received
        return tally.acked + tally.errors

    def _wait_drained(self, done: Deferred[None], progress: LoopingCall) -> None:
        give_up = self.reactor.seconds() + self.args.drain

        def check() -> None:
            failed_publishes = self.tally.errors * len(self.clients)
            settled = self._done_count() + (failed_publishes if self.args.mode == "fanout" else 0)
            if settled >= self.expected() or self.reactor.seconds() >= give_up:
                waiting.stop()
                if progress.running:
                    progress.stop()
                self._progress()  # the final count, however short the run
                done.callback(None)

        waiting = LoopingCall(check)
        waiting.clock = self.reactor
        waiting.start(0.02)

    def _progress(self) -> None:
        now = self.reactor.seconds()
        count = self._done_count()
        last_time, last_count = self._last_report
        rate = (
            (count - last_count) / (now - last_time) if last_time else count / (now - self.started)
        )
        self._last_report = (now, count)
        elapsed = now - self.started
        line = (
            f"{elapsed:5.1f}s sent {self.tally.sent} {self._counted()} {count} "
            f"({rate:.0f}/s) errors {self.tally.errors}"
        )
        if self.tty:
            self.err.write("\r" + line.ljust(70))
        else:
            self.err.write(line + "\n")
        self.err.flush()

    def _counted(self) -> str:
        return "received" if self.args.mode == "fanout" else "acked"

    # ------------------------------------------------------------ the report

    def report(self) -> dict[str, Any]:
        tally = self.tally
        end = self.reactor.seconds()
        sending = (self.stopped_sending or end) - self.started
        latencies = sorted(tally.latencies)

        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000, 3)

        return {
            "mode": self.args.mode,
            "connections": len(self.clients),
            "duration": round(sending, 3),
            "size": self.args.size,
            "sent": tally.sent,
            "acked": tally.acked,
            "received": tally.received,
            "expected": self.expected(),
            "errors": tally.errors,
            "error_names": tally.error_names,
            "throughput": round(self._done_count() / max(end - self.started, 1e-9), 1),
            "latency_ms": {
                "p50": ms(percentile(latencies, 0.5)),
                "p90": ms(percentile(latencies, 0.9)),
                "p99": ms(percentile(latencies, 0.99)),
                "max": ms(latencies[-1] if latencies else None),
            },
        }

    def close(self) -> Deferred[Any]:
        return gatherResults([c.close() for c in self.clients], consumeErrors=True)


def _text(report: dict[str, Any]) -> str:
    latency = report["latency_ms"]
    counted = "received" if report["mode"] == "fanout" else "acked"
    lines = [
        f"mode {report['mode']}, {report['connections']} connections, "
        f"{report['size']} B messages, {report['duration']:g} s",
        f"sent {report['sent']}, {counted} {report[counted]} of {report['expected']}, "
        f"errors {report['errors']} {report['error_names'] or ''}".rstrip(),
        f"throughput {report['throughput']:g} msg/s",
        "latency ms: "
        + ", ".join(f"{k} {'-' if v is None else f'{v:g}'}" for k, v in latency.items()),
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """The ``bench`` command: 0 when every expected message arrived, 1 otherwise."""
    from twisted.internet import reactor

    out, err = sys.stdout, sys.stderr
    if args.size < 0:
        err.write("warpsocket bench: --size must be >= 0\n")
        return 2
    try:
        bench = Bench(args, reactor, err)
        connected = bench.connect_all()
    except (ValueError, OSError) as exc:
        err.write(f"warpsocket: bad URL: {exc}\n")
        return 2
    result: list[int] = [1]

    async def main() -> None:
        try:
            await connected
        except Exception as exc:
            err.write(f"warpsocket bench: could not connect every client: {exc}\n")
            return
        if args.mode == "fanout":
            give_up = reactor.seconds() + 30
            while not bench.members_joined():
                if reactor.seconds() > give_up:
                    err.write(f"warpsocket bench: could not join {args.room!r}\n")
                    return
                await _sleep(reactor, 0.02)
        await bench.start()
        if bench.tty:
            err.write("\n")
        report = bench.report()
        out.write((json.dumps(report) if args.json else _text(report)) + "\n")
        out.flush()
        counted = report["received"] if args.mode == "fanout" else report["acked"]
        result[0] = 0 if counted == report["expected"] and not report["errors"] else 1

    def finish(_: object) -> None:
        bench.close().addBoth(lambda _: reactor.stop())

    Deferred.fromCoroutine(main()).addBoth(finish)
    reactor.run()
    return result[0]


def _sleep(reactor: Any, seconds: float) -> Deferred[None]:
    waiting: Deferred[None] = Deferred()
    reactor.callLater(seconds, waiting.callback, None)
    return waiting


__all__ = ["Bench", "add_parser", "percentile", "run"]
