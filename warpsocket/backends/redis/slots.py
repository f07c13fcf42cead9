"""Redis Cluster hash slots: CRC16 of a key (or of its hash tag) and the slot map.

A key's slot is ``CRC16(key) mod 16384`` (CRC16-CCITT/XMODEM), computed over
the part between the first ``{`` and the next ``}`` when that part is not
empty (a hash tag), so keys that share a tag share a slot: every key and the
channel of one stream carry the stream's name as their tag.
"""

from __future__ import annotations

import binascii
import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

SLOTS = 16384


def crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM), as Redis Cluster uses; binascii's is in C."""
    return binascii.crc_hqx(data, 0)


def hash_tag(key: bytes) -> bytes:
    """The part of a key that decides its slot."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def key_slot(key: str | bytes) -> int:
    data = key.encode("utf-8") if isinstance(key, str) else key
    return crc16(hash_tag(data)) % SLOTS


Address = tuple[str, int]


@dataclass(frozen=True)
class SlotRange:
    first: int
    last: int
    master: Address


class SlotMap:
    """Which master serves each slot, from ``CLUSTER SLOTS``."""

    def __init__(self, ranges: Iterable[SlotRange]) -> None:
        self.ranges = sorted(ranges, key=lambda r: r.first)
        self._firsts = [r.first for r in self.ranges]
        # Slots moved one by one (MOVED replies) since the map was read.
        self._moved: dict[int, Address] = {}

    @property
    def masters(self) -> list[Address]:
        """Every master that serves a slot, each once, in slot order."""
        seen: dict[Address, None] = {}
        for slot_range in self.ranges:
            seen.setdefault(slot_range.master)
        for address in self._moved.values():
            seen.setdefault(address)
        return list(seen)

    def covers_all(self) -> bool:
        expected = 0
        for slot_range in self.ranges:
            if slot_range.first > expected:
                return False
            expected = max(expected, slot_range.last + 1)
        return expected >= SLOTS

    def master_of(self, slot: int) -> Address | None:
        moved = self._moved.get(slot)
        if moved is not None:
            return moved
        index = bisect.bisect_right(self._firsts, slot) - 1
        if index >= 0:
            slot_range = self.ranges[index]
            if slot_range.first <= slot <= slot_range.last:
                return slot_range.master
        return None

    def move(self, slot: int, master: Address) -> None:
        self._moved[slot] = master


def parse_cluster_slots(reply: Any, default_host: str) -> SlotMap:
    """``CLUSTER SLOTS``: ``[[first, last, [host, port, id, ...], replicas...], ...]``.

    An empty host (a node that does not know its own address) means the one
    we asked. Hostile until parsed: anything malformed raises ValueError.
    """
    if not isinstance(reply, list):
        raise ValueError("CLUSTER SLOTS: not a list")
    ranges = []
    for entry in reply:
        if not isinstance(entry, list) or len(entry) < 3 or not isinstance(entry[2], list):
            raise ValueError("CLUSTER SLOTS: malformed entry")
        first, last = int(entry[0]), int(entry[1])
        node = entry[2]
        if len(node) < 2 or not 0 <= first <= last < SLOTS:
            raise ValueError("CLUSTER SLOTS: malformed range")
        host = node[0].decode() if isinstance(node[0], bytes) else str(node[0] or "")
        port = int(node[1])
        if not 0 < port < 65536:
            raise ValueError("CLUSTER SLOTS: bad port")
        ranges.append(SlotRange(first, last, (host or default_host, port)))
    return SlotMap(ranges)


def parse_redirect(message: str) -> tuple[str, int, Address] | None:
    """``MOVED 3999 127.0.0.1:6381`` or ``ASK ...``: (kind, slot, address)."""
    parts = message.split()
    if len(parts) != 3 or parts[0] not in ("MOVED", "ASK"):
        return None
    host, sep, port = parts[2].rpartition(":")
    if not sep or not port.isdigit() or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1]), (host, int(port))
