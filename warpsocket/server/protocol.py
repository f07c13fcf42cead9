"""Autobahn glue: one protocol instance per WebSocket, between Autobahn and the hub.

What it glues together: the handshake (the subprotocol, the origin and
token checks of ``Gate``, the middleware's ``check_handshake``), the
``Connection`` interface the hub sends through (connection.py), and the
per-connection collaborators it owns and calls:

- the frame path (wire/fastpath.py, the base class): the common frame read
  and written without Autobahn's machinery, eager writes, write batches;
- the security rules (security/, docs/security.md): the message rate
  (message_rate.py), the token in ``hello`` and its expiry (hello_auth.py),
  the outbound bound and the close deadline (outbound.py).
"""

from __future__ import annotations

from typing import Any, NoReturn, cast

import autobahn.twisted.websocket as _autobahn_twisted
import autobahn.websocket.protocol as _autobahn_protocol
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

from warpsocket import _compat
from warpsocket.core.messages import error_envelope
from warpsocket.core.server import ConnId
from warpsocket.protocol.codecs import JSON_SUBPROTOCOL, Codec, JsonCodec
from warpsocket.protocol.codes import ErrorCode
from warpsocket.protocol.envelope import Envelope
from warpsocket.server.hub import Hub
from warpsocket.server.middleware import Handshake, Reject
from warpsocket.server.security.auth import AuthError, Identity
from warpsocket.server.security.gate import Gate, GuardProtocol, find_guard
from warpsocket.server.security.hello_auth import HelloAuth
from warpsocket.server.security.limits import HTTP_STATUS, transport_chain
from warpsocket.server.security.message_rate import MessageRate
from warpsocket.server.security.outbound import OutboundGuard
from warpsocket.server.url_hello import PARAMETER, UrlHello, read_url_hello
from warpsocket.server.wire import framing
from warpsocket.server.wire.fastpath import FastPathProtocol

# Autobahn's per-connection debug dump of its options, and the type names of
# its other debug lines, formatted only if logged.
_compat.defer_option_dump(_autobahn_protocol)
_compat.defer_type_names(_autobahn_protocol, _autobahn_twisted)

# HTTP status for a refused handshake, by the reason's code.
_DENY_STATUS = HTTP_STATUS


def _reason(code: ErrorCode, message: str = "") -> str:
    """The HTTP reason phrase of a refusal: ``<code> <name>[: message]``, one line."""
    text = f"{int(code)} {code.wire_name}"
    if message and message != code.wire_name:
        text += ": " + message
    return "".join(c if " " <= c <= "~" else " " for c in text)[:200]


