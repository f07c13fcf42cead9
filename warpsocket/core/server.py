"""The server's reliability core: sessions, streams, acks and dedup, sans-I/O.

One ``ServerCore`` serves a node. The Twisted hub feeds it decoded envelopes
and connection events and performs the actions it returns:

- ``Send``: one envelope to one connection;
- ``Fanout``: one envelope to many connections (encode it once);
- ``Close``: close a connection with a code;
- ``Dispatch``: run the application for an event, call or auth, then report
  the outcome with ``ServerCore.settle``;
- ``AckResult``: an acknowledged direct send was acknowledged or failed;
- ``SessionOpened`` / ``SessionExpired``: lifecycle notifications;
- ``Publish``: a client's room event to append (through the backend, which
  may be asynchronous) and then answer with ``ServerCore.settle``.

Application sends and publishes do not pass through the core: the hub
appends them through its backend (``server/outbox.py``) and the core learns
of them as deliveries (``deliver``) and acknowledged sends (``track_ack``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from heapq import heapify, heappop, heappush
from typing import Any

from warpsocket.core.dedup import DedupKey, DedupLimits, DedupWindow
from warpsocket.core.history import HistoryLimits, Position
from warpsocket.core.ids import random_token
from warpsocket.core.keys import (
    BROADCAST,
    DIRECT,
    DIRECT_PREFIX,
    direct_key,
    room_key,
    wire_name,
)
from warpsocket.core.messages import (
    ack_envelope,
    error_envelope,
    heartbeat_envelope,
    result_envelope,
)
from warpsocket.core.store import StreamStore
from warpsocket.protocol.codes import ErrorCode, ProtocolError
from warpsocket.protocol.datamodel import MAX_SAFE_INTEGER, DataLimits
from warpsocket.protocol.envelope import (
    MAX_EPOCH_LENGTH,
    MAX_NAME_LENGTH,
    Envelope,
    MessageType,
)

ConnId = int

# Kinds of connection deadline (protocol.md section 9): hello, silence, idleness.
_HELLO, _SILENT, _IDLE = 0, 1, 2


def new_resume_token() -> str:
    """256 random bits, base64url: what a client must present to resume."""
    return random_token(32)


def hash_resume_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def resume_token_matches(resume_hash: str, token: str | None) -> bool:
    if token is None or not resume_hash:
        return False
    return hmac.compare_digest(resume_hash, hash_resume_token(token))


@dataclass(frozen=True)
class CoreOptions:
    """Reliability settings of a node (``HubOptions.core``); the defaults are
    the production values, and every one is validated at construction.

    Sessions and connections (times in milliseconds):

    - ``node``: this node's name (in message ids and the welcome).
    - ``session_ttl_ms``: how long a detached session waits to be resumed
      before it expires (its pending acknowledged sends then fail).
    - ``handshake_timeout_ms``: an open WebSocket that has not said ``hello``
      by then is closed with ``4205``.
    - ``heartbeat_interval_ms`` / ``heartbeat_timeout_ms``: the server's
      heartbeat period, and the silence after which a connection is closed
      with ``4204`` (must exceed the interval).
    - ``idle_timeout_ms``: close with ``4203`` after this long without
      application traffic; None (the default) never does.

    Delivery:

    - ``ack_retry_ms`` / ``ack_timeout_ms``: an acknowledged direct send is
      re-sent every ``ack_retry_ms`` until the client acknowledges it, and
      fails with ``AckTimeoutError`` after ``ack_timeout_ms``.
    - ``max_pending_acks``: acknowledged sends waiting per session; one more
      fails with ``QueueFullError``.
    - ``max_rooms``: rooms per session (``4206``, or ``QueueFullError`` from
      ``Hub.join``).
    - ``max_message_size``: bytes per frame (larger ones close with ``1009``);
      it also scales the data model's bounds (``data_limits``).
    - ``history`` (``HistoryLimits``) and ``dedup`` (``DedupLimits``): what a
      stream keeps for replay and how long client message ids are remembered.

    Extensions (protocol.md 4.4):

    - ``extensions``: name -> parameters (an object in the data model) of each
      optional protocol extension this node offers. A connection uses the
      ones its hello asked for and this node offers; its welcome lists them.
    """

    node: str = "node"
    session_ttl_ms: int = 120_000
    handshake_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 25_000
    heartbeat_timeout_ms: int = 60_000
    idle_timeout_ms: int | None = None
    ack_retry_ms: int = 10_000
    ack_timeout_ms: int = 60_000
    max_pending_acks: int = 1_000
    max_rooms: int = 1_000
    max_message_size: int = 1_048_576
    history: HistoryLimits = field(default_factory=HistoryLimits)
    dedup: DedupLimits = field(default_factory=DedupLimits)
    extensions: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.extensions:
            if not valid_extension_name(name):
                raise ValueError(f"bad extension name {name!r}")
        for name in (
            "session_ttl_ms",
            "handshake_timeout_ms",
            "heartbeat_interval_ms",
            "heartbeat_timeout_ms",
            "ack_retry_ms",
            "ack_timeout_ms",
            "max_pending_acks",
            "max_rooms",
            "max_message_size",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.idle_timeout_ms is not None and self.idle_timeout_ms <= 0:
            raise ValueError("idle_timeout_ms must be positive or None")
        if self.heartbeat_timeout_ms <= self.heartbeat_interval_ms:
            raise ValueError("heartbeat_timeout_ms must exceed heartbeat_interval_ms")

    @cached_property
    def data_limits(self) -> DataLimits:
        """The data model's depth and value-count bounds for this message size."""
        return DataLimits.for_message_size(self.max_message_size)


# ---------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Send:
    conn: ConnId
    envelope: Envelope


@dataclass(frozen=True, slots=True)
class Fanout:
    conns: tuple[ConnId, ...]
    envelope: Envelope


@dataclass(frozen=True, slots=True)
class Close:
    conn: ConnId
    code: ErrorCode
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Dispatch:
    conn: ConnId
    session: str
    envelope: Envelope


