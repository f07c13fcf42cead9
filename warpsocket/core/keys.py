"""Stream keys: the one place that knows how streams are named.

Internally a stream is keyed ``direct:<session>``, ``broadcast`` or
``room:<name>``; on the wire every session's own stream is called ``direct``
(protocol.md 5.1).
"""

from __future__ import annotations

BROADCAST = "broadcast"
DIRECT = "direct"
ROOM_PREFIX = "room:"
DIRECT_PREFIX = "direct:"


def room_key(room: str) -> str:
    return ROOM_PREFIX + room


def direct_key(session_id: str) -> str:
    return DIRECT_PREFIX + session_id


def wire_name(key: str) -> str:
    """The stream name a client sees for an internal key."""
    return DIRECT if key.startswith(DIRECT_PREFIX) else key


__all__ = [
    "BROADCAST",
    "DIRECT",
    "DIRECT_PREFIX",
    "ROOM_PREFIX",
    "direct_key",
    "room_key",
    "wire_name",
]
