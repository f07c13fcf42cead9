"""Autobahn glue: one protocol instance per WebSocket, feeding the hub.

Besides the glue, this is where the per-connection security rules run
(docs/security.md): the origin and token checks of the handshake, the
token in ``hello``, the token's expiry, the message rate limit and the
bound on the outbound buffer (slow consumers).
"""

from __future__ import annotations

from typing import Any, NoReturn, cast

import autobahn.websocket.protocol as _autobahn_protocol
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

from warpsocket import _compat
from warpsocket.core.messages import error_envelope
from warpsocket.core.server import ConnId
from warpsocket.protocol.codecs import Codec
from warpsocket.protocol.codes import ErrorCode, ProtocolError
from warpsocket.protocol.envelope import Envelope, MessageType
from warpsocket.server import framing
from warpsocket.server.batching import WriteBatch
from warpsocket.server.eager import Write, eager_writer
from warpsocket.server.hub import Hub
from warpsocket.server.middleware import Handshake, Reject
from warpsocket.server.security.auth import AuthError, Identity
from warpsocket.server.security.gate import Gate, GuardProtocol, find_guard
from warpsocket.server.security.limits import (
    HTTP_STATUS,
    OutboundMeter,
    drop_unsent,
    transport_chain,
)
from warpsocket.server.security.ratelimit import Refusals, TokenBucket

# Autobahn's per-connection debug dump of its options, formatted only if logged.
_compat.defer_option_dump(_autobahn_protocol)

# HTTP status for a refused handshake, by the reason's code.
_DENY_STATUS = HTTP_STATUS

# The smallest a client frame can be besides its payload: 2 header bytes and
# the 4-byte mask (RFC 6455 5.2). What a refused frame "paid" (Refusals).
_FRAME_OVERHEAD = 6
# The first byte of a ping and of a pong frame (FIN, opcode 9 / 10).
_METERED_CONTROL = (b"\x89", b"\x8a")
# The first byte of a close frame (FIN, opcode 8).
_CLOSE_FRAME = b"\x88"
# Seconds a peer has to answer our close frame before its TCP connection is
# aborted (Autobahn's default; docs/security.md "Closing").
CLOSE_HANDSHAKE_TIMEOUT = 1.0
# The same when the close frame waits behind unsent data, which the peer has
# to read first (always after 4201: at least what is already on its way).
BACKLOG_CLOSE_TIMEOUT = 5.0


def _reason(code: ErrorCode, message: str = "") -> str:
    """The HTTP reason phrase of a refusal: ``<code> <name>[: message]``, one line."""
    text = f"{int(code)} {code.wire_name}"
    if message and message != code.wire_name:
        text += ": " + message
    return "".join(c if " " <= c <= "~" else " " for c in text)[:200]


