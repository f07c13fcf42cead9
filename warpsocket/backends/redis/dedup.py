"""Shared dedup records: which node handles a client message id, and its reply.

Claims and records are not sent one command each: those of one reactor turn
go to Redis together, one script call per hash slot (``DEDUP_BATCH_SCRIPT``),
so an acked message costs a share of one round trip, not two commands.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from warpsocket.backends.base import Claim
from warpsocket.backends.redis.connection import RedisLink, reply_text
from warpsocket.backends.redis.keys import Keys
from warpsocket.backends.redis.scripts import CLAIM_TTL_MS, DEDUP_BATCH_SCRIPT, UNCLAIM_SCRIPT
from warpsocket.protocol.codes import ProtocolError
from warpsocket.protocol.envelope import Envelope

SlotOf = Callable[[str], int]


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
        self._claims: list[tuple[str, Deferred[Claim]]] = []
        self._records: dict[str, str] = {}
        self._flush_call: Any = None

    def claim(self, principal: str, message_id: str, now_ms: int) -> Deferred[Claim]:
        if self.connections.cmd is None:
            # Degraded: the node's own dedup window still applies.
            return succeed(Claim(True))
        claimed: Deferred[Claim] = Deferred()
        self._claims.append((self.keys.dedup(principal, message_id), claimed))
        self._schedule()
        return claimed

    def record(self, principal: str, message_id: str, reply: Envelope) -> None:
        if self.connections.cmd is None:
            return
        value = json.dumps(reply.to_wire(), separators=(",", ":"), ensure_ascii=False)
        self._records[self.keys.dedup(principal, message_id)] = value
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
        for _, claimed in claims:
            claimed.callback(Claim(True))

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
            for _, claimed in claims:
                claimed.callback(Claim(True))  # degraded: the local window applies
            return
        groups: dict[int, tuple[list[str], list[tuple[str, Deferred[Claim]]]]] = {}
        for key in records:
            groups.setdefault(self.slot_of(key), ([], []))[0].append(key)
        for key, claimed in claims:
            groups.setdefault(self.slot_of(key), ([], []))[1].append((key, claimed))
        claim_ms = min(CLAIM_TTL_MS, self.age_ms)
        for recorded, claiming in groups.values():
            sent: Deferred[Any] = cmd.eval(
                DEDUP_BATCH_SCRIPT,
                [*recorded, *(key for key, _ in claiming)],
                [claim_ms, self.age_ms, len(recorded), *(records[k] for k in recorded)],
            )
            sent.addCallbacks(
                self._answered, self._failed, callbackArgs=(claiming,), errbackArgs=(cmd, claiming)
            )

    @staticmethod
    def _answered(reply: Any, claiming: list[tuple[str, Deferred[Claim]]]) -> None:
        answers = list(reply or ())
        for index, (_, claimed) in enumerate(claiming):
            claimed.callback(_parse(answers[index]) if index < len(answers) else Claim(True))

    def _failed(
        self, failure: Failure, cmd: Any, claiming: list[tuple[str, Deferred[Claim]]]
    ) -> None:
        self.connections.trouble(cmd, failure)
        for _, claimed in claiming:
            if not claimed.called:
                claimed.callback(Claim(True))  # as if degraded: the local window applies


def _parse(answer: Any) -> Claim:
    if isinstance(answer, int):
        return Claim(True)
    raw = reply_text(answer)[1:]  # '=' .. what another node stored
    if not raw:
        return Claim(False)
    try:
        return Claim(False, Envelope.from_wire(json.loads(raw)))
    except (ValueError, TypeError, ProtocolError):
        return Claim(False)  # unreadable: as if still being handled
