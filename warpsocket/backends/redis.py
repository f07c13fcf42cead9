"""The Redis backend: many nodes act as one (docs/cluster.md).

- Streams live in Redis: a hash ``<p>s:<key>`` (``epoch``, ``last``) and a
  list ``<p>l:<key>`` of ``offset|appended_at_ms|json``, appended atomically
  by a Lua script that also publishes ``epoch|entry`` on ``<p>c:<key>``.
- Each node mirrors the streams its local sessions read (``RedisStreamStore``)
  and delivers to its local members from pub/sub, in offset order; a gap, an
  epoch change or a subscriber reconnect is healed from a snapshot first.
- Sessions, shared dedup records, presence and node liveness are plain keys.
- Health is proven by a canary: a nonce published through Redis must come
  back on this node's own subscriber in time.
"""

from __future__ import annotations

import json
import secrets
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import txredisapi
from twisted.internet import protocol, ssl
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from warpsocket.backends.base import (
    AckListener,
    AckNotice,
    BackendUnavailableError,
    Claim,
    Delivery,
    SessionRecord,
)
from warpsocket.backends.redis_mirror import Mirror, decode_entry, encode_entry
from warpsocket.core.history import HistoryLimits, Position
from warpsocket.core.ids import random_id
from warpsocket.core.store import wire_name
from warpsocket.protocol.envelope import Envelope

PUBLISH_SCRIPT = """
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local offset = redis.call('HINCRBY', KEYS[1], 'last', 1)
local entry = offset .. '|' .. ARGV[2] .. '|' .. ARGV[3]
redis.call('RPUSH', KEYS[2], entry)
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[4]), -1)
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('PUBLISH', ARGV[6], epoch .. '|' .. entry)
return {offset, epoch}
"""

SNAPSHOT_SCRIPT = """
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local last = redis.call('HGET', KEYS[1], 'last') or '0'
return {epoch, last, redis.call('LRANGE', KEYS[2], 0, -1)}
"""

# A claim is an empty value that lives only CLAIM_TTL_MS: if the claiming node
# dies before it records the reply, a retry is handled after that, instead of
# being answered by nobody for the whole dedup age. The reply, once recorded,
# lives the dedup age.
CLAIM_TTL_MS = 10_000

CLAIM_SCRIPT = """
if redis.call('SET', KEYS[1], '', 'NX', 'PX', ARGV[1]) then return {1} end
return {0, redis.call('GET', KEYS[1])}
"""

# A session record saved while Redis was unreachable: written unless the one
# in Redis was saved later (the session moved to a node that could reach it).
SESSION_IF_NEWER_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, record = pcall(cjson.decode, current)
  if ok and type(record) == 'table' and tonumber(record['saved_at'] or 0) >= tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"""

UNCLAIM_SCRIPT = """
if redis.call('GET', KEYS[1]) == '' then return redis.call('DEL', KEYS[1]) end
return 0
"""

UNSET_PRESENCE_SCRIPT = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""

# Sessions in a room whose node is alive; entries of dead nodes are removed.
PRESENCE_SCRIPT = """
local all = redis.call('HGETALL', KEYS[1])
local live = {}
local alive = {}
for i = 1, #all, 2 do
  local node = all[i + 1]
  if alive[node] == nil then
    alive[node] = redis.call('EXISTS', ARGV[1] .. node) == 1
  end
  if alive[node] then table.insert(live, all[i])
  else redis.call('HDEL', KEYS[1], all[i]) end
end
return live
"""

USER_SESSIONS_SCRIPT = """
local ids = redis.call('SMEMBERS', KEYS[1])
local live = {}
for _, id in ipairs(ids) do
  if redis.call('EXISTS', ARGV[1] .. id) == 1 then table.insert(live, id)
  else redis.call('SREM', KEYS[1], id) end