@dataclass(frozen=True, slots=True)
class AckResult:
    session: str
    offset: int
    code: ErrorCode | None  # None: acknowledged
    # The direct stream's epoch: an offset names a message only within one.
    epoch: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class SessionOpened:
    conn: ConnId
    session: str
    resumed: bool


@dataclass(frozen=True, slots=True)
class SessionExpired:
    session: str


@dataclass(frozen=True, slots=True)
class Publish:
    """Append ``template`` to stream ``key``, deliver it, then settle ``reply_to``."""

    key: str
    template: Envelope
    reply_to: Dispatch


Action = Send | Fanout | Close | Dispatch | AckResult | SessionOpened | SessionExpired | Publish


class UnknownSessionError(KeyError):
    """No session with this id on this node (``Hub.join``; a send to an unknown
    session on a single node). The argument is the session id."""


class QueueFullError(Exception):
    """A per-session bound is reached: ``max_pending_acks`` acknowledged sends
    waiting (``Hub.send(..., ack=True)``), or ``max_rooms`` rooms
    (``Hub.join``). Nothing was stored or joined; the client side of the same
    bound is ``4206 queue_full``."""


# ---------------------------------------------------------------- state


# What a connection that asked for no extension was granted (one shared set).
_NO_EXTENSIONS: frozenset[str] = frozenset()


@dataclass(slots=True)
class PendingAck:
    envelope: Envelope
    deadline_ms: int
    next_retry_ms: int


@dataclass(eq=False, slots=True)
class Session:
    """The core's record of one session (mutable: only the core changes it).

    The ``can_join`` and ``can_publish`` policies receive it (``id``,
    ``user``, ``claims``, ``rooms``); applications read sessions through
    ``Hub.session_info``, which returns a read-only ``SessionInfo``.
    """

    id: str
    user: str | None
    claims: Mapping[str, Any]
    # SHA-256 (hex) of the resume token the welcome gave; "" matches nothing.
    resume_hash: str = ""
    # stream key -> the position the session started from, used when the
    # client cannot present one (it never saw an event of that stream).
    # Kept as (offset, epoch) tuples (``start_position`` reads one): a dict
    # of strings and tuples of atoms the collector stops tracking, where
    # ``Position`` objects it would visit at every full collection.
    starts: dict[str, tuple[int, str]] = field(default_factory=dict)

    def start_position(self, key: str) -> Position | None:
        start = self.starts.get(key)
        return None if start is None else Position(*start)

    def start_positions(self) -> dict[str, Position]:
        return {key: Position(*start) for key, start in self.starts.items()}

    rooms: set[str] = field(default_factory=set)
    conn: ConnId | None = None
    pending: dict[int, PendingAck] = field(default_factory=dict)
    # Acks that arrived before their send was registered (``track_ack``): a
    # clustered send learns its offset after the client may have acked it.
    # None until the first one (most sessions never have any).
    early_acks: OrderedDict[str, None] | None = None
    acked_through: int = 0

    @property
    def principal(self) -> str:
        return "u:" + self.user if self.user is not None else "s:" + self.id


@dataclass(eq=False, slots=True)
class Connection:
    id: ConnId
    opened_ms: int
    last_rx_ms: int
    last_app_ms: int
    user: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)
    session: Session | None = None
    # The streams it reads here (``members``): a tuple of strings, which the
    # collector stops tracking; a set it would visit at every full collection.
    # (At most ``max_rooms`` + 1; joins and leaves are rare.)
    keys: tuple[str, ...] = ()
    # A timer closed it (4203, 4204, 4205): no further timer acts on it.
    timed_out: bool = False
    # Extensions agreed in the handshake (protocol.md 4.4).
    extensions: frozenset[str] = _NO_EXTENSIONS


JoinPolicy = Callable[[Session, str], bool]
PublishPolicy = Callable[[Session, str, Envelope], bool]


def deny_all(*_: object) -> bool:
    return False


# ---------------------------------------------------------------- the core


