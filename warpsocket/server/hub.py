"""The hub: the server's public API.

``Hub`` is a facade over the parts that do the work, each with one job and
each depending only on the ones below it (docs/architecture.md):

- ``ActionRunner`` (runner.py): the open connections and the core's actions
  (a ``Fanout`` is encoded and framed once per codec, then written to all);
- ``Outbox`` (outbox.py): sends and publishes, through the backend, and the
  acknowledgements they wait for;
- ``Dispatcher`` (dispatcher.py): handlers and hooks;
- ``Inbound`` (inbound.py): decoding, middleware and held frames;
- ``ClusterSync`` (cluster_sync.py): session records, presence, remote acks;
- ``HubPort`` (port.py, ``hub.port``): what the transport and the service
  call (attach, receive, timers, shutdown); not application API.

All of its public methods may be called from any thread: off the reactor
thread they run on the reactor thread (threads.py), so every write happens
there and frames never interleave. Called that way, a method that returns a
Deferred returns a ``concurrent.futures.Future`` of its result instead:
``hub.send(..., ack=True).result(timeout=30)`` from a worker thread waits
for the client's acknowledgement.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar, cast, overload

from twisted.internet.defer import Deferred, FirstError, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadable import isInIOThread

from warpsocket.backends.base import Backend
from warpsocket.backends.memory import MemoryBackend
from warpsocket.core.history import HistoryLimits
from warpsocket.core.ids import SequentialIds, random_id
from warpsocket.core.keys import BROADCAST, direct_key, room_key
from warpsocket.core.server import ServerCore, Session, UnknownSessionError
from warpsocket.core.store import StreamStore
from warpsocket.crypto.hub import HubSigning, offered_extensions
from warpsocket.protocol.codecs import CodecRegistry, default_codecs
from warpsocket.protocol.codes import ErrorCode
from warpsocket.protocol.envelope import Envelope
from warpsocket.server.batches import Batches, offered_batches
from warpsocket.server.cluster_sync import ClusterSync
from warpsocket.server.context import Context
from warpsocket.server.dispatcher import CloseHook, Dispatcher, ErrorHook, Handler, OpenHook
from warpsocket.server.inbound import MAX_HELD_FRAMES, Inbound
from warpsocket.server.metrics import HubMetrics
from warpsocket.server.middleware import LoggingMiddleware, Middleware
from warpsocket.server.observe.install import Observe, install
from warpsocket.server.observe.slow import SlowHook, SlowWatch
from warpsocket.server.observe.tap import EnvelopeTap
from warpsocket.server.options import HubOptions
from warpsocket.server.outbox import AckTimeoutError, Outbox
from warpsocket.server.port import STREAM_COLLECT_TICKS, HubPort
from warpsocket.server.remote_acks import RemoteAcks
from warpsocket.server.runner import ActionRunner
from warpsocket.server.session_info import SessionInfo
from warpsocket.server.threads import threadsafe
from warpsocket.server.wire.batching import WriteBatch

HandlerT = TypeVar("HandlerT", bound=Handler)


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
    - ``tracer_provider``: an OpenTelemetry ``TracerProvider`` to trace with
      (implies tracing; ``HubOptions(tracing=True)`` uses the global one).

    ``hub.core`` (the sans-I/O ``ServerCore``), ``hub.backend``,
    ``hub.metrics``, ``hub.options`` and ``hub.observe`` (what observability
    is on, or None: docs/observability.md) are there to read; ``hub.port`` is
    the transport's and the service's door in (not application API).
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
        tracer_provider: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.options = options if options is not None else HubOptions()
        # Offers e2e.aes-gcm, and sign when configured (warpsocket/crypto/hub.py).
        core_options = offered_extensions(self.options.core, self.options.signing)
        # Offers batch (many envelopes in one frame; warpsocket/server/batches.py).
        if self.options.batches:
            core_options = offered_batches(core_options)
        # The data model's bounds scale with the message size limit (protocol.md 2.1).
        self.codecs = codecs if codecs is not None else default_codecs(core_options.data_limits)
        self.middleware: list[Middleware] = list(middleware)
        if self.options.debug:
            self.middleware.insert(0, LoggingMiddleware())
        self.metrics = HubMetrics()
        write_batch = WriteBatch(reactor.callLater)
        node_tag = f"{core_options.node}.{random_id()[:6]}"
        if backend is None:
            backend = MemoryBackend(core_options.history, store=store)
        # Where streams, sessions, dedup records and presence live (docs/cluster.md).
        self.backend: Backend = backend
        self.store = backend.store
        backend.set_batch(write_batch)
        open_rooms = self.options.open_rooms
        self.core = ServerCore(
            self.store,
            core_options,
            new_id=SequentialIds(node_tag),
            new_session_id=random_id,
            can_join=can_join or (lambda s, r: open_rooms),
            can_publish=can_publish or (lambda s, r, e: open_rooms),
        )
        self.metrics.core_counts.core = self.core
        core, metrics, clock, now_ms = self.core, self.metrics, self.clock, self.now_ms
        runner = ActionRunner(metrics)
        run = runner.run
        remote_acks = RemoteAcks(
            clock,
            core_options.max_pending_acks,
            lambda session, offset: AckTimeoutError(session, offset, ErrorCode.TIMEOUT),
        )
        self._outbox = Outbox(
            core,
            backend,
            run=run,
            now_ms=now_ms,
            clock=clock,
            metrics=metrics,
            middleware=self.middleware,
            remote_acks=remote_acks,
        )
        self._dispatcher = Dispatcher(
            core,
            metrics,
            clock,
            send=runner.send,
            now_ms=now_ms,
            connection=runner.connections.get,
            hub=self,
        )
        self._cluster = ClusterSync(
            core,
            backend,
            remote_acks,
            run=run,
            # Outlives this node by the session TTL: another node can resume it.
            record_ttl_ms=core_options.session_ttl_ms + int(self.options.tick_interval * 1000) * 2,
        )
        inbound = Inbound(
            core,
            backend,
            metrics,
            clock,
            connections=runner.connections,
            middleware=self.middleware,
            run=run,
            dispatch=self._dispatcher.dispatch_event,
            send=runner.send,
            close=runner.close,
            now_ms=now_ms,
            context=self._dispatcher.context,
            report_error=self._dispatcher.report_error,
            announce_ack=self._cluster.announce_ack,
            session_changed=self._cluster.session_changed,
            reconnect_hint_ms=self.options.reconnect_hint_ms,
            signing=HubSigning(self.options.signing) if self.options.signing else None,
        )
        inbound.batches = Batches(
            core,
            metrics,
            runner,
            # Late-bound: observability (install, below) wraps ``_take``.
            take=lambda conn_id, connection, envelope: inbound._take(conn_id, connection, envelope),
            now_ms=now_ms,
        )
        self.port = HubPort(
            core,
            backend,
            metrics,
            clock,
            runner=runner,
            inbound=inbound,
            dispatcher=self._dispatcher,
            cluster=self._cluster,
            outbox=self._outbox,
            middleware=self.middleware,
            write_batch=write_batch,
        )
        runner.route(
            dispatch=self._dispatcher.dispatch,
            publish=self._outbox.perform,
            ack_result=self._outbox.ack_result,
            opened=self.port.opened,
            expired=self._expired,
        )
        self._run = run
        self._connections = runner.connections
        self.observe = self._observe(tracer_provider)
        if self.observe is not None:
            install(
                self.observe,
                clock=clock,
                runner=runner,
                inbound=inbound,
                dispatcher=self._dispatcher,
                outbox=self._outbox,
                port=self.port,
            )

    def _observe(self, tracer_provider: Any) -> Observe | None:
        """What observability is on (docs/observability.md); None: nothing."""
        options = self.options
        tracer = None
        if options.tracing or tracer_provider is not None:
            try:
                from warpsocket.server.observe.tracing import HubTracer
            except ImportError as exc:
                raise ImportError(
                    f"tracing needs the otel extra (warpsocket[otel]): {exc}"
                ) from None

            tracer = HubTracer(tracer_provider)
        slow = SlowWatch(options.slow, self.clock, self.metrics.slow) if options.slow.any else None
        tap = EnvelopeTap(self.clock.seconds) if options.inspect else None
        if tracer is None and slow is None and tap is None:
            return None
        return Observe(tracer, slow, tap)

    def _expired(self, session: str) -> None:
        self._cluster.expired(session)
        self.log.debug("session {session} expired", session=session)

    # ------------------------------------------------------------ registration

    @property
    def handlers(self) -> dict[str, Handler]:
        """Event or RPC method name -> handler (``on`` fills it)."""
        return self._dispatcher.handlers

    @property
    def authenticator(self) -> Callable[[Context, str], Any] | None:
        """What verifies the token of an ``auth`` envelope (set by the security gate)."""
        return self._dispatcher.authenticator

    @authenticator.setter
    def authenticator(self, value: Callable[[Context, str], Any] | None) -> None:
        self._dispatcher.authenticator = value

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
            self._dispatcher.handlers[event] = func
            return func

        return register(handler) if handler is not None else register

    def on_open(self, hook: OpenHook) -> OpenHook:
        """``hook(ctx, resumed)`` after each welcome."""
        self._dispatcher.on_open_hooks.append(hook)
        return hook

    def on_close(self, hook: CloseHook) -> CloseHook:
        """``hook(ctx, close_code)`` when a connection of a session closes."""
        self._dispatcher.on_close_hooks.append(hook)
        return hook

    def on_error(self, hook: ErrorHook) -> ErrorHook:
        """``hook(ctx_or_None, failure)`` when a handler or hook fails."""
        self._dispatcher.on_error_hooks.append(hook)
        return hook

    def on_slow(self, hook: SlowHook) -> SlowHook:
        """``hook(SlowEvent)`` whenever a slow-message threshold is crossed
        (``HubOptions.slow``; for paging). Needs at least one threshold set."""
        if self.observe is None or self.observe.slow is None:
            raise RuntimeError("on_slow needs HubOptions(slow=SlowThresholds(...))")
        self.observe.slow.hooks.append(hook)
        return hook

    def use(self, middleware: Middleware) -> None:
        """Append middleware to the chain (docs: middleware.py)."""
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
        return self._outbox.send(session, event, data, ack=ack, ttl=ttl, timeout=timeout)

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
        return self.port.write_batch()

    @threadsafe
    def publish(
        self, room: str, event: str, data: Any = None, *, ttl: float | None = None
    ) -> Deferred[Envelope]:
        """Publish into a room's stream: encoded once for all its members (on every node).

        Fires with the stored envelope (offset, epoch); fails with
        ``BackendUnavailableError`` when the cluster cannot take it. From
        another thread the call blocks and returns the envelope itself.
        """
        return self._outbox.publish(room_key(room), event, data, ttl)

    @threadsafe
    def broadcast(
        self, event: str, data: Any = None, *, ttl: float | None = None
    ) -> Deferred[Envelope]:
        """Publish to every connection (the ``broadcast`` stream), on every node."""
        return self._outbox.publish(BROADCAST, event, data, ttl)

    @property
    def draining(self) -> bool:
        """True while the service drains (new connections are refused)."""
        return self.port.draining

    @property
    def health(self) -> str | None:
        """None when serving normally; else ``draining`` or ``degraded: <reason>``."""
        if self.port.draining:
            return "draining"
        reason = self.backend.health
        return None if reason is None else f"degraded: {reason}"

    # ------------------------------------------------------------ rooms and queries

    @threadsafe
    def join(self, session: str, room: str) -> Deferred[None]:
        """Put a local session in a room (fires once the room's stream is ready here)."""
        if session not in self.core.sessions:
            raise UnknownSessionError(session)

        def joined(_: object) -> None:
            self._run(self.core.join(session, room, self.now_ms()))
            self._cluster.session_changed(session)

        return self.backend.prepare([room_key(room)]).addCallback(joined)

    @threadsafe
    def leave(self, session: str, room: str) -> None:
        self._run(self.core.leave(session, room, self.now_ms()))
        self._cluster.session_changed(session)

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
        return len(self._connections)

    @property
    def session_count(self) -> int:
        return len(self.core.sessions)

    @threadsafe
    def is_connected(self, session: str) -> bool:
        found = self.core.sessions.get(session)
        return found is not None and found.conn is not None


__all__ = [
    "MAX_HELD_FRAMES",
    "STREAM_COLLECT_TICKS",
    "AckTimeoutError",
    "HistoryLimits",
    "Hub",
    "HubOptions",
    "direct_key",
]
