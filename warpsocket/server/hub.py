"""The hub: the server's public API and the I/O half of the reliability core.

The hub owns a ``ServerCore`` and every open ``WarpSocketServerProtocol``.
It decodes frames, runs middleware and handlers, and performs the core's
actions: a ``Fanout`` is encoded and framed once per codec in use and the
same prepared frame is written to every recipient.

All of its public methods may be called from any thread: off the reactor
thread they run on the reactor thread (threads.py), so every write happens
there and frames never interleave. Called that way, a method that returns a
Deferred returns a ``concurrent.futures.Future`` of its result instead:
``hub.send(..., ack=True).result(timeout=30)`` from a worker thread waits
for the client's acknowledgement.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

from twisted.internet.defer import Deferred, FirstError, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadable import isInIOThread

from warpsocket._deferreds import invoke
from warpsocket.backends.base import AckNotice, Backend, SessionRecord
from warpsocket.backends.memory import MemoryBackend
from warpsocket.core.dedup import DedupKey
from warpsocket.core.history import HistoryLimits, unencodable_placeholder
from warpsocket.core.ids import SequentialIds, random_id
from warpsocket.core.server import (
    BROADCAST,
    DIRECT,
    AckResult,
    Action,
    Close,
    ConnId,
    CoreOptions,
    Dispatch,
    Fanout,
    Publish,
    QueueFullError,
    Send,
    ServerCore,
    Session,
    SessionExpired,
    SessionOpened,
    UnknownSessionError,
    direct_key,
    resume_token_matches,
    room_key,
)
from warpsocket.core.store import MemoryStreamStore, StreamStore
from warpsocket.protocol.codecs import Codec, CodecRegistry, default_codecs
from warpsocket.protocol.codes import ErrorCode, ProtocolError
from warpsocket.protocol.datamodel import DataModelError, check_value
from warpsocket.protocol.envelope import Envelope, MessageType
from warpsocket.server.batching import WriteBatch
from warpsocket.server.context import Context
from warpsocket.server.metrics import HubMetrics
from warpsocket.server.middleware import Handshake, LoggingMiddleware, Middleware, Reject
from warpsocket.server.remote_acks import RemoteAcks
from warpsocket.server.security.config import SecurityOptions
from warpsocket.server.session_info import SessionInfo
from warpsocket.server.threads import threadsafe
from warpsocket.server.timers import ConnectionTimers

if TYPE_CHECKING:
    from warpsocket.server.protocol import WarpSocketServerProtocol


Handler = Callable[[Context, Any], Any]
HandlerT = TypeVar("HandlerT", bound=Handler)
OpenHook = Callable[[Context, bool], Any]
CloseHook = Callable[[Context, int | None], Any]
ErrorHook = Callable[[Context | None, Failure], Any]


# Frames of one connection held while the backend prepares its streams or
# claims a dedup record (Redis): beyond this, each is refused with 4206.
MAX_HELD_FRAMES = 256
# A message id claimed by another node that has not answered yet: ask again
# every CLAIM_POLL_SECONDS, for at most CLAIM_WAIT_SECONDS (claims live 10 s).
CLAIM_POLL_SECONDS = 0.25
CLAIM_WAIT_SECONDS = 12.0
# Ticks between sweeps of unused in-memory streams.
STREAM_COLLECT_TICKS = 60
# Handler-latency series by event name; past this, further names share "other".
MAX_LATENCY_LABELS = 256
_SCALARS = (type(None), bool, int, str)
# Frames taken even while a connection's earlier frames wait for the backend.
_UNORDERED = frozenset({MessageType.ACK, MessageType.HEARTBEAT})


def _close_label(code: int | None) -> str:
    """A metrics label for a close code: the peer chooses it, so unknown ones share one."""
    if code is None or 1000 <= code <= 1015 or code in ErrorCode._value2member_map_:
        return str(code)
    return "other"


class AckTimeoutError(Exception):
    """An acknowledged send was not acknowledged in time (or its session expired).

    The Deferred of ``Hub.send(..., ack=True)`` fails with it; ``session`` and
    ``offset`` name the message, ``code`` says why (``TIMEOUT``, or e.g.
    ``GOING_AWAY`` when the server shut down first).
    """

    def __init__(self, session: str, offset: int, code: ErrorCode) -> None:
        super().__init__(f"session {session}: message {offset} not acknowledged ({code.wire_name})")
        self.session = session
        self.offset = offset
        self.code = code


@dataclass(frozen=True)
class HubOptions:
    """Everything a ``Hub`` is configured with; defaults are the production
    values (``twistd warpsocket`` builds one from its command line).

    - ``core``: the reliability settings (``CoreOptions``: sessions, timers,
      acks, limits, histories).
    - ``security``: origins, authentication, address lists and rate and size
      limits (``SecurityOptions``, docs/security.md).
    - ``open_rooms``: clients may join and publish into any room (standalone
      mode); otherwise only what ``can_join``/``can_publish`` allow.
    - ``tick_interval``: seconds between housekeeping runs (ack retries,
      session expiry, the backend's upkeep).
    - ``drain_delay`` / ``shutdown_timeout``: the drain sequence of
      ``WarpSocketService.stopService`` (docs/deployment.md).
    - ``reconnect_hint_ms``: the delay suggested to clients sent away by a drain.
    - ``debug``: log every envelope in and out (``LoggingMiddleware``).
    """

    core: CoreOptions = field(default_factory=CoreOptions)
    tick_interval: float = 1.0
    shutdown_timeout: float = 10.0
    # Seconds of a drain during which /healthz says 503 before clients are
    # told to go (a load balancer's pre-stop period; docs/deployment.md).
    drain_delay: float = 0.0
    reconnect_hint_ms: int = 2_000
    debug: bool = False
    # Standalone mode: clients may subscribe to and publish into any room.
    open_rooms: bool = False
    # Origins, tokens, address lists and limits (docs/security.md).
    security: SecurityOptions = field(default_factory=SecurityOptions)

    def __post_init__(self) -> None:
        if self.tick_interval <= 0 or self.shutdown_timeout <= 0:
            raise ValueError("tick_interval and shutdown_timeout must be positive")
        if self.reconnect_hint_ms < 0 or self.drain_delay < 0:
            raise ValueError("reconnect_hint_ms and drain_delay must be >= 0")


class Hub:
    """The application's side of a WarpSocket server: handlers, sends and rooms.

    One hub serves one node; ``WarpSocketService(hub, endpoints)`` puts it on
    the network. Register handlers for events and RPC methods with ``on``
    (``@hub.on("say")``), lifecycle hooks with ``on_open``/``on_close``/
    ``on_error`` and middleware with ``use``. Send with ``send`` (one session,
    optionally acknowledged), ``send_user``, ``send_group``, ``publish`` (a
    room) and ``broadcast``; each returns a Deferred, and called from another
    thread a ``concurrent.futures.Future`` of its result. Rooms: ``join``,
    ``leave``, ``room_members``, ``presence``; sessions: ``session_info``,
    ``sessions_of_user``, ``is_connected``.

    Constructor arguments, all optional:

    - ``options``: a ``HubOptions``.
    - ``backend``: where streams, sessions, dedup records and presence live:
      ``MemoryBackend`` (the default, one node) or ``RedisBackend`` (a cluster).
    - ``can_join(session, room)`` / ``can_publish(session, room, envelope)``:
      authorisation for client joins and publishes (``ClaimsPolicy`` offers
      both); without them only ``HubOptions.open_rooms`` allows any.
    - ``middleware``: a list of ``Middleware``; ``codecs``: a ``CodecRegistry``.
    - ``store``: the ``StreamStore`` of the default ``MemoryBackend`` (ignored
      when a ``backend`` is given).
    - ``clock`` / ``reactor``: an ``IReactorTime`` for every timer (tests pass
      ``twisted.internet.task.Clock``) and the reactor (the global one).
    """

    log = Logger()

    def __init__(
        self,
        options: HubOptions | None = None,
        *,
        clock: IReactorTime | None = None,
        reactor: Any = None,
        store: StreamStore | None = None,
        backend: Backend | None = None,
        codecs: CodecRegistry | None = None,
        middleware: Sequence[Middleware] = (),
        can_join: Callable[[Session, str], bool] | None = None,
        can_publish: Callable[[Session, str, Envelope], bool] | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.options = options if options is not None else HubOptions()
        core_options = self.options.core
        # The data model's bounds scale with the message size limit (protocol.md 2.1).
        self.data_limits = core_options.data_limits
        self.codecs = codecs if codecs is not None else default_codecs(self.data_limits)
        self.middleware: list[Middleware] = list(middleware)
        if self.options.debug:
            self.middleware.insert(0, LoggingMiddleware())
        self.metrics = HubMetrics()
        # Frames written while it is open leave in one write per connection.
        self.write_batch = WriteBatch()
        node_tag = f"{core_options.node}.{random_id()[:6]}"
        if backend is None:
            backend = MemoryBackend(core_options.history, store=store)
        # Where streams, sessions, dedup records and presence live (docs/cluster.md).
        self.backend: Backend = backend
        self.store = backend.store
        backend.set_delivery(self._delivered)
        backend.set_batch(self.write_batch)
        open_rooms = self.options.open_rooms
        self.core = ServerCore(
            self.store,
            core_options,
            new_id=SequentialIds(node_tag),
            new_session_id=random_id,
            can_join=can_join or (lambda s, r: open_rooms),
            can_publish=can_publish or (lambda s, r, e: open_rooms),
            on_settle=self._settled if backend.clustered else None,
            deferred_publish=True,
        )
        # Hello/heartbeat timeouts, idle eviction and heartbeats, each on time
        # (timers.py); started and stopped by the service.
        self.timers = ConnectionTimers(self.clock, self.core.next_timer_ms, self.run_timers)
        self.core.on_deadline = self.timers.wake_by
        self.metrics.core_counts.core = self.core
        self.handlers: dict[str, Handler] = {}
        self.on_open_hooks: list[OpenHook] = []
        self.on_close_hooks: list[CloseHook] = []
        self.on_error_hooks: list[ErrorHook] = []
        self.authenticator: Callable[[Context, str], Any] | None = None
        self.draining = False
        self._protocols: dict[ConnId, WarpSocketServerProtocol] = {}
        self._next_conn = 0
        # (session, offset, epoch) of acknowledged direct sends -> their Deferred.
        self._ack_waiters: dict[tuple[str, int, str | None], Deferred[None]] = {}
        # Acked sends to sessions on other nodes (clustered backends only).
        self.remote_acks = RemoteAcks(
            self.clock,
            core_options.max_pending_acks,
            lambda session, offset: AckTimeoutError(session, offset, ErrorCode.TIMEOUT),
        )
        backend.set_ack_listener(self._ack_announced)
        # Per session: the last cumulative ack announced (direct epoch, offset).
        self._announced: dict[str, tuple[str | None, int]] = {}
        self._empty_waiters: list[Deferred[None]] = []
        # Connections we sent a close frame (their disconnect is counted).
        self._closing: set[ConnId] = set()
        self._latency: dict[str, Any] = {}
        self._ticks = 0
        # (connection, message id) -> principal, for dedup claims in flight.
        self._claims: dict[tuple[ConnId, str], str] = {}
        # Connections waiting for the backend (prepare, dedup claim): their
        # later frames queue here and are fed to the core strictly in order.
        self._inbound: dict[ConnId, list[Envelope]] = {}
        self._present: set[tuple[str, str]] = set()
        self._next_session_save = 0

    # ------------------------------------------------------------ registration

    @overload
    def on(self, event: str) -> Callable[[HandlerT], HandlerT]: ...

    @overload
    def on(self, event: str, handler: HandlerT) -> HandlerT: ...

    def on(self, event: str, handler: HandlerT | None = None) -> Any:
        """Register the handler for an event or RPC method; usable as a decorator.

        A handler is ``handler(ctx, data)`` and may return a value, a Deferred
        or be ``async def``. For a ``call`` its value is the result. Raising
        ``Reject(code)`` answers with that code; any other exception answers
        ``4300 handler_error``. The connection stays open either way.
        """

        def register(func: HandlerT) -> HandlerT:
            self.handlers[event] = func
            return func

        return register(handler) if handler is not None else register

    def on_open(self, hook: OpenHook) -> OpenHook:
        """``hook(ctx, resumed)`` after each welcome."""
        self.on_open_hooks.append(hook)
        return hook

    def on_close(self, hook: CloseHook) -> CloseHook:
        """``hook(ctx, close_code)`` when a connection of a session closes."""
        self.on_close_hooks.append(hook)
        return hook

    def on_error(self, hook: ErrorHook) -> ErrorHook:
        """``hook(ctx_or_None, failure)`` when a handler or hook fails."""
        self.on_error_hooks.append(hook)
        return hook

    def use(self, middleware: Middleware) -> None:
        self.middleware.append(middleware)

    # ------------------------------------------------------------ sending

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    @threadsafe
    def send(
        self,
        session: str,
        event: str,
        data: Any = None,
        *,
        ack: bool = False,
        ttl: float | None = None,
        timeout: float | None = None,
    ) -> Deferred[None]:
        """Send to one session's ``direct`` stream (delivered on resume if offline).

        Returns a Deferred that fires once the message is stored (it fails with
        ``BackendUnavailableError`` when the cluster cannot take it). With a
        clustered backend the session may live on any node.

        With ``ack=True`` returns a Deferred that fires when the client
        acknowledges, or fails with ``AckTimeoutError`` after ``timeout``
        seconds (default: the core's ``ack_timeout_ms``). Clustered, that
        works for a session on any node: the node the client acknowledges on
        announces it to the others.
        """
        envelope = self._outbound(event, data, ttl, ack=ack)
        remote = self.backend.clustered and session not in self.core.sessions
        if remote and ack:
            self.remote_acks.check(session)
        elif not remote:
            self.core.check_send(session, ack)
        appended = self.backend.publish(direct_key(session), envelope, envelope.timestamp)
        if not ack:
            return appended.addCallback(lambda _: None)
        waiter: Deferred[None] = Deferred()
        timeout_ms = None if timeout is None else int(timeout * 1000)
        if remote:
            # Attached to another node, or to none yet: that node's client
            # acknowledges there, and the notice comes back (remote_acks.py).
            seconds = timeout if timeout is not None else self.options.core.ack_timeout_ms / 1000

            def wait_remote(stored: Envelope) -> None:
                assert stored.offset is not None
                waiting = self.remote_acks.wait(
                    session, stored.offset, stored.epoch, stored.id, seconds
                )
                waiting.chainDeferred(waiter)

            appended.addCallbacks(wait_remote, waiter.errback)
            return waiter

        def track(stored: Envelope) -> None:
            assert stored.offset is not None
            self._ack_waiters[(session, stored.offset, stored.epoch)] = waiter
            self.metrics.acks_pending.set(len(self._ack_waiters))
            self._run(self.core.track_ack(session, stored, self.now_ms(), timeout_ms))

        appended.addCallbacks(track, waiter.errback)
        return waiter

    @threadsafe
    def send_user(
        self, user: str, event: str, data: Any = None, *, ttl: float | None = None
    ) -> Deferred[int]:
        """Send to every session of ``user`` (on every node); fires with how many."""
        found = self.backend.sessions_of_user(user)
        if found is None:
            found = succeed(set())

        def send_all(sessions: set[str]) -> int:
            for session in sessions | self.core.sessions_of_user(user):
                self.send(session, event, data, ttl=ttl).addErrback(self._send_failed)
            return len(sessions | self.core.sessions_of_user(user))

        return found.addCallback(send_all)

    def _send_failed(self, failure: Failure) -> None:
        self.log.failure("send failed", failure)

    @threadsafe
    def send_group(
        self, sessions: Iterable[str], event: str, data: Any = None, *, ttl: float | None = None
    ) -> Deferred[None]:
        """Send to each listed session's ``direct`` stream (one encode per session:
        for large audiences use a room, which is framed once). Fires once all
        are stored, or fails with the first send's failure."""
        stored = [self.send(session, event, data, ttl=ttl) for session in sessions]

        def first(failure: Failure) -> Failure:
            failure.trap(FirstError)
            return cast(FirstError, failure.value).subFailure

        done = gatherResults(stored, consumeErrors=True)
        return done.addCallbacks(lambda _: None, first)

    def batch(self) -> AbstractContextManager[None]:
        """``with hub.batch():`` the frames of every send and publish inside go
        out in one write per connection when the block ends (a burst of
        publishes from a timer, say). Frames written while handling a client's
        frames, or a backend's deliveries, are batched already.

        Reactor thread only, and never across an ``await`` or a Deferred: while
        a batch is open every connection's frames are held.
        """
        if not isInIOThread():
            raise RuntimeError("hub.batch() is for the reactor thread")
        return self.write_batch()

    @threadsafe
    def publish(
        self, room: str, event: str, data: Any = None, *, ttl: float | None = None
    ) -> Deferred[Envelope]:
        """Publish into a room's stream: encoded once for all its members (on every node).

        Fires with the stored envelope (offset, epoch); fails with
        ``BackendUnavailableError`` when the cluster cannot take it. From
        another thread the call blocks and returns the envelope itself.
        """
        return self._publish(room_key(room), event, data, ttl)

    @threadsafe
    def broadcast(
        self, event: str, data: Any = None, *, ttl: float | None = None
    ) -> Deferred[Envelope]:
        """Publish to every connection (the ``broadcast`` stream), on every node."""
        return self._publish(BROADCAST, event, data, ttl)

    def _publish(self, key: str, event: str, data: Any, ttl: float | None) -> Deferred[Envelope]:
        envelope = self._outbound(event, data, ttl)
        appended = self.backend.publish(key, envelope, envelope.timestamp)
        # The history keeps the payload compact; the caller gets its own back.
        return appended.addCallback(lambda stored: stored.evolve(data=envelope.data))

    def _ack_announced(self, notice: AckNotice) -> None:
        """A client acknowledged on some node (this one included)."""
        self._run(self.core.remote_ack(notice.session, notice.epoch, notice.through, notice.ref))
        self.remote_acks.acknowledged(notice)

    def _announce_ack(self, session: Session, ack: Envelope) -> None:
        if ack.ref is not None:
            notice = AckNotice(session.id, ref=ack.ref)
        elif ack.stream == DIRECT and ack.offset is not None:
            # A cumulative ack names no epoch: the one the session reads here.
            epoch = self.store.position(direct_key(session.id)).epoch
            last = self._announced.get(session.id)
            if last is not None and last[0] == epoch and ack.offset <= last[1]:
                return  # nothing new: the cluster heard it already
            self._announced[session.id] = (epoch, ack.offset)
            notice = AckNotice(session.id, epoch=epoch, through=ack.offset)
        else:
            return
        self.backend.announce_ack(notice)

    def _delivered(self, key: str, stored: Envelope) -> None:
        """The backend hands over a stream message for this node's members."""
        actions = self.core.deliver(key, stored)
        if actions:
            self._run(actions)
            latency = self.clock.seconds() - stored.timestamp / 1000
            self.metrics.delivery.observe(key.partition(":")[0], latency)

    def _settled(self, key: DedupKey, reply: Envelope) -> None:
        self.backend.record(key[0], key[1], reply)

    @property
    def health(self) -> str | None:
        """None when serving normally; else ``draining`` or ``degraded: <reason>``."""
        if self.draining:
            return "draining"
        reason = self.backend.health
        return None if reason is None else f"degraded: {reason}"

    def _outbound(self, event: str, data: Any, ttl: float | None, *, ack: bool = False) -> Envelope:
        """The envelope an application send becomes, after outbound middleware."""
        envelope = Envelope(
            type=MessageType.EVENT,
            id=self.core.new_id(),
            timestamp=self.now_ms(),
            event=event,
            data=data,
            ttl=None if ttl is None else max(1, int(ttl * 1000)),
            ack=ack,
        )
        for middleware in self.middleware:
            envelope = middleware.on_outbound(None, envelope)
        # Refuse it here, before the core stores it: a payload no codec can
        # encode would otherwise sit in the stream history and break every
        # replay of it (each resume of the session would fail).
        if envelope.data is not None:
            check_value(envelope.data, self.data_limits)
        return envelope

    # ------------------------------------------------------------ rooms and queries

    @threadsafe
    def join(self, session: str, room: str) -> Deferred[None]:
        """Put a local session in a room (fires once the room's stream is ready here)."""
        if session not in self.core.sessions:
            raise UnknownSessionError(session)

        def joined(_: object) -> None:
            self._run(self.core.join(session, room, self.now_ms()))
            self._update_gauges()
            self._session_changed(session)

        return self.backend.prepare([room_key(room)]).addCallback(joined)

    @threadsafe
    def leave(self, session: str, room: str) -> None:
        self._run(self.core.leave(session, room, self.now_ms()))
        self._update_gauges()
        self._session_changed(session)

    @threadsafe  # copies state the reactor thread mutates
    def room_members(self, room: str) -> set[str]:
        """Sessions in ``room`` (presence on this node)."""
        return set(self.core.room_sessions.get(room, ()))

    @threadsafe
    def presence(self, room: str) -> Deferred[set[str]]:
        """Sessions in ``room`` on every live node (this node's alone without a cluster)."""
        found = self.backend.presence(room)
        if found is None:
            return succeed(set(self.core.room_sessions.get(room, ())))
        return found

    @threadsafe
    def rooms(self) -> list[str]:
        return sorted(self.core.room_sessions)

    @threadsafe
    def sessions_of_user(self, user: str) -> set[str]:
        return self.core.sessions_of_user(user)

    @threadsafe
    def session_info(self, session: str) -> SessionInfo | None:
        """A read-only snapshot of a session held on this node, or None."""
        found = self.core.sessions.get(session)
        return SessionInfo.of(found) if found is not None else None

    @property
    def connection_count(self) -> int:
        return len(self._protocols)

    @property
    def session_count(self) -> int:
        return len(self.core.sessions)

    @threadsafe
    def is_connected(self, session: str) -> bool:
        found = self.core.sessions.get(session)
        return found is not None and found.conn is not None

    # ------------------------------------------------------------ protocol side

    def check_handshake(self, handshake: Handshake) -> None:
        """Run connect middleware; raises Reject to refuse."""
        if self.draining:
            raise Reject(ErrorCode.GOING_AWAY, "server is shutting down")
        for middleware in self.middleware:
            middleware.on_connect(handshake)

    def attach(self, protocol: WarpSocketServerProtocol, handshake: Handshake) -> ConnId:
        self._next_conn += 1
        conn_id = self._next_conn
        self._protocols[conn_id] = protocol
        self.core.open(conn_id, self.now_ms(), handshake.user, handshake.claims)
        self.metrics.connections.set(len(self._protocols))
        return conn_id

    def closing(self, conn_id: ConnId, code: int | None) -> None:
        """We sent the connection our close frame: the disconnect is counted
        now, under our code, not when the peer answers or the close times out."""
        if conn_id in self._protocols and conn_id not in self._closing:
            self._closing.add(conn_id)
            self.metrics.disconnects.labels(_close_label(code)).inc()

    def detach(self, conn_id: ConnId, code: int | None) -> None:
        protocol = self._protocols.pop(conn_id, None)
        if protocol is None:
            return
        self.metrics.connections.set(len(self._protocols))
        if conn_id in self._closing:
            self._closing.discard(conn_id)  # counted when we decided to close it
        else:
            self.metrics.disconnects.labels(_close_label(code)).inc()
        self._inbound.pop(conn_id, None)
        session = self.core.close(conn_id, self.now_ms())
        if session is not None and self.backend.clustered:
            self._save_session(session)
        if session is not None:
            ctx = self._context(session.id, protocol)
            for hook in self.on_close_hooks:
                self._call_hook(ctx, hook, ctx, code)
        self._update_gauges()
        # Last: a graceful stop may complete as soon as this fires, and the
        # on_close hooks of the last connection belong before that.
        if not self._protocols:
            waiters, self._empty_waiters = self._empty_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def received(self, conn_id: ConnId, payload: bytes, is_binary: bool) -> None:
        protocol = self._protocols.get(conn_id)
        if protocol is None:
            return
        traffic = self.metrics.traffic
        traffic.bytes_in += len(payload)
        if not protocol.can_send:
            # We are closing this connection (4204, 4400, 4500 ...): what it
            # still sends is not acted on. Above all, a replaced connection
            # (its session moved, so the core sees it as awaiting hello) must
            # not say hello again and take the session back.
            return
        now = self.now_ms()
        try:
            envelope = protocol.codec.decode(payload, is_binary)
        except ProtocolError as error:
            self.metrics.protocol_errors.labels(str(int(error.code))).inc()
            self._run(self.core.protocol_error(conn_id, error, now))
            return
        traffic.messages_in[envelope.type.value] += 1
        conn = self.core.connections.get(conn_id)
        if self.middleware and conn is not None and conn.session is not None:
            ctx = self._context(conn.session.id, protocol, envelope)
            try:
                for middleware in self.middleware:
                    envelope = middleware.on_inbound(ctx, envelope)
            except Reject as reject:
                refusal = ProtocolError(reject.code, reject.message, envelope.id)
                self.metrics.protocol_errors.labels(str(int(reject.code))).inc()
                self._run(self.core.protocol_error(conn_id, refusal, now))
                return
            except Exception:
                # A bug in middleware costs this one message (4501), not the
                # connection (autobahn would drop it on an exception here).
                failure = Failure()
                self.log.failure("inbound middleware failed", failure)
                self._report_error(ctx, failure)
                fault = ProtocolError(ErrorCode.INTERNAL_ERROR, "internal error", envelope.id)
                self.metrics.protocol_errors.labels(str(int(ErrorCode.INTERNAL_ERROR))).inc()
                self._run(self.core.protocol_error(conn_id, fault, now))
                return
        if (
            envelope.type is MessageType.ACK
            and self.backend.clustered
            and conn is not None
            and conn.session is not None
        ):
            # The message may have been sent by another node: tell them all.
            self._announce_ack(conn.session, envelope)
        queued = self._inbound.get(conn_id)
        if (
            queued is not None
            and envelope.type in _UNORDERED
            and conn is not None
            and conn.session is not None
        ):
            # Acks and heartbeats need no order with the held frames (they
            # answer the server): taking them at once keeps a client that
            # floods after a stall from filling the held queue with them.
            self._run(self.core.receive(conn_id, envelope, now))
            return
        if queued is not None:
            if len(queued) >= MAX_HELD_FRAMES:
                # Bounded: a client may not pile frames up behind a slow backend.
                full = ProtocolError(ErrorCode.QUEUE_FULL, "too many frames in flight", envelope.id)
                self.metrics.protocol_errors.labels(str(int(ErrorCode.QUEUE_FULL))).inc()
                self._run(self.core.protocol_error(conn_id, full, now))
                return
            queued.append(envelope)
            return
        self._feed(conn_id, envelope)

    def _feed(self, conn_id: ConnId, envelope: Envelope) -> None:
        """Feed the core, after whatever the backend must do first.

        A hello or subscribe waits for the streams it reads; a tracked event or
        call first claims its id in the cluster's dedup records. While that
        step is pending, the connection's later frames wait in order.
        """
        step = self._before_core(conn_id, envelope)
        if step is None:
            self._run(self.core.receive(conn_id, envelope, self.now_ms()))
            return
        outcome: list[Any] = []

        def capture(result: Any) -> None:
            outcome.append(result)

        step.addBoth(capture)
        if outcome:  # already there (always, with the memory backend)
            self._after_step(conn_id, envelope, outcome[0])
            return
        self._inbound[conn_id] = []

        def resume(_: object) -> None:
            self._after_step(conn_id, envelope, outcome[0])
            waiting = self._inbound.pop(conn_id, [])
            while waiting and conn_id in self._protocols:
                self._feed(conn_id, waiting.pop(0))
                if conn_id in self._inbound:
                    # That one waits for the backend too: the rest follow it.
                    self._inbound[conn_id].extend(waiting)
                    return

        step.addCallback(resume)

    def _before_core(self, conn_id: ConnId, envelope: Envelope) -> Deferred[Any] | None:
        backend = self.backend
        conn = self.core.connections.get(conn_id)
        if conn is None:
            return None
        kind = envelope.type
        if conn.session is None and kind is MessageType.HELLO:
            return self._prepare_hello(conn.user, envelope)
        if conn.session is None:
            return None
        if kind is MessageType.SUBSCRIBE and envelope.room:
            return backend.prepare([room_key(envelope.room)])
        if (
            backend.clustered
            and (kind is MessageType.CALL or (kind is MessageType.EVENT and envelope.ack))
            and envelope.stream is None
        ):
            principal = conn.session.principal
            if self.core.dedup.lookup((principal, envelope.id), self.now_ms()) is not None:
                return None  # this node knows it: the core answers the retry
            self._claims[(conn_id, envelope.id)] = principal
            return self._claim_when_decided(principal, envelope.id)
        return None

    def _claim_when_decided(self, principal: str, message_id: str) -> Deferred[Any]:
        """Claim a message id; while another node still holds it, ask again.

        Answering nothing and moving on to the connection's next frames would
        let them overtake this one; waiting (with the later frames held, in
        order) keeps the sender's order. The other node either records its
        answer, which is sent, or its claim expires and the message is handled
        here.
        """
        from warpsocket.backends.base import Claim

        deadline = self.clock.seconds() + CLAIM_WAIT_SECONDS

        def decided(claim: Claim) -> Claim | Deferred[Any]:
            if claim.first or claim.reply is not None or self.clock.seconds() >= deadline:
                return claim
            again = deferLater(self.clock, CLAIM_POLL_SECONDS, lambda: None)
            return again.addCallback(lambda _: self.backend.claim(principal, message_id, 0))

        def loop(claim: Claim) -> Claim | Deferred[Any]:
            result = decided(claim)
            return result.addCallback(loop) if isinstance(result, Deferred) else result

        return self.backend.claim(principal, message_id, self.now_ms()).addCallback(loop)

    def _prepare_hello(self, user: str | None, hello: Envelope) -> Deferred[Any]:
        data = hello.data if isinstance(hello.data, dict) else {}
        wanted = data.get("session")
        token = data.get("resume_token")
        token = token if isinstance(token, str) else None
        rooms = data.get("rooms")
        keys = [BROADCAST]
        if isinstance(rooms, list):
            keys += [room_key(r) for r in rooms if isinstance(r, str)]
        if not isinstance(wanted, str) or not self.backend.clustered:
            known = self.core.sessions.get(wanted) if isinstance(wanted, str) else None
            if known is not None:
                keys += [direct_key(known.id), *(room_key(r) for r in known.rooms)]
            return self.backend.prepare(keys)
        local = self.core.sessions.get(wanted)
        if local is not None:
            return self.backend.prepare(
                [*keys, direct_key(wanted), *(room_key(r) for r in local.rooms)]
            )

        def adopt(record: SessionRecord | None) -> Deferred[None]:
            extra = [direct_key(wanted)]
            if (
                record is not None
                and record.user == user
                and resume_token_matches(record.resume_hash, token)
                and wanted not in self.core.sessions
            ):
                self.core.adopt_session(
                    record.id,
                    record.user,
                    record.claims,
                    record.rooms,
                    record.starts,
                    self.now_ms(),
                    record.resume_hash,
                )
                extra += [room_key(r) for r in record.rooms]
            return self.backend.prepare([*keys, *extra])

        return self.backend.load_session(wanted).addCallback(adopt)

    def _after_step(self, conn_id: ConnId, envelope: Envelope, result: Any) -> None:
        from warpsocket.backends.base import Claim

        principal = self._claims.pop((conn_id, envelope.id), None)
        if conn_id not in self._protocols:
            if isinstance(result, Claim) and result.first and principal is not None:
                # Claimed, but the connection went before it could be handled:
                # free the id so that the client's retry is handled.
                self.backend.unclaim(principal, envelope.id)
            return
        now = self.now_ms()
        if isinstance(result, Failure):
            reason = result.getErrorMessage()
            self.log.warn("backend step failed: {reason}", reason=reason)
            if envelope.type is MessageType.HELLO:
                hint = json.dumps(
                    {"retry_after_ms": self.options.reconnect_hint_ms, "reason": reason}
                )
                self._close(conn_id, ErrorCode.GOING_AWAY, hint)
                return
            fault = ProtocolError(
                ErrorCode.UNAVAILABLE, f"cluster unavailable: {reason}", envelope.id
            )
            self._run(self.core.protocol_error(conn_id, fault, now))
            return
        if isinstance(result, Claim) and not result.first:
            # Another node handled (or is handling) this id: answer as it did.
            if result.reply is not None:
                self._send(conn_id, result.reply)
            return
        self._run(self.core.receive(conn_id, envelope, now))
        if envelope.type in (MessageType.SUBSCRIBE, MessageType.UNSUBSCRIBE):
            conn = self.core.connections.get(conn_id)
            if conn is not None and conn.session is not None:
                self._session_changed(conn.session.id)

    def run_timers(self, due_ms: int) -> None:
        """The connection timers due by ``due_ms`` (called by ``self.timers``)."""
        try:
            self._run(self.core.run_timers(max(self.now_ms(), due_ms)))
        except Exception:
            self.log.failure("connection timers failed")

    def heard(self, conn_id: ConnId) -> None:
        """Bytes of a frame of any type arrived on the connection (protocol.md section 9)."""
        self.core.heard(conn_id, self.now_ms())

    def tick(self) -> None:
        # An exception escaping here would stop the TimerService's LoopingCall
        # for good (no more heartbeats, timeouts or retries): log it instead.
        try:
            now = self.now_ms()
            self._run(self.core.tick(now))
            self._update_gauges()
            if isinstance(self.store, MemoryStreamStore):
                self.metrics.history_bytes.set(self.store.bytes)
            self.backend.tick(now)
            if self.backend.clustered:
                self._cluster_tick(now)
            else:
                self._collect_streams(now)
        except Exception:
            self.log.failure("hub tick failed")

    # ------------------------------------------------------------ actions

    def _collect_streams(self, now: int) -> None:
        """Now and then, forget in-memory streams of rooms and sessions that are gone."""
        self._ticks += 1
        store = self.store
        if self._ticks % STREAM_COLLECT_TICKS or not isinstance(store, MemoryStreamStore):
            return
        core = self.core

        def in_use(key: str) -> bool:
            if key.startswith("room:"):
                return key[5:] in core.room_sessions or key in core.members
            if key.startswith("direct:"):
                return key[7:] in core.sessions
            return True  # broadcast

        store.collect(in_use, now)

    def _cluster_tick(self, now: int) -> None:
        # Streams no local connection reads any more are not followed.
        for key in list(self.backend.following()):
            if key not in self.core.members:
                self.backend.release(key)
        self._sync_presence()
        if now >= self._next_session_save:
            self._next_session_save = now + self.options.core.session_ttl_ms // 4
            for session in list(self.core.sessions.values()):
                if session.conn is not None:
                    self._save_session(session)

    def _sync_presence(self) -> None:
        if not self.backend.clustered:
            return
        now_present = {
            (room, session_id)
            for room, sessions in self.core.room_sessions.items()
            for session_id in sessions
        }
        for room, session_id in now_present - self._present:
            self.backend.set_presence(room, session_id, True)
        for room, session_id in self._present - now_present:
            self.backend.set_presence(room, session_id, False)
        self._present = now_present

    def _save_session(self, session: Session) -> None:
        record = SessionRecord(
            session.id,
            session.user,
            dict(session.claims),
            tuple(sorted(session.rooms)),
            dict(session.starts),
            session.resume_hash,
        )
        # Outlives this node by the session TTL: another node can resume it.
        ttl = self.options.core.session_ttl_ms + int(self.options.tick_interval * 1000) * 2
        self.backend.save_session(record, ttl)

    def _session_changed(self, session_id: str) -> None:
        if not self.backend.clustered:
            return
        session = self.core.sessions.get(session_id)
        if session is not None:
            self._save_session(session)
        self._sync_presence()

    def _perform(self, publish: Publish) -> None:
        """A client's room event: append it through the backend, then answer."""
        reply_to = publish.reply_to

        def settled(_: Envelope) -> None:
            self._settle(reply_to)

        def failed(failure: Failure) -> None:
            self.log.warn("room publish failed: {why}", why=failure.getErrorMessage())
            self._settle(
                reply_to,
                error=(ErrorCode.UNAVAILABLE, f"cluster unavailable: {failure.getErrorMessage()}"),
            )

        self.backend.publish(publish.key, publish.template, self.now_ms()).addCallbacks(
            settled, failed
        )

    def _run(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Fanout):
                self._fanout(action.conns, action.envelope)
            elif isinstance(action, Send):
                self._send(action.conn, action.envelope)
            elif isinstance(action, Dispatch):
                self._dispatch(action)
            elif isinstance(action, Close):
                self._close(action.conn, action.code, action.reason)
            elif isinstance(action, AckResult):
                self._ack_result(action)
            elif isinstance(action, SessionOpened):
                self._opened(action)
            elif isinstance(action, Publish):
                self._perform(action)
            elif isinstance(action, SessionExpired):
                self._announced.pop(action.session, None)
                self.log.debug("session {session} expired", session=action.session)

    def _send(self, conn_id: ConnId, envelope: Envelope) -> None:
        protocol = self._protocols.get(conn_id)
        if protocol is None or not protocol.can_send:
            # Closing (our close frame or the peer's is out): nothing more may be
            # sent, and autobahn's sendMessage would raise Disconnected here.
            return
        try:
            payload = protocol.codec.encode(envelope)
        except Exception:
            substitute = self._unencodable(protocol.codec, envelope, Failure())
            if substitute is None:
                return
            payload = substitute
        traffic = self.metrics.traffic
        traffic.encodes += 1
        traffic.messages_out[envelope.type.value] += 1
        traffic.bytes_out += len(payload)
        protocol.sendMessage(payload, isBinary=protocol.codec.binary)

    def _fanout(self, conn_ids: tuple[ConnId, ...], envelope: Envelope) -> None:
        """Encode and frame once per codec, then write the same frame to everyone."""
        prepared: dict[str, Any] = {}
        protocols = self._protocols
        sent = 0
        size = 0
        last_codec: Codec | None = None
        message: Any = None
        for conn_id in conn_ids:
            protocol = protocols.get(conn_id)
            if protocol is None or not protocol.can_send:
                # sendPreparedMessage does not check the state itself: it would
                # write a data frame after a close frame.
                continue
            codec: Codec = protocol.codec
            if codec is not last_codec:
                last_codec = codec
                message = prepared.get(codec.subprotocol)
                if message is None:
                    try:
                        payload = codec.encode(envelope)
                    except Exception:
                        substitute = self._unencodable(codec, envelope, Failure())
                        if substitute is None:
                            continue
                        payload = substitute
                    self.metrics.traffic.encodes += 1
                    size = len(payload)
                    message = protocol.factory.prepareMessage(payload, isBinary=codec.binary)
                    prepared[codec.subprotocol] = message
            if protocol.plain:
                protocol.write_frame(message.payloadHybi)
            else:
                protocol.sendPreparedMessage(message)
            sent += 1
        if sent:
            traffic = self.metrics.traffic
            traffic.messages_out[envelope.type.value] += sent
            traffic.bytes_out += size * sent

    def _unencodable(self, codec: Codec, envelope: Envelope, failure: Failure) -> bytes | None:
        """An envelope this codec cannot encode (the data model makes it rare:
        an application's own codec, say). It costs that one envelope, never
        the connection or the stream: a stream event is replaced by a
        placeholder (protocol.md 5.2) so members see no gap; anything else is
        dropped. Returns what to send instead, if anything."""
        self.log.failure(
            "cannot encode {kind} {id} (stream {stream}, offset {offset}) with {codec}",
            failure,
            kind=envelope.type.value,
            id=envelope.id,
            stream=envelope.stream,
            offset=envelope.offset,
            codec=codec.subprotocol,
        )
        self.metrics.encode_failures.inc()
        if envelope.offset is None:
            return None
        try:
            return codec.encode(unencodable_placeholder(envelope))
        except Exception:
            self.log.failure("cannot encode a placeholder with {codec}", codec=codec.subprotocol)
            return None

    def _close(self, conn_id: ConnId, code: ErrorCode, reason: str) -> None:
        protocol = self._protocols.get(conn_id)
        if protocol is not None:
            protocol.sendClose(int(code), reason or code.wire_name)

    def _ack_result(self, result: AckResult) -> None:
        waiter = self._ack_waiters.pop((result.session, result.offset, result.epoch), None)
        self.metrics.acks_pending.set(len(self._ack_waiters))
        if waiter is None:
            return
        if result.code is None:
            waiter.callback(None)
        else:
            waiter.errback(AckTimeoutError(result.session, result.offset, result.code))

    def _opened(self, opened: SessionOpened) -> None:
        self.metrics.resumes.labels("resumed" if opened.resumed else "new").inc()
        protocol = self._protocols.get(opened.conn)
        protocol_session = self.core.sessions.get(opened.session)
        if protocol is None or protocol_session is None:
            return
        protocol.session = opened.session
        ctx = self._context(opened.session, protocol)
        for hook in self.on_open_hooks:
            self._call_hook(ctx, hook, ctx, opened.resumed)
        self._update_gauges()
        self._session_changed(opened.session)

    def _dispatch(self, dispatch: Dispatch) -> None:
        envelope = dispatch.envelope
        protocol = self._protocols.get(dispatch.conn)
        ctx = self._context(dispatch.session, protocol, envelope)
        if envelope.type is MessageType.AUTH:
            token = envelope.data.get("token") if isinstance(envelope.data, dict) else None
            if self.authenticator is None:
                self._settle(dispatch, error=(ErrorCode.UNAUTHORIZED, "no authenticator"))
                return
            self._run_handler(dispatch, ctx, self.authenticator, token)
            return
        name = envelope.event or "message"
        handler = self.handlers.get(name)
        if handler is None:
            self._settle(dispatch, error=(ErrorCode.NO_HANDLER, f"no handler for {name!r}"))
            return
        self._run_handler(dispatch, ctx, handler, envelope.data)

    def _run_handler(
        self, dispatch: Dispatch, ctx: Context, handler: Callable[[Context, Any], Any], arg: Any
    ) -> None:
        started = self.clock.seconds()
        name = dispatch.envelope.event or dispatch.envelope.type.value

        def done(value: Any) -> None:
            if dispatch.envelope.type is MessageType.CALL and not isinstance(value, _SCALARS):
                try:
                    check_value(value, self.data_limits)
                except DataModelError:
                    # Unencodable results would be recorded for dedup and then
                    # fail to encode on every answer: answer 4300 instead.
                    failed(Failure())
                    return
            self._observe_latency(name, started)
            self._settle(dispatch, result=value)

        def failed(failure: Failure) -> None:
            self._observe_latency(name, started)
            if failure.check(Reject):
                reject = cast(Reject, failure.value)
                self._settle(dispatch, error=(reject.code, reject.message))
                return
            if failure.check(QueueFullError):
                # A join made for the client past its room limit (protocol.md 11).
                self._settle(dispatch, error=(ErrorCode.QUEUE_FULL, failure.getErrorMessage()))
                return
            self.log.failure("handler {name} failed", failure, name=name)
            self._report_error(ctx, failure)
            self._settle(dispatch, error=(ErrorCode.HANDLER_ERROR, "handler failed"))

        try:
            value = handler(ctx, arg)
        except Exception:
            failed(Failure())
            return
        if isinstance(value, Deferred) or inspect.isawaitable(value):
            invoke(lambda: value).addCallbacks(done, failed)
        else:
            done(value)  # the common case: no Deferred machinery per message

    def _observe_latency(self, name: str, started: float) -> None:
        child = self._latency.get(name)
        if child is None:
            if len(self._latency) >= MAX_LATENCY_LABELS:
                name, child = "other", self.metrics.handler_latency.labels("other")
            else:
                child = self._latency[name] = self.metrics.handler_latency.labels(name)
        child.observe(self.clock.seconds() - started)

    def _settle(
        self,
        dispatch: Dispatch,
        *,
        result: Any = None,
        error: tuple[ErrorCode | int, str] | None = None,
    ) -> None:
        self._run(
            self.core.settle(
                dispatch.session, dispatch.envelope, self.now_ms(), result=result, error=error
            )
        )

    def _context(
        self,
        session: str,
        protocol: WarpSocketServerProtocol | None,
        envelope: Envelope | None = None,
    ) -> Context:
        info = self.core.sessions.get(session)
        handshake = protocol.handshake if protocol is not None else None
        return Context(
            hub=self,
            session=session,
            user=info.user if info is not None else None,
            claims=info.claims if info is not None else {},
            peer=handshake.peer if handshake is not None else "",
            envelope=envelope,
            annotations=handshake.annotations if handshake is not None else {},
        )

    def _call_hook(self, ctx: Context, hook: Callable[..., Any], *args: Any) -> None:
        result = invoke(hook, *args)
        result.addErrback(lambda failure: self._report_error(ctx, failure))

    def _report_error(self, ctx: Context | None, failure: Failure) -> None:
        for hook in self.on_error_hooks:
            try:
                hook(ctx, failure)
            except Exception:
                self.log.failure("on_error hook failed")

    def _update_gauges(self) -> None:
        self.metrics.sessions.set(len(self.core.sessions))
        self.metrics.rooms.set(len(self.core.room_sessions))

    # ------------------------------------------------------------ shutdown

    def close_all(self, code: ErrorCode, reason: str) -> None:
        for protocol in list(self._protocols.values()):
            protocol.sendClose(int(code), reason)

    def when_empty(self) -> Deferred[None]:
        """Fires when no connection is left (at once if there is none)."""
        if not self._protocols:
            return succeed(None)
        waiter: Deferred[None] = Deferred(lambda d: self._empty_waiters.remove(d))
        self._empty_waiters.append(waiter)
        return waiter

    def abort_all(self) -> None:
        for protocol in list(self._protocols.values()):
            transport: Any = protocol.transport
            if transport is not None:
                transport.abortConnection()

    def fail_pending_acks(self, code: ErrorCode) -> None:
        for (session, offset, epoch), waiter in list(self._ack_waiters.items()):
            del self._ack_waiters[(session, offset, epoch)]
            waiter.errback(AckTimeoutError(session, offset, code))
        self.metrics.acks_pending.set(len(self._ack_waiters))
        self.remote_acks.fail_all(lambda session, offset: AckTimeoutError(session, offset, code))


__all__ = [
    "AckTimeoutError",
    "HistoryLimits",
    "Hub",
    "HubOptions",
    "direct_key",
]
