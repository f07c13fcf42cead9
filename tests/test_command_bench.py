"""``warpsocket bench`` through its installed entry point against a real
server (docs/cli.md, "bench"): short runs with small numbers, asserting the
counts of the ``--json`` report (never timings)."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from tests.wsclient import ServerTestCase, async_test, reactor
from warpsocket.command_bench import api_url, percentile
from warpsocket.server.web import add_http_api

SCRIPT = os.path.join(os.path.dirname(sys.executable), "warpsocket")
KEY = "bench-key-of-enough-length"


class BenchTests(ServerTestCase):
    timeout = 90

    def setUp(self) -> None:
        self.assertTrue(os.access(SCRIPT, os.X_OK), f"{SCRIPT} is not installed")
        hub = self.start_server(open_rooms=True)
        add_http_api(self.service.site, hub, [KEY.encode()], None)
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self.work: list[Any] = []
        hub.on("work", lambda ctx, data: self.work.append(data["n"]))

    def bench(self, *args: str) -> Deferred[tuple[bytes, bytes, int]]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        return getProcessOutputAndValue(
            SCRIPT, ("bench", self.url, "--json", *args), env=env, reactor=reactor
        )

    async def report(self, *args: str) -> tuple[dict[str, Any], bytes, int]:
        out, err, code = await self.bench(*args)
        return json.loads(out), err, code

    @async_test
    async def test_fanout_every_member_receives_every_message(self) -> None:
        report, err, code = await self.report(
            "--mode", "fanout", "--connections", "3", "--rate", "50", "--duration", "0.4"
        )
        self.assertEqual(code, 0, err)
        self.assertEqual((report["sent"], report["errors"]), (20, 0), report)
        self.assertEqual(report["received"], report["sent"] * 3)
        self.assertEqual(report["expected"], 60)
        self.assertEqual(set(report["latency_ms"]), {"p50", "p90", "p99", "max"})
        self.assertIn(b"sent 20 received 60", err)  # the last progress line, not a TTY

    @async_test
    async def test_fanout_published_over_the_http_api(self) -> None:
        report, err, code = await self.report(
            "--mode", "fanout", "--connections", "2", "--rate", "25", "--duration", "0.4",
            "--api-key", KEY, "--room", "hall", "--size", "1000",
        )  # fmt: skip
        self.assertEqual(code, 0, err)
        self.assertEqual((report["sent"], report["acked"], report["received"]), (10, 10, 20))

    @async_test
    async def test_acked_round_trips_reach_the_handler(self) -> None:
        report, err, code = await self.report(
            "--connections", "2", "--rate", "40", "--duration", "0.5", "--event", "work"
        )
        self.assertEqual(code, 0, err)
        self.assertEqual((report["sent"], report["acked"], report["errors"]), (20, 20, 0))
        self.assertEqual(sorted(self.work), list(range(20)))
        self.assertIsNotNone(report["latency_ms"]["p99"])

    @async_test
    async def test_refusals_are_counted_by_name_and_exit_1(self) -> None:
        report, err, code = await self.report(
            "--connections", "1", "--rate", "20", "--duration", "0.2", "--event", "nobody"
        )
        self.assertEqual(code, 1, err)
        self.assertEqual((report["sent"], report["acked"]), (4, 0))
        self.assertEqual(report["error_names"], {"no_handler": 4})
        wrong_key = await self.report(
            "--mode", "fanout", "--connections", "1", "--rate", "10", "--duration", "0.2",
            "--api-key", "not-the-key-at-all", "--drain", "1",
        )  # fmt: skip
        self.assertEqual(wrong_key[2], 1)
        self.assertEqual(wrong_key[0]["error_names"], {"unauthorized": 2})


class PercentileTests(unittest.TestCase):
    def test_nearest_rank(self) -> None:
        values = [float(n) for n in range(1, 101)]
        self.assertEqual(
            [percentile(values, f) for f in (0.5, 0.9, 0.99, 1.0)], [50.0, 90.0, 99.0, 100.0]
        )
        self.assertIsNone(percentile([], 0.5))
        self.assertEqual(api_url("wss://h:9/ws"), "https://h:9/api")