end
return live
"""

STREAM_META_TTL_MS = 7 * 24 * 3600 * 1000


@dataclass(frozen=True)
class RedisOptions:
    """Where Redis is and how this node talks to it.

    Either ``url`` (``redis://[:password@]host:port/db``, ``rediss://`` for
    TLS) or ``sentinels`` (``host:port`` addresses) with ``service``.
    """

    url: str | None = "redis://127.0.0.1:6379/0"
    sentinels: tuple[str, ...] = ()
    service: str = "mymaster"
    prefix: str = "warpsocket:"
    password: str | None = None  # for sentinel setups (the URL carries its own)
    db: int | None = None
    connect_timeout: float = 3.0
    reply_timeout: float = 5.0
    reconnect_delay: float = 0.1
    max_reconnect_delay: float = 2.0
    canary_interval: float = 1.0
    canary_timeout: float = 3.0
    prepare_timeout: float = 5.0
    node_ttl_ms: int = 15_000

    def __post_init__(self) -> None:
        if not self.url and not self.sentinels:
            raise ValueError("give a Redis URL or at least one sentinel")
        if self.url:
            parse_redis_url(self.url)
        for address in self.sentinels:
            _host_port(address)
        for name in ("connect_timeout", "reply_timeout", "canary_interval", "canary_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


@dataclass(frozen=True)
class RedisAddress:
    host: str
    port: int
    db: int
    password: str | None
    tls: bool


def parse_redis_url(url: str) -> RedisAddress:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("redis", "rediss"):
        raise ValueError(f"not a redis:// or rediss:// URL: {url!r}")
    path = parsed.path.strip("/")
    try:
        db = int(path) if path else 0
        port = parsed.port or 6379
    except ValueError as exc:
        raise ValueError(f"bad Redis URL {url!r}: {exc}") from None
    password = urllib.parse.unquote(parsed.password) if parsed.password else None
    host = parsed.hostname or "127.0.0.1"
    return RedisAddress(host, port, db, password, parsed.scheme == "rediss")


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _optional_str(value: object) -> str | None:
    return None if value is None else _str(value)


def _optional_int(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError("expected an integer")
    return value


def _host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected host:port, got {address!r}")
    return host, int(port)


class _Subscriber(txredisapi.SubscriberProtocol):  # type: ignore[misc]
    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        # One read can carry many published messages: deliver them in one
        # batch, so that each member gets their frames in one write.
        with self.factory.batch():
            super().dataReceived(data, unpause)

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        self.factory.on_message(channel, message)


class _Factory(protocol.Factory):
    """Builds one txredisapi protocol; reconnection is the backend's job."""

    isLazy = False
    noisy = False

    def __init__(
        self,
        protocol_class: Any,
        address: RedisAddress,
        reply_timeout: float | None,
        on_message: Callable[[Any, Any], None] | None = None,
        batch: Callable[[], AbstractContextManager[None]] = nullcontext,
    ) -> None:
        self.protocol_class = protocol_class
        self.address = address
        self.reply_timeout = reply_timeout
        self.on_message = on_message
        self.batch = batch
        self.error: str | None = None

    def buildProtocol(self, addr: Any) -> Any:
        built = self.protocol_class(
            "utf-8",
            replyTimeout=self.reply_timeout,
            password=self.address.password,
            dbid=self.address.db or None,
            convertNumbers=False,
        )
        built.factory = self
        return built

    def stopTrying(self) -> None:  # called by txredisapi when AUTH/SELECT fail
        pass

    def connectionError(self, why: str) -> None:
        self.error = why


