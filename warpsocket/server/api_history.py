"""``GET /api/history/<stream>``: a stream's kept events after an offset.

The same history a resuming client replays (protocol.md section 5): events
in offset order, each with its offset, the stream's epoch, placeholders
(an expired or unencodable message) shown as such. When the history no
longer holds every event after ``after`` (or ``epoch`` is not the
stream's), the answer is ``4401 stream_gap``, never a silent gap.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from warpsocket.core.history import Position
from warpsocket.core.keys import BROADCAST, DIRECT_PREFIX, ROOM_PREFIX
from warpsocket.protocol.codes import ErrorCode
from warpsocket.protocol.compact import plain
from warpsocket.protocol.envelope import MAX_NAME_LENGTH, Envelope
from warpsocket.server.hub import Hub

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


class HistoryError(Exception):
    def __init__(self, status: int, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def stream_key(stream: str) -> str:
    """The stream's key: ``room:<name>``, ``broadcast`` or ``direct:<session>``."""
    if stream == BROADCAST:
        return stream
    for prefix in (ROOM_PREFIX, DIRECT_PREFIX):
        if stream.startswith(prefix) and 0 < len(stream) - len(prefix) <= MAX_NAME_LENGTH:
            return stream
    raise HistoryError(
        400,
        ErrorCode.BAD_ENVELOPE,
        "the stream is room:<name>, broadcast or direct:<session>",
    )


def read_history(
    hub: Hub, stream: str, after: int, limit: int, epoch: str | None
) -> Deferred[dict[str, Any]]:
    key = stream_key(stream)

    def read(_: object) -> dict[str, Any]:
        store = hub.store
        position = store.position(key)
        if epoch is not None and epoch != position.epoch:
            raise HistoryError(
                410,
                ErrorCode.STREAM_GAP,
                f"epoch {epoch!r} is gone: the stream is now epoch {position.epoch!r}",
            )
        if after > position.offset:
            raise HistoryError(
                400,
                ErrorCode.BAD_ENVELOPE,
                f"`after` is past the stream's last offset ({position.offset})",
            )
        found = store.read_after(key, Position(after, position.epoch), hub.now_ms())
        if found is None:
            raise HistoryError(
                410,
                ErrorCode.STREAM_GAP,
                f"the history no longer holds every event after offset {after}",
            )
        events = found[:limit]
        return {
            "stream": stream,
            "epoch": position.epoch,
            "last": position.offset,
            "events": [_event(envelope) for envelope in events],
            "more": len(found) > limit,
        }

    return hub.backend.prepare([key]).addCallback(read)


def _event(envelope: Envelope) -> dict[str, Any]:
    event: dict[str, Any] = {
        "offset": envelope.offset,
        "id": envelope.id,
        "timestamp": envelope.timestamp,
    }
    if envelope.code is not None:
        # A placeholder keeps the offset, not the payload (protocol.md 5.2).
        try:
            event["placeholder"] = ErrorCode(envelope.code).wire_name
        except ValueError:
            event["placeholder"] = "unavailable"
        event["code"] = envelope.code
        return event
    event["event"] = envelope.event
    event["data"] = plain(envelope.data)
    if envelope.ttl is not None:
        event["ttl"] = envelope.ttl / 1000  # seconds, as /api/publish takes it
    if envelope.ack:
        event["ack"] = True
    return event
