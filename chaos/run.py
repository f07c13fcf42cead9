"""The chaos harness: ``python -m chaos [--duration 180] [--clients 8] [--seed N] [--quick]``.

Starts the server (a ``twistd`` subprocess), a fault-injecting TCP proxy and
N clients in this process; for ``--duration`` seconds clients send acked
messages and receive room, broadcast and acked direct messages while
connections are cut and stalled and the server is SIGKILLed and restarted.
Then the faults stop, everything settles, the last server reports its final
stream positions, and ``chaos.check`` judges the recorded history. Prints a
table, writes JSON (``chaos/results/latest.json`` by default) and exits 1 on
any violation.

``--redis`` (cluster mode): a redis-server without persistence and
``--nodes`` (2) servers sharing it; the proxy balances new connections over
the nodes that are up; one node at a time is SIGKILLed and restarted, and
Redis itself is SIGKILLed and restarted (losing everything). The final
positions are read from Redis.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:  # ``python chaos/run.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, task
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogBeginner
from zope.interface import implementer

from chaos.check import Report, check_run
from chaos.clients import ChaosClient
from chaos.proxy import ChaosProxy
from chaos.redisproc import RedisCluster, RedisServer, redis_binary
from chaos.server import ServerProcess
from warpsocket.client.options import ClientOptions
from warpsocket.client.state import ClientState
from warpsocket.core.backoff import Backoff
from warpsocket.protocol.codecs import JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL

# How long the clients may take to reach the final positions once faults stop.
CONVERGE_SECONDS = 45.0

CHAOS = Path(__file__).resolve().parent
ROOMS = ("alpha", "beta", "gamma")
BROADCAST_KEY = "broadcast"
NODE_NAMES = tuple("abcdefghijklmnopqrstuvwxyz")


@dataclass(frozen=True)
class Profile:
    """How often each fault strikes (uniform ranges, seconds)."""

    cut_every: tuple[float, float]
    stall_every: tuple[float, float]
    kill_every: tuple[float, float]
    down_for: tuple[float, float]
    stall_for: tuple[float, float] = (0.1, 2.5)
    long_stall_for: tuple[float, float] = (7.0, 9.0)  # beyond the heartbeat timeout
    long_stall_chance: float = 0.1
    cut_all_chance: float = 0.3
    redis_every: tuple[float, float] = (40.0, 70.0)  # cluster mode only
    redis_down_for: tuple[float, float] = (0.2, 1.5)


FULL = Profile(
    cut_every=(1.0, 4.0), stall_every=(2.0, 6.0), kill_every=(15.0, 30.0), down_for=(0.2, 2.0)
)
QUICK = Profile(
    cut_every=(0.6, 1.8),
    stall_every=(1.0, 3.0),
    kill_every=(4.0, 7.0),
    down_for=(0.2, 1.0),
    redis_every=(7.0, 10.0),
    redis_down_for=(0.2, 1.0),
)

# Server settings: fast heartbeats so that long stalls end in dead-peer
# detection on both sides; everything else at its production default.
SERVER_ARGS = ["--heartbeat-interval", "2", "--heartbeat-timeout", "6"]


@dataclass(frozen=True)
class Config:
    duration: float
    clients: int
    seed: int
    quick: bool
    out: Path
    history: Path
    send_interval: tuple[float, float] = (0.05, 0.3)
    publish_interval: float = 0.1
    direct_interval: float = 0.5
    drain_timeout: float = 40.0
    redis: bool = False
    redis_cluster: bool = False  # a Redis Cluster of three masters instead of one Redis
    nodes: int = 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def sleep(reactor: Any, seconds: float) -> Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


async def wait_for(
    reactor: Any, predicate: Callable[[], bool], timeout: float, step: float = 0.1
) -> bool:
    give_up = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > give_up:
            return False
        await sleep(reactor, step)
    return True


class FaultInjector:
    """Independent random schedules: cuts, stalls, kill-and-restart of a server
    (one node at a time, the others stay up) and, in cluster mode, of Redis."""

    def __init__(
        self,
        reactor: Any,
        rng: random.Random,
        profile: Profile,
        proxy: ChaosProxy,
        servers: list[ServerProcess],
        log: list[dict[str, Any]],
        redis: RedisServer | RedisCluster | None = None,
    ) -> None:
        self.reactor = reactor
        self.rng = rng
        self.profile = profile
        self.proxy = proxy
        self.servers = servers
        self.redis = redis
        self.log = log
        self.running = False
        self.counts: Counter[str] = Counter()
        self._sleeps: set[Deferred[None]] = set()
        self._loops: list[Deferred[None]] = []
        self.errors: list[str] = []

    def note(self, kind: str, **detail: Any) -> None:
        self.counts[kind] += 1
        self.log.append({"t": time.time(), "fault": kind, **detail})

    async def _pause(self, span: tuple[float, float]) -> bool:
        """Sleep a random time in ``span``; False when stopped meanwhile."""
        waiting = sleep(self.reactor, self.rng.uniform(*span))
        self._sleeps.add(waiting)
        try:
            await waiting
        except CancelledError:
            return False
        finally:
            self._sleeps.discard(waiting)
        return self.running

    def start(self) -> None:
        self.running = True
        loops = [self._cuts, self._stalls, self._kills]
        if self.redis is not None:
            loops.append(self._redis_restarts)
        for loop in loops:
            self._loops.append(Deferred.fromCoroutine(loop()))

    async def stop(self) -> None:
        self.running = False
        for waiting in list(self._sleeps):
            waiting.cancel()
        await defer.gatherResults(self._loops, consumeErrors=True)

    async def _cuts(self) -> None:
        profile = self.profile
        while await self._pause(profile.cut_every):
            everything = self.rng.random() < profile.cut_all_chance
            cut = self.proxy.cut(1.0 if everything else self.rng.uniform(0.2, 0.6))
            if cut:
                self.note("cut", connections=cut, all=everything)

    async def _stalls(self) -> None:
        profile = self.profile
        while await self._pause(profile.stall_every):
            long = self.rng.random() < profile.long_stall_chance
            seconds = self.rng.uniform(*(profile.long_stall_for if long else profile.stall_for))
            direction = self.rng.choice(("both", "both", "up", "down"))
            stalled = self.proxy.stall(self.rng.uniform(0.2, 0.6), seconds, direction, long)
            if stalled:
                kind = "long_stall" if long else "stall"
                self.note(kind, connections=stalled, seconds=seconds, direction=direction)

    async def _kills(self) -> None:
        profile = self.profile
        while await self._pause(profile.kill_every):
            server = self.rng.choice(self.servers)
            self.note("kill", incarnation=server.incarnation, node=server.node)
            await server.kill()
            # Not cancellable: the server must come back even if we stop now.
            await sleep(self.reactor, self.rng.uniform(*profile.down_for))
            try:
                await server.start()
            except Exception as error:
                self.errors.append(f"restart failed: {error}")
                return
            self.note("restart", incarnation=server.incarnation, node=server.node)

    async def _redis_restarts(self) -> None:
        profile, redis = self.profile, self.redis
        assert redis is not None
        while await self._pause(profile.redis_every):
            self.note("redis_kill", generation=redis.generation)
            await redis.kill()
            await sleep(self.reactor, self.rng.uniform(*profile.redis_down_for))
            try:
                await redis.start()
            except Exception as error:
                self.errors.append(f"redis restart failed: {error}")
                return
            self.note("redis_restart", generation=redis.generation)


@implementer(ILogObserver)
class LogWatch:
    """Collects this process's Twisted log: errors fail the run, warnings are counted."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("w", encoding="utf-8")
        self.errors: list[str] = []
        self.warnings: Counter[str] = Counter()

    def __call__(self, event: dict[str, Any]) -> None:
        text = formatEvent(event) or ""
        level = event.get("log_level")
        failure = event.get("log_failure")
        if failure is not None:
            text += "\n" + failure.getTraceback()
        self.file.write(f"{time.time():.3f} {getattr(level, 'name', '-')} {text}\n")
        self.file.flush()
        if failure is not None or level in (LogLevel.error, LogLevel.critical):
            self.errors.append(text.splitlines()[0] if text else repr(event))
        elif level is LogLevel.warn:
            self.warnings[str(event.get("log_format", text))[:80]] += 1


