"""Autobahn glue: one protocol instance per WebSocket, feeding the hub."""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest

from warpsocket.core.server import ConnId
from warpsocket.protocol.codecs import Codec
from warpsocket.protocol.codes import ErrorCode
from warpsocket.server.hub import Hub
from warpsocket.server.middleware import Handshake, Reject

# HTTP status for a refused handshake, by the reason's code.
_DENY_STATUS = {
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.ORIGIN_REJECTED: 403,
    ErrorCode.ADDRESS_REJECTED: 403,
    ErrorCode.TOO_MANY_CONNECTIONS: 503,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.GOING_AWAY: 503,
}


class WarpSocketServerProtocol(WebSocketServerProtocol):
    factory: WarpSocketServerFactory
    codec: Codec
    conn_id: ConnId | None = None
    handshake: Handshake | None = None
    session: str | None = None

    def onConnect(self, request: ConnectionRequest) -> str | None:
        hub = self.factory.hub
        codec = hub.codecs.negotiate(request.protocols)
        if codec is None:
            hub.metrics.rejected_handshakes.labels("unsupported_codec").inc()
            raise ConnectionDeny(400, "no supported subprotocol offered")
        handshake = Handshake(
            peer=request.peer,
            host=request.host,
            path=request.path,
            headers=dict(request.headers),
            params=dict(request.params),
            origin=request.origin,
        )
        try:
            hub.check_handshake(handshake)
        except Reject as reject:
            hub.metrics.rejected_handshakes.labels(reject.code.wire_name).inc()
            raise ConnectionDeny(_DENY_STATUS.get(reject.code, 403), reject.message) from None
        self.codec = codec
        self.handshake = handshake
        return codec.subprotocol if request.protocols else None

    def onOpen(self) -> None:
        assert self.handshake is not None
        self.conn_id = self.factory.hub.attach(self, self.handshake)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.conn_id is not None:
            self.factory.hub.received(self.conn_id, payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.conn_id is not None:
            self.factory.hub.detach(self.conn_id, code)
            self.conn_id = None


class WarpSocketServerFactory(WebSocketServerFactory):
    protocol = WarpSocketServerProtocol  # type: ignore[assignment]

    def __init__(self, hub: Hub, url: str | None = None, **kwargs: Any) -> None:
        super().__init__(url, protocols=hub.codecs.subprotocols, **kwargs)
        self.hub = hub
        limit = hub.options.core.max_message_size
        self.setProtocolOptions(
            maxFramePayloadSize=limit,
            maxMessagePayloadSize=limit,
            # Compression stays off unless an application enables it knowingly.
            perMessageCompressionAccept=lambda offers: None,
            # Our own heartbeat and handshake timers apply; autobahn's close
            # handshake timers still bound a peer that never completes a close.
            openHandshakeTimeout=hub.options.core.handshake_timeout_ms / 1000,
            closeHandshakeTimeout=5,
        )
