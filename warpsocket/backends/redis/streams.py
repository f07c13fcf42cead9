"""The streams a node follows: mirrors of Redis streams, kept whole.

Each followed stream has a ``Mirror`` the core reads synchronously, loaded
from a snapshot once its channel is subscribed and fed by pub/sub after
that; a gap, an epoch change or a subscriber reconnect is healed from a
snapshot first. Local members get the messages in offset order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from warpsocket.backends.base import BackendUnavailableError, Delivery
from warpsocket.backends.redis.connection import RedisLink, reply_text
from warpsocket.backends.redis.keys import Keys
from warpsocket.backends.redis.mirror import Mirror, decode_entry, encode_entry
from warpsocket.backends.redis.scripts import (
    PUBLISH_SCRIPT,
    PUBLISH_SCRIPT_SHARDED,
    SNAPSHOT_SCRIPT,
    STREAM_META_TTL_MS,
)
from warpsocket.core.history import HistoryLimits, Position
from warpsocket.core.ids import random_id
from warpsocket.core.keys import wire_name
from warpsocket.protocol.envelope import Envelope


class Streams:
    def __init__(
        self,
        connections: RedisLink,
        keys: Keys,
        limits: HistoryLimits,
        reactor: Any,
        *,
        prepare_timeout: float,
        health: Callable[[], str | None],
        stats: dict[str, int],
        log: Logger,
    ) -> None:
        self.connections = connections
        self.keys = keys
        self.limits = limits
        self.reactor = reactor
        self.prepare_timeout = prepare_timeout
        self._health = health
        self._stats = stats
        self._log = log
        self.deliver: Delivery | None = None
        self.mirrors: dict[str, Mirror] = {}
        self._channels: dict[str, str] = {}  # channel -> key
        self._snapshots: dict[str, Deferred[None]] = {}
        self._waiting: dict[str, list[Deferred[None]]] = {}
        # Streams a ``prepare`` is warming, ready ones included: kept followed
        # until the caller has read them (``release`` leaves them alone).
        self._pinned: dict[str, int] = {}

    def stop(self) -> None:
        for waiters in self._waiting.values():
            for waiter in waiters:
                if not waiter.called:
                    waiter.errback(BackendUnavailableError("redis backend stopped"))
        self._waiting.clear()
        self._pinned.clear()

    # ------------------------------------------------------------ publish

    def publish(self, key: str, template: Envelope, now_ms: int) -> Deferred[Envelope]:
        cmd = self.connections.cmd
        if cmd is None:
            return fail(BackendUnavailableError(f"cannot publish: {self._health()}"))
        try:
            body = encode_entry(template)
        except (TypeError, ValueError):
            return fail()
        keys = self.keys
        script, names = PUBLISH_SCRIPT, [keys.meta(key), keys.history(key)]
        if keys.cluster:
            script, names = PUBLISH_SCRIPT_SHARDED, [*names, keys.channel(key)]
        appended: Deferred[Any] = cmd.eval(
            script,
            names,
            [
                _candidate(self.mirrors.get(key)),
                now_ms,
                body,
                self.limits.max_messages,
                self.limits.max_age_ms,
                keys.channel(key),
                STREAM_META_TTL_MS,
            ],
        )

        def stored(reply: Any) -> Envelope:
            return template.evolve(
                stream=wire_name(key), offset=int(reply[0]), epoch=reply_text(reply[1])
            )

        def failed(failure: Failure) -> Failure:
            self.connections.trouble(cmd, failure)
            return Failure(BackendUnavailableError(f"publish failed: {failure.getErrorMessage()}"))

        return appended.addCallbacks(stored, failed)

    # ------------------------------------------------------------ pub/sub

    def subscribe_all(self) -> None:
        """A new subscriber connection: follow every mirrored stream on it."""
        for key in list(self.mirrors):
            self._subscribe(key)

    def _subscribe(self, key: str) -> Deferred[None]:
        channel = self.keys.channel(key)
        self._channels[channel] = key
        sub = self.connections.sub
        if sub is None:
            return fail(BackendUnavailableError("redis subscriber disconnected"))

        def subscribed(_: object) -> None:
            mirror = self.mirrors.get(key)
            if mirror is not None and self.connections.sub is sub:
                mirror.needs_snapshot = True
                self.snapshot(key)

        done: Deferred[None] = sub.subscribe(channel)
        return done.addCallback(subscribed)

    def on_message(self, channel: str, message: str) -> None:
        """An append published on a stream's channel: ``epoch|entry``."""
        key = self._channels.get(channel)
        mirror = self.mirrors.get(key) if key is not None else None
        if key is None or mirror is None:
            return
        try:
            epoch, entry = message.split("|", 1)
            appended_at, envelope = decode_entry(entry, wire_name(key), epoch)
        except (ValueError, TypeError):
            self._log.failure("bad stream entry on {channel}", channel=channel)
            return
        fresh = mirror.apply(appended_at, envelope)
        if fresh is None:
            self._stats["gaps"] += 1
            self.snapshot(key)
            return
        self._hand_over(key, fresh)

    def _hand_over(self, key: str, messages: list[Envelope]) -> None:
        if self.deliver is None:
            return
        for stored in messages:
            try:
                self.deliver(key, stored)
            except Exception:
                self._log.failure("delivery of {key} failed", key=key)

    # ------------------------------------------------------------ mirrors

    def mirror(self, key: str) -> Mirror:
        mirror = self.mirrors.get(key)
        if mirror is None:
            # Read before it was prepared: only a stream this node creates (a
            # new session's direct stream). Its epoch is proposed here and
            # confirmed (HSETNX) by the snapshot that follows.
            mirror = Mirror(self.limits, epoch=random_id()[:11])
            self.mirrors[key] = mirror
            self._announce_epoch(key, mirror)
            self._follow(key)
        return mirror

    def _announce_epoch(self, key: str, mirror: Mirror) -> None:
        """Write a new stream's epoch at once, without waiting for the subscriber.

        The welcome that names it is on its way; if this node dies before its
        first snapshot, the node where the client resumes must find the same
        epoch, or the client would be told of a loss that did not happen.
        """
        cmd = self.connections.cmd
        if cmd is None:
            return
        meta = self.keys.meta(key)

        def stored(_: object) -> Deferred[Any]:
            # Redis holds it now: if it is ever missing, Redis lost it, and the
            # stream must not be created again under the same epoch.
            mirror.announced = True
            expiring: Deferred[Any] = cmd.execute_command("PEXPIRE", meta, STREAM_META_TTL_MS)
            return expiring

        written: Deferred[Any] = cmd.execute_command("HSETNX", meta, "epoch", mirror.epoch or "")
        written.addCallback(stored)
        written.addErrback(lambda _: None)

    def _follow(self, key: str) -> None:
        if self.connections.sub is not None:
            self._subscribe(key).addErrback(lambda _: None)
        else:
            self._channels[self.keys.channel(key)] = key

    def snapshot(self, key: str) -> Deferred[None]:
        running = self._snapshots.get(key)
        if running is not None:
            return running
        mirror = self.mirrors.get(key)
        cmd = self.connections.cmd
        if mirror is None or cmd is None:
            return succeed(None)  # retried on reconnect and on tick
        asked: Deferred[Any] = cmd.eval(
            SNAPSHOT_SCRIPT,
            [self.keys.meta(key), self.keys.history(key)],
            [_candidate(mirror), STREAM_META_TTL_MS],
        )

        def loaded(reply: Any) -> None:
            self._snapshots.pop(key, None)
            current = self.mirrors.get(key)
            if current is not mirror:
                return
            epoch, last, raw_entries = reply_text(reply[0]), int(reply[1]), reply[2] or []
            self._stats["snapshots"] += 1
            name = wire_name(key)
            entries = [decode_entry(raw, name, epoch) for raw in raw_entries]
            fresh = mirror.load(epoch, last, entries)
            self._wake(key)
            self._hand_over(key, fresh)

        def failed(failure: Failure) -> Failure:
            self._snapshots.pop(key, None)
            self.connections.trouble(cmd, failure)
            return failure

        done: Deferred[None] = asked.addCallbacks(loaded, failed)
        self._snapshots[key] = done
        done.addErrback(lambda _: None)
        return done

    def resnapshot_all(self) -> None:
        for key, mirror in list(self.mirrors.items()):
            mirror.needs_snapshot = True
            self.snapshot(key)

    def need_snapshots(self) -> None:
        """The subscriber was lost: what pub/sub carried meanwhile must come from snapshots."""
        for mirror in self.mirrors.values():
            mirror.needs_snapshot = True

    def retry_snapshots(self) -> None:
        """Snapshot again the mirrors whose snapshot failed or was skipped."""
        if self.connections.cmd is not None:
            for key, mirror in list(self.mirrors.items()):
                if mirror.needs_snapshot and self.connections.sub is not None:
                    self.snapshot(key)

    def _wake(self, key: str) -> None:
        for waiter in self._waiting.pop(key, []):
            if not waiter.called:
                waiter.callback(None)

    # ------------------------------------------------------------ warming

    def prepare(self, keys: Iterable[str]) -> Deferred[None]:
        keys = list(keys)
        waits: list[Deferred[None]] = []
        for key in keys:
            mirror = self.mirrors.get(key)
            if mirror is None:
                mirror = Mirror(self.limits)
                self.mirrors[key] = mirror
                self._follow(key)
            if mirror.ready:
                continue
            waiter: Deferred[None] = Deferred()
            self._waiting.setdefault(key, []).append(waiter)
            waits.append(waiter)
        if not waits:
            return succeed(None)
        if self.connections.cmd is None:
            for waiter in waits:
                self._unwait(waiter)
            return fail(BackendUnavailableError(self._health() or "redis unavailable"))
        all_ready: Deferred[None] = Deferred()
        remaining = [len(waits)]
        # The streams that are ready already must still be followed when the
        # last one is: a tick in between would stop following those nobody
        # reads yet, and the caller would then read a stream this node no
        # longer mirrors (a made-up epoch: a spurious ``recovered: false``).
        self._pin(keys)
        pinned = [True]

        def unpin() -> None:
            if pinned[0]:
                pinned[0] = False
                self._unpin(keys)

        def one(_: object) -> None:
            remaining[0] -= 1
            if remaining[0] == 0 and not all_ready.called:
                timer.cancel()
                try:
                    # The caller reads the streams synchronously, in this callback.
                    all_ready.callback(None)
                finally:
                    unpin()

        def give_up() -> None:
            for waiter in waits:
                self._unwait(waiter)
            unpin()
            if not all_ready.called:
                all_ready.errback(BackendUnavailableError("redis did not answer in time"))

        timer = self.reactor.callLater(self.prepare_timeout, give_up)
        for waiter in waits:
            waiter.addCallbacks(one, lambda _: None)
        return all_ready

    def _unwait(self, waiter: Deferred[None]) -> None:
        for waiters in self._waiting.values():
            if waiter in waiters:
                waiters.remove(waiter)

    def _pin(self, keys: list[str]) -> None:
        for key in keys:
            self._pinned[key] = self._pinned.get(key, 0) + 1

    def _unpin(self, keys: list[str]) -> None:
        for key in keys:
            left = self._pinned.get(key, 0) - 1
            if left > 0:
                self._pinned[key] = left
            else:
                self._pinned.pop(key, None)

    def release(self, key: str) -> None:
        if key in self._waiting or key in self._pinned or key not in self.mirrors:
            return
        del self.mirrors[key]
        channel = self.keys.channel(key)
        self._channels.pop(channel, None)
        sub = self.connections.sub
        if sub is not None:
            sub.unsubscribe(channel).addErrback(lambda _: None)

    def following(self) -> Iterable[str]:
        return list(self.mirrors)


class RedisStreamStore:
    """The core's synchronous view: the node's mirrors of Redis streams."""

    def __init__(self, streams: Streams) -> None:
        self._streams = streams

    def position(self, key: str) -> Position:
        return self._streams.mirror(key).position

    def read_after(self, key: str, position: Position, now_ms: int) -> list[Envelope] | None:
        return self._streams.mirror(key).read_after(position, now_ms)

    def append(self, key: str, template: Envelope, now_ms: int) -> Envelope:
        raise RuntimeError("Redis streams are appended through RedisBackend.publish")

    def drop(self, key: str) -> None:
        # A session expired on this node; its stream lives on in Redis (the
        # session may have moved to another node) until Redis expires it.
        self._streams.release(key)


def _candidate(mirror: Mirror | None) -> str:
    """The epoch to create a stream with if Redis has none: the one this node
    proposed for a stream it created (a new session's direct stream) while
    Redis never held it (the announce did not reach it), otherwise a fresh
    one, so that lost Redis data always shows as a new epoch."""
    if mirror is not None and not mirror.loaded and not mirror.announced and mirror.epoch:
        return mirror.epoch
    return random_id()[:11]
