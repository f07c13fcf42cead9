#!/usr/bin/env python3
"""A large chunked transfer through bounded memory, on both ends.

    python bench/transfer.py [--size 1GiB] [--mode upload|relay] [--codec json|msgpack]
                             [--chunk-size 262144] [--window 8] [--check]

Runs the server (a hub with ``TransferServer``) and the client (a
``WarpSocketClient``) in two processes on 127.0.0.1, so that each one's peak
RSS is its own. The client sends ``--size`` bytes generated on the fly (a
seekable pattern, nothing of that size in memory or on disk); ``upload``
gives them to the server application's sink (which hashes and drops them),
``relay`` sends them to the client's own session through the server's disk
spool and the client downloads them again. Each process resets its peak RSS
(``/proc/self/clear_refs``) once connected and reports the growth of
``VmHWM`` over its RSS at that moment. Prints one JSON object; ``--check``
exits 1 when a side grew by more than ``BOUND_WINDOWS`` windows + slack.

tests/test_transfer_memory.py runs this with 64 MiB; docs/performance.md has
the 1 GiB numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# What a side may grow by: this many windows of raw chunk bytes, plus a fixed
# slack for the interpreter's own arenas (encodings of a chunk: bytes, base64
# text, the frame; autobahn's send buffer; malloc keeping freed blocks).
BOUND_WINDOWS = 8
SLACK = 16 * 1024 * 1024
_SEGMENT = 1 << 20


def parse_size(text: str) -> int:
    units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "": 1}
    lowered = text.strip().lower()
    for unit, factor in units.items():
        if unit and lowered.endswith(unit):
            return int(float(lowered[: -len(unit)]) * factor)
    return int(lowered)


def memory() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in bytes."""
    values: dict[str, int] = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values


def reset_peak() -> int:
    """Reset VmHWM to the current RSS (Linux >= 4.0); returns that RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass
    return memory()["VmRSS"]


class PatternFile(io.RawIOBase):
    """``size`` bytes of a deterministic pattern, seekable, generated on read:
    a 1 MiB random segment, rotated differently in every MiB."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.pos = 0
        segment = bytearray()
        block = b"warpsocket"
        while len(segment) < _SEGMENT:
            block = hashlib.sha256(block).digest()
            segment += block
        self.segment = bytes(segment[:_SEGMENT]) * 2

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = base + offset
        return self.pos

    def read(self, n: int = -1) -> bytes:
        end = self.size if n < 0 else min(self.size, self.pos + n)
        out = bytearray()
        while self.pos < end:
            index, within = divmod(self.pos, _SEGMENT)
            start = (within + index * 7919) % _SEGMENT
            take = min(end - self.pos, _SEGMENT - within)
            out += self.segment[start : start + take]
            self.pos += take
        return bytes(out)


def pattern_sha256(size: int) -> str:
    source, hasher = PatternFile(size), hashlib.sha256()
    while block := source.read(4 * _SEGMENT):
        hasher.update(block)
    return hasher.hexdigest()


# ---------------------------------------------------------------- the server


def serve(args: argparse.Namespace) -> None:
    from twisted.internet import reactor

    from warpsocket.server.hub import Hub, HubOptions
    from warpsocket.server.service import WarpSocketService
    from warpsocket.transfer.server import TransferOptions, TransferServer

    spool = tempfile.mkdtemp(prefix="bench-spool-")
    hub = Hub(HubOptions(open_rooms=True))
    transfers = TransferServer(
        hub,
        TransferOptions(
            chunk_size=args.chunk_size,
            window=args.window,
            max_size=2**40,
            spool_dir=spool,
            spool_max_bytes=2**41,
            can_relay=lambda ctx, target: True,
        ),
    )
    report: dict[str, Any] = {}

    class HashingSink:
        def __init__(self) -> None:
            self.hasher = hashlib.sha256()

        def write(self, data: bytes) -> None:
            self.hasher.update(data)

    @transfers.on_transfer
    def take(ctx: Any, incoming: Any) -> HashingSink:
        sink = HashingSink()
        incoming.done.addCallback(lambda digest: report.update(sha256=digest))
        return sink

    @hub.on("baseline")
    def baseline(ctx: Any, data: Any) -> int:
        report["rss_start"] = reset_peak()
        return int(report["rss_start"])

    @hub.on("report")
    def finish(ctx: Any, data: Any) -> dict[str, Any]:
        peak = memory()["VmHWM"]
        report["rss_peak"] = peak
        report["growth"] = peak - report["rss_start"]
        reactor.callLater(0.1, reactor.stop)
        return report

    service = WarpSocketService(hub, ["tcp:0:interface=127.0.0.1"])
    service.startService()
    print(service.ports[0].getHost().port, flush=True)
    reactor.run()
    for name in os.listdir(spool):
        os.unlink(os.path.join(spool, name))
    os.rmdir(spool)


