"""What a handler or middleware knows about the client it is serving."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred

from warpsocket.protocol.envelope import Envelope
from warpsocket.server.session_info import SessionInfo


class ContextHub(Protocol):
    """The hub as a ``Context`` reaches it (hub.py's ``Hub`` is one): declared
    here so that this module, which nearly every part imports, stays below
    hub.py. It names the hub's public sending and lookup API, which handlers
    reach as ``ctx.hub``."""

    def send(
        self,
        session: str,
        event: str,
        data: Any = None,
        *,
        ack: bool = False,
        ttl: float | None = None,
        timeout: float | None = None,
    ) -> Deferred[None]: ...

    def publish(
        self, room: str, event: str, data: Any = None, *, ttl: float | None = None
    ) -> Deferred[Envelope]: ...

    def join(self, session: str, room: str) -> Deferred[None]: ...

    def leave(self, session: str, room: str) -> None: ...

    # The rest of the hub's sending and lookup API, so that typed handlers
    # may call it through ``ctx.hub`` as before.
    def send_user(
        self, user: str, event: str, data: Any = None, *, ttl: float | None = None
    ) -> Deferred[int]: ...

    def send_group(
        self, sessions: Iterable[str], event: str, data: Any = None, *, ttl: float | None = None
    ) -> Deferred[None]: ...

    def broadcast(
        self, event: str, data: Any = None, *, ttl: float | None = None
    ) -> Deferred[Envelope]: ...

    def room_members(self, room: str) -> set[str]: ...

    def presence(self, room: str) -> Deferred[set[str]]: ...

    def sessions_of_user(self, user: str) -> set[str]: ...

    def session_info(self, session: str) -> SessionInfo | None: ...

    def is_connected(self, session: str) -> bool: ...


@dataclass
class Context:
    """What a handler, hook or middleware knows about the client it serves.

    Handlers receive it as their first argument (``handler(ctx, data)``):
    ``session`` (the session id), ``user`` and ``claims`` (from
    authentication), ``peer`` (the client's address), the ``envelope`` being
    handled (``event`` is its name) and ``annotations``, a dict middleware
    may fill for the handlers after it. ``send``, ``join`` and ``leave`` act
    on this client's session.
    """

    hub: ContextHub
    session: str
    user: str | None
    claims: Mapping[str, Any]
    peer: str = ""
    envelope: Envelope | None = None
    annotations: dict[str, Any] = field(default_factory=dict)

    @property
    def event(self) -> str | None:
        return self.envelope.event if self.envelope is not None else None

    def send(
        self, event: str, data: Any = None, *, ack: bool = False, timeout: float | None = None
    ) -> Deferred[None]:
        """Send to this client's session (its ``direct`` stream)."""
        return self.hub.send(self.session, event, data, ack=ack, timeout=timeout)

    def join(self, room: str) -> Deferred[None]:
        """Join ``room``; fires once the room's stream is ready on this node."""
        return self.hub.join(self.session, room)

    def leave(self, room: str) -> None:
        self.hub.leave(self.session, room)
