"""OpenTelemetry spans of the server (the ``otel`` extra; docs/observability.md).

Spans: ``warpsocket.receive <type>`` for each inbound message (its parent is
the sender's ``trace``, protocol.md "Trace context"), with children
``warpsocket.decode``, ``warpsocket.middleware``, ``warpsocket.handler
<event>`` and ``warpsocket.ack``; ``warpsocket.publish <stream kind>`` for
each append to a stream, with ``warpsocket.append`` (the backend's append)
as its child; ``warpsocket.deliver <stream kind>`` for each delivery of a
stream message to this node's members (the fan-out), whose parent is the
message's ``trace``: on every node of a cluster. The publish span's context
is written into the stored message's ``trace``, so the receiving client's
delivery joins the trace.

This module imports OpenTelemetry; nothing imports it unless tracing is on.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from twisted.internet.defer import Deferred

from warpsocket._deferreds import invoke
from warpsocket.protocol.envelope import Envelope, MessageType
from warpsocket.protocol.tracecontext import TraceContext
from warpsocket.server.middleware import Middleware

# Frames that get no span of their own: they are the protocol's own chatter.
UNTRACED = frozenset({MessageType.ACK, MessageType.HEARTBEAT})
_PROPAGATOR = TraceContextTextMapPropagator()


def extract(value: TraceContext | None) -> otel_context.Context | None:
    """The OpenTelemetry context a ``trace`` field names (None: a new trace)."""
    if value is None:
        return None
    carrier = {"traceparent": value.traceparent}
    if value.tracestate is not None:
        carrier["tracestate"] = value.tracestate
    return _PROPAGATOR.extract(carrier)


def inject(ctx: otel_context.Context | None = None) -> TraceContext | None:
    """The ``trace`` field for ``ctx`` (default: the current context)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=ctx)
    parent = carrier.get("traceparent")
    return None if parent is None else TraceContext(parent, carrier.get("tracestate") or None)


def _kind(key: str) -> str:
    return key.partition(":")[0]


def _fail(span: Any, error: BaseException | None, message: str = "") -> None:
    if error is not None:
        span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, message or repr(error)))


