"""Shared dedup records: which node handles a client message id, and its reply."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, succeed

from warpsocket.backends.base import Claim
from warpsocket.backends.redis.connection import Connections, reply_text
from warpsocket.backends.redis.keys import Keys
from warpsocket.backends.redis.scripts import CLAIM_SCRIPT, CLAIM_TTL_MS, UNCLAIM_SCRIPT
from warpsocket.protocol.envelope import Envelope


class Dedup:
    def __init__(self, connections: Connections, keys: Keys, age_ms: int) -> None:
        self.connections = connections
        self.keys = keys
        self.age_ms = age_ms

    def claim(self, principal: str, message_id: str, now_ms: int) -> Deferred[Claim]:
        cmd = self.connections.cmd
        if cmd is None:
            # Degraded: the node's own dedup window still applies.
            return succeed(Claim(True))

        def parse(reply: Any) -> Claim:
            if int(reply[0]) == 1:
                return Claim(True)
            raw = reply_text(reply[1]) if len(reply) > 1 and reply[1] is not None else ""
            if not raw:
                return Claim(False)
            return Claim(False, Envelope.from_wire(json.loads(raw)))

        claimed: Deferred[Any] = cmd.eval(
            CLAIM_SCRIPT,
            [self.keys.dedup(principal, message_id)],
            [min(CLAIM_TTL_MS, self.age_ms)],
        )
        return claimed.addCallback(parse).addErrback(lambda _: Claim(True))

    def unclaim(self, principal: str, message_id: str) -> None:
        """Give up a claim whose message will not be handled here (its connection went)."""
        cmd = self.connections.cmd
        if cmd is not None:
            cmd.eval(UNCLAIM_SCRIPT, [self.keys.dedup(principal, message_id)], []).addErrback(
                lambda _: None
            )

    def record(self, principal: str, message_id: str, reply: Envelope) -> None:
        cmd = self.connections.cmd
        if cmd is None:
            return
        value = json.dumps(reply.to_wire(), separators=(",", ":"), ensure_ascii=False)
        cmd.set(self.keys.dedup(principal, message_id), value, pexpire=self.age_ms).addErrback(
            lambda _: None
        )
