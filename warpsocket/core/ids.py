"""Envelope ids: unique per sender (protocol.md section 2)."""

from __future__ import annotations

import base64
import itertools
import os
import threading
from collections.abc import Callable


class RandomPool:
    """``os.urandom``, read a block at a time: one ``getrandom`` system call
    per ``block`` bytes instead of one per id. A new connection draws three
    values (its session id, resume token and ``direct`` stream's epoch); a
    system call each was a tenth of the kernel's time per connection.

    The bytes are the kernel's CSPRNG's, each handed out once: a lock for
    threads, and a child process after ``fork`` drops what its parent read
    (it must never hand out the same secrets). Requests over ``block`` go to
    the kernel directly.
    """

    def __init__(self, block: int = 4096, source: Callable[[int], bytes] = os.urandom) -> None:
        self._block = block
        self._source = source
        self._buffer = b""
        self._at = 0
        self._lock = threading.Lock()

    def __call__(self, size: int) -> bytes:
        if size > self._block:
            return self._source(size)
        with self._lock:
            at = self._at
            if at + size > len(self._buffer):
                self._buffer, at = self._source(self._block), 0
            self._at = at + size
            return self._buffer[at : at + size]

    def forget(self) -> None:
        """Drop the bytes read so far (after a fork, in the child)."""
        self._buffer, self._at = b"", 0
        self._lock = threading.Lock()


RANDOM = RandomPool()
os.register_at_fork(after_in_child=RANDOM.forget)


def random_id(random_bytes: Callable[[int], bytes] = RANDOM) -> str:
    """128 random bits as 22 base64url characters: what clients send."""
    return base64.urlsafe_b64encode(random_bytes(16)).rstrip(b"=").decode("ascii")


def random_token(size: int = 32, random_bytes: Callable[[int], bytes] = RANDOM) -> str:
    """``size`` random bytes in base64url without padding (32: 43 characters,
    as ``secrets.token_urlsafe(32)``)."""
    return base64.urlsafe_b64encode(random_bytes(size)).rstrip(b"=").decode("ascii")


class SequentialIds:
    """``<prefix>-1``, ``<prefix>-2``, ...: cheap ids for a sender with a unique prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self.prefix}-{next(self._counter)}"
