"""Cluster backends: where streams, sessions, dedup records and presence live.

``MemoryBackend`` (the default) keeps everything in this process;
``RedisBackend`` (``warpsocket.backends.redis``) makes many nodes act as one.
"""

from warpsocket.backends.base import (
    Backend,
    BackendUnavailableError,
    Claim,
    SessionRecord,
)
from warpsocket.backends.memory import MemoryBackend

__all__ = ["Backend", "BackendUnavailableError", "Claim", "MemoryBackend", "SessionRecord"]
