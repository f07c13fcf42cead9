#!/usr/bin/env python3
"""Does the cluster scale out as docs/scaling.md models it? One run, three set-ups:

    python bench/scale.py [--repeat 3] [--rtt-clients 60] [--rtt-seconds 3]
                          [--fanout-clients 100] [--broadcasts 4000] [--connections 3000]
                          [--out bench/results]

- ``single``: one WarpSocket node, in memory;
- ``redis``: two nodes sharing one redis-server (bench/run.py's *-cluster scenarios);
- ``redis3``: three nodes sharing one redis-server (more nodes, no sharding);
- ``cluster3``: three nodes on a Redis Cluster of three masters (``--redis-cluster``).

Every server process (nodes and redis-servers) is pinned to core 0 and the load
generator to core 1, as in bench/run.py; so the rates of the set-ups are not
comparable as such (more processes share one core), but the CPU each process
spends per operation is: it is read from /proc between the load generator's
gates (the measured phase only). Each set-up runs the acked round trips of
``rtt`` (clients spread over the nodes, warm-up 0), the burst fan-out of one
room (the control client on the first node; Redis also per published message)
and ``connect`` (connections opened and held: node RSS and Redis data bytes per
connection, 1.5 s after the last, once presence is written). Reported per
set-up: rate, node CPU us per operation (all nodes), Redis CPU us per operation
(all shards) and each shard's share of it; and the ratios to ``single``. Each
figure is the median of the repeats, with the range. Writes <out>/scale.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # bench/run.py: venv, servers, load generator

KINDS = ("rtt", "fanout", "connect")
# Set-up: (nodes, redis-servers, a Redis Cluster of them?)
SETUPS = {
    "single": (1, 0, False),
    "redis": (2, 1, False),
    "redis3": (3, 1, False),
    "cluster3": (3, 3, True),
}
CLUSTER_ARGS = ["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (clock ticks of 1/100 s)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / 100.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def used_memory(port: int) -> int:
    """Redis' own count of the bytes its data uses (INFO memory)."""
    for line in redis_cmd(port, "INFO", "memory").decode().splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":")[1])
    return 0


def redis_cmd(port: int, *args: str) -> bytes:
    sys.path.insert(0, str(bench.REPO))
    from tests.redis_harness import redis_command

    return redis_command(port, *args)


