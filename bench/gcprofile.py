#!/usr/bin/env python3
"""What a server's connections cost the garbage collector, for the connect scenario.

    python bench/gcprofile.py [--server warpsocket] [--connections 10000] [--objects 1000]

Two measurements of one server, each a fresh process on core 0 with the load
generator on core 1, as ``bench/run.py`` pins them:

1. ``--connections`` connections opened (upgrade, and for WarpSocket hello and
   welcome): the server's CPU per connection, and the time CPython's cyclic
   collector spent in each generation while they were opened (``gc.callbacks``),
   with the number of collections;
2. ``--objects`` connections opened and kept: the objects the collector tracks
   that they added, by type, per connection (``gc.get_objects()`` after a full
   collection, before and after), and the references those objects hold.
   The same run reports the cyclic garbage they made (objects only the
   collector frees, kept for counting with ``gc.DEBUG_SAVEALL``), per
   connection.

A full collection visits every tracked object and each of its references,
and runs each time the objects that survived grew by a quarter: what a
connection keeps, it pays for about five times over while a server fills up.
Run as ``--wrap SCRIPT ARGS`` it is the wrapper the server runs under.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import tempfile
import time
import types
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _describe(obj: object) -> str:
    kind = type(obj)
    if isinstance(obj, types.FunctionType):
        return f"function {obj.__module__}.{obj.__qualname__}"
    if isinstance(obj, types.MethodType):
        return f"method {getattr(obj.__func__, '__qualname__', '?')}"
    return f"{kind.__module__}.{kind.__qualname__}"


def wrap(argv: list[str]) -> None:
    """Run a benchmark server; SIGUSR2 reports to $BENCH_GCPROFILE (see main)."""
    out = os.environ["BENCH_GCPROFILE"]
    timing: dict[int, float] = {}
    seconds = [0.0, 0.0, 0.0]
    counts = [0, 0, 0]
    baseline: list[Any] = []

    def on_collect(phase: str, info: dict[str, Any]) -> None:
        generation = info["generation"]
        if phase == "start":
            timing[generation] = time.perf_counter()
        else:
            seconds[generation] += time.perf_counter() - timing[generation]
            counts[generation] += 1

    def on_signal(signum: int, frame: Any) -> None:
        gc.collect()
        # Cycles kept by DEBUG_SAVEALL (BENCH_GCGARBAGE): counted, then freed,
        # so that they are not counted as objects the connections keep.
        garbage = Counter(_describe(o) for o in gc.garbage)
        gc.set_debug(0)
        gc.garbage.clear()
        gc.collect()
        objects = gc.get_objects()
        if not baseline:  # the first signal: the baseline, and the timing restarts
            baseline.append({id(o) for o in objects})
            baseline.append(Counter(_describe(o) for o in objects))
            seconds[:] = [0.0, 0.0, 0.0]
            counts[:] = [0, 0, 0]
            if os.environ.get("BENCH_GCGARBAGE"):
                # Keep what the collector frees (cycles): what made them.
                gc.set_debug(gc.DEBUG_SAVEALL)
            return
        ids, before = baseline
        added = Counter(_describe(o) for o in objects) - before
        references = sum(len(gc.get_referents(o)) for o in objects if id(o) not in ids)
        report = {
            "seconds": seconds,
            "collections": counts,
            "threshold": gc.get_threshold(),
            "objects": dict(added.most_common(60)),
            "references": references,
            "garbage": dict(garbage.most_common(40)),
        }
        Path(out + ".tmp").write_text(json.dumps(report))
        os.replace(out + ".tmp", out)

    gc.callbacks.append(on_collect)
    signal.signal(signal.SIGUSR2, on_signal)
    script = argv[0]
    sys.argv = argv
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    import runpy

    runpy.run_path(script, run_name="__main__")


def measure(server: str, connections: int, workdir: Path, nofile: int) -> dict[str, Any]:
    import run

    report = workdir / f"gc-{server}-{connections}.json"
    os.environ["BENCH_GCPROFILE"] = str(report)
    port = run.Ports(24500).take()
    wrapper = (str(Path(__file__).resolve()), "--wrap")
    process = run.start_server(
        server, "connect", port, workdir / f"server-{connections}.log", wrapper=wrapper
    )

    def gate(word: str) -> None:
        process.send_signal(signal.SIGUSR2)
        if word == "DONE":
            deadline = time.monotonic() + 300
            while not report.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
        else:
            time.sleep(2.0)

    try:
        params = dict(run.FULL, idle_connections=connections)
        result = run.run_loadgen(
            [
                *run.loadgen_args(server, "connect", params, "ack"),
                "--port",
                str(port),
                "--server-pid",
                str(process.pid),
                "--settle",
                "0",
            ],
            nofile,
            timeout=600,
            log_path=workdir / f"loadgen-{connections}.log",
            on_gate=gate,
        )
    finally:
        run.stop(process)
    data: dict[str, Any] = json.loads(report.read_text())
    data["cpu_us_per_connection"] = result["server_cpu_seconds"] * 1e6 / connections
    return data


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--wrap":
        wrap(sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    import run

    parser.add_argument("--server", default="warpsocket", choices=run.SERVERS)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--objects", type=int, default=1000)
    args = parser.parse_args()
    run.ensure_venv()
    run.ensure_node_modules()
    nofile = run.raise_nofile(max(args.connections, args.objects) + 1000)
    workdir = Path(tempfile.mkdtemp(prefix="warpsocket-gc-"))
    timed = measure(args.server, args.connections, workdir, nofile)
    os.environ["BENCH_GCGARBAGE"] = "1"
    counted = measure(args.server, args.objects, workdir, nofile)
    n, m = args.connections, args.objects
    print(f"{args.server}: {n:,} connections opened")
    print(f"  server CPU                 {timed['cpu_us_per_connection']:7.1f} us per connection")
    for generation in range(3):
        spent = timed["seconds"][generation] * 1e6 / n
        print(
            f"  collector, generation {generation}   {spent:7.1f} us per connection"
            f"  ({timed['collections'][generation]} collections)"
        )
    total = sum(timed["seconds"]) * 1e6 / n
    print(f"  collector, all             {total:7.1f} us per connection")
    objects: dict[str, int] = counted["objects"]
    kept = {name: count for name, count in objects.items() if count >= m * 0.95}
    print(f"{args.server}: {m:,} connections kept, objects the collector tracks per connection")
    for name, count in sorted(kept.items(), key=lambda item: -item[1]):
        print(f"  {count / m:5.1f}  {name}")
    print(f"  {sum(kept.values()) / m:5.1f}  in all (types with at least 0.95 per connection)")
    print(f"  {counted['references'] / m:5.0f}  references held by everything added")
    garbage: dict[str, int] = counted["garbage"]
    print(f"{args.server}: cyclic garbage (freed only by the collector) per connection")
    for name, count in sorted(garbage.items(), key=lambda item: -item[1])[:15]:
        print(f"  {count / m:5.2f}  {name}")
    print(f"  {sum(garbage.values()) / m:5.2f}  in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
