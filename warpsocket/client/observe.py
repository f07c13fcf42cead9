"""The client's observability: OpenTelemetry spans and ``slow`` ack alerts.

Tracing (the ``otel`` extra, ``ClientOptions(tracing=True)``): each
``send``/``call`` is a ``warpsocket.send <event>`` span whose context goes
out in the envelope's ``trace`` field (protocol.md "Trace context"), and
each stream event handed to the handlers is a ``warpsocket.deliver <event>``
span, child of the event's ``trace`` (so it joins the sender's trace) and
linked to it. Slow acks: an acked send unanswered after
``ClientOptions.slow_ack`` seconds fires the ``slow`` listeners once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from warpsocket.protocol.envelope import Envelope
from warpsocket.protocol.tracecontext import TraceContext


@dataclass(frozen=True)
class SlowAck:
    """What ``client.on_slow`` listeners get: an acked send still waiting."""

    id: str
    event: str
    seconds: float
    threshold: float


SlowListener = Callable[[SlowAck], Any]


class ClientTracer:
    """Spans of one client (imports OpenTelemetry: only made when tracing is on)."""

    def __init__(self, provider: Any = None) -> None:
        try:
            from opentelemetry import trace
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError as exc:
            raise ImportError(f"tracing needs the otel extra (warpsocket[otel]): {exc}") from None

        provider = provider if provider is not None else trace.get_tracer_provider()
        self.tracer = provider.get_tracer("warpsocket.client")
        self._propagator = TraceContextTextMapPropagator()
        self._trace = trace
        # Message id -> the open send span of an acked send or call.
        self.sending: dict[str, Any] = {}

    def start_send(self, event: str) -> tuple[Any, TraceContext | None]:
        span = self.tracer.start_span(
            f"warpsocket.send {event}", kind=self._trace.SpanKind.PRODUCER
        )
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=self._trace.set_span_in_context(span))
        parent = carrier.get("traceparent")
        trace = None if parent is None else TraceContext(parent, carrier.get("tracestate") or None)
        return span, trace

    def sent(self, span: Any, ident: str, tracked: bool) -> None:
        span.set_attribute("warpsocket.message.id", ident)
        if tracked:
            self.sending[ident] = span
        else:
            span.end()

    def outcome(self, ident: str, status: str) -> None:
        span = self.sending.pop(ident, None)
        if span is not None:
            span.set_attribute("warpsocket.outcome", status)
            span.end()

    def deliver(self, envelope: Envelope) -> Any:
        """The delivery span of a stream event (ended by the caller)."""
        parent = None
        links = []
        if envelope.trace is not None:
            carrier = {"traceparent": envelope.trace.traceparent}
            if envelope.trace.tracestate is not None:
                carrier["tracestate"] = envelope.trace.tracestate
            parent = self._propagator.extract(carrier)
            remote = self._trace.get_current_span(parent).get_span_context()
            links = [self._trace.Link(remote)]
        return self.tracer.start_span(
            f"warpsocket.deliver {envelope.event or 'message'}",
            context=parent,
            kind=self._trace.SpanKind.CONSUMER,
            links=links,
            attributes={
                "warpsocket.stream": envelope.stream or "",
                "warpsocket.offset": envelope.offset or 0,
                "warpsocket.message.id": envelope.id,
            },
        )

    def current(self, span: Any) -> Any:
        """A context manager making ``span`` current (handlers run inside it)."""
        return self._trace.use_span(span, end_on_exit=False)


__all__ = ["ClientTracer", "SlowAck", "SlowListener"]
