"""Redis Cluster: one txredisapi connection per master, commands routed by slot.

``ClusterConnections`` has the surface of ``Connections`` (``cmd``, ``sub``,
``trouble``, ``drop``...), so the rest of the backend does not know whether it
talks to one Redis or to a cluster:

- ``cmd`` is a ``ClusterClient``: each command goes to the master of its key's
  slot; ``MOVED`` updates the slot and retries there, ``ASK`` retries once
  after ``ASKING``; a master we hold no connection to refreshes the topology.
- ``sub`` is a ``ClusterSubscriber``: ``SSUBSCRIBE`` on the shard that serves
  the channel's slot, so a stream's traffic stays on its shard.

Both exist only while every master is connected: losing one connection is
losing the whole ``cmd`` (or ``sub``), exactly as with one Redis. The backend
then degrades, reconnects (0.1 s doubling to 2 s), reads the slot map again
from any node it knows (``CLUSTER SLOTS``), re-subscribes and re-reads every
stream. That is how a failover (a replica promoted) or a master restarted is
healed; what Sentinel mode promises holds here per shard (docs/cluster.md).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import txredisapi
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from warpsocket.backends.redis.connection import (
    Batch,
    CommandProtocol,
    ConnectionFactory,
    Later,
    open_connection,
)
from warpsocket.backends.redis.options import RedisAddress, RedisOptions, host_port
from warpsocket.backends.redis.sharded_pubsub import ShardSubscriber
from warpsocket.backends.redis.slots import (
    SLOTS,
    Address,
    SlotMap,
    key_slot,
    parse_cluster_slots,
    parse_redirect,
)

MAX_REDIRECTS = 5
# A slot being migrated refuses a script whose keys are split between the two
# masters (TRYAGAIN): asked again after 0.05 s, doubling, for up to ~1.5 s.
TRY_AGAIN_DELAY = 0.05
TRY_AGAIN_TIMES = 5
# Errors after which the slot map is read again: the cluster changed under us.
_TOPOLOGY_ERRORS = ("CLUSTERDOWN", "MASTERDOWN")


class ClusterClient:
    """The command connection of a cluster: each command to its slot's master."""

    def __init__(self, owner: ClusterConnections, slots: SlotMap, conns: dict[Address, Any]):
        self._owner = owner
        self.slots = slots
        self.conns = conns

    # The txredisapi calls the backend makes, each routed by its first key.

    def execute_command(self, *args: Any) -> Deferred[Any]:
        return self._route(str(args[1]), lambda conn: conn.execute_command(*args))

    def eval(self, script: str, keys: list[str], args: list[Any]) -> Deferred[Any]:
        return self._route(keys[0], lambda conn: conn.eval(script, keys, args))

    def set(self, key: str, value: Any, **options: Any) -> Deferred[Any]:
        return self._route(key, lambda conn: conn.set(key, value, **options))

    def get(self, key: str) -> Deferred[Any]:
        return self._route(key, lambda conn: conn.get(key))

    def sadd(self, key: str, *members: Any) -> Deferred[Any]:
        return self._route(key, lambda conn: conn.execute_command("SADD", key, *members))

    def hset(self, key: str, field: str, value: Any) -> Deferred[Any]:
        return self._route(key, lambda conn: conn.execute_command("HSET", key, field, value))

    def delete(self, key: str) -> Deferred[Any]:
        return self._route(key, lambda conn: conn.execute_command("DEL", key))

    def __getattr__(self, name: str) -> Callable[..., Deferred[Any]]:
        """Any other single-key txredisapi call (``incr``, ``expire``...): its
        first argument is the key that routes it."""
        if name.startswith("_"):
            raise AttributeError(name)

        def call(key: str, *args: Any, **kwargs: Any) -> Deferred[Any]:
            return self._route(key, lambda conn: getattr(conn, name)(key, *args, **kwargs))

        return call

    def publish(self, channel: str, message: str) -> Deferred[Any]:
        """Sharded: only the subscribers of the channel's shard hear it."""
        return self._route(channel, lambda conn: conn.execute_command("SPUBLISH", channel, message))

    def connection_at(self, slot: int) -> Any:
        """The command connection to the master of ``slot`` (None: none held;
        ``_route`` then reads the slot map again). For commands written
        straight to it (plain dedup commands), which handle their own redirects."""
        address = self.slots.master_of(slot)
        return self.conns.get(address) if address is not None else None

    def learn_redirect(self, message: str) -> None:
        """A redirect a command got: counted, and a ``MOVED`` slot's new
        master learned (so that the command sent again, and every later one
        of that slot, goes there at once). ``_route`` calls it, and so does
        what writes commands straight to a master (dedup.py)."""
        redirect = parse_redirect(message)
        if redirect is None:
            return
        kind, slot, target = redirect
        self._owner.count(kind.lower())
        if kind == "MOVED":
            self.slots.move(slot, target)
            self._owner.topology_changed()

    def shard_of(self, key: str) -> Address | None:
        return self.slots.master_of(key_slot(key))

    def shard_names(self, base: str) -> list[str]:
        """One name per master: ``base:{n}`` with a hash tag that lands on it."""
        return shard_names(self.slots, base)

    def _route(
        self, key: str, call: Callable[[Any], Deferred[Any]], redirects: int = 0, tries: int = 0
    ) -> Deferred[Any]:
        slot = key_slot(key)
        address = self.slots.master_of(slot)
        conn = self.conns.get(address) if address is not None else None
        if conn is None:
            self._owner.topology_changed()
            return fail(ConnectionError(f"no connection to the master of slot {slot}"))
        try:
            sent = call(conn)
        except Exception:  # txredisapi raises when the connection just closed
            return fail()

        def redirected(failure: Failure) -> Any:
            if not failure.check(txredisapi.ResponseError):
                return failure
            message = failure.getErrorMessage()
            if message.startswith("TRYAGAIN") and tries < TRY_AGAIN_TIMES:
                self._owner.count("tryagain")
                again = deferLater(self._owner.reactor, TRY_AGAIN_DELAY * 2**tries, lambda: None)
                return again.addCallback(lambda _: self._route(key, call, redirects, tries + 1))
            if message.startswith(_TOPOLOGY_ERRORS):
                self._owner.topology_changed()
                return failure
            redirect = parse_redirect(message)
            if redirect is None or redirects >= MAX_REDIRECTS:
                return failure
            kind, _, target = redirect
            self.learn_redirect(message)  # counted; a MOVED slot's new master learned
            if kind == "MOVED":
                if target not in self.conns:
                    return failure
                return self._route(key, call, redirects + 1, tries)
            asked = self.conns.get(target)
            if asked is None:
                self._owner.topology_changed()
                return failure
            # ASKING applies to the next command on the same connection only.
            asked.execute_command("ASKING").addErrback(lambda _: None)
            return call(asked).addErrback(redirected_again)

        def redirected_again(failure: Failure) -> Any:
            """What the ASK target answered: TRYAGAIN starts over (the slot may have moved)."""
            if (
                failure.check(txredisapi.ResponseError)
                and tries < TRY_AGAIN_TIMES
                and failure.getErrorMessage().startswith("TRYAGAIN")
            ):
                self._owner.count("tryagain")
                again = deferLater(self._owner.reactor, TRY_AGAIN_DELAY * 2**tries, lambda: None)
                return again.addCallback(lambda _: self._route(key, call, redirects + 1, tries + 1))
            return failure

        return sent.addErrback(redirected)


