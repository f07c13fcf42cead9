"""The message rate of one connection: a token bucket, and flood handling.

Every message costs a token, and so does every frame that is not one
(ping, pong, fragment), or those would be a flood the rate never sees.
Over the rate a message is refused with 4200 (answered only while the
refused bytes pay for the answers); a client that keeps exceeding it is
closed with 4200 (``Refusals``, docs/security.md "Messages per second").
"""

from __future__ import annotations

from warpsocket.protocol.codes import ErrorCode, ProtocolError
from warpsocket.server.security.gate import Gate
from warpsocket.server.security.guarded import GuardedConnection
from warpsocket.server.security.ratelimit import Refusals, TokenBucket

# The smallest a client frame can be besides its payload: 2 header bytes and
# the 4-byte mask (RFC 6455 5.2). What a refused frame "paid" (Refusals).
FRAME_OVERHEAD = 6


class MessageRate(TokenBucket):
    """The connection's token bucket itself (one object per connection, not two)."""

    __slots__ = ("connection", "gate", "refusals")

    def __init__(self, connection: GuardedConnection, gate: Gate) -> None:
        options = gate.options
        super().__init__(options.message_rate, options.message_bucket, gate.now())
        self.connection = connection
        self.gate = gate
        # (Made at the first refusal: most connections never see one.)
        self.refusals: Refusals | None = None

    def allow(self, payload: bytes, is_binary: bool) -> bool:
        """A token for a message; else refuse it with 4200 (False)."""
        if self.take(self.gate.now()):
            return True  # (the common case, without a call more per message)
        self._refused(len(payload))
        refusals = self.refusals
        connection = self.connection
        if connection.can_send and refusals is not None and refusals.may_reply():
            # (Decoded for its id only when answered: a flood costs no decode.)
            refusals.replied(
                connection.send_error(
                    ErrorCode.RATE_LIMITED, "too many messages", self._peek_id(payload, is_binary)
                )
            )
        return False

    def charge(self, size: int) -> bool:
        """One token, for a frame that is not a whole message (ping, pong,
        fragment). False if over the rate."""
        if self.take(self.gate.now()):
            return True
        self._refused(size)
        return False

    def _refused(self, size: int) -> None:
        """Count a refusal of ``size`` payload bytes; close 4200 if they persist."""
        self.gate.metrics.rate_limited.labels("message").inc()
        refusals = self.refusals
        if refusals is None:
            refusals = self.refusals = Refusals(self.burst, self.burst / self.rate)
        if refusals.refused(self.gate.now(), size + FRAME_OVERHEAD) and self.connection.can_send:
            # Another whole burst refused, without pausing: not slowing down.
            self.connection.close_with(ErrorCode.RATE_LIMITED)

    def _peek_id(self, payload: bytes, is_binary: bool) -> str | None:
        try:
            return self.connection.codec.decode(payload, is_binary).id
        except ProtocolError:
            return None
