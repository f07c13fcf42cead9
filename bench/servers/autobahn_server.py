"""Raw Autobahn|Python on Twisted: the ceiling of WarpSocket's own stack.

Clients connect to ``/ws`` and are put in one set (the "room"); every message
they send is echoed back. A control connection on ``/control`` sends
``{"cmd": "fanout", "count": N, "size": B}``: the server frames each message
once with ``factory.prepareMessage`` and writes it to every client with
``sendPreparedMessage``, all N in one reactor turn (``"burst": true``) or one
broadcast per reactor turn, then answers ``{"sent": N}``.

Nagle's algorithm is off on every connection, as Autobahn means it to be
(its ``tcpNoDelay`` option, on by default) and as every other server here
has it. Autobahn's own call fails on Twisted: its ``connectionMade`` reads
the option before ``_connectionMade`` copies it from the factory, and
swallows the ``AttributeError`` (warpsocket/_nodelay.py). With
``BENCH_AUTOBAHN_NAGLE=1`` in the environment it is left on, as Autobahn
actually leaves it (``bench/latency.py --autobahn-nagle``).
"""

from __future__ import annotations

import json
import os
from typing import Any

from _common import make_payload, parse_args, raise_nofile, ready, trace_memory_on_signal
from _twisted_log import start_logging

args = parse_args(__doc__ or "")
raise_nofile()
trace_memory_on_signal()
start_logging()

from autobahn.twisted.websocket import (  # noqa: E402
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from twisted.internet import reactor  # noqa: E402

NAGLE = os.environ.get("BENCH_AUTOBAHN_NAGLE") == "1"


class BenchProtocol(WebSocketServerProtocol):
    factory: BenchFactory
    is_control = False

    def connectionMade(self) -> None:
        super().connectionMade()
        if not NAGLE:
            self.transport.setTcpNoDelay(True)  # (what Autobahn's own call fails to do)

    def onConnect(self, request: Any) -> None:
        self.is_control = request.path == "/control"

    def onOpen(self) -> None:
        if not self.is_control:
            self.factory.clients.add(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if not self.is_control:
            self.sendMessage(payload, isBinary)  # echo
            return
        command = json.loads(payload)
        if command.get("cmd") == "fanout":
            self.fanout(int(command["count"]), int(command["size"]), bool(command.get("burst")))

    def fanout(self, count: int, size: int, burst: bool) -> None:
        if burst:
            for seq in range(count):
                self.broadcast(seq, size)
            self.answer(count)
            return

        def step(seq: int) -> None:
            if seq == count:
                self.answer(count)
                return
            self.broadcast(seq, size)
            reactor.callLater(0, step, seq + 1)

        step(0)

    def broadcast(self, seq: int, size: int) -> None:
        factory = self.factory
        payload = json.dumps(make_payload(seq, size), separators=(",", ":")).encode()
        prepared = factory.prepareMessage(payload, isBinary=False)
        for client in factory.clients:
            client.sendPreparedMessage(prepared)

    def answer(self, count: int) -> None:
        self.sendMessage(json.dumps({"sent": count, "members": len(self.factory.clients)}).encode())

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        self.factory.clients.discard(self)


class BenchFactory(WebSocketServerFactory):
    protocol = BenchProtocol

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.clients: set[BenchProtocol] = set()


factory = BenchFactory(f"ws://{args.host}:{args.port}")
reactor.listenTCP(args.port, factory, interface=args.host)
reactor.callWhenRunning(ready, "autobahn", args.port)
reactor.run()
