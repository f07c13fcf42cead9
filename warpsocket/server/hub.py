"""The hub: the server's public API and the I/O half of the reliability core.

The hub owns a ``ServerCore`` and every open ``WarpSocketServerProtocol``.
It decodes frames, runs middleware and handlers, and performs the core's
actions: a ``Fanout`` is encoded and framed once per codec in use and the
same prepared frame is written to every recipient.

All of its public methods may be called from any thread: off the reactor
thread they are forwarded with ``blockingCallFromThread``, so every write
happens on the reactor thread and frames never interleave.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast, overload

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import blockingCallFromThread
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadable import isInIOThread

from warpsocket.core.history import HistoryLimits
from warpsocket.core.ids import SequentialIds, random_id
from warpsocket.core.server import (
    BROADCAST,
    AckResult,
    Action,
    Close,
    ConnId,
    CoreOptions,
    Dispatch,
    Fanout,
    Send,
    ServerCore,
    Session,
    SessionExpired,
    SessionOpened,
    direct_key,
    room_key,
)
from warpsocket.core.store import MemoryStreamStore, StreamStore
from warpsocket.protocol.codecs import Codec, CodecRegistry, default_codecs
from warpsocket.protocol.codes import ErrorCode, ProtocolError
from warpsocket.protocol.envelope import Envelope, MessageType
from warpsocket.server.context import Context
from warpsocket.server.metrics import HubMetrics
from warpsocket.server.middleware import Handshake, LoggingMiddleware, Middleware, Reject

if TYPE_CHECKING:
    from warpsocket.server.protocol import WarpSocketServerProtocol

P = ParamSpec("P")
R = TypeVar("R")

Handler = Callable[[Context, Any], Any]
HandlerT = TypeVar("HandlerT", bound=Handler)
OpenHook = Callable[[Context, bool], Any]
CloseHook = Callable[[Context, int | None], Any]
ErrorHook = Callable[[Context | None, Failure], Any]


class AckTimeoutError(Exception):
    """An acknowledged send was not acknowledged in time (or its session expired)."""

    def __init__(self, session: str, offset: int, code: ErrorCode) -> None:
        super().__init__(f"session {session}: message {offset} not acknowledged ({code.wire_name})")
        self.session = session
        self.offset = offset
        self.code = code


@dataclass(frozen=True)
class HubOptions:
    """Server behaviour around the core; defaults are the production values."""

    core: CoreOptions = field(default_factory=CoreOptions)
    tick_interval: float = 1.0
    shutdown_timeout: float = 10.0
    reconnect_hint_ms: int = 2_000
    debug: bool = False
    # Standalone mode: clients may subscribe to and publish into any room.
    open_rooms: bool = False

    def __post_init__(self) -> None:
        if self.tick_interval <= 0 or self.shutdown_timeout <= 0:
            raise ValueError("tick_interval and shutdown_timeout must be positive")
        if self.reconnect_hint_ms < 0:
            raise ValueError("reconnect_hint_ms must be >= 0")


def threadsafe(method: Callable[P, R]) -> Callable[P, R]:
    """Run ``method`` on the reactor thread, blocking the calling thread if need be."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        if isInIOThread():
            return method(*args, **kwargs)
        hub = cast(Hub, args[0])
        result: R = blockingCallFromThread(hub.reactor, method, *args, **kwargs)
        return result

    return wrapper