class HubTracer:
    """Makes the server's spans; ``install`` wraps the hub's parts with it."""

    def __init__(self, provider: Any = None) -> None:
        provider = provider if provider is not None else trace.get_tracer_provider()
        self.tracer = provider.get_tracer("warpsocket.server")
        # When the frame being handled started to decode (ns), set by ``received``.
        self._frame_started: int | None = None
        # Dispatch -> the context its handler ran in (for the ack span).
        self._dispatch_context: dict[int, otel_context.Context] = {}

    # ------------------------------------------------------------ inbound

    def wrap_received(
        self, received: Callable[[Any, bytes, bool], None]
    ) -> Callable[[Any, bytes, bool], None]:
        def traced(conn_id: Any, payload: bytes, is_binary: bool) -> None:
            self._frame_started = time.time_ns()
            try:
                received(conn_id, payload, is_binary)
            finally:
                self._frame_started = None

        return traced

    def wrap_take(self, take: Callable[[Any, Any, Envelope], None]) -> Callable[..., None]:
        """The span of one inbound message, current while the hub handles it."""
        tracer = self.tracer

        def traced(conn_id: Any, connection: Any, envelope: Envelope) -> None:
            started, self._frame_started = self._frame_started, None
            if envelope.type in UNTRACED:
                take(conn_id, connection, envelope)
                return
            span = tracer.start_span(
                f"warpsocket.receive {envelope.type.value}",
                context=extract(envelope.trace),
                kind=SpanKind.SERVER,
                start_time=started,
                attributes={
                    "warpsocket.message.id": envelope.id,
                    "warpsocket.message.type": envelope.type.value,
                    "warpsocket.event": envelope.event or "",
                    "warpsocket.session": getattr(connection, "session", None) or "",
                },
            )
            ctx = trace.set_span_in_context(span)
            if started is not None:
                tracer.start_span("warpsocket.decode", context=ctx, start_time=started).end()
            token = otel_context.attach(ctx)
            try:
                take(conn_id, connection, envelope)
            except BaseException as error:
                _fail(span, error)
                raise
            finally:
                otel_context.detach(token)
                span.end()

        return traced

    def continued(self, step: Callable[..., None]) -> Callable[..., None]:
        """Wraps the inbound steps that may run later, once the backend has
        answered (a Redis dedup claim, a prepared stream): run outside the
        receive span, they get a ``warpsocket.handle <type>`` span of their
        own in the sender's trace."""
        tracer = self.tracer

        def traced(conn_id: Any, envelope: Envelope, *rest: Any) -> None:
            if envelope.type in UNTRACED or trace.get_current_span().get_span_context().is_valid:
                step(conn_id, envelope, *rest)
                return
            span = tracer.start_span(
                f"warpsocket.handle {envelope.type.value}",
                context=extract(envelope.trace),
                kind=SpanKind.SERVER,
                attributes={"warpsocket.message.id": envelope.id},
            )
            token = otel_context.attach(trace.set_span_in_context(span))
            try:
                step(conn_id, envelope, *rest)
            finally:
                otel_context.detach(token)
                span.end()

        return traced

    def middleware(self, chain: Sequence[Middleware]) -> Sequence[Middleware]:
        """The inbound middleware chain, run as one ``warpsocket.middleware`` span."""
        return _TracedChain(chain, self.tracer)

    # ------------------------------------------------------------ handlers

    def handler_span(self, dispatch: Any, name: str) -> Any:
        self._dispatch_context[id(dispatch)] = otel_context.get_current()
        return self.tracer.start_span(
            f"warpsocket.handler {name}", attributes={"warpsocket.message.id": dispatch.envelope.id}
        )

    def ack_span(self, dispatch: Any, error: Any) -> Any:
        ctx = self._dispatch_context.pop(id(dispatch), None)
        span = self.tracer.start_span("warpsocket.ack", context=ctx)
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, f"{int(error[0])}: {error[1]}"))
        return span

    # ------------------------------------------------------------ streams

    def publish(
        self, publish: Callable[[str, Envelope, int], Deferred[Envelope]]
    ) -> Callable[[str, Envelope, int], Deferred[Envelope]]:
        """Wraps ``Backend.publish``: the publish span, whose context the
        stored message carries in ``trace``."""
        tracer = self.tracer

        def traced(key: str, envelope: Envelope, now_ms: int) -> Deferred[Envelope]:
            span = tracer.start_span(
                f"warpsocket.publish {_kind(key)}",
                kind=SpanKind.PRODUCER,
                attributes={
                    "warpsocket.stream": key,
                    "warpsocket.message.id": envelope.id,
                    "warpsocket.event": envelope.event or "",
                },
            )
            ctx = trace.set_span_in_context(span)
            append = tracer.start_span("warpsocket.append", context=ctx)
            token = otel_context.attach(ctx)
            try:
                appended = publish(key, envelope.evolve(trace=inject(ctx)), now_ms)
            except BaseException as error:
                _fail(span, error)
                append.end()
                span.end()
                raise
            finally:
                otel_context.detach(token)

            def stored(result: Envelope) -> Envelope:
                if result.offset is not None:
                    span.set_attribute("warpsocket.offset", result.offset)
                append.end()
                span.end()
                return result

            def failed(failure: Any) -> Any:
                _fail(append, failure.value)
                _fail(span, failure.value)
                append.end()
                span.end()
                return failure

            return appended.addCallbacks(stored, failed)

        return traced

    def deliver(
        self, delivered: Callable[[str, Envelope], None]
    ) -> Callable[[str, Envelope], None]:
        """Wraps the backend's delivery callback: one span per message and node."""
        tracer = self.tracer

        def traced(key: str, stored: Envelope) -> None:
            span = tracer.start_span(
                f"warpsocket.deliver {_kind(key)}",
                context=extract(stored.trace),
                kind=SpanKind.CONSUMER,
                attributes={
                    "warpsocket.stream": key,
                    "warpsocket.offset": stored.offset or 0,
                    "warpsocket.message.id": stored.id,
                },
            )
            token = otel_context.attach(trace.set_span_in_context(span))
            try:
                delivered(key, stored)
            finally:
                otel_context.detach(token)
                span.end()

        return traced


class _TracedChain(Sequence[Middleware]):
    """Looks like the hub's middleware list (its length, live) but iterates
    as one middleware that runs them all inside a span."""

    def __init__(self, chain: Sequence[Middleware], tracer: Any) -> None:
        self._chain = chain
        self._tracer = tracer
        self._one = _ChainMiddleware(self)

    def __len__(self) -> int:
        return len(self._chain)

    def __getitem__(self, index: Any) -> Any:
        return self._chain[index]

    def __iter__(self) -> Iterator[Middleware]:
        yield self._one


class _ChainMiddleware(Middleware):
    def __init__(self, traced: _TracedChain) -> None:
        self.traced = traced

    def on_inbound(self, ctx: Any, envelope: Envelope) -> Envelope:
        with self.traced._tracer.start_as_current_span("warpsocket.middleware"):
            for middleware in self.traced._chain:
                envelope = middleware.on_inbound(ctx, envelope)
        return envelope


def run_traced(span: Any, call: Callable[[], Any]) -> Any:
    """Run a handler with ``span`` current; end it when the handler is done
    (a Deferred or coroutine: when it fires). Returns what the handler did."""
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        value = call()
        if isinstance(value, Deferred) or inspect.isawaitable(value):
            # Started while the span is current: a coroutine keeps it across awaits.
            value = invoke(lambda: value)
    except BaseException as error:
        _fail(span, error)
        span.end()
        raise
    finally:
        otel_context.detach(token)
    if isinstance(value, Deferred):

        def done(result: Any) -> Any:
            span.end()
            return result

        def failed(failure: Any) -> Any:
            _fail(span, failure.value)
            span.end()
            return failure

        return value.addCallbacks(done, failed)
    span.end()
    return value


__all__ = ["UNTRACED", "HubTracer", "extract", "inject", "run_traced"]