class ServerCore:
    """The server's reliability state machine for one node, sans-I/O.

    It keeps connections, sessions, room membership, pending acknowledged
    sends, the dedup window and the connection timers' deadlines, and reads
    histories from a ``StreamStore``. Every method takes ``now_ms`` and
    returns actions (the module docstring lists them) that the hub performs;
    it never blocks, reads a clock or does I/O. Options are ``CoreOptions``;
    ``can_join`` / ``can_publish`` are the application's authorisation.
    """

    def __init__(
        self,
        store: StreamStore,
        options: CoreOptions,
        new_id: Callable[[], str],
        new_session_id: Callable[[], str],
        can_join: JoinPolicy = deny_all,
        can_publish: PublishPolicy = deny_all,
        on_settle: Callable[[DedupKey, Envelope], None] | None = None,
        new_resume_token: Callable[[], str] = new_resume_token,
    ) -> None:
        self.store = store
        # Told of every recorded dedup reply (a cluster shares them).
        self.on_settle = on_settle
        self.options = options
        self.new_id = new_id
        self.new_session_id = new_session_id
        self.new_resume_token = new_resume_token
        self.can_join = can_join
        self.can_publish = can_publish
        self.dedup = DedupWindow(options.dedup)
        self.connections: dict[ConnId, Connection] = {}
        self.sessions: dict[str, Session] = {}
        # Stream key -> the connections reading it here. A session's own
        # stream (``direct:<session>``) is not in it: its one reader is the
        # session's connection (``session.conn``), one set less per session.
        self.members: dict[str, set[ConnId]] = {}
        self.room_sessions: dict[str, set[str]] = {}
        self.user_sessions: dict[str, set[str]] = {}
        self._awaiting_hello: set[ConnId] = set()
        self._detached: OrderedDict[str, int] = OrderedDict()  # session -> detached at
        self._with_pending: set[str] = set()
        self._next_heartbeat_ms: int | None = None
        # (due, conn, kind): a min-heap of connection deadlines. Traffic does
        # not touch it (it only moves ``last_rx_ms``/``last_app_ms``): an
        # entry found early when it falls due is pushed again at its real due
        # time, so each connection costs one heap operation per window.
        self._deadlines: list[tuple[int, ConnId, int]] = []
        # Tallies for metrics: re-sent unacknowledged messages, client retries
        # recognised by the dedup window.
        self.retries_sent = 0
        self.duplicates_seen = 0
        # Told when a new deadline becomes the earliest (to wake up in time).
        self.on_deadline: Callable[[int], None] | None = None

    # ------------------------------------------------------------ connections

    def open(
        self,
        conn_id: ConnId,
        now_ms: int,
        user: str | None = None,
        claims: Mapping[str, Any] | None = None,
    ) -> None:
        """A WebSocket handshake completed; ``hello`` is expected next."""
        self.connections[conn_id] = Connection(
            conn_id, now_ms, now_ms, now_ms, user, dict(claims or {})
        )
        self._awaiting_hello.add(conn_id)
        self._schedule(now_ms + self.options.handshake_timeout_ms, conn_id, _HELLO)

    def close(self, conn_id: ConnId, now_ms: int) -> Session | None:
        """The connection is gone. Returns the session it detached, if any."""
        conn = self.connections.pop(conn_id, None)
        self._awaiting_hello.discard(conn_id)
        if conn is None:
            return None
        if len(self._deadlines) > 4 * len(self.connections) + 1024:
            # Entries of closed connections go when they fall due; under heavy
            # churn, sooner.
            live = self.connections
            self._deadlines = [entry for entry in self._deadlines if entry[1] in live]
            heapify(self._deadlines)
        self._leave_all(conn)
        session = conn.session
        if session is not None and session.conn == conn_id:
            session.conn = None
            self._detached[session.id] = now_ms
            return session
        return None

    def _leave_all(self, conn: Connection) -> None:
        for key in conn.keys:
            members = self.members.get(key)
            if members is not None:
                members.discard(conn.id)
                if not members:
                    del self.members[key]
        conn.keys = ()

    def _member(self, conn: Connection, key: str) -> None:
        self.members.setdefault(key, set()).add(conn.id)
        if key not in conn.keys:
            conn.keys += (key,)

    def _not_member(self, conn: Connection, key: str) -> None:
        conn.keys = tuple(k for k in conn.keys if k != key)
        members = self.members.get(key)
        if members is not None:
            members.discard(conn.id)
            if not members:
                del self.members[key]

    # ------------------------------------------------------------ inbound

    def protocol_error(self, conn_id: ConnId, error: ProtocolError, now_ms: int) -> list[Action]:
        """A frame failed to decode or validate: answer it, keep the connection."""
        conn = self.connections.get(conn_id)
        if conn is None:
            return []
        conn.last_rx_ms = now_ms
        return [Send(conn_id, self._error(now_ms, error.code, error.message, error.ref))]

    def receive(self, conn_id: ConnId, envelope: Envelope, now_ms: int) -> list[Action]:
        conn = self.connections.get(conn_id)
        if conn is None:
            return []
        conn.last_rx_ms = now_ms
        kind = envelope.type
        session = conn.session
        if session is None:
            if kind is MessageType.HELLO:
                return self._hello(conn, envelope, now_ms)
            return [
                Send(
                    conn_id,
                    self._error(now_ms, ErrorCode.HELLO_REQUIRED, "send hello first", envelope.id),
                )
            ]
        if kind is MessageType.HEARTBEAT:
            if envelope.ref is not None:
                return []
            return [Send(conn_id, heartbeat_envelope(self.new_id(), now_ms, envelope.id))]
        if kind is MessageType.ACK:
            return self._client_ack(session, envelope)
        if kind is MessageType.ERROR:
            return self._client_nack(session, envelope)
        conn.last_app_ms = now_ms
        if kind is MessageType.EVENT or kind is MessageType.CALL:
            return self._inbound_message(conn, session, envelope, now_ms)
        if kind is MessageType.SUBSCRIBE:
            return self._subscribe(conn, session, envelope, now_ms)
        if kind is MessageType.UNSUBSCRIBE:
            self.leave(session.id, envelope.room or "")
            return [Send(conn_id, ack_envelope(self.new_id(), now_ms, envelope.id))]
        if kind is MessageType.AUTH:
            return [Dispatch(conn_id, session.id, envelope)]
        if kind is MessageType.TRANSFER:
            if TRANSFER_EXTENSION in conn.extensions:
                return [Dispatch(conn_id, session.id, envelope)]
            # Not negotiated: as unknown as any other type (protocol.md 4.4).
            return [
                Send(
                    conn_id,
                    self._error(
                        now_ms, ErrorCode.UNKNOWN_TYPE, "unknown type 'transfer'", envelope.id
                    ),
                )
            ]
        if kind is MessageType.BATCH:
            # Taken apart before the core where negotiated (server/batches.py);
            # here, as unknown as any other extension type (protocol.md 4.4).
            error = self._error(now_ms, ErrorCode.UNKNOWN_TYPE, "unknown type 'batch'", envelope.id)
            return [Send(conn_id, error)]
        reason = "second hello" if kind is MessageType.HELLO else f"{kind.value} is server-only"
        return [Send(conn_id, self._error(now_ms, ErrorCode.BAD_STATE, reason, envelope.id))]

    # ------------------------------------------------------------ hello

    def _hello(self, conn: Connection, hello: Envelope, now_ms: int) -> list[Action]:
        try:
            wanted_session, token, presented, wanted_rooms = _parse_hello(hello.data, self.options)
            offered = _parse_extensions(hello.data)
        except ProtocolError as exc:
            return [Send(conn.id, self._error(now_ms, exc.code, exc.message, hello.id))]
        granted = offered & self.options.extensions.keys()
        # (The common case, none, shares one empty set: nothing per connection.)
        conn.extensions = frozenset(granted) if granted else _NO_EXTENSIONS
        actions: list[Action] = []
        session = self.sessions.get(wanted_session) if wanted_session else None
        if session is not None and (
            session.user != conn.user or not resume_token_matches(session.resume_hash, token)
        ):
            # A session never changes hands between principals, and resuming
            # takes its resume token: its id alone is no credential (4.3).
            session = None
        resumed = session is not None
        if session is None:
            session, token = self._new_session(conn.user, conn.claims, now_ms)
        elif session.conn is not None:
            old = self.connections.get(session.conn)
            actions.append(Close(session.conn, ErrorCode.SESSION_REPLACED))
            if old is not None:
                self._leave_all(old)
                old.session = None
        self._detached.pop(session.id, None)
        self._awaiting_hello.discard(conn.id)
        conn.session = session
        session.conn = conn.id
        self._schedule(conn.last_rx_ms + self.options.heartbeat_timeout_ms, conn.id, _SILENT)
        if self.options.idle_timeout_ms is not None:
            self._schedule(conn.last_app_ms + self.options.idle_timeout_ms, conn.id, _IDLE)

        denied: dict[str, int] = {}
        for room in wanted_rooms:
            if room not in session.rooms:
                code = self._join_refusal(session, room)
                if code is None:
                    self._add_room(session, room)
                else:
                    denied[room] = int(code)

        keys = [direct_key(session.id), BROADCAST, *(room_key(r) for r in sorted(session.rooms))]
        streams: dict[str, dict[str, Any]] = {}
        replays: list[Send] = []
        for key in keys:
            wire = wire_name(key)
            own = presented.get(wire)
            start = own or session.start_position(key)
            current = self.store.position(key)
            missed = self.store.read_after(key, start, now_ms) if start is not None else None
            whole = None
            if start is not None and missed is None and start.epoch != current.epoch:
                # The stream was reset (history lost): what was lost is lost,
                # but the new epoch may still be whole from its first message.
                whole = self.store.read_after(key, Position(0, current.epoch), now_ms)
            if whole is not None:
                resume_at, recovered = Position(0, current.epoch), False
                replays.extend(Send(conn.id, message) for message in whole)
            elif start is None or missed is None:
                # Nothing to resume from, or history no longer reaches back:
                # start live, and say so if something may have been missed.
                resume_at, recovered = current, start is None
            else:
                # protocol.md 4.2/5.3: the welcome carries the current position;
                # a client that presented one keeps its own and the replay
                # fills the difference. For a stream it did not present (say a
                # room joined while it was away) it starts at the welcome's
                # position, so that is where the replay starts.
                resume_at, recovered = (current if own is not None else start), True
                replays.extend(Send(conn.id, message) for message in missed)
            streams[wire] = {
                "offset": resume_at.offset,
                "epoch": resume_at.epoch,
                "recovered": recovered,
            }
            if wire != DIRECT:  # (its reader is ``session.conn``, see ``members``)
                self._member(conn, key)

        data_limits = self.options.data_limits
        welcome = Envelope(
            type=MessageType.WELCOME,
            id=self.new_id(),
            timestamp=now_ms,
            ref=hello.id,
            data={
                "session": session.id,
                "resume_token": token,
                "resumed": resumed,
                "streams": streams,
                "rooms": sorted(session.rooms),
                "denied": denied,
                "heartbeat": {
                    "interval": self.options.heartbeat_interval_ms,
                    "timeout": self.options.heartbeat_timeout_ms,
                },
                "limits": {
                    "max_message_size": self.options.max_message_size,
                    "max_pending": self.options.max_pending_acks,
                    "max_depth": data_limits.max_depth,
                    "max_values": data_limits.max_values,
                },
                "node": self.options.node,
                "extensions": {
                    name: dict(self.options.extensions[name]) for name in sorted(conn.extensions)
                },
            },
        )
        actions.append(Send(conn.id, welcome))
        actions.extend(replays)
        # Acked direct messages the client already has (but may not have
        # acknowledged) are re-sent: the client re-acks or ignores them.
        replayed = {a.envelope.offset for a in replays if a.envelope.stream == DIRECT}
        direct_epoch = self.store.position(direct_key(session.id)).epoch
        self._drop_stale_pending(session, direct_epoch, actions)
        for offset, pending in sorted(session.pending.items()):
            if offset not in replayed:
                pending.next_retry_ms = now_ms + self.options.ack_retry_ms
                actions.append(Send(conn.id, pending.envelope))
        actions.append(SessionOpened(conn.id, session.id, resumed))
        return actions

    def _new_session(
        self, user: str | None, claims: Mapping[str, Any], now_ms: int
    ) -> tuple[Session, str]:
        """A new session and its resume token (only its hash is kept)."""
        token = self.new_resume_token()
        session = Session(self.new_session_id(), user, dict(claims), hash_resume_token(token))
        self.sessions[session.id] = session
        if user is not None:
            self.user_sessions.setdefault(user, set()).add(session.id)
        for key in (direct_key(session.id), BROADCAST):
            position = self.store.position(key)
            session.starts[key] = (position.offset, position.epoch)
        return session, token

    def _join_refusal(self, session: Session, room: str) -> ErrorCode | None:
        if len(session.rooms) >= self.options.max_rooms:
            return ErrorCode.QUEUE_FULL
        if not self.can_join(session, room):
            return ErrorCode.FORBIDDEN
        return None

    def _add_room(self, session: Session, room: str) -> Position:
        key = room_key(room)
        position = self.store.position(key)
        session.rooms.add(room)
        session.starts[key] = (position.offset, position.epoch)
        self.room_sessions.setdefault(room, set()).add(session.id)
        return position

    # ------------------------------------------------------------ client messages

    def _inbound_message(
        self, conn: Connection, session: Session, envelope: Envelope, now_ms: int
    ) -> list[Action]:
        answered = self.check_message(conn, session, envelope, now_ms)
        if answered is not None:
            return answered
        if envelope.type is MessageType.EVENT and envelope.room is not None:
            return self._publish_from_client(session, envelope, now_ms)
        return [Dispatch(conn.id, session.id, envelope)]

    def check_message(
        self, conn: Connection, session: Session, envelope: Envelope, now_ms: int
    ) -> list[Action] | None:
        """What ``receive`` answers a client event or call with before the
        application sees it: a retry's recorded reply, an error for a stream
        position or a passed deadline. None: it goes on to the application
        (``receive`` returns its ``Dispatch`` or ``Publish``), and a tracked
        one is recorded as being handled. The server's hot path calls this
        and runs the handler itself."""
        if envelope.stream is not None:
            return self._reject(
                conn,
                envelope,
                now_ms,
                ErrorCode.BAD_ENVELOPE,
                "client events carry no stream position",
            )
        tracked = envelope.ack or envelope.type is MessageType.CALL
        key: DedupKey = (session.principal, envelope.id)
        if tracked:
            record = self.dedup.lookup(key, now_ms)
            if record is not None:
                self.duplicates_seen += 1
                # A retry: answer as the first time, never handle twice. This
                # comes before the TTL check: a retry of a message handled
                # in time must get its recorded reply, not 4302 (protocol.md 6).
                return [] if record.reply is None else [Send(conn.id, record.reply)]
        if envelope.overdue(now_ms):
            return self._reject(conn, envelope, now_ms, ErrorCode.EXPIRED, "ttl or deadline passed")
        if tracked:
            self.dedup.begin(key, now_ms)
        return None

    def _publish_from_client(
        self, session: Session, envelope: Envelope, now_ms: int
    ) -> list[Action]:
        room = envelope.room or ""
        if not self.can_publish(session, room, envelope):
            return self.settle(
                session.id,
                envelope,
                now_ms,
                error=(ErrorCode.FORBIDDEN, f"may not publish to {room!r}"),
            )
        template = Envelope(
            type=MessageType.EVENT,
            id=self.new_id(),
            timestamp=now_ms,
            event=envelope.event or "message",
            data=envelope.data,
            ttl=envelope.ttl,
            # The stream event continues the sender's trace (protocol.md "Trace context").
            trace=envelope.trace,
        )
        conn_id = session.conn if session.conn is not None else -1
        return [Publish(room_key(room), template, Dispatch(conn_id, session.id, envelope))]

    def _reject(
        self, conn: Connection, envelope: Envelope, now_ms: int, code: ErrorCode, message: str
    ) -> list[Action]:
        return [Send(conn.id, self._error(now_ms, code, message, envelope.id))]

    def settle(
        self,
        session_id: str,
        envelope: Envelope,
        now_ms: int,
        *,
        result: Any = None,
        error: tuple[ErrorCode | int, str] | None = None,
    ) -> list[Action]:
        """The application finished with a dispatched envelope: answer it.

        The answer goes to the session's *current* connection, which may be a
        newer one than the message arrived on.
        """
        answer = self.answer(session_id, envelope, now_ms, result=result, error=error)
        return [] if answer is None else [Send(*answer)]

    def answer(
        self,
        session_id: str,
        envelope: Envelope,
        now_ms: int,
        *,
        result: Any = None,
        error: tuple[ErrorCode | int, str] | None = None,
    ) -> tuple[ConnId, Envelope] | None:
        """``settle``, returning the reply and the connection it goes to
        (None: nothing to send) rather than a ``Send`` action."""
        reply: Envelope | None
        if error is not None:
            reply = self._error(now_ms, error[0], error[1], envelope.id)
        elif envelope.type is MessageType.CALL:
            reply = result_envelope(self.new_id(), now_ms, envelope.id, result)
        elif envelope.ack or envelope.type is MessageType.AUTH:
            reply = ack_envelope(self.new_id(), now_ms, envelope.id)
        else:
            reply = None
        session = self.sessions.get(session_id)
        if envelope.ack or envelope.type is MessageType.CALL:
            principal = session.principal if session is not None else None
            if principal is not None and reply is not None:
                self.dedup.settle((principal, envelope.id), reply)
                if self.on_settle is not None:
                    self.on_settle((principal, envelope.id), reply)
        if reply is None or session is None or session.conn is None:
            return None
        return session.conn, reply

    def remote_ack(
        self, session_id: str, epoch: str | None, through: int | None, ref: str | None
    ) -> list[Action]:
        """A client acknowledged on another node (its session moved there):
        settle what this node still tracks for it. ``through``: every pending
        message of ``epoch`` up to that offset; ``ref``: the one with that id."""
        session = self.sessions.get(session_id)
        if session is None or not session.pending:
            return []
        done = [
            offset
            for offset, pending in session.pending.items()
            if (ref is not None and pending.envelope.id == ref)
            or (through is not None and offset <= through and pending.envelope.epoch == epoch)
        ]
        actions: list[Action] = []
        for offset in done:
            acked = session.pending.pop(offset)
            actions.append(AckResult(session.id, offset, None, acked.envelope.epoch))
        if not session.pending:
            self._with_pending.discard(session.id)
        return actions

    def _client_ack(self, session: Session, envelope: Envelope) -> list[Action]:
        pending = session.pending
        if envelope.ref is not None:
            early = session.early_acks
            if early is None:
                early = session.early_acks = OrderedDict()
            early[envelope.ref] = None
            while len(early) > self.options.max_pending_acks:
                early.popitem(last=False)
        elif envelope.stream == DIRECT and envelope.offset is not None:
            session.acked_through = max(session.acked_through, envelope.offset)
        if not pending:
            return []
        if envelope.ref is not None:
            done = [o for o, p in pending.items() if p.envelope.id == envelope.ref]
        elif envelope.stream == DIRECT and envelope.offset is not None:
            done = [o for o in pending if o <= envelope.offset]
        else:
            done = []
        actions: list[Action] = []
        for offset in done:
            acked = pending.pop(offset)
            actions.append(AckResult(session.id, offset, None, acked.envelope.epoch))
        if not pending:
            self._with_pending.discard(session.id)
        return actions

    def _client_nack(self, session: Session, envelope: Envelope) -> list[Action]:
        """A client refused an acked event it could not open or verify (code
        4600-4619, ``ref`` its id): the send fails with that code at once."""
        value = envelope.code
        if envelope.ref is None or value is None or not 4600 <= value <= 4619:
            return []
        if value not in ErrorCode._value2member_map_:
            return []
        code = ErrorCode(value)
        pending = session.pending
        for offset, waiting in list(pending.items()):
            if waiting.envelope.id == envelope.ref:
                del pending[offset]
                if not pending:
                    self._with_pending.discard(session.id)
                return [AckResult(session.id, offset, code, waiting.envelope.epoch)]
        return []

    def _subscribe(
        self, conn: Connection, session: Session, envelope: Envelope, now_ms: int
    ) -> list[Action]:
        room = envelope.room or ""
        key = room_key(room)
        if room not in session.rooms:
            code = self._join_refusal(session, room)
            if code is not None:
                return self._reject(conn, envelope, now_ms, code, f"may not join {room!r}")
            self._add_room(session, room)
        self._member(conn, key)
        current = self.store.position(key)
        resume_at, recovered, missed = current, True, []
        if envelope.offset is not None and envelope.epoch is not None:
            start = Position(envelope.offset, envelope.epoch)
            found = self.store.read_after(key, start, now_ms)
            if found is None:
                recovered = False
            else:
                # As in the welcome (5.3): the answer carries the current
                # position, the client keeps its own and the replay follows.
                missed = found
        reply = ack_envelope(
            self.new_id(),
            now_ms,
            envelope.id,
            {
                "stream": key,
                "offset": resume_at.offset,
                "epoch": resume_at.epoch,
                "recovered": recovered,
            },
        )
        return [Send(conn.id, reply), *(Send(conn.id, m) for m in missed)]

    # ------------------------------------------------------------ server API

    def deliver(self, key: str, stored: Envelope) -> list[Action]:
        """A stream message (from this node or the cluster) reached this node."""
        members = self.members.get(key)
        if members:
            return [Fanout(tuple(members), stored)]
        reader = self._direct_reader(key)
        return [] if reader is None else [Fanout((reader,), stored)]

    def _direct_reader(self, key: str) -> ConnId | None:
        """The connection reading a session's own stream here, if any."""
        if not key.startswith(DIRECT_PREFIX):
            return None
        session = self.sessions.get(key[len(DIRECT_PREFIX) :])
        return None if session is None else session.conn

    def is_read_here(self, key: str) -> bool:
        """Whether a connection of this node reads the stream ``key``."""
        return key in self.members or self._direct_reader(key) is not None

    def check_send(self, session_id: str, ack: bool) -> None:
        """Raise if a direct send to this session cannot be taken (before its append)."""
        session = self.sessions.get(session_id)
        if session is None:
            raise UnknownSessionError(session_id)
        if ack and len(session.pending) >= self.options.max_pending_acks:
            raise QueueFullError(f"session {session_id} has {len(session.pending)} pending acks")

    def track_ack(
        self, session_id: str, stored: Envelope, now_ms: int, timeout_ms: int | None = None
    ) -> list[Action]:
        """Wait for the client's ack of an appended direct message.

        An ack that came first (by id, or cumulatively by offset) settles it
        at once; so does a session that is gone (as a timeout).
        """
        assert stored.offset is not None
        session = self.sessions.get(session_id)
        if session is None:
            return [AckResult(session_id, stored.offset, ErrorCode.TIMEOUT, stored.epoch)]
        actions: list[Action] = []
        self._drop_stale_pending(session, stored.epoch, actions)
        early = session.early_acks
        if (early is not None and stored.id in early) or stored.offset <= session.acked_through:
            if early is not None:
                early.pop(stored.id, None)
            return [*actions, AckResult(session_id, stored.offset, None, stored.epoch)]
        timeout = timeout_ms if timeout_ms is not None else self.options.ack_timeout_ms
        session.pending[stored.offset] = PendingAck(
            stored, now_ms + timeout, now_ms + self.options.ack_retry_ms
        )
        self._with_pending.add(session_id)
        return actions

    def _drop_stale_pending(
        self, session: Session, epoch: str | None, actions: list[Action]
    ) -> None:
        """Fail pending acks of a ``direct`` epoch that is gone (its history was lost).

        Their offsets mean nothing in the new epoch: re-sending them would take
        the client back to a dead epoch, and a new message may reuse the offset.
        """
        for offset, pending in list(session.pending.items()):
            if pending.envelope.epoch != epoch:
                del session.pending[offset]
                actions.append(
                    AckResult(session.id, offset, ErrorCode.UNAVAILABLE, pending.envelope.epoch)
                )
        if not session.pending:
            session.acked_through = 0
            self._with_pending.discard(session.id)

    def set_identity(self, conn_id: ConnId, user: str | None, claims: Mapping[str, Any]) -> bool:
        """The principal a connection authenticated as (a token in its hello),
        before the hello opens or resumes a session. False if it is gone."""
        conn = self.connections.get(conn_id)
        if conn is None:
            return False
        conn.user = user
        conn.claims = dict(claims)
        return True

    def set_claims(self, session_id: str, user: str | None, claims: Mapping[str, Any]) -> bool:
        """A session takes the claims of a newer token of its own user (a
        refresh, a resume). False, and nothing changes, for another user."""
        session = self.sessions.get(session_id)
        if session is None or session.user != user:
            return False
        session.claims = dict(claims)
        return True

    def adopt_session(
        self,
        session_id: str,
        user: str | None,
        claims: Mapping[str, Any],
        rooms: Iterable[str],
        starts: Mapping[str, Position],
        now_ms: int,
        resume_hash: str = "",
    ) -> Session:
        """Take over a session another node ran (loaded from the cluster's store).

        It starts detached: the ``hello`` that asked for it resumes it.
        """
        existing = self.sessions.get(session_id)
        if existing is not None:
            return existing
        kept = {key: (start.offset, start.epoch) for key, start in starts.items()}
        session = Session(session_id, user, dict(claims), resume_hash, kept)
        self.sessions[session_id] = session
        if user is not None:
            self.user_sessions.setdefault(user, set()).add(session_id)
        for room in rooms:
            session.rooms.add(room)
            self.room_sessions.setdefault(room, set()).add(session_id)
        self._detached[session_id] = now_ms
        return session

    def join(self, session_id: str, room: str, now_ms: int) -> list[Action]:
        """Put a session in a room from the server side, and tell its client."""
        session = self.sessions.get(session_id)
        if session is None:
            raise UnknownSessionError(session_id)
        if room in session.rooms:
            return []
        if len(session.rooms) >= self.options.max_rooms:
            # The same bound as a client's own joins (protocol.md 11).
            raise QueueFullError(f"session {session_id} is in {self.options.max_rooms} rooms")
        position = self._add_room(session, room)
        if session.conn is None:
            return []
        conn = self.connections[session.conn]
        self._member(conn, room_key(room))
        notice = Envelope(
            type=MessageType.SUBSCRIBE,
            id=self.new_id(),
            timestamp=now_ms,
            room=room,
            offset=position.offset,
            epoch=position.epoch,
        )
        return [Send(conn.id, notice)]

    def leave(self, session_id: str, room: str, now_ms: int | None = None) -> list[Action]:
        """Take a session out of a room; tells its client when ``now_ms`` is given."""
        session = self.sessions.get(session_id)
        if session is None or room not in session.rooms:
            return []
        session.rooms.discard(room)
        session.starts.pop(room_key(room), None)
        sessions = self.room_sessions.get(room)
        if sessions is not None:
            sessions.discard(session_id)
            if not sessions:
                del self.room_sessions[room]
        if session.conn is None:
            return []
        conn = self.connections[session.conn]
        self._not_member(conn, room_key(room))
        if now_ms is None:
            return []
        notice = Envelope(
            type=MessageType.UNSUBSCRIBE, id=self.new_id(), timestamp=now_ms, room=room
        )
        return [Send(conn.id, notice)]

    def sessions_of_user(self, user: str) -> set[str]:
        return set(self.user_sessions.get(user, ()))

    def connected(self) -> Iterable[ConnId]:
        return (c.id for c in self.connections.values() if c.session is not None)

    # ------------------------------------------------------------ time

    def tick(self, now_ms: int) -> list[Action]:
        """Housekeeping (retries, session expiry, dedup trim) and whatever
        connection timer is due (``run_timers``)."""
        actions = self.run_timers(now_ms)
        self._retry_pending(now_ms, actions)
        self._expire_sessions(now_ms, actions)
        self.dedup.trim(now_ms)
        return actions

    def heard(self, conn_id: ConnId, now_ms: int) -> None:
        """Bytes of any WebSocket frame arrived (ping and pong included): the
        peer is alive (section 9). Application traffic is counted separately."""
        conn = self.connections.get(conn_id)
        if conn is not None:
            conn.last_rx_ms = now_ms

    def next_timer_ms(self) -> int | None:
        """When ``run_timers`` next has something to do (None before its first run)."""
        due = self._next_heartbeat_ms
        if self._deadlines and (due is None or self._deadlines[0][0] < due):
            return self._deadlines[0][0]
        return due

    def run_timers(self, now_ms: int) -> list[Action]:
        """Connection timers, each exactly when due: the hello timeout (from
        the handshake), the heartbeat timeout (from the last frame received),
        the idle timeout (from the last application envelope), and the
        heartbeat, every ``heartbeat_interval_ms`` from the first run."""
        actions: list[Action] = []
        heap = self._deadlines
        while heap and heap[0][0] <= now_ms:
            _, conn_id, kind = heappop(heap)
            conn = self.connections.get(conn_id)
            if conn is None or conn.timed_out:
                continue
            if kind == _HELLO:
                if conn_id in self._awaiting_hello:
                    self._awaiting_hello.discard(conn_id)
                    self._time_out(conn, ErrorCode.HANDSHAKE_TIMEOUT, actions)
                continue
            if conn.session is None:
                continue  # replaced by a resume: it is being closed already
            if kind == _SILENT:
                due = conn.last_rx_ms + self.options.heartbeat_timeout_ms
                code = ErrorCode.HEARTBEAT_TIMEOUT
            else:
                due = conn.last_app_ms + (self.options.idle_timeout_ms or 0)
                code = ErrorCode.IDLE_TIMEOUT
            if due > now_ms:
                heappush(heap, (due, conn_id, kind))
            else:
                self._time_out(conn, code, actions)
        interval = self.options.heartbeat_interval_ms
        if self._next_heartbeat_ms is None:
            self._next_heartbeat_ms = now_ms + interval
        elif now_ms >= self._next_heartbeat_ms:
            # From the previous beat, not from now: the interval holds however
            # late the caller runs us (after a long stall: from now).
            self._next_heartbeat_ms += interval
            if self._next_heartbeat_ms <= now_ms:
                self._next_heartbeat_ms = now_ms + interval
            self._heartbeat(now_ms, actions)
        return actions

    def _schedule(self, due_ms: int, conn_id: ConnId, kind: int) -> None:
        heappush(self._deadlines, (due_ms, conn_id, kind))
        if self.on_deadline is not None and self._deadlines[0][0] == due_ms:
            self.on_deadline(due_ms)

    @staticmethod
    def _time_out(conn: Connection, code: ErrorCode, actions: list[Action]) -> None:
        conn.timed_out = True
        actions.append(Close(conn.id, code))

    def _heartbeat(self, now_ms: int, actions: list[Action]) -> None:
        live = [
            conn.id
            for conn in self.connections.values()
            if conn.session is not None and not conn.timed_out
        ]
        if live:
            # One heartbeat envelope for everyone: framed once.
            actions.append(Fanout(tuple(live), heartbeat_envelope(self.new_id(), now_ms)))

    def _retry_pending(self, now_ms: int, actions: list[Action]) -> None:
        for session_id in list(self._with_pending):
            session = self.sessions[session_id]
            if session.conn is not None:
                # Only while attached: a clustered store follows (mirrors) a
                # session's ``direct`` stream only while a local connection
                # reads it, and reading it otherwise would make up an epoch
                # and fail every pending ack as lost. A detached session's
                # acks are not re-sent anyway; its resume checks the epoch.
                epoch = self.store.position(direct_key(session_id)).epoch
                self._drop_stale_pending(session, epoch, actions)
            for offset, pending in list(session.pending.items()):
                if now_ms >= pending.deadline_ms:
                    del session.pending[offset]
                    actions.append(
                        AckResult(session_id, offset, ErrorCode.TIMEOUT, pending.envelope.epoch)
                    )
                elif now_ms >= pending.next_retry_ms and session.conn is not None:
                    pending.next_retry_ms = now_ms + self.options.ack_retry_ms
                    self.retries_sent += 1
                    actions.append(Send(session.conn, pending.envelope))
            if not session.pending:
                self._with_pending.discard(session_id)

    def _expire_sessions(self, now_ms: int, actions: list[Action]) -> None:
        ttl = self.options.session_ttl_ms
        while self._detached:
            session_id, since = next(iter(self._detached.items()))
            if now_ms - since < ttl:
                break
            del self._detached[session_id]
            self._drop_session(session_id, actions)

    def _drop_session(self, session_id: str, actions: list[Action]) -> None:
        # Leave the rooms while the session is still registered: ``leave``
        # ignores unknown sessions, which left them in ``room_sessions``.
        session = self.sessions[session_id]
        for room in list(session.rooms):
            self.leave(session_id, room)
        del self.sessions[session_id]
        if session.user is not None:
            owned = self.user_sessions.get(session.user)
            if owned is not None:
                owned.discard(session_id)
                if not owned:
                    del self.user_sessions[session.user]
        for offset, pending in sorted(session.pending.items()):
            actions.append(AckResult(session_id, offset, ErrorCode.TIMEOUT, pending.envelope.epoch))
        self._with_pending.discard(session_id)
        self.store.drop(direct_key(session_id))
        actions.append(SessionExpired(session_id))

    def _error(self, now_ms: int, code: ErrorCode | int, message: str, ref: str | None) -> Envelope:
        return error_envelope(self.new_id(), now_ms, code, message, ref)


