"""The inbound pipeline: a client's frame, from payload to the core.

Decode; run inbound middleware; announce acks to the cluster; then feed the
core, after whatever the backend must do first: a ``hello`` or ``subscribe``
waits for the streams it reads (and a resume may load its session from the
cluster), a tracked event or call first claims its id in the cluster's dedup
records. While that step is pending, the connection's later frames are held
and fed strictly in order (acks and heartbeats excepted: they need no order).

An event or call of a welcomed session, on a single node without middleware
and with nothing held, takes the hot path (``_hot``): the core's checks
(``ServerCore.check_message``), then straight to the handler, without the
general pipeline's actions (docs/architecture.md, "The inbound hot path").
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from warpsocket.backends.base import FIRST, Backend, Claim, Decided, SessionRecord
from warpsocket.core.keys import BROADCAST, direct_key, room_key
from warpsocket.core.server import (
    Action,
    ConnId,
    ServerCore,
    Session,
    resume_token_matches,
)
from warpsocket.core.server import Connection as CoreConnection
from warpsocket.crypto.hub import HubSigning, SigningCodec
from warpsocket.crypto.signing import EXTENSION as SIGN
from warpsocket.protocol.codes import ErrorCode, ProtocolError
from warpsocket.protocol.envelope import Envelope, MessageType
from warpsocket.server.batches import Batches
from warpsocket.server.connection import Connection
from warpsocket.server.context import Context
from warpsocket.server.metrics import HubMetrics
from warpsocket.server.middleware import Middleware, Reject

# Frames of one connection held while the backend prepares its streams or
# claims a dedup record (Redis): beyond this, each is refused with 4206.
MAX_HELD_FRAMES = 256
# A message id claimed by another node that has not answered yet: ask again
# every CLAIM_POLL_SECONDS, for at most CLAIM_WAIT_SECONDS (claims live 10 s).
CLAIM_POLL_SECONDS = 0.25
CLAIM_WAIT_SECONDS = 12.0
# Frames taken even while a connection's earlier frames wait for the backend.
_UNORDERED = frozenset({MessageType.ACK, MessageType.HEARTBEAT})
# The wire name of each type (``MessageType.value`` is a slower property).
_WIRE_NAMES = {kind: kind.value for kind in MessageType}
# The batch extension's envelope (batches.py); a module global: one lookup per frame.
_BATCH = MessageType.BATCH


class Inbound:
    """Turns a connection's frames into core input, in order."""

    log = Logger()
    # The batch extension (batches.py): takes a ``batch`` frame apart, then
    # feeds each of its envelopes to ``_take``. Set by the hub.
    batches: Batches | None = None

    def __init__(
        self,
        core: ServerCore,
        backend: Backend,
        metrics: HubMetrics,
        clock: IReactorTime,
        *,
        connections: dict[ConnId, Connection],
        middleware: Sequence[Middleware],
        run: Callable[[list[Action]], None],
        dispatch: Callable[[ConnId, Session, Envelope, Connection], None],
        send: Callable[[ConnId, Envelope], None],
        close: Callable[[ConnId, ErrorCode, str], None],
        now_ms: Callable[[], int],
        context: Callable[[str, Connection | None, Envelope | None], Context],
        report_error: Callable[[Context | None, Failure], None],
        announce_ack: Callable[[Session, Envelope], None],
        session_changed: Callable[[str], None],
        reconnect_hint_ms: int,
        signing: HubSigning | None = None,
    ) -> None:
        self.core = core
        self.backend = backend
        self.metrics = metrics
        self.clock = clock
        # The registry's dict (read only here) and the hub's middleware list.
        self._connections = connections
        self._middleware = middleware
        self._run = run
        self._dispatch = dispatch
        self._send = send
        self._close = close
        self._now_ms = now_ms
        self._context = context
        self._report_error = report_error
        self._announce_ack = announce_ack
        self._session_changed = session_changed
        self._reconnect_hint_ms = reconnect_hint_ms
        # Envelope signatures (warpsocket/crypto/hub.py); None: not configured.
        self._signing = signing
        # (connection, message id) -> principal, for dedup claims in flight.
        self._claims: dict[tuple[ConnId, str], str] = {}
        # Connections waiting for the backend (prepare, dedup claim): their
        # later frames queue here and are fed to the core strictly in order.
        self._held: dict[ConnId, list[Envelope]] = {}
        # ``Backend.claim_then``; a backend without it claims by Deferred.
        self._claim_then: Callable[[str, str, int, Decided, Any], None] = getattr(
            backend, "claim_then", self._claim_by_deferred
        )

    def forget(self, conn_id: ConnId) -> None:
        """The connection is gone: its held frames with it."""
        self._held.pop(conn_id, None)

    def received(self, conn_id: ConnId, payload: bytes, is_binary: bool) -> None:
        """A whole message arrived on a connection."""
        connection = self._connections.get(conn_id)
        if connection is None:
            return
        self.metrics.traffic.bytes_in += len(payload)
        if not connection.can_send:
            return  # closing: see ``decoded``
        try:
            envelope = connection.codec.decode(payload, is_binary)
        except ProtocolError as error:
            self.metrics.protocol_errors.labels(str(int(error.code))).inc()
            self._run(self.core.protocol_error(conn_id, error, self._now_ms()))
            return
        if envelope.type is _BATCH and self.batches is not None:
            self.batches.received(conn_id, connection, envelope, len(payload))
            return
        self._take(conn_id, connection, envelope)

    def decoded(self, conn_id: ConnId, envelope: Envelope, size: int) -> None:
        """A message of ``size`` bytes the transport decoded already (a hello it
        authenticated): the same path as ``received`` from there on."""
        connection = self._connections.get(conn_id)
        if connection is None:
            return
        self.metrics.traffic.bytes_in += size
        if not connection.can_send:
            # We are closing this connection (4204, 4400, 4500 ...): what it
            # still sends is not acted on. Above all, a replaced connection
            # (its session moved, so the core sees it as awaiting hello) must
            # not say hello again and take the session back.
            return
        self._take(conn_id, connection, envelope)

    def _take(self, conn_id: ConnId, connection: Connection, envelope: Envelope) -> None:
        now = self._now_ms()
        kind = envelope.type
        self.metrics.traffic.messages_in[_WIRE_NAMES[kind]] += 1
        conn = self.core.connections.get(conn_id)
        if self._signing is not None and conn is not None and conn.session is not None:
            refusal = self._signing.check(envelope, SIGN in conn.extensions, now)
            if refusal is not None:  # 4601-4604, answered; the connection stays open
                self.metrics.protocol_errors.labels(str(int(refusal.code))).inc()
                self._run(self.core.protocol_error(conn_id, refusal, now))
                return
        if conn_id not in self._held and self._took_hot(conn_id, conn, connection, envelope, now):
            return
        if self._middleware and conn is not None and conn.session is not None:
            ctx = self._context(conn.session.id, connection, envelope)
            try:
                for middleware in self._middleware:
                    envelope = middleware.on_inbound(ctx, envelope)
            except Reject as reject:
                refusal = ProtocolError(reject.code, reject.message, envelope.id)
                self.metrics.protocol_errors.labels(str(int(reject.code))).inc()
                self._run(self.core.protocol_error(conn_id, refusal, now))
                return
            except Exception:
                # A bug in middleware costs this one message (4501), not the
                # connection (autobahn would drop it on an exception here).
                failure = Failure()
                self.log.failure("inbound middleware failed", failure)
                self._report_error(ctx, failure)
                fault = ProtocolError(ErrorCode.INTERNAL_ERROR, "internal error", envelope.id)
                self.metrics.protocol_errors.labels(str(int(ErrorCode.INTERNAL_ERROR))).inc()
                self._run(self.core.protocol_error(conn_id, fault, now))
                return
        if (
            envelope.type is MessageType.ACK
            and self.backend.clustered
            and conn is not None
            and conn.session is not None
        ):
            # The message may have been sent by another node: tell them all.
            self._announce_ack(conn.session, envelope)
        queued = self._held.get(conn_id)
        if (
            queued is not None
            and envelope.type in _UNORDERED
            and conn is not None
            and conn.session is not None
        ):
            # Acks and heartbeats need no order with the held frames (they
            # answer the server): taking them at once keeps a client that
            # floods after a stall from filling the held queue with them.
            self._run(self.core.receive(conn_id, envelope, now))
            return
        if queued is not None:
            if len(queued) >= MAX_HELD_FRAMES:
                # Bounded: a client may not pile frames up behind a slow backend.
                full = ProtocolError(ErrorCode.QUEUE_FULL, "too many frames in flight", envelope.id)
                self.metrics.protocol_errors.labels(str(int(ErrorCode.QUEUE_FULL))).inc()
                self._run(self.core.protocol_error(conn_id, full, now))
                return
            queued.append(envelope)
            return
        self._feed(conn_id, envelope)

    def _took_hot(
        self,
        conn_id: ConnId,
        conn: CoreConnection | None,
        connection: Connection,
        envelope: Envelope,
        now: int,
    ) -> bool:
        """Take an event or call (no room, no stream position) of a welcomed
        session, with no middleware configured, on a hot path; False: the
        general pipeline takes it."""
        kind = envelope.type
        if (
            (kind is MessageType.EVENT or kind is MessageType.CALL)
            and conn is not None
            and conn.session is not None
            and not self._middleware
            and envelope.room is None
            and envelope.stream is None
        ):
            if self.backend.clustered and (envelope.ack or kind is MessageType.CALL):
                self._hot_claim(conn_id, conn, conn.session, envelope, now)
            else:
                self._hot(conn_id, conn, conn.session, connection, envelope, now)
            return True
        return False

    def _hot(
        self,
        conn_id: ConnId,
        conn: CoreConnection,
        session: Session,
        connection: Connection,
        envelope: Envelope,
        now: int,
    ) -> None:
        """``core.receive`` without its ``Dispatch`` action: the core's
        checks, then straight to the handler."""
        conn.last_rx_ms = now  # as ``receive`` marks them
        conn.last_app_ms = now
        answered = self.core.check_message(conn, session, envelope, now)
        if answered is not None:
            self._run(answered)  # a retry's reply, an error
            return
        self._dispatch(conn_id, session, envelope, connection)

    def _hot_claim(
        self, conn_id: ConnId, conn: CoreConnection, session: Session, envelope: Envelope, now: int
    ) -> None:
        """``_hot`` on a clustered node, for a tracked event or call: its id is
        claimed in the cluster's dedup records first (the claims of a reactor
        turn go in one script call, with no Deferred per message), and the
        connection's later frames are held until the answer."""
        principal = session.principal
        if self.core.dedup.lookup((principal, envelope.id), now) is not None:
            # This node knows it: the core answers the retry (no claim needed).
            self._hot(conn_id, conn, session, self._connections[conn_id], envelope, now)
            return
        self._held[conn_id] = []
        self._claim_then(
            principal, envelope.id, now, self._hot_claimed, (conn_id, envelope, principal)
        )

    def _claim_by_deferred(
        self, principal: str, message_id: str, now: int, decided: Decided, context: Any
    ) -> None:
        """``claim_then`` for a backend written before it: its Deferred ``claim``
        (one that fails is answered as ``claim_then`` answers trouble: ``FIRST``,
        the node's own dedup window applies; never left holding the frames)."""
        claimed = self.backend.claim(principal, message_id, now)
        claimed.addErrback(self._claim_failed).addCallback(decided, context)

    def _claim_failed(self, failure: Failure) -> Claim:
        self.log.warn("dedup claim failed: {reason}", reason=failure.getErrorMessage())
        return FIRST

    def _hot_claimed(self, claim: Claim, claimed: tuple[ConnId, Envelope, str]) -> None:
        conn_id, envelope, principal = claimed
        connection = self._connections.get(conn_id)
        if connection is None:
            self._held.pop(conn_id, None)
            self._drop_claim(claim, principal, envelope.id)
            return
        if not claim.first and claim.reply is None:
            # Another node is handling it: ask again until it answers (the
            # general pipeline's way), the later frames still held.
            self._claims[(conn_id, envelope.id)] = principal
            asked = self._ask_until_decided(succeed(claim), principal, envelope.id)
            asked.addBoth(lambda result: self._resume(conn_id, envelope, result))
            return
        try:
            self._claim_decided(conn_id, envelope, claim, connection)
        finally:
            # Even after a bug: the connection's later frames must not stay held.
            self._release_held(conn_id)

    def _drop_claim(self, claim: Claim, principal: str, message_id: str) -> None:
        """The connection went before its claimed message could be handled:
        free the id (if this node holds it) so that the client's retry is handled."""
        if claim.first:
            self.backend.unclaim(principal, message_id)

    def _claim_decided(
        self, conn_id: ConnId, envelope: Envelope, claim: Claim, connection: Connection
    ) -> None:
        """The cluster decided ``_hot_claim``'s claim: answer as another node
        did, or handle it here (a step that tracing wraps, as it wraps
        ``_after_step``: it runs outside the frame's receive span)."""
        conn = self.core.connections.get(conn_id)
        if not claim.first:
            self._send(conn_id, cast(Envelope, claim.reply))  # answered as the other node did
        elif conn is not None and conn.session is not None:
            self._hot(conn_id, conn, conn.session, connection, envelope, self._now_ms())
        else:
            self._run(self.core.receive(conn_id, envelope, self._now_ms()))

    def _feed(self, conn_id: ConnId, envelope: Envelope) -> None:
        """Feed the core, after whatever the backend must do first."""
        step = self._before_core(conn_id, envelope)
        if step is None:
            self._run(self.core.receive(conn_id, envelope, self._now_ms()))
            return
        outcome: list[Any] = []

        def capture(result: Any) -> None:
            outcome.append(result)

        step.addBoth(capture)
        if outcome:  # already there (always, with the memory backend)
            self._after_step(conn_id, envelope, outcome[0])
            return
        self._held[conn_id] = []
        step.addCallback(lambda _: self._resume(conn_id, envelope, outcome[0]))

    def _resume(self, conn_id: ConnId, envelope: Envelope, result: Any) -> None:
        """The backend step ``envelope`` waited for gave ``result``: feed the
        core, then the frames held meanwhile."""
        try:
            self._after_step(conn_id, envelope, result)
        finally:
            self._release_held(conn_id)

    def _release_held(self, conn_id: ConnId) -> None:
        """The backend step a connection waited for is done: its held frames
        go on in order, until one of them waits for the backend again."""
        waiting = self._held.pop(conn_id, None)
        while waiting and conn_id in self._connections:
            try:
                self._take_held(conn_id, waiting.pop(0))
            except Exception:
                # A bug costs that frame, not the ones behind it.
                self.log.failure("a held frame failed")
            if conn_id in self._held:
                # That one waits for the backend too: the rest follow it.
                self._held[conn_id].extend(waiting)
                return

    def _take_held(self, conn_id: ConnId, envelope: Envelope) -> None:
        """One held frame, as ``_take`` would have fed it (a step that tracing
        wraps: it gets its own span in its sender's trace)."""
        if not self._took_hot(
            conn_id,
            self.core.connections.get(conn_id),
            self._connections[conn_id],
            envelope,
            self._now_ms(),
        ):
            self._feed(conn_id, envelope)

    def _before_core(self, conn_id: ConnId, envelope: Envelope) -> Deferred[Any] | None:
        backend = self.backend
        conn = self.core.connections.get(conn_id)
        if conn is None:
            return None
        kind = envelope.type
        if conn.session is None and kind is MessageType.HELLO:
            return self._prepare_hello(conn.user, envelope)
        if conn.session is None:
            return None
        if kind is MessageType.SUBSCRIBE and envelope.room:
            return backend.prepare([room_key(envelope.room)])
        if (
            backend.clustered
            and (kind is MessageType.CALL or (kind is MessageType.EVENT and envelope.ack))
            and envelope.stream is None
        ):
            principal = conn.session.principal
            if self.core.dedup.lookup((principal, envelope.id), self._now_ms()) is not None:
                return None  # this node knows it: the core answers the retry
            self._claims[(conn_id, envelope.id)] = principal
            return self._claim_when_decided(principal, envelope.id)
        return None

    def _claim_when_decided(self, principal: str, message_id: str) -> Deferred[Any]:
        """Claim a message id; while another node still holds it, ask again."""
        claimed = self.backend.claim(principal, message_id, self._now_ms())
        return self._ask_until_decided(claimed, principal, message_id)

    def _ask_until_decided(
        self, claimed: Deferred[Claim], principal: str, message_id: str
    ) -> Deferred[Any]:
        """Fires with ``claimed``'s answer once it is decided: this node handles
        the id, or another recorded its reply, or the wait is over.

        Answering nothing and moving on to the connection's next frames would
        let them overtake this one; waiting (with the later frames held, in
        order) keeps the sender's order. The other node either records its
        answer, which is sent, or its claim expires and the message is handled
        here.
        """
        deadline = self.clock.seconds() + CLAIM_WAIT_SECONDS

        def decided(claim: Claim) -> Claim | Deferred[Any]:
            if claim.first or claim.reply is not None or self.clock.seconds() >= deadline:
                return claim
            again = deferLater(self.clock, CLAIM_POLL_SECONDS, lambda: None)
            return again.addCallback(lambda _: self.backend.claim(principal, message_id, 0))

        def loop(claim: Claim) -> Claim | Deferred[Any]:
            result = decided(claim)
            return result.addCallback(loop) if isinstance(result, Deferred) else result

        return claimed.addCallback(loop)

    def _prepare_hello(self, user: str | None, hello: Envelope) -> Deferred[Any]:
        data = hello.data if isinstance(hello.data, dict) else {}
        wanted = data.get("session")
        token = data.get("resume_token")
        token = token if isinstance(token, str) else None
        rooms = data.get("rooms")
        keys = [BROADCAST]
        if isinstance(rooms, list):
            keys += [room_key(r) for r in rooms if isinstance(r, str)]
        if not isinstance(wanted, str) or not self.backend.clustered:
            known = self.core.sessions.get(wanted) if isinstance(wanted, str) else None
            if known is not None:
                keys += [direct_key(known.id), *(room_key(r) for r in known.rooms)]
            return self.backend.prepare(keys)
        local = self.core.sessions.get(wanted)
        if local is not None:
            return self.backend.prepare(
                [*keys, direct_key(wanted), *(room_key(r) for r in local.rooms)]
            )

        def adopt(record: SessionRecord | None) -> Deferred[None]:
            extra = [direct_key(wanted)]
            if (
                record is not None
                and record.user == user
                and resume_token_matches(record.resume_hash, token)
                and wanted not in self.core.sessions
            ):
                self.core.adopt_session(
                    record.id,
                    record.user,
                    record.claims,
                    record.rooms,
                    record.starts,
                    self._now_ms(),
                    record.resume_hash,
                )
                extra += [room_key(r) for r in record.rooms]
            return self.backend.prepare([*keys, *extra])

        return self.backend.load_session(wanted).addCallback(adopt)

    def _sign_from_welcome(self, conn_id: ConnId) -> None:
        """A connection that agreed to ``sign`` is sent signed envelopes, its welcome first."""
        conn = self.core.connections.get(conn_id)
        connection = self._connections.get(conn_id)
        if (
            self._signing is not None
            and conn is not None
            and connection is not None
            and SIGN in conn.extensions
            and not isinstance(connection.codec, SigningCodec)
        ):
            connection.codec = self._signing.codec_for(connection.codec)

    def _after_step(self, conn_id: ConnId, envelope: Envelope, result: Any) -> None:
        principal = self._claims.pop((conn_id, envelope.id), None)
        if conn_id not in self._connections:
            if isinstance(result, Claim) and principal is not None:
                self._drop_claim(result, principal, envelope.id)
            return
        now = self._now_ms()
        if isinstance(result, Failure):
            reason = result.getErrorMessage()
            self.log.warn("backend step failed: {reason}", reason=reason)
            if envelope.type is MessageType.HELLO:
                hint = json.dumps({"retry_after_ms": self._reconnect_hint_ms, "reason": reason})
                self._close(conn_id, ErrorCode.GOING_AWAY, hint)
                return
            fault = ProtocolError(
                ErrorCode.UNAVAILABLE, f"cluster unavailable: {reason}", envelope.id
            )
            self._run(self.core.protocol_error(conn_id, fault, now))
            return
        if isinstance(result, Claim) and not result.first:
            # Another node handled (or is handling) this id: answer as it did.
            if result.reply is not None:
                self._send(conn_id, result.reply)
            return
        actions = self.core.receive(conn_id, envelope, now)
        if self._signing is not None and envelope.type is MessageType.HELLO:
            self._sign_from_welcome(conn_id)
        self._run(actions)
        if envelope.type in (MessageType.SUBSCRIBE, MessageType.UNSUBSCRIBE):
            conn = self.core.connections.get(conn_id)
            if conn is not None and conn.session is not None:
                self._session_changed(conn.session.id)
