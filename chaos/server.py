"""The server under test, as a ``twistd`` subprocess that the harness kills and restarts."""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.client import Agent, readBody

REPO = Path(__file__).resolve().parent.parent
TWISTD = "from twisted.scripts.twistd import run; run()"


class _Process(protocol.ProcessProtocol):
    def __init__(self, log: IO[bytes]) -> None:
        self.log = log
        self.ended: Deferred[None] = Deferred()
        self.status: str = "running"

    def outReceived(self, data: bytes) -> None:
        self.log.write(data)
        self.log.flush()

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        value: Any = reason.value
        if isinstance(value, ProcessDone):
            self.status = "exit 0"
        else:
            self.status = f"exit {value.exitCode} signal {value.signal}"
        self.log.close()
        self.ended.callback(None)


class ServerProcess:
    """One server port; incarnation N runs with journal ``journal-N.jsonl``."""

    def __init__(
        self,
        reactor: Any,
        port: int,
        run_dir: Path,
        args: list[str],
        env: dict[str, str],
        *,
        node: str | None = None,
        numbers: Callable[[], int] | None = None,
    ) -> None:
        self.reactor = reactor
        self.port = port
        self.run_dir = run_dir
        self.args = args
        self.env = env
        # Cluster mode: a stable node name, and incarnation numbers shared by
        # all nodes (journal-N, server-N.log and message ids stay unique).
        self.node = node
        self._numbers = numbers
        self.incarnation = 0
        self.process: _Process | None = None
        self.transport: Any = None
        self.history: list[dict[str, Any]] = []  # one entry per incarnation
        self.crashes: list[str] = []
        self.kills = 0
        self.up = False
        self.close_codes: Counter[str] = Counter()  # from /metrics, summed over incarnations

    def journal(self, incarnation: int) -> Path:
        return self.run_dir / f"journal-{incarnation}.jsonl"

    async def start(self, deadline: float = 30.0) -> None:
        self.incarnation = self._numbers() if self._numbers else self.incarnation + 1
        number = self.incarnation
        env = dict(os.environ)
        env.update(self.env)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
        env["CHAOS_JOURNAL"] = str(self.journal(number))
        env["CHAOS_INCARNATION"] = str(number)
        if self.node is not None:
            env["CHAOS_NODE"] = self.node
        argv = [
            sys.executable,
            "-c",
            TWISTD,
            "-n",
            "--pidfile=",
            "warpsocket",
            "--endpoint",
            f"tcp:{self.port}:interface=127.0.0.1",
            "--open-rooms",
            "--node",
            self.node or f"inc{number}",
            "--app",
            "chaos.app:setup",
            *self.args,
        ]
        log = open(self.run_dir / f"server-{number}.log", "wb")  # noqa: SIM115
        process = _Process(log)
        entry: dict[str, Any] = {"inc": number, "node": self.node, "spawned": time.time()}
        self.history.append(entry)
        self.transport = self.reactor.spawnProcess(
            process, sys.executable, argv, env=env, path=str(REPO)
        )
        self.process = process
        process.ended.addCallback(self._ended, entry, process)
        await self._until_healthy(process, deadline)
        entry["healthy"] = time.time()
        self.up = True

    def _ended(self, _: None, entry: dict[str, Any], process: _Process) -> None:
        entry["ended"] = time.time()
        entry["status"] = process.status
        if self.process is process:
            self.up = False
        if not entry.get("killed") and not entry.get("stopping"):
            self.crashes.append(f"incarnation {entry['inc']} exited unexpectedly: {process.status}")

    async def _until_healthy(self, process: _Process, deadline: float) -> None:
        agent = Agent(self.reactor)
        url = f"http://127.0.0.1:{self.port}/healthz".encode()
        give_up = time.monotonic() + deadline
        while True:
            if process.ended.called:
                raise RuntimeError(f"server incarnation {self.incarnation} exited at startup")
            try:
                response = await agent.request(b"GET", url)
                await readBody(response)
                if response.code == 200:
                    return
            except Exception:  # refused while starting
                pass
            if time.monotonic() > give_up:
                raise RuntimeError("server did not become healthy")
            await deferLater(self.reactor, 0.05, lambda: None)

    async def scrape(self) -> None:
        """Add this incarnation's disconnect counters (close code as the server saw it)."""
        try:
            response = await Agent(self.reactor).request(
                b"GET", f"http://127.0.0.1:{self.port}/metrics".encode()
            )
            body = (await readBody(response)).decode("utf-8", "replace")
        except Exception:
            return
        for line in body.splitlines():
            if line.startswith("warpsocket_disconnects_total{"):
                code = line.split('code="', 1)[1].split('"', 1)[0]
                self.close_codes[code] += int(float(line.rsplit(" ", 1)[1]))

    async def kill(self) -> None:
        """SIGKILL: no goodbye, no flush beyond what the journal already flushed."""
        process = self.process
        if process is None or process.ended.called:
            return
        await self.scrape()
        entry = self.history[-1]
        entry["killed"] = time.time()
        self.up = False
        self.kills += 1
        self.transport.signalProcess("KILL")
        await process.ended
        # The process may handle a message between the decision and the
        # signal landing (a loaded machine): it is dead only from here on.
        entry["died"] = time.time()

    async def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (graceful), SIGKILL if it takes longer than ``timeout``."""
        process = self.process
        if process is None or process.ended.called:
            return
        await self.scrape()
        entry = self.history[-1]
        entry["stopping"] = time.time()
        self.transport.signalProcess("TERM")
        timer = self.reactor.callLater(timeout, self._force, process)
        await process.ended
        if timer.active():
            timer.cancel()

    def _force(self, process: _Process) -> None:
        if not process.ended.called:
            self.transport.signalProcess("KILL")