class ClusterSubscriber:
    """The subscriber of a cluster: one sharded subscription per channel, on its shard."""

    def __init__(self, slots: SlotMap, conns: dict[Address, Any]) -> None:
        self.slots = slots
        self.conns = conns

    def _conn(self, channel: str) -> Any:
        address = self.slots.master_of(key_slot(channel))
        return self.conns.get(address) if address is not None else None

    def subscribe(self, channel: str) -> Deferred[Any]:
        conn = self._conn(channel)
        if conn is None:
            return fail(ConnectionError("no subscriber on the channel's shard"))
        subscribed: Deferred[Any] = conn.ssubscribe(channel)
        return subscribed

    def unsubscribe(self, channel: str) -> Deferred[Any]:
        conn = self._conn(channel)
        if conn is None:
            return fail(ConnectionError("no subscriber on the channel's shard"))
        done: Deferred[Any] = conn.sunsubscribe(channel)
        return done

    def canary_channels(self, base: str) -> list[str]:
        """One channel per shard: each shard's subscriber proves itself."""
        return shard_names(self.slots, base)


def shard_names(slots: SlotMap, base: str) -> list[str]:
    """For each master, ``base:{n}`` with the first ``n`` whose slot it serves."""
    names = []
    for address in slots.masters:
        for n in range(SLOTS * 4):
            name = f"{base}:{{{n}}}"
            if slots.master_of(key_slot(name)) == address:
                names.append(name)
                break
    return names


