"""The security state of one WebSocket site, and the TCP-level guard.

``Gate`` holds what the checks share: connection counts per node and per
address, the per-address connection buckets, the origin and address
policies, the authenticator, and the open protocols (for token refresh).

``GuardProtocol`` wraps every TCP connection of the site, *outside* the
HTTP parser: it counts the connection, applies the address lists and the
per-address limits before a byte of HTTP is parsed, and aborts the
connection if it has not become a WebSocket within ``upgrade_timeout``
(slowloris). It stays in place after the upgrade (Autobahn's
``WebSocketResource`` swaps the protocol *inside* a ``ProtocolWrapper``),
so it also sees the end of every WebSocket connection.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IReactorTime,
    ISSLTransport,
    ITCPTransport,
    ITransport,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

from warpsocket.protocol.codes import ErrorCode
from warpsocket.server.middleware import Handshake, Reject
from warpsocket.server.security.auth import AuthError, Identity
from warpsocket.server.security.config import SecurityOptions
from warpsocket.server.security.guarded import TokenHolder
from warpsocket.server.security.iplist import (
    IPAddress,
    address_key,
    forwarded_client,
    parse_address,
)
from warpsocket.server.security.limits import (
    behind_proxy_protocol,
    behind_tls,
    http_refusal,
    transport_chain,
)
from warpsocket.server.security.ratelimit import KeyedBuckets

if TYPE_CHECKING:
    from twisted.internet.interfaces import IProtocol

    from warpsocket.core.server import ConnId
    from warpsocket.server.context import Context
    from warpsocket.server.hub import Hub


def peer_address(address: IAddress | None) -> IPAddress | None:
    """The IP of a Twisted address; None for UNIX sockets and the like."""
    host = getattr(address, "host", None)
    return parse_address(host) if isinstance(host, str) else None


def client_address(transport: Any) -> IPAddress | None:
    """The client's IP: the peer as ``transport`` reports it (under a
    ``haproxy:`` endpoint, the PROXY header's source), or, when that is not
    an IP (a PROXY v2 ``AF_UNIX`` source), the socket's own peer: the proxy.
    None only for a connection that arrived on a UNIX socket."""
    if transport is None:
        return None
    address = peer_address(transport.getPeer())
    if address is not None:
        return address
    chain = transport_chain(transport)
    socket = chain[-1] if chain else None
    if socket is None or socket is transport:
        return None
    return peer_address(socket.getPeer())


class Gate:
    log = Logger()

    def __init__(self, options: SecurityOptions, hub: Hub) -> None:
        self.options = options
        self.hub = hub
        self.clock: IReactorTime = hub.clock
        self.metrics = hub.metrics
        self.origins = options.origin_policy
        self.addresses = options.address_policy
        self.authenticator = options.authenticator
        self.auth_required = options.auth_required
        self.connection_buckets: KeyedBuckets[str] = KeyedBuckets(
            options.connection_rate, options.connection_bucket, self.clock.seconds
        )
        self.open_connections = 0
        self.per_address: dict[str, int] = {}
        # The open connections, for the token refresh (the ``auth`` envelope).
        self.protocols: dict[ConnId, TokenHolder] = {}
        # Every guarded connection's upgrade deadline, on one timer.
        self.upgrade_deadlines = UpgradeDeadlines(self.clock)

    def now(self) -> float:
        return float(self.clock.seconds())

    # ------------------------------------------------------------ connections

    def open_connection(self) -> ErrorCode | None:
        if self.open_connections >= self.options.max_connections:
            return ErrorCode.TOO_MANY_CONNECTIONS
        self.open_connections += 1
        return None

    def close_connection(self) -> None:
        self.open_connections -= 1

    def admit_address(self, address: IPAddress) -> tuple[ErrorCode | None, str]:
        """Lists, then the per-address rate (a refused attempt still spends a
        token), then the per-address count. Returns (refusal, key)."""
        key = address_key(address)
        if not self.addresses.permits(address):
            return ErrorCode.ADDRESS_REJECTED, key
        if not self.connection_buckets.take(key):
            self.metrics.rate_limited.labels("connection").inc()
            return ErrorCode.RATE_LIMITED, key
        if self.per_address.get(key, 0) >= self.options.max_connections_per_ip:
            return ErrorCode.TOO_MANY_CONNECTIONS, key
        self.per_address[key] = self.per_address.get(key, 0) + 1
        return None, key

    def release_address(self, key: str) -> None:
        left = self.per_address.get(key, 0) - 1
        if left > 0:
            self.per_address[key] = left
        else:
            self.per_address.pop(key, None)

    # ------------------------------------------------------------ handshake

    def check_request(
        self,
        handshake: Handshake,
        guard: GuardProtocol | None,
        transport: Any,
        headers: Mapping[str, str],
    ) -> None:
        """Address (behind trusted proxies) and origin; raises Reject."""
        code, address = self.check_http(guard, transport, headers.get("x-forwarded-for"))
        if code is not None:
            raise Reject(code)
        if address is not None:
            handshake.annotations["client_ip"] = str(address)
        code = self.origins.check(handshake.origin, self.auth_required)
        if code is not None:
            raise Reject(code)

    def check_http(
        self, guard: GuardProtocol | None, transport: Any, forwarded_for: str | None
    ) -> tuple[ErrorCode | None, IPAddress | None]:
        """The address rules for one HTTP request (every path, not only the
        WebSocket's): behind trusted proxies, the lists on the forwarded
        address, and the per-address limits once per connection. Returns
        (refusal, the client address when it came from ``X-Forwarded-For``
        or the peer behind trusted proxies)."""
        if self.options.trusted_proxies > 0:
            forwarded = forwarded_client(forwarded_for, self.options.trusted_proxies)
            address = forwarded or client_address(transport)
            if address is None:
                return None, None
            if not self.addresses.permits(address):
                return ErrorCode.ADDRESS_REJECTED, address
            if guard is not None:
                code = guard.admit(address)
                if code is not None:
                    return code, address
            return None, address
        if guard is None:
            # Not behind our site (an embedder's own resource tree): at least the lists.
            address = client_address(transport)
            if address is not None and not self.addresses.permits(address):
                return ErrorCode.ADDRESS_REJECTED, None
        return None, None

    def request_token(
        self, headers: Mapping[str, str], params: Mapping[str, list[str]]
    ) -> str | None:
        if self.options.token_in_header:
            value = headers.get("authorization", "")
            scheme, _, credentials = value.strip().partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
        if self.options.token_in_query:
            values = params.get("token")
            if values:
                return values[0]
        return None

    # ------------------------------------------------------------ tokens

    def authenticate(self, token: str) -> Deferred[Identity]:
        """Run the authenticator; fails with AuthError (and counts why)."""
        authenticator = self.authenticator
        if authenticator is None:
            return fail(AuthError(ErrorCode.UNAUTHORIZED, "no_authenticator"))
        now = self.now()
        try:
            result = authenticator.authenticate(token, now)
        except Exception:
            outcome: Deferred[Identity] = fail()
        else:
            if isinstance(result, Deferred):
                outcome = result
            elif inspect.isawaitable(result):
                outcome = Deferred.fromCoroutine(_await(result))
            else:
                outcome = succeed(result)

        def checked(identity: Identity) -> Identity:
            if not isinstance(identity, Identity):
                raise AuthError(ErrorCode.UNAUTHORIZED, "bad_identity")
            if identity.expires_at is not None and self.now() >= identity.expires_at:
                raise AuthError(ErrorCode.TOKEN_EXPIRED, "expired")
            self.metrics.auth.labels("ok").inc()
            return identity

        def refused(failure: Failure) -> Failure:
            if not failure.check(AuthError):
                self.log.failure("authenticator failed", failure)
                failure = Failure(AuthError(ErrorCode.UNAUTHORIZED, "error"))
            error = cast(AuthError, failure.value)
            self.metrics.auth.labels(error.reason).inc()
            return failure

        return outcome.addCallback(checked).addErrback(refused)

    def refresh(self, ctx: Context, token: Any) -> Deferred[None]:
        """The ``auth`` envelope: a new token for the same user, before expiry."""
        if not isinstance(token, str):
            return fail(Reject(ErrorCode.UNAUTHORIZED, "auth needs data.token"))

        def refused(failure: Failure) -> Failure:
            failure.trap(AuthError)
            error = cast(AuthError, failure.value)
            text = "token expired" if error.code is ErrorCode.TOKEN_EXPIRED else "invalid token"
            return Failure(Reject(ErrorCode.UNAUTHORIZED, text))

        def accepted(identity: Identity) -> None:
            session = self.hub.core.sessions.get(ctx.session)
            if session is None:
                raise Reject(ErrorCode.UNAUTHORIZED, "no session")
            if session.user is None:
                raise Reject(ErrorCode.FORBIDDEN, "authenticate in hello: sessions keep their user")
            if identity.user != session.user:
                raise Reject(ErrorCode.FORBIDDEN, "a refreshed token must name the same user")
            self.hub.core.set_claims(session.id, identity.user, identity.claims)
            protocol = self.protocols.get(session.conn) if session.conn is not None else None
            if protocol is not None:
                protocol.set_identity(identity)
            self.metrics.token_refreshes.inc()

        return self.authenticate(token).addErrback(refused).addCallback(accepted)


async def _await(awaitable: Awaitable[Identity]) -> Identity:
    return await awaitable


class UpgradeDeadlines:
    """The upgrade deadlines of the guarded connections, on one timer.

    A ``callLater`` per connection, armed when it connects and cancelled when
    it upgrades, cost each connection a ``DelayedCall`` and the reactor's
    heap churn (cancelled calls stay in the heap). Every deadline is the same
    ``upgrade_timeout`` after its connection, so they fall due in the order
    they were armed: one timer, set for the earliest, serves them all, each
    at its own time. One armed earlier than the last (a shorter timeout)
    gets a ``callLater`` of its own.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._due: dict[GuardProtocol, float] = {}
        self._last = -math.inf
        self._call: IDelayedCall | None = None

    def __len__(self) -> int:
        return len(self._due)

    def arm(self, guard: GuardProtocol, timeout: float) -> None:
        due = self._clock.seconds() + timeout
        if due < self._last:
            guard._deadline = self._clock.callLater(timeout, guard._timed_out)
            return
        self._last = due
        self._due[guard] = due
        if self._call is None:
            self._call = self._clock.callLater(timeout, self._fire)

    def disarm(self, guard: GuardProtocol) -> None:
        due = self._due
        due.pop(guard, None)
        # While others wait the timer stays: when it fires it finds the next.
        if not due and self._call is not None:
            call, self._call = self._call, None
            call.cancel()

    def _fire(self) -> None:
        self._call = None
        due = self._due
        # (A nanosecond's slack: the timer's own time went through a subtraction.)
        now = self._clock.seconds() + 1e-9
        while due:
            guard, when = next(iter(due.items()))
            if when > now:
                self._call = self._clock.callLater(when - now + 1e-9, self._fire)
                return
            del due[guard]
            try:
                guard._timed_out()
            except Exception:
                self.log.failure("upgrade deadline failed")


class GuardProtocol(ProtocolWrapper):
    """Wraps one TCP connection of the site (see the module docstring)."""

    def __init__(self, factory: Any, wrapped: IProtocol, gate: Gate) -> None:
        super().__init__(cast("WrappingFactory[GuardProtocol]", factory), wrapped)
        self.gate = gate
        self.address_key: str | None = None
        self.client_address: IPAddress | None = None
        self.refused = False
        self.upgraded = False
        self._counted = False
        self._address_pending = False
        self._deadline: IDelayedCall | None = None

    def makeConnection(self, transport: ITransport) -> None:
        # ProtocolWrapper.makeConnection, except that the TLS interface is not
        # copied: Autobahn takes any ISSLTransport for a TLSMemoryBIOProtocol
        # (to read the channel id) and would fail the upgrade. Nothing above
        # the guard needs it (the WebSocket factory knows it is wss://).
        # What ``directlyProvides`` would declare depends only on what the
        # transport provides (its class's declaration, nearly always): made
        # once per declaration, not per connection (it walks every interface).
        spec = providedBy(transport)
        key = (type(self), spec)
        declared = _DECLARED.get(key)
        me: Any = self
        if declared is None:
            provided = [i for i in spec if not i.isOrExtends(ISSLTransport)]
            if ITCPTransport.providedBy(transport):
                provided.append(ITCPTransport)
            directlyProvides(self, *provided)
            if len(_DECLARED) < _MAX_DECLARED:
                _DECLARED[key] = me.__provides__
        else:
            me.__provides__ = declared  # what ``directlyProvides`` sets
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        self.wrappedProtocol.makeConnection(cast(ITransport, self))

    def connectionMade(self) -> None:
        gate = self.gate
        # Armed for refused connections too: they linger until the client
        # has read the refusal and closed, at most this long.
        gate.upgrade_deadlines.arm(self, gate.options.upgrade_timeout)
        code = gate.open_connection()
        if code is not None:
            self.refuse(code)
            return
        self._counted = True
        if gate.options.trusted_proxies == 0:
            if behind_proxy_protocol(self.transport):
                # The PROXY header names the client; it arrives with the first data.
                self._address_pending = True
            else:
                self._check_peer()

    def _check_peer(self) -> None:
        address = client_address(self)
        if address is None:
            return  # a UNIX socket: local by construction
        code = self.admit(address)
        if code is not None:
            self.refuse(code)

    def admit(self, address: IPAddress) -> ErrorCode | None:
        """Apply the address rules to ``address`` (once per connection)."""
        if self.address_key is not None:
            return None
        code, key = self.gate.admit_address(address)
        if code is None:
            self.address_key = key
            self.client_address = address
        return code

    def refuse(self, code: ErrorCode) -> None:
        """Answer with an HTTP error carrying ``code`` and close, or, under
        TLS, abort without spending a TLS handshake on the refusal."""
        self.refused = True
        self.gate.metrics.refused_connections.labels(code.wire_name).inc()
        transport: Any = self.transport
        if transport is None:
            return
        if behind_tls(transport):
            transport.abortConnection()
            return
        transport.write(http_refusal(code))
        # Half-close: the client may still be sending its request, and closing
        # a socket with unread data resets it, which can destroy the response
        # before the client reads it. Its data is discarded (dataReceived).
        half_close = getattr(transport, "loseWriteConnection", None)
        if half_close is not None:
            half_close()
        else:
            transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.refused:
            return
        if self._address_pending:
            self._address_pending = False
            self._check_peer()
            if self.refused:
                return
        # ``ProtocolWrapper.dataReceived``, without the extra call on every read.
        self.wrappedProtocol.dataReceived(data)

    def mark_upgraded(self) -> None:
        """The WebSocket is open: the upgrade deadline no longer applies."""
        self.upgraded = True
        self._cancel_deadline()

    def _timed_out(self) -> None:
        self._deadline = None
        if self.upgraded:
            return
        if not self.refused:
            self.gate.metrics.upgrade_timeouts.inc()
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def _cancel_deadline(self) -> None:
        self.gate.upgrade_deadlines.disarm(self)
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self._cancel_deadline()
        if self._counted:
            self._counted = False
            self.gate.close_connection()
        if self.address_key is not None:
            self.gate.release_address(self.address_key)
            self.address_key = None
        super().connectionLost(reason)


# (guard class, transport's declaration) -> the guard's declaration; bounded
# (transports with declarations of their own each would add one).
_DECLARED: dict[tuple[type, Any], Any] = {}
_MAX_DECLARED = 64


def find_guard(transport: ITransport | None) -> GuardProtocol | None:
    if isinstance(transport, GuardProtocol):
        return transport  # (the WebSocket's own transport: the common case)
    for level in transport_chain(transport):
        if isinstance(level, GuardProtocol):
            return level
    return None