class WarpSocketServerProtocol(FastPathProtocol):
    factory: WarpSocketServerFactory
    codec: Codec
    conn_id: ConnId | None = None
    handshake: Handshake | None = None
    session: str | None = None
    # Set during onConnect, before ``handshake`` (which means "accepted").
    handshake_in_progress: Handshake | None = None
    guard: GuardProtocol | None = None
    # The per-connection security rules (made in onConnect and onOpen).
    auth: HelloAuth | None = None
    rate: MessageRate | None = None
    outbound: OutboundGuard | None = None
    # The hello of the upgrade request (protocol.md 4.5), until the open.
    url_hello: UrlHello | None = None

    @property
    def can_send(self) -> bool:
        """True while data frames may be sent: not once either side sent its close frame
        (RFC 6455 5.5.1), when autobahn's ``sendMessage`` would raise ``Disconnected``."""
        return bool(self.state == WebSocketServerProtocol.STATE_OPEN)

    @property
    def gate(self) -> Gate:
        return self.factory.gate

    # ------------------------------------------------------------ handshake

    def connectionMade(self) -> None:
        below = self._below_guard()
        _release_http_channel(self.transport, below)
        # The guard is a pass-through for writes; below it, a plain socket
        # (not TLS) is written to directly when its buffer is empty.
        self.use_socket(below)
        super().connectionMade()

    def _below_guard(self) -> Any:
        transport: Any = self.transport
        return transport.transport if isinstance(transport, GuardProtocol) else transport

    def onConnect(  # type: ignore[override]  # autobahn also takes a Deferred
        self, request: ConnectionRequest
    ) -> str | Deferred[str | None] | None:
        hub = self.factory.hub
        gate = self.gate
        codec = hub.codecs.negotiate(request.protocols)
        if codec is None:
            hub.metrics.rejected_handshakes.labels("unsupported_codec").inc()
            raise ConnectionDeny(400, "no supported subprotocol offered")
        handshake = Handshake(
            peer=request.peer,
            host=request.host,
            path=request.path,
            # Autobahn's own parsed dicts, not copies (Handshake offers them read-only).
            headers=request.headers,
            params=request.params,
            # Autobahn reports a missing Origin header as "".
            origin=request.origin or None,
        )
        self.handshake_in_progress = handshake
        self.guard = find_guard(self.transport)
        try:
            gate.check_request(handshake, self.guard, self.transport, handshake.headers)
        except Reject as reject:
            self._deny(reject.code, reject.message)
        try:
            self.url_hello = read_url_hello(handshake.params, self.factory.url_hello_codec)
        except Reject as reject:
            self._deny(reject.code, reject.message, status=400)
        if gate.authenticator is None:
            # No tokens to check: no ``HelloAuth`` unless a refresh brings an
            # identity (``set_identity``).
            return self._accept(handshake, codec, request, None)
        auth = self._hello_auth(handshake)
        token = gate.request_token(handshake.headers, handshake.params)
        if token is None:
            return self._accept(handshake, codec, request, None)

        def refused(failure: Failure) -> str | None:
            # Not refused here: a token in hello wins over the header's
            # (docs/security.md "Where the token goes"); without one, the
            # hello is closed with this code.
            failure.trap(AuthError)
            auth.request_token_refused = cast(AuthError, failure.value).code
            return self._accept(handshake, codec, request, None)

        verified = gate.authenticate(token)
        return verified.addCallbacks(
            lambda identity: self._accept(handshake, codec, request, identity), refused
        )

    def _hello_auth(self, handshake: Handshake) -> HelloAuth:
        auth = self.auth
        if auth is None:
            auth = self.auth = HelloAuth(
                self, self.gate, self.factory.port, origin_missing=handshake.origin is None
            )
        return auth

    def _deny(self, code: ErrorCode, message: str = "", status: int | None = None) -> NoReturn:
        self.factory.hub.metrics.rejected_handshakes.labels(code.wire_name).inc()
        raise ConnectionDeny(status or _DENY_STATUS.get(code, 403), _reason(code, message))

    def _accept(
        self,
        handshake: Handshake,
        codec: Codec,
        request: ConnectionRequest,
        identity: Identity | None,
    ) -> str | None:
        if identity is not None:
            handshake.user = identity.user
            handshake.claims = dict(identity.claims)
            self._hello_auth(handshake).identity = identity
        try:
            self.factory.port.check_handshake(handshake)
        except Reject as reject:
            self._deny(reject.code, reject.message)
        self.codec = codec
        self.handshake = handshake
        return codec.subprotocol if request.protocols else None

    def onOpen(self) -> None:
        assert self.handshake is not None
        gate = self.gate
        if self.guard is not None:
            self.guard.mark_upgraded()
        self.rate = MessageRate(self, gate)
        outbound = self.outbound = OutboundGuard(self, gate, self.factory.hub.reactor)
        self.start_fast_path(self.factory.port.write_batch, outbound)
        outbound.watch(self._below_guard())
        self.conn_id = self.factory.port.attach(self, self.handshake)
        gate.protocols[self.conn_id] = self
        if self.auth is not None:
            self.auth.arm_expiry()
        url_hello = self.url_hello
        if url_hello is not None:
            self.url_hello = None
            params = self.handshake.params
            if isinstance(params, dict):  # (taken: not kept for the connection's life)
                params.pop(PARAMETER, None)
            self._take_url_hello(url_hello)

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        if self.url_hello is not None and data.startswith(b"HTTP/1.1 101"):
            # The upgrade's response waits for the welcome of the URL's hello
            # (``_take_url_hello``), to leave with it in one write.
            self._corked = [data]
            self._count_written(len(data))
            return
        super().sendData(data, sync, chopsize)

    def _take_url_hello(self, url_hello: UrlHello) -> None:
        """The hello of the upgrade request, taken as the first message
        (protocol.md 4.5); then the ``101`` and its answer leave together."""
        try:
            rate = self.rate
            if rate is not None and not rate.allow(url_hello.text, False):
                return
            size = len(url_hello.text)
            auth = self.auth
            if auth is not None and self.gate.authenticator is not None:
                auth.hello(url_hello.envelope, size)
            else:
                self.feed_decoded(url_hello.envelope, size)
        finally:
            self.uncork()

    # ------------------------------------------------------------ inbound

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        conn_id = self.conn_id
        if conn_id is None:
            return
        rate = self.rate
        if rate is not None and not rate.allow(payload, isBinary):
            return
        auth = self.auth
        if self.session is None and auth is not None and self.gate.authenticator is not None:
            auth.before_welcome(payload, isBinary)
            return
        welcomed = self.session is not None
        if self.own_request:
            # (Read by ``dataReceived``, which set the exemption already.)
            self.factory.port.received(conn_id, payload, isBinary)
        else:
            self.feed(payload, isBinary)
        if not welcomed and self.session is not None:
            # The welcome (and a resume's replay behind it) leaves at once,
            # not at the end of the reactor turn (wire/batching.py): the
            # client can do nothing until it has it, and nothing else of this
            # connection can be waiting. About 5% more connections per second
            # (docs/performance.md "Third round").
            self.uncork()

    def feed(self, payload: bytes, is_binary: bool) -> None:
        if self.conn_id is None:
            return
        # Writes to this connection while it is served its own request (the
        # replies, a resume's replay) are bounded by the history limits, not
        # by other publishers: they are exempt from the hard outbound cap.
        previous, self.own_request = self.own_request, True
        try:
            self.factory.port.received(self.conn_id, payload, is_binary)
        finally:
            self.own_request = previous

    def feed_decoded(self, envelope: Envelope, size: int) -> None:
        """``feed`` for a message decoded already (the hello, before its welcome)."""
        if self.conn_id is None:
            return
        previous, self.own_request = self.own_request, True
        try:
            self.factory.port.decoded(self.conn_id, envelope, size)
        finally:
            self.own_request = previous

    def heard(self) -> None:
        if self.conn_id is not None:
            # Bytes of any frame, ping and pong included: the peer is alive.
            self.factory.port.heard(self.conn_id)

    # Frames that are not a whole message cost a token each too, or pings,
    # pongs and empty fragments would be a flood the rate never sees.

    def onFrameBegin(self) -> None:
        frame = self.current_frame
        rate = self.rate
        if (
            frame is not None
            and rate is not None
            and not frame.fin
            and frame.opcode <= 0x2  # a data frame that does not end its message
            and self.state == WebSocketServerProtocol.STATE_OPEN
        ):
            rate.charge(frame.length)
        super().onFrameBegin()

    def onPing(self, payload: bytes) -> None:
        if self.state != WebSocketServerProtocol.STATE_OPEN:
            return
        rate = self.rate
        if rate is not None and not rate.charge(len(payload)):
            return  # over the rate: no pong
        outbound = self.outbound
        if outbound is None or outbound.ping(payload):
            self.sendPong(payload)

    def onPong(self, payload: bytes) -> None:
        rate = self.rate
        if self.state == WebSocketServerProtocol.STATE_OPEN and rate is not None:
            rate.charge(len(payload))

    def set_identity(self, identity: Identity) -> None:
        """A refreshed token (the ``auth`` envelope): new claims, new expiry."""
        handshake = self.handshake
        if handshake is not None:
            self._hello_auth(handshake).set_identity(identity)

    # ------------------------------------------------------------ closing

    def sendCloseFrame(
        self, code: int | None = None, reasonUtf8: bytes | None = None, isReply: bool = False
    ) -> None:
        deciding = not isReply and self.state == WebSocketServerProtocol.STATE_OPEN
        super().sendCloseFrame(code, reasonUtf8, isReply)
        if deciding and self.conn_id is not None:
            # Whatever closes it (a timer, a limit, the drain): counted now.
            self.factory.port.closing(self.conn_id, code)

    def close_handshake_over(self) -> None:
        """The close deadline passed (security/outbound.py)."""
        if self.state != WebSocketServerProtocol.STATE_CLOSED:
            self.onCloseHandshakeTimeout()  # autobahn's bookkeeping, then abort
        else:
            # Closed on our side but never flushed (a peer that stopped reading).
            self.abort()

    # ------------------------------------------------------------ Connection (connection.py)

    def send_payload(self, payload: bytes) -> None:
        # ``sendMessage``'s common case inlined: once per answer and per send.
        if (
            self._plain_config
            and self.state == WebSocketServerProtocol.STATE_OPEN
            and not self.send_queue
            and not 0 < self.maxMessagePayloadSize < len(payload)
        ):
            self.write_frame(framing.frame(payload, self.codec.binary))
        else:
            self.sendMessage(payload, isBinary=self.codec.binary)

    def prepare(self, payload: bytes) -> object:
        return self.factory.prepareMessage(payload, isBinary=self.codec.binary)

    def send_prepared(self, prepared: Any) -> None:
        # Once per recipient of a fan-out: ``plain`` inlined, one write.
        if self._plain_config and not self.send_queue:
            self.write_frame(prepared.payloadHybi)
        else:
            self.sendPreparedMessage(prepared)

    def close(self, code: int, reason: str) -> None:
        self.sendClose(code, reason)

    def abort(self) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    # ------------------------------------------------------------ for the guards

    def send_error(self, code: ErrorCode, message: str, ref: str | None) -> int:
        """Send an error envelope; the number of bytes it took (0: not sent)."""
        if not self.can_send:
            return 0
        hub = self.factory.hub
        envelope: Envelope = error_envelope(hub.core.new_id(), hub.now_ms(), code, message, ref)
        hub.metrics.protocol_errors.labels(str(int(code))).inc()
        payload = self.codec.encode(envelope)
        self.sendMessage(payload, isBinary=self.codec.binary)
        return len(payload) + 2

    def close_with(self, code: ErrorCode) -> None:
        if self.can_send:
            self.sendClose(int(code), code.wire_name)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        # Autobahn leaves the close-handshake timer armed when the connection is
        # lost without the peer's close frame (e.g. aborted after a shutdown
        # timeout): cancel it rather than keep it for up to closeHandshakeTimeout.
        timer = self.closeHandshakeTimeoutCall
        if timer is not None:
            self.closeHandshakeTimeoutCall = None
            timer.cancel()
        if self.auth is not None:
            self.auth.cancel()
        if self.outbound is not None:
            self.outbound.stop()
        if self.conn_id is not None:
            self.gate.protocols.pop(self.conn_id, None)
            if self.closedByMe and self.localCloseCode is not None:
                # We closed it (4204, 4400, 4500, 1009 ...): that code says why.
                # ``code`` would be the peer's reply, usually a plain 1000.
                code = self.localCloseCode
            self.factory.port.detach(self.conn_id, code)
            self.conn_id = None