def server_log_errors(run_dir: Path) -> list[str]:
    found = []
    for path in sorted(run_dir.glob("server-*.log")):
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        for number, line in enumerate(lines):
            if "Traceback" in line or "Unhandled" in line:
                context = " | ".join(lines[number : number + 12])
                found.append(f"{path.name}:{number + 1}: {context[:600]}")
    return found


def client_rooms(index: int) -> tuple[list[str], list[str]]:
    """Each client is in two of the three rooms; odd clients join the second after connecting."""
    first, second = ROOMS[index % len(ROOMS)], ROOMS[(index + 1) % len(ROOMS)]
    return ([first], [second]) if index % 2 else ([first, second], [])


async def run(reactor: Any, config: Config) -> Report:
    run_dir = config.history
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    watch = LogWatch(run_dir / "harness.log")
    globalLogBeginner.beginLoggingTo([watch], redirectStandardIO=False)
    rng = random.Random(config.seed)
    profile = QUICK if config.quick else FULL
    problems: list[str] = []
    fault_log: list[dict[str, Any]] = []
    env = {
        "CHAOS_PUBLISH_INTERVAL": str(config.publish_interval),
        "CHAOS_DIRECT_INTERVAL": str(config.direct_interval),
        "CHAOS_ROOMS": ",".join(ROOMS),
    }

    redis: RedisServer | RedisCluster | None = None
    server_args = list(SERVER_ARGS)
    stop_file = run_dir / "stop-publishing"
    numbers = iter(range(1, 1 << 30))
    if config.redis:
        if config.redis_cluster:
            ports = [free_port() for _ in range(3)]
            redis = RedisCluster(reactor, ports, [free_port() for _ in range(3)], run_dir)
            await redis.start()
            for seed in redis.seeds:
                server_args += ["--redis-cluster", seed]
        else:
            redis = RedisServer(reactor, free_port(), run_dir)
            await redis.start()
            server_args += ["--redis", redis.url]
        env.update(
            {
                "CHAOS_CLUSTER": "1",
                "CHAOS_STOP_FILE": str(stop_file),
                "CHAOS_SESSIONS_DIR": str(run_dir),
            }
        )
        servers = [
            ServerProcess(
                reactor,
                free_port(),
                run_dir,
                server_args,
                env,
                node=NODE_NAMES[index],
                numbers=lambda: next(numbers),
            )
            for index in range(config.nodes)
        ]
    else:
        servers = [ServerProcess(reactor, free_port(), run_dir, server_args, env)]
    await defer.gatherResults([Deferred.fromCoroutine(s.start()) for s in servers])
    proxy_rng = random.Random(rng.random())
    if config.redis:
        proxy = ChaosProxy(reactor, lambda: [s.port for s in servers if s.up], proxy_rng)
    else:
        proxy = ChaosProxy(reactor, servers[0].port, proxy_rng)
    url = f"ws://127.0.0.1:{proxy.listen()}/ws"
    clients = []
    for index in range(config.clients):
        rooms, late = client_rooms(index)
        # Half the clients speak MessagePack: fan-out frames once per codec.
        options = ClientOptions(
            subprotocol=MSGPACK_SUBPROTOCOL if index % 2 else JSON_SUBPROTOCOL,
            backoff=Backoff(initial=0.5, maximum=4.0),
            heartbeat_timeout=10.0,
            watch_network=False,
        )
        clients.append(
            ChaosClient(
                f"c{index}",
                url,
                rooms,
                late,
                random.Random(rng.random()),
                reactor,
                options,
                config.send_interval,
            )
        )
    await defer.gatherResults([Deferred.fromCoroutine(c.start()) for c in clients])
    started = time.monotonic()
    injector = FaultInjector(
        reactor, random.Random(rng.random()), profile, proxy, servers, fault_log, redis
    )
    injector.start()
    await sleep(reactor, config.duration)
    await injector.stop()
    problems.extend(injector.errors)
    chaos_seconds = time.monotonic() - started

    # Settle: no more faults, no more client sends; every send gets its outcome.
    for client in clients:
        client.stop_sending()
    for server in servers:
        if not server.up:
            problems.append(f"server {server.node or ''} not running after the fault phase")
    if redis is not None and not redis.up:
        problems.append("redis not running after the fault phase")
    settled = await wait_for(
        reactor,
        lambda: all(c.client.state is ClientState.OPEN and not c.unresolved for c in clients),
        config.drain_timeout,
    )
    if not settled:
        waiting = {c.name: len(c.unresolved) for c in clients if c.unresolved}
        states = {c.name: c.client.state.value for c in clients}
        problems.append(
            f"did not settle in {config.drain_timeout}s: unresolved {waiting}, {states}"
        )

    if redis is None:
        final = await quiesce(reactor, clients[0], problems)
        if final is not None:
            answered = final
            converged = await wait_for(
                reactor, lambda: converged_on(clients, answered), CONVERGE_SECONDS
            )
            if not converged:
                problems.append(
                    "clients did not reach the final stream positions"
                    f" within {CONVERGE_SECONDS:.0f} s"
                )
    else:
        # Every node stops publishing; once the appends in flight have settled,
        # Redis holds the final position of every stream.
        stop_file.touch()
        await sleep(reactor, 1.5)
        final = await converge_on_redis(reactor, redis, clients, problems)
    await sleep(reactor, 1.0)  # let the last direct acks reach the server journal

    for client in clients:
        await client.client.close()
    for server in servers:
        await server.stop()
    if redis is not None:
        await redis.stop()
    proxy.close()

    for client in clients:
        with (run_dir / f"client-{client.name}.jsonl").open("w", encoding="utf-8") as out:
            for record in client.records:
                out.write(json.dumps(record, separators=(",", ":")) + "\n")
        problems.extend(client.warnings)
    with (run_dir / "faults.jsonl").open("w", encoding="utf-8") as out:
        for entry in fault_log:
            out.write(json.dumps(entry) + "\n")
    gaps = sum(n for text, n in watch.warnings.items() if text.startswith("reconnecting"))
    if gaps:
        problems.append(f"clients closed {gaps} connection(s) with 4401 stream_gap")
    history = sorted((e for s in servers for e in s.history), key=lambda e: e["inc"])
    run_info = {
        "config": {
            **{k: v for k, v in asdict(config).items() if k not in ("out", "history")},
            "profile": asdict(profile),
            "server_args": server_args,
        },
        "chaos_seconds": round(chaos_seconds, 1),
        "server": {
            "ports": {s.node or "server": s.port for s in servers},
            "history": history,
            "crashes": [c for s in servers for c in s.crashes],
        },
        "clients": {c.name: {"rooms": c.rooms + c.late_rooms} for c in clients},
        "final": final,
        "faults": {
            "cuts": proxy.cuts,
            "cut_events": injector.counts["cut"],
            "stalls": proxy.stalls,
            "stall_events": injector.counts["stall"] + injector.counts["long_stall"],
            "long_stalls": injector.counts["long_stall"],
            "kills": sum(s.kills for s in servers),
            "redis_restarts": 0 if redis is None else redis.restarts,
        },
        "reconnect_times": {c.name: c.reconnect_times for c in clients},
        "server_close_codes": dict(sum((s.close_codes for s in servers), Counter[str]())),
        "close_codes": dict(sum((c.close_codes for c in clients), Counter[str]())),
        "problems": problems,
        "server_log_errors": server_log_errors(run_dir),
        "client_log_errors": watch.errors,
        "client_warnings": dict(watch.warnings),
    }
    if redis is not None:
        run_info["cluster"] = {
            "nodes": [s.node for s in servers],
            "redis": redis.history,
            "redis_crashes": redis.crashes,
            "routed": {str(port): n for port, n in sorted(proxy.routed.items())},
        }
    (run_dir / "run.json").write_text(json.dumps(run_info, indent=1), encoding="utf-8")
    watch.file.close()
    return check_run(run_dir)


