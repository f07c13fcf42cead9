"""The chaos harness (``python -m chaos``): short runs in CI, and its checker.

``ChaosRunTests`` runs the real thing with a fixed seed: for ~22 s a twistd
server that is SIGKILLed and restarted, a proxy that cuts and stalls
connections, eight clients sending and receiving acked messages; then for
~18 s the cluster mode (two nodes sharing a real redis-server, node SIGKILLs
and Redis restarts), and ~18 s of it on a Redis Cluster of three masters.
Each asserts that every message was accounted for and that every kind of
fault happened. The cluster run needs ``redis-server`` and
fails (not skips) without it. ``CheckerTests`` feed the checker small
hand-written histories, so that a checker that stopped seeing violations
cannot pass the run tests silently.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from twisted.trial import unittest

from chaos.check import Report, check_run

REPO = Path(__file__).resolve().parent.parent
SEED = 20240607


class ChaosRunTests(unittest.SynchronousTestCase):
    def chaos(self, *args: str) -> tuple[dict[str, Any], dict[str, Any], str, float]:
        """Run ``python -m chaos --quick --seed SEED *args``: counts, faults, output, seconds."""
        work = Path(self.mktemp()).resolve()
        work.mkdir(parents=True)
        out = work / "latest.json"
        started = time.monotonic()
        completed = subprocess.run(
            [
                sys.executable,
                "-m",
                "chaos",
                "--quick",
                "--seed",
                str(SEED),
                "--out",
                str(out),
                "--history",
                str(work / "history"),
                *args,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=75,
        )
        elapsed = time.monotonic() - started
        output = completed.stdout[-6000:] + completed.stderr[-4000:]
        results = json.loads(out.read_text(encoding="utf-8"))
        self.assertEqual(results["violation_kinds"], {}, output)
        self.assertEqual(completed.returncode, 0, output)
        self.assertGreater(results["reconnect_seconds"]["count"], 0, output)
        return results["counts"], results["faults"], output, elapsed

    def test_quickRunLosesNothing(self) -> None:
        counts, faults, output, elapsed = self.chaos()
        for kind in ("lost", "duplicated", "reordered"):
            self.assertEqual(counts[kind], 0, f"{kind}: {output}")
        # Every kind of fault really happened ...
        self.assertGreater(faults["cuts"], 0, output)
        self.assertGreater(faults["stalls"], 0, output)
        self.assertGreater(faults["kills"], 0, output)
        # ... and traffic flowed both ways through them.
        self.assertGreater(counts["client_acked"], 100, output)
        self.assertGreater(counts["delivered"], 500, output)
        self.assertGreater(counts["direct_sent"], 0, output)
        # A SIGKILL of an in-memory server loses its history: told, not hidden.
        self.assertGreater(counts["unrecovered"], 0, output)
        self.assertLess(elapsed, 60, output)

    def test_clusterRunLosesNothing(self) -> None:
        """Two nodes and a real redis-server: node kills lose nothing, Redis restarts are told.

        Strict: every ``recovered: false`` must follow a Redis restart
        (``unrecovered-without-redis-restart`` is a violation like any other).
        """
        counts, faults, output, elapsed = self.chaos("--redis", "--duration", "18")
        for kind in ("lost", "duplicated", "reordered"):
            self.assertEqual(counts[kind], 0, f"{kind}: {output}")
        self.assertGreater(faults["cuts"], 0, output)
        self.assertGreater(faults["stalls"], 0, output)
        self.assertGreater(faults["kills"], 0, output)
        self.assertGreater(faults["redis_restarts"], 0, output)
        self.assertGreater(counts["client_acked"], 100, output)
        self.assertGreater(counts["delivered"], 500, output)
        self.assertGreater(counts["direct_sent"], 0, output)
        # Acked direct sends from a node the session is not attached to.
        self.assertGreater(counts["direct_sends_remote"], 0, output)
        # Only the Redis restarts lose history (the checker demands one before
        # every notice), and they did happen.
        self.assertGreater(counts["unrecovered"], 0, output)
        self.assertLess(elapsed, 50, output)

    def test_redisClusterRunLosesNothing(self) -> None:
        """The same on a Redis Cluster of three masters, each killed and restarted in turn
        (its shard's data lost): nothing lost, duplicated or reordered."""
        counts, faults, output, elapsed = self.chaos("--redis-cluster", "--duration", "18")
        for kind in ("lost", "duplicated", "reordered"):
            self.assertEqual(counts[kind], 0, f"{kind}: {output}")
        self.assertGreater(faults["kills"], 0, output)
        self.assertGreater(faults["redis_restarts"], 0, output)
        self.assertGreater(counts["client_acked"], 100, output)
        self.assertGreater(counts["delivered"], 500, output)
        self.assertGreater(counts["direct_sends_remote"], 0, output)
        self.assertLess(elapsed, 55, output)

    def test_clusterModeNeedsRedisServer(self) -> None:
        """Without redis-server on PATH, --redis is an error (exit 2), never a silent skip."""
        empty = Path(self.mktemp()).resolve()
        empty.mkdir(parents=True)
        completed = subprocess.run(
            [sys.executable, "-m", "chaos", "--redis"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PATH": str(empty)},
        )
        self.assertEqual(completed.returncode, 2, completed.stderr)
        self.assertIn("redis-server is not installed", completed.stderr)


class CheckerTests(unittest.SynchronousTestCase):
    """One incarnation, killed at t=100 and replaced; one client ``c0`` in room ``r``."""

    def history(
        self,
        delivered: list[int],
        handled: dict[int, list[str]] | None = None,
        outcome_at: float = 150.0,
        redis: list[dict[str, Any]] | None = None,
        direct: list[dict[str, Any]] | None = None,
    ) -> Report:
        """``direct``: acked direct sends to ``s1`` (offsets 1, 2, ...), each
        ``{"side": ..., "delivered": t or None, "acked": t, "failed": cause}``."""
        run_dir = Path(self.mktemp())
        run_dir.mkdir(parents=True)
        start = {"room:r": {"offset": 0, "epoch": "E"}, "broadcast": {"offset": 0, "epoch": "B"}}
        journal1: list[dict[str, Any]] = [{"k": "start", "t": 1.0, "inc": 1, "streams": start}]
        journal1.append({"k": "session", "t": 2.0, "session": "s1", "epoch": "D", "offset": 0})
        for offset in (1, 2, 3):
            journal1.append(
                {"k": "pub", "t": 3.0, "stream": "room:r", "epoch": "E", "offset": offset,
                 "id": f"p{offset}", "event": "pub"}
            )  # fmt: skip
        journal2: list[dict[str, Any]] = [
            {"k": "start", "t": 110.0, "inc": 2, "streams": {"room:r": {"offset": 0, "epoch": "F"},
             "broadcast": {"offset": 0, "epoch": "G"}}}
        ]  # fmt: skip
        for inc, times in (handled if handled is not None else {1: ["m1"]}).items():
            for ident in times:
                target = journal1 if inc == 1 else journal2
                target.append(
                    {"k": "recv", "t": 50.0 if inc == 1 else 120.0, "inc": inc, "id": ident,
                     "sender": "c0", "seq": 1, "session": "s1"}
                )  # fmt: skip
        positions = {"room:r": [0, "E"], "broadcast": [0, "B"], "direct": [0, "D"]}
        records: list[list[Any]] = [["open", 2.0, "s1", False, positions], ["sent", 4.0, "m1", 1]]
        for offset, dm in enumerate(direct or [], 1):
            ident = f"dm/1/{offset}"
            journal1.append({"k": "dm_send", "t": 10.0, "id": ident, "session": "s1",
                             "side": dm["side"], "to": "b"})  # fmt: skip
            journal1.append({"k": "pub", "t": 10.0, "stream": "direct", "epoch": "D",
                             "offset": offset, "id": ident, "event": "dm",
                             "session": "s1"})  # fmt: skip
            if dm.get("delivered") is not None:
                records.append(["msg", dm["delivered"], "direct", "D", offset, "dm", ident, "s1"])
            if dm.get("acked") is not None:
                journal1.append({"k": "dm_ack", "t": dm["acked"], "id": ident, "side": dm["side"]})
            if dm.get("failed") is not None:
                journal1.append({"k": "dm_fail", "t": 30.0, "id": ident, "side": dm["side"],
                                 "cause": dm["failed"], "error": "x"})  # fmt: skip
        for offset in delivered:
            records.append(["msg", 5.0, "room:r", "E", offset, "pub", f"p{offset}", None])
        records.append(["outcome", outcome_at, "m1", "acked", None])
        run: dict[str, Any] = {
            "server": {
                "history": [{"inc": 1, "killed": 100.0}, {"inc": 2}],
                "crashes": [],
            },
            "clients": {"c0": {"rooms": ["r"]}},
            "final": {
                "streams": {"room:r": {"offset": 3, "epoch": "E"}, "broadcast": start["broadcast"]},
                "sessions": {"s1": {"offset": len(direct or []), "epoch": "D"}},
            },
        }
        if redis is not None:  # cluster mode, with these Redis generations
            run["cluster"] = {"nodes": ["a", "b"], "redis": redis}
        (run_dir / "run.json").write_text(json.dumps(run))
        for number, journal in ((1, journal1), (2, journal2)):
            lines = "".join(json.dumps(r) + "\n" for r in journal)
            (run_dir / f"journal-{number}.jsonl").write_text(lines)
        lines = "".join(json.dumps(r) + "\n" for r in records)
        (run_dir / "client-c0.jsonl").write_text(lines)
        return check_run(run_dir)

    def test_cleanHistoryPasses(self) -> None:
        report = self.history([1, 2, 3])
        self.assertTrue(report.ok, report.violations)
        self.assertEqual(report.counts["delivered"], 3)

    def test_silentGapIsLost(self) -> None:
        report = self.history([1, 3])
        self.assertEqual(dict(report.violation_kinds), {"silent-gap": 1})
        self.assertEqual(report.counts["lost"], 1)

    def test_missingTailIsLost(self) -> None:
        report = self.history([1, 2])
        self.assertEqual(dict(report.violation_kinds), {"missing-at-end": 1})

    def test_duplicateAndReorder(self) -> None:
        self.assertEqual(dict(self.history([1, 2, 2, 3]).violation_kinds), {"duplicated": 1})
        report = self.history([2, 1, 3])
        self.assertIn("reordered", report.violation_kinds)

    def test_ackedButNeverHandled(self) -> None:
        report = self.history([1, 2, 3], handled={})
        self.assertEqual(dict(report.violation_kinds), {"lost": 1})

    def test_handledTwiceByOneServer(self) -> None:
        report = self.history([1, 2, 3], handled={1: ["m1", "m1"]})
        self.assertEqual(report.violation_kinds["duplicated"], 1)

    def test_killWindowDuplicateIsAllowedOnlyInTheWindow(self) -> None:
        # Handled at 50 by incarnation 1, killed at 100 before the client had
        # an outcome; handled again by incarnation 2; acked at 150: allowed.
        report = self.history([1, 2, 3], handled={1: ["m1"], 2: ["m1"]})
        self.assertTrue(report.ok, report.violations)
        self.assertEqual(report.counts["kill_window_duplicates"], 1)
        # The client had its ack before the kill: the second handling is a bug.
        report = self.history([1, 2, 3], handled={1: ["m1"], 2: ["m1"]}, outcome_at=60.0)
        self.assertEqual(report.violation_kinds["duplicated"], 1)

    def test_clusterDuplicateNeedsARedisRestart(self) -> None:
        # Cluster mode: the node kill at 100 excuses nothing (dedup is shared).
        one = [{"gen": 1, "up": 0.0}]
        report = self.history([1, 2, 3], handled={1: ["m1"], 2: ["m1"]}, redis=one)
        self.assertEqual(report.violation_kinds["duplicated"], 1)
        # Redis killed at 60 (after the first handling, before the outcome)
        # and back at 61: the dedup record is gone, the repeat is allowed.
        restarted = [{"gen": 1, "up": 0.0, "killed": 60.0}, {"gen": 2, "up": 61.0}]
        report = self.history([1, 2, 3], handled={1: ["m1"], 2: ["m1"]}, redis=restarted)
        self.assertTrue(report.ok, report.violations)
        self.assertEqual(report.counts["redis_window_duplicates"], 1)
        # ... but not if the client already had its ack when Redis died.
        report = self.history(
            [1, 2, 3], handled={1: ["m1"], 2: ["m1"]}, outcome_at=55.0, redis=restarted
        )
        self.assertEqual(report.violation_kinds["duplicated"], 1)

    def test_crossNodeAckedSendsAreCountedBySide(self) -> None:
        one = [{"gen": 1, "up": 0.0}]
        direct = [
            {"side": "remote", "delivered": 11.0, "acked": 11.5},
            {"side": "local", "delivered": 12.0, "acked": 12.1},
            {"side": "remote", "delivered": 13.0, "failed": "AckTimeoutError"},
            {"side": "detached", "delivered": 14.0, "failed": "BackendUnavailableError"},
        ]
        report = self.history([1, 2, 3], redis=one, direct=direct)
        self.assertTrue(report.ok, report.violations)
        counts = report.counts
        self.assertEqual(
            (counts["direct_sends_remote"], counts["direct_sends_local"]), (2, 1), counts
        )
        self.assertEqual(counts["direct_acked_remote"], 1)
        self.assertEqual(counts["direct_ack_failed_remote"], 1)
        self.assertEqual(counts["direct_ack_failed_remote_AckTimeoutError"], 1)
        self.assertEqual(counts["direct_ack_failed_remote_delivered"], 1)
        self.assertEqual(counts["direct_ack_failed_detached_BackendUnavailableError"], 1)

    def test_crossNodeAckMustFollowDelivery(self) -> None:
        one = [{"gen": 1, "up": 0.0}]
        # Reported acknowledged before the client had it.
        early = [{"side": "remote", "delivered": 11.0, "acked": 10.5}]
        report = self.history([1, 2, 3], redis=one, direct=early)
        self.assertEqual(dict(report.violation_kinds), {"acked-before-delivered": 1})
        # Reported acknowledged, never delivered (the stream ends short too).
        never = [{"side": "remote", "delivered": None, "acked": 11.0}]
        report = self.history([1, 2, 3], redis=one, direct=never)
        self.assertEqual(report.violation_kinds["acked-not-delivered"], 1)
