"""The server side of a chaos run: ``twistd warpsocket --app chaos.app:setup``.

Everything the server does that the checker must know about goes into a
journal (one JSON object per line, flushed before control returns to the
reactor, so before any byte of the message can leave the process: Twisted
writes transport buffers only when the reactor runs). A SIGKILL can therefore
never let a message out that the journal does not know.

Environment:

- ``CHAOS_JOURNAL``: the journal file of this server incarnation (required);
- ``CHAOS_INCARNATION``: the incarnation number (1, 2, ...);
- ``CHAOS_PUBLISH_INTERVAL``: seconds between room publishes (default 0.1);
- ``CHAOS_DIRECT_INTERVAL``: seconds between acked direct sends (default 0.5);
- ``CHAOS_ROOMS``: comma-separated room names (default ``alpha,beta,gamma``);
- ``CHAOS_CLUSTER``: ``1`` with the Redis backend (cluster mode, see below);
- ``CHAOS_STOP_FILE``: when this file exists, publishing stops for good (the
  harness's way to quiesce every node of a cluster at once);
- ``CHAOS_NODE`` and ``CHAOS_SESSIONS_DIR`` (cluster mode): this node's name,
  and the directory where every node lists the sessions attached to it
  (``sessions-<node>.json``, rewritten every direct tick), so that the others
  can send to them (cross-node acked sends, see below).

Records (``k`` is the kind; every record has ``t``, the wall-clock time):

- ``start``: ``inc``, ``pid``, ``streams`` {stream: {offset, epoch}};
- ``session``: a new session and its ``direct`` stream ``epoch``;
- ``recv``: a client message handled by the ``n`` handler (``id``, ``sender``,
  ``seq``, ``session``);
- ``pub``: a stored stream message (``stream``, ``epoch``, ``offset``, ``id``),
  for rooms, ``broadcast`` and each session's ``direct`` stream (then also
  ``session``);
- ``dm_send`` (cluster mode): an acknowledged direct send is made (``id``,
  ``session``, ``side``: ``local`` when the session is attached here,
  ``detached`` when this node knows it but it is not attached here, ``remote``
  when this node does not know it and the hub waits for another node's ack
  notice; ``to``: the node it was listed on, for a cross-node send);
- ``dm_ack`` / ``dm_fail``: the outcome of an acknowledged direct send
  (``side`` as above; ``dm_fail`` also has ``cause``, the error's class);
- ``dm_refused`` / ``pub_refused``: the hub refused a send or publish;
- ``quiesce``: publishing stopped; the final positions follow in the reply.

Cluster mode (Redis): a publish is stored when Redis answers, and the
stored envelope is only known then (and ``hub.send(ack=True)`` does not
expose it at all). So the app wraps ``hub.backend.publish`` and journals,
for every stream (rooms, ``broadcast``, ``direct``):

- ``pub_try`` (``stream``, ``id``, ``session`` for direct) before the append;
- ``pub`` with the ``epoch`` and ``offset`` Redis assigned, when it answers
  (before the hub's own callbacks, e.g. tracking the ack);
- ``pub_failed`` when it fails (``BackendUnavailableError``: not published,
  not a loss).

Cross-node acked sends: in cluster mode, while another node is live (its
sessions file is fresh), a session attached here gets each tick's send from
this node only half the time (``REMOTE_SHARE``); the other half is shared
among the other live nodes, each of which sends to the sessions this node
lists. A node that does not know the session sends through the hub's remote
path (the waiter fires on the ack notice of the node the client acknowledges
on, ``warpsocket/server/remote_acks.py``); one that still holds it detached
tracks the ack in its core, fired by the same notice. Sessions attached
nowhere get every tick's send from the nodes that know them, as before.

Pub/sub can bring a message to the clients of another node before the
publishing node has read Redis's answer (two connections); a SIGKILL in
between leaves only the ``pub_try``. The checker then accepts the first
delivery of that id as the place it was stored (``chaos.check``). The
``start`` record has no stream positions in cluster mode (the node does not
know them before it follows a stream); the harness reads the final
positions from Redis itself.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import IO, Any

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from warpsocket.core.keys import BROADCAST, direct_key, room_key, wire_name
from warpsocket.protocol.envelope import Envelope
from warpsocket.server.context import Context
from warpsocket.server.hub import Hub

DEFAULT_ROOMS = ("alpha", "beta", "gamma")
BROADCAST_EVERY = 5  # one broadcast per this many publish ticks
# Cluster mode: the share of acked direct sends made by a node the session is
# not attached to, while another node is live.
REMOTE_SHARE = 0.5
# A node's sessions file older than this (it is rewritten every 0.5 s) is from
# a node that is dead, stopped publishing, or stuck.
SESSIONS_FRESH_S = 1.5


class Journal:
    """Append-only JSON lines, flushed on every write."""

    def __init__(self, path: str) -> None:
        self._file: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def write(self, kind: str, **fields: Any) -> None:
        record = {"k": kind, "t": time.time(), **fields}
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()


class ChaosApp:
    def __init__(
        self,
        hub: Hub,
        journal: Journal,
        incarnation: int,
        rooms: tuple[str, ...],
        publish_interval: float,
        direct_interval: float,
        *,
        cluster: bool = False,
        stop_file: str | None = None,
        node: str | None = None,
        sessions_dir: str | None = None,
    ) -> None:
        self.hub = hub
        self.cluster = cluster
        self.stop_file = stop_file
        self.node = node
        self.sessions_dir = Path(sessions_dir) if cluster and sessions_dir and node else None
        self.rng = random.Random()
        self.journal = journal
        self.incarnation = incarnation
        self.rooms = rooms
        self.sessions: list[str] = []
        self._known: set[str] = set()
        self._ticks = 0
        self._dm_seq = 0
        hub.on("n", self.handle)
        hub.on("chaos.quiesce", self.quiesce)
        hub.on_open(self.opened)
        if cluster:
            self._journal_backend_publishes()
        self.publisher = LoopingCall(self.publish_tick)
        self.direct = LoopingCall(self.direct_tick)
        self.publisher.clock = hub.clock
        self.direct.clock = hub.clock
        self.publisher.start(publish_interval, now=False)
        self.direct.start(direct_interval, now=False)
        self.journal.write(
            "start",
            inc=incarnation,
            pid=os.getpid(),
            streams={} if cluster else self.shared_positions(),
        )

    def _journal_backend_publishes(self) -> None:
        """Cluster mode: journal every append where its result is known (see above)."""
        backend = self.hub.backend
        original = backend.publish

        def publish(key: str, template: Envelope, now_ms: int) -> Deferred[Envelope]:
            data = template.data if isinstance(template.data, dict) else {}
            ident = data.get("id")
            stream = wire_name(key)
            extra = {"session": key[len("direct:") :]} if stream == "direct" else {}
            self.journal.write("pub_try", stream=stream, id=ident, **extra)
            result = original(key, template, now_ms)

            def stored(envelope: Envelope) -> Envelope:
                self.journal.write(
                    "pub",
                    stream=stream,
                    epoch=envelope.epoch,
                    offset=envelope.offset,
                    id=ident,
                    event=template.event,
                    **extra,
                )
                return envelope

            def failed(failure: Failure) -> Failure:
                error = failure.getErrorMessage()
                self.journal.write("pub_failed", stream=stream, id=ident, error=error, **extra)
                return failure

            return result.addCallbacks(stored, failed)

        backend.publish = publish  # type: ignore[method-assign]

    def stopped(self) -> bool:
        """The harness asked every node to stop publishing (the stop file exists)."""
        if self.stop_file is None or not os.path.exists(self.stop_file):
            return False
        for loop in (self.publisher, self.direct):
            if loop.running:
                loop.stop()
        self.journal.write("stopped", inc=self.incarnation)
        return True

    def shared_positions(self) -> dict[str, dict[str, Any]]:
        keys = [room_key(room) for room in self.rooms] + [BROADCAST]
        positions = {}
        for key in keys:
            position = self.hub.store.position(key)
            positions[key] = {"offset": position.offset, "epoch": position.epoch}
        return positions

    # ------------------------------------------------------------ handlers

    def handle(self, ctx: Context, data: Any) -> None:
        """A client message: journal it (the proof it was handled) and accept it."""
        self.journal.write(
            "recv",
            inc=self.incarnation,
            id=data["id"],
            sender=data["sender"],
            seq=data["seq"],
            session=ctx.session,
        )

    def opened(self, ctx: Context, resumed: bool) -> None:
        if ctx.session in self._known:
            return
        self._known.add(ctx.session)
        self.sessions.append(ctx.session)
        position = self.hub.store.position(direct_key(ctx.session))
        self.journal.write(
            "session", session=ctx.session, epoch=position.epoch, offset=position.offset
        )

    def quiesce(self, ctx: Context, data: Any) -> dict[str, Any]:
        """Stop publishing; answer the final position of every stream."""
        for loop in (self.publisher, self.direct):
            if loop.running:
                loop.stop()
        sessions = {}
        for session in self.sessions:
            if self.hub.session_info(session) is not None:
                position = self.hub.store.position(direct_key(session))
                sessions[session] = {"offset": position.offset, "epoch": position.epoch}
        final = {"inc": self.incarnation, "streams": self.shared_positions(), "sessions": sessions}
        self.journal.write("quiesce", **final)
        return final

    # ------------------------------------------------------------ publishers

    def publish_tick(self) -> None:
        if self.stopped():
            return
        self._ticks += 1
        for room in self.rooms:
            self._publish(room_key(room), "pub", {"room": room})
        if self._ticks % BROADCAST_EVERY == 0:
            self._publish(BROADCAST, "bc", {})

    def _publish(self, key: str, event: str, data: dict[str, Any]) -> None:
        ident = f"{key}/{self.incarnation}/{self._ticks}"
        payload = {**data, "id": ident}
        if key == BROADCAST:
            result: Any = self.hub.broadcast(event, payload)
        else:
            result = self.hub.publish(key[len("room:") :], event, payload)

        def journal(stored: Envelope) -> None:
            self.journal.write(
                "pub", stream=key, epoch=stored.epoch, offset=stored.offset, id=ident, event=event
            )

        # ``publish`` returns the stored envelope, or (since the cluster
        # backends) a Deferred of it. The in-memory backend fires it at once,
        # so the journal is still written before the reactor sends a byte.
        if self.cluster:
            # Journaled by the backend wrapper; a failed publish is not a loss.
            result.addErrback(lambda _: None)
        elif isinstance(result, Deferred):
            result.addCallbacks(journal, lambda failure: self._refused(ident, failure))
        else:
            journal(result)

    def _refused(self, ident: str, failure: Failure) -> None:
        self.journal.write("pub_refused", id=ident, error=failure.getErrorMessage())

    def direct_tick(self) -> None:
        if self.stopped():
            return
        others = self._exchange_sessions()
        share = REMOTE_SHARE if others else 0.0
        elsewhere = {session: node for node, listed in others.items() for session in listed}
        for session in list(self.sessions):
            if self.hub.session_info(session) is None:
                self.sessions.remove(session)
                continue
            if self.hub.is_connected(session):
                if share and self.rng.random() < share:
                    continue  # another node sends this one
            elif session in elsewhere:
                continue  # attached to another node: sent from here in the loop below
            self._send_direct(session)
        for session, node in sorted(elsewhere.items()):
            if self.hub.is_connected(session):
                continue  # moved here since it was listed: the loop above has it
            if self.rng.random() < share / len(others):
                self._send_direct(session, node)

    def _exchange_sessions(self) -> dict[str, list[str]]:
        """Cluster mode: list the sessions attached here; read the other live nodes' lists."""
        if self.sessions_dir is None:
            return {}
        attached = sorted(s for s in self.sessions if self.hub.is_connected(s))
        mine = self.sessions_dir / f"sessions-{self.node}.json"
        temporary = mine.with_suffix(".tmp")
        record = {"t": time.time(), "inc": self.incarnation, "sessions": attached}
        temporary.write_text(json.dumps(record), encoding="utf-8")
        os.replace(temporary, mine)
        others: dict[str, list[str]] = {}
        now = time.time()
        for path in self.sessions_dir.glob("sessions-*.json"):
            node = path.stem[len("sessions-") :]
            if node == self.node:
                continue
            try:
                listed = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if now - listed["t"] < SESSIONS_FRESH_S:
                others[node] = listed["sessions"]
        return others

    def _send_direct(self, session: str, to: str | None = None) -> None:
        """One acked direct send; ``to``: the other node the session is listed on."""
        self._dm_seq += 1
        ident = f"dm/{self.incarnation}/{self._dm_seq}"
        side = self.side(session)
        if self.cluster:
            self.journal.write("dm_send", id=ident, session=session, side=side, to=to)
        try:
            waiter = self.hub.send(session, "dm", {"id": ident, "session": session}, ack=True)
        except Exception as error:
            self.journal.write(
                "dm_refused", id=ident, session=session, side=side, error=repr(error)
            )
            return
        if not self.cluster:
            # Synchronous and single-threaded: the stream's position now is the
            # message just appended. (Cluster mode: journaled by the backend
            # wrapper when Redis answers.)
            position = self.hub.store.position(direct_key(session))
            self.journal.write(
                "pub",
                stream="direct",
                epoch=position.epoch,
                offset=position.offset,
                id=ident,
                event="dm",
                session=session,
            )
        if waiter is not None:
            waiter.addCallbacks(
                lambda _: self.journal.write("dm_ack", id=ident, side=side),
                lambda failure: self._dm_failed(ident, side, failure),
            )

    def side(self, session: str) -> str:
        """``local``: attached here; ``detached``: known here, attached elsewhere or
        nowhere (the hub tracks the ack here, ``core.remote_ack`` fires it);
        ``remote``: unknown here (the hub waits for the ack notice of another
        node, ``remote_acks.py``)."""
        if self.hub.is_connected(session):
            return "local"
        return "remote" if self.hub.session_info(session) is None else "detached"

    def _dm_failed(self, ident: str, side: str, failure: Failure) -> None:
        self.journal.write(
            "dm_fail",
            id=ident,
            side=side,
            cause=failure.type.__name__ if failure.type is not None else "?",
            error=failure.getErrorMessage(),
        )


def setup(hub: Hub) -> None:
    rooms = tuple(
        room for room in os.environ.get("CHAOS_ROOMS", ",".join(DEFAULT_ROOMS)).split(",") if room
    )
    ChaosApp(
        hub,
        Journal(os.environ["CHAOS_JOURNAL"]),
        int(os.environ.get("CHAOS_INCARNATION", "1")),
        rooms,
        float(os.environ.get("CHAOS_PUBLISH_INTERVAL", "0.1")),
        float(os.environ.get("CHAOS_DIRECT_INTERVAL", "0.5")),
        cluster=os.environ.get("CHAOS_CLUSTER") == "1",
        stop_file=os.environ.get("CHAOS_STOP_FILE") or None,
        node=os.environ.get("CHAOS_NODE") or None,
        sessions_dir=os.environ.get("CHAOS_SESSIONS_DIR") or None,
    )
