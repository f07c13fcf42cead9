"""The outbound side of one connection: slow consumers and the close deadline.

A peer that does not read makes its server-side buffers grow. Over
``max_outbound_buffer`` a grace period starts (``slow_consumer_grace``);
still over it then, or over the hard cap (4x) at any time, the connection
is closed with 4201 and what it has not been sent is dropped (it resumes
from history). Writes that answer the connection's own request are exempt
from the hard cap (the history limits bound them, not other publishers).
The buffer is metered only while it backs up: ``OutboundGuard`` registers
as the socket's push producer, paused when the socket's buffer passes
``bufferSize`` (lowered to the bound), resumed once it has drained.

Closing: the peer has CLOSE_HANDSHAKE_TIMEOUT to answer our close frame,
BACKLOG_CLOSE_TIMEOUT if that frame waits behind unsent data; then its TCP
connection is aborted (docs/security.md "Closing").
"""

from __future__ import annotations

from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from zope.interface import implementer

from warpsocket.protocol.codes import ErrorCode
from warpsocket.server.security.gate import Gate
from warpsocket.server.security.guarded import GuardedConnection
from warpsocket.server.security.limits import OutboundMeter, drop_unsent, transport_chain

# Seconds a peer has to answer our close frame before its TCP connection is
# aborted (Autobahn's default; docs/security.md "Closing").
CLOSE_HANDSHAKE_TIMEOUT = 1.0
# The same when the close frame waits behind unsent data, which the peer has
# to read first (always after 4201: at least what is already on its way).
BACKLOG_CLOSE_TIMEOUT = 5.0


@implementer(IPushProducer)
class OutboundGuard:
    __slots__ = (
        "_meter",
        "backlog_close",
        "close_deadline",
        "congested",
        "connection",
        "gate",
        "grace_call",
        "pong_pending",
        "reactor",
    )

    def __init__(self, connection: GuardedConnection, gate: Gate, reactor: Any) -> None:
        self.connection = connection
        self.gate = gate
        self.reactor = reactor
        # Made when first read (most connections never back up): one object
        # less per connection for the garbage collector to visit.
        self._meter: OutboundMeter | None = None
        # True while the outbound buffer must be metered after every frame:
        # from the moment the socket pauses us until it has drained; always,
        # if we could not register as its producer.
        self.congested = True
        # The payload of the latest ping not answered yet because the outbound
        # buffer is over its bound (RFC 6455 5.5.3 allows answering only the last).
        self.pong_pending: bytes | None = None
        self.grace_call: IDelayedCall | None = None
        # Aborts the connection if the peer has not completed the close handshake.
        self.close_deadline: IDelayedCall | None = None
        self.backlog_close = False

    @property
    def meter(self) -> OutboundMeter:
        meter = self._meter
        if meter is None:
            meter = self._meter = OutboundMeter(self.connection.transport)
        return meter

    def watch(self, below: Any = None) -> None:
        """Register as the socket's streaming producer (see the module docstring).
        ``below``: the level under the connection's transport, when known."""
        transport: Any = self.connection.transport
        socket = below
        if not isinstance(socket, FileDescriptor):
            chain = transport_chain(transport)
            socket = chain[-1] if chain else None
        if not isinstance(socket, FileDescriptor) or socket.producer is not None:
            return  # not a socket we can watch (or taken): meter every frame
        bound = self.gate.options.max_outbound_buffer
        if socket.bufferSize > bound:
            socket.bufferSize = bound
        transport.registerProducer(self, True)
        self.congested = False

    # IPushProducer, for the socket (see watch).
    def pauseProducing(self) -> None:
        self.congested = True

    def resumeProducing(self) -> None:
        self.congested = False
        pong, self.pong_pending = self.pong_pending, None
        if pong is not None and self.connection.can_send:
            self.connection.sendPong(pong)

    def stopProducing(self) -> None:
        pass

    def ping(self, payload: bytes) -> bool:
        """A ping arrived: True to answer it now; False when the peer is not
        reading, and only the latest ping is answered once the buffer drains
        (or the grace ends)."""
        if self.congested and self.meter() > self.gate.options.max_outbound_buffer:
            self.pong_pending = payload
            self.check()
            return False
        return True

    def check(self) -> None:
        """After each write: over the bound starts the grace; over the hard
        cap (4x) closes at once, unless the write answers this connection's
        own request (bounded by the history limits, not by publishers)."""
        connection = self.connection
        if not connection.can_send:
            return
        pending = self.meter()
        options = self.gate.options
        if pending <= options.max_outbound_buffer:
            return
        if pending > options.max_outbound_hard and not connection.own_request:
            self.slow_consumer()
        elif self.grace_call is None:
            self.grace_call = self.gate.clock.callLater(
                options.slow_consumer_grace, self._grace_over
            )

    def _grace_over(self) -> None:
        self.grace_call = None
        connection = self.connection
        if self.meter() > self.gate.options.max_outbound_buffer:
            self.slow_consumer()
        elif self.pong_pending is not None and connection.can_send:
            pong, self.pong_pending = self.pong_pending, None
            connection.sendPong(pong)

    def slow_consumer(self) -> None:
        """Close with 4201. What the peer has not been sent yet is dropped (it
        resumes from history), so that the close frame goes out right behind
        what is already on its way; a peer that has not answered it within
        BACKLOG_CLOSE_TIMEOUT loses its TCP connection."""
        connection = self.connection
        if connection.can_send:
            self.gate.metrics.slow_consumers.inc()
            self.pong_pending = None
            connection.drop_corked()
            drop_unsent(connection.transport)
            self.backlog_close = True  # (its close deadline: see closing)
            connection.close_with(ErrorCode.SLOW_CONSUMER)

    def closing(self) -> None:
        """Our close frame (or our answer to the peer's) is being sent: the
        peer has CLOSE_HANDSHAKE_TIMEOUT to complete the close, or
        BACKLOG_CLOSE_TIMEOUT if the frame waits behind unsent data. On the
        reactor, not autobahn's timer: txaio's batched timer rounds the
        deadline down to a whole second (0 to 1 s for "1 s"). (Not on the
        hub's clock either: the frame has to leave on the real network.)"""
        if self.close_deadline is not None:
            return
        behind = self.backlog_close or self.meter() > 0
        delay = BACKLOG_CLOSE_TIMEOUT if behind else CLOSE_HANDSHAKE_TIMEOUT
        self.close_deadline = self.reactor.callLater(delay, self._close_deadline_over)

    def _close_deadline_over(self) -> None:
        self.close_deadline = None
        self.connection.close_handshake_over()

    def stop(self) -> None:
        """The connection is gone: no timer of ours outlives it."""
        for call in (self.grace_call, self.close_deadline):
            if call is not None and call.active():
                call.cancel()
        self.grace_call = self.close_deadline = None
        self.pong_pending = None
