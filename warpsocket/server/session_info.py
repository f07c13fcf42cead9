"""``SessionInfo``: what ``Hub.session_info`` tells the application about a session.

A snapshot, not the core's own record: the core changes its sessions only
through its actions, so the application gets copies it cannot write through.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from warpsocket.core.server import Session


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A read-only snapshot of one session on this node.

    Returned by ``Hub.session_info(session_id)`` (None for a session this node
    does not hold). Later changes to the session (a join, a refreshed token, a
    disconnect) are not reflected: ask again for the current state.

    - ``id``: the session id (not a credential; protocol.md 4.3).
    - ``user``: the authenticated user, or None for an anonymous session.
    - ``claims``: the claims of the session's token, a read-only mapping of
      copies (changing a nested value changes nothing in the hub).
    - ``rooms``: the rooms the session is a member of.
    - ``connected``: whether a connection on this node is attached to it now
      (False while it is detached and may still resume).
    """

    id: str
    user: str | None
    claims: Mapping[str, Any]
    rooms: frozenset[str]
    connected: bool

    @classmethod
    def of(cls, session: Session) -> SessionInfo:
        """A snapshot of the core's record of a session."""
        return cls(
            session.id,
            session.user,
            # A deep copy: claims may nest (JWT arrays, objects) and the core's
            # record must not change through a value the view hands out.
            MappingProxyType(copy.deepcopy(dict(session.claims))),
            frozenset(session.rooms),
            session.conn is not None,
        )
