"""The checker: reads a run directory and judges every message of the run.

Inputs (written by ``chaos.run``):

- ``journal-<N>.jsonl``: what server incarnation N handled and published
  (see ``chaos.app``);
- ``client-<name>.jsonl``: what each client's application saw, in order
  (see ``chaos.clients``);
- ``run.json``: configuration, server incarnations (spawn, kill and end
  times), per-client rooms, the final positions answered by the last
  incarnation (``final``), fault counts and reconnect times.

Rules (see chaos/README.md for the reasoning):

1. Client to server. Every acknowledged message was handled exactly once,
   except that a message in flight at a SIGKILL (no outcome yet when the
   server died) that the killed incarnation had already handled may be
   handled once more by a later incarnation, whose dedup memory started
   empty ("kill-window duplicate"). Never twice by one incarnation, never
   lost, never an outcome other than acked/expired, never a handling of a
   message nobody sent. Per sender, each incarnation handles messages in
   increasing order, and first handlings are in increasing order overall.
2. Server to client. For every client and stream, walking the records in
   order: deliveries are consecutive offsets of one epoch; a change of
   position (new epoch, or a jump) is allowed only right after an
   ``on_lost`` notice for that stream, and such a notice is only expected
   when the stream's history was really lost (its new epoch belongs to a
   later server incarnation); every delivered message is exactly the one the
   journal stored at that (epoch, offset); at the end each stream stands at
   the final position of the final incarnation.

Cluster mode (``run.json`` has ``cluster``: nodes sharing a Redis, see
chaos/README.md): streams, sessions and dedup records outlive any node, so

- a node SIGKILL excuses nothing: a message handled twice, or a
  ``recovered: false`` notice, needs a Redis restart "around" it:
  a second handling is allowed only if the earlier one happened before a
  Redis restart completed (plus ``REDIS_GRACE`` seconds for the nodes to
  reconnect, during which dedup is node-local) and the client had no
  outcome when that Redis was killed ("Redis-window duplicate"); a notice
  moving a stream from epoch E to another is allowed only if Redis was
  killed after E was first seen and before the notice;
- epochs belong to Redis, not to an incarnation; journals of all nodes are
  merged; an append that was stored but not journaled (its node died, or
  Redis died, before the reply was read; the ``pub_try`` record exists) is
  accepted at the (epoch, offset) where clients first saw it, and holes in
  the journaled offsets are only counted (the client walks catch any
  message a client missed);
- a failed publish (``pub_failed``) is not a loss, but is a violation unless
  Redis was down (kill .. restart + ``REDIS_GRACE``) or the node was starting;
- an acked message that expired without ever being handled is a violation
  (no cluster outage lasts the client's 60 s ack deadline);
- acked direct sends, from the session's node or from another one
  (``dm_send`` ``side``: ``local``, ``detached`` or ``remote``, see chaos.app):
  one whose waiter fired (``dm_ack``) must have been delivered to the
  session's client, and before the waiter fired (``acked-before-delivered``);
  a failure (timeout, Redis down) is allowed and counted by side and cause
  (``direct_ack_failed_remote_AckTimeoutError``, ...), and so are the failed
  ones the client had received all the same (``..._delivered``: the ack
  notice was lost or late).
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

StreamKey = tuple[str, str]  # (wire stream name, epoch)
Position = tuple[str, int]  # (epoch, offset)

MAX_LISTED = 60  # violations listed in full; all are counted
# Seconds after a Redis restart during which nodes may still be reconnecting
# (backoff 0.1 s doubling to 2 s): dedup is node-local, publishes fail.
REDIS_GRACE = 4.0


@dataclass
class Report:
    counts: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    violation_kinds: Counter[str] = field(default_factory=Counter)
    kill_window: list[dict[str, Any]] = field(default_factory=list)
    reconnect: dict[str, float | int | None] = field(default_factory=dict)

    def violation(self, kind: str, message: str) -> None:
        self.violation_kinds[kind] += 1
        if len(self.violations) < MAX_LISTED:
            self.violations.append(f"[{kind}] {message}")

    @property
    def ok(self) -> bool:
        return not self.violation_kinds

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "counts": dict(self.counts),
            "violation_count": sum(self.violation_kinds.values()),
            "violation_kinds": dict(self.violation_kinds),
            "violations": self.violations,
            "kill_window_duplicates": self.kill_window,
            "reconnect_seconds": self.reconnect,
        }


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _read_jsonl(path: Path, report: Report) -> list[Any]:
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            if number == len(lines):
                # A SIGKILL can only cut the very last line short.
                report.counts["journal_torn_lines"] += 1
                continue
            report.violation("corrupt-record", f"{path.name}:{number} is not JSON")
    return records


class Checker:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.report = Report()
        self.run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        self.final: dict[str, Any] | None = self.run.get("final")
        self.incarnations = {entry["inc"]: entry for entry in self.run["server"]["history"]}
        # (wire stream, epoch) -> {offset: id}; and -> incarnation
        self.streams: dict[StreamKey, dict[int, str]] = defaultdict(dict)
        self.epoch_inc: dict[StreamKey, int] = {}
        self.session_inc: dict[str, int] = {}
        self.recv: dict[str, list[tuple[int, int, float]]] = defaultdict(list)
        self.recv_order: dict[tuple[str, int], list[tuple[int, str]]] = defaultdict(list)
        self.dm_acked: set[str] = set()
        self.dm_ack_at: dict[str, float] = {}
        self.dm_failed: dict[str, str] = {}  # id -> side (local, detached, remote)
        self.delivered_ids: set[str] = set()
        self.delivered_at: dict[str, float] = {}  # id -> first delivery to a client
        cluster = self.run.get("cluster")
        self.cluster = cluster is not None
        # Redis outages (killed, back up) and kill times, cluster mode only.
        self.outages: list[tuple[float, float]] = []
        if cluster is not None:
            generations = cluster["redis"]
            for old, new in itertools.pairwise(generations):
                if "killed" in old:
                    self.outages.append((old["killed"], new.get("up", math.inf)))
        self.tries: dict[str, tuple[str, str | None]] = {}  # id -> (stream, session)
        self.journaled_ids: set[str] = set()
        self.epoch_first: dict[StreamKey, float] = {}
        self.failed_publishes: list[tuple[int, dict[str, Any]]] = []

    def _seen(self, key: StreamKey, when: float) -> None:
        if when < self.epoch_first.get(key, math.inf):
            self.epoch_first[key] = when

    # ------------------------------------------------------------ loading

    def load_journals(self) -> None:
        report = self.report
        paths = sorted(
            self.run_dir.glob("journal-*.jsonl"), key=lambda p: int(p.stem.split("-")[1])
        )
        for path in paths:
            inc = int(path.stem.split("-")[1])
            for line, record in enumerate(_read_jsonl(path, report)):
                kind = record["k"]
                if kind == "start":
                    self.incarnations.setdefault(inc, {"inc": inc})["started"] = record["t"]
                    for stream, position in record["streams"].items():
                        self.epoch_inc[(stream, position["epoch"])] = inc
                elif kind == "session":
                    self.epoch_inc[("direct", record["epoch"])] = inc
                    self.session_inc[record["session"]] = inc
                    self._seen(("direct", record["epoch"]), record["t"])
                elif kind == "pub_try":
                    self.tries[record["id"]] = (record["stream"], record.get("session"))
                elif kind == "pub_failed":
                    self.failed_publishes.append((inc, record))
                elif kind == "recv":
                    self.recv[record["id"]].append((inc, line, record["t"]))
                    self.recv_order[(record["sender"], inc)].append((record["seq"], record["id"]))
                    report.counts["server_handled"] += 1
                elif kind == "pub":
                    key = (record["stream"], record["epoch"])
                    offsets = self.streams[key]
                    if record["offset"] in offsets:
                        report.violation(
                            "server-offset-reused",
                            f"{key} offset {record['offset']} stored twice",
                        )
                    offsets[record["offset"]] = record["id"]
                    self.journaled_ids.add(record["id"])
                    self._seen(key, record["t"])
                    owner = self.epoch_inc.setdefault(key, inc)
                    if owner != inc and not self.cluster:
                        report.violation(
                            "epoch-reused", f"epoch {key} used by incarnations {owner} and {inc}"
                        )
                    report.counts[
                        "direct_sent" if record["stream"] == "direct" else "published"
                    ] += 1
                elif kind == "dm_send":
                    report.counts[f"direct_sends_{record['side']}"] += 1
                elif kind == "dm_ack":
                    self.dm_acked.add(record["id"])
                    self.dm_ack_at[record["id"]] = record["t"]
                    report.counts["direct_acked_by_client"] += 1
                    if "side" in record:
                        report.counts[f"direct_acked_{record['side']}"] += 1
                elif kind == "dm_fail":
                    report.counts["direct_ack_failed"] += 1
                    if "side" in record:
                        side = record["side"]
                        self.dm_failed[record["id"]] = side
                        report.counts[f"direct_ack_failed_{side}"] += 1
                        cause = record.get("cause", "?")
                        report.counts[f"direct_ack_failed_{side}_{cause}"] += 1
                elif kind == "dm_refused":
                    report.counts["direct_refused"] += 1
                    if "side" in record:
                        report.counts[f"direct_refused_{record['side']}"] += 1
                elif kind == "pub_refused":
                    report.violation(
                        "publish-refused",
                        f"incarnation {inc} refused {record['id']}: {record['error']}",
                    )
        for key, offsets in self.streams.items():
            ordered = sorted(offsets)
            if ordered == list(range(1, len(ordered) + 1)):
                continue
            if self.cluster:
                report.counts["journal_holes"] += max(ordered) - len(ordered)
            else:
                report.violation("server-offsets", f"{key}: offsets are not 1..n: {ordered[:5]}...")
        self._judge_failed_publishes()

    def in_outage(self, when: float) -> bool:
        return any(killed <= when <= up + REDIS_GRACE for killed, up in self.outages)

    def _judge_failed_publishes(self) -> None:
        for inc, record in self.failed_publishes:
            self.report.counts["publish_failed"] += 1
            healthy = self.incarnations.get(inc, {}).get("healthy", 0.0)
            if record["t"] < healthy or self.in_outage(record["t"]):
                continue
            self.report.violation(
                "publish-failed",
                f"incarnation {inc}: {record['stream']} {record['id']} failed at "
                f"{record['t']:.3f} with Redis up and the node healthy: {record['error']}",
            )

    def last_offset(self, key: StreamKey) -> int:
        offsets = self.streams.get(key)
        return max(offsets) if offsets else 0

    # ------------------------------------------------------------ client -> server

    def check_client_messages(self, clients: dict[str, list[list[Any]]]) -> None:
        report = self.report
        sent: dict[str, tuple[str, int]] = {}
        outcomes: dict[str, tuple[str, Any, float]] = {}
        for name, records in clients.items():
            for record in records:
                if record[0] == "sent":
                    sent[record[2]] = (name, record[3])
                elif record[0] == "outcome":
                    outcomes[record[2]] = (record[3], record[4], record[1])
        report.counts["client_sent"] = len(sent)
        for ident in self.recv:
            if ident not in sent:
                report.violation("phantom-handled", f"server handled {ident}, which nobody sent")
        for ident in sent:
            handlings = self.recv.get(ident, [])
            status, code, when = outcomes.get(ident, ("none", None, math.inf))
            report.counts[f"client_{status}"] += 1
            if handlings:
                report.counts["client_handled_unique"] += 1
            if status == "acked" and not handlings:
                report.counts["lost"] += 1
                report.violation("lost", f"{ident} was acknowledged but never handled")
            elif status == "rejected" and self._outage_refusal(code, when):
                # Refused 4304 while Redis was down: the sender got an error,
                # the documented outcome of an outage (docs/cluster.md).
                report.counts["rejected_during_outage"] += 1
            elif status == "rejected":
                report.violation("rejected", f"{ident} was rejected with code {code}")
            elif status in ("none", "closed", "error"):
                report.violation("no-outcome", f"{ident} has no outcome at the end ({status})")
            elif status == "expired" and self.cluster and not handlings:
                # A cluster is never down for a whole ack deadline (60 s): a
                # message retried that long by a connected client and never
                # handled was refused service, even if the client was told.
                report.violation("expired", f"{ident} expired, never handled, cluster up")
            if len(handlings) > 1:
                self._judge_duplicate(ident, handlings, when)
        self._check_order()

    def _outage_refusal(self, code: Any, when: float) -> bool:
        return code == 4304 and any(
            killed <= when <= up + REDIS_GRACE for killed, up in self.outages
        )

    def _judge_duplicate(
        self, ident: str, handlings: list[tuple[int, int, float]], outcome_at: float
    ) -> None:
        report = self.report
        incs = [inc for inc, _, _ in handlings]
        if len(set(incs)) != len(incs):
            report.counts["duplicated"] += len(incs) - len(set(incs))
            report.violation(
                "duplicated", f"{ident} handled twice by one incarnation: {sorted(incs)}"
            )
            return
        if self.cluster:
            self._judge_cluster_duplicate(ident, handlings, outcome_at)
            return
        # All but the last handling must come from an incarnation that was
        # SIGKILLed while the message had no outcome yet (its dedup record
        # died with it); the outcome must come after the last one started.
        ordered = sorted(handlings)
        for inc, _, handled_at in ordered[:-1]:
            incarnation = self.incarnations.get(inc, {})
            killed = incarnation.get("killed")
            # Handled before the process was seen dead (the signal takes a
            # moment to land), answered only after the kill.
            died = incarnation.get("died", killed)
            if killed is None or not (handled_at <= died and killed < outcome_at):
                report.counts["duplicated"] += 1
                report.violation(
                    "duplicated",
                    f"{ident} handled by incarnations {incs}; incarnation {inc} was "
                    f"{'not killed' if killed is None else 'killed'} and the outcome came "
                    f"at {outcome_at:.3f} (kill at {killed})",
                )
                return
            report.counts["kill_window_duplicates"] += 1
            report.kill_window.append(
                {
                    "id": ident,
                    "incarnations": incs,
                    "handled_before_kill_s": round(killed - handled_at, 3),
                }
            )

    def _judge_cluster_duplicate(
        self, ident: str, handlings: list[tuple[int, int, float]], outcome_at: float
    ) -> None:
        """Shared dedup: only a Redis restart (dedup records lost) excuses a repeat."""
        report = self.report
        ordered = sorted(handlings, key=lambda h: h[2])
        last_at = ordered[-1][2]
        for _inc, _, handled_at in ordered[:-1]:
            window = [
                (killed, up)
                for killed, up in self.outages
                if handled_at <= up + REDIS_GRACE and killed < outcome_at and killed < last_at
            ]
            if not window:
                report.counts["duplicated"] += 1
                report.violation(
                    "duplicated",
                    f"{ident} handled by incarnations {[h[0] for h in ordered]} at "
                    f"{[round(h[2], 3) for h in ordered]}, outcome at {outcome_at:.3f}; "
                    f"no Redis restart in between (shared dedup should have caught it)",
                )
                return
            report.counts["redis_window_duplicates"] += 1
            report.kill_window.append(
                {
                    "id": ident,
                    "incarnations": [h[0] for h in ordered],
                    "redis_killed_after_handling_s": round(window[0][0] - handled_at, 3),
                }
            )

    def _check_order(self) -> None:
        report = self.report
        for (sender, inc), handled in sorted(self.recv_order.items(), key=lambda kv: kv[0][1]):
            previous = 0
            for seq, _ in handled:
                if seq <= previous:
                    report.counts["reordered"] += 1
                    report.violation(
                        "reordered",
                        f"incarnation {inc} handled {sender} #{seq} after #{previous}",
                    )
                previous = max(previous, seq)
        # First handlings in time order (incarnations of a cluster run side by side).
        firsts: dict[str, list[tuple[float, int]]] = defaultdict(list)
        for (sender, _), handled in self.recv_order.items():
            for seq, ident in handled:
                first_at = min(t for _, _, t in self.recv[ident])
                if (first_at, seq) not in firsts[sender]:
                    firsts[sender].append((first_at, seq))
        for sender, handlings in sorted(firsts.items()):
            highest = 0
            for _, seq in sorted(handlings):
                if seq < highest:
                    report.counts["reordered"] += 1
                    report.violation("reordered", f"{sender} #{seq} first handled after #{highest}")
                highest = max(highest, seq)

    # ------------------------------------------------------------ server -> client

    def check_streams(self, name: str, records: list[list[Any]], rooms: list[str]) -> None:
        by_stream: dict[str, list[list[Any]]] = defaultdict(list)
        session: str | None = None
        for record in records:
            kind = record[0]
            if kind == "open":
                session = record[2]
                for stream, (offset, epoch) in record[4].items():
                    by_stream[stream].append(["pos", record[1], epoch, offset, "welcome"])
            elif kind == "join":
                by_stream[record[2]].append(["pos", record[1], record[4], record[3], "subscribe"])
            elif kind == "lost":
                by_stream[record[2]].append(record)
            elif kind == "msg":
                by_stream[record[2]].append(record)
                if record[2] == "direct" and record[7] != session:
                    self.report.violation(
                        "direct-misrouted",
                        f"{name} (session {session}) got {record[6]} for session {record[7]}",
                    )
        expected = {"direct", "broadcast", *("room:" + room for room in rooms)}
        for stream in sorted(expected - set(by_stream)):
            self.report.violation("never-joined", f"{name} never had a position on {stream}")
        for stream, stream_records in sorted(by_stream.items()):
            self._walk(name, stream, stream_records, session)

    def _remaining(self, stream: str, position: Position) -> int:
        return max(0, self.last_offset((stream, position[0])) - position[1])

    def _skipped(self, stream: str, old: Position, new: Position) -> int:
        if old[0] == new[0]:
            return new[1] - old[1]
        return self._remaining(stream, old) + new[1]

    def _notice_covers(
        self, who: str, stream: str, old: Position, new: Position, when: float
    ) -> None:
        """A position change announced by on_lost: legitimate, but was it expected?"""
        report = self.report
        covered = max(0, self._skipped(stream, old, new))
        report.counts["unrecovered_messages"] += covered
        if self.cluster and old[0] != new[0]:
            born = self.epoch_first.get((stream, old[0]), -math.inf)
            if not any(born < killed < when for killed, _ in self.outages):
                report.violation(
                    "unrecovered-without-redis-restart",
                    f"{who}: {stream} moved from epoch {old[0]} (first seen at {born:.3f}) to "
                    f"{new[0]} at {when:.3f} without a Redis restart in between",
                )
            return
        old_inc = self.epoch_inc.get((stream, old[0]))
        new_inc = self.epoch_inc.get((stream, new[0]))
        if old[0] == new[0]:
            report.violation(
                "unrecovered-within-retention",
                f"{who}: {stream} not recovered within epoch {old[0]} "
                f"({old[1]} -> {new[1]}), far inside the history limits",
            )
        elif old_inc is None or new_inc is None or new_inc <= old_inc:
            report.violation(
                "unrecovered-without-restart",
                f"{who}: {stream} moved from epoch {old[0]} (incarnation {old_inc}) to "
                f"{new[0]} (incarnation {new_inc}) without a server restart in between",
            )

    def _walk(self, who: str, stream: str, records: list[list[Any]], session: str | None) -> None:
        report = self.report
        current: Position | None = None
        notice = False
        notice_at = 0.0
        seen: set[Position] = set()
        for record in records:
            kind = record[0]
            if kind == "lost":
                report.counts["unrecovered"] += 1
                notice = True
                notice_at = record[1]
            elif kind == "pos":
                new = (record[2], record[3])
                if current is None:
                    current = new
                elif notice:
                    if new != current:
                        self._notice_covers(who, stream, current, new, notice_at)
                    current = new
                elif new != current:
                    skipped = self._skipped(stream, current, new)
                    report.counts["lost"] += max(0, skipped)
                    report.violation(
                        "silent-jump",
                        f"{who}: {stream} position moved {current} -> {new} on {record[4]} "
                        f"without a recovered:false notice",
                    )
                    current = new
                notice = False
            elif kind == "msg":
                epoch, offset, ident = record[3], record[4], record[6]
                stored = self.streams.get((stream, epoch), {}).get(offset)
                if stored is None and self._stored_unjournaled(stream, ident):
                    self.streams[(stream, epoch)][offset] = stored = ident
                    self.journaled_ids.add(ident)
                    report.counts["stored_unjournaled"] += 1
                if stored is None:
                    report.violation(
                        "phantom", f"{who}: {stream} {epoch}/{offset} ({ident}) was never stored"
                    )
                elif stored != ident:
                    report.violation(
                        "mismatch", f"{who}: {stream} {epoch}/{offset} is {stored}, got {ident}"
                    )
                if ident is not None:
                    self.delivered_ids.add(ident)
                    if record[1] < self.delivered_at.get(ident, math.inf):
                        self.delivered_at[ident] = record[1]
                if current is None:
                    report.violation("no-position", f"{who}: {stream} delivery before any position")
                    current = (epoch, offset - 1)
                if notice and (epoch, offset) != (current[0], current[1] + 1):
                    self._notice_covers(who, stream, current, (epoch, offset - 1), notice_at)
                    current = (epoch, offset - 1)
                notice = False
                if epoch != current[0]:
                    report.counts["lost"] += self._remaining(stream, current) + offset - 1
                    report.violation(
                        "silent-epoch-change",
                        f"{who}: {stream} went from epoch {current[0]} to {epoch} without notice",
                    )
                    current = (epoch, offset - 1)
                if offset <= current[1]:
                    if (epoch, offset) in seen:
                        report.counts["duplicated"] += 1
                        report.violation("duplicated", f"{who}: {stream} {epoch}/{offset} twice")
                    else:
                        report.counts["reordered"] += 1
                        report.violation(
                            "reordered", f"{who}: {stream} {epoch}/{offset} after {current[1]}"
                        )
                    continue
                if offset > current[1] + 1:
                    report.counts["lost"] += offset - current[1] - 1
                    report.violation(
                        "silent-gap",
                        f"{who}: {stream} {epoch}: after {current[1]} came {offset} without notice",
                    )
                seen.add((epoch, offset))
                report.counts["delivered"] += 1
                current = (epoch, offset)
        self._check_end(who, stream, current, session)

    def _stored_unjournaled(self, stream: str, ident: str | None) -> bool:
        """Cluster mode: tried, never journaled as stored (or failed), yet delivered."""
        if not self.cluster or ident is None or ident in self.journaled_ids:
            return False
        tried = self.tries.get(ident)
        return tried is not None and tried[0] == stream

    def first_seen_by_clients(self, clients: dict[str, list[list[Any]]]) -> None:
        for records in clients.values():
            for record in records:
                if record[0] == "open":
                    for stream, (_, epoch) in record[4].items():
                        self._seen((stream, epoch), record[1])
                elif record[0] == "join":
                    self._seen((record[2], record[4]), record[1])
                elif record[0] == "msg":
                    self._seen((record[2], record[3]), record[1])

    def _check_end(
        self, who: str, stream: str, current: Position | None, session: str | None
    ) -> None:
        report = self.report
        if self.final is None or current is None:
            return
        if stream == "direct":
            target = self.final["sessions"].get(session)
            if target is None:
                report.violation(
                    "session-missing", f"{who}: final session {session} unknown to the last server"
                )
                return
        else:
            target = self.final["streams"].get(stream)
            if target is None:
                return
        epoch, offset = target["epoch"], target["offset"]
        if current[0] != epoch:
            report.counts["lost"] += self._remaining(stream, current) + offset
            report.violation(
                "stale-at-end", f"{who}: {stream} ends in epoch {current[0]}, server is at {epoch}"
            )
        elif current[1] < offset:
            report.counts["lost"] += offset - current[1]
            report.violation(
                "missing-at-end",
                f"{who}: {stream} ends at {current[1]}, the server stored up to {offset}",
            )
        elif current[1] > offset:
            report.violation("beyond-end", f"{who}: {stream} at {current[1]} > server {offset}")

    def check_direct_acks(self) -> None:
        """A fired ack waiter means the client had the message, and had it first."""
        report = self.report
        for ident in sorted(self.dm_acked - self.delivered_ids):
            report.violation("acked-not-delivered", f"{ident} acknowledged but never delivered")
        for ident, acked_at in sorted(self.dm_ack_at.items()):
            delivered_at = self.delivered_at.get(ident)
            if delivered_at is not None and acked_at < delivered_at:
                report.violation(
                    "acked-before-delivered",
                    f"{ident} reported acknowledged at {acked_at:.3f}, "
                    f"first delivered at {delivered_at:.3f}",
                )
        for ident, side in self.dm_failed.items():
            if ident in self.delivered_ids:
                report.counts[f"direct_ack_failed_{side}_delivered"] += 1

    # ------------------------------------------------------------ all

    def check(self) -> Report:
        report = self.report
        self.load_journals()
        clients: dict[str, list[list[Any]]] = {}
        for name in self.run["clients"]:
            clients[name] = _read_jsonl(self.run_dir / f"client-{name}.jsonl", report)
        self.check_client_messages(clients)
        self.first_seen_by_clients(clients)
        for name, records in clients.items():
            self.check_streams(name, records, self.run["clients"][name]["rooms"])
        self.check_direct_acks()
        if self.final is None:
            report.violation("no-final", "the last server incarnation never answered quiesce")
        for crash in self.run["server"].get("crashes", []):
            report.violation("server-crash", crash)
        for problem in self.run.get("problems", []):
            report.violation("harness", problem)
        for line in self.run.get("server_log_errors", []):
            report.violation("server-log", line)
        for line in self.run.get("client_log_errors", []):
            report.violation("client-log", line)
        faults = self.run.get("faults", {})
        for problem in self.run.get("cluster", {}).get("redis_crashes", []):
            report.violation("redis-crash", problem)
        for kind in ("cuts", "stalls", "kills", "redis_restarts"):
            report.counts[kind] = faults.get(kind, 0)
        for kind in ("lost", "duplicated", "reordered", "unrecovered"):
            report.counts.setdefault(kind, 0)
        times = [t for ts in self.run.get("reconnect_times", {}).values() for t in ts]
        p50, p99 = percentile(times, 50), percentile(times, 99)
        report.reconnect = {
            "count": len(times),
            "p50": None if p50 is None else round(p50, 3),
            "p99": None if p99 is None else round(p99, 3),
            "max": round(max(times), 3) if times else None,
        }
        return report


def check_run(run_dir: Path) -> Report:
    return Checker(run_dir).check()


if __name__ == "__main__":
    result = check_run(Path(sys.argv[1]))
    print(json.dumps(result.to_json(), indent=2))
    sys.exit(0 if result.ok else 1)
