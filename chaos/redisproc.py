"""The Redis of a cluster-mode chaos run: a ``redis-server`` without persistence.

The harness SIGKILLs and restarts it (same port, empty data: every stream,
session and dedup record is gone) and reads the final stream positions from
it directly, as the one source of truth (``<prefix>s:<key>`` hashes, see
docs/cluster.md).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet.task import deferLater

from chaos.server import _Process


def redis_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise RuntimeError(
            "redis-server is not installed: chaos --redis needs it (apt-get install redis-server)"
        )
    return path


def _encode(*args: str) -> bytes:
    payload = f"*{len(args)}\r\n".encode()
    for arg in args:
        data = arg.encode()
        payload += b"$%d\r\n%s\r\n" % (len(data), data)
    return payload


class _Reply:
    """A minimal RESP reader for the few replies the harness needs."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def _exactly(self, size: int) -> bytes:
        while len(self.buffer) < size + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buffer += chunk
        data, self.buffer = self.buffer[:size], self.buffer[size + 2 :]
        return data

    def read(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self._exactly(size).decode()
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self.read() for _ in range(size)]
        raise RuntimeError(f"unexpected reply {line!r}")


def redis_call(port: int, *commands: tuple[str, ...]) -> list[Any]:
    """Send commands on one connection (blocking, harness only); their replies."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"".join(_encode(*command) for command in commands))
        reader = _Reply(sock)
        return [reader.read() for _ in commands]


def _ping(port: int) -> bool:
    try:
        return redis_call(port, ("PING",)) == ["PONG"]
    except (OSError, RuntimeError):
        return False


class RedisServer:
    """One redis-server on a fixed port; ``kill()`` and ``start()`` again."""

    def __init__(
        self, reactor: Any, port: int, run_dir: Path, extra: tuple[str, ...] = (), name: str = ""
    ) -> None:
        self.reactor = reactor
        self.port = port
        self.extra = extra
        self.name = name
        self.run_dir = run_dir
        self.binary = redis_binary()
        self.dir = tempfile.mkdtemp(prefix="chaos-redis-")
        self.process: _Process | None = None
        self.transport: Any = None
        self.generation = 0
        self.history: list[dict[str, Any]] = []  # one entry per generation
        self.crashes: list[str] = []
        self.restarts = 0
        self.up = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self, deadline: float = 10.0) -> None:
        self.generation += 1
        entry: dict[str, Any] = {"gen": self.generation, "spawned": time.time()}
        self.history.append(entry)
        argv = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.dir,
            *self.extra,
        ]
        log = open(self.run_dir / f"redis{self.name}-{self.generation}.log", "wb")  # noqa: SIM115
        process = _Process(log)
        self.transport = self.reactor.spawnProcess(process, self.binary, argv, env=dict(os.environ))
        self.process = process
        process.ended.addCallback(self._ended, entry, process)
        give_up = time.monotonic() + deadline
        while not _ping(self.port):
            if process.ended.called or time.monotonic() > give_up:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            await deferLater(self.reactor, 0.02, lambda: None)
        entry["up"] = time.time()
        self.up = True

    def _ended(self, _: None, entry: dict[str, Any], process: _Process) -> None:
        entry["ended"] = time.time()
        entry["status"] = process.status
        if self.process is process:
            self.up = False
        if not entry.get("killed") and not entry.get("stopping"):
            self.crashes.append(f"redis generation {entry['gen']} exited: {process.status}")

    async def kill(self) -> None:
        """SIGKILL: everything in Redis (no persistence) is gone."""
        process = self.process
        if process is None or process.ended.called:
            return
        self.history[-1]["killed"] = time.time()
        self.up = False
        self.restarts += 1
        self.transport.signalProcess("KILL")
        await process.ended

    async def stop(self) -> None:
        process = self.process
        if process is not None and not process.ended.called:
            self.history[-1]["stopping"] = time.time()
            self.transport.signalProcess("KILL")
            await process.ended
        shutil.rmtree(self.dir, ignore_errors=True)

    def positions(self, keys: list[str], prefix: str = "warpsocket:") -> dict[str, Any]:
        """``{key: {"offset", "epoch"}}`` as Redis holds them (epoch None: no stream)."""
        replies = redis_call(
            self.port, *(("HMGET", f"{prefix}s:{key}", "epoch", "last") for key in keys)
        )
        return {
            key: {"epoch": epoch, "offset": int(last or 0)}
            for key, (epoch, last) in zip(keys, replies, strict=True)
        }


CLUSTER_ARGS = ("--cluster-enabled", "yes", "--cluster-node-timeout", "1000", "--cluster-port")


class RedisCluster:
    """``--redis-cluster``: three masters (no replicas, no persistence) of a Redis Cluster.

    The surface of ``RedisServer`` for the run: each ``kill()`` SIGKILLs the
    next master in turn (its shard's data is gone; the cluster is down until it
    is back) and ``start()`` brings it back with its slots (``nodes.conf``).
    Each kill and restart is a generation of ``history``, as for one Redis.
    """

    def __init__(self, reactor: Any, ports: list[int], bus_ports: list[int], run_dir: Path):
        self.reactor = reactor
        self.masters = [
            RedisServer(
                reactor,
                port,
                run_dir,
                (*CLUSTER_ARGS, str(bus)),
                name=f"-m{index}",
            )
            for index, (port, bus) in enumerate(zip(ports, bus_ports, strict=True))
        ]
        self.bus_ports = bus_ports
        self.generation = 0
        self.history: list[dict[str, Any]] = []
        self.restarts = 0
        self.up = False
        self._killed: RedisServer | None = None

    @property
    def seeds(self) -> list[str]:
        return [f"127.0.0.1:{m.port}" for m in self.masters]

    @property
    def crashes(self) -> list[str]:
        return [crash for m in self.masters for crash in m.crashes]

    async def start(self, deadline: float = 20.0) -> None:
        self.generation += 1
        entry: dict[str, Any] = {"gen": self.generation, "spawned": time.time()}
        self.history.append(entry)
        if self._killed is not None:
            await self._killed.start()
            self._killed = None
        else:
            for master in self.masters:
                await master.start()
            step = 16384 // len(self.masters)
            first = self.masters[0]
            for index, master in enumerate(self.masters):
                last = 16383 if index == len(self.masters) - 1 else (index + 1) * step - 1
                redis_call(master.port, ("CLUSTER", "ADDSLOTSRANGE", str(index * step), str(last)))
                if index:
                    meet = ("CLUSTER", "MEET", "127.0.0.1", str(first.port), str(self.bus_ports[0]))
                    redis_call(master.port, meet)
        give_up = time.monotonic() + deadline
        while not self._ok():
            if time.monotonic() > give_up:
                raise RuntimeError("redis cluster did not become ready")
            await deferLater(self.reactor, 0.05, lambda: None)
        entry["up"] = time.time()
        self.up = True

    def _ok(self) -> bool:
        try:
            return all(
                "cluster_state:ok" in redis_call(m.port, ("CLUSTER", "INFO"))[0]
                for m in self.masters
            )
        except (OSError, RuntimeError):
            return False

    async def kill(self) -> None:
        master = self.masters[(self.generation - 1) % len(self.masters)]
        self.history[-1]["killed"] = time.time()
        self.history[-1]["master"] = master.port
        self.up = False
        self.restarts += 1
        self._killed = master
        await master.kill()

    async def stop(self) -> None:
        for master in self.masters:
            await master.stop()

    def positions(self, keys: list[str], prefix: str = "warpsocket:") -> dict[str, Any]:
        """As ``RedisServer.positions``, each key asked of the master of its slot."""
        from warpsocket.backends.redis.slots import SlotMap, key_slot, parse_cluster_slots

        slots: SlotMap = parse_cluster_slots(
            redis_call(self.masters[0].port, ("CLUSTER", "SLOTS"))[0], "127.0.0.1"
        )
        found = {}
        for key in keys:
            name = f"{prefix}s:{{{key}}}"
            address = slots.master_of(key_slot(name))
            assert address is not None
            epoch, last = redis_call(address[1], ("HMGET", name, "epoch", "last"))[0]
            found[key] = {"epoch": epoch, "offset": int(last or 0)}
        return found
