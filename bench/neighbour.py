#!/usr/bin/env python3
"""What sharing its core costs a server: the acked round trip beside other processes.

    bench/.venv/bin/python bench/neighbour.py [--rounds 3]
        [--neighbours spin,wake:256] [--interval-ms 1] [--out DIR]

``bench/run.py`` compares a cluster (two nodes and a redis-server, all on
core 0) with one node alone on core 0. This splits the cluster nodes'
extra CPU per acked round trip into what Redis costs them and what only
sharing one core costs. Each round runs, the order rotating:

- ``alone``: the rtt scenario of run.py, one WarpSocket node;
- ``two nodes``: the rtt-cluster scenario without Redis: two independent
  nodes in memory on core 0, the 100 clients spread over them;
- ``cluster``: the rtt-cluster scenario (two nodes and Redis on core 0);
- one node with each ``--neighbours`` entry pinned to its core:
  - ``spin``: a busy loop, which shares the core in long slices and
    touches almost no memory;
  - ``wake:K``: a process that wakes every ``--interval-ms``, writes one
    byte in every 64 of K KiB (every cache line of it), and sleeps again.

Reported per case (the median of the rounds): the rate, the nodes' CPU per
round trip (both nodes' where there are two), its ratio to the node alone,
a neighbour's share of the core and wake-ups per second, and each server
process's context switches per second (voluntary: it slept; involuntary:
it was preempted), read from /proc at the load generator's gates (the
measured phase only). This script runs on the load generator's core.
Writes ``OUT/neighbour.json``.

Run as ``--neighbour MODE`` it is the neighbour.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run


def be_neighbour(mode: str, interval_ms: float) -> None:
    """The neighbour itself, until it is killed."""
    if mode == "spin":
        while True:
            pass
    kib = int(mode.split(":", 1)[1])
    memory = bytearray(kib * 1024)
    lines = len(memory[::64])
    patterns = (bytes([1]) * lines, bytes([2]) * lines)
    turn = 0
    while True:
        memory[::64] = patterns[turn & 1]  # one write per cache line, at C speed
        turn += 1
        time.sleep(interval_ms / 1000)


def start_neighbour(mode: str, interval_ms: float) -> subprocess.Popen[bytes] | None:
    if mode == "none":
        return None
    command = [sys.executable, __file__, "--neighbour", mode, "--interval-ms", str(interval_ms)]
    return subprocess.Popen(["taskset", "-c", run.SERVER_CORE, *command])


def process_counters(pid: int) -> tuple[float, int, int] | None:
    """(CPU seconds, voluntary, involuntary context switches) of ``pid``."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/status") as status:
            text = status.read()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    voluntary = int(text.split("\nvoluntary_ctxt_switches:")[1].split()[0])
    involuntary = int(text.split("nonvoluntary_ctxt_switches:")[1].split()[0])
    return cpu, voluntary, involuntary


class Window:
    """``/proc`` readings of a case's processes at the load generator's two
    gates: the measured phase only (not start-up, handshakes or warm-up)."""

    def __init__(self, neighbour: subprocess.Popen[bytes] | None) -> None:
        self.neighbour = neighbour
        # word -> (time, {label: (CPU seconds, voluntary, involuntary)})
        self.readings: dict[str, tuple[float, dict[str, tuple[float, int, int]]]] = {}

    def __call__(self, word: str, processes: list[tuple[str, int]]) -> None:
        counters: dict[str, tuple[float, int, int]] = {}
        for name, pid in processes:
            reading = process_counters(pid)
            if reading is not None:
                counters[name] = reading
        if self.neighbour is not None:
            reading = process_counters(self.neighbour.pid)
            if reading is not None:
                counters["neighbour"] = reading
        self.readings[word] = (time.monotonic(), counters)

    def rates(self) -> dict[str, tuple[float, float, float]]:
        """Per process: (share of a core, voluntary and involuntary context
        switches per second) over the measured phase."""
        (start, first), (end, last) = self.readings["GATE"], self.readings["DONE"]
        seconds = end - start
        out = {}
        for name, (cpu, voluntary, involuntary) in first.items():
            if name in last:
                cpu_end, voluntary_end, involuntary_end = last[name]
                out[name] = (
                    (cpu_end - cpu) / seconds,
                    (voluntary_end - voluntary) / seconds,
                    (involuntary_end - involuntary) / seconds,
                )
        return out


def role(name: str) -> str:
    """run.py's process name as this report shows it."""
    if name == "redis-server":
        return "redis"
    return f"node {name[-1]}" if " node " in name else "node"


# (label, run.py scenario, neighbour, with Redis)
Case = tuple[str, str, str, bool]
FIXED_CASES: list[Case] = [
    ("alone", "rtt", "none", False),
    ("two nodes", "rtt-cluster", "none", False),
    ("cluster", "rtt-cluster", "none", True),
]


