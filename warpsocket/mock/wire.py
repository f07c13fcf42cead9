"""Byte-level faults under the WebSocket: delayed and stalled writes, per connection.

``ShapingFactory`` sits between a listening port and the site: every
connection's transport is a ``ShapedTransport`` whose writes can be held
back (``delay``: each write leaves ``by`` seconds later, order kept) or
stopped (``stall``: nothing leaves until the stall ends, then all of it at
once), as a congested or frozen network would do. A connection with more
than ``max_held`` bytes held is aborted, as the server drops a consumer
that slow. The server above sees an
ordinary transport; the site behind it can be swapped (a restart).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime, ITransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure


class ShapedTransport(ProtocolWrapper):
    """One connection: writes go straight through unless delayed or stalled."""

    factory: ShapingFactory

    def __init__(self, factory: Any, wrapped: Protocol) -> None:
        super().__init__(factory, wrapped)
        self.delay = 0.0
        self.stalled_until = 0.0
        self._held: deque[tuple[float, bytes]] = deque()
        self.held_bytes = 0
        self._call: IDelayedCall | None = None
        self._closing = False

    @property
    def clock(self) -> IReactorTime:
        return self.factory.clock

    def write(self, data: bytes) -> None:
        if not data:
            return
        now = self.clock.seconds()
        if not self._held and self.delay <= 0 and self.stalled_until <= now:
            below: Any = self.transport
            below.write(data)
            return
        self._held.append((now + self.delay, data))
        self.held_bytes += len(data)
        if self.held_bytes > self.factory.max_held:
            # Held past the server's own outbound bound: what the server does
            # to a consumer that slow (and memory stays bounded).
            self.abortConnection()
            return
        self._schedule()

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        # A close after held bytes waits for them (the close frame is among them).
        if self._held:
            self._closing = True
            return
        below: Any = self.transport
        below.loseConnection()

    def abortConnection(self) -> None:
        self._drop()
        below: Any = self.transport
        below.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._drop()
        super().connectionLost(reason)

    def _drop(self) -> None:
        self._held.clear()
        self.held_bytes = 0
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def reshape(self, delay: float | None = None, stall_until: float | None = None) -> None:
        """Set the delay (seconds per write) and/or the end of a stall; held bytes follow."""
        if delay is not None:
            self.delay = delay
        if stall_until is not None:
            self.stalled_until = stall_until
        self._schedule()

    def _schedule(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if not self._held:
            return
        due = max(self._held[0][0], self.stalled_until)
        self._call = self.clock.callLater(max(0.0, due - self.clock.seconds()), self._flush)

    def _flush(self) -> None:
        self._call = None
        below: ITransport | None = self.transport
        if below is None:
            return
        now = self.clock.seconds()
        if self.stalled_until > now:
            self._schedule()
            return
        ready: list[bytes] = []
        while self._held and self._held[0][0] <= now:
            ready.append(self._held.popleft()[1])
            self.held_bytes -= len(ready[-1])
        if ready:
            below.write(b"".join(ready))
        if self._held:
            self._schedule()
        elif self._closing:
            below.loseConnection()


class ShapingFactory(WrappingFactory):
    """Wraps every connection of ``site`` (replaceable with ``switch``) in a ShapedTransport."""

    protocol = ShapedTransport
    noisy = False

    def __init__(self, site: Any, clock: IReactorTime, max_held: int = 16 * 1024 * 1024) -> None:
        super().__init__(site)
        self.clock = clock
        # Bytes a connection may have held back before it is dropped.
        self.max_held = max_held
        self.connections: set[ShapedTransport] = set()

    def switch(self, site: Any) -> None:
        """New connections go to ``site`` from now on (open ones stay where they are)."""
        site.doStart()
        old, self.wrappedFactory = self.wrappedFactory, site
        old.doStop()

    def buildProtocol(self, addr: IAddress | None) -> Any:
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return self.protocol(self, wrapped)

    def registerProtocol(self, p: Any) -> None:
        self.connections.add(p)

    def unregisterProtocol(self, p: Any) -> None:
        self.connections.discard(p)


def shaped(transport: Any) -> ShapedTransport | None:
    """The ShapedTransport below a connection's transport chain, if any."""
    seen = 0
    while transport is not None and seen < 8:
        if isinstance(transport, ShapedTransport):
            return transport
        transport = getattr(transport, "transport", None)
        seen += 1
    return None
