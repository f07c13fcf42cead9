#!/usr/bin/env python3
"""WarpSocket benchmark: every scenario against every server, in one run.

    python bench/run.py [--quick] [--out bench/results] [--scenarios fanout,fanout-paced,...]
                        [--profile auto|SCENARIO,SERVER:SCENARIO]

Sets up bench/.venv (this repository, editable, plus the baselines pinned in
bench/requirements.txt) and bench/loadgen/node_modules (npm ci from the
committed lock file), then for each scenario runs each server pinned to core 0
and the Node load generator pinned to core 1 (taskset), one after the other.

Scenarios: fanout (all broadcasts in one server event-loop turn), fanout-paced
(one broadcast per turn), fanout-cluster (two nodes of warpsocket or
python-socketio sharing a private redis-server, all three on core 0; clients
split between the nodes, broadcasts sent by node A), rtt, rtt-cluster (the
acked round trips of rtt against two warpsocket nodes + a private
redis-server, all three on core 0, clients split between the nodes), connect
(memory and connection rate).

Prints a table, writes <out>/results.json and <out>/results.png
(results-quick.* with --quick). See docs/performance.md.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import hashlib
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV = BENCH / ".venv"
VENV_PY = VENV / "bin" / "python"
LOADGEN = BENCH / "loadgen"
SERVER_DIR = BENCH / "servers"

SERVER_CORE = "0"
LOADGEN_CORE = "1"

SERVERS = ("warpsocket", "autobahn", "websockets", "socketio")
SCENARIOS = ("fanout", "fanout-paced", "fanout-cluster", "rtt", "rtt-cluster", "connect")
# Scenarios run on two nodes sharing a private redis-server (warpsocket-only for rtt).
CLUSTER_SCENARIOS = ("fanout-cluster", "rtt-cluster")
# The load generator's fan-out pace of each fan-out scenario.
FANOUTS = {"fanout": "burst", "fanout-paced": "turn", "fanout-cluster": "burst"}
# Servers with a cluster mode here (two nodes sharing one Redis).
CLUSTER_SERVERS = ("warpsocket", "socketio")
REDIS_SERVER = os.environ.get("BENCH_REDIS_SERVER") or shutil.which("redis-server") or ""
LABELS = {
    "warpsocket": "warpsocket",
    "warpsocket-call": "warpsocket (call)",
    "autobahn": "raw autobahn",
    "websockets": "websockets",
    "socketio": "python-socketio",
}
# Columns of the table and bars of the chart, in order.
COLUMNS = ("warpsocket", "warpsocket-call", "autobahn", "websockets", "socketio")

FULL = {
    "fanout_clients": 1000,
    "fanout_broadcasts": 200,
    "cluster_clients": 1000,  # half on each node
    "cluster_broadcasts": 200,
    "payload_bytes": 100,
    "rtt_clients": 100,
    "rtt_seconds": 5.0,
    "rtt_warmup_seconds": 1.0,
    "idle_connections": 10_000,
    "connect_concurrency": 50,
    # Where a WarpSocket client's hello travels: "url", in the upgrade
    # request (protocol.md 4.5), as the clients send a fresh one; "frame",
    # as the first message (a resume, or a hello with a token).
    "hello": "url",
    "repeats": 3,
}
QUICK = {
    **FULL,
    "fanout_clients": 200,
    "fanout_broadcasts": 50,
    "cluster_clients": 200,
    "cluster_broadcasts": 50,
    "rtt_seconds": 2.0,
    "rtt_warmup_seconds": 0.5,
    "idle_connections": 1000,
    "repeats": 1,
}

# (name, scenario, numerator column, denominator column, comparison, target);
# a ratio without a target is reported only.
TARGETS: tuple[tuple[str, str, str, str, str | None, float | None], ...] = (
    ("fan-out (burst): warpsocket / raw autobahn", "fanout", "warpsocket", "autobahn", ">=", 0.6),
    (
        "fan-out (burst): warpsocket / python-socketio",
        "fanout",
        "warpsocket",
        "socketio",
        ">=",
        10.0,
    ),
    (
        "fan-out (paced): warpsocket / raw autobahn",
        "fanout-paced",
        "warpsocket",
        "autobahn",
        ">=",
        0.6,
    ),
    (
        "fan-out (paced): warpsocket / python-socketio",
        "fanout-paced",
        "warpsocket",
        "socketio",
        ">=",
        10.0,
    ),
    (
        "cluster fan-out (2 nodes + redis): warpsocket / python-socketio",
        "fanout-cluster",
        "warpsocket",
        "socketio",
        None,
        None,
    ),
    ("acked round trips: warpsocket / autobahn echo", "rtt", "warpsocket", "autobahn", ">=", 1.0),
    (
        "acked round trip p99: warpsocket / autobahn echo",
        "rtt-p99",
        "warpsocket",
        "autobahn",
        "<=",
        1.0,
    ),
    (
        "RPC calls: warpsocket (call) / warpsocket acked events",
        "rtt",
        "warpsocket-call",
        "warpsocket",
        ">=",
        0.9,
    ),
    (
        "acked round trips: warpsocket / websockets echo",
        "rtt",
        "warpsocket",
        "websockets",
        None,
        None,
    ),
    ("connection rate: warpsocket / autobahn", "connect", "warpsocket", "autobahn", ">=", 0.9),
    # Cross-scenario: the cluster's acked round trips against one node's (same run).
    (
        "acked round trips: cluster (2 nodes + redis) / one node",
        "rtt-cluster",
        "warpsocket",
        "rtt:warpsocket",
        ">=",
        0.6,
    ),
    (
        "acked round trip p99: cluster / one node",
        "rtt-cluster-p99",
        "warpsocket",
        "rtt:warpsocket",
        "<=",
        2.0,
    ),
    (
        "memory per idle connection: warpsocket / autobahn",
        "memory",
        "warpsocket",
        "autobahn",
        "<=",
        1.5,
    ),
)
# The number each scenario is judged by.
HEADLINE = {
    "fanout": ("deliveries_per_s", "deliveries/s"),
    "fanout-paced": ("deliveries_per_s", "deliveries/s"),
    "fanout-cluster": ("deliveries_per_s", "deliveries/s"),
    "rtt": ("round_trips_per_s", "round trips/s"),
    "rtt-cluster": ("round_trips_per_s", "round trips/s"),
    # p99 targets: the median of the rounds' p99s (one round's p99 is the host's
    # noisiest figure; the best round by rate need not be the typical tail).
    "rtt-p99": ("latency_ms_p99_median", "round trip p99 ms, median round"),
    "rtt-cluster-p99": ("latency_ms_p99_median", "round trip p99 ms, median round"),
    "memory": ("rss_per_connection_kb", "KiB RSS per connection"),
    "connect": ("connections_per_s", "connections/s"),
}


# Ratio rows that are not rates: the scenario whose results they read.
RATIO_SOURCE = {"memory": "connect", "rtt-p99": "rtt", "rtt-cluster-p99": "rtt-cluster"}


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ setup


def _digest(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def ensure_venv() -> None:
    """bench/.venv: this repository (editable) and the pinned baselines."""
    stamp = VENV / ".bench-stamp"
    wanted = _digest(BENCH / "requirements.txt", REPO / "setup.cfg")
    if VENV_PY.exists() and stamp.exists() and stamp.read_text() == wanted:
        return
    if not VENV_PY.exists():
        say(f"creating {VENV.relative_to(REPO)} ...")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    say("installing warpsocket and the baselines into bench/.venv (first run only) ...")
    subprocess.run(
        [
            str(VENV_PY),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "-e",
            str(REPO),
            "-r",
            str(BENCH / "requirements.txt"),
        ],
        check=True,
    )
    stamp.write_text(wanted)


def ensure_node_modules() -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise SystemExit("node and npm are needed for the load generator (bench/loadgen)")
    stamp = LOADGEN / "node_modules" / ".bench-stamp"
    lock = LOADGEN / "package-lock.json"
    wanted = _digest(LOADGEN / "package.json", lock) if lock.exists() else ""
    if stamp.exists() and stamp.read_text() == wanted:
        return
    say("installing the load generator's packages (npm) ...")
    command = ["npm", "ci"] if lock.exists() else ["npm", "install"]
    subprocess.run(
        [*command, "--no-audit", "--no-fund", "--loglevel=error"], cwd=LOADGEN, check=True
    )
    stamp.write_text(_digest(LOADGEN / "package.json", lock))


def raise_nofile(wanted: int) -> int:
    """Raise this process's open-files limit (inherited by servers and load generator)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:  # root (CAP_SYS_RESOURCE) may raise the hard limit too
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            soft, hard = wanted, wanted
        except (ValueError, OSError):
            pass
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def port_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except OSError:
        return 32768, 60999


