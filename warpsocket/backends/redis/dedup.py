"""Shared dedup records: which node handles a client message id, and its reply.

Claims and records of one reactor turn go to Redis together, so an acked
message costs a share of one round trip. They are plain ``SET`` commands
(``SET NX GET`` claims, Redis 7.0 or later) written at once to the Redis,
or to each master of a Redis Cluster that holds some of their keys, and
answered in one callback per write. What a cluster redirects (a slot moved
or moving), and every claim to a Redis before 7.0, goes by script instead:
one call per hash slot (``DEDUP_BATCH_SCRIPT``), routed by the cluster client.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from warpsocket.backends.base import FIRST, TAKEN, Claim, Decided
from warpsocket.backends.redis.connection import RedisLink, reply_text, set_command, set_options
from warpsocket.backends.redis.keys import Keys
from warpsocket.backends.redis.scripts import CLAIM_TTL_MS, DEDUP_BATCH_SCRIPT, UNCLAIM_SCRIPT
from warpsocket.protocol.codecs import JsonCodec
from warpsocket.protocol.codes import ProtocolError
from warpsocket.protocol.envelope import Envelope

SlotOf = Callable[[str], int]
# A claim waiting for this turn's batch: its key, who hears the answer, and with what.
_Pending = tuple[str, Decided, Any]
_log = Logger()
_REPLY_TEXT = JsonCodec()
# How Redis before 7.0 refuses ``SET`` with both ``NX`` and ``GET``.
_NOT_UNDERSTOOD = "syntax error"
# How a Redis Cluster says a command belongs to another master, now or soon.
_REDIRECTS = ("MOVED ", "ASK ", "TRYAGAIN")


class Dedup:
    def __init__(
        self,
        connections: RedisLink,
        keys: Keys,
        age_ms: int,
        reactor: Any,
        slot_of: SlotOf | None = None,
    ) -> None:
        self.connections = connections
        self.keys = keys
        self.age_ms = age_ms
        self.reactor = reactor
        # A Redis Cluster runs a script on one slot's keys only (None: one Redis).
        self.slot_of = slot_of
        # One Redis takes plain commands (``SET NX GET``: Redis 7.0 or later),
        # cheaper for it than a script; False once an older one refused them.
        self.native = True
        self._claim_ms = min(CLAIM_TTL_MS, age_ms)
        self._claim_options = set_options("NX", "PX", self._claim_ms, "GET")
        self._record_options = set_options("PX", age_ms)
        self._claims: list[_Pending] = []
        self._records: dict[str, bytes] = {}
        self._flush_call: Any = None

    def claim(self, principal: str, message_id: str, now_ms: int) -> Deferred[Claim]:
        claimed: Deferred[Claim] = Deferred()
        self.claim_then(principal, message_id, now_ms, _fire, claimed)
        return claimed

    def claim_then(
        self, principal: str, message_id: str, now_ms: int, decided: Decided, context: Any
    ) -> None:
        """``claim``, answered by ``decided(claim, context)``: no Deferred per
        claim, one per turn's batch (the inbound hot path's way)."""
        if self.connections.cmd is None:
            # Degraded: the node's own dedup window still applies.
            _answer(decided, context, FIRST)
            return
        self._claims.append((self.keys.dedup(principal, message_id), decided, context))
        self._schedule()

    def record(self, principal: str, message_id: str, reply: Envelope) -> None:
        if self.connections.cmd is None:
            return
        # The JSON of the wire form, as a JSON connection is sent it (the
        # codec formats acks and results without building a mapping).
        self._records[self.keys.dedup(principal, message_id)] = _REPLY_TEXT.encode(reply)
        self._schedule()

    def unclaim(self, principal: str, message_id: str) -> None:
        """Give up a claim whose message will not be handled here (its connection went)."""
        cmd = self.connections.cmd
        if cmd is not None:
            cmd.eval(UNCLAIM_SCRIPT, [self.keys.dedup(principal, message_id)], []).addErrback(
                lambda _: None
            )

    def stop(self) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self._records.clear()
        claims, self._claims = self._claims, []
        _answer_all(claims, FIRST)

    def _schedule(self) -> None:
        if self._flush_call is None:
            # At the end of this reactor turn: everything the turn produced.
            self._flush_call = self.reactor.callLater(0, self.flush)

    def flush(self) -> None:
        self._flush_call = None
        claims, self._claims = self._claims, []
        records, self._records = self._records, {}
        cmd = self.connections.cmd
        if cmd is None:
            _answer_all(claims, FIRST)  # degraded: the local window applies
            return
        if not self.native:
            self._send_scripts(cmd, records, claims)
        elif self.slot_of is None:
            self._send_commands(cmd, cmd, records, claims)
        else:
            self._send_to_masters(cmd, records, claims)

    def _send_to_masters(self, cmd: Any, records: dict[str, bytes], claims: list[_Pending]) -> None:
        """A Redis Cluster: the plain commands of each master in one write to
        it. A key whose master has no connection goes by script (``_route``
        reads the slot map again and fails it: answered as if degraded)."""
        slot_of = self.slot_of
        assert slot_of is not None
        # By master connection; None: the keys whose master has none.
        groups: dict[Any, tuple[dict[str, bytes], list[_Pending]]] = {}
        for key, reply in records.items():
            groups.setdefault(cmd.connection_at(slot_of(key)), ({}, []))[0][key] = reply
        for pending in claims:
            groups.setdefault(cmd.connection_at(slot_of(pending[0])), ({}, []))[1].append(pending)
        unrouted = groups.pop(None, None)
        for conn, (recorded, claiming) in groups.items():
            self._send_commands(cmd, conn, recorded, claiming)
        if unrouted is not None:
            self._send_scripts(cmd, *unrouted)

    def _send_commands(
        self, cmd: Any, conn: Any, records: dict[str, bytes], claims: list[_Pending]
    ) -> None:
        """The records and claims as plain ``SET`` commands to one Redis
        (``conn``: ``cmd`` itself, or one master of the cluster ``cmd``),
        written together and answered together (``CommandProtocol.send_commands``)."""
        # Records first: a claim of an id recorded in the same turn sees its reply.
        options = self._record_options
        parts = [set_command(key, reply, options) for key, reply in records.items()]
        options = self._claim_options
        parts.extend(set_command(pending[0], b"", options) for pending in claims)
        first_claim = len(records)  # the replies before it are the records'

        def answered(replies: list[Any]) -> None:
            for reply in replies:
                if isinstance(reply, Exception):
                    self._answered_with_errors(cmd, records, claims, replies)
                    return
            for index, (_, decided, context) in enumerate(claims):
                _answer(decided, context, _claim_of(replies[first_claim + index]))

        def failed(reason: Exception) -> None:
            self.connections.trouble(cmd, Failure(reason))
            _answer_all(claims, FIRST)  # as if degraded: the local window applies

        conn.send_commands(b"".join(parts), len(parts), answered, failed)

    def _answered_with_errors(
        self, cmd: Any, records: dict[str, bytes], claims: list[_Pending], replies: list[Any]
    ) -> None:
        """``_send_commands``' replies when some are errors:

        - claims refused as a syntax error (a Redis before 7.0: no ``SET NX
          GET``) go again by script, and every later turn's too;
        - a command redirected by a Redis Cluster (``MOVED``, ``ASK``,
          ``TRYAGAIN``: a slot moved or moving) goes again by script, alone,
          through the cluster client's routing, which follows the redirect;
          a ``MOVED`` slot's new master is learned first, so that it goes
          there at once (and the next turn's plain commands too);
        - any other error answers its claim ``FIRST`` (as if degraded: the
          node's own window applies) and is reported as trouble; the other
          claims keep their answers.
        """
        record_replies, claim_replies = replies[: len(records)], replies[len(records) :]
        again_records = {
            key: reply
            for (key, reply), answer in zip(records.items(), record_replies, strict=True)
            if _redirected(answer)
        }
        learn = getattr(cmd, "learn_redirect", None)  # (a cluster's client only)
        if learn is not None:
            for reply in filter(_redirected, replies):
                learn(str(reply))
        trouble = next(
            (r for r in replies if _is_error(r) and not _redirected(r) and not _not_understood(r)),
            None,
        )
        if trouble is not None:
            self.connections.trouble(cmd, Failure(trouble))
        if any(_not_understood(r) for r in claim_replies):
            self.native = False
            _log.info("redis has no SET NX GET: dedup claims use a script")
            self._send_scripts(cmd, again_records, claims)
            return
        again_claims = []
        for pending, answer in zip(claims, claim_replies, strict=True):
            if _redirected(answer):
                again_claims.append(pending)
            else:
                _answer(pending[1], pending[2], _claim_of(answer))
        if again_records or again_claims:
            self._send_scripts(cmd, again_records, again_claims, _each_key)

    def _send_scripts(
        self,
        cmd: Any,
        records: dict[str, bytes],
        claims: list[_Pending],
        group_of: Callable[[str], object] | None = None,
    ) -> None:
        """One script call per hash slot (a Redis before 7.0), or per
        ``group_of(key)``: per key, for what a cluster redirected (a script
        whose keys a slot being migrated holds only in part is refused with
        ``TRYAGAIN``; one key is never split)."""
        slot_of = group_of or self.slot_of or _one_slot
        groups: dict[object, tuple[list[str], list[_Pending]]] = {}
        for key in records:
            groups.setdefault(slot_of(key), ([], []))[0].append(key)
        for pending in claims:
            groups.setdefault(slot_of(pending[0]), ([], []))[1].append(pending)
        for recorded, claiming in groups.values():
            sent: Deferred[Any] = cmd.eval(
                DEDUP_BATCH_SCRIPT,
                [*recorded, *(pending[0] for pending in claiming)],
                [self._claim_ms, self.age_ms, len(recorded), *(records[k] for k in recorded)],
            )
            sent.addCallbacks(
                self._answered, self._failed, callbackArgs=(claiming,), errbackArgs=(cmd, claiming)
            )

    @staticmethod
    def _answered(reply: Any, claiming: list[_Pending]) -> None:
        answers = list(reply or ())
        for index, (_, decided, context) in enumerate(claiming):
            claim = _parse(answers[index]) if index < len(answers) else FIRST
            _answer(decided, context, claim)

    def _failed(self, failure: Failure, cmd: Any, claiming: list[_Pending]) -> None:
        self.connections.trouble(cmd, failure)
        _answer_all(claiming, FIRST)  # as if degraded: the local window applies


def _fire(claim: Claim, claimed: Deferred[Claim]) -> None:
    claimed.callback(claim)


def _answer(decided: Decided, context: Any, claim: Claim) -> None:
    try:
        decided(claim, context)
    except Exception:
        # One waiter's bug must not keep the rest of the batch unanswered.
        _log.failure("a dedup claim's answer failed")


def _answer_all(claims: list[_Pending], claim: Claim) -> None:
    for _, decided, context in claims:
        _answer(decided, context, claim)


def _is_error(reply: Any) -> bool:
    return isinstance(reply, Exception)


def _not_understood(reply: Any) -> bool:
    return isinstance(reply, Exception) and _NOT_UNDERSTOOD in str(reply).lower()


def _redirected(reply: Any) -> bool:
    """A Redis Cluster's answer that the command belongs elsewhere (for now)."""
    return isinstance(reply, Exception) and str(reply).startswith(_REDIRECTS)


def _each_key(key: str) -> str:
    return key


def _one_slot(key: str) -> int:
    return 0  # one Redis: every key in one script call


def _claim_of(reply: Any) -> Claim:
    """What ``SET key '' NX PX ms GET`` answered: nil (set: claimed here), an
    error (as if degraded: the local window applies), or what was there."""
    if reply is None or isinstance(reply, Exception):
        return FIRST
    return _stored(reply)


def _parse(answer: Any) -> Claim:
    """What ``DEDUP_BATCH_SCRIPT`` answered for one claim."""
    if isinstance(answer, int):
        return FIRST
    return _stored(answer, 1)  # '=' .. what another node stored


def _stored(value: Any, start: int = 0) -> Claim:
    """The value another node stored (from ``start``): empty while it handles
    the message, then the JSON of its reply."""
    try:
        raw = reply_text(value)[start:]
        if not raw:
            return TAKEN
        return Claim(False, Envelope.from_wire(json.loads(raw)))
    except (ValueError, TypeError, ProtocolError):
        return TAKEN  # unreadable: as if still being handled