class Hub:
    log = Logger()

    def __init__(
        self,
        options: HubOptions | None = None,
        *,
        clock: IReactorTime | None = None,
        reactor: Any = None,
        store: StreamStore | None = None,
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
        self.codecs = codecs if codecs is not None else default_codecs()
        self.middleware: list[Middleware] = list(middleware)
        if self.options.debug:
            self.middleware.insert(0, LoggingMiddleware())
        self.metrics = HubMetrics()
        node_tag = f"{core_options.node}.{random_id()[:6]}"
        self.store = (
            store
            if store is not None
            else MemoryStreamStore(core_options.history, lambda: random_id()[:11])
        )
        open_rooms = self.options.open_rooms
        self.core = ServerCore(
            self.store,
            core_options,
            new_id=SequentialIds(node_tag),
            new_session_id=random_id,
            can_join=can_join or (lambda s, r: open_rooms),
            can_publish=can_publish or (lambda s, r, e: open_rooms),
        )
        self.handlers: dict[str, Handler] = {}
        self.on_open_hooks: list[OpenHook] = []
        self.on_close_hooks: list[CloseHook] = []
        self.on_error_hooks: list[ErrorHook] = []
        self.authenticator: Callable[[Context, str], Any] | None = None
        self.draining = False
        self._protocols: dict[ConnId, WarpSocketServerProtocol] = {}
        self._next_conn = 0
        self._ack_waiters: dict[tuple[str, int], Deferred[None]] = {}
        self._empty_waiters: list[Deferred[None]] = []

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
    ) -> Deferred[None] | None:
        """Send to one session's ``direct`` stream (delivered on resume if offline).

        With ``ack=True`` returns a Deferred that fires when the client
        acknowledges, or fails with ``AckTimeoutError`` after ``timeout``
        seconds (default: the core's ``ack_timeout_ms``).
        """
        template = self._outbound(event, data, ttl)
        now = self.now_ms()
        stored, actions = self.core.send_direct(
            session,
            template.event or event,
            template.data,
            now,
            ack=ack,
            ttl=template.ttl,
            timeout_ms=None if timeout is None else int(timeout * 1000),
        )
        waiter: Deferred[None] | None = None
        if ack:
            assert stored.offset is not None
            waiter = Deferred()
            self._ack_waiters[(session, stored.offset)] = waiter
            self.metrics.acks_pending.set(len(self._ack_waiters))
        self._run(actions)
        return waiter

    @threadsafe
    def send_user(
        self, user: str, event: str, data: Any = None, *, ttl: float | None = None
    ) -> int:
        """Send to every session of ``user``; returns how many sessions."""
        sessions = self.core.sessions_of_user(user)
        for session in sessions:
            self.send(session, event, data, ttl=ttl)
        return len(sessions)

    @threadsafe
    def send_group(
        self, sessions: Iterable[str], event: str, data: Any = None, *, ttl: float | None = None
    ) -> None:
        """Send to each listed session's ``direct`` stream (one encode per session:
        for large audiences use a room, which is framed once)."""
        for session in sessions:
            self.send(session, event, data, ttl=ttl)

    @threadsafe
    def publish(
        self, room: str, event: str, data: Any = None, *, ttl: float | None = None
    ) -> Envelope:
        """Publish into a room's stream: encoded once for all its members."""
        return self._publish(room_key(room), event, data, ttl)

    @threadsafe
    def broadcast(self, event: str, data: Any = None, *, ttl: float | None = None) -> Envelope:
        """Publish to every connection (the ``broadcast`` stream)."""
        return self._publish(BROADCAST, event, data, ttl)

    def _publish(self, key: str, event: str, data: Any, ttl: float | None) -> Envelope:
        template = self._outbound(event, data, ttl)
        stored, actions = self.core.publish(
            key, template.event or event, template.data, self.now_ms(), ttl=template.ttl
        )
        self._run(actions)
        return stored

    def _outbound(self, event: str, data: Any, ttl: float | None) -> Envelope:
        envelope = Envelope(
            type=MessageType.EVENT,
            id="outbound",
            timestamp=self.now_ms(),
            event=event,
            data=data,
            ttl=None if ttl is None else max(1, int(ttl * 1000)),
        )
        for middleware in self.middleware:
            envelope = middleware.on_outbound(None, envelope)
        # Refuse it here, before the core stores it: a payload no codec can
        # encode would otherwise sit in the stream history and break every
        # replay of it (each resume of the session would fail).
        _check_encodable(envelope.data)
        return envelope

    # ------------------------------------------------------------ rooms and queries

    @threadsafe
    def join(self, session: str, room: str) -> None:
        self._run(self.core.join(session, room, self.now_ms()))
        self._update_gauges()

    @threadsafe
    def leave(self, session: str, room: str) -> None:
        self._run(self.core.leave(session, room, self.now_ms()))
        self._update_gauges()

    @threadsafe  # copies state the reactor thread mutates
    def room_members(self, room: str) -> set[str]:
        """Sessions in ``room`` (presence on this node)."""
        return set(self.core.room_sessions.get(room, ()))

    @threadsafe
    def rooms(self) -> list[str]:
        return sorted(self.core.room_sessions)

    @threadsafe
    def sessions_of_user(self, user: str) -> set[str]:
        return self.core.sessions_of_user(user)

    def session_info(self, session: str) -> Session | None:
        return self.core.sessions.get(session)

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

    def detach(self, conn_id: ConnId, code: int | None) -> None:
        protocol = self._protocols.pop(conn_id, None)
        if protocol is None:
            return
        self.metrics.connections.set(len(self._protocols))
        self.metrics.disconnects.labels(str(code)).inc()
        session = self.core.close(conn_id, self.now_ms())
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
        self.metrics.bytes_in.inc(len(payload))
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
        self.metrics.messages_in.labels(envelope.type.value).inc()
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
        self._run(self.core.receive(conn_id, envelope, now))

    def tick(self) -> None:
        # An exception escaping here would stop the TimerService's LoopingCall
        # for good (no more heartbeats, timeouts or retries): log it instead.
        try:
            self._run(self.core.tick(self.now_ms()))
            self._update_gauges()
        except Exception:
            self.log.failure("hub tick failed")

    # ------------------------------------------------------------ actions

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
            elif isinstance(action, SessionExpired):
                self.log.debug("session {session} expired", session=action.session)

    def _send(self, conn_id: ConnId, envelope: Envelope) -> None:
        protocol = self._protocols.get(conn_id)
        if protocol is None or not protocol.can_send:
            # Closing (our close frame or the peer's is out): nothing more may be
            # sent, and autobahn's sendMessage would raise Disconnected here.
            return
        payload = protocol.codec.encode(envelope)
        self.metrics.encodes.inc()
        self.metrics.messages_out.labels(envelope.type.value).inc()
        self.metrics.bytes_out.inc(len(payload))
        protocol.sendMessage(payload, isBinary=protocol.codec.binary)

    def _fanout(self, conn_ids: tuple[ConnId, ...], envelope: Envelope) -> None:
        """Encode and frame once per codec, then write the same frame to everyone."""
        prepared: dict[str, Any] = {}
        protocols = self._protocols
        sent = 0
        size = 0
        for conn_id in conn_ids:
            protocol = protocols.get(conn_id)
            if protocol is None or not protocol.can_send:
                # sendPreparedMessage does not check the state itself: it would
                # write a data frame after a close frame.
                continue
            codec: Codec = protocol.codec
            frame = prepared.get(codec.subprotocol)
            if frame is None:
                payload = codec.encode(envelope)
                self.metrics.encodes.inc()
                size = len(payload)
                frame = protocol.factory.prepareMessage(payload, isBinary=codec.binary)
                prepared[codec.subprotocol] = frame
            protocol.sendPreparedMessage(frame)
            sent += 1
        if sent:
            self.metrics.messages_out.labels(envelope.type.value).inc(sent)
            self.metrics.bytes_out.inc(size * sent)

    def _close(self, conn_id: ConnId, code: ErrorCode, reason: str) -> None:
        protocol = self._protocols.get(conn_id)
        if protocol is not None:
            protocol.sendClose(int(code), reason or code.wire_name)

    def _ack_result(self, result: AckResult) -> None:
        waiter = self._ack_waiters.pop((result.session, result.offset), None)
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
        result = _invoke(handler, ctx, arg)

        def done(value: Any) -> None:
            if dispatch.envelope.type is MessageType.CALL:
                try:
                    _check_encodable(value)
                except (TypeError, ValueError):
                    # Unencodable results would be recorded for dedup and then
                    # fail to encode on every answer: answer 4300 instead.
                    failed(Failure())
                    return
            self.metrics.handler_latency.labels(name).observe(self.clock.seconds() - started)
            self._settle(dispatch, result=value)

        def failed(failure: Failure) -> None:
            self.metrics.handler_latency.labels(name).observe(self.clock.seconds() - started)
            if failure.check(Reject):
                reject = cast(Reject, failure.value)
                self._settle(dispatch, error=(reject.code, reject.message))
                return
            self.log.failure("handler {name} failed", failure, name=name)
            self._report_error(ctx, failure)
            self._settle(dispatch, error=(ErrorCode.HANDLER_ERROR, "handler failed"))

        result.addCallbacks(done, failed)

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
        result = _invoke(hook, *args)
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
        for (session, offset), waiter in list(self._ack_waiters.items()):
            del self._ack_waiters[(session, offset)]
            waiter.errback(AckTimeoutError(session, offset, code))
        self.metrics.acks_pending.set(len(self._ack_waiters))


_VALIDATOR = json.JSONEncoder(ensure_ascii=False, allow_nan=False)


def _check_encodable(data: Any) -> None:
    """Raise TypeError/ValueError unless ``data`` is in the JSON data model
    (protocol.md section 2), which every codec can carry."""
    if data is None or isinstance(data, (str, int)):
        if isinstance(data, str):
            data.encode("utf-8")  # lone surrogates cannot be sent
        return
    _VALIDATOR.encode(data).encode("utf-8")


def _invoke(func: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """Call a plain, Deferred-returning or ``async def`` function; always a Deferred."""
    try:
        result = func(*args)
    except Exception:
        return fail()
    if isinstance(result, Deferred):
        return result
    if inspect.isawaitable(result):
        return Deferred.fromCoroutine(_await(result))
    return succeed(result)


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


__all__ = [
    "AckTimeoutError",
    "HistoryLimits",
    "Hub",
    "HubOptions",
    "direct_key",
]
