"""Shared dedup records: which node handles a client message id, and its reply.

Claims and records are not sent one command each: those of one reactor turn
go to Redis together, one script call per hash slot (``DEDUP_BATCH_SCRIPT``),
so an acked message costs a share of one round trip, not two commands.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from warpsocket.backends.base import FIRST, TAKEN, Claim, Decided
from warpsocket.backends.redis.connection import RedisLink, reply_text
from warpsocket.backends.redis.keys import Keys
from warpsocket.backends.redis.scripts import CLAIM_TTL_MS, DEDUP_BATCH_SCRIPT, UNCLAIM_SCRIPT
from warpsocket.protocol.codecs import JsonCodec
from warpsocket.protocol.codes import ProtocolError
from warpsocket.protocol.envelope import Envelope

SlotOf = Callable[[str], int]
# A claim waiting for this turn's script call: its key, who hears the answer, and with what.
_Pending = tuple[str, Decided, Any]
_log = Logger()
_REPLY_TEXT = JsonCodec()


def _one_slot(key: str) -> int:
    return 0  # one Redis: every key in one batch


class Dedup:
    def __init__(
        self,
        connections: RedisLink,
        keys: Keys,
        age_ms: int,
        reactor: Any,
        slot_of: SlotOf = _one_slot,
    ) -> None:
        self.connections = connections
        self.keys = keys
        self.age_ms = age_ms
        self.reactor = reactor
        # A Redis Cluster runs a script on one slot's keys only.
        self.slot_of = slot_of
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
        claim, one per turn's script call (the inbound hot path's way)."""
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
        groups: dict[int, tuple[list[str], list[_Pending]]] = {}
        for key in records:
            groups.setdefault(self.slot_of(key), ([], []))[0].append(key)
        for pending in claims:
            groups.setdefault(self.slot_of(pending[0]), ([], []))[1].append(pending)
        claim_ms = min(CLAIM_TTL_MS, self.age_ms)
        for recorded, claiming in groups.values():
            sent: Deferred[Any] = cmd.eval(
                DEDUP_BATCH_SCRIPT,
                [*recorded, *(pending[0] for pending in claiming)],
                [claim_ms, self.age_ms, len(recorded), *(records[k] for k in recorded)],
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


def _parse(answer: Any) -> Claim:
    if isinstance(answer, int):
        return FIRST
    raw = reply_text(answer)[1:]  # '=' .. what another node stored
    if not raw:
        return TAKEN
    try:
        return Claim(False, Envelope.from_wire(json.loads(raw)))
    except (ValueError, TypeError, ProtocolError):
        return TAKEN  # unreadable: as if still being handled
