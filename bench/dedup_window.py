#!/usr/bin/env python3
"""The dedup window's stalls: one dict against the shipped shards, in one run.

    bench/.venv/bin/python bench/dedup_window.py [--messages N] [--records R]

Every acknowledged message costs the server's dedup window a lookup, a
``begin`` and a ``settle`` (warpsocket/core/dedup.py). Once the window is
full, each new record makes it forget its oldest, and a dict that forgets one
key per new one packs its table every ~2.5 times its size: one step that
copies every record. This feeds N messages' worth of those three steps to a
window of R records (the default 100,000) laid out as one dict (the layout
before the shards; ``SHARD_RECORDS`` patched above R) and as shipped, with
the collector off (its pauses are another matter, bench/gcprofile.py), and
reports for each: the median step, the slowest steps, and how many took
over 1 ms.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from warpsocket.core import dedup
from warpsocket.core.messages import ack_envelope


def steps(records: int, messages: int, shard_records: int) -> tuple[int, list[float]]:
    """(shards, seconds per message), one message at a time."""
    with mock.patch.object(dedup, "SHARD_RECORDS", shard_records):
        window = dedup.DedupWindow(dedup.DedupLimits(max_records=records))
    clock = time.perf_counter
    taken = []
    for i in range(messages):
        key = ("anon", f"{i % 100}.{i}")
        reply = ack_envelope(f"s-{i}", 1, key[1])
        started = clock()
        window.lookup(key, 1_000)
        window.begin(key, 1_000)
        window.settle(key, reply)
        taken.append(clock() - started)
    return len(window._shards), taken


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    gc.disable()
    layouts = {"one dict": args.records + 1, "shipped": dedup.SHARD_RECORDS}
    for name, shard_records in layouts.items():
        shards, taken = steps(args.records, args.messages, shard_records)
        over = sum(t > 0.001 for t in taken)
        ordered = sorted(taken)
        worst = ", ".join(f"{t * 1e3:.2f}" for t in ordered[-5:])
        print(
            f"{name:9} {shards:3} shard(s): median {ordered[len(ordered) // 2] * 1e6:.2f} us,"
            f" {over} steps over 1 ms, slowest {worst} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