# ------------------------------------------------------------------ machine


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _command_output(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def machine_info() -> dict[str, Any]:
    cpuinfo = _read("/proc/cpuinfo")
    models = [
        line.split(":", 1)[1].strip()
        for line in cpuinfo.splitlines()
        if line.startswith("model name")
    ]
    meminfo = _read("/proc/meminfo")
    mem_kb = next(
        (int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal")), 0
    )
    versions = json.loads(
        _command_output(
            [
                str(VENV_PY),
                "-c",
                "import json, sys; from importlib.metadata import version as v\n"
                "names = ['warpsocket', 'twisted', 'autobahn', 'txaio', 'websockets',"
                " 'python-socketio', 'python-engineio', 'aiohttp', 'matplotlib', 'py-spy',"
                " 'wsaccel', 'ujson', 'msgpack']\n"
                "out = {}\n"
                "for n in names:\n"
                "    try: out[n] = v(n)\n"
                "    except Exception: out[n] = None\n"
                "print(json.dumps({'python': sys.version.split()[0], 'packages': out}))",
            ]
        )
        or "{}"
    )
    node_packages = {}
    for name in ("ws", "socket.io-client"):
        manifest = LOADGEN / "node_modules" / name / "package.json"
        if manifest.exists():
            node_packages[name] = json.loads(manifest.read_text())["version"]
    git = _command_output(["git", "-C", str(REPO), "rev-parse", "HEAD"])
    dirty = bool(
        _command_output(["git", "-C", str(REPO), "status", "--porcelain", "--", "warpsocket"])
    )
    return {
        "cpu_model": models[0] if models else platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": versions.get("python", platform.python_version()),
        "python_packages": versions.get("packages", {}),
        "node": _command_output(["node", "--version"]),
        "node_packages": node_packages,
        "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "ephemeral_ports": "-".join(map(str, port_range())),
        "somaxconn": _read("/proc/sys/net/core/somaxconn").strip(),
        "git_commit": git,
        "warpsocket_tree_dirty": dirty,
        "pinning": {"server": f"taskset -c {SERVER_CORE}", "loadgen": f"taskset -c {LOADGEN_CORE}"},
    }


def listen_overflows() -> int:
    """TcpExt ListenOverflows: SYNs/ACKs dropped because an accept queue was full."""
    lines = _read("/proc/net/netstat").splitlines()
    for header, values in zip(lines[::2], lines[1::2], strict=False):
        if header.startswith("TcpExt:"):
            table = dict(zip(header.split()[1:], values.split()[1:], strict=False))
            return int(table.get("ListenOverflows", 0))
    return 0


# ------------------------------------------------------------------ one case


class Ports:
    """Each case gets a fresh port (below the ephemeral range), so TIME_WAIT
    sockets left by the previous case never collide with the next one."""

    def __init__(self, start: int = 21000) -> None:
        self.next = start

    def take(self) -> int:
        while True:
            port = self.next
            self.next += 1
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port


def log_tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:] if line.strip())


