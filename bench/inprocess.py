#!/usr/bin/env python3
"""Per-message server cost in process: no reactor, no sockets, no load generator.

    bench/.venv/bin/python bench/inprocess.py [--chunk N] [--rounds R] [--stdlib-json]

Feeds masked client frames to a server protocol over a ``StringTransport``
and times them: a WarpSocket acked ``event`` (answered with an ``ack``), a
WarpSocket ``call`` (answered with a ``result``), and raw Autobahn's echo,
each with the ~100-byte payload of the rtt scenario. The three run in
interleaved chunks and the fastest chunk of each is reported (the least
disturbed by anything else on the machine), with the ratios to Autobahn.
``--stdlib-json`` adds the two WarpSocket cases again with the JSON codec's
orjson paths turned off (warpsocket/protocol/jsontext.py), in the same
interleaved chunks.

What it leaves out is what both servers share: the reactor's per-read cost
and the system calls (docs/performance.md). For profiling, run it under
py-spy (``py-spy record -- python bench/inprocess.py``).

``--stalls N`` instead feeds N acked events one at a time, with the
collector set as a running server sets it (warpsocket/server/heap.py: the
heap frozen, the young threshold 2,000 before CPython 3.13), and lists the
slowest and the collections that ran during each: whether anything in the
server stops every connection for milliseconds (the dedup window did,
docs/performance.md "Twelfth round").
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gc
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any
from unittest import mock

from autobahn.twisted.websocket import (
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from twisted.internet import reactor
from twisted.internet.testing import StringTransport

from warpsocket import Hub, HubOptions
from warpsocket.protocol import codecs
from warpsocket.server.heap import StartupHeap, YoungThreshold
from warpsocket.server.protocol import WarpSocketServerFactory

PAYLOAD_BYTES = 100


def masked(payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    size = len(payload)
    head = bytes((0x81, 0x80 | size)) if size < 126 else bytes((0x81, 0xFE, size >> 8, size & 255))
    return head + mask + body


def upgrade(subprotocol: str | None = None) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    extra = f"Sec-WebSocket-Protocol: {subprotocol}\r\n" if subprotocol else ""
    return (
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


def bench_options() -> HubOptions:
    """The benchmark server's options (servers/warpsocket_server.py): production
    defaults with the per-address limits raised."""
    from dataclasses import replace

    from warpsocket.server.security import SecurityOptions

    security = replace(
        SecurityOptions(),
        max_connections=1_000_000,
        max_connections_per_ip=1_000_000,
        connection_rate=1_000_000.0,
        message_rate=1_000_000.0,
    )
    return HubOptions(open_rooms=True, security=security)


def payload() -> dict[str, Any]:
    base = {"seq": 1, "t": 0, "pad": ""}
    skeleton = len(json.dumps(base, separators=(",", ":")))
    return {**base, "pad": "x" * max(0, PAYLOAD_BYTES - skeleton)}


class Case:
    """A protocol fed frames; ``turn`` ends the reactor turn (the batch's flush)."""

    def __init__(self, protocol: Any, transport: StringTransport, frames: list[bytes]) -> None:
        self.protocol = protocol
        self.transport = transport
        self.frames = frames
        self.turn: Callable[[], None] = lambda: None
        self.at = 0
        self.stdlib_json = False

    def run(self, count: int) -> float:
        protocol, transport, turn = self.protocol, self.transport, self.turn
        chunk = self.frames[self.at : self.at + count]
        self.at += count
        with self.json_paths():
            started = time.perf_counter()
            for frame in chunk:
                protocol.dataReceived(frame)
                turn()
                transport.clear()
            taken = time.perf_counter() - started
        return taken / len(chunk)

    def json_paths(self) -> contextlib.AbstractContextManager[Any]:
        if not self.stdlib_json:
            return contextlib.nullcontext()
        return mock.patch.multiple(codecs, fast_loads=None, fast_dumps=None)


def warpsocket(kind: str, count: int) -> Case:
    pending: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    class Turns:
        """The reactor, except that ``callLater`` waits for ``turn``."""

        def callLater(self, delay: float, f: Callable[..., Any], *args: Any) -> None:
            pending.append((f, args))

        def __getattr__(self, name: str) -> Any:
            return getattr(reactor, name)

    hub = Hub(bench_options(), reactor=Turns(), clock=reactor)
    hub.on("echo", lambda ctx, data: data)
    factory = WarpSocketServerFactory(hub, "ws://127.0.0.1:9000")
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(upgrade("warpsocket.v1.json"))
    hello = {"type": "hello", "id": "h", "timestamp": 1, "data": {"rooms": []}}
    protocol.dataReceived(masked(json.dumps(hello).encode()))

    def turn() -> None:
        while pending:
            f, args = pending.pop(0)
            f(*args)

    turn()
    if b"welcome" not in transport.value():
        raise SystemExit("no welcome")
    transport.clear()
    data = payload()
    frames = []
    for i in range(count):
        envelope = {"type": kind, "id": f"1.{i}", "timestamp": 1, "event": "echo", "data": data}
        if kind == "event":
            envelope["ack"] = True
        frames.append(masked(json.dumps(envelope, separators=(",", ":")).encode()))
    case = Case(protocol, transport, frames)
    case.turn = turn
    return case


def autobahn(count: int) -> Case:
    class Echo(WebSocketServerProtocol):
        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            self.sendMessage(payload, isBinary)

    factory = WebSocketServerFactory("ws://127.0.0.1:9000")
    factory.protocol = Echo
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(upgrade())
    transport.clear()
    frame = masked(json.dumps(payload(), separators=(",", ":")).encode())
    return Case(protocol, transport, [frame] * count)


def stalls(count: int, shown: int = 10) -> None:
    case = warpsocket("event", count)
    StartupHeap().freeze()  # (as WarpSocketService does when it starts)
    YoungThreshold().hold()
    started: list[tuple[float, int]] = []  # (when, generation) of each collection

    def collection(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started.append((time.perf_counter(), info["generation"]))

    gc.callbacks.append(collection)
    clock, taken = time.perf_counter, []
    try:
        for index, frame in enumerate(case.frames):
            began = clock()
            case.protocol.dataReceived(frame)
            case.turn()
            case.transport.clear()
            taken.append((clock() - began, index, began))
    finally:
        gc.callbacks.remove(collection)
    ordered = sorted(t[0] for t in taken)
    counts = [sum(1 for _, g in started if g == generation) for generation in (0, 1, 2)]
    print(
        f"{count:,} acked events: median {ordered[count // 2] * 1e6:.2f} us; "
        f"collections young/middle/full {counts[0]}/{counts[1]}/{counts[2]}"
    )
    for seconds, index, began in sorted(taken, reverse=True)[:shown]:
        during = [g for when, g in started if began <= when <= began + seconds]
        print(f"  event {index:8,}: {seconds * 1e3:6.2f} ms; collections during it: {during}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunk", type=int, default=400, help="messages per timed chunk")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--stalls", type=int, default=0, metavar="N")
    parser.add_argument("--stdlib-json", action="store_true", help="also run both without orjson")
    args = parser.parse_args()
    if args.stalls:
        stalls(args.stalls)
        return 0
    count = args.chunk * args.rounds
    cases = {
        "acked event": warpsocket("event", count),
        "call": warpsocket("call", count),
        "autobahn echo": autobahn(count),
    }
    if args.stdlib_json:
        for name, kind in (("acked, stdlib", "event"), ("call, stdlib", "call")):
            cases[name] = warpsocket(kind, count)
            cases[name].stdlib_json = True
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(args.rounds):
        for name, case in cases.items():
            best[name] = min(best[name], case.run(args.chunk))
    base = best["autobahn echo"]
    for name, seconds in best.items():
        print(f"{name:14} {seconds * 1e6:6.2f} us per message  ({seconds / base:.2f}x Autobahn's)")
    print(f"call / acked event: {best['call'] / best['acked event']:.3f}x the time", end="")
    if args.stdlib_json:
        stdlib = best["call, stdlib"] / best["acked, stdlib"]
        print(f" ({stdlib:.3f}x without orjson)", end="")
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