def start_redis_servers(ports: bench.Ports, logs: Path, count: int, cluster: bool) -> list[Any]:
    started = []
    for index in range(count):
        port, bus = ports.take(), ports.take()
        extra = [*CLUSTER_ARGS, "--cluster-port", str(bus)] if cluster else []
        log = logs / f"scale-redis-{index}.log"
        start = _start_cluster_redis if extra else _start_plain_redis
        process = start(port, log, extra)
        started.append((port, process))
    if cluster:
        step = 16384 // count
        first = started[0][0]
        for index, (port, _) in enumerate(started):
            last = 16383 if index == count - 1 else (index + 1) * step - 1
            redis_cmd(port, "CLUSTER", "ADDSLOTSRANGE", str(index * step), str(last))
        info = redis_cmd(first, "CONFIG", "GET", "cluster-port").split(b"\r\n")
        first_bus = info[4].decode()
        for port, _ in started[1:]:
            redis_cmd(port, "CLUSTER", "MEET", "127.0.0.1", str(first), first_bus)
        deadline = time.monotonic() + 30
        while not all(
            b"cluster_state:ok" in redis_cmd(p, "CLUSTER", "INFO")
            and b"cluster_known_nodes:%d" % count in redis_cmd(p, "CLUSTER", "INFO")
            for p, _ in started
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the redis cluster did not form")
            time.sleep(0.1)
    return started


def _start_plain_redis(port: int, log: Path, extra: list[str]) -> Any:
    return bench.start_redis(port, log)


def _start_cluster_redis(port: int, log: Path, extra: list[str]) -> Any:
    import subprocess

    command = [
        "taskset",
        "-c",
        bench.SERVER_CORE,
        bench.REDIS_SERVER,
        *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
        *("--dir", str(log.parent), "--cluster-config-file", f"{log.stem}-nodes.conf"),
        *extra,
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if redis_cmd(port, "PING").startswith(b"+PONG"):
                return process
        except OSError:
            time.sleep(0.05)
    bench.stop(process)
    raise RuntimeError(f"redis-server (cluster) did not start on port {port}; see {log}")


def run_setup(
    setup: str, kind: str, params: dict[str, Any], ports: bench.Ports, logs: Path, nofile: int
) -> dict[str, Any]:
    """One case: fresh processes, one load generator run, CPU per process."""
    nodes_wanted, shards, cluster = SETUPS[setup]
    redis = []
    nodes: list[tuple[int, Any]] = []
    node_logs: list[Path] = []
    try:
        if shards:
            redis = start_redis_servers(ports, logs, shards, cluster)
        for index in range(nodes_wanted):
            port = ports.take()
            extra: tuple[str, ...] = ()
            if cluster:
                extra = tuple(a for p, _ in redis for a in ("--redis-cluster", f"127.0.0.1:{p}"))
            elif redis:
                extra = ("--redis", f"127.0.0.1:{redis[0][0]}")
            if redis:
                extra += ("--node", f"scale-{index}")
            log = logs / f"scale-{setup}-{kind}-node-{index}.log"
            nodes.append((port, bench.start_server("warpsocket", "scale", port, log, extra)))
            node_logs.append(log)
        pids = {f"node{i}": p.pid for i, (_, p) in enumerate(nodes)}
        pids.update({f"redis{i}": p.pid for i, (_, p) in enumerate(redis)})
        marks: dict[str, dict[str, float]] = {}

        def gate(word: str) -> None:
            if kind == "connect" and word == "DONE":
                time.sleep(1.5)  # presence is written on the next tick
            marks[word] = {name: cpu_seconds(pid) for name, pid in pids.items()}
            marks[word]["rss"] = sum(rss_kib(p.pid) for _, p in nodes)
            marks[word]["redis_bytes"] = sum(used_memory(port) for port, _ in redis)

        common = ["--server", "warpsocket", "--size", str(params["payload_bytes"])]
        common += ["--port", str(nodes[0][0]), "--ports", ",".join(str(p) for p, _ in nodes)]
        if kind == "connect":
            args = [*common, "--scenario", "connect", "--clients", str(params["connections"])]
            args += ["--concurrency", "50", "--settle", "0"]
            count_key, rate_key = "connections", "connections_per_s"
        elif kind == "rtt":
            args = [*common, "--scenario", "rtt", "--clients", str(params["rtt_clients"])]
            args += ["--duration", str(params["rtt_seconds"]), "--warmup", "0", "--mode", "ack"]
            count_key, rate_key = "round_trips", "round_trips_per_s"
        else:
            args = [*common, "--scenario", "fanout", "--pace", "burst"]
            args += [
                "--clients",
                str(params["fanout_clients"]),
                "--count",
                str(params["broadcasts"]),
            ]
            count_key, rate_key = "delivered", "deliveries_per_s"
        watch = [(f"node {i}", p, node_logs[i]) for i, (_, p) in enumerate(nodes)]
        result = bench.run_loadgen(
            args, nofile, 300, logs / f"scale-{setup}-{kind}.log", gate, watch
        )
        if str(result.get("outcome", "complete")) != "complete":
            raise RuntimeError(f"{setup}/{kind}: {result.get('outcome')}")
        spent = {name: marks["DONE"][name] - marks["GATE"][name] for name in pids}
        count = result[count_key]
        node_cpu = sum(v for k, v in spent.items() if k.startswith("node"))
        redis_cpu = [v for k, v in spent.items() if k.startswith("redis")]
        return {
            "rate": result[rate_key],
            "count": count,
            "node_us_per_op": node_cpu * 1e6 / count,
            "redis_us_per_op": sum(redis_cpu) * 1e6 / count if redis_cpu else 0.0,
            # Fan-out: Redis works per published message, not per delivery.
            "redis_us_per_publish": (
                sum(redis_cpu) * 1e6 / params["broadcasts"]
                if redis_cpu and kind == "fanout"
                else None
            ),
            "shard_shares": [v / sum(redis_cpu) for v in redis_cpu] if sum(redis_cpu) else [],
            # Connect: memory per connection, nodes (KiB RSS) and Redis (bytes of data).
            "node_kib_per_op": (marks["DONE"]["rss"] - marks["GATE"]["rss"]) / count,
            "redis_bytes_per_op": (marks["DONE"]["redis_bytes"] - marks["GATE"]["redis_bytes"])
            / count,
            "latency_ms_p99": result.get("latency_ms_p99") or result.get("delivery_latency_ms_p99"),
        }
    finally:
        for _, process in reversed(nodes):
            bench.stop(process)
        for _, process in reversed(redis):
            bench.stop(process)


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rtt-clients", type=int, default=60)
    parser.add_argument("--rtt-seconds", type=float, default=3.0)
    parser.add_argument("--fanout-clients", type=int, default=100)
    parser.add_argument("--broadcasts", type=int, default=4000)
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--out", default=str(bench.BENCH / "results"))
    args = parser.parse_args()
    bench.ensure_venv()
    bench.ensure_node_modules()
    if not bench.REDIS_SERVER:
        raise SystemExit("redis-server is needed (apt-get install redis-server)")
    params = {
        "payload_bytes": 100,
        "rtt_clients": args.rtt_clients,
        "rtt_seconds": args.rtt_seconds,
        "fanout_clients": args.fanout_clients,
        "broadcasts": args.broadcasts,
        "connections": args.connections,
    }
    out = Path(args.out).resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    nofile = bench.raise_nofile(max(args.fanout_clients, args.connections) + 1000)
    ports = bench.Ports()
    runs: dict[str, list[dict[str, Any]]] = {}
    setups = tuple(SETUPS)
    for round_no in range(1, args.repeat + 1):
        for kind in KINDS:
            for setup in setups:
                bench.say(f"round {round_no}/{args.repeat} {kind:6} {setup} ...")
                measured = run_setup(setup, kind, params, ports, logs, nofile)
                runs.setdefault(f"{kind}/{setup}", []).append(measured)
                shares = " ".join(f"{100 * s:.0f}%" for s in measured["shard_shares"])
                bench.say(
                    f"    {measured['rate']:,.0f}/s, nodes {measured['node_us_per_op']:.1f} us/op, "
                    f"redis {measured['redis_us_per_op']:.3f} us/op {shares}"
                )
    report: dict[str, Any] = {
        "command": "python bench/scale.py " + " ".join(sys.argv[1:]),
        "params": params,
    }
    lines = []
    for kind in KINDS:
        base = statistics.median(r["node_us_per_op"] for r in runs[f"{kind}/single"])
        for setup in setups:
            done = runs[f"{kind}/{setup}"]
            node = [r["node_us_per_op"] for r in done]
            redis = [r["redis_us_per_op"] for r in done]
            top_share = [max(r["shard_shares"]) for r in done if r["shard_shares"]]
            row = {
                "rate": summary([r["rate"] for r in done]),
                "node_us_per_op": summary(node),
                "redis_us_per_op": summary(redis),
                "node_kib_per_op": summary([r["node_kib_per_op"] for r in done]),
                "redis_bytes_per_op": summary([r["redis_bytes_per_op"] for r in done]),
                "node_cost_vs_single": summary([n / base for n in node]),
                "largest_shard_share": summary(top_share) if top_share else None,
                "runs": done,
            }
            report[f"{kind}/{setup}"] = row
            share = f"{100 * min(top_share):.0f}-{100 * max(top_share):.0f}%" if top_share else "-"
            if kind == "connect":
                kib = [r["node_kib_per_op"] for r in done]
                rbytes = [r["redis_bytes_per_op"] for r in done]
                lines.append(
                    f"{kind:7} {setup:9} per connection: nodes {min(kib):.1f}-{max(kib):.1f} "
                    f"KiB RSS, {min(node):.0f}-{max(node):.0f} us CPU; redis "
                    f"{min(rbytes):.0f}-{max(rbytes):.0f} bytes, "
                    f"{min(redis):.0f}-{max(redis):.0f} us CPU"
                )
                continue
            lines.append(
                f"{kind:7} {setup:9} nodes us/op {min(node):6.1f}-{max(node):6.1f} "
                f"(x{min(node) / base:.2f}-{max(node) / base:.2f} of single)  redis us/op "
                f"{min(redis):6.3f}-{max(redis):6.3f}  largest shard {share}"
            )
    (out / "scale.json").write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(report["command"])
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
