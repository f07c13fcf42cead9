"""A TCP proxy between the clients and the server that can cut and stall connections.

Every client connects to the proxy; each accepted connection gets its own
connection to the server (the backend). The harness then:

- ``cut(fraction)``: aborts (TCP RST) both halves of a random share of the
  proxied connections, as a network failure would;
- ``stall(fraction, seconds, direction)``: stops reading one or both halves
  of a random share for a while, so that nothing flows that way (a congested,
  flapping or asymmetric link); the kernels' buffers hold what was in flight
  and it flows on when the stall ends, unless a heartbeat timeout ended the
  connection first. ``direction``: ``both``, ``up`` (client to server
  blocked) or ``down`` (server to client blocked).

When the backend is down (server killed), an accepted client connection is
closed at once, as a refused connection would be.

In cluster mode the proxy is also the load balancer: each new client
connection goes to a random node among those currently up (``backends`` is
then a callable answering their ports), so a client whose node died
reconnects to a live one.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import protocol
from twisted.internet.interfaces import IAddress, IListeningPort
from twisted.python.failure import Failure


class _Backend(protocol.Protocol):
    def __init__(self, pair: ProxiedConnection) -> None:
        self.pair = pair

    def connectionMade(self) -> None:
        self.pair.backend_connected(self)

    def dataReceived(self, data: bytes) -> None:
        self.pair.from_backend(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.pair.backend_lost()


class _BackendFactory(protocol.ClientFactory):
    noisy = False

    def __init__(self, pair: ProxiedConnection) -> None:
        self.pair = pair

    def buildProtocol(self, addr: IAddress | None) -> _Backend:
        return _Backend(self.pair)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.pair.backend_failed()


class ProxiedConnection(protocol.Protocol):
    """The client-facing half; owns the backend half."""

    transport: Any

    def __init__(self, proxy: ChaosProxy) -> None:
        self.proxy = proxy
        self.backend: _Backend | None = None
        self.pending: list[bytes] = []
        self.closed = False
        self.stalled = False
        self.stall_up = True
        self.stall_down = True
        self.protected = False  # a long stall: cuts leave it alone
        self.serial = 0
        self.backend_port = 0

    def connectionMade(self) -> None:
        self.proxy.connections.add(self)
        self.proxy.accepted += 1
        self.serial = self.proxy.accepted
        self.transport.setTcpNoDelay(True)
        port = self.proxy.pick_backend()
        if port is None:
            self.abort()
            return
        self.backend_port = port
        self.proxy.reactor.connectTCP(
            self.proxy.backend_host, port, _BackendFactory(self), timeout=5
        )

    def backend_connected(self, backend: _Backend) -> None:
        transport: Any = backend.transport
        if self.closed:
            transport.abortConnection()
            return
        transport.setTcpNoDelay(True)
        self.backend = backend
        if self.stalled and self.stall_down:
            transport.pauseProducing()
        for data in self.pending:
            transport.write(data)
        self.pending = []

    def dataReceived(self, data: bytes) -> None:
        if self.backend is None:
            self.pending.append(data)
        else:
            self.backend.transport.write(data)  # type: ignore[union-attr]

    def from_backend(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def backend_failed(self) -> None:
        """The server is not there: refuse the client as the server would."""
        self.abort()

    def backend_lost(self) -> None:
        self.backend = None
        if not self.closed:
            self.closed = True
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.closed = True
        self.proxy.connections.discard(self)
        if self.backend is not None:
            backend, self.backend = self.backend, None
            backend.transport.loseConnection()  # type: ignore[union-attr]

    # ------------------------------------------------------------ faults

    def abort(self) -> None:
        self.closed = True
        self.transport.abortConnection()
        if self.backend is not None:
            backend, self.backend = self.backend, None
            backend.transport.abortConnection()  # type: ignore[union-attr]

    def stall(self, direction: str = "both") -> None:
        self.stalled = True
        self.stall_up = direction in ("both", "up")
        self.stall_down = direction in ("both", "down")
        if self.stall_up:
            self.transport.pauseProducing()
        if self.stall_down and self.backend is not None:
            self.backend.transport.pauseProducing()  # type: ignore[union-attr]

    def unstall(self) -> None:
        self.stalled = False
        self.protected = False
        if self.closed:
            return
        self.transport.resumeProducing()
        if self.backend is not None:
            self.backend.transport.resumeProducing()  # type: ignore[union-attr]


class ChaosProxy(protocol.Factory):
    noisy = False

    def __init__(
        self,
        reactor: Any,
        backends: int | Callable[[], Sequence[int]],
        rng: random.Random,
    ) -> None:
        self.reactor = reactor
        self.backend_host = "127.0.0.1"
        self.backends = backends
        self.rng = rng
        self.routed: dict[int, int] = {}  # backend port -> connections sent there
        self.connections: set[ProxiedConnection] = set()
        self.accepted = 0
        self.cuts = 0  # connections cut
        self.stalls = 0  # connections stalled
        self.port: IListeningPort | None = None

    def buildProtocol(self, addr: IAddress | None) -> ProxiedConnection:
        return ProxiedConnection(self)

    def pick_backend(self) -> int | None:
        """One server: always it. Cluster: a random node that is up (None: none is)."""
        if isinstance(self.backends, int):
            port: int | None = self.backends
        else:
            live = sorted(self.backends())
            port = self.rng.choice(live) if live else None
        if port is not None:
            self.routed[port] = self.routed.get(port, 0) + 1
        return port

    def listen(self) -> int:
        self.port = self.reactor.listenTCP(0, self, interface="127.0.0.1")
        return int(self.port.getHost().port)  # type: ignore[union-attr]

    def _choose(self, fraction: float) -> list[ProxiedConnection]:
        live = sorted(
            (c for c in self.connections if not c.closed and not c.protected),
            key=lambda c: c.serial,
        )
        if not live:
            return []
        count = max(1, round(len(live) * fraction))
        return self.rng.sample(live, min(count, len(live)))

    def cut(self, fraction: float = 1.0) -> int:
        chosen = self._choose(fraction)
        for connection in chosen:
            connection.abort()
        self.cuts += len(chosen)
        return len(chosen)

    def stall(
        self, fraction: float, seconds: float, direction: str = "both", protect: bool = False
    ) -> int:
        """Stall; ``protect``: exempt from cuts meanwhile (so that timeouts run out)."""
        chosen = [c for c in self._choose(fraction) if not c.stalled]
        for connection in chosen:
            connection.stall(direction)
            connection.protected = protect
            self.reactor.callLater(seconds, connection.unstall)
        self.stalls += len(chosen)
        return len(chosen)

    def close(self) -> None:
        for connection in list(self.connections):
            connection.abort()
        if self.port is not None:
            self.port.stopListening()
