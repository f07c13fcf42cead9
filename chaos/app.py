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
  harness's way to quiesce every node of a cluster at once).

Records (``k`` is the kind; every record has ``t``, the wall-clock time):

- ``start``: ``inc``, ``pid``, ``streams`` {stream: {offset, epoch}};
- ``session``: a new session and its ``direct`` stream ``epoch``;
- ``recv``: a client message handled by the ``n`` handler (``id``, ``sender``,
  ``seq``, ``session``);
- ``pub``: a stored stream message (``stream``, ``epoch``, ``offset``, ``id``),
  for rooms, ``broadcast`` and each session's ``direct`` stream (then also
  ``session``);
- ``dm_ack`` / ``dm_fail``: the outcome of an acknowledged direct send;
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
import time
from typing import IO, Any

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from warpsocket.core.server import BROADCAST, direct_key, room_key
from warpsocket.core.store import wire_name
from warpsocket.protocol.envelope import Envelope
from warpsocket.server.context import Context
from warpsocket.server.hub import Hub

DEFAULT_ROOMS = ("alpha", "beta", "gamma")
BROADCAST_EVERY = 5  # one broadcast per this many publish ticks


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
    ) -> None:
        self.hub = hub
        self.cluster = cluster
        self.stop_file = stop_file
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
        for session in list(self.sessions):
            if self.hub.session_info(session) is None:
                self.sessions.remove(session)
                continue
            self._dm_seq += 1
            ident = f"dm/{self.incarnation}/{self._dm_seq}"
            try:
                waiter = self.hub.send(session, "dm", {"id": ident, "session": session}, ack=True)
            except Exception as error:
                self.journal.write("dm_refused", id=ident, session=session, error=repr(error))
                continue
            if self.cluster:
                # Journaled by the backend wrapper when Redis answers.
                if waiter is not None:
                    waiter.addCallbacks(
                        lambda _, ident=ident: self.journal.write("dm_ack", id=ident),
                        lambda failure, ident=ident: self._dm_failed(ident, failure),
                    )
                continue
            # Synchronous and single-threaded: the stream's position now is the
            # message just appended.
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
                    lambda _, ident=ident: self.journal.write("dm_ack", id=ident),
                    lambda failure, ident=ident: self._dm_failed(ident, failure),
                )

    def _dm_failed(self, ident: str, failure: Failure) -> None:
        self.journal.write("dm_fail", id=ident, error=failure.getErrorMessage())


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
    )
