"""Stored message payloads kept as their encoded bytes (protocol.md 5.4).

A decoded payload can cost ~70 times its wire size (a msgpack array of empty
maps becomes as many Python dicts), so a stream history that kept decoded
objects would be bounded by message count but not by memory. A history keeps
each payload as compact JSON instead, which the JSON codec splices into the
frame unchanged and every other codec decodes on demand.
"""

from __future__ import annotations

import json
from typing import Any

from warpsocket.protocol.jsontext import compact


class CompactData:
    """A payload held as compact UTF-8 JSON; ``value`` decodes a fresh copy."""

    __slots__ = ("json",)

    def __init__(self, encoded: bytes) -> None:
        self.json = encoded

    @classmethod
    def of(cls, value: Any) -> Any:
        """Containers become ``CompactData``; scalars stay as they are (already small)."""
        if isinstance(value, (dict, list, tuple)):
            return cls(compact(value).encode("utf-8"))
        return value

    @property
    def value(self) -> Any:
        return json.loads(self.json)

    @property
    def size(self) -> int:
        return len(self.json)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CompactData):
            return self.json == other.json
        return bool(self.value == other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"CompactData({self.json[:60]!r}{'...' if len(self.json) > 60 else ''})"


def plain(value: Any) -> Any:
    """``value`` with a ``CompactData`` payload decoded (for application code)."""
    return value.value if isinstance(value, CompactData) else value


def payload_size(value: Any) -> int:
    """Roughly what a stored payload costs in memory, in bytes."""
    if isinstance(value, CompactData):
        return len(value.json) + 56
    if isinstance(value, str):
        return len(value) + 56
    return 32
