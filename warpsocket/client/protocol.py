"""Autobahn glue for the client: one protocol per connection attempt.

The factory is a ``ReconnectingClientFactory`` whose ``retry`` asks the
client for the delay (``Backoff``: 1s, 2s, 4s ... capped, bounded jitter, or
the server's going-away hint) and whether to retry at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.types import ConnectionResponse
from twisted.internet.interfaces import IConnector
from twisted.internet.protocol import ReconnectingClientFactory
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from warpsocket.client.client import WarpSocketClient


class WarpSocketClientProtocol(WebSocketClientProtocol):
    factory: WarpSocketClientFactory

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.client._tcp_connected(self)

    def onConnect(self, response: ConnectionResponse) -> None:
        self.factory.client._transport_connected(self, response.protocol)

    def onOpen(self) -> None:
        self.factory.client._transport_open(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.client._frame_received(self, payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.client._transport_closed(self, code, reason)


class WarpSocketClientFactory(WebSocketClientFactory, ReconnectingClientFactory):
    protocol = WarpSocketClientProtocol  # type: ignore[assignment]
    noisy = False

    def __init__(self, client: WarpSocketClient, url: str, **kwargs: Any) -> None:
        WebSocketClientFactory.__init__(self, url, **kwargs)
        self.client = client

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        self.client._attempt_failed(reason)
        ReconnectingClientFactory.clientConnectionFailed(self, connector, reason)

    def retry(self, connector: IConnector | None = None) -> None:
        """ReconnectingClientFactory.retry with WarpSocket's policy."""
        if not self.continueTrying:
            return
        connector = connector or self.connector
        if connector is None:
            raise ValueError("no connector to retry")
        delay = self.client._next_delay(self.retries)
        if delay is None:
            return  # the client stopped trying (and may have started anew since)
        self.retries += 1
        self.delay = delay

        def reconnect() -> None:
            self._callID = None
            self.client._attempting()
            connector.connect()

        clock: Any = self.clock
        self._callID = clock.callLater(delay, reconnect)