def _release_http_channel(transport: Any, below: Any) -> None:
    """After ``WebSocketResource`` took the transport over from twisted.web,
    the abandoned ``HTTPChannel`` is still the TCP transport's registered
    producer, which keeps it, its ``Request`` and the request headers alive
    for the life of the WebSocket (and has it paused and resumed for nothing
    whenever the send buffer fills). Unregister it, so they are freed.
    (``below``: the level under the guard; a plain socket is the common case.)"""
    socket: Any = below
    if not isinstance(below, FileDescriptor):
        chain = transport_chain(transport)
        socket = chain[-1] if chain else None
    producer = getattr(socket, "producer", None)
    # Under TLS the socket's producer is a membrane around the channel.
    producer = _compat.tls_membrane_producer(producer)
    if isinstance(producer, HTTPChannel):
        transport.unregisterProducer()


def _accept_deflate(offers: list[Any]) -> PerMessageDeflateOfferAccept | None:
    """permessage-deflate when enabled; the size limits apply to the inflated
    size (Autobahn stops inflating at the message limit: a bomb costs 1 MiB)."""
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer)
    return None


class WarpSocketServerFactory(WebSocketServerFactory):
    protocol = WarpSocketServerProtocol  # type: ignore[assignment]

    def __init__(self, hub: Hub, url: str | None = None, **kwargs: Any) -> None:
        super().__init__(url, protocols=hub.codecs.subprotocols, **kwargs)
        self.hub = hub
        # The hub's plumbing (attach, receive, close...): not its public API.
        self.port = hub.port
        self.gate = Gate(hub.options.security, hub)
        # The hello of an upgrade request is JSON text whatever the
        # subprotocol (protocol.md 4.5), checked with the hub's limits.
        json_codec = hub.codecs.get(JSON_SUBPROTOCOL)
        self.url_hello_codec: Codec = (
            json_codec if json_codec is not None else JsonCodec(hub.options.core.data_limits)
        )
        if self.gate.authenticator is not None and hub.authenticator is None:
            # In-band refresh (the ``auth`` envelope) with the same authenticator.
            hub.authenticator = self.gate.refresh
        limit = hub.options.core.max_message_size
        self.setProtocolOptions(
            maxFramePayloadSize=limit,
            maxMessagePayloadSize=limit,
            # Compression stays off unless the operator enables it knowingly.
            perMessageCompressionAccept=(
                _accept_deflate if hub.options.security.compression else lambda offers: None
            ),
            # Our own origin policy decides (it refuses "null" unless allowed).
            allowNullOrigin=True,
            # Our own timers apply: the guard's upgrade deadline until the
            # WebSocket is open, the core's for the hello, then heartbeats.
            # (Autobahn's opening-handshake timer would duplicate the first,
            # through txaio's batched timer, a tenth of the cost of accepting
            # a connection.) Its close handshake timer is replaced by ours
            # (OutboundGuard.closing, security/outbound.py), which keeps to the second.
            openHandshakeTimeout=0,
            closeHandshakeTimeout=0,
            # Close with a code (1009 for an oversized message, 1002 for a
            # protocol violation) instead of silently dropping the TCP connection,
            # so that the client learns why (protocol.md section 11).
            failByDrop=False,
        )

    # Autobahn's ``_connectionMade`` copies every protocol option (some 45
    # ``CONFIG_ATTRS``) from the factory into each protocol instance's
    # dictionary, unless the instance already has it: about 3 KiB and 10 us
    # per connection. Instead, every (re)configuration builds a subclass of the
    # protocol class carrying the options as class attributes, which
    # ``hasattr`` finds, so no instance copies them. A fresh subclass each
    # time keeps autobahn's semantics: a connection keeps the options it was
    # opened with (its class), later settings apply to later connections.

    def resetProtocolOptions(self) -> None:
        super().resetProtocolOptions()
        self._bind_protocol_options()

    def setProtocolOptions(self, *args: Any, **kwargs: Any) -> None:
        super().setProtocolOptions(*args, **kwargs)
        self._bind_protocol_options()

    def _bind_protocol_options(self) -> None:
        protocol = self.protocol
        base = protocol.__dict__.get("_options_base", protocol)
        options: dict[str, Any] = {}
        for name in base.CONFIG_ATTRS:
            if hasattr(self, name):
                value = getattr(self, name)
                # A function (perMessageCompressionAccept) must not become a method.
                options[name] = staticmethod(value) if hasattr(type(value), "__get__") else value
        # Every option is a class attribute now: Autobahn's per-connection
        # loop over ``CONFIG_ATTRS`` (a ``hasattr``, a ``getattr`` and a log
        # tuple for each of some 45 names, about 10 us of every connection)
        # would find each one set and copy nothing. It is its only reader.
        options["CONFIG_ATTRS"] = ()
        options["_options_base"] = base
        options["__module__"] = base.__module__
        options["__qualname__"] = base.__qualname__
        subclass = type(base.__name__, (base,), options)
        self.protocol = cast("type[WarpSocketServerProtocol]", subclass)
