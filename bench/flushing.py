#!/usr/bin/env python3
"""When a turn's answers leave, and what it does to the acked round trip's tail.

    bench/.venv/bin/python bench/flushing.py [--rounds 5] [--every 0,16,8] [--out DIR]

WarpSocket writes the answers to what clients sent at the end of the reactor
turn, one write per connection (``WriteBatch.close_soon``,
server/wire/batching.py). This runs the rtt scenario of bench/run.py against
the WarpSocket benchmark server with that policy varied: ``--every N`` makes
a turn's batch also flush whenever N connections hold answers (0: only at
the end of the turn, the shipped policy; 1: after every read; -1: during
the next turn, one connection's answers before each read, as raw
Autobahn's answers leave). Each policy
runs once per round, interleaved, and every round trip is kept (the load
generator's ``--samples``); the server also records its reactor turns (events
per poll, time spent handling them). Reported per policy: the pooled
latency percentiles, the rate, and the turns.

Run as ``--wrap SCRIPT ARGS`` it is the wrapper the server runs under
($BENCH_FLUSH_EVERY: the policy; $BENCH_TURNS: where to write the turns).
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def wrap(argv: list[str]) -> None:
    """Run a benchmark server with the flush policy of $BENCH_FLUSH_EVERY and
    its reactor turns recorded to $BENCH_TURNS at exit."""
    import atexit

    from twisted.internet import epollreactor

    from warpsocket.server.wire import batching

    every = int(os.environ.get("BENCH_FLUSH_EVERY", "0"))
    if every < 0:
        spread_over_next_turn(batching)
    elif every:
        shipped = batching.WriteBatch.close_soon

        def close_soon(self: batching.WriteBatch) -> None:
            if self.depth == 1 and len(self.dirty) >= every:
                self.close()
                return
            shipped(self)

        batching.WriteBatch.close_soon = close_soon  # type: ignore[method-assign]

    # (events returned by the poll, seconds spent handling them)
    turns: list[tuple[int, float]] = []
    do_poll = epollreactor.EPollReactor.doPoll

    class CountingPoller:
        def __init__(self, poller: Any) -> None:
            self.poller = poller
            self.returned = 0.0
            self.events = 0

        def poll(self, timeout: float, maxevents: int) -> Any:
            events = self.poller.poll(timeout, maxevents)
            self.returned = time.perf_counter()
            self.events = len(events)
            return events

        def __getattr__(self, name: str) -> Any:
            return getattr(self.poller, name)

    def counted_poll(reactor: Any, timeout: float) -> None:
        poller = reactor._poller
        counting = reactor._poller = CountingPoller(poller)
        try:
            do_poll(reactor, timeout)
        finally:
            reactor._poller = poller
        if counting.events:
            turns.append((counting.events, time.perf_counter() - counting.returned))

    epollreactor.EPollReactor.doPoll = counted_poll  # type: ignore[method-assign]
    epollreactor.EPollReactor.doIteration = counted_poll  # type: ignore[method-assign]

    def save() -> None:
        path = os.environ.get("BENCH_TURNS")
        if path:
            Path(path).write_text(json.dumps(turns))

    atexit.register(save)
    sys.argv = argv
    sys.path.insert(0, str(Path(argv[0]).resolve().parent))
    runpy.run_path(argv[0], run_name="__main__")


def spread_over_next_turn(batching: Any) -> None:
    """Policy -1, raw Autobahn's schedule without its ``epoll_ctl``: a turn's
    answers leave during the next turn, one before each read of that turn,
    and whatever is left at its end (an idle reactor's next poll returns at
    once, so nothing waits longer than one empty poll)."""
    from collections import deque

    held: deque[Any] = deque()  # connections with answers of the turn before
    shipped_open = batching.WriteBatch.open

    def open_(self: Any) -> None:
        if self.depth == 0 and held:
            held.popleft().uncork()
        shipped_open(self)

    def turn_over(self: Any) -> None:
        self._scheduled = False
        if self.depth:
            return
        while held:
            held.popleft().uncork()
        if self.dirty:
            held.extend(self.dirty)
            self.dirty = []
            self._scheduled = True
            self._call_later(0, self._turn_over)

    batching.WriteBatch.open = open_
    batching.WriteBatch._turn_over = turn_over


def describe_turns(turns: list[list[float]]) -> dict[str, Any]:
    """The server's turns that had events (opening the connections included:
    a few hundred turns of tens of thousands); ``us_per_event`` over turns of
    10 events or more."""
    from latency import percentile

    events = sorted(t[0] for t in turns)
    handling = sorted(t[1] * 1000 for t in turns)
    busy = [t for t in turns if t[0] >= 10]
    per_event = sorted(t[1] * 1e6 / t[0] for t in busy)
    return {
        "turns": len(turns),
        "events_p50": percentile(events, 50),
        "events_p90": percentile(events, 90),
        "handling_ms_p50": percentile(handling, 50),
        "handling_ms_p99": percentile(handling, 99),
        "us_per_event_p50": percentile(per_event, 50) if per_event else None,
        "us_per_event_p99": percentile(per_event, 99) if per_event else None,
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--wrap":
        wrap(sys.argv[2:])
        return 0
    import run
    from latency import PERCENTILES, read_samples, summarize

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--every", default="0,16,8", help="policies, comma-separated")
    parser.add_argument("--out", default=str(run.BENCH / "results"))
    args = parser.parse_args()
    policies = [int(p) for p in args.every.split(",") if p]
    run.ensure_venv()
    run.ensure_node_modules()
    params = dict(run.FULL)
    nofile = run.raise_nofile(params["rtt_clients"] + 1000)
    out = Path(args.out).resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    ports = run.Ports(26500)
    wrapper = (str(Path(__file__).resolve()), "--wrap")

    latencies: dict[int, list[float]] = {p: [] for p in policies}
    rates: dict[int, list[float]] = {p: [] for p in policies}
    turns: dict[int, list[list[float]]] = {p: [] for p in policies}
    with tempfile.TemporaryDirectory() as scratch:
        for round_no in range(args.rounds):
            for policy in policies:
                samples = Path(scratch) / f"samples-{policy}-{round_no}.txt"
                turns_file = Path(scratch) / f"turns-{policy}-{round_no}.json"
                os.environ["BENCH_FLUSH_EVERY"] = str(policy)
                os.environ["BENCH_TURNS"] = str(turns_file)
                result = run.run_case(
                    "warpsocket",
                    "rtt",
                    params,
                    ports,
                    nofile,
                    logs,
                    loadgen_extra=("--samples", str(samples)),
                    wrapper=wrapper,
                )
                deadline = time.monotonic() + 10
                while not turns_file.exists() and time.monotonic() < deadline:
                    time.sleep(0.1)  # the server writes its turns as it exits
                latencies[policy] += read_samples(samples)
                rates[policy].append(result["round_trips_per_s"])
                if turns_file.exists():
                    turns[policy] += json.loads(turns_file.read_text())
                run.say(
                    f"round {round_no + 1}/{args.rounds} every {policy:3}: "
                    f"{result['round_trips_per_s']:8,.0f}/s  p50 {result['latency_ms_p50']:.2f}"
                    f"  p99 {result['latency_ms_p99']:.2f} ms"
                )

    report: dict[str, Any] = {"command": " ".join(sys.argv), "policies": {}}
    header = "".join(f"{'p' + format(p, 'g'):>8}" for p in PERCENTILES)
    print(f"\npooled over {args.rounds} rounds (ms); every 0 = end of turn only")
    print(f"{'every':>6}{'rate/s':>10}{'mean':>7}{header}  events/turn p50  handling ms p50/p99")
    for policy in policies:
        summary = summarize(latencies[policy])
        described = describe_turns(turns[policy]) if turns[policy] else {}
        rate = sorted(rates[policy])[len(rates[policy]) // 2]
        report["policies"][str(policy)] = {
            "median_round_trips_per_s": rate,
            "latency": summary,
            "turns": described,
        }
        print(
            f"{policy:6}{rate:10,.0f}{summary['mean_ms']:7.2f}"
            + "".join(f"{summary[f'p{p:g}_ms']:8.2f}" for p in PERCENTILES)
            + f"  {described.get('events_p50', 0):>15}  "
            f"{described.get('handling_ms_p50', 0):.2f} / {described.get('handling_ms_p99', 0):.2f}"
        )
    (out / "flushing.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out / 'flushing.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