class ShardFactory(ConnectionFactory):
    def __init__(self, *args: Any, on_slot_moved: Callable[[Any], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_slot_moved = on_slot_moved


class ClusterConnections:
    """``cmd`` and ``sub`` of a Redis Cluster, or None while not every master is connected."""

    def __init__(
        self,
        options: RedisOptions,
        reactor: Any,
        *,
        later: Later,
        stats: dict[str, int],
        log: Logger,
        on_message: Callable[[Any, Any], None],
        on_connected: Callable[[str, Any], None],
        on_lost: Callable[[str, bool], None],
    ) -> None:
        self.options = options
        self.reactor = reactor
        self._later = later
        self._stats = stats
        self._log = log
        self._on_message = on_message
        self._on_connected = on_connected
        self._on_lost = on_lost
        self.batch: Batch = nullcontext
        self.cmd: Any = None
        self.sub: Any = None
        self.error = "starting"
        self.running = False
        self._seeds: list[Address] = [host_port(a) for a in options.cluster]
        self._known: list[Address] = []  # masters seen in the last slot map
        self._conns: dict[str, dict[Address, Any]] = {"cmd": {}, "sub": {}}
        self._connecting: set[str] = set()
        self._retry: dict[str, float] = {}
        self._refreshing = False
        self._last_refresh = -1e9
        self._opening: set[Deferred[Any]] = set()  # cancelled by stop()

    # ------------------------------------------------------------ the Connections surface

    def start(self) -> None:
        self.running = True
        self._connect("cmd")
        self._connect("sub")

    def stop(self) -> None:
        self.running = False
        for opening in list(self._opening):
            opening.cancel()
        for kind in ("cmd", "sub"):
            self._abort(kind)
        self.cmd = self.sub = None

    def close_sentinel(self) -> Deferred[None]:
        return succeed(None)

    def drop(self, conn: Any) -> None:
        """Abort every connection of that kind; they are opened again as if lost."""
        if conn is not None and conn is self.cmd:
            self._abort("cmd")
        elif conn is not None and conn is self.sub:
            self._abort("sub")

    def trouble(self, conn: Any, failure: Failure) -> None:
        message = failure.getErrorMessage()
        if "READONLY" in message or "LOADING" in message or failure.check(txredisapi.TimeoutError):
            self.drop(conn)  # a demoted master, or one that restarted: read the map again
        elif message.startswith(_TOPOLOGY_ERRORS):
            self.topology_changed()

    def count(self, what: str) -> None:
        """Redirects and retries (``moved``, ``ask``, ``tryagain``), in the backend's stats."""
        self._stats[what] = self._stats.get(what, 0) + 1

    def topology_changed(self) -> None:
        """Read the slot map again (at most once a second); new masters mean new connections."""
        now = self.reactor.seconds()
        if self._refreshing or not self.running or now - self._last_refresh < 1.0:
            return
        self._refreshing = True
        self._last_refresh = now

        def read(slots: SlotMap) -> None:
            self._refreshing = False
            for kind in ("cmd", "sub"):
                current = getattr(self, kind)
                if current is None:
                    continue
                if set(slots.masters) != set(self._conns[kind]):
                    self._log.warn("redis cluster topology changed; reconnecting")
                    self._abort(kind)
                else:
                    current.slots = slots

        def failed(_: Failure) -> None:
            self._refreshing = False

        self._discover().addCallbacks(read, failed)

    # ------------------------------------------------------------ discovery and connections

    def _address(self, where: Address) -> RedisAddress:
        return RedisAddress(where[0], where[1], 0, self.options.password, False)

    def _discover(self) -> Deferred[SlotMap]:
        """The slot map from the first node that answers with one that covers every slot."""
        candidates = list(dict.fromkeys([*self._known, *self._seeds]))
        result: Deferred[SlotMap] = Deferred()
        errors: list[str] = []

        def attempt(index: int) -> None:
            if not self.running:
                # Stopped (``stop`` cancelled the attempt before): no next seed.
                result.errback(ConnectionError("redis backend stopped"))
                return
            if index >= len(candidates):
                result.errback(ConnectionError("; ".join(errors) or "no cluster node answered"))
                return
            where = candidates[index]
            factory = ConnectionFactory(
                txredisapi.RedisProtocol, self._address(where), self.options.reply_timeout
            )
            opening = self._open(factory)

            def ask(conn: Any) -> Deferred[Any]:
                asked: Deferred[Any] = conn.execute_command("CLUSTER", "SLOTS")

                def close(reply: Any) -> Any:
                    conn.transport.loseConnection()
                    return reply

                return asked.addBoth(close)

            def answered(reply: Any) -> None:
                slots = parse_cluster_slots(reply, where[0])
                if not slots.covers_all():
                    raise ValueError(f"{where[0]}:{where[1]}: slots not all served")
                self._known = slots.masters
                result.callback(slots)

            def next_one(failure: Failure) -> None:
                errors.append(f"{where[0]}:{where[1]}: {failure.getErrorMessage()}")
                attempt(index + 1)

            opening.addCallback(ask).addCallback(answered).addErrback(next_one)

        attempt(0)
        return result

    def _open(self, factory: ConnectionFactory) -> Deferred[Any]:
        opening = open_connection(self.reactor, self.options.connect_timeout, factory)
        self._opening.add(opening)

        def opened(result: Any) -> Any:
            self._opening.discard(opening)
            if not self.running and not isinstance(result, Failure):
                result.transport.abortConnection()
                return Failure(ConnectionError("redis backend stopped"))
            return result

        return opening.addBoth(opened)

    def _factory(self, kind: str, where: Address) -> ConnectionFactory:
        address = self._address(where)
        if kind == "sub":
            return ShardFactory(
                ShardSubscriber,
                address,
                None,
                self._on_message,
                lambda: self.batch(),
                on_slot_moved=lambda _: self.drop(self.sub),
            )
        return ConnectionFactory(
            CommandProtocol, address, self.options.reply_timeout, batch=lambda: self.batch()
        )

    def _connect(self, kind: str) -> None:
        if not self.running or kind in self._connecting:
            return
        self._connecting.add(kind)
        opened: dict[Address, Any] = {}

        def connect_all(slots: SlotMap) -> Deferred[Any]:
            from twisted.internet.defer import gatherResults

            def keep(conn: Any, where: Address) -> None:
                opened[where] = conn

            each = [
                self._open(self._factory(kind, where)).addCallback(keep, where)
                for where in slots.masters
            ]
            done: Deferred[Any] = gatherResults(each, consumeErrors=True)
            return done.addCallback(lambda _: slots)

        def connected(slots: SlotMap) -> None:
            self._connecting.discard(kind)
            self._retry.pop(kind, None)
            if not self.running:
                for conn in opened.values():
                    conn.transport.abortConnection()
                return
            self._conns[kind] = dict(opened)
            facade: Any
            if kind == "cmd":
                facade = ClusterClient(self, slots, self._conns[kind])
            else:
                facade = ClusterSubscriber(slots, self._conns[kind])
            for conn in opened.values():
                conn.whenDisconnected().addCallback(lambda _, f=facade: self._lost(kind, f))
            setattr(self, kind, facade)
            if kind == "cmd":
                self.error = "ok"
            self._on_connected(kind, facade)

        def failed(failure: Failure) -> None:
            self._connecting.discard(kind)
            for conn in opened.values():
                if conn.transport is not None:
                    conn.transport.abortConnection()
            value = failure.value
            inner = getattr(value, "subFailure", None)  # FirstError of gatherResults
            reason = (inner or failure).getErrorMessage() or repr(value)
            if kind == "cmd" or self.cmd is None:
                self.error = reason
            self._backoff(kind)

        self._discover().addCallback(connect_all).addCallbacks(connected, failed)

    def _abort(self, kind: str) -> None:
        for conn in list(self._conns[kind].values()):
            if conn.transport is not None:
                conn.transport.abortConnection()

    def _backoff(self, kind: str) -> None:
        delay = self._retry.get(kind, self.options.reconnect_delay / 2) * 2
        delay = min(delay, self.options.max_reconnect_delay)
        self._retry[kind] = delay
        self._later(delay, self._connect, kind)

    def _lost(self, kind: str, facade: Any) -> None:
        """One master's connection went: the whole ``cmd`` (or ``sub``) goes with it."""
        if getattr(self, kind) is not facade:
            return  # another connection of the same set was lost first
        self._stats["reconnects"] += 1
        setattr(self, kind, None)
        self._abort(kind)
        self._conns[kind] = {}
        if kind == "cmd":
            self.error = "connection lost"
        self._on_lost(kind, True)
        if self.running:
            self._log.warn("redis cluster {kind} connection lost; reconnecting", kind=kind)
            self._backoff(kind)