# ---------------------------------------------------------------- the client


def send(args: argparse.Namespace, port: int) -> None:
    from twisted.internet import defer, reactor

    from warpsocket.client.client import WarpSocketClient
    from warpsocket.client.options import ClientOptions
    from warpsocket.core.client import ClientCoreOptions

    subprotocol = "warpsocket.v1." + args.codec
    client = WarpSocketClient(
        f"ws://127.0.0.1:{port}/ws",
        ClientOptions(subprotocol=subprotocol, core=ClientCoreOptions(extensions=("chunks",))),
    )
    result: dict[str, Any] = {}

    class HashingSink:
        def __init__(self) -> None:
            self.hasher = hashlib.sha256()

        def write(self, data: bytes) -> None:
            self.hasher.update(data)

    received: defer.Deferred[str] = defer.Deferred()

    @client.on_transfer
    def take(transfer: Any) -> HashingSink:
        transfer.done.chainDeferred(received)
        return HashingSink()

    async def run() -> None:
        await client.connect()
        server_start = await client.call("baseline")
        del server_start
        start_rss = reset_peak()
        started = time.monotonic()
        source = PatternFile(args.size)
        if args.mode == "upload":
            digest = await client.send_file(source).result
        else:
            await client.send_file(source, to=client.session).result
            digest = await received
        seconds = time.monotonic() - started
        peak = memory()["VmHWM"]
        server = await client.call("report")
        result.update(
            size=args.size,
            mode=args.mode,
            codec=args.codec,
            chunk_size=args.chunk_size,
            window=args.window,
            seconds=round(seconds, 2),
            mib_per_second=round(args.size / (1 << 20) / seconds, 1),
            sha256=digest,
            client_growth=peak - start_rss,
            server_growth=server["growth"],
            server_sha256=server.get("sha256"),
        )
        await client.close()

    def done(outcome: Any) -> None:
        if isinstance(outcome, Exception) or hasattr(outcome, "getTraceback"):
            result["error"] = str(outcome)
        reactor.stop()

    reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(run()).addBoth(done))
    reactor.run()
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------- the parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("1GiB"))
    parser.add_argument("--mode", choices=("upload", "relay"), default="upload")
    parser.add_argument("--codec", choices=("json", "msgpack"), default="json")
    parser.add_argument("--chunk-size", type=int, default=256 * 1024)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--role", choices=("parent", "server", "client"), default="parent")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.role == "server":
        serve(args)
        return 0
    if args.role == "client":
        send(args, args.port)
        return 0
    common = [
        f"--size={args.size}",
        f"--mode={args.mode}",
        f"--codec={args.codec}",
        f"--chunk-size={args.chunk_size}",
        f"--window={args.window}",
    ]
    me = [sys.executable, str(Path(__file__).resolve())]
    server = subprocess.Popen([*me, *common, "--role=server"], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        client = subprocess.run(
            [*me, *common, "--role=client", f"--port={port}"],
            capture_output=True,
            text=True,
            timeout=3600,
        )
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    lines = client.stdout.strip().splitlines()
    if client.returncode != 0 or not lines:
        print(client.stderr, file=sys.stderr)
        return 2
    result = json.loads(lines[-1])
    expected = pattern_sha256(args.size)
    bound = BOUND_WINDOWS * args.window * args.chunk_size + SLACK
    result.update(expected_sha256=expected, bound=bound)
    ok = (
        "error" not in result
        and result["sha256"] == expected
        and (args.mode == "relay" or result["server_sha256"] == expected)
        and result["client_growth"] <= bound
        and result["server_growth"] <= bound
    )
    result["ok"] = ok
    print(json.dumps(result, indent=2))
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
