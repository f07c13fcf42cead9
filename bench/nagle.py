#!/usr/bin/env python3
"""What Nagle's algorithm costs the Python client's sends (warpsocket/_nodelay.py).

    bench/.venv/bin/python bench/nagle.py [--rounds 6] [--events 200] [--gap-ms 2]

One server and one Python client in this process, over loopback TCP. The
client sends ``--events`` fire-and-forget events (no ack asked, so the server
writes nothing back), one every ``--gap-ms`` milliseconds, each from its own
reactor turn; the server's handler notes when each arrives. Each round runs
twice, the order alternating: the client as shipped (``TCP_NODELAY`` set on
its socket), and the client with Nagle's algorithm turned back on
(``setTcpNoDelay(False)`` after it connects), as Autobahn leaves it on
Twisted. Prints, per case, the percentiles of how late the events reached
the handler, pooled over the rounds, and the ratio of the two.
"""

from __future__ import annotations

import argparse
import time

from twisted.internet import reactor, task
from twisted.internet.defer import ensureDeferred

from warpsocket import Hub, HubOptions, WarpSocketService
from warpsocket.client.client import WarpSocketClient
from warpsocket.client.options import ClientOptions

PERCENTILES = (50, 90, 99, 100)


def percentile(ordered: list[float], p: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


async def one_case(url: str, hub: Hub, nagle: bool, events: int, gap: float) -> list[float]:
    arrived: dict[int, float] = {}
    sent: dict[int, float] = {}
    hub.on("tick", lambda ctx, data: arrived.__setitem__(data, time.perf_counter()))
    client = WarpSocketClient(url, ClientOptions(watch_network=False))
    await client.connect(timeout=10)
    if nagle:
        client._protocol.transport.setTcpNoDelay(False)  # type: ignore[union-attr]
    try:
        for i in range(events):
            sent[i] = time.perf_counter()
            client.send("tick", i)
            await task.deferLater(reactor, gap, lambda: None)
        waited = 0
        while len(arrived) < events and waited < 200:
            await task.deferLater(reactor, 0.01, lambda: None)
            waited += 1
    finally:
        await client.close()
    if len(arrived) < events:
        raise SystemExit(f"only {len(arrived)} of {events} events arrived")
    return [(arrived[i] - sent[i]) * 1000 for i in range(events)]


async def run(args: argparse.Namespace) -> None:
    hub = Hub(HubOptions(open_rooms=True))
    service = WarpSocketService(hub, ["tcp:0:interface=127.0.0.1"])
    service.startService()
    url = f"ws://127.0.0.1:{service.ports[0].getHost().port}/ws"
    cases = {"TCP_NODELAY (shipped)": False, "Nagle on": True}
    pooled: dict[str, list[float]] = {name: [] for name in cases}
    try:
        for round_no in range(args.rounds):
            order = list(cases.items())
            if round_no % 2:
                order.reverse()
            for name, nagle in order:
                late = await one_case(url, hub, nagle, args.events, args.gap_ms / 1000)
                pooled[name] += late
                print(
                    f"round {round_no + 1}/{args.rounds} {name:22} "
                    f"p50 {percentile(sorted(late), 50):6.2f}  max {max(late):6.2f} ms"
                )
    finally:
        await service.stopService()
    print(f"\n{args.events} events {args.gap_ms} ms apart, {args.rounds} rounds pooled (ms late)")
    print(f"{'client':24}" + "".join(f"{'p' + format(p, 'g'):>9}" for p in PERCENTILES))
    for name, values in pooled.items():
        ordered = sorted(values)
        print(f"{name:24}" + "".join(f"{percentile(ordered, p):9.2f}" for p in PERCENTILES))
    shipped, nagle = (sorted(v) for v in pooled.values())
    print(
        "\nNagle on / shipped: "
        + ", ".join(
            f"p{p:g} {percentile(nagle, p) / percentile(shipped, p):.1f}x" for p in PERCENTILES
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--gap-ms", type=float, default=2.0)
    args = parser.parse_args()
    # (react runs the reactor until the run ends, and exits 1 with the
    # traceback if it failed)
    task.react(lambda _reactor: ensureDeferred(run(args)))


if __name__ == "__main__":
    main()
