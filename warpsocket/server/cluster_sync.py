"""What a node tells the cluster, and hears from it (clustered backends only).

Session records (so another node can resume a session), presence (who is
in which room), and acknowledgements: a client acknowledges on the node it
is attached to, which may not be the node that sent the message, so every
node announces acks and settles the ones it hears (docs/cluster.md).
With a backend that is not clustered every method here does nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from warpsocket.backends.base import AckNotice, Backend, SessionRecord
from warpsocket.core.dedup import DedupKey
from warpsocket.core.keys import DIRECT, direct_key
from warpsocket.core.server import Action, ServerCore, Session
from warpsocket.protocol.envelope import Envelope
from warpsocket.server.remote_acks import RemoteAcks


class ClusterSync:
    """Keeps the cluster's view of this node's sessions, rooms and acks current."""

    def __init__(
        self,
        core: ServerCore,
        backend: Backend,
        remote_acks: RemoteAcks,
        *,
        run: Callable[[list[Action]], None],
        record_ttl_ms: int,
    ) -> None:
        self.core = core
        self.backend = backend
        self.clustered = backend.clustered
        self.remote_acks = remote_acks
        self._run = run
        # A saved session outlives this node by the session TTL.
        self._record_ttl_ms = record_ttl_ms
        # Per session: the last cumulative ack announced (direct epoch, offset).
        self._announced: dict[str, tuple[str | None, int]] = {}
        self._present: set[tuple[str, str]] = set()
        self._next_session_save = 0
        backend.set_ack_listener(self.ack_announced)
        if self.clustered:
            core.on_settle = self.settled

    # ------------------------------------------------------------ acks

    def ack_announced(self, notice: AckNotice) -> None:
        """A client acknowledged on some node (this one included)."""
        self._run(self.core.remote_ack(notice.session, notice.epoch, notice.through, notice.ref))
        self.remote_acks.acknowledged(notice)

    def announce_ack(self, session: Session, ack: Envelope) -> None:
        """A client's ack here may settle a message another node sent: tell them all."""
        if ack.ref is not None:
            notice = AckNotice(session.id, ref=ack.ref)
        elif ack.stream == DIRECT and ack.offset is not None:
            # A cumulative ack names no epoch: the one the session reads here.
            epoch = self.core.store.position(direct_key(session.id)).epoch
            last = self._announced.get(session.id)
            if last is not None and last[0] == epoch and ack.offset <= last[1]:
                return  # nothing new: the cluster heard it already
            self._announced[session.id] = (epoch, ack.offset)
            notice = AckNotice(session.id, epoch=epoch, through=ack.offset)
        else:
            return
        self.backend.announce_ack(notice)

    def expired(self, session_id: str) -> None:
        self._announced.pop(session_id, None)

    def settled(self, key: DedupKey, reply: Envelope) -> None:
        """The core recorded a reply for dedup: every node answers a retry with it."""
        self.backend.record(key[0], key[1], reply)

    # ------------------------------------------------------------ sessions and presence

    def tick(self, now: int) -> None:
        # Streams no local connection reads any more are not followed.
        for key in list(self.backend.following()):
            if not self.core.is_read_here(key):
                self.backend.release(key)
        self.sync_presence()
        if now >= self._next_session_save:
            self._next_session_save = now + self.core.options.session_ttl_ms // 4
            for session in list(self.core.sessions.values()):
                if session.conn is not None:
                    self.save_session(session)

    def sync_presence(self) -> None:
        if not self.clustered:
            return
        now_present = {
            (room, session_id)
            for room, sessions in self.core.room_sessions.items()
            for session_id in sessions
        }
        for room, session_id in now_present - self._present:
            self.backend.set_presence(room, session_id, True)
        for room, session_id in self._present - now_present:
            self.backend.set_presence(room, session_id, False)
        self._present = now_present

    def save_session(self, session: Session) -> None:
        record = SessionRecord(
            session.id,
            session.user,
            dict(session.claims),
            tuple(sorted(session.rooms)),
            session.start_positions(),
            session.resume_hash,
        )
        self.backend.save_session(record, self._record_ttl_ms)

    def session_changed(self, session_id: str) -> None:
        """A session's rooms or state changed: its record and presence follow."""
        if not self.clustered:
            return
        session = self.core.sessions.get(session_id)
        if session is not None:
            self.save_session(session)
        self.sync_presence()

    def detached(self, session: Session) -> None:
        if self.clustered:
            self.save_session(session)
