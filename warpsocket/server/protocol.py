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

    @property
    def can_send(self) -> bool:
        """True while data frames may be sent: not once either side sent its close frame
        (RFC 6455 5.5.1), when autobahn's ``sendMessage`` would raise ``Disconnected``."""
        return bool(self.state == WebSocketServerProtocol.STATE_OPEN)

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
        # Autobahn leaves the close-handshake timer armed when the connection is
        # lost without the peer's close frame (e.g. aborted after a shutdown
        # timeout): cancel it rather than keep it for up to closeHandshakeTimeout.
        timer = self.closeHandshakeTimeoutCall
        if timer is not None:
            self.closeHandshakeTimeoutCall = None
            timer.cancel()
        if self.conn_id is not None:
            if self.closedByMe and self.localCloseCode is not None:
                # We closed it (4204, 4400, 4500, 1009 ...): that code says why.
                # ``code`` would be the peer's reply, usually a plain 1000.
                code = self.localCloseCode
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
            # Close with a code (1009 for an oversized message, 1002 for a
            # protocol violation) instead of silently dropping the TCP connection,
            # so that the client learns why (protocol.md section 11).
            failByDrop=False,
        )