class WarpSocketServerProtocol(WebSocketServerProtocol):
    factory: WarpSocketServerFactory
    codec: Codec
    conn_id: ConnId | None = None
    handshake: Handshake | None = None
    session: str | None = None
    # Set during onConnect, before ``handshake`` (which means "accepted").
    handshake_in_progress: Handshake | None = None
    guard: GuardProtocol | None = None
    identity: Identity | None = None
    _origin_missing = False
    _hello_pending = False
    _own_request = False
    _bucket: TokenBucket | None = None
    _refusals: Refusals | None = None
    # The payload of the latest ping not answered yet because the outbound
    # buffer is over its bound (RFC 6455 5.5.3 allows answering only the last).
    _pong_pending: bytes | None = None
    # Why a token in the Authorization header or query was refused: the
    # upgrade goes ahead, and the hello must then carry a valid token.
    _request_token_refused: ErrorCode | None = None
    _expiry_call: IDelayedCall | None = None
    # Aborts the connection if the peer has not completed the close handshake.
    _close_deadline: IDelayedCall | None = None
    _backlog_close = False
    _grace_call: IDelayedCall | None = None
    _meter: OutboundMeter | None = None
    # True while the outbound buffer must be metered after every frame: from
    # the moment the socket pauses us (its buffer passed ``bufferSize``) until
    # it has drained; always, if we could not register as its producer.
    _congested = True
    # Frames held while the hub's write batch is open (see write_frame).
    _corked: list[bytes] | None = None
    _batch: WriteBatch | None = None
    # Data frames of an open connection: the socket first when nothing waits (eager.py).
    _write: Write
    _plain_config = False
    # permessage-deflate was negotiated (set when the WebSocket opens).
    _compressed = False
    # Autobahn's per-connection options (class attributes, see the factory).
    maxMessagePayloadSize: int
    autoFragmentSize: int
    logOctets: bool
    logFrames: bool

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
        _release_http_channel(self.transport)
        super().connectionMade()

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
        self._origin_missing = handshake.origin is None
        try:
            gate.check_request(self, handshake.headers)
        except Reject as reject:
            self._deny(reject.code, reject.message)
        token = gate.request_token(handshake.headers, handshake.params)
        if token is None or gate.authenticator is None:
            return self._accept(handshake, codec, request, None)

        def refused(failure: Failure) -> str | None:
            # Not refused here: a token in hello wins over the header's
            # (docs/security.md "Where the token goes"); without one, the
            # hello is closed with this code.
            failure.trap(AuthError)
            self._request_token_refused = cast(AuthError, failure.value).code
            return self._accept(handshake, codec, request, None)

        verified = gate.authenticate(token)
        return verified.addCallbacks(
            lambda identity: self._accept(handshake, codec, request, identity), refused
        )

    def _deny(self, code: ErrorCode, message: str = "") -> NoReturn:
        self.factory.hub.metrics.rejected_handshakes.labels(code.wire_name).inc()
        raise ConnectionDeny(_DENY_STATUS.get(code, 403), _reason(code, message))

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
            self.identity = identity
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
        options = gate.options
        self._bucket = TokenBucket(options.message_rate, options.message_bucket, gate.now())
        self._meter = OutboundMeter(self.transport)
        self._batch = self.factory.port.write_batch
        # The guard is a pass-through for writes; below it, a plain socket
        # (not TLS) is written to directly when its buffer is empty.
        transport: Any = self.transport
        below = transport.transport if isinstance(transport, GuardProtocol) else transport
        self._write = eager_writer(below) or transport.write
        # Fixed from here on: the options are the class's, compression was negotiated.
        self._compressed = _compat.compression_negotiated(self)
        self._plain_config = not (
            self._compressed or self.autoFragmentSize or self.logOctets or self.logFrames
        )
        self._watch_outbound()
        self.conn_id = self.factory.port.attach(self, self.handshake)
        gate.protocols[self.conn_id] = self
        self._arm_expiry()

    # ------------------------------------------------------------ inbound

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.conn_id is None or not self._within_rate(payload, isBinary):
            return
        if self.session is None and self.gate.authenticator is not None:
            self._before_welcome(payload, isBinary)
            return
        self._feed(payload, isBinary)

    def _feed(self, payload: bytes, is_binary: bool) -> None:
        if self.conn_id is None:
            return
        # Writes to this connection while it is served its own request (the
        # replies, a resume's replay) are bounded by the history limits, not
        # by other publishers: they are exempt from the hard outbound cap.
        previous, self._own_request = self._own_request, True
        try:
            self.factory.port.received(self.conn_id, payload, is_binary)
        finally:
            self._own_request = previous

    def _feed_decoded(self, envelope: Envelope, size: int) -> None:
        """``_feed`` for a message decoded here already (the hello, before its welcome)."""
        if self.conn_id is None:
            return
        previous, self._own_request = self._own_request, True
        try:
            self.factory.port.decoded(self.conn_id, envelope, size)
        finally:
            self._own_request = previous

    def _within_rate(self, payload: bytes, is_binary: bool) -> bool:
        """The message token bucket: refuse with 4200, close 4200 if it persists."""
        bucket = self._bucket
        if bucket is None or bucket.take(self.gate.now()):
            return True  # (the common case, without a call more per message)
        self._refused(len(payload))
        refusals = self._refusals
        if self.can_send and refusals is not None and refusals.may_reply():
            # (Decoded for its id only when answered: a flood costs no decode.)
            refusals.replied(
                self._send_error(
                    ErrorCode.RATE_LIMITED, "too many messages", self._peek_id(payload, is_binary)
                )
            )
        return False

    def _charge(self, size: int) -> bool:
        """One token of the message rate, for a message or a frame that is not
        one (ping, pong, fragment). False if over the rate; a client that keeps
        exceeding it is closed with 4200 (Refusals)."""
        bucket = self._bucket
        if bucket is None or bucket.take(self.gate.now()):
            return True
        self._refused(size)
        return False

    def _refused(self, size: int) -> None:
        """Count a refusal of ``size`` payload bytes; close 4200 if they persist."""
        bucket = self._bucket
        assert bucket is not None
        self.gate.metrics.rate_limited.labels("message").inc()
        refusals = self._refusals
        if refusals is None:  # (made at the first refusal: most connections never see one)
            refusals = self._refusals = Refusals(bucket.burst, bucket.burst / bucket.rate)
        if refusals.refused(self.gate.now(), size + _FRAME_OVERHEAD) and self.can_send:
            # Another whole burst refused, without pausing: not slowing down.
            self._close(ErrorCode.RATE_LIMITED)

    # Frames that are not a whole message cost a token each too, or pings,
    # pongs and empty fragments would be a flood the rate never sees.

    def onFrameBegin(self) -> None:
        frame = self.current_frame
        if (
            frame is not None
            and not frame.fin
            and frame.opcode <= 0x2  # a data frame that does not end its message
            and self.state == WebSocketServerProtocol.STATE_OPEN
        ):
            self._charge(frame.length)
        super().onFrameBegin()

    def onPing(self, payload: bytes) -> None:
        if self.state != WebSocketServerProtocol.STATE_OPEN or not self._charge(len(payload)):
            return  # over the rate: no pong
        meter = self._meter
        if (
            self._congested
            and meter is not None
            and meter() > self.gate.options.max_outbound_buffer
        ):
            # The peer is not reading: keep only the latest ping's answer
            # (RFC 6455 5.5.3) until the buffer drains, or the grace ends.
            self._pong_pending = payload
            self._check_outbound()
            return
        self.sendPong(payload)

    def onPong(self, payload: bytes) -> None:
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self._charge(len(payload))

    def _peek_id(self, payload: bytes, is_binary: bool) -> str | None:
        try:
            return self.codec.decode(payload, is_binary).id
        except ProtocolError:
            return None

    def _before_welcome(self, payload: bytes, is_binary: bool) -> None:
        """Until the welcome: a ``hello`` is authenticated before the core sees it."""
        try:
            envelope = self.codec.decode(payload, is_binary)
        except ProtocolError:
            self._feed(payload, is_binary)  # the hub answers the bad frame
            return
        if envelope.type is not MessageType.HELLO:
            self._feed_decoded(envelope, len(payload))  # 4003 hello_required
            return
        if self._hello_pending:
            self._send_error(ErrorCode.BAD_STATE, "hello is being authenticated", envelope.id)
            return
        data = envelope.data if isinstance(envelope.data, dict) else {}
        token = data.get("token")
        if token is None:
            refused = self._request_token_refused
            if refused is not None and self.identity is None:
                # The header's (or query's) token was refused and hello brings none.
                self._close(refused)
                return
            if self.identity is None and (self.gate.auth_required or self._origin_missing):
                # Authentication is required, or a non-browser client must
                # authenticate because no Origin vouches for it.
                self.gate.metrics.auth.labels("missing").inc()
                self._close(ErrorCode.UNAUTHORIZED)
                return
            self._feed_decoded(envelope, len(payload))
            self._sync_claims()
            return
        if not isinstance(token, str):
            self._send_error(
                ErrorCode.BAD_ENVELOPE, "hello.data.token must be a string", envelope.id
            )
            return
        self._hello_pending = True
        verified = self.gate.authenticate(token)
        verified.addCallbacks(
            lambda identity: self._hello_authenticated(identity, envelope, len(payload)),
            self._hello_refused,
        )

    def _hello_authenticated(self, identity: Identity, hello: Envelope, size: int) -> None:
        self._hello_pending = False
        if self.conn_id is None or not self.can_send:
            return
        # The core opens a session for the connection's principal.
        if not self.factory.port.set_identity(self.conn_id, identity.user, identity.claims):
            return
        self.identity = identity
        self._request_token_refused = None
        self._feed_decoded(hello, size)
        self._sync_claims()
        self._arm_expiry()

    def _hello_refused(self, failure: Failure) -> None:
        self._hello_pending = False
        failure.trap(AuthError)
        self._close(cast(AuthError, failure.value).code)

    def _sync_claims(self) -> None:
        """A resumed session takes the claims of the token it resumed with."""
        identity = self.identity
        if self.session is None or identity is None:
            return
        self.factory.port.set_claims(self.session, identity.user, identity.claims)

    # ------------------------------------------------------------ token expiry

    def set_identity(self, identity: Identity) -> None:
        """A refreshed token (the ``auth`` envelope): new claims, new expiry."""
        self.identity = identity
        self._arm_expiry()

    def _arm_expiry(self) -> None:
        self._cancel(self._expiry_call)
        self._expiry_call = None
        identity = self.identity
        if identity is None or identity.expires_at is None:
            return
        delay = max(0.0, identity.expires_at - self.gate.now())
        self._expiry_call = self.gate.clock.callLater(delay, self._token_expired)

    def _token_expired(self) -> None:
        self._expiry_call = None
        self._close(ErrorCode.TOKEN_EXPIRED)

    # ------------------------------------------------------------ outbound

    def sendMessage(
        self,
        payload: bytes,
        isBinary: bool = False,
        fragmentSize: int | None = None,
        sync: bool = False,
        doNotCompress: bool = False,
    ) -> None:
        if (
            fragmentSize is None
            and not sync
            and self._plain_writes()  # (uncompressed connections only)
            and not 0 < self.maxMessagePayloadSize < len(payload)
        ):
            # The common frame, written directly (see framing.py).
            self.write_frame(framing.frame(payload, isBinary))
            return
        super().sendMessage(payload, isBinary, fragmentSize, sync, doNotCompress)
        if self._congested:
            self._check_outbound()

    def sendPreparedMessage(self, preparedMsg: Any) -> None:
        if self._compressed and not preparedMsg.doNotCompress:
            self.sendMessage(preparedMsg.payload, preparedMsg.binary)  # compressed per connection
        elif self._plain_writes():
            self.write_frame(preparedMsg.payloadHybi)
        else:
            self.sendData(preparedMsg.payloadHybi)
            if self._congested:
                self._check_outbound()

    @property
    def plain(self) -> bool:
        """Whether a prepared frame of an open connection can be written as is
        (``write_frame``): uncompressed, no frame-level debugging, and nothing
        queued in autobahn's chopped/synchronous send queue (its order holds)."""
        return self._plain_config and not self.send_queue

    def _plain_writes(self) -> bool:
        """``plain``, for a connection that may not be open any more."""
        return self.state == WebSocketServerProtocol.STATE_OPEN and self.plain

    def write_frame(self, frame: bytes) -> None:
        """Write a whole data frame; while the hub's write batch is open it is
        held and leaves with this connection's other frames (batching.py)."""
        corked = self._corked
        if corked is not None:
            corked.append(frame)
            return
        batch = self._batch
        if batch is not None and batch.depth:
            self._corked = [frame]
            batch.dirty.append(self)
            return
        self._write(frame)
        if self._congested:
            self._check_outbound()

    def uncork(self, metered: bool = True) -> None:
        corked = self._corked
        if corked is None:
            return
        self._corked = None
        if self.transport is None or self.state == WebSocketServerProtocol.STATE_CLOSED:
            return  # gone while its frames waited
        self._write(corked[0] if len(corked) == 1 else b"".join(corked))
        if metered and self._congested:
            self._check_outbound()

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        # Autobahn's own writes (control frames, the close handshake, the slow
        # path) go after any frames this connection has waiting in a batch.
        # The flush is unmetered: the meter could close the connection in
        # between, and this write would follow that close frame.
        if self._corked is not None:
            self.uncork(metered=False)
        if data[:1] == _CLOSE_FRAME and self._meter is not None:
            self._arm_close_deadline()
        super().sendData(data, sync, chopsize)
        # Pings and pongs are metered here; data frames by the caller
        # (sendMessage, sendPreparedMessage) once the whole message is out.
        # Never after a close frame: autobahn changes its state only after
        # writing it, so a close from the meter would be a second one.
        if self._congested and data[:1] in _METERED_CONTROL:
            self._check_outbound()

    def _arm_close_deadline(self) -> None:
        """Our close frame (or our answer to the peer's) is being sent: the
        peer has CLOSE_HANDSHAKE_TIMEOUT to complete the close, or
        BACKLOG_CLOSE_TIMEOUT if the frame waits behind unsent data. On the
        reactor, not autobahn's timer: txaio's batched timer rounds the
        deadline down to a whole second (0 to 1 s for "1 s"). (Not on the
        hub's clock either: the frame has to leave on the real network.)"""
        if self._close_deadline is not None:
            return
        meter = self._meter
        behind = self._backlog_close or (meter is not None and meter() > 0)
        delay = BACKLOG_CLOSE_TIMEOUT if behind else CLOSE_HANDSHAKE_TIMEOUT
        reactor: Any = self.factory.hub.reactor
        self._close_deadline = reactor.callLater(delay, self._close_deadline_over)

    def _close_deadline_over(self) -> None:
        self._close_deadline = None
        if self.state != WebSocketServerProtocol.STATE_CLOSED:
            self.onCloseHandshakeTimeout()  # autobahn's bookkeeping, then abort
        else:
            # Closed on our side but never flushed (a peer that stopped reading).
            transport: Any = self.transport
            if transport is not None:
                transport.abortConnection()

    def sendCloseFrame(
        self, code: int | None = None, reasonUtf8: bytes | None = None, isReply: bool = False
    ) -> None:
        deciding = not isReply and self.state == WebSocketServerProtocol.STATE_OPEN
        super().sendCloseFrame(code, reasonUtf8, isReply)
        if deciding and self.conn_id is not None:
            # Whatever closes it (a timer, a limit, the drain): counted now.
            self.factory.port.closing(self.conn_id, code)

    # ------------------------------------------------------------ inbound frames

    def dataReceived(self, data: bytes) -> None:
        batch = self._batch
        if batch is None:  # the handshake
            super().dataReceived(data)
            return
        if self.conn_id is not None:
            # Bytes of any frame, ping and pong included: the peer is alive.
            self.factory.port.heard(self.conn_id)
        # Everything these bytes cause is written in one write per connection
        # (batching.py), and what this connection is sent in answer to its own
        # frames is exempt from the hard outbound cap (see _check_outbound).
        self._own_request = True
        batch.open()
        try:
            self._take_frames(data)
        finally:
            batch.close()
            self._own_request = False

    def _take_frames(self, data: bytes) -> None:
        """Whole common frames of an open connection are taken here and handed to
        ``onMessage``; everything else (the handshake, control frames, fragments,
        compressed, oversized, invalid or incomplete frames, the closing
        handshake) goes to autobahn, starting at the first frame not taken."""
        if (
            self.state != WebSocketServerProtocol.STATE_OPEN
            or self.current_frame is not None
            or self.inside_message
            or self.logOctets
            or self.logFrames
        ):
            super().dataReceived(data)
            return
        buffer = self.data + data if self.data else data
        _compat.count_incoming_octets(self, len(data))
        limit = self.maxMessagePayloadSize
        position = 0
        while self.state == WebSocketServerProtocol.STATE_OPEN:
            taken = framing.read_simple_frame(buffer, position, limit)
            if taken is None:
                break
            position, is_binary, payload = taken
            if self.autoPingTimeoutCall is not None and self.autoPingRestartOnAnyTraffic:
                _compat.cancel_auto_ping_timeout(self)
            self.onMessage(payload, is_binary)
        rest = buffer[position:] if position else buffer
        if not rest:
            self.data = b""
            return
        # Whatever was not taken (and any data after a close began): autobahn's.
        self.data = rest
        self.consumeData()  # (a no-op once the connection is closed)

    def _watch_outbound(self) -> None:
        """Register as the socket's streaming producer, so that the buffer is
        metered only once it is backing up: the socket calls ``pauseProducing``
        when its buffer passes ``bufferSize`` (lowered to the outbound bound if
        that is smaller) and ``resumeProducing`` once it has drained."""
        chain = transport_chain(self.transport)
        socket = chain[-1] if chain else None
        if not isinstance(socket, FileDescriptor) or socket.producer is not None:
            return  # not a socket we can watch (or taken): meter every frame
        bound = self.gate.options.max_outbound_buffer
        if socket.bufferSize > bound:
            socket.bufferSize = bound
        transport: Any = self.transport
        transport.registerProducer(self, True)
        self._congested = False

    # IPushProducer, for the socket (see _watch_outbound).
    def pauseProducing(self) -> None:
        self._congested = True

    def resumeProducing(self) -> None:
        self._congested = False
        pong, self._pong_pending = self._pong_pending, None
        if pong is not None and self.can_send:
            self.sendPong(pong)

    def stopProducing(self) -> None:
        pass

    def _check_outbound(self) -> None:
        """After each write: over the bound starts the grace; over the hard
        cap (4x) closes at once, unless the write answers this connection's
        own request (bounded by the history limits, not by publishers)."""
        meter = self._meter
        if meter is None or not self.can_send:
            return
        pending = meter()
        options = self.gate.options
        if pending <= options.max_outbound_buffer:
            return
        if pending > options.max_outbound_hard and not self._own_request:
            self._slow_consumer()
        elif self._grace_call is None:
            self._grace_call = self.gate.clock.callLater(
                options.slow_consumer_grace, self._grace_over
            )

    def _grace_over(self) -> None:
        self._grace_call = None
        if self._meter is not None and self._meter() > self.gate.options.max_outbound_buffer:
            self._slow_consumer()
        elif self._pong_pending is not None and self.can_send:
            pong, self._pong_pending = self._pong_pending, None
            self.sendPong(pong)

    def _slow_consumer(self) -> None:
        """Close with 4201. What the peer has not been sent yet is dropped (it
        resumes from history), so that the close frame goes out right behind
        what is already on its way; a peer that has not answered it within
        BACKLOG_CLOSE_TIMEOUT loses its TCP connection."""
        if self.can_send:
            self.gate.metrics.slow_consumers.inc()
            self._pong_pending = None
            self._corked = None
            drop_unsent(self.transport)
            self._backlog_close = True  # (its close deadline: see _arm_close_deadline)
            self._close(ErrorCode.SLOW_CONSUMER)

    # ------------------------------------------------------------ Connection (connection.py)

    def send_payload(self, payload: bytes) -> None:
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

    # ------------------------------------------------------------ helpers

    def _send_error(self, code: ErrorCode, message: str, ref: str | None) -> int:
        """Send an error envelope; the number of bytes it took (0: not sent)."""
        if not self.can_send:
            return 0
        hub = self.factory.hub
        envelope: Envelope = error_envelope(hub.core.new_id(), hub.now_ms(), code, message, ref)
        hub.metrics.protocol_errors.labels(str(int(code))).inc()
        payload = self.codec.encode(envelope)
        self.sendMessage(payload, isBinary=self.codec.binary)
        return len(payload) + 2

    def _close(self, code: ErrorCode) -> None:
        if self.can_send:
            self.sendClose(int(code), code.wire_name)

    @staticmethod
    def _cancel(call: IDelayedCall | None) -> None:
        if call is not None and call.active():
            call.cancel()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        # Autobahn leaves the close-handshake timer armed when the connection is
        # lost without the peer's close frame (e.g. aborted after a shutdown
        # timeout): cancel it rather than keep it for up to closeHandshakeTimeout.
        timer = self.closeHandshakeTimeoutCall
        if timer is not None:
            self.closeHandshakeTimeoutCall = None
            timer.cancel()
        self._cancel(self._expiry_call)
        self._cancel(self._grace_call)
        self._expiry_call = self._grace_call = None
        self._pong_pending = None
        self._cancel(self._close_deadline)
        self._close_deadline = None
        if self.conn_id is not None:
            self.gate.protocols.pop(self.conn_id, None)
            if self.closedByMe and self.localCloseCode is not None:
                # We closed it (4204, 4400, 4500, 1009 ...): that code says why.
                # ``code`` would be the peer's reply, usually a plain 1000.
                code = self.localCloseCode
            self.factory.port.detach(self.conn_id, code)
            self.conn_id = None


