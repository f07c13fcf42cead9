"""Presence in rooms and a user's sessions, across every live node."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail

from warpsocket.backends.base import BackendUnavailableError
from warpsocket.backends.redis.connection import Connections, reply_text
from warpsocket.backends.redis.keys import Keys
from warpsocket.backends.redis.scripts import (
    PRESENCE_SCRIPT,
    UNSET_PRESENCE_SCRIPT,
    USER_SESSIONS_SCRIPT,
)


class Presence:
    def __init__(
        self,
        connections: Connections,
        keys: Keys,
        node: str,
        health: Callable[[], str | None],
    ) -> None:
        self.connections = connections
        self.keys = keys
        self.node = node
        self._health = health

    def mark(self, room: str, session: str, present: bool) -> None:
        cmd = self.connections.cmd
        if cmd is None:
            return
        key = self.keys.presence(room)
        if present:
            cmd.hset(key, session, self.node).addErrback(lambda _: None)
        else:
            cmd.eval(UNSET_PRESENCE_SCRIPT, [key], [session, self.node]).addErrback(lambda _: None)

    def in_room(self, room: str) -> Deferred[set[str]]:
        return self._live("presence", PRESENCE_SCRIPT, self.keys.presence(room), self.keys.nodes)

    def sessions_of_user(self, user: str) -> Deferred[set[str]]:
        return self._live(
            "user lookup", USER_SESSIONS_SCRIPT, self.keys.user(user), self.keys.sessions
        )

    def _live(self, what: str, script: str, key: str, alive_prefix: str) -> Deferred[set[str]]:
        """The ids in ``key`` whose owner is alive (``alive_prefix + owner`` exists);
        the script removes the others."""
        cmd = self.connections.cmd
        if cmd is None:
            return fail(BackendUnavailableError(f"{what} unavailable: {self._health()}"))
        asked: Deferred[Any] = cmd.eval(script, [key], [alive_prefix])
        return asked.addCallback(_ids)


def _ids(ids: Any) -> set[str]:
    return {reply_text(i) for i in ids or ()}
