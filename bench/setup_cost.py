#!/usr/bin/env python3
"""Connection set-up cost in process, counted in instructions: no sockets, no noise.

    python bench/setup_cost.py [--connections 10000] [--servers warpsocket,autobahn]

Each server, in a fresh process, opens ``--connections`` connections over
``StringTransport``s and keeps them, as the connect scenario of ``run.py``
does over real sockets: for WarpSocket through the site a running
``WarpSocketService`` listens with (address guard, upgrade, ``hello`` and
``welcome``; the start-up heap frozen, as a running service does), for raw
Autobahn its upgrade alone, as ``servers/autobahn_server.py`` serves it (the process
imports no WarpSocket, so Autobahn runs as shipped). The cyclic collector runs
as each server sets it (a running ``WarpSocketService`` raises the young
threshold to 2,000 on CPython 3.12 and before: docs/deployment.md; Autobahn
keeps the interpreter's), so its share is counted as it falls.

Run under valgrind's callgrind twice per server, once opening no connection
(the start-up) and once opening them all: the difference over the count is
the instructions one connection costs. Those counts hardly move from run to
run (a shared machine moves ``run.py``'s rates by 10-20%); what they leave
out is what both servers share: the system calls and Twisted's reactor.
``--wall`` times the same loop instead (no valgrind).

``--hello url|frame`` says where WarpSocket's hello travels (protocol.md 4.5;
the default is ``url``, as in ``run.py``).

``--collector`` reports what the cyclic collector did during the same loop
instead: its collections of each generation and their time per connection
(``gc.callbacks``), and the net new container objects per connection, which
set how often it runs (counted with the collector off: ``gc.get_count()``).
The counts are the same from run to run; a WarpSocket server sets the
collector up as a running ``WarpSocketService`` does (docs/deployment.md).
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PYTHON = HERE / ".venv" / "bin" / "python"


def _upgrade(subprotocol: str | None, query: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    extra = f"Sec-WebSocket-Protocol: {subprotocol}\r\n" if subprotocol else ""
    return (
        f"GET /ws{query} HTTP/1.1\r\nHost: 127.0.0.1:9000\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


def child(server: str, count: int, hello_in: str = "frame", collector: str = "") -> None:
    """Open ``count`` connections in this process; print the seconds it took.
    ``hello_in``: where WarpSocket's hello travels, ``url`` or ``frame``;
    ``collector``: ``timed`` adds each generation's collections and their
    seconds, ``counted`` the net new container objects (the collector off)."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    host = IPv4Address("TCP", "127.0.0.1", 9000)
    hello = b""
    query = ""
    if server == "warpsocket":
        # (Imported here only: the Autobahn process must not import WarpSocket,
        # which defers Autobahn's option dump; so ``_upgrade`` stays local.)
        from inprocess import bench_options, masked

        from warpsocket import Hub, WarpSocketService

        service = WarpSocketService(Hub(bench_options()), [])
        service.startService()
        factory: Any = service.site
        subprotocol: str | None = "warpsocket.v1.json"
        text = {"type": "hello", "id": "h", "timestamp": 1, "data": {"rooms": ["bench"]}}
        compact = json.dumps(text, separators=(",", ":")).encode()
        if hello_in == "url":
            query = "?hello=" + base64.urlsafe_b64encode(compact).decode().rstrip("=")
        else:
            hello = masked(compact)
    else:
        from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol

        clients: set[Any] = set()

        class BenchProtocol(WebSocketServerProtocol):  # servers/autobahn_server.py's
            def onOpen(self) -> None:
                clients.add(self)

        factory = WebSocketServerFactory("ws://127.0.0.1:9000")
        factory.protocol = BenchProtocol
        subprotocol = None
    requests = [_upgrade(subprotocol, query) for _ in range(count)]
    addresses = [IPv4Address("TCP", "127.0.0.1", 10000 + i % 50000) for i in range(count)]
    kept = []
    collections, collector_seconds = [0, 0, 0], [0.0, 0.0, 0.0]
    began = [0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            collections[info["generation"]] += 1
            collector_seconds[info["generation"]] += time.perf_counter() - began[0]

    if collector == "timed":
        gc.callbacks.append(timed)
    elif collector == "counted":
        gc.collect()
        gc.disable()
        containers = gc.get_count()[0]
    started = time.perf_counter()
    for i in range(count):
        transport = StringTransport(peerAddress=addresses[i], hostAddress=host)
        protocol = factory.buildProtocol(addresses[i])
        protocol.makeConnection(transport)
        protocol.dataReceived(requests[i])
        if hello:
            protocol.dataReceived(hello)
        kept.append(transport)
    elapsed = time.perf_counter() - started
    report: dict[str, Any] = {"seconds": elapsed}
    if collector == "timed":
        gc.callbacks.remove(timed)
        report.update(collections=collections, collector_seconds=collector_seconds)
    elif collector == "counted":
        report["containers"] = gc.get_count()[0] - containers
        gc.enable()
    last = kept[-1].value() if kept else b""
    if count and (b" 101 " not in last or (server == "warpsocket" and b"welcome" not in last)):
        raise SystemExit(f"{server}: the connection was not set up: {last[:200]!r}")
    print(json.dumps(report))


def instructions(server: str, count: int, hello: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                str(PYTHON),
                __file__,
                "--child",
                server,
                str(count),
                hello,
            ],
            check=True,
            capture_output=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        summary = re.search(r"^summary:\s*(\d+)", out.read_text(), re.MULTILINE)
        if summary is None:
            raise SystemExit("callgrind wrote no summary")
        return int(summary.group(1))


def measured(server: str, count: int, hello: str, collector: str = "") -> dict[str, Any]:
    """One child process on core 0: its report."""
    command = [str(PYTHON), __file__, "--child", server, str(count), hello]
    done = subprocess.run(
        ["taskset", "-c", "0", *command, *([collector] if collector else [])],
        check=True,
        capture_output=True,
        text=True,
    )
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def wall(server: str, count: int, hello: str) -> float:
    seconds: float = measured(server, count, hello)["seconds"]
    return seconds


def collector_report(server: str, count: int, hello: str) -> None:
    timed = measured(server, count, hello, "timed")
    counted = measured(server, count, hello, "counted")
    per = [1e6 * s / count for s in timed["collector_seconds"]]
    print(
        f"{server:11} collections {'/'.join(map(str, timed['collections']))} "
        f"(generations 0/1/2), collector {sum(per):5.1f} us per connection "
        f"({' + '.join(f'{p:.1f}' for p in per)}), "
        f"{counted['containers'] / count:5.1f} net new containers per connection"
    )


def main() -> int:
    if len(sys.argv) in (5, 6) and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), sys.argv[4], *sys.argv[5:])
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--servers", default="warpsocket,autobahn")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--wall", action="store_true", help="time the loop, no valgrind")
    mode.add_argument(
        "--collector", action="store_true", help="the cyclic collector's work, no valgrind"
    )
    parser.add_argument("--hello", choices=("url", "frame"), default="url")
    args = parser.parse_args()
    n = args.connections
    if n < 1:
        parser.error("--connections must be at least 1")
    costs: dict[str, float] = {}
    for server in args.servers.split(","):
        if args.collector:
            collector_report(server, n, args.hello)
            continue
        if args.wall:
            costs[server] = wall(server, n, args.hello) * 1e6 / n
            print(f"{server:11} {costs[server]:8.1f} us per connection (wall, in process)")
        else:
            per = (instructions(server, n, args.hello) - instructions(server, 0, args.hello)) / n
            costs[server] = per
            print(f"{server:11} {per / 1000:8.1f}k instructions per connection")
    if "warpsocket" in costs and "autobahn" in costs:
        print(f"autobahn / warpsocket: {costs['autobahn'] / costs['warpsocket']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
