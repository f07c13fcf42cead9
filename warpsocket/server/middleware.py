"""Middleware: an ordered chain around the handshake and every envelope.

Each hook may annotate (``annotations`` dicts), transform (return a new
envelope) or refuse (raise ``Reject`` with an error code). Inbound hooks see
every envelope a client sends; outbound hooks see every envelope the
application sends (a publish is seen once, before it is framed, never once
per recipient).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from warpsocket.protocol.codes import ErrorCode
from warpsocket.protocol.envelope import Envelope

if TYPE_CHECKING:
    from warpsocket.server.context import Context


class Reject(Exception):  # noqa: N818 - reads as "raise Reject(code)"
    """Raised by middleware or handlers to refuse with a registry code.

    ``raise Reject(ErrorCode.FORBIDDEN, "join first")`` answers the client's
    event or call with an ``error`` envelope of that code (the connection
    stays open); from ``Middleware.on_connect`` it refuses the handshake.
    """

    def __init__(self, code: ErrorCode, message: str = "") -> None:
        super().__init__(message or code.wire_name)
        self.code = code
        self.message = message or code.wire_name


@dataclass
class Handshake:
    """What ``Middleware.on_connect`` sees of a WebSocket upgrade request.

    ``peer``, ``host``, ``path``, ``headers`` (lower-case names), ``params``
    (the query string; a ``hello`` in it, protocol.md 4.5, is taken out once
    the connection is open) and ``origin`` describe the request. A hook that
    authenticates sets ``user`` and ``claims``, which the session then keeps;
    ``annotations`` carries anything else to the handlers' ``Context``.
    """

    peer: str
    host: str
    path: str
    headers: Mapping[str, str]
    params: Mapping[str, list[str]]
    origin: str | None
    user: str | None = None
    claims: dict[str, Any] = field(default_factory=dict)
    annotations: dict[str, Any] = field(default_factory=dict)


class Middleware:
    """Base class of middleware: override the hooks you need; each default
    passes through. Add it with ``Hub(middleware=[...])`` or ``hub.use(...)``;
    hooks run in that order.

    - ``on_connect(handshake)``: before the WebSocket upgrade completes; raise
      ``Reject`` to refuse, or set ``handshake.user``/``claims``.
    - ``on_inbound(ctx, envelope)``: every envelope a client sends, before the
      core sees it; return it (or a changed copy), or raise ``Reject``.
    - ``on_outbound(ctx, envelope)``: every envelope the application sends,
      before it is stored (``ctx`` is None for a publish to a room).
    """

    def on_connect(self, handshake: Handshake) -> None:
        """Raise Reject to refuse the WebSocket handshake."""

    def on_inbound(self, ctx: Context, envelope: Envelope) -> Envelope:
        return envelope

    def on_outbound(self, ctx: Context | None, envelope: Envelope) -> Envelope:
        """``ctx`` is None for a publish to a stream (one call per message)."""
        return envelope


class LoggingMiddleware(Middleware):
    """Logs handshakes and every envelope in and out with twisted.logger.

    ``HubOptions(debug=True)`` (``twistd warpsocket --debug``) puts it first;
    envelopes are logged at debug level, handshakes at info. Secrets
    (``token``, ``resume_token``, API keys) are masked and payloads cut to
    200 characters (observe/redact.py).
    """

    log = Logger()

    def on_connect(self, handshake: Handshake) -> None:
        self.log.info(
            "handshake from {peer} origin={origin} path={path}",
            peer=handshake.peer,
            origin=handshake.origin,
            path=handshake.path,
        )

    def on_inbound(self, ctx: Context, envelope: Envelope) -> Envelope:
        self.log.debug("in  {session} {envelope}", session=ctx.session, envelope=_safe(envelope))
        return envelope

    def on_outbound(self, ctx: Context | None, envelope: Envelope) -> Envelope:
        target = ctx.session if ctx is not None else "*"
        self.log.debug("out {target} {envelope}", target=target, envelope=_safe(envelope))
        return envelope


def _safe(envelope: Envelope) -> dict[str, Any]:
    # Tokens (auth, hello) masked and payloads cut: logs are not a secret store.
    from warpsocket.server.observe.redact import safe_wire

    return safe_wire(envelope)