MAX_EXTENSIONS = 32
# The chunked-transfer extension (warpsocket.transfer), the one whose envelope
# type the core routes.
TRANSFER_EXTENSION = "chunks"
MAX_EXTENSION_NAME = 64


def valid_extension_name(name: object) -> bool:
    """Extension names: 1-64 characters of ``a-z``, ``0-9``, ``-``, ``.``."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= MAX_EXTENSION_NAME
        and all(c in _EXTENSION_CHARS for c in name)
    )


_EXTENSION_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-.")


def _parse_extensions(data: Any) -> set[str]:
    """``hello.data.extensions`` (protocol.md 4.4): a list of names, or absent."""
    raw = data.get("extensions")
    if raw is None:
        return set()
    if not isinstance(raw, list) or len(raw) > MAX_EXTENSIONS:
        raise ProtocolError(
            ErrorCode.BAD_ENVELOPE,
            f"hello.data.extensions must be a list of at most {MAX_EXTENSIONS} names",
        )
    # Names this node does not know are ignored, but malformed ones are not.
    if not all(valid_extension_name(name) for name in raw):
        raise ProtocolError(ErrorCode.BAD_ENVELOPE, "bad extension name in hello.data.extensions")
    return set(raw)


def _parse_hello(
    data: Any, options: CoreOptions
) -> tuple[str | None, str | None, dict[str, Position], list[str]]:
    """Validate ``hello.data`` (protocol.md 4.1)."""

    def bad(message: str) -> ProtocolError:
        return ProtocolError(ErrorCode.BAD_ENVELOPE, message)

    session = data.get("session")
    if session is not None and not (isinstance(session, str) and 0 < len(session) <= 128):
        raise bad("hello.data.session must be a string or null")
    token = data.get("resume_token")
    if token is not None and not (isinstance(token, str) and 0 < len(token) <= 128):
        raise bad("hello.data.resume_token must be a string or null")
    # ``null`` is the same as absent (protocol.md 2); a wrong type is not.
    raw_streams = data.get("streams")
    if raw_streams is None:
        raw_streams = {}
    if not isinstance(raw_streams, dict) or len(raw_streams) > options.max_rooms + 2:
        raise bad("hello.data.streams must be an object of stream positions")
    streams: dict[str, Position] = {}
    for name, position in raw_streams.items():
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH + 5:
            raise bad("stream names must be strings")
        if not isinstance(position, dict):
            raise bad(f"position of {name!r} must be an object")
        offset, epoch = position.get("offset"), position.get("epoch")
        if (
            not isinstance(offset, int)
            or isinstance(offset, bool)
            or not 0 <= offset <= MAX_SAFE_INTEGER
            or not isinstance(epoch, str)
            or not 0 < len(epoch) <= MAX_EPOCH_LENGTH
        ):
            raise bad(f"position of {name!r} needs integer offset and string epoch")
        streams[name] = Position(offset, epoch)
    rooms = data.get("rooms")
    if rooms is None:
        rooms = []
    # Rooms beyond ``max_rooms`` are not an invalid hello: they are refused
    # one by one with 4206 in ``welcome.data.denied`` (protocol.md 4.2, 11).
    # The frame size limit already bounds the list.
    if not isinstance(rooms, list):
        raise bad("hello.data.rooms must be a list of room names")
    for room in rooms:
        if not isinstance(room, str) or not 0 < len(room) <= MAX_NAME_LENGTH:
            raise bad("room names must be strings of 1-256 characters")
    return session, token, streams, list(dict.fromkeys(rooms))
