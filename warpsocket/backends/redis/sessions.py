"""Session records in Redis, and this node's copy of those it saved.

The copy lets the node write a record again when Redis may not hold it: saved
while Redis was unreachable (written on reconnect, unless a newer one is
there), or lost with Redis' data (written again, unless another node wrote
one since).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from warpsocket.backends.base import SessionRecord
from warpsocket.backends.redis.connection import RedisLink, reply_text
from warpsocket.backends.redis.keys import Keys
from warpsocket.backends.redis.scripts import SESSION_IF_NEWER_SCRIPT
from warpsocket.core.history import Position


@dataclass(slots=True)
class SavedSession:
    value: str  # the record as stored (JSON)
    user: str | None
    expires: float  # reactor seconds: the record's TTL in Redis ends then
    unsaved: bool  # saved while Redis was unreachable: to write on reconnect
    saved_at: int = 0  # wall-clock ms, also in ``value``


class Sessions:
    def __init__(self, connections: RedisLink, keys: Keys, reactor: Any) -> None:
        self.connections = connections
        self.keys = keys
        self.reactor = reactor
        # The last record this node saved of each session, until its TTL: Redis
        # may lose it (restart without persistence) or miss it (down at the time).
        # Oldest save first (the hub's session TTL is one value), so expired
        # entries are dropped from the front.
        self.saved: OrderedDict[str, SavedSession] = OrderedDict()

    def save(self, record: SessionRecord, ttl_ms: int) -> None:
        saved_at = int(self.reactor.seconds() * 1000)
        value = json.dumps(
            {
                "user": record.user,
                "claims": dict(record.claims),
                "rooms": list(record.rooms),
                "starts": {k: [p.offset, p.epoch] for k, p in record.starts.items()},
                "resume_hash": record.resume_hash,
                # Wall-clock ms: which of two nodes' records is newer (nodes'
                # clocks agree, as the cluster's TTLs assume).
                "saved_at": saved_at,
            },
            separators=(",", ":"),
        )
        expires = self.reactor.seconds() + ttl_ms / 1000
        saved = SavedSession(
            value, record.user, expires, unsaved=self.connections.cmd is None, saved_at=saved_at
        )
        self.saved[record.id] = saved
        self.saved.move_to_end(record.id)
        self._write(record.id, saved, only_if_absent=False)

    def _write(
        self, session_id: str, saved: SavedSession, only_if_absent: bool, if_newer: bool = False
    ) -> None:
        cmd = self.connections.cmd
        if cmd is None:
            saved.unsaved = True  # written when Redis is back
            return
        ttl_ms = int((saved.expires - self.reactor.seconds()) * 1000)
        if ttl_ms <= 0:
            self.saved.pop(session_id, None)
            return
        saved.unsaved = False

        def failed(_: Failure) -> None:
            saved.unsaved = True  # the connection died with it: written on reconnect

        key = self.keys.session(session_id)
        if if_newer:
            written: Deferred[Any] = cmd.eval(
                SESSION_IF_NEWER_SCRIPT, [key], [saved.value, saved.saved_at, ttl_ms]
            )
        else:
            written = cmd.set(key, saved.value, pexpire=ttl_ms, only_if_not_exists=only_if_absent)
        written.addErrback(failed)
        if saved.user is not None:
            users = self.keys.user(saved.user)
            cmd.sadd(users, session_id).addErrback(lambda _: None)
            cmd.execute_command("PEXPIRE", users, ttl_ms).addErrback(lambda _: None)

    def write_again(self, *, unsaved_only: bool) -> None:
        """Write again the records this node saved that Redis may not hold.

        ``unsaved_only``: those saved while Redis was unreachable (on
        reconnect), unless Redis holds a record saved later (by a node the
        session moved to); otherwise every one, after Redis lost its data,
        without replacing a record another node wrote since (``SET NX``). Until then
        a client whose node dies could only start a new session, told that
        its ``direct`` stream was lost although its history is in Redis.
        """
        now = self.reactor.seconds()
        for session_id, saved in list(self.saved.items()):
            if saved.expires <= now:
                del self.saved[session_id]
            elif saved.unsaved:
                self._write(session_id, saved, only_if_absent=False, if_newer=True)
            elif not unsaved_only:
                self._write(session_id, saved, only_if_absent=True)

    def forget_expired(self) -> None:
        now = self.reactor.seconds()
        saved = self.saved
        while saved and next(iter(saved.values())).expires <= now:
            saved.popitem(last=False)

    def load(self, session_id: str) -> Deferred[SessionRecord | None]:
        cmd = self.connections.cmd
        if cmd is None:
            return succeed(None)

        def parse(raw: Any) -> SessionRecord | None:
            if raw is None:
                return None
            data = json.loads(reply_text(raw))
            starts = {k: Position(int(v[0]), str(v[1])) for k, v in data["starts"].items()}
            return SessionRecord(
                session_id,
                data["user"],
                data["claims"],
                tuple(data["rooms"]),
                starts,
                str(data.get("resume_hash", "")),
            )

        loaded: Deferred[Any] = cmd.get(self.keys.session(session_id))
        return loaded.addCallback(parse).addErrback(lambda _: None)
