"""``RedisBackend``: the collaborators composed, the lifecycle and the node's health.

Health is proven by a canary: a nonce published through Redis must come back
on this node's own subscriber in time. A tick refreshes the node's liveness
key; finding it gone means Redis lost its data, and every mirror and session
record is restored from what this node holds.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from warpsocket.backends.base import AckListener, AckNotice, Claim, Decided, Delivery, SessionRecord
from warpsocket.backends.redis.acks import Acks
from warpsocket.backends.redis.cluster import ClusterConnections
from warpsocket.backends.redis.connection import Connections, RedisLink
from warpsocket.backends.redis.dedup import Dedup
from warpsocket.backends.redis.keys import Keys
from warpsocket.backends.redis.options import RedisOptions
from warpsocket.backends.redis.presence import Presence
from warpsocket.backends.redis.sessions import Sessions
from warpsocket.backends.redis.slots import key_slot
from warpsocket.backends.redis.streams import RedisStreamStore, Streams
from warpsocket.core.history import HistoryLimits
from warpsocket.core.ids import random_id
from warpsocket.protocol.envelope import Envelope


class RedisBackend:
    """Streams, sessions, dedup and presence in Redis, mirrored where they are read."""

    clustered = True
    log = Logger()

    def __init__(
        self,
        options: RedisOptions,
        limits: HistoryLimits,
        *,
        node: str | None = None,
        reactor: Any = None,
        dedup_age_ms: int = 300_000,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.options = options
        self.limits = limits
        self.node = node or random_id()[:12]
        self.dedup_age_ms = dedup_age_ms
        self.prefix = options.prefix
        cluster = bool(options.cluster)
        self.keys = Keys(self.prefix, cluster=cluster)
        self.stats = {"snapshots": 0, "gaps": 0, "reconnects": 0, "canaries": 0}
        self._timers: list[Any] = []
        connections_class = ClusterConnections if cluster else Connections
        self.connections: RedisLink = connections_class(
            options,
            reactor,
            later=self._later,
            stats=self.stats,
            log=self.log,
            on_message=self._on_message,
            on_connected=self._connected,
            on_lost=self._lost,
        )
        self.streams = Streams(
            self.connections,
            self.keys,
            limits,
            reactor,
            prepare_timeout=options.prepare_timeout,
            health=lambda: self.health,
            stats=self.stats,
            log=self.log,
        )
        self.store = RedisStreamStore(self.streams)
        self.sessions = Sessions(self.connections, self.keys, reactor)
        self.dedup = Dedup(
            self.connections, self.keys, dedup_age_ms, reactor, key_slot if cluster else None
        )
        self.present = Presence(
            self.connections, self.keys, self.node, lambda: self.health, cluster=cluster
        )
        self.canary_channel = self.keys.canary(self.node)
        # One per shard in a Redis Cluster: every shard's subscriber must answer.
        self.canary_channels = [self.canary_channel]
        self._canary_seen: set[str] = set()
        self.acks_channel = self.keys.acks
        self.acks = Acks(self.connections, self.acks_channel, self.log)
        self._canary_ok = False
        self._canary_nonces: list[str] = []
        self._canary_since: float | None = None
        self._canary_failed = False
        # Other channels this node hears (the HTTP API's requests: api.py).
        self._listeners: dict[str, Callable[[str], None]] = {}
        # The liveness keys set so far: the node's own, and in a Redis Cluster
        # one more on every other shard, so that any shard's data loss shows.
        self._node_keys_set: set[str] = set()

    # ------------------------------------------------------------ lifecycle

    @property
    def health(self) -> str | None:
        connections = self.connections
        if not connections.running:
            return "redis backend stopped"
        if connections.cmd is None:
            return f"redis unavailable: {connections.error}"
        if connections.sub is None:
            return "redis subscriber disconnected"
        if not self._canary_ok:
            return "redis canary timed out" if self._canary_failed else "redis canary pending"
        return None

    def start(self) -> Deferred[None]:
        self.connections.start()
        self._schedule_canary()
        return succeed(None)

    def stop(self) -> Deferred[None]:
        self.connections.stop()
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        self._timers.clear()
        self.streams.stop()
        self.dedup.stop()
        return self.connections.close_sentinel()

    def _later(self, delay: float, func: Callable[..., Any], *args: Any) -> None:
        self._timers = [t for t in self._timers if t.active()]
        self._timers.append(self.reactor.callLater(delay, func, *args))

    def _connected(self, kind: str, conn: Any) -> None:
        if kind == "cmd":
            self.sessions.write_again(unsaved_only=True)
            self._check_node_key()
            self.streams.resnapshot_all()
        else:
            self._subscriber_ready(conn)
        self._canary_ok = False
        self._send_canary()

    def _lost(self, kind: str, current: bool) -> None:
        if kind == "sub" and current:
            self.streams.need_snapshots()
        self._canary_ok = False

    def _subscriber_ready(self, conn: Any) -> None:
        # One channel per SUBSCRIBE: txredisapi pairs one reply with each command.
        if hasattr(conn, "canary_channels"):
            self.canary_channels = conn.canary_channels(self.canary_channel)
        self._canary_seen.clear()
        for channel in self.canary_channels:
            subscribed: Deferred[Any] = conn.subscribe(channel)
            subscribed.addCallbacks(lambda _: self._send_canary(), lambda _: None)
        conn.subscribe(self.acks_channel).addErrback(lambda _: None)
        for channel in self._listeners:
            conn.subscribe(channel).addErrback(lambda _: None)
        self.streams.subscribe_all()

    def _on_message(self, channel: Any, message: Any) -> None:
        channel = channel.decode() if isinstance(channel, bytes) else channel
        message = message.decode() if isinstance(message, bytes) else message
        if channel in self.canary_channels:
            if message in self._canary_nonces:
                self._canary_seen.add(channel)
                if len(self._canary_seen) < len(self.canary_channels):
                    return  # another shard's subscriber has not answered yet
                self._canary_seen.clear()
                self._canary_nonces.clear()
                self._canary_since = None
                self._canary_ok = True
                self._canary_failed = False
                self.stats["canaries"] += 1
            return
        if channel == self.acks_channel:
            self.acks.on_message(message)
            return
        listener = self._listeners.get(channel)
        if listener is not None:
            listener(message)
            return
        self.streams.on_message(channel, message)

    def listen(self, channel: str, listener: Callable[[str], None]) -> None:
        """Hand every message on ``channel`` to ``listener`` (subscribed again
        with every new subscriber connection)."""
        self._listeners[channel] = listener
        sub = self.connections.sub
        if sub is not None:
            sub.subscribe(channel).addErrback(lambda _: None)

    # ------------------------------------------------------------ the Backend API

    def set_delivery(self, deliver: Delivery) -> None:
        self.streams.deliver = deliver

    def set_batch(self, batch: Callable[[], AbstractContextManager[None]]) -> None:
        self.connections.batch = batch

    def announce_ack(self, notice: AckNotice) -> None:
        self.acks.announce(notice)

    def set_ack_listener(self, listener: AckListener) -> None:
        self.acks.listener = listener

    def publish(self, key: str, template: Envelope, now_ms: int) -> Deferred[Envelope]:
        return self.streams.publish(key, template, now_ms)

    def prepare(self, keys: Iterable[str]) -> Deferred[None]:
        return self.streams.prepare(keys)

    def release(self, key: str) -> None:
        self.streams.release(key)

    def following(self) -> Iterable[str]:
        return self.streams.following()

    def save_session(self, record: SessionRecord, ttl_ms: int) -> None:
        self.sessions.save(record, ttl_ms)

    def load_session(self, session_id: str) -> Deferred[SessionRecord | None]:
        return self.sessions.load(session_id)

    def claim(self, principal: str, message_id: str, now_ms: int) -> Deferred[Claim]:
        return self.dedup.claim(principal, message_id, now_ms)

    def claim_then(
        self, principal: str, message_id: str, now_ms: int, decided: Decided, context: Any
    ) -> None:
        self.dedup.claim_then(principal, message_id, now_ms, decided, context)

    def unclaim(self, principal: str, message_id: str) -> None:
        """Give up a claim whose message will not be handled here (its connection went)."""
        self.dedup.unclaim(principal, message_id)

    def record(self, principal: str, message_id: str, reply: Envelope) -> None:
        self.dedup.record(principal, message_id, reply)

    def set_presence(self, room: str, session: str, present: bool) -> None:
        self.present.mark(room, session, present)

    def presence(self, room: str) -> Deferred[set[str]] | None:
        return self.present.in_room(room)

    def sessions_of_user(self, user: str) -> Deferred[set[str]] | None:
        return self.present.sessions_of_user(user)

    # ------------------------------------------------------------ time

    def tick(self, now_ms: int) -> None:
        """Refresh this node's liveness key; retry snapshots that failed."""
        self._check_node_key()
        self.sessions.forget_expired()
        self.streams.retry_snapshots()

    def _check_node_key(self) -> None:
        cmd = self.connections.cmd
        if cmd is None:
            return
        own = self.keys.node(self.node)
        names = [own]
        if hasattr(cmd, "shard_names"):
            names += [
                n for n in cmd.shard_names(f"{own}:shard") if cmd.shard_of(n) != cmd.shard_of(own)
            ]
        for name in names:
            self._check_liveness_key(cmd, name)

    def _check_liveness_key(self, cmd: Any, name: str) -> None:
        asked: Deferred[Any] = cmd.execute_command(
            "SET", name, "1", "PX", self.options.node_ttl_ms, "GET"
        )

        def checked(previous: Any) -> None:
            if previous is None and name in self._node_keys_set:
                # Our liveness key vanished before its TTL: Redis lost its
                # data (FLUSHALL, restart without persistence). Every mirror
                # must re-read its stream; a new epoch tells clients.
                self.log.warn("redis data loss detected; re-reading every stream")
                # Before any client can learn a new epoch from a snapshot.
                self.sessions.write_again(unsaved_only=False)
                self.streams.resnapshot_all()
            self._node_keys_set.add(name)

        asked.addCallbacks(checked, lambda f: self.connections.trouble(cmd, f))

    def _schedule_canary(self) -> None:
        if not self.connections.running:
            return
        self._send_canary()
        self._later(self.options.canary_interval, self._schedule_canary)

    def _send_canary(self) -> None:
        """Publish a nonce; health returns only when one comes back on our subscriber."""
        now = self.reactor.seconds()
        since = self._canary_since
        connections = self.connections
        if since is not None and now - since > self.options.canary_timeout:
            # None came back in time: the subscriber may be deaf. Reconnect it.
            self._canary_ok = False
            self._canary_failed = True
            self._canary_since = None
            self._canary_seen.clear()
            self._canary_nonces.clear()
            if connections.sub is not None:
                self.log.warn("redis canary timed out; reconnecting the subscriber")
                connections.drop(connections.sub)
        cmd = connections.cmd
        if cmd is None or connections.sub is None:
            return
        nonce = secrets.token_hex(8)
        self._canary_nonces.append(nonce)
        del self._canary_nonces[:-8]
        if self._canary_since is None:
            self._canary_since = now
        for channel in self.canary_channels:
            cmd.publish(channel, nonce).addErrback(lambda _: None)


def redis_backend_from_options(
    redis_url: str | None,
    sentinels: Sequence[str],
    service: str,
    prefix: str,
    limits: HistoryLimits,
    node: str | None = None,
    cluster: Sequence[str] = (),
) -> RedisBackend:
    options = RedisOptions(
        url=None if sentinels or cluster else redis_url,
        sentinels=tuple(sentinels),
        cluster=tuple(cluster),
        service=service,
        prefix=prefix,
    )
    return RedisBackend(options, limits, node=node)
