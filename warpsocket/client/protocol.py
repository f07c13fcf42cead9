"""Autobahn glue for the client: one protocol per connection attempt.

The factory is a ``ReconnectingClientFactory`` whose ``retry`` asks its
``TransportEvents`` for the delay (``Backoff``: 1s, 2s, 4s ... capped,
bounded jitter, or the server's going-away hint) and whether to retry at all.
The protocol and the factory know the client only through that interface,
so this module does not import the client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.types import ConnectingRequest, ConnectionResponse
from twisted.internet.interfaces import IConnector, IDelayedCall
from twisted.internet.protocol import ReconnectingClientFactory
from twisted.python.failure import Failure

from warpsocket._nodelay import set_no_delay

if TYPE_CHECKING:
    from autobahn.wamp.types import TransportDetails


class TransportEvents(Protocol):
    """What the client is told of its connection attempts and connections."""

    def tcp_connected(self, protocol: WarpSocketClientProtocol) -> None: ...

    def connecting(self, protocol: WarpSocketClientProtocol) -> str | None:
        """The upgrade request is about to be written: the resource (path and
        query) to ask for, or None for the factory's (the URL's own)."""

    def upgraded(self, protocol: WarpSocketClientProtocol, subprotocol: str | None) -> None: ...

    def opened(self, protocol: WarpSocketClientProtocol) -> None: ...

    def frame(self, protocol: WarpSocketClientProtocol, payload: bytes, binary: bool) -> None: ...

    def closed(
        self, protocol: WarpSocketClientProtocol, code: int | None, reason: str | None
    ) -> None: ...

    def attempt_failed(self, reason: Failure) -> None: ...

    def next_delay(self, retries: int) -> float | None:
        """Seconds until the next attempt, or None to stop trying."""

    def attempting(self) -> None:
        """The reconnect timer fired: a new attempt starts now."""


class WarpSocketClientProtocol(WebSocketClientProtocol):
    factory: WarpSocketClientFactory

    def connectionMade(self) -> None:
        # Before Autobahn writes the upgrade request; its own attempt fails (_nodelay.py).
        set_no_delay(self.transport, self.factory.tcpNoDelay)
        super().connectionMade()
        self.factory.events.tcp_connected(self)

    def onConnecting(self, transport_details: TransportDetails) -> ConnectingRequest | None:
        # (Called by connectionMade, before the upgrade request is written.)
        resource = self.factory.events.connecting(self)
        if resource is None:
            return None
        factory = self.factory
        return ConnectingRequest(
            host=factory.host,
            port=factory.port,
            resource=resource,
            headers=factory.headers,
            useragent=factory.useragent,
            origin=factory.origin,
            protocols=factory.protocols,
        )

    def onConnect(self, response: ConnectionResponse) -> None:
        self.factory.events.upgraded(self, response.protocol)

    def onOpen(self) -> None:
        self.factory.events.opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.events.frame(self, payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.events.closed(self, code, reason)


class WarpSocketClientFactory(WebSocketClientFactory, ReconnectingClientFactory):
    protocol = WarpSocketClientProtocol  # type: ignore[assignment]
    noisy = False

    def __init__(self, events: TransportEvents, url: str, **kwargs: Any) -> None:
        WebSocketClientFactory.__init__(self, url, **kwargs)
        self.events = events
        # Our own reconnect timer (never ReconnectingClientFactory's private one).
        self._pending: IDelayedCall | None = None

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        self.events.attempt_failed(reason)
        ReconnectingClientFactory.clientConnectionFailed(self, connector, reason)

    def retry(self, connector: IConnector | None = None) -> None:
        """ReconnectingClientFactory.retry with WarpSocket's policy."""
        if not self.continueTrying:
            return
        connector = connector or self.connector
        if connector is None:
            raise ValueError("no connector to retry")
        delay = self.events.next_delay(self.retries)
        if delay is None:
            return  # the client stopped trying (and may have started anew since)
        self.retries += 1
        self.delay = delay

        def reconnect() -> None:
            self._pending = None
            self.events.attempting()
            connector.connect()

        clock: Any = self.clock
        self._pending = clock.callLater(delay, reconnect)

    def retry_now(self) -> bool:
        """Bring a waiting reconnect forward to now; False if none is waiting."""
        call = self._pending
        if call is None or not call.active():
            return False
        call.reset(0)
        return True

    def stopTrying(self) -> None:
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
        ReconnectingClientFactory.stopTrying(self)
