#!/usr/bin/env python3
"""Where a server's per-connection memory goes (tracemalloc), for the memory scenario.

    python bench/memprofile.py [--server warpsocket] [--connections 2000] [--out FILE]

Starts the server (core 0) with tracemalloc on, takes a baseline snapshot,
opens N idle connections with the load generator (core 1), takes a second
snapshot and prints the allocations made in between, by line and by
traceback, each divided by N. tracemalloc sees Python allocations only (not
kernel socket buffers or allocator slack), so its total is below the RSS
growth that bench/run.py reports.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server", default="warpsocket", choices=run.SERVERS)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--out", help="also write the report here")
    args = parser.parse_args()
    run.ensure_venv()
    run.ensure_node_modules()
    nofile = run.raise_nofile(args.connections + 1000)
    workdir = Path(tempfile.mkdtemp(prefix="warpsocket-mem-"))
    report = workdir / "tracemalloc.txt"
    os.environ["BENCH_TRACEMALLOC"] = str(report)
    port = run.Ports(24000).take()
    process = run.start_server(args.server, "connect", port, workdir / "server.log")

    def snapshot(word: str) -> None:
        if word == "DONE":
            time.sleep(1.0)  # idle first, as in the memory scenario
        process.send_signal(signal.SIGUSR2)
        if word == "DONE":
            deadline = time.monotonic() + 300
            while not report.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
        else:
            time.sleep(2.0)

    try:
        params = dict(run.FULL, idle_connections=args.connections)
        result = run.run_loadgen(
            [
                *run.loadgen_args(args.server, "connect", params, "ack"),
                "--port",
                str(port),
                "--server-pid",
                str(process.pid),
                "--settle",
                "0",
            ],
            nofile,
            timeout=600,
            log_path=workdir / "loadgen.log",
            on_gate=snapshot,
        )
    finally:
        run.stop(process)
    text = report.read_text()
    n = args.connections

    def per_connection(match: re.Match[str]) -> str:
        return f"{match.group(0)} ({float(match.group(1)) * 1024 / n:7.0f} B/conn)"

    text = re.sub(r"(-?[0-9.]+) KiB(?= +-?[0-9]+ blocks)", per_connection, text)
    header = (
        f"{args.server}: {n} idle connections; RSS growth under tracemalloc "
        f"{result['rss_per_connection_kb']:.1f} KiB/conn (tracemalloc itself adds to RSS)\n\n"
    )
    if args.out:
        Path(args.out).write_text(header + text)
    print(header + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
