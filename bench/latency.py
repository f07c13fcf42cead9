#!/usr/bin/env python3
"""The acked round trip's latency distribution, WarpSocket against the baselines.

    bench/.venv/bin/python bench/latency.py [--pairs 8] [--servers warpsocket,autobahn]
                                            [--mode ack|call] [--before DIR] [--rate R]
                                            [--autobahn-nagle] [--calls] [--out DIR]

``bench/run.py`` judges the p99 target on a few rounds, and one round's p99
moves by 10-20% on a shared machine (a few slow milliseconds of the host
decide it). This runs the rtt scenario of run.py (100 clients, 1 s warm-up,
5 s measured; server on core 0, load generator on core 1) as interleaved
rounds, one case per server in each, the order alternating, and keeps every
measured round trip (the load generator's ``--samples``). Then:

- each round's rate, p50 and p99, and in how many rounds the first server's
  p99 was the lower;
- the percentiles of all rounds' round trips pooled, per server, and the
  ratio of the pooled p99s (the target: at most 1.0);
- a histogram of the pooled latencies (0.5 ms bins): where the two
  distributions differ, not only how far their tails reach.

``--before DIR`` adds a column ``warpsocket@before``: the WarpSocket server
with the package in DIR first on ``PYTHONPATH`` (a ``git worktree`` of an
older commit), in every round beside the others, so a change is measured
against its baseline and against Autobahn in the same rounds. Only the
package comes from DIR: the server script (bench/servers/) and the load
generator are this checkout's.

``--rate R`` runs the load generator's open loop instead: R requests a
second in all on a fixed schedule, answered or not (several in flight per
client), so every server is offered the same load and the latencies compare
at equal load rather than at each server's own saturation. Each round also
prints how late the load generator wrote its requests against the schedule
(``send_lag_ms_p99``).

``--calls`` adds a column ``warpsocket-call``: the WarpSocket server
answering RPC calls, beside its acked events in the same rounds, and
prints the calls' pooled round trips and p99 against the events' (the
RPC target of bench/run.py, judged on pooled rounds).

``--autobahn-nagle`` adds a column ``autobahn+nagle``: Autobahn's echo with
Nagle's algorithm left on, as Autobahn leaves it on Twisted (the
``autobahn`` column runs with it off, as Autobahn means it to be:
servers/autobahn_server.py).

Writes ``OUT/latency.json`` (default ``bench/results``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run

PERCENTILES = (50, 90, 95, 99, 99.9)
BIN_MS = 0.5
BINS = 24  # 0-12 ms; the last bin takes everything slower


def read_samples(path: Path) -> list[float]:
    """Round-trip latencies (ms) from a ``--samples`` file: "client t0 t1" lines."""
    latencies = []
    for line in path.read_text().splitlines():
        _, t0, t1 = line.split()
        latencies.append(float(t1) - float(t0))
    return latencies


def percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of sorted values (the load generator's definition)."""
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def histogram(ordered: list[float]) -> list[float]:
    """Percent of the values in each ``BIN_MS`` bin."""
    counts = [0] * BINS
    for value in ordered:
        counts[min(int(value / BIN_MS), BINS - 1)] += 1
    return [100.0 * c / len(ordered) for c in counts]


