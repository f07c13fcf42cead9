"""The WebSocket upgrade, parsed once: straight to Autobahn, twisted.web for the rest.

Served through twisted.web, an upgrade request is parsed twice: twisted.web
reads the request line and headers into a ``Request``, traverses the
resource tree to the WebSocket path, and Autobahn's ``WebSocketResource``
serializes the request again for Autobahn's own handshake parser (about a
third of what accepting a connection costs).

``UpgradeSniffer`` is the first protocol of every connection of the site
(inside the ``GuardProtocol``, so the address rules, connection limits and
the upgrade deadline have applied already). It holds the first bytes until
the request head is complete, then hands the connection over, for good,
with every byte it held:

- to the WebSocket protocol, when the head is plainly an upgrade request on
  the configured path: ``GET <path>[?query] HTTP/1.1``, no body, no more
  than twisted.web would accept (size, header count), not while draining.
  That is exactly the request twisted.web would route to
  ``UpgradeResource`` and hand over unchanged, minus the parsing. Autobahn
  checks the handshake itself (strictly: RFC 6455, header syntax) and
  ``WarpSocketServerProtocol.onConnect`` applies the origin policy, the
  trusted-proxy ``X-Forwarded-For``, tokens and connect middleware, as it
  always did;
- to twisted.web (an ``HTTPChannel`` of the site) for anything else: other
  paths, other methods, HTTP/1.0, a request with a body, a percent-encoded
  or otherwise unusual spelling of the path, an oversized head, and every
  request while draining (``UpgradeResource`` answers ``503``). It sees the
  same bytes it would have seen first hand.

With ``HubOptions.debug`` every request goes through twisted.web (its access
log names each upgrade).
"""

from __future__ import annotations

import typing
from typing import Any

from twisted.internet.interfaces import IAddress, IProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

# What twisted.web's HTTPChannel accepts (``totalHeadersSize``, ``maxHeaders``);
# a longer head goes to it, which refuses it as before.
MAX_HEAD: int = getattr(HTTPChannel, "totalHeadersSize", 16384)
MAX_HEADERS: int = getattr(HTTPChannel, "maxHeaders", 500)
_END = b"\r\n\r\n"
# Headers that mean a body (twisted.web would read it and pass it on).
_BODY_HEADERS = (b"\r\ncontent-length:", b"\r\ntransfer-encoding:")


class UpgradeSite(typing.Protocol):
    """What the sniffer needs of its site (``web.GuardedSite``)."""

    # b"GET /ws": how an upgrade request on the WebSocket path begins.
    upgrade_prefix: bytes

    def http_channel(self, addr: IAddress | None) -> IProtocol:
        """A twisted.web channel of the site, as it would have served the connection."""

    def websocket(self, addr: IAddress | None) -> IProtocol:
        """The WebSocket protocol, as ``UpgradeResource`` would have made it."""

    def accepts_upgrades(self) -> bool:
        """False while draining (twisted.web then answers ``503``)."""


class UpgradeSniffer(Protocol):
    """Reads one request head, then hands the connection to the protocol it is for."""

    def __init__(self, site: UpgradeSite, addr: IAddress | None) -> None:
        self.site = site
        self.addr = addr
        self._held = b""
        # The protocol the connection went to (None: still reading the head).
        self.handed: Any = None

    def dataReceived(self, data: bytes) -> None:
        if self.handed is not None:  # (never: the wrapper calls the new protocol)
            self.handed.dataReceived(data)
            return
        held = self._held + data if self._held else data
        prefix = self.site.upgrade_prefix  # b"GET /ws"
        if held[: len(prefix)] != prefix[: len(held)]:
            self._hand(self.site.http_channel(self.addr), held)  # not it: decided at once
            return
        end = held.find(_END)
        if end < 0:
            if len(held) > MAX_HEAD:
                self._hand(self.site.http_channel(self.addr), held)
            else:
                self._held = held
            return
        head = held[: end + 2]
        if self._is_upgrade(head, len(prefix)):
            self._hand(self.site.websocket(self.addr), held)
        else:
            self._hand(self.site.http_channel(self.addr), held)

    def _is_upgrade(self, head: bytes, at: int) -> bool:
        line_end = head.find(b"\r\n")
        line = head[:line_end]
        target_end = line.find(b" ", at)
        if (
            len(head) > MAX_HEAD
            or target_end < 0
            or line[target_end:] != b" HTTP/1.1"
            or (target_end > at and line[at : at + 1] != b"?")
            or head.count(b"\r\n") > MAX_HEADERS + 1
            or not self.site.accepts_upgrades()
        ):
            return False
        lowered = head.lower()
        return not any(header in lowered for header in _BODY_HEADERS)

    def _hand(self, protocol: IProtocol, held: bytes) -> None:
        self._held = b""
        self.handed = protocol
        wrapper: Any = self.transport
        # The wrapper (``GuardProtocol``) passes everything on to it from now.
        wrapper.wrappedProtocol = protocol
        protocol.makeConnection(wrapper)
        protocol.dataReceived(held)

    def connectionLost(self, reason: Failure | None = None) -> None:
        # Closed before a whole head arrived: nothing was handed over.
        self._held = b""


__all__ = ["MAX_HEAD", "MAX_HEADERS", "UpgradeSite", "UpgradeSniffer"]
