#!/usr/bin/env python3
"""What Redis costs a cluster node per acked message, in process: the node's own CPU only.

    bench/.venv/bin/python bench/cluster_cost.py [--clients 100] [--rounds 300] [--repeat 7]

One process (pinned to core 0) holds a WarpSocket hub with ``--clients``
connections over ``StringTransport``s, each welcomed. A round feeds every
connection one acked ``echo`` event, as one reactor turn that read them all
would, and lets the reactor run until every connection has been written its
ack. The figure is this process's CPU (``time.process_time``) per acked
message over ``--rounds`` rounds; the best of ``--repeat`` runs.

Two hubs are measured in turn, interleaved: one in memory, and one on a
redis-server pinned to core 1, so Redis's own CPU is not counted, nor is
sharing a core with it (bench/neighbour.py measures that). The difference is
what the cluster costs the node itself: the dedup claims and records
formatted and written, the replies read and handled, the frames held
meanwhile, and the extra reactor turn.

The rounds are not timed unit tests: the result is a ratio of two figures
of one run, read like the rest of bench/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import inprocess
import run
from twisted.internet import defer, reactor, task
from twisted.internet.testing import StringTransport

from warpsocket import Hub
from warpsocket.server.protocol import WarpSocketServerFactory


class CountingTransport(StringTransport):
    """A ``StringTransport`` that tells ``counter`` of each write."""

    def __init__(self, counter: Counter) -> None:
        super().__init__()
        self.counter = counter

    def write(self, data: bytes) -> None:
        super().write(data)
        self.counter.wrote()


class Counter:
    def __init__(self) -> None:
        self.writes = 0
        self.goal = 0
        self.waiting: defer.Deferred[None] | None = None

    def wait_for(self, count: int) -> defer.Deferred[None]:
        self.goal = self.writes + count
        self.waiting = defer.Deferred()
        return self.waiting

    def wrote(self) -> None:
        self.writes += 1
        if self.waiting is not None and self.writes >= self.goal:
            waiting, self.waiting = self.waiting, None
            waiting.callback(None)


def make_hub(redis_port: int | None) -> Hub:
    hub = _bare_hub(redis_port)
    hub.on("echo", lambda ctx, data: data)
    return hub


def _bare_hub(redis_port: int | None) -> Hub:
    options = inprocess.bench_options()
    if redis_port is None:
        return Hub(options)
    from dataclasses import replace

    from warpsocket.backends.redis import RedisBackend, RedisOptions

    options = replace(options, core=replace(options.core, node="cost"))
    redis = RedisOptions(url=f"redis://127.0.0.1:{redis_port}/0", prefix="cost:")
    return Hub(options, backend=RedisBackend(redis, options.core.history, node="cost"))


class Case:
    def __init__(self, name: str, hub: Hub, clients: int) -> None:
        self.name = name
        self.hub = hub
        self.clients = clients
        self.counter = Counter()
        self.protocols: list[Any] = []
        self.sent = 0

    async def open(self) -> None:
        hub = self.hub
        hub.backend.start()
        while hub.health is not None:
            await task.deferLater(reactor, 0.05, lambda: None)
        factory = WarpSocketServerFactory(hub, "ws://127.0.0.1:9000")
        for number in range(self.clients):
            protocol = factory.buildProtocol(None)
            transport = CountingTransport(self.counter)
            protocol.makeConnection(transport)
            protocol.dataReceived(inprocess.upgrade("warpsocket.v1.json"))
            hello = {"type": "hello", "id": f"h{number}", "timestamp": 1, "data": {"rooms": []}}
            protocol.dataReceived(inprocess.masked(json.dumps(hello).encode()))
            self.protocols.append(protocol)
        while not all(b"welcome" in p.transport.value() for p in self.protocols):
            await task.deferLater(reactor, 0.05, lambda: None)

    def frames(self) -> list[bytes]:
        data = inprocess.payload()
        frames = []
        for _ in self.protocols:
            self.sent += 1
            envelope = {
                "type": "event",
                "id": f"1.{self.sent}",
                "timestamp": 1,
                "event": "echo",
                "ack": True,
                "data": data,
            }
            frames.append(inprocess.masked(json.dumps(envelope, separators=(",", ":")).encode()))
        return frames

    async def measure(self, rounds: int) -> float:
        """CPU seconds of this process per acked message over ``rounds`` rounds."""
        batches = [self.frames() for _ in range(rounds)]
        for protocol in self.protocols:
            protocol.transport.clear()
        cpu = 0.0
        for frames in batches:
            answered = self.counter.wait_for(self.clients)
            started = time.process_time()
            for protocol, frame in zip(self.protocols, frames, strict=True):
                protocol.dataReceived(frame)
            await answered
            cpu += time.process_time() - started
            written = self.protocols[0].transport.value()
            if b'"type":"ack"' not in written:
                raise SystemExit(f"{self.name}: answered with {written!r}, not an ack")
            for protocol in self.protocols:
                protocol.transport.clear()
        return cpu / (rounds * self.clients)


async def main(args: argparse.Namespace) -> None:
    redis_port = run.Ports(27500).take()
    with tempfile.TemporaryDirectory() as scratch:
        redis = run.start_redis(redis_port, Path(scratch) / "redis.log", run.LOADGEN_CORE)
        try:
            cases = [
                Case("in memory", make_hub(None), args.clients),
                Case("on Redis", make_hub(redis_port), args.clients),
            ]
            for case in cases:
                await case.open()
                await case.measure(20)  # (warm-up)
            best = {case.name: float("inf") for case in cases}
            for repeat in range(args.repeat):
                for case in cases if repeat % 2 == 0 else cases[::-1]:
                    best[case.name] = min(best[case.name], await case.measure(args.rounds))
            memory, clustered = best["in memory"], best["on Redis"]
            print(f"node CPU per acked message, {args.clients} clients, best of {args.repeat}:")
            print(f"  in memory  {memory * 1e6:6.2f} us")
            print(f"  on Redis   {clustered * 1e6:6.2f} us  ({clustered / memory:.2f}x)")
            print(f"  Redis costs the node {(clustered - memory) * 1e6:.2f} us per acked message")
        finally:
            redis.terminate()
            redis.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=7)
    arguments = parser.parse_args()
    os.sched_setaffinity(0, {int(run.SERVER_CORE)})
    failures: list[Any] = []
    done = defer.ensureDeferred(main(arguments))
    done.addErrback(failures.append).addBoth(lambda _: reactor.stop())
    reactor.run()
    if failures:
        failures[0].printTraceback()
        sys.exit(1)