def _release_http_channel(transport: Any) -> None:
    """After ``WebSocketResource`` took the transport over from twisted.web,
    the abandoned ``HTTPChannel`` is still the TCP transport's registered
    producer, which keeps it, its ``Request`` and the request headers alive
    for the life of the WebSocket (and has it paused and resumed for nothing
    whenever the send buffer fills). Unregister it, so they are freed."""
    chain = transport_chain(transport)
    producer = getattr(chain[-1], "producer", None) if chain else None
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
            # (_arm_close_deadline), which keeps to the second.
            openHandshakeTimeout=0,
            closeHandshakeTimeout=0,
            # Close with a code (1009 for an oversized message, 1002 for a
            # protocol violation) instead of silently dropping the TCP connection,
            # so that the client learns why (protocol.md section 11).
            failByDrop=False,
        )

    # Autobahn's ``_connectionMade`` copies every protocol option (some 45
    # ``CONFIG_ATTRS``) from the factory into each protocol instance's
    # dictionary, unless the instance already has it: about 3 KiB per
    # connection. Instead, every (re)configuration builds a subclass of the
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
        options["_options_base"] = base
        options["__module__"] = base.__module__
        options["__qualname__"] = base.__qualname__
        subclass = type(base.__name__, (base,), options)
        self.protocol = cast("type[WarpSocketServerProtocol]", subclass)