async def converge_on_redis(
    reactor: Any,
    redis: RedisServer | RedisCluster,
    clients: list[ChaosClient],
    problems: list[str],
) -> dict[str, Any] | None:
    """Cluster mode: the final positions are what Redis holds; every client must reach them."""
    streams = [BROADCAST_KEY, *("room:" + room for room in ROOMS)]
    final: dict[str, Any] | None = None

    def read() -> dict[str, Any]:
        sessions = [c.client.session for c in clients if c.client.session]
        positions = redis.positions(streams + ["direct:" + s for s in sessions])
        return {
            "inc": None,
            "streams": {key: positions[key] for key in streams},
            "sessions": {s: positions["direct:" + s] for s in sessions},
        }

    def reached() -> bool:
        nonlocal final
        try:
            positions = read()
        except (OSError, RuntimeError) as error:
            problems.append(f"cannot read the final positions from redis: {error}")
            return True
        final = positions
        return converged_on(clients, positions)

    # Generous: after a late Redis restart the nodes notice (canary), heal and
    # move their clients on, which takes longer on a loaded machine.
    if not await wait_for(reactor, reached, CONVERGE_SECONDS):
        problems.append(
            f"clients did not reach the final stream positions within {CONVERGE_SECONDS:.0f} s"
        )
    return final