class RedisStreamStore:
    """The core's synchronous view: the node's mirrors of Redis streams."""

    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend

    def position(self, key: str) -> Position:
        return self._backend._mirror(key).position

    def read_after(self, key: str, position: Position, now_ms: int) -> list[Envelope] | None:
        return self._backend._mirror(key).read_after(position, now_ms)

    def append(self, key: str, template: Envelope, now_ms: int) -> Envelope:
        raise RuntimeError("Redis streams are appended through RedisBackend.publish")

    def drop(self, key: str) -> None:
        # A session expired on this node; its stream lives on in Redis (the
        # session may have moved to another node) until Redis expires it.
        self._backend.release(key)


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
        self.store = RedisStreamStore(self)
        self._deliver: Delivery | None = None
        self._batch: Callable[[], AbstractContextManager[None]] = nullcontext
        self._ack_listener: AckListener | None = None
        self._mirrors: dict[str, Mirror] = {}
        self._channels: dict[str, str] = {}  # channel -> key
        self._snapshots: dict[str, Deferred[None]] = {}
        self._waiting: dict[str, list[Deferred[None]]] = {}
        # Streams a ``prepare`` is warming, ready ones included: kept followed
        # until the caller has read them (``release`` leaves them alone).
        self._pinned: dict[str, int] = {}
        # The last record this node saved of each session, until its TTL: Redis
        # may lose it (restart without persistence) or miss it (down at the time).
        # Oldest save first (the hub's session TTL is one value), so expired
        # entries are dropped from the front.
        self._saved: OrderedDict[str, _SavedSession] = OrderedDict()
        self._cmd: Any = None
        self._sub: Any = None
        self._connecting: set[str] = set()
        self._retry: dict[str, float] = {}
        self._error = "starting"
        self._running = False
        self._canary_ok = False
        self._canary_nonces: list[str] = []
        self._canary_since: float | None = None
        self._canary_failed = False
        self._node_key_set = False
        self._sentinel: Any = None
        self._timers: list[Any] = []
        self.canary_channel = f"{self.prefix}canary:{self.node}"
        # Every node's client acknowledgements, for the nodes that sent the messages.
        self.acks_channel = f"{self.prefix}acks"
        self.stats = {"snapshots": 0, "gaps": 0, "reconnects": 0, "canaries": 0}

    # ------------------------------------------------------------ keys

    def _channel(self, key: str) -> str:
        return f"{self.prefix}c:{key}"

    def _meta_key(self, key: str) -> str:
        return f"{self.prefix}s:{key}"

    def _list_key(self, key: str) -> str:
        return f"{self.prefix}l:{key}"

    def _node_key(self, node: str) -> str:
        return f"{self.prefix}node:{node}"

    def _session_key(self, session_id: str) -> str:
        return f"{self.prefix}session:{session_id}"

    # ------------------------------------------------------------ lifecycle

    @property
    def health(self) -> str | None:
        if not self._running:
            return "redis backend stopped"
        if self._cmd is None:
            return f"redis unavailable: {self._error}"
        if self._sub is None:
            return "redis subscriber disconnected"
        if not self._canary_ok:
            return "redis canary timed out" if self._canary_failed else "redis canary pending"
        return None

    def set_delivery(self, deliver: Delivery) -> None:
        self._deliver = deliver

    def set_batch(self, batch: Callable[[], AbstractContextManager[None]]) -> None:
        self._batch = batch

    def announce_ack(self, notice: AckNotice) -> None:
        cmd = self._cmd
        if cmd is None:
            return  # best effort: the sender's waiter times out
        body = json.dumps(
            {"s": notice.session, "e": notice.epoch, "t": notice.through, "r": notice.ref},
            separators=(",", ":"),
        )
        cmd.publish(self.acks_channel, body).addErrback(lambda _: None)

    def set_ack_listener(self, listener: AckListener) -> None:
        self._ack_listener = listener

    def _on_ack_notice(self, message: str) -> None:
        try:
            raw = json.loads(message)
            notice = AckNotice(
                session=_str(raw["s"]),
                epoch=_optional_str(raw.get("e")),
                through=_optional_int(raw.get("t")),
                ref=_optional_str(raw.get("r")),
            )
        except (ValueError, TypeError, KeyError):
            self.log.warn("bad ack notice on {channel}", channel=self.acks_channel)
            return
        if self._ack_listener is not None:
            self._ack_listener(notice)

    def start(self) -> Deferred[None]:
        self._running = True
        if self.options.sentinels:
            addresses = [_host_port(a) for a in self.options.sentinels]
            self._sentinel = txredisapi.Sentinel(addresses)
        self._connect("cmd")
        self._connect("sub")
        self._schedule_canary()
        return succeed(None)

    def stop(self) -> Deferred[None]:
        self._running = False
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        self._timers.clear()
        for conn in (self._cmd, self._sub):
            if conn is not None and conn.transport is not None:
                conn.transport.abortConnection()
        self._cmd = self._sub = None
        for waiters in self._waiting.values():
            for waiter in waiters:
                if not waiter.called:
                    waiter.errback(BackendUnavailableError("redis backend stopped"))
        self._waiting.clear()
        self._pinned.clear()
        if self._sentinel is not None:
            sentinel, self._sentinel = self._sentinel, None
            done: Deferred[None] = sentinel.disconnect()
            return done.addBoth(lambda _: None)
        return succeed(None)

    def _later(self, delay: float, func: Callable[..., Any], *args: Any) -> None:
        self._timers = [t for t in self._timers if t.active()]
        self._timers.append(self.reactor.callLater(delay, func, *args))

    # ------------------------------------------------------------ connections

    def _address(self) -> Deferred[RedisAddress]:
        options = self.options
        if self._sentinel is None:
            assert options.url is not None
            return succeed(parse_redis_url(options.url))

        def found(addr: tuple[str, int]) -> RedisAddress:
            return RedisAddress(addr[0], int(addr[1]), options.db or 0, options.password, False)

        discovered: Deferred[tuple[str, int]] = self._sentinel.discover_master(options.service)
        return discovered.addCallback(found)

    def _endpoint(self, address: RedisAddress) -> IStreamClientEndpoint:
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            self.reactor, address.host, address.port, timeout=self.options.connect_timeout
        )
        if address.tls:
            endpoint = wrapClientTLS(ssl.optionsForClientTLS(address.host), endpoint)
        return endpoint

    def _connect(self, kind: str) -> None:
        if not self._running or kind in self._connecting:
            return
        self._connecting.add(kind)

        def connect(address: RedisAddress) -> Deferred[Any]:
            if kind == "sub":
                factory = _Factory(
                    _Subscriber, address, None, self._on_message, lambda: self._batch()
                )
            else:
                factory = _Factory(txredisapi.RedisProtocol, address, self.options.reply_timeout)
            connecting: Deferred[Any] = self._endpoint(address).connect(factory)
            timer = self.reactor.callLater(self.options.connect_timeout * 2, connecting.cancel)

            def opened(conn: Any) -> Deferred[Any]:
                ready: Deferred[Any] = conn.whenConnected()
                # AUTH or SELECT failing closes the connection without firing it.
                conn.whenDisconnected().addCallback(
                    lambda _: (
                        None
                        if ready.called
                        else ready.errback(
                            ConnectionError(factory.error or "connection closed during setup")
                        )
                    )
                )
                return ready

            def untime(result: Any) -> Any:
                if timer.active():
                    timer.cancel()
                return result

            return connecting.addCallback(opened).addBoth(untime)

        def connected(conn: Any) -> None:
            self._connecting.discard(kind)
            self._retry.pop(kind, None)
            if not self._running:
                conn.transport.abortConnection()
                return
            conn.whenDisconnected().addCallback(lambda _: self._lost(kind, conn))
            if kind == "cmd":
                self._cmd = conn
                self._error = "ok"
                self._write_sessions(unsaved_only=True)
                self._check_node_key()
                self._resnapshot_all()
            else:
                self._sub = conn
                self._subscriber_ready(conn)
            self._canary_ok = False
            self._send_canary()

        def failed(failure: Failure) -> None:
            self._connecting.discard(kind)
            self._error = failure.getErrorMessage() or repr(failure.value)
            self._backoff(kind)

        self._address().addCallback(connect).addCallbacks(connected, failed)

    def _backoff(self, kind: str) -> None:
        delay = self._retry.get(kind, self.options.reconnect_delay / 2) * 2
        delay = min(delay, self.options.max_reconnect_delay)
        self._retry[kind] = delay
        self._later(delay, self._connect, kind)

    def _lost(self, kind: str, conn: Any) -> None:
        self.stats["reconnects"] += 1
        if kind == "cmd" and self._cmd is conn:
            self._cmd = None
            self._error = "connection lost"
        elif kind == "sub" and self._sub is conn:
            self._sub = None
            # Whatever pub/sub carried while we were away must come from a snapshot.
            for mirror in self._mirrors.values():
                mirror.needs_snapshot = True
        self._canary_ok = False
        if self._running:
            self.log.warn("redis {kind} connection lost; reconnecting", kind=kind)
            self._backoff(kind)

    def _drop(self, conn: Any) -> None:
        if conn is not None and conn.transport is not None:
            conn.transport.abortConnection()

    def _subscriber_ready(self, conn: Any) -> None:
        # One channel per SUBSCRIBE: txredisapi pairs one reply with each command.
        subscribed: Deferred[Any] = conn.subscribe(self.canary_channel)
        subscribed.addCallbacks(lambda _: self._send_canary(), lambda _: None)
        conn.subscribe(self.acks_channel).addErrback(lambda _: None)
        for key in list(self._mirrors):
            self._subscribe(key)

    def _subscribe(self, key: str) -> Deferred[None]:
        channel = self._channel(key)
        self._channels[channel] = key
        sub = self._sub
        if sub is None:
            return fail(BackendUnavailableError("redis subscriber disconnected"))

        def subscribed(_: object) -> None:
            mirror = self._mirrors.get(key)
            if mirror is not None and self._sub is sub:
                mirror.needs_snapshot = True
                self._snapshot(key)

        done: Deferred[None] = sub.subscribe(channel)
        return done.addCallback(subscribed)

    # ------------------------------------------------------------ pub/sub

    def _on_message(self, channel: Any, message: Any) -> None:
        channel = channel.decode() if isinstance(channel, bytes) else channel
        message = message.decode() if isinstance(message, bytes) else message
        if channel == self.canary_channel:
            if message in self._canary_nonces:
                self._canary_nonces.clear()
                self._canary_since = None
                self._canary_ok = True
                self._canary_failed = False
                self.stats["canaries"] += 1
            return
        if channel == self.acks_channel:
            self._on_ack_notice(message)
            return
        key = self._channels.get(channel)
        mirror = self._mirrors.get(key) if key is not None else None
        if key is None or mirror is None:
            return
        try:
            epoch, entry = message.split("|", 1)
            appended_at, envelope = decode_entry(entry, wire_name(key), epoch)
        except (ValueError, TypeError):
            self.log.failure("bad stream entry on {channel}", channel=channel)
            return
        fresh = mirror.apply(appended_at, envelope)
        if fresh is None:
            self.stats["gaps"] += 1
            self._snapshot(key)
            return
        self._hand_over(key, fresh)

    def _hand_over(self, key: str, messages: list[Envelope]) -> None:
        if self._deliver is None:
            return
        for stored in messages:
            try:
                self._deliver(key, stored)
            except Exception:
                self.log.failure("delivery of {key} failed", key=key)

    # ------------------------------------------------------------ mirrors

    def _mirror(self, key: str) -> Mirror:
        mirror = self._mirrors.get(key)
        if mirror is None:
            # Read before it was prepared: only a stream this node creates (a
            # new session's direct stream). Its epoch is proposed here and
            # confirmed (HSETNX) by the snapshot that follows.
            mirror = Mirror(self.limits, epoch=random_id()[:11])
            self._mirrors[key] = mirror
            self._announce_epoch(key, mirror)
            self._follow(key)
        return mirror

    def _announce_epoch(self, key: str, mirror: Mirror) -> None:
        """Write a new stream's epoch at once, without waiting for the subscriber.

        The welcome that names it is on its way; if this node dies before its
        first snapshot, the node where the client resumes must find the same
        epoch, or the client would be told of a loss that did not happen.
        """
        cmd = self._cmd
        if cmd is None:
            return
        meta = self._meta_key(key)

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
        if self._sub is not None:
            self._subscribe(key).addErrback(lambda _: None)
        else:
            self._channels[self._channel(key)] = key

    def _snapshot(self, key: str) -> Deferred[None]:
        running = self._snapshots.get(key)
        if running is not None:
            return running
        mirror = self._mirrors.get(key)
        cmd = self._cmd
        if mirror is None or cmd is None:
            return succeed(None)  # retried on reconnect and on tick
        asked: Deferred[Any] = cmd.eval(
            SNAPSHOT_SCRIPT,
            [self._meta_key(key), self._list_key(key)],
            [_candidate(mirror), STREAM_META_TTL_MS],
        )

        def loaded(reply: Any) -> None:
            self._snapshots.pop(key, None)
            current = self._mirrors.get(key)
            if current is not mirror:
                return
            epoch, last, raw_entries = _text(reply[0]), int(reply[1]), reply[2] or []
            self.stats["snapshots"] += 1
            name = wire_name(key)
            entries = [decode_entry(raw, name, epoch) for raw in raw_entries]
            fresh = mirror.load(epoch, last, entries)
            self._wake(key)
            self._hand_over(key, fresh)

        def failed(failure: Failure) -> Failure:
            self._snapshots.pop(key, None)
            self._connection_trouble(cmd, failure)
            return failure

        done: Deferred[None] = asked.addCallbacks(loaded, failed)
        self._snapshots[key] = done
        done.addErrback(lambda _: None)
        return done

    def _resnapshot_all(self) -> None:
        for key, mirror in list(self._mirrors.items()):
            mirror.needs_snapshot = True
            self._snapshot(key)

    def _wake(self, key: str) -> None:
        for waiter in self._waiting.pop(key, []):
            if not waiter.called:
                waiter.callback(None)

    def prepare(self, keys: Iterable[str]) -> Deferred[None]:
        keys = list(keys)
        waits: list[Deferred[None]] = []
        for key in keys:
            mirror = self._mirrors.get(key)
            if mirror is None:
                mirror = Mirror(self.limits)
                self._mirrors[key] = mirror
                self._follow(key)
            if mirror.ready:
                continue
            waiter: Deferred[None] = Deferred()
            self._waiting.setdefault(key, []).append(waiter)
            waits.append(waiter)
        if not waits:
            return succeed(None)
        if self._cmd is None:
            for waiter in waits:
                self._unwait(waiter)
            return fail(BackendUnavailableError(self.health or "redis unavailable"))
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

        timer = self.reactor.callLater(self.options.prepare_timeout, give_up)
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
        if key in self._waiting or key in self._pinned or key not in self._mirrors:
            return
        del self._mirrors[key]
        channel = self._channel(key)
        self._channels.pop(channel, None)
        if self._sub is not None:
            self._sub.unsubscribe(channel).addErrback(lambda _: None)

    def following(self) -> Iterable[str]:
        return list(self._mirrors)

    # ------------------------------------------------------------ writes

    def _connection_trouble(self, conn: Any, failure: Failure) -> None:
        """A READONLY reply means we talk to a demoted master: reconnect (rediscover)."""
        message = failure.getErrorMessage()
        if "READONLY" in message or "LOADING" in message or failure.check(txredisapi.TimeoutError):
            self._drop(conn)

    def publish(self, key: str, template: Envelope, now_ms: int) -> Deferred[Envelope]:
        cmd = self._cmd
        if cmd is None:
            return fail(BackendUnavailableError(f"cannot publish: {self.health}"))
        try:
            body = encode_entry(template)
        except (TypeError, ValueError):
            return fail()
        appended: Deferred[Any] = cmd.eval(
            PUBLISH_SCRIPT,
            [self._meta_key(key), self._list_key(key)],
            [
                _candidate(self._mirrors.get(key)),
                now_ms,
                body,
                self.limits.max_messages,
                self.limits.max_age_ms,
                self._channel(key),
                STREAM_META_TTL_MS,
            ],
        )

        def stored(reply: Any) -> Envelope:
            return template.evolve(
                stream=wire_name(key), offset=int(reply[0]), epoch=_text(reply[1])
            )

        def failed(failure: Failure) -> Failure:
            self._connection_trouble(cmd, failure)
            return Failure(BackendUnavailableError(f"publish failed: {failure.getErrorMessage()}"))

        return appended.addCallbacks(stored, failed)

    # ------------------------------------------------------------ sessions

    def save_session(self, record: SessionRecord, ttl_ms: int) -> None:
        saved_at = int(self.reactor.seconds() * 1000)
        value = json.dumps(
            {
                "user": record.user,
                "claims": dict(record.claims),
                "rooms": list(record.rooms),
                "starts": {k: [p.offset, p.epoch] for k, p in record.starts.items()},
                "resume_hash": record.resume_hash,
                # Wall-clock ms: which of two nodes' records is newer (nodes'
                # clocks agree, as the cluster's TTLs assume).
                "saved_at": saved_at,
            },
            separators=(",", ":"),
        )
        expires = self.reactor.seconds() + ttl_ms / 1000
        saved = _SavedSession(
            value, record.user, expires, unsaved=self._cmd is None, saved_at=saved_at
        )
        self._saved[record.id] = saved
        self._saved.move_to_end(record.id)
        self._write_session(record.id, saved, only_if_absent=False)

    def _write_session(
        self, session_id: str, saved: _SavedSession, only_if_absent: bool, if_newer: bool = False
    ) -> None:
        cmd = self._cmd
        if cmd is None:
            saved.unsaved = True  # written when Redis is back
            return
        ttl_ms = int((saved.expires - self.reactor.seconds()) * 1000)
        if ttl_ms <= 0:
            self._saved.pop(session_id, None)
            return
        saved.unsaved = False

        def failed(_: Failure) -> None:
            saved.unsaved = True  # the connection died with it: written on reconnect

        key = self._session_key(session_id)
        if if_newer:
            written: Deferred[Any] = cmd.eval(
                SESSION_IF_NEWER_SCRIPT, [key], [saved.value, saved.saved_at, ttl_ms]
            )
        else:
            written = cmd.set(key, saved.value, pexpire=ttl_ms, only_if_not_exists=only_if_absent)
        written.addErrback(failed)
        if saved.user is not None:
            users = f"{self.prefix}user:{saved.user}"
            cmd.sadd(users, session_id).addErrback(lambda _: None)
            cmd.execute_command("PEXPIRE", users, ttl_ms).addErrback(lambda _: None)

    def _write_sessions(self, *, unsaved_only: bool) -> None:
        """Write again the records this node saved that Redis may not hold.

        ``unsaved_only``: those saved while Redis was unreachable (on
        reconnect), unless Redis holds a record saved later (by a node the
        session moved to); otherwise every one, after Redis lost its data,
        without replacing a record another node wrote since (``SET NX``). Until then
        a client whose node dies could only start a new session, told that
        its ``direct`` stream was lost although its history is in Redis.
        """
        now = self.reactor.seconds()
        for session_id, saved in list(self._saved.items()):
            if saved.expires <= now:
                del self._saved[session_id]
            elif saved.unsaved:
                self._write_session(session_id, saved, only_if_absent=False, if_newer=True)
            elif not unsaved_only:
                self._write_session(session_id, saved, only_if_absent=True)

    def load_session(self, session_id: str) -> Deferred[SessionRecord | None]:
        cmd = self._cmd
        if cmd is None:
            return succeed(None)

        def parse(raw: Any) -> SessionRecord | None:
            if raw is None:
                return None
            data = json.loads(_text(raw))
            starts = {k: Position(int(v[0]), str(v[1])) for k, v in data["starts"].items()}
            return SessionRecord(
                session_id,
                data["user"],
                data["claims"],
                tuple(data["rooms"]),
                starts,
                str(data.get("resume_hash", "")),
            )

        loaded: Deferred[Any] = cmd.get(self._session_key(session_id))
        return loaded.addCallback(parse).addErrback(lambda _: None)

    # ------------------------------------------------------------ dedup

    def _dedup_key(self, principal: str, message_id: str) -> str:
        return f"{self.prefix}dedup:{principal}:{message_id}"

    def claim(self, principal: str, message_id: str, now_ms: int) -> Deferred[Claim]:
        cmd = self._cmd
        if cmd is None:
            # Degraded: the node's own dedup window still applies.
            return succeed(Claim(True))

        def parse(reply: Any) -> Claim:
            if int(reply[0]) == 1:
                return Claim(True)
            raw = _text(reply[1]) if len(reply) > 1 and reply[1] is not None else ""
            if not raw:
                return Claim(False)
            return Claim(False, Envelope.from_wire(json.loads(raw)))

        claimed: Deferred[Any] = cmd.eval(
            CLAIM_SCRIPT,
            [self._dedup_key(principal, message_id)],
            [min(CLAIM_TTL_MS, self.dedup_age_ms)],
        )
        return claimed.addCallback(parse).addErrback(lambda _: Claim(True))

    def unclaim(self, principal: str, message_id: str) -> None:
        """Give up a claim whose message will not be handled here (its connection went)."""
        cmd = self._cmd
        if cmd is not None:
            cmd.eval(UNCLAIM_SCRIPT, [self._dedup_key(principal, message_id)], []).addErrback(
                lambda _: None
            )

    def record(self, principal: str, message_id: str, reply: Envelope) -> None:
        cmd = self._cmd
        if cmd is None:
            return
        value = json.dumps(reply.to_wire(), separators=(",", ":"), ensure_ascii=False)
        cmd.set(
            self._dedup_key(principal, message_id), value, pexpire=self.dedup_age_ms
        ).addErrback(lambda _: None)

    # ------------------------------------------------------------ presence

    def set_presence(self, room: str, session: str, present: bool) -> None:
        cmd = self._cmd
        if cmd is None:
            return
        key = f"{self.prefix}presence:{room}"
        if present:
            cmd.hset(key, session, self.node).addErrback(lambda _: None)
        else:
            cmd.eval(UNSET_PRESENCE_SCRIPT, [key], [session, self.node]).addErrback(lambda _: None)

    def presence(self, room: str) -> Deferred[set[str]] | None:
        cmd = self._cmd
        if cmd is None:
            return fail(BackendUnavailableError(f"presence unavailable: {self.health}"))
        asked: Deferred[Any] = cmd.eval(
            PRESENCE_SCRIPT, [f"{self.prefix}presence:{room}"], [f"{self.prefix}node:"]
        )
        return asked.addCallback(lambda ids: {_text(i) for i in ids or ()})

    def sessions_of_user(self, user: str) -> Deferred[set[str]] | None:
        cmd = self._cmd
        if cmd is None:
            return fail(BackendUnavailableError(f"user lookup unavailable: {self.health}"))
        asked: Deferred[Any] = cmd.eval(
            USER_SESSIONS_SCRIPT, [f"{self.prefix}user:{user}"], [f"{self.prefix}session:"]
        )
        return asked.addCallback(lambda ids: {_text(i) for i in ids or ()})

    # ------------------------------------------------------------ time

    def tick(self, now_ms: int) -> None:
        """Refresh this node's liveness key; retry snapshots that failed."""
        self._check_node_key()
        now = self.reactor.seconds()
        saved = self._saved
        while saved and next(iter(saved.values())).expires <= now:
            saved.popitem(last=False)
        if self._cmd is not None:
            for key, mirror in list(self._mirrors.items()):
                if mirror.needs_snapshot and self._sub is not None:
                    self._snapshot(key)

    def _check_node_key(self) -> None:
        cmd = self._cmd
        if cmd is None:
            return
        asked: Deferred[Any] = cmd.execute_command(
            "SET", self._node_key(self.node), "1", "PX", self.options.node_ttl_ms, "GET"
        )

        def checked(previous: Any) -> None:
            if previous is None and self._node_key_set:
                # Our liveness key vanished before its TTL: Redis lost its
                # data (FLUSHALL, restart without persistence). Every mirror
                # must re-read its stream; a new epoch tells clients.
                self.log.warn("redis data loss detected; re-reading every stream")
                # Before any client can learn a new epoch from a snapshot.
                self._write_sessions(unsaved_only=False)
                self._resnapshot_all()
            self._node_key_set = True

        asked.addCallbacks(checked, lambda f: self._connection_trouble(cmd, f))

    def _schedule_canary(self) -> None:
        if not self._running:
            return
        self._send_canary()
        self._later(self.options.canary_interval, self._schedule_canary)

    def _send_canary(self) -> None:
        """Publish a nonce; health returns only when one comes back on our subscriber."""
        now = self.reactor.seconds()
        since = self._canary_since
        if since is not None and now - since > self.options.canary_timeout:
            # None came back in time: the subscriber may be deaf. Reconnect it.
            self._canary_ok = False
            self._canary_failed = True
            self._canary_since = None
            self._canary_nonces.clear()
            if self._sub is not None:
                self.log.warn("redis canary timed out; reconnecting the subscriber")
                self._drop(self._sub)
        cmd = self._cmd
        if cmd is None or self._sub is None:
            return
        nonce = secrets.token_hex(8)
        self._canary_nonces.append(nonce)
        del self._canary_nonces[:-8]
        if self._canary_since is None:
            self._canary_since = now
        cmd.publish(self.canary_channel, nonce).addErrback(lambda _: None)


@dataclass(slots=True)
class _SavedSession:
    value: str  # the record as stored (JSON)
    user: str | None
    expires: float  # reactor seconds: the record's TTL in Redis ends then
    unsaved: bool  # saved while Redis was unreachable: to write on reconnect
    saved_at: int = 0  # wall-clock ms, also in ``value``


def _candidate(mirror: Mirror | None) -> str:
    """The epoch to create a stream with if Redis has none: the one this node
    proposed for a stream it created (a new session's direct stream) while
    Redis never held it (the announce did not reach it), otherwise a fresh
    one, so that lost Redis data always shows as a new epoch."""
    if mirror is not None and not mirror.loaded and not mirror.announced and mirror.epoch:
        return mirror.epoch
    return random_id()[:11]


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def redis_backend_from_options(
    redis_url: str | None,
    sentinels: Sequence[str],
    service: str,
    prefix: str,
    limits: HistoryLimits,
    node: str | None = None,
) -> RedisBackend:
    options = RedisOptions(
        url=None if sentinels else redis_url,
        sentinels=tuple(sentinels),
        service=service,
        prefix=prefix,
    )
    return RedisBackend(options, limits, node=node)
