"""The application's side: handlers, the ``auth`` authenticator and the hooks.

``Dispatcher.dispatch`` runs the handler of a ``Dispatch`` action (an event,
a call, an ``auth``) and reports its outcome to the core (``settle``); the
open and close hooks run from here too. A handler's or hook's failure goes
to the ``on_error`` hooks; handler latency is observed per event name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from warpsocket._deferreds import invoke
from warpsocket.core.server import ConnId, Dispatch, QueueFullError, ServerCore, Session
from warpsocket.protocol.codecs import JsonCodec, packed_result
from warpsocket.protocol.codes import ErrorCode
from warpsocket.protocol.datamodel import DataModelError, check_value
from warpsocket.protocol.envelope import Envelope, MessageType
from warpsocket.server.connection import Connection
from warpsocket.server.context import Context, ContextHub
from warpsocket.server.metrics import HandlerSeries, HubMetrics
from warpsocket.server.middleware import Reject

Handler = Callable[[Context, Any], Any]
OpenHook = Callable[[Context, bool], Any]
CloseHook = Callable[[Context, int | None], Any]
ErrorHook = Callable[[Context | None, Failure], Any]

# Handler-latency series by event name; past this, further names share "other".
MAX_LATENCY_LABELS = 256
# Handler results that are plainly not a Deferred or an awaitable.
_PLAIN = frozenset({type(None), bool, int, float, str, dict, list})
# (A module global: one lookup per answer, not two.)
_CALL = MessageType.CALL


class Dispatcher:
    """Runs handlers and hooks; builds the ``Context`` each of them gets."""

    log = Logger()

    def __init__(
        self,
        core: ServerCore,
        metrics: HubMetrics,
        clock: IReactorTime,
        *,
        send: Callable[[ConnId, Envelope], None],
        now_ms: Callable[[], int],
        connection: Callable[[ConnId], Connection | None],
        hub: ContextHub,
    ) -> None:
        self.core = core
        self.metrics = metrics
        self.clock = clock
        self._send = send
        self._now_ms = now_ms
        self._connection = connection
        # The facade handed to handlers as ``ctx.hub`` (this module sits below
        # hub.py and does not import it).
        self._hub = hub
        self.handlers: dict[str, Handler] = {}
        self.on_open_hooks: list[OpenHook] = []
        self.on_close_hooks: list[CloseHook] = []
        self.on_error_hooks: list[ErrorHook] = []
        self.authenticator: Callable[[Context, str], Any] | None = None
        # The chunked-transfer extension's receiver (warpsocket.transfer.server):
        # the core dispatches ``transfer`` envelopes only where it was negotiated.
        self.transfers: Callable[[Dispatch, Context], None] | None = None
        # False once something wraps ``settle`` (observe/install.py): then every
        # answer goes through it rather than the inlined copy in ``_done``.
        self.settle_inline = True
        self._latency: dict[str, HandlerSeries] = {}
        self._data_limits = core.options.data_limits

    def dispatch(self, dispatch: Dispatch) -> None:
        envelope = dispatch.envelope
        ctx = self.context(dispatch.session, self._connection(dispatch.conn), envelope)
        if envelope.type is MessageType.TRANSFER and self.transfers is not None:
            self.transfers(dispatch, ctx)
            return
        if envelope.type is MessageType.AUTH:
            token = envelope.data.get("token") if isinstance(envelope.data, dict) else None
            if self.authenticator is None:
                self.settle(dispatch, error=(ErrorCode.UNAUTHORIZED, "no authenticator"))
                return
            self._run_handler(dispatch, ctx, self.authenticator, token)
            return
        name = envelope.event or "message"
        handler = self.handlers.get(name)
        if handler is None:
            self.settle(dispatch, error=(ErrorCode.NO_HANDLER, f"no handler for {name!r}"))
            return
        self._run_handler(dispatch, ctx, handler, envelope.data)

    def dispatch_event(
        self, conn_id: ConnId, session: Session, envelope: Envelope, connection: Connection
    ) -> None:
        """``dispatch`` for an event or call of a session and connection the
        caller holds already (the inbound hot path, inbound.py): the same
        handler, context and outcome, without looking them up again."""
        name = envelope.event or "message"
        handler = self.handlers.get(name)
        dispatch = Dispatch(conn_id, session.id, envelope)
        if handler is None:
            self.settle(dispatch, error=(ErrorCode.NO_HANDLER, f"no handler for {name!r}"))
            return
        handshake = connection.handshake
        if handshake is None:
            ctx = self.context(session.id, connection, envelope)
        else:
            # ``context``, with the session in hand.
            ctx = Context(
                self._hub,
                session.id,
                session.user,
                session.claims,
                handshake.peer,
                envelope,
                handshake.annotations,
            )
        self._run_handler(dispatch, ctx, handler, envelope.data)

    def _run_handler(
        self, dispatch: Dispatch, ctx: Context, handler: Callable[[Context, Any], Any], arg: Any
    ) -> None:
        started = self.clock.seconds()
        try:
            value = handler(ctx, arg)
        except Exception:
            self._failed(Failure(), dispatch, ctx, started)
            return
        if type(value) in _PLAIN or not (isinstance(value, Deferred) or inspect.isawaitable(value)):
            self._done(value, dispatch, ctx, started)  # the common case: no Deferred per message
            return
        invoke(lambda: value).addCallbacks(
            self._done,
            self._failed,
            callbackArgs=(dispatch, ctx, started),
            errbackArgs=(dispatch, ctx, started),
        )

    def _done(self, value: Any, dispatch: Dispatch, ctx: Context, started: float) -> None:
        envelope = dispatch.envelope
        if (
            envelope.type is _CALL
            and value is not None
            and value is not True
            and value is not False
        ):
            # Checked and encoded in one pass where the text can tell (a JSON
            # connection): the answer and its dedup record hold the bytes.
            limits = self._data_limits
            connection = self._connection(dispatch.conn)
            packed = (
                packed_result(value, limits)
                if connection is not None and type(connection.codec) is JsonCodec
                else None
            )
            if packed is not None:
                value = packed
            else:
                try:
                    check_value(value, limits)
                except DataModelError:
                    # Unencodable results would be recorded for dedup and then
                    # fail to encode on every answer: answer 4300 instead.
                    self._failed(Failure(), dispatch, ctx, started)
                    return
        finished = self._observe_latency(envelope, started)
        if not self.settle_inline:  # ``settle`` is wrapped (tracing: the ack span)
            self.settle(dispatch, result=value)
            return
        # ``settle``, inlined: once per handled message (the clock read once).
        now_ms = int(finished * 1000)
        answer = self.core.answer(dispatch.session, envelope, now_ms, result=value)
        if answer is not None:
            self._send(*answer)

    def _failed(self, failure: Failure, dispatch: Dispatch, ctx: Context, started: float) -> None:
        self._observe_latency(dispatch.envelope, started)
        if failure.check(Reject):
            reject = cast(Reject, failure.value)
            self.settle(dispatch, error=(reject.code, reject.message))
            return
        if failure.check(QueueFullError):
            # A join made for the client past its room limit (protocol.md 11).
            self.settle(dispatch, error=(ErrorCode.QUEUE_FULL, failure.getErrorMessage()))
            return
        name = dispatch.envelope.event or dispatch.envelope.type.value
        self.log.failure("handler {name} failed", failure, name=name)
        self.report_error(ctx, failure)
        self.settle(dispatch, error=(ErrorCode.HANDLER_ERROR, "handler failed"))

    def _observe_latency(self, envelope: Envelope, started: float) -> float:
        """Record the handler's time; returns the clock's reading (seconds)."""
        name = envelope.event or envelope.type.value
        series = self._latency.get(name)
        if series is None:
            if len(self._latency) >= MAX_LATENCY_LABELS:
                series = self.metrics.handler_latency.labels("other")
            else:
                series = self._latency[name] = self.metrics.handler_latency.labels(name)
        finished = self.clock.seconds()
        series.observe(finished - started)
        return finished

    def settle(
        self,
        dispatch: Dispatch,
        *,
        result: Any = None,
        error: tuple[ErrorCode | int, str] | None = None,
    ) -> None:
        answer = self.core.answer(
            dispatch.session, dispatch.envelope, self._now_ms(), result=result, error=error
        )
        if answer is not None:
            self._send(*answer)

    # ------------------------------------------------------------ hooks

    def opened(self, session: str, connection: Connection, resumed: bool) -> None:
        if not self.on_open_hooks:
            return  # (no context to build per connection for nobody)
        ctx = self.context(session, connection)
        for hook in self.on_open_hooks:
            self._call_hook(ctx, hook, ctx, resumed)

    def closed(self, session: str, connection: Connection, code: int | None) -> None:
        if not self.on_close_hooks:
            return
        ctx = self.context(session, connection)
        for hook in self.on_close_hooks:
            self._call_hook(ctx, hook, ctx, code)

    def context(
        self,
        session: str,
        connection: Connection | None,
        envelope: Envelope | None = None,
    ) -> Context:
        info = self.core.sessions.get(session)
        handshake = connection.handshake if connection is not None else None
        return Context(
            hub=self._hub,
            session=session,
            user=info.user if info is not None else None,
            claims=info.claims if info is not None else {},
            peer=handshake.peer if handshake is not None else "",
            envelope=envelope,
            annotations=handshake.annotations if handshake is not None else {},
        )

    def _call_hook(self, ctx: Context, hook: Callable[..., Any], *args: Any) -> None:
        result = invoke(hook, *args)
        result.addErrback(lambda failure: self.report_error(ctx, failure))

    def report_error(self, ctx: Context | None, failure: Failure) -> None:
        for hook in self.on_error_hooks:
            try:
                hook(ctx, failure)
            except Exception:
                self.log.failure("on_error hook failed")
