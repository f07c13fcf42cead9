"""Presence in rooms and a user's sessions, across every live node.

With one Redis a script reads an entry and its owner's liveness key at once;
in a Redis Cluster those keys live in other slots, so the node asks for them
one command each (a read path: presence queries and user lookups only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, gatherResults

from warpsocket.backends.base import BackendUnavailableError
from warpsocket.backends.redis.connection import RedisLink, reply_text
from warpsocket.backends.redis.keys import Keys
from warpsocket.backends.redis.scripts import (
    PRESENCE_SCRIPT,
    UNSET_PRESENCE_SCRIPT,
    USER_SESSIONS_SCRIPT,
)


class Presence:
    def __init__(
        self,
        connections: RedisLink,
        keys: Keys,
        node: str,
        health: Callable[[], str | None],
        *,
        cluster: bool = False,
    ) -> None:
        self.cluster = cluster
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
        if self.cluster:
            return self._live_across_slots(cmd, key, alive_prefix)
        asked: Deferred[Any] = cmd.eval(script, [key], [alive_prefix])
        return asked.addCallback(_ids)

    def _live_across_slots(self, cmd: Any, key: str, alive_prefix: str) -> Deferred[set[str]]:
        """The scripts' work, one command per key: ids whose owner key exists."""
        hashed = alive_prefix == self.keys.nodes  # presence: session -> node

        def owners(reply: Any) -> Deferred[set[str]]:
            items = [reply_text(v) for v in reply or ()]
            pairs = list(zip(items[::2], items[1::2], strict=False)) if hashed else None
            ids = [p[0] for p in pairs] if pairs is not None else items
            owner_of = dict(pairs) if pairs is not None else {i: i for i in ids}
            asked = sorted(set(owner_of.values()))
            checks = [cmd.execute_command("EXISTS", alive_prefix + o) for o in asked]

            def decided(answers: list[Any]) -> set[str]:
                alive = {o for o, a in zip(asked, answers, strict=True) if int(a) == 1}
                for i in ids:
                    if owner_of[i] in alive:
                        continue
                    if hashed:
                        gone = cmd.eval(UNSET_PRESENCE_SCRIPT, [key], [i, owner_of[i]])
                    else:
                        gone = cmd.execute_command("SREM", key, i)
                    gone.addErrback(lambda _: None)
                return {i for i in ids if owner_of[i] in alive}

            gathered: Deferred[list[Any]] = gatherResults(checks, consumeErrors=True)
            return gathered.addCallback(decided)

        listed: Deferred[Any] = cmd.execute_command("HGETALL" if hashed else "SMEMBERS", key)
        return listed.addCallback(owners)


def _ids(ids: Any) -> set[str]:
    return {reply_text(i) for i in ids or ()}
