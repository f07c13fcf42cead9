"""The seam between the hub and a transport: what the hub needs of one client.

``WarpSocketServerProtocol`` (Autobahn) implements it for real sockets and
``warpsocket.testing.FakeConnection`` in memory. The hub never sees a frame
format: it hands over encoded payloads, and for a fan-out asks the first
recipient of each codec to prepare a frame once, then gives that same
prepared frame to every recipient of the codec.
"""

from __future__ import annotations

from typing import Protocol

from warpsocket.protocol.codecs import Codec
from warpsocket.server.middleware import Handshake


class Connection(Protocol):
    """One open client connection, as the hub drives it."""

    # The codec negotiated in the handshake (fixed for the connection).
    codec: Codec
    # The session the connection serves, once welcomed (set by the hub).
    session: str | None

    @property
    def handshake(self) -> Handshake | None:
        """What the handshake told (peer, headers, annotations); None until accepted."""
        ...

    @property
    def can_send(self) -> bool:
        """True while data may be sent: not once either side began to close."""
        ...

    def send_payload(self, payload: bytes) -> None:
        """Send one payload encoded with ``codec``, as one message."""
        ...

    def prepare(self, payload: bytes) -> object:
        """Frame a payload of ``codec`` once, for every connection of that codec."""
        ...

    def send_prepared(self, prepared: object) -> None:
        """Send a frame ``prepare`` made (on this or another connection of the codec)."""
        ...

    def close(self, code: int, reason: str) -> None:
        """Begin closing with a code; data sent before it still arrives first."""
        ...

    def abort(self) -> None:
        """Drop the connection at once (the end of a shutdown that timed out)."""
        ...


__all__ = ["Connection"]
