"""The in-process backend: one node, no network, every Deferred already fired."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed

from warpsocket.backends.base import (
    FIRST,
    AckListener,
    AckNotice,
    Claim,
    Decided,
    Delivery,
    SessionRecord,
)
from warpsocket.core.history import HistoryLimits
from warpsocket.core.ids import random_id
from warpsocket.core.store import MemoryStreamStore, StreamStore
from warpsocket.protocol.envelope import Envelope


class MemoryBackend:
    """The single-node backend, and the hub's default: no network, no service.

    Streams live in a ``MemoryStreamStore`` bounded by ``limits``
    (``HistoryLimits``); sessions, dedup records and presence stay in the
    node's core. Everything is lost when the process ends: clients then
    resume with ``recovered: false``. Use ``RedisBackend`` for several nodes
    or to survive restarts.
    """

    clustered = False

    def __init__(
        self,
        limits: HistoryLimits | None = None,
        *,
        store: StreamStore | None = None,
        new_epoch: Callable[[], str] | None = None,
    ) -> None:
        self.store: StreamStore = (
            store
            if store is not None
            else MemoryStreamStore(
                limits or HistoryLimits(), new_epoch or (lambda: random_id()[:11])
            )
        )
        self._deliver: Delivery | None = None

    @property
    def health(self) -> str | None:
        return None

    def set_delivery(self, deliver: Delivery) -> None:
        self._deliver = deliver

    def set_batch(self, batch: Callable[[], AbstractContextManager[None]]) -> None:
        pass  # deliveries happen inside the publishing call, and its batch

    def announce_ack(self, notice: AckNotice) -> None:
        pass  # one node: its core settles every acknowledgement itself

    def set_ack_listener(self, listener: AckListener) -> None:
        pass

    def start(self) -> Deferred[None]:
        return succeed(None)

    def stop(self) -> Deferred[None]:
        return succeed(None)

    def publish(self, key: str, template: Envelope, now_ms: int) -> Deferred[Envelope]:
        try:
            stored = self.store.append(key, template, now_ms)
        except Exception:
            return fail()
        if self._deliver is not None:
            self._deliver(key, stored)
        return succeed(stored)

    def prepare(self, keys: Iterable[str]) -> Deferred[None]:
        return succeed(None)

    def release(self, key: str) -> None:
        pass

    def following(self) -> Iterable[str]:
        return ()

    def save_session(self, record: SessionRecord, ttl_ms: int) -> None:
        pass

    def load_session(self, session_id: str) -> Deferred[SessionRecord | None]:
        return succeed(None)

    def claim(self, principal: str, message_id: str, now_ms: int) -> Deferred[Claim]:
        return succeed(FIRST)

    def claim_then(
        self, principal: str, message_id: str, now_ms: int, decided: Decided, context: Any
    ) -> None:
        decided(FIRST, context)  # one node: its own dedup window is the whole truth

    def unclaim(self, principal: str, message_id: str) -> None:
        pass

    def record(self, principal: str, message_id: str, reply: Envelope) -> None:
        pass

    def set_presence(self, room: str, session: str, present: bool) -> None:
        pass

    def presence(self, room: str) -> Deferred[set[str]] | None:
        return None

    def sessions_of_user(self, user: str) -> Deferred[set[str]] | None:
        return None

    def tick(self, now_ms: int) -> None:
        pass
