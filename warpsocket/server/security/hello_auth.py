"""The token of one connection: the ``hello``'s authentication and the expiry.

Until the welcome, a ``hello`` is authenticated before the core sees it (a
token in ``hello.data.token`` wins over one in the Authorization header or
query, docs/security.md "Where the token goes"); from then on, the
connection is closed with 4002 when its token expires, unless an ``auth``
envelope brought a newer one (``set_identity``).
"""

from __future__ import annotations

from typing import cast

from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from warpsocket.protocol.codes import ErrorCode, ProtocolError
from warpsocket.protocol.envelope import Envelope, MessageType
from warpsocket.server.security.auth import AuthError, Identity
from warpsocket.server.security.gate import Gate
from warpsocket.server.security.guarded import GuardedConnection, IdentityPort


class HelloAuth:
    __slots__ = (
        "connection",
        "expiry_call",
        "gate",
        "hello_pending",
        "identity",
        "origin_missing",
        "port",
        "request_token_refused",
    )

    def __init__(
        self, connection: GuardedConnection, gate: Gate, port: IdentityPort, origin_missing: bool
    ) -> None:
        self.connection = connection
        self.gate = gate
        self.port = port
        # A browser's Origin vouches for it; without one, authentication is due.
        self.origin_missing = origin_missing
        self.identity: Identity | None = None
        self.hello_pending = False
        # Why a token in the Authorization header or query was refused: the
        # upgrade goes ahead, and the hello must then carry a valid token.
        self.request_token_refused: ErrorCode | None = None
        self.expiry_call: IDelayedCall | None = None

    def before_welcome(self, payload: bytes, is_binary: bool) -> None:
        """A message before the welcome: a ``hello`` is authenticated first."""
        connection = self.connection
        try:
            envelope = connection.codec.decode(payload, is_binary)
        except ProtocolError:
            connection.feed(payload, is_binary)  # the hub answers the bad frame
            return
        self.hello(envelope, len(payload))

    def hello(self, envelope: Envelope, size: int) -> None:
        """A decoded message before the welcome (a frame's, or the hello of
        the upgrade request, protocol.md 4.5)."""
        connection = self.connection
        if envelope.type is not MessageType.HELLO:
            connection.feed_decoded(envelope, size)  # 4003 hello_required
            return
        if self.hello_pending:
            connection.send_error(ErrorCode.BAD_STATE, "hello is being authenticated", envelope.id)
            return
        data = envelope.data if isinstance(envelope.data, dict) else {}
        token = data.get("token")
        if token is None:
            refused = self.request_token_refused
            if refused is not None and self.identity is None:
                # The header's (or query's) token was refused and hello brings none.
                connection.close_with(refused)
                return
            if self.identity is None and (self.gate.auth_required or self.origin_missing):
                # Authentication is required, or a non-browser client must
                # authenticate because no Origin vouches for it.
                self.gate.metrics.auth.labels("missing").inc()
                connection.close_with(ErrorCode.UNAUTHORIZED)
                return
            connection.feed_decoded(envelope, size)
            self.sync_claims()
            return
        if not isinstance(token, str):
            connection.send_error(
                ErrorCode.BAD_ENVELOPE, "hello.data.token must be a string", envelope.id
            )
            return
        self.hello_pending = True
        verified = self.gate.authenticate(token)
        verified.addCallbacks(
            lambda identity: self._authenticated(identity, envelope, size),
            self._refused,
        )

    def _authenticated(self, identity: Identity, hello: Envelope, size: int) -> None:
        self.hello_pending = False
        connection = self.connection
        conn_id = connection.conn_id
        if conn_id is None or not connection.can_send:
            return
        # The core opens a session for the connection's principal.
        if not self.port.set_identity(conn_id, identity.user, identity.claims):
            return
        self.identity = identity
        self.request_token_refused = None
        connection.feed_decoded(hello, size)
        self.sync_claims()
        self.arm_expiry()

    def _refused(self, failure: Failure) -> None:
        self.hello_pending = False
        failure.trap(AuthError)
        self.connection.close_with(cast(AuthError, failure.value).code)

    def sync_claims(self) -> None:
        """A resumed session takes the claims of the token it resumed with."""
        identity = self.identity
        session = self.connection.session
        if session is None or identity is None:
            return
        self.port.set_claims(session, identity.user, identity.claims)

    # ------------------------------------------------------------ expiry

    def set_identity(self, identity: Identity) -> None:
        """A refreshed token (the ``auth`` envelope): new claims, new expiry."""
        self.identity = identity
        self.arm_expiry()

    def arm_expiry(self) -> None:
        self.cancel()
        identity = self.identity
        if identity is None or identity.expires_at is None:
            return
        delay = max(0.0, identity.expires_at - self.gate.now())
        self.expiry_call = self.gate.clock.callLater(delay, self._expired)

    def _expired(self) -> None:
        self.expiry_call = None
        self.connection.close_with(ErrorCode.TOKEN_EXPIRED)

    def cancel(self) -> None:
        call, self.expiry_call = self.expiry_call, None
        if call is not None and call.active():
            call.cancel()