def start_server(
    server: str,
    scenario: str,
    port: int,
    log_path: Path,
    extra: tuple[str, ...] = (),
    name: str | None = None,
    wrapper: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    """``wrapper``: a script (and its arguments) the server script runs under
    (bench/gcprofile.py)."""
    command = [
        "taskset",
        "-c",
        SERVER_CORE,
        str(VENV_PY),
        *wrapper,
        str(SERVER_DIR / f"{server}_server.py"),
        "--port",
        str(port),
        "--scenario",
        scenario,
        *extra,
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=BENCH)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if b"READY" in log_path.read_bytes():
            return process
        if process.poll() is not None:
            break
        time.sleep(0.05)
    stop(process)
    why = "timed out" if process.returncode in (None, -signal.SIGTERM) else "exited"
    raise RuntimeError(
        f"{name or server} did not start ({why}, exit {process.returncode}): "
        f"{log_tail(log_path)}; see {log_path}"
    )


def start_redis(port: int, log_path: Path, core: str = SERVER_CORE) -> subprocess.Popen[bytes]:
    """A private redis-server for one cluster case (on ``core``, no
    persistence), returned once it answers PING."""
    if not REDIS_SERVER:
        raise RuntimeError(
            "redis-server not found (install it, e.g. apt-get install redis-server, "
            "or set BENCH_REDIS_SERVER)"
        )
    command = [
        "taskset",
        "-c",
        core,
        REDIS_SERVER,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--maxclients",
        "1000",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=BENCH)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
                probe.sendall(b"PING\r\n")
                if probe.recv(64).startswith(b"+PONG"):
                    return process
        except OSError:
            pass
        time.sleep(0.05)
    stop(process)
    raise RuntimeError(
        f"redis-server did not start on port {port} (exit {process.returncode}): "
        f"{log_tail(log_path)}; see {log_path}"
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_loadgen(
    args: list[str],
    nofile: int,
    timeout: float,
    log_path: Path,
    on_gate: Any = None,
    watch: Sequence[tuple[str, subprocess.Popen[bytes], Path]] = (),
) -> dict[str, Any]:
    """Run the load generator (core 1) and return its RESULT. With ``on_gate``,
    the load generator stops before and after measuring until ``on_gate(word)``
    has run (word: "GATE", then "DONE"). Every process in ``watch`` (name,
    process, log) must stay alive meanwhile: if one exits, the load generator
    is stopped at once and the error names it."""
    if on_gate is not None:
        args = [*args, "--gate", "1"]
    node = " ".join(shlex.quote(a) for a in ["node", str(LOADGEN / "loadgen.js"), *args])
    # exec, twice: the PID we hold is node's own, so SIGUSR1 reaches it.
    command = ["bash", "-c", f"ulimit -n {nofile} && exec taskset -c {LOADGEN_CORE} {node}"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    errors: list[str] = []

    def read_stderr() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            if line.strip() in ("GATE", "DONE") and on_gate is not None:
                on_gate(line.strip())
                process.send_signal(signal.SIGUSR1)
            else:
                errors.append(line)

    # stderr on a thread (it carries the gates), stdout on another: neither pipe
    # may fill up while we wait.
    out_lines: list[str] = []

    def read_stdout() -> None:
        assert process.stdout is not None
        out_lines.extend(process.stdout)

    readers = [threading.Thread(target=f, daemon=True) for f in (read_stderr, read_stdout)]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + timeout
    while True:
        try:
            process.wait(timeout=0.2)
            break
        except subprocess.TimeoutExpired:
            pass
        dead = [(name, p, log) for name, p, log in watch if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            process.kill()
            process.wait()
            for reader in readers:
                reader.join(timeout=5)
            with log_path.open("a") as log_file:
                log_file.write("\n--- loadgen stderr (stopped) ---\n" + "".join(errors))
            if dead:
                name, p, log = dead[0]
                code = p.returncode
                how = (
                    f"was killed by {signal.Signals(-code).name}"
                    if code < 0
                    else f"exited (code {code}): {log_tail(log)}"
                )
                raise RuntimeError(f"{name} {how} during the run; see {log}")
            raise RuntimeError(f"load generator timed out after {timeout:.0f} s")
    for reader in readers:
        reader.join(timeout=5)
    stdout = "".join(out_lines)
    with log_path.open("a") as log:
        log.write("\n--- loadgen stderr ---\n" + "".join(errors))
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    tail = "".join(errors).strip()[-500:]
    raise RuntimeError(f"load generator failed (exit {process.returncode}): {tail}")


def loadgen_args(server: str, scenario: str, params: dict[str, Any], mode: str) -> list[str]:
    common = [
        "--server",
        server,
        "--scenario",
        "fanout" if scenario in FANOUTS else scenario.removesuffix("-cluster"),
        "--size",
        str(params["payload_bytes"]),
        "--concurrency",
        str(params["connect_concurrency"]),
        "--hello",
        params["hello"],
    ]
    if scenario in FANOUTS:
        prefix = "cluster" if scenario == "fanout-cluster" else "fanout"
        return [
            *common,
            "--pace",
            FANOUTS[scenario],
            "--clients",
            str(params[f"{prefix}_clients"]),
            "--count",
            str(params[f"{prefix}_broadcasts"]),
        ]
    if scenario in ("rtt", "rtt-cluster"):
        return [
            *common,
            "--clients",
            str(params["rtt_clients"]),
            "--mode",
            mode,
            "--duration",
            str(params["rtt_seconds"]),
            "--warmup",
            str(params["rtt_warmup_seconds"]),
        ]
    return [*common, "--clients", str(params["idle_connections"])]


def run_case(
    server: str,
    scenario: str,
    params: dict[str, Any],
    ports: Ports,
    nofile: int,
    logs: Path,
    *,
    mode: str = "ack",
    profile_to: Path | None = None,
    loadgen_extra: tuple[str, ...] = (),
    wrapper: tuple[str, ...] = (),
    redis: bool = True,
    on_gate: Callable[[str, list[tuple[str, int]]], None] | None = None,
) -> dict[str, Any]:
    """One case: fresh server process(es), the load generator, the result. The
    cluster fan-out starts a private redis-server and two nodes (A and B) of
    the server on core 0; the control client talks to node A. ``loadgen_extra``:
    more options for the load generator (bench/latency.py's ``--samples``);
    ``wrapper``: what one server runs under (``start_server``; not the cluster's).
    ``redis=False`` starts a cluster scenario's two nodes without Redis: two
    independent nodes in memory, the clients spread over them as before
    (bench/neighbour.py: what two processes on one core cost without it);
    refused for the other cluster scenarios, whose nodes must hear each
    other (the clients of rtt-cluster each talk to their own node only),
    and no matter for the single-server ones.
    ``on_gate(word, processes)``: called when the load generator starts
    ("GATE") and ends ("DONE") its measured phase, with the (name, pid) of
    every server process of the case."""
    if not redis and scenario in CLUSTER_SCENARIOS and scenario != "rtt-cluster":
        raise ValueError(f"{scenario}: its nodes need Redis")
    suffix = "" if mode == "ack" else f"-{mode}"
    if not redis and scenario in CLUSTER_SCENARIOS:
        suffix += "-noredis"
    stem = f"{server}{suffix}-{scenario}{'-profiled' if profile_to else ''}"
    # (name, process, log): every process that must live until the end of the case.
    started: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    spies: list[subprocess.Popen[bytes]] = []
    # (pid, profile file) of each process py-spy samples.
    targets: list[tuple[int, Path]] = []

    def profiler(word: str) -> None:
        # py-spy samples the server from core 1 (the load generator's core), and
        # only during the measured phase: the load generator waits at its gates.
        if word == "DONE":
            stop_profilers()
            return
        for pid, output in targets:
            spies.append(
                subprocess.Popen(
                    [
                        "taskset",
                        "-c",
                        LOADGEN_CORE,
                        str(VENV / "bin" / "py-spy"),
                        "record",
                        "--pid",
                        str(pid),
                        "--rate",
                        "250",
                        "--format",
                        "raw",
                        "--nolineno",
                        "--nonblocking",
                        "--output",
                        str(output),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(1.5)  # py-spy attaches

    def gate(word: str) -> None:
        if profile_to is not None:
            profiler(word)
        if on_gate is not None:
            on_gate(word, [(name, process.pid) for name, process, _ in started])

    def stop_profilers() -> None:
        while spies:
            spy = spies.pop()
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()

    try:
        if scenario in CLUSTER_SCENARIOS:
            log_path = logs / f"{stem}.log"  # the load generator's
            log_path.write_text("")
            redis_port = ports.take()
            redis_log = logs / f"{stem}-redis.log"
            # Profiled, Redis leaves the nodes' core: py-spy counts a node
            # that Redis preempted inside send() as busy in send(), which
            # hides where the nodes' own time goes (docs/performance.md,
            # "Fourth round: the clustered hot path").
            redis_core = LOADGEN_CORE if profile_to is not None else SERVER_CORE
            if redis:
                started.append(
                    ("redis-server", start_redis(redis_port, redis_log, redis_core), redis_log)
                )
            node_args = ("--redis", f"127.0.0.1:{redis_port}") if redis else ()
            node_ports = []
            for node in ("a", "b"):
                port = ports.take()
                node_log = logs / f"{stem}-node-{node}.log"
                process = start_server(
                    server,
                    scenario,
                    port,
                    node_log,
                    (*node_args, "--node", f"bench-{node}"),
                    name=f"{server} node {node.upper()}",
                )
                started.append((f"{server} node {node.upper()}", process, node_log))
                node_ports.append(port)
                if profile_to is not None:
                    targets.append(
                        (process.pid, profile_to.with_name(f"{profile_to.stem}-node-{node}.txt"))
                    )
            nodes = started[-2:]
            pids = [
                "--port",
                str(node_ports[0]),
                "--port2",
                str(node_ports[1]),
                "--server-pid",
                str(nodes[0][1].pid),
                "--server-pid2",
                str(nodes[1][1].pid),
            ]
            if redis:
                pids += ["--redis-pid", str(started[0][1].pid)]
        else:
            port = ports.take()
            log_path = logs / f"{stem}.log"
            process = start_server(server, scenario, port, log_path, wrapper=wrapper)
            started.append((server, process, log_path))
            if profile_to is not None:
                targets.append((process.pid, profile_to))
            pids = ["--port", str(port), "--server-pid", str(process.pid)]
        overflows = listen_overflows()
        result = run_loadgen(
            [*loadgen_args(server, scenario, params, mode), *pids, *loadgen_extra],
            nofile,
            timeout=600,
            log_path=log_path,
            on_gate=gate if profile_to is not None or on_gate is not None else None,
            watch=started,
        )
        result["scenario"] = scenario
        result["listen_overflows"] = listen_overflows() - overflows
        if profile_to is not None:
            result["profile_files"] = [str(output) for _, output in targets]
        outcome = str(result.get("outcome", "complete"))
        if outcome.startswith("failed"):
            raise RuntimeError(outcome[len("failed: ") :] + f"; see {log_path}")
        return result
    finally:
        stop_profilers()
        for _, process, _ in reversed(started):
            stop(process)


RATE_KEY = {
    **dict.fromkeys(FANOUTS, "deliveries_per_s"),
    "rtt": "round_trips_per_s",
    "rtt-cluster": "round_trips_per_s",
    "connect": "connections_per_s",
}


COUNT_KEY = {
    **dict.fromkeys(FANOUTS, "delivered"),
    "rtt": "round_trips",
    "rtt-cluster": "round_trips",
    "connect": "connections",
}


def cpu_cost(
    scenario: str, result: dict[str, Any], seconds_key: str = "server_cpu_seconds"
) -> float | None:
    """Server CPU microseconds per delivery / round trip / connection: what the
    server spends per unit of work, whatever else the machine was doing (both
    nodes together in the cluster fan-out; ``redis_cpu_seconds`` for Redis)."""
    seconds, count = result.get(seconds_key), result.get(COUNT_KEY[scenario])
    return None if seconds is None or not count else seconds * 1e6 / count


def _median(values: list[float]) -> float | None:
    """The median (the mean of the middle two for an even count)."""
    values = sorted(values)
    middle = len(values) // 2
    if not values:
        return None
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def combine(scenario: str, attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """Best of the repeats for rates (the run least disturbed by anything else on
    the machine), with its own latencies and CPU figures; the median for memory,
    and the median of the rounds' p99s for the p99 targets."""
    key = RATE_KEY[scenario]
    complete = [a for a in attempts if a.get("outcome", "complete") == "complete"] or attempts
    best = dict(max(complete, key=lambda a: a[key]))
    best["repeats"] = len(attempts)
    costs = [c for c in (cpu_cost(scenario, a) for a in attempts) if c is not None]
    best["server_cpu_us_per_op"] = _median(costs)
    if scenario in CLUSTER_SCENARIOS:
        redis = [cpu_cost(scenario, a, "redis_cpu_seconds") for a in attempts]
        best["redis_cpu_us_per_op"] = _median([c for c in redis if c is not None])
    best[f"{key}_runs"] = [a[key] for a in attempts]
    if scenario in ("rtt", "rtt-cluster"):
        p99s = [a["latency_ms_p99"] for a in complete if a.get("latency_ms_p99") is not None]
        best["latency_ms_p99_runs"] = p99s
        best["latency_ms_p99_median"] = _median(p99s)
    if scenario == "connect":
        memory = [a["rss_per_connection_kb"] for a in attempts]
        best["rss_per_connection_kb_runs"] = memory
        best["rss_per_connection_kb"] = _median(memory)
    return best


# ------------------------------------------------------------------ profiles


def summarize_profile(paths: Sequence[Path], top: int = 15) -> dict[str, Any]:
    """Top frames of py-spy raw (collapsed) profiles, added up (the two nodes of
    the cluster fan-out): self and inclusive samples."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    lines = [line for path in paths if path.exists() for line in path.read_text().splitlines()]
    if not lines:
        return {"samples": 0, "self": [], "inclusive": []}
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short_frame(f) for f in stack.split(";")]
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count

    def rows(counter: collections.Counter[str]) -> list[dict[str, Any]]:
        return [
            {"frame": frame, "samples": n, "percent": round(100.0 * n / samples, 1)}
            for frame, n in counter.most_common(top)
        ]

    return {"samples": samples, "self": rows(own), "inclusive": rows(total)}


def _short_frame(frame: str) -> str:
    # "sendData (/.../site-packages/autobahn/websocket/protocol.py)"
    #   -> "sendData (autobahn/websocket/protocol.py)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "/work/main/", str(REPO) + "/", "lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})" if where else name


# ------------------------------------------------------------------ report


def ratios(results: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for name, scenario, top, bottom, comparison, target in TARGETS:
        key = HEADLINE[scenario][0]
        source = RATIO_SOURCE.get(scenario, scenario)
        if source not in results:
            continue
        # A denominator "SCENARIO:COLUMN" comes from another scenario of the run.
        other, _, bottom_column = bottom.rpartition(":")
        bottom_source = other or source
        a = results.get(source, {}).get(top, {}).get(key)
        b = results.get(bottom_source, {}).get(bottom_column, {}).get(key)
        value = a / b if a is not None and b not in (None, 0) else None
        met = (
            None
            if value is None or target is None
            else (value >= target if comparison == ">=" else value <= target)
        )
        # Cross-check for rates: the same ratio from server CPU per operation
        # (insensitive to other load on the machine).
        cost_a = results.get(source, {}).get(top, {}).get("server_cpu_us_per_op")
        if cost_a is not None and source in CLUSTER_SCENARIOS:
            cost_a += results[source][top].get("redis_cpu_us_per_op") or 0.0
        cost_b = results.get(bottom_source, {}).get(bottom_column, {}).get("server_cpu_us_per_op")
        rate = scenario not in RATIO_SOURCE
        by_cpu = cost_b / cost_a if rate and cost_a and cost_b else None
        rows.append(
            {
                "name": name,
                "scenario": scenario,
                "numerator": top,
                "denominator": bottom,
                "value": value,
                "target": "-" if target is None else f"{comparison} {target:g}",
                "met": met,
                "value_by_server_cpu": by_cpu,
            }
        )
    return rows


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(results: dict[str, dict[str, dict[str, Any]]], params: dict[str, Any]) -> str:
    rtt, con = results.get("rtt", {}), results.get("connect", {})
    columns = [c for c in COLUMNS if any(c in r for r in results.values())]
    n_fan = f"{params['fanout_clients']:,} clients x {params['fanout_broadcasts']} broadcasts"
    n_cluster = (
        f"2 nodes + redis, {params['cluster_clients']:,} clients x "
        f"{params['cluster_broadcasts']} broadcasts"
    )
    n_rtt = f"{params['rtt_clients']} clients, {params['rtt_seconds']:g} s"
    n_idle = f"{params['idle_connections']:,} connections"

    def get(source: dict[str, dict[str, Any]], key: str, scale: float = 1.0, digits: int = 0):
        def cell(column: str) -> str:
            value = source.get(column, {}).get(key)
            return _fmt(None if value is None else value * scale, digits)

        return cell

    def latency(source: dict[str, dict[str, Any]]):
        return lambda c: (
            f"{_fmt(source[c].get('delivery_latency_ms_p50'), 0)} / "
            f"{_fmt(source[c].get('delivery_latency_ms_p99'), 0)}"
            if c in source
            else "-"
        )

    def load(source: dict[str, dict[str, Any]], *keys: str):
        return lambda c: " / ".join(_fmt(_pct(source, c, k)) for k in keys) if c in source else "-"

    rows: list[tuple[str, str, Any]] = []
    for scenario, title in (
        ("fanout", f"fan-out, burst ({n_fan})"),
        ("fanout-paced", f"fan-out, paced: 1 per loop turn ({n_fan})"),
    ):
        if scenario not in results:
            continue
        fan = results[scenario]
        rows += [
            (title, "deliveries/s", get(fan, "deliveries_per_s")),
            ("", "delivery latency p50 / p99 ms", latency(fan)),
            ("", "server CPU / loadgen CPU %", load(fan, "server_cpu", "loadgen_cpu")),
            ("", "server CPU us per delivery", get(fan, "server_cpu_us_per_op", digits=1)),
        ]
    if "fanout-cluster" in results:
        fan = results["fanout-cluster"]
        rows += [
            (f"cluster fan-out ({n_cluster})", "deliveries/s", get(fan, "deliveries_per_s")),
            ("", "delivery latency p50 / p99 ms", latency(fan)),
            (
                "",
                "CPU % nodes A+B / redis / loadgen",
                load(fan, "server_cpu", "redis_cpu", "loadgen_cpu"),
            ),
            ("", "nodes A+B CPU us per delivery", get(fan, "server_cpu_us_per_op", digits=1)),
            ("", "redis CPU us per delivery", get(fan, "redis_cpu_us_per_op", digits=2)),
        ]
    rtt_cluster = results.get("rtt-cluster", {})
    if rtt_cluster:
        rows += [
            (
                f"cluster acked round trip (2 nodes + redis, {n_rtt})",
                "round trips/s",
                get(rtt_cluster, "round_trips_per_s"),
            ),
            ("", "latency p50 ms", get(rtt_cluster, "latency_ms_p50", digits=2)),
            ("", "latency p99 ms", get(rtt_cluster, "latency_ms_p99", digits=2)),
            (
                "",
                "latency p99 ms, median round",
                get(rtt_cluster, "latency_ms_p99_median", digits=2),
            ),
            (
                "",
                "CPU % nodes A+B / redis / loadgen",
                load(rtt_cluster, "server_cpu", "redis_cpu", "loadgen_cpu"),
            ),
            (
                "",
                "nodes A+B CPU us per round trip",
                get(rtt_cluster, "server_cpu_us_per_op", 1.0, 1),
            ),
            ("", "redis CPU us per round trip", get(rtt_cluster, "redis_cpu_us_per_op", 1.0, 2)),
        ]
    if rtt:
        rows += [
            (f"acked round trip ({n_rtt})", "round trips/s", get(rtt, "round_trips_per_s")),
            ("", "latency p50 ms", get(rtt, "latency_ms_p50", digits=2)),
            ("", "latency p99 ms", get(rtt, "latency_ms_p99", digits=2)),
            ("", "latency p99 ms, median round", get(rtt, "latency_ms_p99_median", digits=2)),
            ("", "server CPU / loadgen CPU %", load(rtt, "server_cpu", "loadgen_cpu")),
            ("", "server CPU us per round trip", get(rtt, "server_cpu_us_per_op", digits=1)),
        ]
    if con:
        rows += [
            (
                f"memory ({n_idle} idle)",
                "KiB RSS per connection",
                get(con, "rss_per_connection_kb", digits=1),
            ),
            (
                "",
                "RSS before -> after MiB",
                lambda c: (
                    f"{_fmt(_mib(con, c, 'rss_before_kb'), 1)} -> "
                    f"{_fmt(_mib(con, c, 'rss_after_kb'), 1)}"
                    if c in con
                    else "-"
                ),
            ),
            (f"connection rate (to {n_idle})", "connections/s", get(con, "connections_per_s")),
            ("", "server CPU us per connection", get(con, "server_cpu_us_per_op")),
        ]
    header = ["scenario", "metric", *(LABELS[c] for c in columns)]
    body = [[label, metric, *(cell(c) for c in columns)] for label, metric, cell in rows]
    widths = [max(len(str(r[i])) for r in [header, *body]) for i in range(len(header))]
    lines = []
    for n, row in enumerate([header, *body]):
        lines.append(
            " | ".join(
                str(v).ljust(widths[i]) if i < 2 else str(v).rjust(widths[i])
                for i, v in enumerate(row)
            )
        )
        if n == 0:
            lines.append("-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def _pct(source: dict[str, dict[str, Any]], column: str, key: str) -> float | None:
    value = source.get(column, {}).get(key)
    return None if value is None else 100.0 * value


def _mib(source: dict[str, dict[str, Any]], column: str, key: str) -> float | None:
    value = source.get(column, {}).get(key)
    return None if value is None else value / 1024.0


def ratio_table(rows: list[dict[str, Any]]) -> str:
    width = max([52, *(len(row["name"]) for row in rows)])
    lines = [
        f"{'ratio (same run)':<{width}} {'value':>8}  {'target':<7} {'met':<4} by server CPU/op"
    ]
    for row in rows:
        met = "-" if row["met"] is None else ("yes" if row["met"] else "NO")
        cpu = _fmt(row.get("value_by_server_cpu"), 2) if row.get("value_by_server_cpu") else ""
        lines.append(
            f"{row['name']:<{width}} {_fmt(row['value'], 2):>8}  {row['target']:<7} {met:<4} "
            f"{cpu:>8}"
        )
    return "\n".join(lines)


def chart(report: dict[str, Any], path: Path) -> None:
    """Grouped bars per scenario; written with matplotlib's Agg backend."""
    data_path = path.with_suffix(".chart.tmp")
    data_path.write_text(json.dumps(report))
    try:
        subprocess.run(
            [str(VENV_PY), str(BENCH / "chart.py"), str(data_path), str(path)], check=True
        )
    finally:
        data_path.unlink(missing_ok=True)


# ------------------------------------------------------------------ main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="scaled-down smoke run (about 1 minute)"
    )
    parser.add_argument(
        "--out", default=str(BENCH / "results"), help="directory for results.json/.png"
    )
    parser.add_argument("--servers", default=",".join(SERVERS), help="subset, comma-separated")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"subset of {','.join(SCENARIOS)} (connect measures memory and connection "
        "rate; fanout-cluster runs warpsocket and python-socketio only)",
    )
    parser.add_argument(
        "--profile",
        default="",
        help="after the measured runs, re-run scenarios under py-spy, sampling the "
        "measured phase only: comma-separated SCENARIO (warpsocket) or "
        "SERVER:SCENARIO, or 'auto' (warpsocket, every scenario whose target "
        "was missed); raw profiles go to OUT/profiles/",
    )
    parser.add_argument("--idle", type=int, help="override the number of idle connections")
    parser.add_argument(
        "--hello",
        choices=("url", "frame"),
        help="where WarpSocket's hello travels: in the upgrade request (url, the "
        "default, protocol.md 4.5) or as the first frame",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        help="rounds of every case (default 3, quick 1): rates are the best round, "
        "memory the median",
    )
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    started = time.monotonic()
    started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    params = dict(QUICK if args.quick else FULL)
    if args.idle:
        params["idle_connections"] = args.idle
    if args.repeat:
        params["repeats"] = max(1, args.repeat)
    if args.hello:
        params["hello"] = args.hello
    servers = [s for s in args.servers.split(",") if s]
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(servers) - set(SERVERS) | set(scenarios) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown server or scenario: {', '.join(sorted(unknown))}")
    if shutil.which("taskset") is None:
        raise SystemExit("taskset (util-linux) is needed to pin server and load generator")
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("two cores are needed: the server on core 0, the load generator on core 1")

    ensure_venv()
    ensure_node_modules()

    notes: list[str] = []
    wanted_fds = params["idle_connections"] + 1000
    nofile = raise_nofile(wanted_fds)
    low, high = port_range()
    largest = min(nofile - 1000, high - low - 1000)
    if params["idle_connections"] > largest:
        notes.append(
            f"{params['idle_connections']:,} idle connections exceed this machine's limits "
            f"(open files {nofile}, ephemeral ports {low}-{high}); used {largest:,}"
        )
        params["idle_connections"] = largest
    for note in notes:
        say("note: " + note)

    out = Path(args.out)
    if not out.is_absolute():
        out = Path.cwd() / out
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    ports = Ports()
    results: dict[str, dict[str, dict[str, Any]]] = {}
    failures: dict[str, str] = {}

    plan: list[tuple[str, str, str]] = []
    for scenario in scenarios:
        for server in servers:
            if scenario == "fanout-cluster" and server not in CLUSTER_SERVERS:
                continue
            if scenario == "rtt-cluster" and server != "warpsocket":
                continue
            plan.append((scenario, server, "ack"))
            if scenario == "rtt" and server == "warpsocket":
                plan.append((scenario, server, "call"))
    # Rounds: every case once per round, so that a burst of load from elsewhere
    # on the machine hits one repeat of a case, not all of them.
    runs: dict[tuple[str, str], list[dict[str, Any]]] = collections.defaultdict(list)
    for round_no in range(1, params["repeats"] + 1):
        for scenario, server, mode in plan:
            column = server if mode == "ack" else f"{server}-{mode}"
            say(
                f"[{time.monotonic() - started:6.1f}s] round {round_no}/{params['repeats']} "
                f"{scenario:14} {LABELS[column]} ..."
            )
            try:
                result = run_case(server, scenario, params, ports, nofile, logs, mode=mode)
            except Exception as error:  # one failed case must not lose the rest
                failures[f"{scenario}/{column}/round{round_no}"] = str(error)
                say(f"    FAILED: {error}")
                continue
            runs[(scenario, column)].append(result)
            key = RATE_KEY[scenario]
            extra = (
                f", {result['rss_per_connection_kb']:.1f} KiB/conn" if scenario == "connect" else ""
            )
            warn = (
                "" if result.get("outcome", "complete") == "complete" else f" ({result['outcome']})"
            )
            if result.get("outcome", "complete") != "complete" and "expected" in result:
                warn += f" {result['delivered']:,} of {result['expected']:,} delivered"
            if "delivered_node_a" in result:
                a, b = result["delivered_node_a"], result["delivered_node_b"]
                warn += f" (node A {a:,}, node B {b:,})"
            busy = result.get("core0_busy")
            load = (
                f"; core 0 busy {100 * busy:.0f}%, server {100 * result['server_cpu']:.0f}%"
                if busy
                else ""
            )
            if result.get("redis_cpu") is not None:
                load += f", redis {100 * result['redis_cpu']:.0f}%"
            if result.get("loadgen_cpu") is not None:
                load += f", loadgen {100 * result['loadgen_cpu']:.0f}%"
            say(f"    {key} = {result[key]:,.0f}{extra}{warn}{load}")
    for (scenario, column), attempts in runs.items():
        results.setdefault(scenario, {})[column] = combine(scenario, attempts)
    # The load generator must not be what limits a rate: say so where its core
    # was (nearly) saturated while the server's was not.
    for scenario, by_column in results.items():
        for column, best in by_column.items():
            own, core0, core1 = (best.get(k) for k in ("loadgen_cpu", "core0_busy", "core1_busy"))
            if scenario == "connect" or own is None or core0 is None or core1 is None:
                continue
            if own >= 0.9 or (core1 >= 0.85 and core0 < 0.9):
                notes.append(
                    f"{scenario} / {LABELS[column]}: the load generator used {100 * own:.0f}% "
                    f"of core 1 (core 1 busy {100 * core1:.0f}%, core 0 {100 * core0:.0f}%): "
                    "this rate is (near) the load generator's limit; compare server CPU/op"
                )
    results = {s: results[s] for s in SCENARIOS if s in results}

    ratio_rows = ratios(results)

    profiles: dict[str, Any] = {}
    wanted_profiles: set[tuple[str, str]] = set()
    for spec in (p for p in args.profile.split(",") if p):
        if spec == "auto":
            for row in ratio_rows:
                if row["met"] is False:
                    scenario = RATIO_SOURCE.get(row["scenario"], row["scenario"])
                    wanted_profiles.add(("warpsocket", scenario))
            continue
        server, _, scenario = spec.rpartition(":")
        if (server and server not in SERVERS) or scenario not in SCENARIOS:
            raise SystemExit(f"--profile: unknown {spec!r} (use SCENARIO or SERVER:SCENARIO)")
        if scenario in CLUSTER_SCENARIOS and (server or "warpsocket") not in CLUSTER_SERVERS:
            raise SystemExit(f"--profile: {server} has no cluster mode here")
        wanted_profiles.add((server or "warpsocket", scenario))
    if wanted_profiles:
        (out / "profiles").mkdir(exist_ok=True)
    for server, scenario in sorted(wanted_profiles):
        say(
            f"[{time.monotonic() - started:6.1f}s] profiling {server} during {scenario} "
            "(py-spy) ..."
        )
        raw = out / "profiles" / f"{server}-{scenario}.txt"
        try:
            profiled = run_case(server, scenario, params, ports, nofile, logs, profile_to=raw)
        except Exception as error:
            failures[f"profile/{server}:{scenario}"] = str(error)
            say(f"    FAILED: {error}")
            continue
        files = [Path(f) for f in profiled.get("profile_files", [raw])]
        profiles[f"{server}:{scenario}"] = {
            "raw": [str(f.relative_to(REPO) if f.is_relative_to(REPO) else f) for f in files],
            "result_under_profiler": profiled,
            **summarize_profile(files),
        }

    finished_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    command = "python bench/run.py" + "".join(f" {a}" for a in sys.argv[1:])
    report = {
        "mode": "quick" if args.quick else "full",
        "command": command,
        "started_at": started_at,
        "finished_at": finished_at,
        "duration_s": round(time.monotonic() - started, 1),
        "machine": machine_info(),
        "params": params,
        "notes": notes,
        "labels": LABELS,
        "results": results,
        "ratios": ratio_rows,
        "failures": failures,
        "profiles": profiles,
    }
    stem = "results-quick" if args.quick else "results"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    try:
        chart(report, out / f"{stem}.png")
    except subprocess.CalledProcessError as error:
        failures["chart"] = str(error)

    machine = report["machine"]
    print()
    print(f"WarpSocket benchmark ({report['mode']}), {finished_at}")
    print(
        f"machine: {machine['cpu_model']}, {machine['cores']} cores, {machine['memory_gib']} GiB; "
        f"Python {machine['python']}, Node {machine['node']}; server on core {SERVER_CORE}, "
        f"load generator on core {LOADGEN_CORE}"
    )
    print(f"command: {command}")
    print()
    print(table(results, params))
    print()
    print(ratio_table(ratio_rows))
    for name, profile in profiles.items():
        print()
        print(
            f"py-spy, {name.replace(':', ' during ')}: {profile['samples']} samples"
            f"{' (nodes A+B added up)' if len(profile['raw']) > 1 else ''}; top frames by own time:"
        )
        for row in profile["self"][:10]:
            print(f"  {row['percent']:5.1f}%  {row['frame']}")
    for note in notes:
        print(f"\nnote: {note}")
    for name, error in failures.items():
        print(f"\nFAILED {name}: {error}")
    print(
        f"\nwrote {out / (stem + '.json')} and {out / (stem + '.png')} "
        f"in {report['duration_s']:.0f} s"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