@contextlib.contextmanager
def environment(changes: dict[str, str]) -> Iterator[None]:
    """``changes`` in the environment of the server processes started inside."""
    saved = {name: os.environ.get(name) for name in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def summarize(latencies: list[float]) -> dict[str, Any]:
    ordered = sorted(latencies)
    return {
        "round_trips": len(ordered),
        "mean_ms": sum(ordered) / len(ordered),
        **{f"p{p:g}_ms": percentile(ordered, p) for p in PERCENTILES},
        "histogram_percent": histogram(ordered),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=8, help="rounds (one case per server each)")
    parser.add_argument(
        "--servers", default="warpsocket,autobahn", help="the first is compared to the others"
    )
    parser.add_argument("--mode", choices=("ack", "call"), default="ack")
    parser.add_argument(
        "--rate",
        type=int,
        default=0,
        help="open loop: this many requests a second in all, on a fixed schedule, "
        "whatever the answers (0: the closed loop of run.py)",
    )
    parser.add_argument(
        "--before", default="", help="a checkout whose package is the warpsocket@before column"
    )
    parser.add_argument(
        "--calls",
        action="store_true",
        help="add a column: WarpSocket answering RPC calls, beside its acked events",
    )
    parser.add_argument(
        "--autobahn-nagle",
        action="store_true",
        help="add a column: Autobahn's echo with Nagle's algorithm left on, as "
        "Autobahn leaves it on Twisted (servers/autobahn_server.py)",
    )
    parser.add_argument("--out", default=str(run.BENCH / "results"))
    args = parser.parse_args()
    names = [s for s in args.servers.split(",") if s]
    if len(names) < 2 or set(names) - set(run.SERVERS):
        raise SystemExit(f"--servers: two or more of {','.join(run.SERVERS)}")
    mode = args.mode
    # (column, server, what its environment adds, WarpSocket's mode)
    columns: list[tuple[str, str, dict[str, str], str]] = [(name, name, {}, mode) for name in names]
    if args.before:
        before = str(Path(args.before).resolve())
        if not (Path(before) / "warpsocket" / "__init__.py").exists():
            raise SystemExit(f"--before: no warpsocket package in {before}")
        path = os.pathsep.join(p for p in (before, os.environ.get("PYTHONPATH")) if p)
        columns.insert(1, ("warpsocket@before", "warpsocket", {"PYTHONPATH": path}, mode))
    if args.calls:
        if names[0] != "warpsocket" or mode != "ack":
            raise SystemExit("--calls: warpsocket first in --servers, --mode ack")
        columns.insert(1, ("warpsocket-call", "warpsocket", {}, "call"))
    if args.autobahn_nagle:
        columns.append(("autobahn+nagle", "autobahn", {"BENCH_AUTOBAHN_NAGLE": "1"}, "ack"))
    servers = [column for column, _, _, _ in columns]

    run.ensure_venv()
    run.ensure_node_modules()
    params = dict(run.FULL)
    nofile = run.raise_nofile(params["rtt_clients"] + 1000)
    out = Path(args.out).resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    ports = run.Ports(25500)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

    pooled: dict[str, list[float]] = {s: [] for s in servers}
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        for round_no in range(args.pairs):
            order = columns if round_no % 2 == 0 else columns[::-1]
            row: dict[str, Any] = {}
            for column, server, changes, column_mode in order:
                samples = Path(scratch) / f"{column}-{round_no}.txt"
                column_logs = logs / column  # (run_case names its logs by server)
                column_logs.mkdir(exist_ok=True)
                with environment(changes):
                    result = run.run_case(
                        server,
                        "rtt",
                        params,
                        ports,
                        nofile,
                        column_logs,
                        mode=column_mode if server == "warpsocket" else "ack",
                        loadgen_extra=("--samples", str(samples), "--rate", str(args.rate)),
                    )
                latencies = read_samples(samples)
                pooled[column] += latencies
                row[column] = {
                    "round_trips_per_s": result["round_trips_per_s"],
                    "latency_ms_p50": result["latency_ms_p50"],
                    "latency_ms_p99": result["latency_ms_p99"],
                }
                run.say(
                    f"round {round_no + 1}/{args.pairs} {column:17} "
                    f"{result['round_trips_per_s']:8,.0f}/s  p50 {result['latency_ms_p50']:.2f}"
                    f"  p99 {result['latency_ms_p99']:.2f} ms"
                    + (
                        f"  (send lag p99 {result['send_lag_ms_p99']:.2f} ms, "
                        f"{result['skipped']} skipped, {result['unanswered']} unanswered)"
                        if args.rate
                        else ""
                    )
                )
            rounds.append(row)

    subject, baselines = servers[0], servers[1:]
    summary = {s: summarize(values) for s, values in pooled.items()}
    comparisons = {}
    for baseline in baselines:
        lower = sum(r[subject]["latency_ms_p99"] <= r[baseline]["latency_ms_p99"] for r in rounds)
        comparisons[baseline] = {
            "round_trips_ratio": summary[subject]["round_trips"] / summary[baseline]["round_trips"],
            "pooled_p99_ratio": summary[subject]["p99_ms"] / summary[baseline]["p99_ms"],
            "pooled_p50_ratio": summary[subject]["p50_ms"] / summary[baseline]["p50_ms"],
            "rounds_with_p99_no_worse": lower,
            "rounds": len(rounds),
        }

    print(f"\npooled over {args.pairs} rounds (ms)")
    print(
        f"{'server':18}{'round trips':>12}{'mean':>7}"
        + "".join(f"{'p' + format(p, 'g'):>8}" for p in PERCENTILES)
    )
    for server in servers:
        s = summary[server]
        print(
            f"{server:18}{s['round_trips']:>12,}{s['mean_ms']:7.2f}"
            + "".join(f"{s[f'p{p:g}_ms']:8.2f}" for p in PERCENTILES)
        )
    print(f"\nhistogram, percent of round trips per {BIN_MS} ms (last bin: slower)")
    print(f"{'ms':>6}" + "".join(f"{s:>18}" for s in servers))
    for i in range(BINS):
        print(
            f"{i * BIN_MS:6.1f}"
            + "".join(f"{summary[s]['histogram_percent'][i]:18.1f}" for s in servers)
        )
    for baseline, c in comparisons.items():
        print(
            f"\n{subject} / {baseline}: round trips {c['round_trips_ratio']:.3f}, "
            f"pooled p99 {c['pooled_p99_ratio']:.3f} (target <= 1), "
            f"pooled p50 {c['pooled_p50_ratio']:.3f}; p99 no worse in "
            f"{c['rounds_with_p99_no_worse']} of {c['rounds']} rounds"
        )
    calls = None
    if args.calls:
        event, call = summary["warpsocket"], summary["warpsocket-call"]
        calls = {
            "round_trips_ratio": call["round_trips"] / event["round_trips"],
            "pooled_p99_ratio": call["p99_ms"] / event["p99_ms"],
        }
        print(
            f"\ncalls / acked events: round trips {calls['round_trips_ratio']:.3f} "
            f"(target >= 0.9), pooled p99 {calls['pooled_p99_ratio']:.3f}"
        )
    report = {
        "command": " ".join(sys.argv),
        "started_at": started,
        "machine": run.machine_info(),
        "params": {k: params[k] for k in ("rtt_clients", "rtt_seconds", "rtt_warmup_seconds")},
        "mode": args.mode,
        "rate": args.rate or None,
        "before": args.before or None,
        "rounds": rounds,
        "pooled": summary,
        "comparisons": comparisons,
        "calls": calls,
    }
    (out / "latency.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out / 'latency.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
