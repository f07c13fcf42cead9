#!/usr/bin/env python3
"""What a stored message costs a server, against its size on the wire.

    python bench/history_memory.py [--count 500] [--out FILE]

Starts `twistd -n warpsocket --open-rooms` (this checkout's .venv), publishes
messages of several shapes into rooms nobody is in (so each one only sits in
the room's history), and reads the server's VmRSS from /proc before and after
each shape. Prints, per shape: wire bytes per message, RSS growth per stored
message, and their ratio. The object-bomb shape is the one that used to grow
the server by ~70x its wire size (a msgpack array of empty maps).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
from websockets.sync.client import connect

REPO = Path(__file__).resolve().parent.parent
TWISTD = REPO / ".venv" / "bin" / "twistd"
# Servers before --history-bytes existed had no byte bound to lift.
BOUNDS = (
    "--history-bytes"
    in subprocess.run(
        [str(TWISTD), "warpsocket", "--help"], capture_output=True, text=True, cwd=REPO
    ).stdout
)

SHAPES: dict[str, tuple[str, Any]] = {
    "chat line (JSON)": ("json", {"text": "x" * 100, "user": "ann", "n": 1}),
    "1,000 numbers (JSON)": ("json", list(range(1000))),
    "record list (msgpack)": (
        "msgpack",
        [{"id": n, "name": f"item-{n}", "price": n * 1.5, "tags": ["a", "b"]} for n in range(200)],
    ),
    "object bomb, 20,000 empty maps (msgpack)": ("msgpack", [{}] * 20_000),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def frame(codec: str, ident: str, room: str, data: Any) -> bytes | str:
    envelope = {
        "type": "event",
        "id": ident,
        "timestamp": int(time.time() * 1000),
        "room": room,
        "event": "x",
        "ack": True,
        "data": data,
    }
    if codec == "json":
        return json.dumps(envelope, separators=(",", ":"))
    packed: bytes = msgpack.packb(envelope, use_bin_type=True)
    return packed


def publish(port: int, codec: str, room: str, data: Any, count: int) -> int:
    """Publish ``count`` messages; returns the wire size of one."""
    subprotocol = "warpsocket.v1.json" if codec == "json" else "warpsocket.v1.msgpack"
    with connect(
        f"ws://127.0.0.1:{port}/ws",
        subprotocols=[subprotocol],
        max_size=2**24,  # type: ignore[list-item]
    ) as ws:
        hello = {"type": "hello", "id": "h", "timestamp": 1, "data": {}}
        ws.send(json.dumps(hello) if codec == "json" else msgpack.packb(hello))
        ws.recv()
        size = 0
        for n in range(count):
            payload = frame(codec, f"m{n}", room, data)
            size = len(payload.encode() if isinstance(payload, str) else payload)
            ws.send(payload)
            while True:
                raw = ws.recv()
                answer = json.loads(raw) if isinstance(raw, str) else msgpack.unpackb(raw)
                if answer.get("ref") == f"m{n}":
                    if answer["type"] != "ack":
                        raise RuntimeError(f"refused: {answer}")
                    break
        return size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=500, help="messages per shape")
    parser.add_argument("--out", help="also write the table (markdown) here")
    args = parser.parse_args()
    rows = []
    for index, (name, (codec, data)) in enumerate(SHAPES.items()):
        # A fresh server per shape: RSS growth is then not hidden by memory an
        # earlier shape's transient objects left in the allocator.
        with running_server() as (port, pid):
            publish(port, codec, "warmup", data, 5)
            time.sleep(0.5)
            before = rss_kib(pid)
            size = publish(port, codec, f"shape-{index}", data, args.count)
            time.sleep(0.5)
            grown = (rss_kib(pid) - before) * 1024 / args.count
        rows.append((name, size, grown, grown / size))
    lines = [
        f"History memory, {args.count} messages per shape kept in a room's history "
        f"(commit {git_head()}):",
        "",
        "| shape | wire bytes / message | RSS growth / stored message | ratio |",
        "|---|---|---|---|",
    ]
    lines += [f"| {n} | {s:,} | {g:,.0f} | {r:.2f}x |" for n, s, g, r in rows]
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n", encoding="utf-8")
    return 0


@contextlib.contextmanager
def running_server() -> Iterator[tuple[int, int]]:
    port = free_port()
    server = subprocess.Popen(
        [
            str(TWISTD),
            "-n",
            "--pidfile=",
            "warpsocket",
            "--endpoint",
            f"tcp:{port}",
            "--open-rooms",
            "--message-rate",
            "100000",
            # Room for every message: the per-message cost, not the byte bound.
            *(
                ["--history-bytes", str(2**34), "--history-node-bytes", str(2**34)]
                if BOUNDS
                else []
            ),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield port, server.pid
    finally:
        server.terminate()
        server.wait(10)


def git_head() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "?"


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
