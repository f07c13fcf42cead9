"""The bounded-memory promise of chunked transfers, measured: an upload to the
application and a relayed transfer (spool, then download), each side in its
own process over 127.0.0.1 (bench/transfer.py), with the growth of each
side's peak RSS bounded by a few windows, not by the size.

128 MiB here; the 1 GiB run (35-75 s on the shared 2-core machine, over the
suite's budget) is ``python bench/transfer.py --size 1GiB --check``, with its
numbers in docs/performance.md "Large transfers"."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.internet import threads
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "transfer.py"
SIZE = 128 << 20


def run_bench(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--check", *args],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if not done.stdout.strip():
        raise AssertionError(f"bench/transfer.py failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    result["returncode"] = done.returncode
    return result


class BoundedMemoryTests(unittest.TestCase):
    timeout = 300

    def check(self, result: dict[str, Any], size: int) -> None:
        self.assertEqual(result["sha256"], result["expected_sha256"])
        window_bytes = result["window"] * result["chunk_size"]
        for side in ("client_growth", "server_growth"):
            # A few windows (bench/transfer.py BOUND_WINDOWS, plus slack), and
            # in any case a small fraction of what went through.
            self.assertLessEqual(result[side], result["bound"], side)
            self.assertLessEqual(result[side], 8 * window_bytes + 16 * 1024 * 1024, side)
            self.assertLess(result[side], size // 4, side)
        self.assertEqual(result["returncode"], 0)

    @inlineCallbacks
    def test_an_upload_to_the_application(self) -> Any:
        result = yield threads.deferToThread(run_bench, f"--size={SIZE}", "--mode=upload")
        self.assertEqual(result["server_sha256"], result["expected_sha256"])
        self.check(result, SIZE)

    @inlineCallbacks
    def test_a_relay_through_the_spool_with_msgpack(self) -> Any:
        result = yield threads.deferToThread(
            run_bench, f"--size={SIZE}", "--mode=relay", "--codec=msgpack"
        )
        self.check(result, SIZE)
