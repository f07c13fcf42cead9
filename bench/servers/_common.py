"""What every benchmark server shares: arguments, file limits, the payload, READY."""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any

ROOM = "bench"
SCENARIOS = ("fanout", "fanout-paced", "fanout-cluster", "rtt", "rtt-cluster", "connect")


def parse_args(description: str, *, cluster: bool = False) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    # Every server runs the same code for every scenario; the argument is
    # accepted so that a run can be told apart in `ps` and in the logs.
    parser.add_argument("--scenario", choices=(*SCENARIOS, "scale"), default="fanout")
    if cluster:
        parser.add_argument(
            "--redis",
            metavar="HOST:PORT",
            help="run as one node of a cluster sharing this Redis (fanout-cluster, rtt-cluster)",
        )
        parser.add_argument(
            "--redis-cluster",
            metavar="HOST:PORT",
            action="append",
            default=[],
            help="run as one node of a cluster on this Redis Cluster (repeatable: its "
            "masters; bench/scale.py)",
        )
        parser.add_argument("--node", help="this node's name in the cluster")
    return parser.parse_args()


def redis_address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"--redis: expected HOST:PORT, got {value!r}")
    return host, int(port)


def raise_nofile() -> int:
    """Raise the open-files soft limit to the hard limit (10,000 idle sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1_048_576
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def make_payload(seq: int, size: int) -> dict[str, Any]:
    """A broadcast payload of about ``size`` bytes of compact JSON.

    ``t`` is the server's wall clock (ms) when the message is built, so the
    load generator can time "from first send to last delivery".
    """
    data: dict[str, Any] = {"seq": seq, "t": time.time() * 1000.0, "pad": ""}
    base = len(json.dumps(data, separators=(",", ":")))
    data["pad"] = "x" * max(0, size - base)
    return data


def ready(name: str, port: int) -> None:
    """The orchestrator waits for this line before starting the load generator."""
    print(f"READY {name} {port} nofile={resource.getrlimit(resource.RLIMIT_NOFILE)[0]}", flush=True)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def trace_memory_on_signal() -> None:
    """With BENCH_TRACEMALLOC=<file>: trace allocations; the first SIGUSR2 takes a
    baseline snapshot, the second writes what was allocated since, by line and
    by traceback (bench/memprofile.py drives this)."""
    import os

    target = os.environ.get("BENCH_TRACEMALLOC")
    if not target:
        return
    import signal
    import tracemalloc

    tracemalloc.start(12)
    snapshots: list[tracemalloc.Snapshot] = []

    def on_signal(signum: int, frame: Any) -> None:
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        if not snapshots:
            snapshots.append(snapshot)
            return
        with open(target + ".tmp", "w") as out:
            for key_type, limit in (("lineno", 40), ("traceback", 12)):
                stats = snapshot.compare_to(snapshots[0], key_type)
                total = sum(stat.size_diff for stat in stats)
                out.write(f"== by {key_type}: {total / 1024:.0f} KiB allocated since baseline\n")
                for stat in stats[:limit]:
                    out.write(f"{stat.size_diff / 1024:10.1f} KiB {stat.count_diff:8d} blocks  ")
                    if key_type == "lineno":
                        out.write(f"{stat.traceback[0]}\n")
                    else:
                        out.write(
                            "\n"
                            + "\n".join(f"      {line}" for line in stat.traceback.format()[-16:])
                            + "\n"
                        )
                out.write("\n")
        os.replace(target + ".tmp", target)

    signal.signal(signal.SIGUSR2, on_signal)
