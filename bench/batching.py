#!/usr/bin/env python3
"""Acked sends per second with and without the batch extension.

    python bench/batching.py [--messages N] [--burst B] [--repeat R]

A server (Hub + WarpSocketService, memory backend) runs in a child process;
this process runs one ``WarpSocketClient`` that sends N small acknowledged
events in bursts of B (B sends in one reactor turn, then wait for their acks),
once with ``batch_window_ms=None`` (off) and once with 0 (the default). For
each: messages per second, the server process's CPU seconds per message
(from /proc), and client-to-server frames per message. docs/performance.md
("Batches") has the numbers; the machine is shared, so repeat and look at
the range.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Any

from twisted.internet import defer, task

from warpsocket.client.client import WarpSocketClient
from warpsocket.client.options import ClientOptions

SERVER = r"""
import sys
from twisted.internet import reactor
from warpsocket.server.hub import Hub
from warpsocket.server.options import HubOptions
from warpsocket.server.security.config import SecurityOptions
from warpsocket.server.service import WarpSocketService
# The default message rate (1,000/s) would refuse the load itself.
hub = Hub(HubOptions(security=SecurityOptions(message_rate=1_000_000)))
hub.on("note", lambda ctx, data: None)
service = WarpSocketService(hub, ["tcp:0:interface=127.0.0.1"])
service.startService()
print(service.ports[0].getHost().port, flush=True)
reactor.run()
"""


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(
    url: str, pid: int, window: float | None, messages: int, burst: int
) -> dict[str, float]:
    client = WarpSocketClient(url, ClientOptions(batch_window_ms=window, watch_network=False))
    await client.connect()
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    for start in range(0, messages, burst):
        sends = [
            client.send("note", i, ack=True) for i in range(start, min(messages, start + burst))
        ]
        await defer.gatherResults(sends)
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    batch: Any = client._batch
    carried, frames = (batch.carried, batch.frames) if batch is not None else (0, 0)
    sent = client.stats.messages_out
    await client.close()
    return {
        "rate": messages / elapsed,
        "cpu_us": cpu / messages * 1e6,
        "frames": (sent - carried + frames) / sent,
    }


async def main(reactor_: Any, args: argparse.Namespace) -> None:
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = f"ws://127.0.0.1:{int(server.stdout.readline())}/ws"
        for round_ in range(args.repeat):
            off = await defer.Deferred.fromCoroutine(
                run(url, server.pid, None, args.messages, args.burst)
            )
            on = await defer.Deferred.fromCoroutine(
                run(url, server.pid, 0, args.messages, args.burst)
            )
            print(
                f"round {round_ + 1}: off {off['rate']:8.0f} msg/s {off['cpu_us']:6.1f} us/msg "
                f"{off['frames']:.3f} frames/msg | on {on['rate']:8.0f} msg/s "
                f"{on['cpu_us']:6.1f} us/msg {on['frames']:.3f} frames/msg | "
                f"throughput x{on['rate'] / off['rate']:.2f}, server CPU/msg "
                f"x{on['cpu_us'] / off['cpu_us']:.2f}",
                flush=True,
            )
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    arguments = parser.parse_args()
    task.react(lambda r: defer.Deferred.fromCoroutine(main(r, arguments)))
