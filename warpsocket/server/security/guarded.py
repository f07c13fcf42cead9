"""What the per-connection guards need of the connection they guard.

The guards (message_rate.py, hello_auth.py, outbound.py) are owned and
called by the WebSocket protocol (server/protocol.py), which implements
``GuardedConnection``; they know it only through this interface, so that
nothing under security/ imports the protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from warpsocket.core.server import ConnId
from warpsocket.protocol.codecs import Codec
from warpsocket.protocol.codes import ErrorCode
from warpsocket.protocol.envelope import Envelope
from warpsocket.server.security.auth import Identity


class GuardedConnection(Protocol):
    @property
    def transport(self) -> Any: ...

    @property
    def conn_id(self) -> ConnId | None: ...

    @property
    def session(self) -> str | None: ...

    @property
    def codec(self) -> Codec: ...

    @property
    def can_send(self) -> bool:
        """Data frames may be sent (neither side has sent its close frame)."""

    @property
    def own_request(self) -> bool:
        """The connection is being served its own request (exempt from the hard cap)."""

    def send_error(self, code: ErrorCode, message: str, ref: str | None) -> int:
        """Send an error envelope; the bytes it took (0: not sent)."""

    def close_with(self, code: ErrorCode) -> None:
        """Close with ``code`` (its name as the reason), if still open."""

    def feed(self, payload: bytes, is_binary: bool) -> None:
        """Hand a message to the hub."""

    def feed_decoded(self, envelope: Envelope, size: int) -> None:
        """Hand a message decoded already to the hub."""

    def sendPong(self, payload: bytes) -> None: ...

    def drop_corked(self) -> None:
        """Forget the frames held for the write batch."""

    def close_handshake_over(self) -> None:
        """The peer did not complete the close handshake in time: abort."""


class IdentityPort(Protocol):
    """The hub's side of a verified token (``server/port.py``)."""

    def set_identity(
        self, conn_id: ConnId, user: str | None, claims: Mapping[str, Any]
    ) -> bool: ...

    def set_claims(self, session: str, user: str | None, claims: Mapping[str, Any]) -> bool: ...


class TokenHolder(Protocol):
    """An open connection whose token an ``auth`` envelope may refresh."""

    def set_identity(self, identity: Identity) -> None: ...
