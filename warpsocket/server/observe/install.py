"""Wires what is switched on into the hub's parts, at construction.

Nothing here runs per message unless its feature is on: each part is wrapped
(an instance attribute over a method) only when needed, and the few hooks
inside the hot modules are ``if hook is not None:`` checks on None.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

from warpsocket._deferreds import invoke
from warpsocket.protocol.envelope import Envelope
from warpsocket.server.observe.slow import SlowWatch
from warpsocket.server.observe.tap import EnvelopeTap


class Observe:
    """What a hub observes with: each is None when switched off."""

    def __init__(
        self, tracer: Any = None, slow: SlowWatch | None = None, tap: EnvelopeTap | None = None
    ) -> None:
        self.tracer = tracer
        self.slow = slow
        self.tap = tap


class _Backend:
    """The backend, with ``publish`` traced (everything else passes through)."""

    def __init__(self, backend: Any, publish: Callable[..., Any]) -> None:
        self._backend = backend
        self.publish = publish

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)


def install(
    observe: Observe,
    *,
    clock: Any,
    runner: Any,
    inbound: Any,
    dispatcher: Any,
    outbox: Any,
    port: Any,
) -> None:
    tracer, slow, tap = observe.tracer, observe.slow, observe.tap
    if tracer is not None:
        port.received = tracer.wrap_received(port.received)
        inbound._middleware = tracer.middleware(inbound._middleware)
        inbound._feed = tracer.continued(inbound._feed)
        inbound._after_step = tracer.continued(inbound._after_step)
        inbound._claim_decided = tracer.continued(inbound._claim_decided)
        inbound._take_held = tracer.continued(inbound._take_held)
        outbox.backend = _Backend(outbox.backend, tracer.publish(outbox.backend.publish))
    if tracer is not None or tap is not None:
        take = inbound._take
        if tap is not None:
            record = tap.inbound

            def tapped(conn_id: Any, connection: Any, envelope: Envelope) -> None:
                record(conn_id, envelope)
                take(conn_id, connection, envelope)

            inbound._take = tapped if tracer is None else tracer.wrap_take(tapped)
        else:
            inbound._take = tracer.wrap_take(take)
    if tap is not None:
        runner.tap = tap.outbound
    slow_handlers = slow is not None and slow.thresholds.handler is not None
    slow_deliveries = slow is not None and slow.thresholds.delivery is not None
    if tracer is not None or slow_handlers:
        _observe_handlers(dispatcher, clock, tracer, slow if slow_handlers else None)
    if tracer is not None or slow_deliveries:
        deliver = outbox.delivered
        if slow is not None and slow_deliveries:
            deliver = _slow_delivery(deliver, slow)
        if tracer is not None:
            deliver = tracer.deliver(deliver)
        outbox.backend.set_delivery(deliver)
    if slow is not None:
        if slow.thresholds.ack is not None:
            outbox.ack_watch = slow.ack_wait
        if slow.thresholds.buffer is not None:
            tick = port.tick
            connections = runner.connections

            def ticked() -> None:
                tick()
                slow.buffers(connections)

            port.tick = ticked


def _slow_delivery(deliver: Callable[[str, Envelope], None], slow: SlowWatch) -> Any:
    def delivered(key: str, stored: Envelope) -> None:
        deliver(key, stored)
        slow.delivered(key, stored)

    return delivered


def _observe_handlers(dispatcher: Any, clock: Any, tracer: Any, slow: SlowWatch | None) -> None:
    run_handler = dispatcher._run_handler
    timed = slow is not None

    def observed_run(dispatch: Any, ctx: Any, handler: Callable[..., Any], arg: Any) -> None:
        envelope = dispatch.envelope
        name = envelope.event or envelope.type.value

        def observed(c: Any, a: Any) -> Any:
            started = clock.seconds()

            def finished(result: Any) -> Any:
                if timed:
                    assert slow is not None
                    slow.handler(envelope, dispatch.session, clock.seconds() - started)
                return result

            try:
                if tracer is not None:
                    from warpsocket.server.observe.tracing import run_traced

                    value = run_traced(tracer.handler_span(dispatch, name), lambda: handler(c, a))
                else:
                    value = handler(c, a)
            except BaseException:
                finished(None)
                raise
            if isinstance(value, Deferred) or inspect.isawaitable(value):
                return invoke(lambda: value).addBoth(finished)
            finished(None)
            return value

        run_handler(dispatch, ctx, observed, arg)

    dispatcher._run_handler = observed_run
    if tracer is not None:
        settle = dispatcher.settle

        def traced_settle(dispatch: Any, *, result: Any = None, error: Any = None) -> None:
            from opentelemetry import context as otel_context
            from opentelemetry import trace

            span = tracer.ack_span(dispatch, error)
            token = otel_context.attach(trace.set_span_in_context(span))
            try:
                settle(dispatch, result=result, error=error)
            finally:
                otel_context.detach(token)
                span.end()

        dispatcher.settle = traced_settle
        dispatcher.settle_inline = False


__all__ = ["Observe", "install"]
