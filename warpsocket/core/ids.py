"""Envelope ids: unique per sender (protocol.md section 2)."""

from __future__ import annotations

import base64
import itertools
import os
from collections.abc import Callable


def random_id(random_bytes: Callable[[int], bytes] = os.urandom) -> str:
    """128 random bits as 22 base64url characters: what clients send."""
    return base64.urlsafe_b64encode(random_bytes(16)).rstrip(b"=").decode("ascii")


class SequentialIds:
    """``<prefix>-1``, ``<prefix>-2``, ...: cheap ids for a sender with a unique prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self.prefix}-{next(self._counter)}"
