"""``Idempotency-Key`` for the HTTP API: a retried POST is answered, not done again.

The first request with a key runs; its answer is remembered when it means
something was stored (the caller says so), and a retry with the same key and
the same body within ``max_age`` seconds gets that answer back. A retry
while the first is still running, or with another body, is refused.
``IdempotencyCache`` keeps them on this node, bounded in count and age, on
the hub's clock; clustered over Redis, ``cluster_parts`` gives the shared
store instead (backends/redis/api.py: ``SET NX`` with a TTL), so a retry
that lands on another node is answered too.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime

MAX_KEY_LENGTH = 128
MAX_AGE = 86_400.0  # seconds an answer is remembered
# Seconds a shared record of a request that never finished (its node died)
# blocks its key: longer than any request may wait for an ack.
RUNNING_TTL = 360.0


@dataclass
class Entry:
    fingerprint: bytes
    created: float
    status: int | None = None  # None while the first request runs
    body: bytes = b""


class IdempotencyError(Exception):
    """The key cannot be used for this request (``why`` says which way)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class IdempotencyCache:
    def __init__(
        self, clock: IReactorTime, max_entries: int = 10_000, max_age: float = MAX_AGE
    ) -> None:
        self.clock = clock
        self.max_entries = max_entries
        self.max_age = max_age
        self._entries: OrderedDict[tuple[bytes, bytes], Entry] = OrderedDict()

    @staticmethod
    def valid_key(key: bytes) -> bool:
        return 0 < len(key) <= MAX_KEY_LENGTH and all(0x21 <= byte <= 0x7E for byte in key)

    def begin(self, route: bytes, key: bytes, body: bytes) -> Entry | None:
        """The remembered answer of an earlier request with ``key``, or None
        when this request is the first (it then runs and must ``finish``)."""
        self._expire()
        fingerprint = hashlib.sha256(body).digest()
        found = self._entries.get((route, key))
        if found is not None:
            if found.fingerprint != fingerprint:
                raise IdempotencyError("the key was used with another body")
            if found.status is None:
                raise IdempotencyError("a request with this key is still running")
            return found
        self._entries[(route, key)] = Entry(fingerprint, self.clock.seconds())
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return None

    def finish(self, route: bytes, key: bytes, status: int, body: bytes, stored: bool) -> None:
        """The first request's answer: remembered when something was
        ``stored`` (a retry must not store it again); otherwise nothing
        happened and the key is freed for a retry."""
        entry = self._entries.get((route, key))
        if entry is None or entry.status is not None:
            return
        if stored:
            entry.status, entry.body = status, body
        else:
            del self._entries[(route, key)]

    def _expire(self) -> None:
        oldest = self.clock.seconds() - self.max_age
        while self._entries:
            entry = next(iter(self._entries.values()))
            if entry.created > oldest:
                break
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def cluster_parts(hub: Any) -> tuple[Any, Any]:
    """(``NodeRequests``, ``SharedIdempotency``) when the hub's backend is
    Redis (the HTTP API then reaches sessions on every node); else (None, None)."""
    backend = hub.backend
    listen = getattr(backend, "listen", None)
    if not backend.clustered or listen is None:
        return None, None
    from warpsocket.backends.redis.api import NodeRequests, SharedIdempotency

    requests = NodeRequests(backend.connections, backend.prefix, backend.node, hub.reactor)
    listen(requests.channel, requests.on_request)
    listen(requests.replies, requests.on_reply)
    shared = SharedIdempotency(backend.connections, backend.prefix, MAX_AGE, RUNNING_TTL)
    return requests, shared
