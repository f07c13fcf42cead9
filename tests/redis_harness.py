"""Real redis-server and redis-sentinel processes on free ports, for the cluster tests.

Nothing here mocks Redis: tests start the real servers (installed by
``.ci/run`` on CI), kill and restart them, and fail, not skip, when the
binaries are missing.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as handle:
            return int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# Ports handed out by this process: a free port is not bound until its Redis
# starts, and a cluster picks six (three masters, three bus ports) before
# starting any of them.
_given: set[int] = set()


def free_port() -> int:
    """A free port for a Redis that may be restarted on it, with its cluster
    bus port (+10000) free too. Both lie below the kernel's ephemeral range:
    a port from that range can be taken, while its Redis is down, as the
    source port of some other test's outgoing connection, and the restart
    would fail to bind. Never one this process has handed out already."""
    high = _ephemeral_low() - 10_000
    for _ in range(200):
        port = random.randrange(10_000, high)
        if _given & {port, port + 10_000, port - 10_000}:
            continue
        if _bindable(port) and _bindable(port + 10_000):
            _given.add(port)
            return port
    raise RuntimeError("no free port pair below the ephemeral range")


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"{name} is not installed: the cluster tests need it (apt-get install redis-server "
            "redis-sentinel; .ci/run does this)"
        )
    return path


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def redis_command(port: int, *args: str) -> bytes:
    """Send one command over a plain socket and return the raw reply (tests only)."""
    payload = f"*{len(args)}\r\n".encode()
    for arg in args:
        data = arg.encode()
        payload += b"$%d\r\n%s\r\n" % (len(data), data)
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(payload)
        return sock.recv(65536)


class RedisProcess:
    """One redis-server (or sentinel) on a fixed free port; stop, kill and restart it."""

    def __init__(
        self,
        port: int | None = None,
        *,
        extra: list[str] | None = None,
        sentinel_config: str | None = None,
    ) -> None:
        self.port = port or free_port()
        # Until the first start succeeds, ports we chose may be chosen anew:
        # another test process can take a free port before this Redis binds it.
        self._may_move = port is None
        self.extra = extra or []
        self.sentinel_config = sentinel_config
        self.dir = tempfile.mkdtemp(prefix="warpsocket-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisProcess:
        for _ in range(2 if self._may_move else 0):
            try:
                return self._start()
            except RuntimeError:
                self.kill()
                self.port = free_port()
                if "--cluster-port" in self.extra:
                    at = self.extra.index("--cluster-port") + 1
                    self.extra[at] = str(free_port())
        return self._start()

    def _start(self) -> RedisProcess:
        if self.sentinel_config is not None:
            config = os.path.join(self.dir, "sentinel.conf")
            with open(config, "w", encoding="ascii") as handle:
                handle.write(f"port {self.port}\nbind 127.0.0.1\n{self.sentinel_config}")
            command = [_binary("redis-sentinel"), config]
        else:
            command = [
                _binary("redis-server"),
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
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while not _ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis on port {self.port} did not start")
            time.sleep(0.02)
        self._may_move = False
        return self

    def kill(self) -> None:
        """SIGKILL: the abrupt death of the server, losing everything in memory."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def command(self, *args: str) -> bytes:
        return redis_command(self.port, *args)

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class SentinelSetup:
    """A master, one replica and one sentinel watching them (quorum 1)."""

    def __init__(self, service: str = "mymaster") -> None:
        self.service = service
        self.master = RedisProcess().start()
        self.replica = RedisProcess(
            extra=["--replicaof", "127.0.0.1", str(self.master_port())]
        ).start()
        config = (
            f"sentinel monitor {service} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {service} 1000\n"
            f"sentinel failover-timeout {service} 5000\n"
            f"sentinel parallel-syncs {service} 1\n"
        )
        self.sentinel = RedisProcess(sentinel_config=config).start()

    def master_port(self) -> int:
        return self.master.port

    def wait_for_replica_sync(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while b"master_link_status:up" not in self.replica.command("INFO", "replication"):
            if time.monotonic() > deadline:
                raise RuntimeError("replica did not sync")
            time.sleep(0.05)

    def current_master_port(self) -> int:
        reply = self.sentinel.command("SENTINEL", "get-master-addr-by-name", self.service)
        return int(reply.split(b"\r\n")[4])

    def cleanup(self) -> None:
        for process in (self.sentinel, self.replica, self.master):
            process.cleanup()


def require_redis_7() -> None:
    """Redis Cluster tests need Redis 7 (sharded pub/sub, ``--cluster-port``): fail, never skip."""
    version = subprocess.run(
        [_binary("redis-server"), "--version"], capture_output=True, text=True, check=False
    ).stdout
    found = version.split("v=", 1)[1].split()[0] if "v=" in version else "?"
    if not found.split(".")[0].isdigit() or int(found.split(".")[0]) < 7:
        raise RuntimeError(f"the Redis Cluster tests need redis-server 7 or later, found {found}")


class RedisClusterSetup:
    """A Redis Cluster of three masters (no replicas) on free ports, slots split evenly.

    Made with plain commands (``CLUSTER ADDSLOTSRANGE``, ``CLUSTER MEET``), no
    redis-cli. The same surface as ``RedisProcess`` where the tests need it:
    ``kill``/``start``/``restart`` act on every master (a master restarted
    keeps its id and slots from its ``nodes.conf``, and loses its data), and
    ``command`` goes to the master of the key's slot, or to every master for
    server-wide commands (``FLUSHALL``, ``CLIENT PAUSE``...).
    """

    SERVER_WIDE = {"FLUSHALL", "FLUSHDB", "CLIENT", "CONFIG", "DEBUG"}

    def __init__(self, masters: int = 3) -> None:
        require_redis_7()
        self.masters = [
            RedisProcess(
                extra=[
                    *("--cluster-enabled", "yes", "--cluster-node-timeout", "1000"),
                    # The bus port, else port + 10000 (past 65535 for a high free port).
                    *("--cluster-port", str(free_port())),
                ]
            )
            for _ in range(masters)
        ]
        self.replicas: list[RedisProcess] = []
        try:
            for master in self.masters:
                master.start()
            step = 16384 // masters
            for n, master in enumerate(self.masters):
                last = 16383 if n == masters - 1 else (n + 1) * step - 1
                master.command("CLUSTER", "ADDSLOTSRANGE", str(n * step), str(last))
            first = self.masters[0]
            bus = first.extra[first.extra.index("--cluster-port") + 1]
            for master in self.masters[1:]:
                master.command("CLUSTER", "MEET", "127.0.0.1", str(first.port), bus)
            self.wait_until_ok()
        except BaseException:
            self.cleanup()
            raise

    @property
    def seeds(self) -> tuple[str, ...]:
        return tuple(f"127.0.0.1:{m.port}" for m in self.masters)

    def wait_until_ok(self, timeout: float = 20.0) -> None:
        """Every master says ``cluster_state:ok`` and knows every other one."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                ready = all(
                    b"cluster_state:ok" in m.command("CLUSTER", "INFO")
                    and b"cluster_known_nodes:%d" % len(self.masters)
                    in m.command("CLUSTER", "INFO")
                    for m in self.masters
                )
            except OSError:
                ready = False
            if ready:
                return
            if time.monotonic() > deadline:
                raise RuntimeError("redis cluster did not become ready")
            time.sleep(0.05)

    def add_replica(self, master: RedisProcess, timeout: float = 20.0) -> RedisProcess:
        """A replica of ``master`` in the cluster, once its link is up (for failovers)."""
        replica = RedisProcess(
            extra=[
                *("--cluster-enabled", "yes", "--cluster-node-timeout", "1000"),
                *("--cluster-port", str(free_port())),
            ]
        ).start()
        self.replicas.append(replica)
        first = self.masters[0]
        bus = first.extra[first.extra.index("--cluster-port") + 1]
        replica.command("CLUSTER", "MEET", "127.0.0.1", str(first.port), bus)
        master_id = master.command("CLUSTER", "MYID").split(b"\r\n")[1].decode()
        deadline = time.monotonic() + timeout
        while not replica.command("CLUSTER", "REPLICATE", master_id).startswith(b"+OK"):
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not learn its master")
            time.sleep(0.05)
        while b"master_link_status:up" not in replica.command("INFO", "replication"):
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not sync")
            time.sleep(0.05)
        return replica

    def owner(self, key: str) -> RedisProcess:
        from warpsocket.backends.redis.slots import key_slot

        slot = key_slot(key)
        step = 16384 // len(self.masters)
        return self.masters[min(slot // step, len(self.masters) - 1)]

    def command(self, *args: str) -> bytes:
        if args[0].upper() in self.SERVER_WIDE:
            replies = [m.command(*args) for m in self.masters]
            return replies[0]
        return self.owner(args[1]).command(*args)

    def kill(self) -> None:
        for master in self.masters:
            master.kill()

    def start(self) -> RedisClusterSetup:
        for master in self.masters:
            if master.process is None:
                master.start()
        self.wait_until_ok()
        return self

    def restart(self) -> None:
        self.kill()
        self.start()

    def cleanup(self) -> None:
        for process in (*self.masters, *self.replicas):
            process.cleanup()