async def quiesce(reactor: Any, client: ChaosClient, problems: list[str]) -> dict[str, Any] | None:
    for _ in range(3):
        try:
            result: dict[str, Any] = await client.client.call("chaos.quiesce", timeout=10)
            return result
        except Exception as error:
            problems.append(f"quiesce failed: {error!r}")
            await sleep(reactor, 1.0)
    return None


def converged_on(clients: list[ChaosClient], final: dict[str, Any]) -> bool:
    for client in clients:
        wanted = {
            stream: final["streams"][stream]
            for stream in ("broadcast", *("room:" + r for r in client.rooms + client.late_rooms))
        }
        session = client.client.session
        if session not in final["sessions"]:
            return False
        wanted["direct"] = final["sessions"][session]
        for stream, target in wanted.items():
            if client.position(stream) != (target["offset"], target["epoch"]):
                return False
    return True


# ---------------------------------------------------------------- output


def table(report: Report, run_info: dict[str, Any], config: Config) -> str:
    counts = report.counts
    faults = run_info["faults"]
    reconnect = report.reconnect

    def seconds(value: Any) -> str:
        return "-" if value is None else f"{value:.2f} s"

    sent = f"{counts['client_sent']} ({counts['client_acked']} acked"
    sent += f", {counts['client_expired']} expired)"
    handled = f"{counts['client_handled_unique']}"
    if "cluster" in run_info:
        handled += f" (+{counts['redis_window_duplicates']} Redis-window duplicates)"
    else:
        handled += f" (+{counts['kill_window_duplicates']} kill-window duplicates)"
    stalls = f"{faults['stalls']} ({faults['stall_events']} events,"
    stalls += f" {faults['long_stalls']} beyond the heartbeat timeout)"
    times = f"{seconds(reconnect['p50'])} / {seconds(reconnect['p99'])}"
    times += f" (n={reconnect['count']}, max {seconds(reconnect['max'])})"
    verdict = "PASS" if report.ok else f"FAIL ({sum(report.violation_kinds.values())} violations)"
    rows = [
        ("result", verdict),
        (
            "faults for",
            f"{run_info['chaos_seconds']} s, {config.clients} clients, seed {config.seed}",
        ),
        ("connections cut", f"{faults['cuts']} ({faults['cut_events']} cut events)"),
        ("connections stalled", stalls),
        ("server SIGKILLs", str(faults["kills"])),
        *(
            [
                ("nodes", str(len(run_info["cluster"]["nodes"]))),
                ("redis restarts", str(faults["redis_restarts"])),
                (
                    "publishes failed",
                    f"{counts['publish_failed']} (Redis down: not published, not lost)",
                ),
                ("stored, seen only delivered", str(counts["stored_unjournaled"])),
            ]
            if "cluster" in run_info
            else []
        ),
        ("client msgs sent", sent),
        ("client msgs handled", handled),
        ("server msgs published", f"{counts['published']} room/broadcast"),
        ("server direct acked sends", str(counts["direct_sent"])),
        *([("direct sends by side", cross_node(counts))] if "cluster" in run_info else []),
        ("server msgs delivered", str(counts["delivered"])),
        ("lost", str(counts["lost"])),
        ("duplicated", str(counts["duplicated"])),
        ("reordered", str(counts["reordered"])),
        ("unrecovered notices", f"{counts['unrecovered']} ({counts['unrecovered_messages']} msgs)"),
        ("reconnect p50 / p99", times),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"| {'metric'.ljust(width)} | value", f"|-{'-' * width}-|------"]
    lines += [f"| {name.ljust(width)} | {value}" for name, value in rows]
    if report.violations:
        lines.append("")
        lines.append("violations:")
        lines += [f"  {v}" for v in report.violations]
    return "\n".join(lines)


