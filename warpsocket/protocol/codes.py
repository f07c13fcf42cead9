"""The one registry of WarpSocket error codes.

The same numbers are used as WebSocket close codes (4000-4999 is the range
RFC 6455 leaves to applications) and as the ``code`` field of ``error``
envelopes, so a client needs a single table. docs/protocol.md lists them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Use(enum.Flag):
    """Where a code may appear on the wire."""

    ERROR = enum.auto()  # in an ``error`` envelope; the connection stays open
    CLOSE = enum.auto()  # as a WebSocket close code; the connection ends
    BOTH = ERROR | CLOSE


@dataclass(frozen=True)
class CodeInfo:
    name: str
    use: Use
    retry: bool  # may the client retry / reconnect after it?
    description: str


class ErrorCode(enum.IntEnum):
    """The one registry of error codes (protocol.md section 10).

    The same numbers are used in ``error`` envelopes and as WebSocket close
    codes. ``code.wire_name`` is the short name (``forbidden``); applications
    raise ``Reject(ErrorCode.FORBIDDEN, ...)`` to refuse with one.
    """

    # 40xx: the frame or envelope itself
    BAD_FRAME = 4000
    BAD_ENVELOPE = 4001
    UNKNOWN_TYPE = 4002
    HELLO_REQUIRED = 4003
    UNSUPPORTED_CODEC = 4004
    MESSAGE_TOO_LARGE = 4005
    BAD_STATE = 4006
    # 41xx: identity and permission
    UNAUTHORIZED = 4100
    TOKEN_EXPIRED = 4101
    FORBIDDEN = 4102
    ORIGIN_REJECTED = 4103
    ADDRESS_REJECTED = 4104
    # 42xx: limits and liveness
    RATE_LIMITED = 4200
    SLOW_CONSUMER = 4201
    TOO_MANY_CONNECTIONS = 4202
    IDLE_TIMEOUT = 4203
    HEARTBEAT_TIMEOUT = 4204
    HANDSHAKE_TIMEOUT = 4205
    QUEUE_FULL = 4206
    # 43xx: the application's answer
    HANDLER_ERROR = 4300
    NO_HANDLER = 4301
    EXPIRED = 4302
    TIMEOUT = 4303
    UNAVAILABLE = 4304
    # 44xx: sessions and streams
    SESSION_REPLACED = 4400
    STREAM_GAP = 4401
    # 45xx: the server itself
    GOING_AWAY = 4500
    INTERNAL_ERROR = 4501
    # 4600-4619: end-to-end encryption and signatures (protocol.md extensions)
    DECRYPT_FAILED = 4600
    BAD_SIGNATURE = 4601
    REPLAYED = 4602
    UNKNOWN_KEY = 4603
    STALE = 4604
    # 4620-4639: the chunked-transfer extension (protocol.md "Extension: chunked transfers")
    TRANSFER_CORRUPT = 4620
    TRANSFER_CANCELLED = 4621
    TRANSFER_UNKNOWN = 4622
    TRANSFER_TOO_LARGE = 4623
    TRANSFER_BUSY = 4624
    TRANSFER_FLOW = 4625
    # 4640-4659: the batch extension (protocol.md "Extension: batches")
    BAD_BATCH = 4640

    @property
    def info(self) -> CodeInfo:
        return CODE_INFO[self]

    @property
    def wire_name(self) -> str:
        return CODE_INFO[self].name


CODE_INFO: dict[ErrorCode, CodeInfo] = {
    ErrorCode.BAD_FRAME: CodeInfo(
        "bad_frame", Use.BOTH, False, "Frame could not be decoded by the negotiated codec."
    ),
    ErrorCode.BAD_ENVELOPE: CodeInfo(
        "bad_envelope", Use.ERROR, False, "Decoded frame is not a valid envelope."
    ),
    ErrorCode.UNKNOWN_TYPE: CodeInfo(
        "unknown_type", Use.ERROR, False, "Envelope type is not known to the receiver."
    ),
    ErrorCode.HELLO_REQUIRED: CodeInfo(
        "hello_required", Use.ERROR, False, "Only `hello` is accepted before `welcome`."
    ),
    ErrorCode.UNSUPPORTED_CODEC: CodeInfo(
        "unsupported_codec", Use.CLOSE, False, "No offered subprotocol is supported."
    ),
    ErrorCode.MESSAGE_TOO_LARGE: CodeInfo(
        "message_too_large", Use.BOTH, False, "Message exceeds the negotiated size limit."
    ),
    ErrorCode.BAD_STATE: CodeInfo(
        "bad_state", Use.ERROR, False, "Envelope is valid but not allowed now (second hello)."
    ),
    ErrorCode.UNAUTHORIZED: CodeInfo(
        "unauthorized", Use.BOTH, False, "Missing, malformed or rejected credentials."
    ),
    ErrorCode.TOKEN_EXPIRED: CodeInfo(
        "token_expired", Use.CLOSE, True, "Token expired and was not refreshed in time."
    ),
    ErrorCode.FORBIDDEN: CodeInfo(
        "forbidden", Use.BOTH, False, "Authenticated, but a policy refused the action."
    ),
    ErrorCode.ORIGIN_REJECTED: CodeInfo(
        "origin_rejected", Use.CLOSE, False, "The Origin header is not allowed."
    ),
    ErrorCode.ADDRESS_REJECTED: CodeInfo(
        "address_rejected", Use.CLOSE, False, "The peer address is not allowed."
    ),
    ErrorCode.RATE_LIMITED: CodeInfo(
        "rate_limited", Use.BOTH, True, "Too many messages or connections per unit of time."
    ),
    ErrorCode.SLOW_CONSUMER: CodeInfo(
        "slow_consumer", Use.CLOSE, True, "Outbound buffer stayed over its bound; resume."
    ),
    ErrorCode.TOO_MANY_CONNECTIONS: CodeInfo(
        "too_many_connections", Use.CLOSE, True, "Connection limit of the node or address hit."
    ),
    ErrorCode.IDLE_TIMEOUT: CodeInfo(
        "idle_timeout", Use.CLOSE, True, "No application traffic for the idle timeout."
    ),
    ErrorCode.HEARTBEAT_TIMEOUT: CodeInfo(
        "heartbeat_timeout", Use.CLOSE, True, "Nothing received from the peer in time."
    ),
    ErrorCode.HANDSHAKE_TIMEOUT: CodeInfo(
        "handshake_timeout", Use.CLOSE, True, "`hello` did not arrive in time."
    ),
    ErrorCode.QUEUE_FULL: CodeInfo(
        "queue_full", Use.ERROR, True, "A bounded queue is full; the message was refused."
    ),
    ErrorCode.HANDLER_ERROR: CodeInfo(
        "handler_error", Use.ERROR, False, "The application handler raised an error."
    ),
    ErrorCode.NO_HANDLER: CodeInfo(
        "no_handler", Use.ERROR, False, "No handler for this event or method."
    ),
    ErrorCode.EXPIRED: CodeInfo(
        "expired", Use.ERROR, False, "The message's TTL elapsed before it was handled."
    ),
    ErrorCode.TIMEOUT: CodeInfo("timeout", Use.ERROR, True, "No answer within the deadline."),
    ErrorCode.UNAVAILABLE: CodeInfo(
        "unavailable", Use.ERROR, True, "A backend the server needs is unavailable."
    ),
    ErrorCode.SESSION_REPLACED: CodeInfo(
        "session_replaced", Use.CLOSE, False, "Another connection resumed this session."
    ),
    ErrorCode.STREAM_GAP: CodeInfo(
        "stream_gap", Use.CLOSE, True, "Client saw an offset gap; it reconnects to resume."
    ),
    ErrorCode.GOING_AWAY: CodeInfo(
        "going_away", Use.CLOSE, True, "Server shutting down; reconnect after the hint."
    ),
    ErrorCode.INTERNAL_ERROR: CodeInfo(
        "internal_error", Use.BOTH, True, "Unexpected server fault."
    ),
    ErrorCode.DECRYPT_FAILED: CodeInfo(
        "decrypt_failed",
        Use.ERROR,
        False,
        "An encrypted payload did not decrypt (tampered or wrong key).",
    ),
    ErrorCode.BAD_SIGNATURE: CodeInfo(
        "bad_signature", Use.ERROR, False, "A signature is missing, malformed or does not verify."
    ),
    ErrorCode.REPLAYED: CodeInfo(
        "replayed", Use.ERROR, False, "A signed envelope was already received within the window."
    ),
    ErrorCode.UNKNOWN_KEY: CodeInfo(
        "unknown_key", Use.ERROR, False, "The key id of a signature or ciphertext is not known."
    ),
    ErrorCode.STALE: CodeInfo(
        "stale", Use.ERROR, False, "A signed envelope's timestamp is outside the replay window."
    ),
    ErrorCode.TRANSFER_CORRUPT: CodeInfo(
        "transfer_corrupt",
        Use.ERROR,
        False,
        "A transfer's SHA-256 did not match, or a chunk failed too often.",
    ),
    ErrorCode.TRANSFER_CANCELLED: CodeInfo(
        "transfer_cancelled", Use.ERROR, False, "The other side cancelled the transfer."
    ),
    ErrorCode.TRANSFER_UNKNOWN: CodeInfo(
        "transfer_unknown", Use.ERROR, False, "No such transfer (never offered, or expired)."
    ),
    ErrorCode.TRANSFER_TOO_LARGE: CodeInfo(
        "transfer_too_large", Use.ERROR, False, "The transfer exceeds the size limit."
    ),
    ErrorCode.TRANSFER_BUSY: CodeInfo(
        "transfer_busy", Use.ERROR, True, "Too many transfers at once, or the spool is full."
    ),
    ErrorCode.TRANSFER_FLOW: CodeInfo(
        "transfer_flow", Use.ERROR, False, "A chunk was sent beyond the credit granted."
    ),
    ErrorCode.BAD_BATCH: CodeInfo(
        "bad_batch", Use.ERROR, False, "A batch breaks the batch extension's rules."
    ),
}


class ProtocolError(Exception):
    """A peer broke the protocol: raised by decoding and validation with the
    ``code`` to report, the ``message`` and the ``ref`` (the offending
    envelope's id, when it could be read)."""

    def __init__(self, code: ErrorCode, message: str, ref: str | None = None) -> None:
        super().__init__(f"{code.wire_name} ({int(code)}): {message}")
        self.code = code
        self.message = message
        self.ref = ref
