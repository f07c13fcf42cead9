"""Small constructors for the envelopes both cores send."""

from __future__ import annotations

from typing import Any

from warpsocket.protocol.codes import ErrorCode
from warpsocket.protocol.envelope import Envelope, MessageType


def error_envelope(
    ident: str, now_ms: int, code: ErrorCode | int, message: str, ref: str | None = None
) -> Envelope:
    code = ErrorCode(code) if code in ErrorCode._value2member_map_ else code
    name = code.wire_name if isinstance(code, ErrorCode) else "error"
    return Envelope(
        type=MessageType.ERROR,
        id=ident,
        timestamp=now_ms,
        code=int(code),
        ref=ref,
        data={"name": name, "message": message},
    )


# (Positional: the envelope's field order, data then ref.)
def ack_envelope(ident: str, now_ms: int, ref: str, data: Any = None) -> Envelope:
    return Envelope(MessageType.ACK, ident, now_ms, data, None, None, None, None, None, False, ref)


def result_envelope(ident: str, now_ms: int, ref: str, data: Any) -> Envelope:
    return Envelope(
        MessageType.RESULT, ident, now_ms, data, None, None, None, None, None, False, ref
    )


def heartbeat_envelope(ident: str, now_ms: int, ref: str | None = None) -> Envelope:
    return Envelope(type=MessageType.HEARTBEAT, id=ident, timestamp=now_ms, ref=ref)