def cross_node(counts: Any) -> str:
    """Acked direct sends from a node the session was not attached to, and their outcomes."""
    sides = [f"{counts[f'direct_sends_{side}']} {side}" for side in ("local", "detached", "remote")]
    parts = [", ".join(sides)]
    for side in ("detached", "remote"):
        prefix = f"direct_ack_failed_{side}_"
        causes = sorted(
            (key[len(prefix) :], n)
            for key, n in counts.items()
            if key.startswith(prefix) and key != prefix + "delivered"
        )
        text = f"{side}: acked {counts[f'direct_acked_{side}']}"
        text += f", failed {counts[f'direct_ack_failed_{side}']}"
        if causes:
            text += " (" + ", ".join(f"{cause} {n}" for cause, n in causes)
            text += f"; {counts[prefix + 'delivered']} delivered all the same)"
        parts.append(text)
    return "; ".join(parts)


def parse(argv: list[str]) -> Config:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds of faults (default 180, 22 with --quick)",
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--seed", type=int, default=None, help="fault and traffic schedule (default: random)"
    )
    parser.add_argument("--quick", action="store_true", help="CI size: ~22 s, faults more often")
    parser.add_argument(
        "--out", type=Path, default=CHAOS / "results" / "latest.json", help="JSON results"
    )
    parser.add_argument(
        "--history",
        type=Path,
        default=None,
        help="where to keep the full history (default: next to --out)",
    )
    parser.add_argument(
        "--redis",
        action="store_true",
        help="cluster mode: nodes sharing a redis-server, node kills and Redis restarts",
    )
    parser.add_argument(
        "--redis-cluster",
        action="store_true",
        help="cluster mode on a Redis Cluster of three masters, killed and restarted in turn",
    )
    parser.add_argument(
        "--nodes", type=int, default=2, help="nodes in cluster mode (default 2, at most 26)"
    )
    args = parser.parse_args(argv)
    if args.clients < 1:
        parser.error("--clients must be at least 1")
    if not 1 <= args.nodes <= len(NODE_NAMES):
        parser.error(f"--nodes must be between 1 and {len(NODE_NAMES)}")
    if args.redis_cluster:
        args.redis = True
    if args.redis:
        try:
            redis_binary()
        except RuntimeError as error:
            parser.error(str(error))
    duration = args.duration if args.duration is not None else (22.0 if args.quick else 180.0)
    # --quick (CI): a run that has not settled 25 s after the faults never will.
    drain = 25.0 if args.quick else 40.0
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    history = args.history if args.history is not None else args.out.parent / "history"
    return Config(
        duration,
        args.clients,
        seed,
        args.quick,
        args.out,
        history,
        redis=args.redis,
        redis_cluster=args.redis_cluster,
        nodes=args.nodes,
        drain_timeout=drain,
    )


async def main(reactor: Any, argv: list[str]) -> None:
    config = parse(argv)
    mode = f", cluster of {config.nodes} nodes + redis" if config.redis else ""
    mode += " cluster (3 masters)" if config.redis_cluster else ""
    print(
        f"chaos: {config.duration:.0f} s, {config.clients} clients, seed {config.seed}{mode}",
        flush=True,
    )
    report = await run(reactor, config)
    run_info = json.loads((config.history / "run.json").read_text(encoding="utf-8"))
    results = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seed": config.seed,
        "duration": config.duration,
        "clients": config.clients,
        "quick": config.quick,
        "redis": config.redis,
        "nodes": config.nodes if config.redis else 1,
        "chaos_seconds": run_info["chaos_seconds"],
        "faults": run_info["faults"],
        "history": str(config.history),
        **report.to_json(),
    }
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(table(report, run_info, config))
    print(f"JSON: {config.out}   history: {config.history}")
    if not report.ok:
        raise SystemExit(1)


def cli(argv: list[str] | None = None) -> None:
    arguments = sys.argv[1:] if argv is None else argv
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor, arguments)))


if __name__ == "__main__":
    cli()