def run_case(
    scenario: str, neighbour: str, redis: bool, interval_ms: float, setting: dict[str, Any]
) -> dict[str, Any]:
    helper = start_neighbour(neighbour, interval_ms)
    window = Window(helper)
    try:
        time.sleep(0.3 if helper else 0)  # (it is running before the server starts)
        result = run.run_case("warpsocket", scenario, redis=redis, on_gate=window, **setting)
    finally:
        if helper is not None:
            helper.kill()
            helper.wait()
    rates = window.rates()
    row: dict[str, Any] = {
        "rate": result["round_trips_per_s"],
        "cpu_us_per_op": run.cpu_cost(scenario, result),
        "switches": {
            role(name): {"voluntary_per_s": v, "involuntary_per_s": i}
            for name, (_, v, i) in rates.items()
            if name != "neighbour"
        },
    }
    if redis:
        row["redis_cpu_us_per_op"] = run.cpu_cost(scenario, result, "redis_cpu_seconds")
    if "neighbour" in rates:
        share, wakes, _ = rates["neighbour"]
        row["neighbour_core_share"] = share
        row["neighbour_wakes_per_s"] = wakes
    return row


def median_of(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--neighbours", default="spin,wake:256", help="beside one node")
    parser.add_argument("--interval-ms", type=float, default=1.0, help="a waking neighbour's sleep")
    parser.add_argument("--out", default=str(run.BENCH / "results"))
    parser.add_argument("--neighbour", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.neighbour:
        be_neighbour(args.neighbour, args.interval_ms)
        return 0
    neighbours = [n for n in args.neighbours.split(",") if n]
    for mode in neighbours:
        if mode != "spin" and not (
            mode.startswith("wake:") and mode[5:].isdigit() and int(mode[5:]) > 0
        ):
            raise SystemExit(f"--neighbours: unknown {mode!r} (spin or wake:KIB)")

    os.sched_setaffinity(0, {int(run.LOADGEN_CORE)})  # (off the servers' core)
    run.ensure_venv()
    run.ensure_node_modules()
    params = dict(run.FULL)
    out = Path(args.out).resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    setting = {
        "params": params,
        "ports": run.Ports(26500),
        "nofile": run.raise_nofile(params["rtt_clients"] + 1000),
        "logs": logs,
    }
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    cases = FIXED_CASES + [(f"beside {mode}", "rtt", mode, False) for mode in neighbours]
    rows: dict[str, list[dict[str, Any]]] = {case[0]: [] for case in cases}
    for round_no in range(args.rounds):
        # Each round starts one case later: no case always runs first.
        shift = round_no % len(cases)
        for label, scenario, mode, redis in cases[shift:] + cases[:shift]:
            row = run_case(scenario, mode, redis, args.interval_ms, setting)
            rows[label].append(row)
            run.say(
                f"round {round_no + 1}/{args.rounds} {label:16} "
                f"{row['rate']:8,.0f}/s  {row['cpu_us_per_op']:5.1f} us CPU per round trip"
            )

    alone = median_of(rows["alone"], "cpu_us_per_op")
    summary: dict[str, Any] = {}
    print(
        f"\n{'case':18}{'round trips/s':>14}{'CPU us/op':>10}{'x alone':>8}"
        f"{'neighbour %':>12}{'its wakes/s':>12}   server switches/s (voluntary/involuntary)"
    )
    for name, results in rows.items():
        cost = median_of(results, "cpu_us_per_op")
        share = median_of(results, "neighbour_core_share")
        wakes = median_of(results, "neighbour_wakes_per_s")
        roles = sorted({role for r in results for role in r["switches"]})
        switches = {
            role: {
                kind: statistics.median(
                    r["switches"][role][kind] for r in results if role in r["switches"]
                )
                for kind in ("voluntary_per_s", "involuntary_per_s")
            }
            for role in roles
        }
        summary[name] = {
            "round_trips_per_s": median_of(results, "rate"),
            "cpu_us_per_op": cost,
            "cpu_over_alone": cost / alone if cost and alone else None,
            "redis_cpu_us_per_op": median_of(results, "redis_cpu_us_per_op"),
            "neighbour_core_share": share,
            "neighbour_wakes_per_s": wakes,
            "switches_per_s": switches,
            "rounds": results,
        }
        shown = "  ".join(
            f"{role} {s['voluntary_per_s']:.0f}/{s['involuntary_per_s']:.0f}"
            for role, s in switches.items()
        )
        print(
            f"{name:18}{summary[name]['round_trips_per_s']:>14,.0f}{cost or 0:>10.1f}"
            f"{summary[name]['cpu_over_alone'] or 0:>8.2f}"
            f"{'' if share is None else f'{share * 100:.0f}':>12}"
            f"{'' if wakes is None else f'{wakes:.0f}':>12}   {shown}"
        )
    redis = summary["cluster"]["redis_cpu_us_per_op"]
    if redis is not None:
        print(f"{'cluster: Redis':18}{'':>14}{redis:>10.1f}")
    report = {
        "command": " ".join(sys.argv),
        "started_at": started,
        "machine": run.machine_info(),
        "interval_ms": args.interval_ms,
        "cases": summary,
    }
    path = out / "neighbour.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
