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
    """Raised by middleware or handlers to refuse with a registry code."""

    def __init__(self, code: ErrorCode, message: str = "") -> None:
        super().__init__(message or code.wire_name)
        self.code = code
        self.message = message or code.wire_name


@dataclass
class Handshake:
    """What a connect hook sees and may fill in (user and claims authenticate)."""

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
    """Base class: override the hooks you need; each default passes through."""

    def on_connect(self, handshake: Handshake) -> None:
        """Raise Reject to refuse the WebSocket handshake."""

    def on_inbound(self, ctx: Context, envelope: Envelope) -> Envelope:
        return envelope

    def on_outbound(self, ctx: Context | None, envelope: Envelope) -> Envelope:
        """``ctx`` is None for a publish to a stream (one call per message)."""
        return envelope


class LoggingMiddleware(Middleware):
    """Logs handshakes and every envelope in and out with twisted.logger."""

    log = Logger()

    def on_connect(self, handshake: Handshake) -> None:
        self.log.info(
            "handshake from {peer} origin={origin} path={path}",
            peer=handshake.peer,
            origin=handshake.origin,
            path=handshake.path,
        )

    def on_inbound(self, ctx: Context, envelope: Envelope) -> Envelope:
        self.log.debug("in  {session} {envelope}", session=ctx.session, envelope=envelope.to_wire())
        return envelope

    def on_outbound(self, ctx: Context | None, envelope: Envelope) -> Envelope:
        target = ctx.session if ctx is not None else "*"
        self.log.debug("out {target} {envelope}", target=target, envelope=envelope.to_wire())
        return envelope
