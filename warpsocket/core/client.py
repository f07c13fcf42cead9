"""The client's reliability core, sans-I/O.

It owns what must survive a reconnect: the session id, the position on every
stream, the rooms, the offline queue and the messages awaiting an answer.
The Twisted client feeds it connection events and envelopes and performs
the actions it returns:

- ``Transmit``: write an envelope on the open connection;
- ``Deliver``: hand a stream event to the application;
- ``Outcome``: the final outcome of a message the application sent (once
  given, the message is gone from the core: it is never sent again);
- ``StreamLost``: a stream could not be recovered (``recovered: false``);
- ``Welcomed``: the handshake finished;
- ``RoomChanged``: a room was joined or left, or a join was refused;
- ``Reconnect``: drop this connection and resume on a new one.

The hello may also ride in the upgrade request (protocol.md 4.5): ``url_hello``
starts such a handshake and ``url_hello_query`` encodes its text for the URL.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from base64 import urlsafe_b64encode
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from warpsocket.core.history import Position
from warpsocket.core.keys import room_key
from warpsocket.core.messages import heartbeat_envelope
from warpsocket.protocol.codecs import JsonCodec
from warpsocket.protocol.codes import ErrorCode
from warpsocket.protocol.datamodel import DEFAULT_LIMITS, DataLimits, check_value
from warpsocket.protocol.envelope import Envelope, MessageType
from warpsocket.protocol.tracecontext import TraceContext

# protocol.md 4.5: the most JSON text (in bytes) a hello may carry in the URL.
URL_HELLO_MAX_BYTES = 2048
# The parameter of the WebSocket URL that carries it.
URL_HELLO_PARAMETER = "hello"
_JSON = JsonCodec()


def url_hello_query(text: str) -> str:
    """The query parameter that carries a hello's JSON text (protocol.md 4.5):
    ``hello=`` and the text's UTF-8 bytes in base64url, without padding (an
    alphabet no URL escapes)."""
    encoded = urlsafe_b64encode(text.encode("utf-8")).rstrip(b"=").decode("ascii")
    return f"{URL_HELLO_PARAMETER}={encoded}"


class QueuePolicy(str, enum.Enum):
    """What ``send`` does when the offline queue is full."""

    REJECT_NEW = "reject_new"  # the new message fails with queue_full
    DROP_OLDEST = "drop_oldest"  # the oldest queued message fails with queue_full


@dataclass(frozen=True)
class ClientCoreOptions:
    """The client's reliability bounds (``ClientOptions.core``).

    - ``max_queue`` and ``queue_policy``: how many messages wait for an
      answer or for a connection (the offline queue), and what ``send`` does
      past that (``QueuePolicy``).
    - ``ack_deadline_ms``: a message with no final answer by then ends as
      ``Status.EXPIRED``.
    - ``retry_initial_ms`` / ``retry_max_ms``: an unanswered acknowledged
      message is re-sent after ``retry_initial_ms``, then at doubling
      intervals up to ``retry_max_ms`` (same id: the server deduplicates it).
    - ``max_remembered_acks``: how many acknowledged server events are
      remembered, so that one the server re-sends is acknowledged again
      rather than delivered twice.
    - ``extensions``: names of the optional protocol extensions to ask the
      server for in every hello (protocol.md 4.4); ``ClientCore.extensions``
      holds the ones the last welcome granted, with their parameters.
    """

    max_queue: int = 10_000
    queue_policy: QueuePolicy = QueuePolicy.REJECT_NEW
    ack_deadline_ms: int = 60_000
    retry_initial_ms: int = 5_000
    retry_max_ms: int = 30_000
    max_remembered_acks: int = 10_000
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_queue < 1 or self.ack_deadline_ms <= 0 or self.retry_initial_ms <= 0:
            raise ValueError("queue size, deadline and retry interval must be positive")
        if self.retry_max_ms < self.retry_initial_ms:
            raise ValueError("retry_max_ms must be >= retry_initial_ms")


class Status(str, enum.Enum):
    """The final outcome of a message the application sent (``Outcome.status``).

    ``ACKED``: the server accepted an event; ``RESULT``: a call was answered;
    ``REJECTED``: refused with an error code; ``EXPIRED``: its deadline or
    ``ttl`` passed first.
    """

    ACKED = "acked"
    RESULT = "result"
    REJECTED = "rejected"
    EXPIRED = "expired"
    FAILED = "failed"  # the client gave the message up (closed, or stopped reconnecting)


# ---------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Transmit:
    envelope: Envelope


@dataclass(frozen=True, slots=True)
class Deliver:
    envelope: Envelope


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a sent message ended: its ``id``, ``status`` (``Status``), the
    call's result or the ack's ``data``, and for a refusal the error ``code``
    and ``message``. The client turns a refusal into a ``DeliveryError``."""

    id: str
    status: Status
    data: Any = None
    code: int | None = None
    message: str = ""
    # How many copies left the client: 0 means the server never saw it.
    attempts: int = field(default=0, compare=False)

    @property
    def sent(self) -> bool:
        return self.attempts > 0


@dataclass(frozen=True, slots=True)
class StreamLost:
    stream: str
    reason: str


@dataclass(frozen=True, slots=True)
class Welcomed:
    session: str
    resumed: bool
    data: dict[str, Any]
    lost: tuple[str, ...] = ()  # streams not recovered by this handshake


@dataclass(frozen=True, slots=True)
class RoomChanged:
    room: str
    joined: bool
    code: int | None = None


@dataclass(frozen=True, slots=True)
class Reconnect:
    code: ErrorCode
    reason: str


ClientAction = Transmit | Deliver | Outcome | StreamLost | Welcomed | RoomChanged | Reconnect


@dataclass(eq=False)
class Outgoing:
    envelope: Envelope
    priority: int
    seq: int
    tracked: bool  # expects an answer (ack requested, or a call)
    deadline_ms: int | None
    # When no copy may be handled any more (client clock): the earlier of the
    # deadline and the end of the application's ttl. Every copy carries it as
    # its ``deadline``, so a copy held up in the network is refused by the
    # server (4302) instead of being handled after the outcome was reported.
    expires_ms: int | None = None
    attempts: int = 0
    next_retry_ms: int | None = None
    queued: bool = field(default=True)

    def sort_key(self) -> tuple[int, int]:
        return (-self.priority, self.seq)


class ClientCore:
    """The client's reliability state machine, sans-I/O (the module docstring
    lists the actions it returns).

    It owns what survives a reconnect: the session and its resume token, the
    position on every stream, the rooms, the offline queue and the messages
    awaiting an answer. ``WarpSocketClient`` feeds it connection events and
    envelopes with ``now_ms`` and performs what it returns; a port of the
    client to another language implements the same machine (protocol.md).
    """

    def __init__(self, options: ClientCoreOptions, new_id: Callable[[], str]) -> None:
        self.options = options
        self.new_id = new_id
        self.session: str | None = None
        # The server's data model bounds (from the welcome; defaults until then).
        self.data_limits = DEFAULT_LIMITS
        # The bearer secret that resumes ``session`` (protocol.md 4.3).
        self.resume_token: str | None = None
        self.positions: dict[str, Position] = {}
        self.rooms: set[str] = set()
        self.open = False
        self._seq = itertools.count()
        self._queue: list[tuple[tuple[int, int], Outgoing]] = []  # heap
        self._queued: dict[str, Outgoing] = {}
        self._inflight: dict[str, Outgoing] = {}
        self._subscribing: dict[str, str] = {}  # subscribe id -> room
        self._hello_id: str | None = None
        self._hello_ms = 0
        # The rooms the pending hello asked for: one joined or left after it
        # was built (a URL hello leaves before the first subscribe) is asked
        # for at the welcome.
        self._hello_rooms: frozenset[str] = frozenset()
        # The id of the hello that went in the upgrade request (protocol.md
        # 4.5) while it awaits its answer; ``_url_hello_open``: and the
        # WebSocket opened (``connected``) since.
        self._url_hello_id: str | None = None
        self._url_hello_open = False
        # This server ignored a hello in the URL (an older server): every
        # later hello is a frame.
        self.url_hello_refused = False
        self._acked: OrderedDict[str, None] = OrderedDict()
        # A lower bound of (server clock - client clock) in ms on the current
        # connection, from envelopes this server stamped; None until welcomed.
        self.clock_offset_ms: int | None = None
        self.rtt_ms: int | None = None  # hello to welcome, the last handshake
        # Extensions the last welcome granted: name -> the server's parameters.
        self.extensions: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------ introspection

    @property
    def queue_length(self) -> int:
        return len(self._queued)

    @property
    def inflight_count(self) -> int:
        return len(self._inflight)

    # ------------------------------------------------------------ connection

    def hello(self, now_ms: int, token: str | None = None) -> Envelope:
        """Start a handshake: the next hello envelope (protocol.md 4.1).

        Until its welcome the connection is not open; only the answer to
        this hello (``ref`` = its id) opens it. ``connected`` sends it as a
        frame; ``url_hello`` makes one for the upgrade request.
        """
        self.open = False
        self._hello_id = self.new_id()
        self._hello_ms = now_ms
        self._hello_rooms = frozenset(self.rooms)
        self._url_hello_id = None
        self._url_hello_open = False
        self.clock_offset_ms = None
        data: dict[str, Any] = {
            "session": self.session,
            "streams": {
                name: {"offset": p.offset, "epoch": p.epoch} for name, p in self.positions.items()
            },
            "rooms": sorted(self.rooms),
        }
        if self.session is not None and self.resume_token is not None:
            data["resume_token"] = self.resume_token
        if token is not None:
            data["token"] = token
        if self.options.extensions:
            data["extensions"] = list(self.options.extensions)
        return Envelope(type=MessageType.HELLO, id=self._hello_id, timestamp=now_ms, data=data)

    def url_hello(self, now_ms: int) -> str | None:
        """Start a handshake whose hello rides in the upgrade request (protocol.md 4.5).

        Called just before the upgrade request is written. Returns the
        hello's JSON text (the JSON codec's encoding, whatever the
        connection's codec) for the URL's ``hello`` parameter
        (``url_hello_query``), or None when this hello must be a frame: it
        presents a session (a resume carries credentials, which URLs must
        not), it is over ``URL_HELLO_MAX_BYTES``, or this server ignored a URL
        hello before (``url_hello_refused``). A hello that brings a token is
        a frame too: the caller, which has the token, does not ask.

        After it, ``connected`` transmits nothing: the server answers this
        hello with the welcome, or with an error after which ``receive``
        transmits the hello as a frame.
        """
        if self.url_hello_refused or self.session is not None:
            return None
        hello = self.hello(now_ms)
        data = hello.data
        assert isinstance(data, dict) and "token" not in data and "resume_token" not in data
        text = _JSON.encode(hello)
        if len(text) > URL_HELLO_MAX_BYTES:
            return None  # ``connected`` starts the handshake again, with a frame
        self._url_hello_id = hello.id
        return text.decode("utf-8")

    def connected(self, now_ms: int, token: str | None = None) -> list[ClientAction]:
        """The WebSocket is open: say hello.

        Unless the upgrade request carried the hello (``url_hello``): then
        nothing is sent until its answer arrives (and ``token`` is unused).
        """
        if self._url_hello_id is not None and self._url_hello_id == self._hello_id:
            self._url_hello_open = True
            return []
        return [Transmit(self.hello(now_ms, token))]

    def disconnected(
        self, now_ms: int, code: int | None = None, *, timed_out: bool = False
    ) -> list[ClientAction]:
        """The connection is gone: whatever awaited an answer goes back in the queue.

        ``code``: its close code, if any; ``timed_out``: the caller gave up
        waiting for an answer. A hello that went in the URL and was not
        answered, on a WebSocket closed with ``4205 handshake_timeout`` (the
        server waited for a hello frame) or that opened and then timed out
        (the caller's own handshake timeout came first), tells an older
        server, which ignores the URL's hello (protocol.md 4.5): from then
        on every hello is a frame (``url_hello_refused``).
        """
        if self._url_hello_id is not None and (
            code == ErrorCode.HANDSHAKE_TIMEOUT or (timed_out and self._url_hello_open)
        ):
            self.url_hello_refused = True
        self._url_hello_id = None
        self._url_hello_open = False
        self.open = False
        self._hello_id = None
        self._subscribing.clear()
        for outgoing in self._inflight.values():
            outgoing.next_retry_ms = None
            self._enqueue(outgoing)
        self._inflight.clear()
        return self.tick(now_ms)

    # ------------------------------------------------------------ sending

    def send(
        self,
        event: str,
        data: Any,
        now_ms: int,
        *,
        ack: bool = False,
        room: str | None = None,
        ttl: int | None = None,
        priority: int = 0,
        deadline_ms: int | None = None,
        trace: TraceContext | None = None,
    ) -> tuple[str, list[ClientAction]]:
        envelope = Envelope(
            type=MessageType.EVENT,
            id=self.new_id(),
            timestamp=now_ms,
            event=event,
            data=data,
            room=room,
            ttl=ttl,
            ack=ack,
            trace=trace,
        )
        return envelope.id, self._submit(envelope, ack, priority, deadline_ms, now_ms)

    def call(
        self,
        method: str,
        data: Any,
        now_ms: int,
        *,
        timeout_ms: int | None = None,
        priority: int = 0,
        trace: TraceContext | None = None,
    ) -> tuple[str, list[ClientAction]]:
        envelope = Envelope(
            type=MessageType.CALL,
            id=self.new_id(),
            timestamp=now_ms,
            event=method,
            data=data,
            trace=trace,
        )
        return envelope.id, self._submit(envelope, True, priority, timeout_ms, now_ms)

    def _submit(
        self,
        envelope: Envelope,
        tracked: bool,
        priority: int,
        deadline_ms: int | None,
        now_ms: int,
    ) -> list[ClientAction]:
        if envelope.data is not None:
            # Refused here, not by the server later (protocol.md 2.1): raises
            # DataModelError naming the offending value.
            check_value(envelope.data, self.data_limits)
        deadline = None
        if tracked:
            deadline = now_ms + (
                deadline_ms if deadline_ms is not None else self.options.ack_deadline_ms
            )
        outgoing = Outgoing(
            envelope, priority, next(self._seq), tracked, deadline, _expiry_of(envelope, deadline)
        )
        actions: list[ClientAction] = []
        if len(self._queued) >= self.options.max_queue:
            if self.options.queue_policy is QueuePolicy.REJECT_NEW:
                return [self._failed(outgoing, ErrorCode.QUEUE_FULL, "offline queue is full")]
            # The oldest by submission order, whatever its priority (sort_key
            # would pick the *most urgent* message instead).
            oldest = min(self._queued.values(), key=lambda o: o.seq)
            self._queued.pop(oldest.envelope.id)
            oldest.queued = False
            actions.append(self._failed(oldest, ErrorCode.QUEUE_FULL, "dropped: queue full"))
        self._enqueue(outgoing)
        if self.open:
            actions.extend(self._flush(now_ms))
        return actions

    def _enqueue(self, outgoing: Outgoing) -> None:
        outgoing.queued = True
        self._queued[outgoing.envelope.id] = outgoing
        heapq.heappush(self._queue, (outgoing.sort_key(), outgoing))

    def _flush(self, now_ms: int) -> list[ClientAction]:
        actions: list[ClientAction] = []
        while self._queue:
            _, outgoing = heapq.heappop(self._queue)
            if not outgoing.queued:
                continue  # dropped or expired while queued
            outgoing.queued = False
            self._queued.pop(outgoing.envelope.id, None)
            # Check the deadline too, not only the TTL: a reconnect can come
            # before the tick that expires it, and a message must not be
            # (re)sent past its deadline (protocol.md 6: no retry past the
            # dedup age; the deadline is how the client keeps that promise).
            failure = self._expiry(outgoing, now_ms)
            if failure is not None:
                actions.append(failure)
                continue
            actions.append(self._transmit(outgoing, now_ms))
        return actions

    def _transmit(self, outgoing: Outgoing, now_ms: int) -> Transmit:
        outgoing.attempts += 1
        if outgoing.tracked:
            self._inflight[outgoing.envelope.id] = outgoing
            outgoing.next_retry_ms = now_ms + self._retry_delay(outgoing.attempts)
        return Transmit(self._copy(outgoing, now_ms))

    def _copy(self, outgoing: Outgoing, now_ms: int) -> Envelope:
        """The envelope as sent now: stamped so that the server refuses it past its expiry.

        The server tests ``timestamp + deadline`` against its own clock, so
        the timestamp is this moment on a lower bound of the server's clock
        and the deadline what is left: whatever the clocks' difference, no
        copy is handled after the moment the client reports the message
        expired.
        """
        envelope = outgoing.envelope
        if outgoing.expires_ms is None:
            return envelope
        offset = self.clock_offset_ms if self.clock_offset_ms is not None else 0
        # The expiry goes out as the deadline: it bounds handling only, never
        # the life of a room event the message becomes (protocol.md 2). The
        # application's own ttl keeps its end, measured from the new stamp.
        changes: dict[str, int] = {
            "timestamp": max(0, now_ms + offset),
            "deadline": max(1, outgoing.expires_ms - now_ms),
        }
        if envelope.ttl is not None:
            changes["ttl"] = max(1, envelope.timestamp + envelope.ttl - now_ms)
        return envelope.evolve(**changes)

    def _retry_delay(self, attempts: int) -> int:
        delay = self.options.retry_initial_ms * 2 ** min(attempts - 1, 16)
        return int(min(delay, self.options.retry_max_ms))

    def _failed(self, outgoing: Outgoing, code: ErrorCode, message: str) -> Outcome:
        status = (
            Status.EXPIRED if code in (ErrorCode.EXPIRED, ErrorCode.TIMEOUT) else (Status.REJECTED)
        )
        return Outcome(outgoing.envelope.id, status, None, int(code), message, outgoing.attempts)

    def abandon(self, message: str) -> list[ClientAction]:
        """Give up every queued and in-flight message (the client closes or gives up).

        Each gets a ``FAILED`` outcome and leaves the core, so that no later
        connection sends it: the outcome stays true.
        """
        pending = sorted([*self._queued.values(), *self._inflight.values()], key=lambda o: o.seq)
        self._queue.clear()
        self._queued.clear()
        self._inflight.clear()
        actions: list[ClientAction] = []
        for outgoing in pending:
            outgoing.queued = False
            actions.append(
                Outcome(outgoing.envelope.id, Status.FAILED, None, None, message, outgoing.attempts)
            )
        return actions

    # ------------------------------------------------------------ rooms and acks

    def subscribe(self, room: str, now_ms: int) -> list[ClientAction]:
        self.rooms.add(room)
        if not self.open:
            return []  # the next hello asks for it
        position = self.positions.get(room_key(room))
        envelope = Envelope(
            type=MessageType.SUBSCRIBE,
            id=self.new_id(),
            timestamp=now_ms,
            room=room,
            offset=position.offset if position else None,
            epoch=position.epoch if position else None,
        )
        self._subscribing[envelope.id] = room
        return [Transmit(envelope)]

    def unsubscribe(self, room: str, now_ms: int) -> list[ClientAction]:
        self.rooms.discard(room)
        self.positions.pop(room_key(room), None)
        if not self.open:
            return []
        envelope = Envelope(
            type=MessageType.UNSUBSCRIBE, id=self.new_id(), timestamp=now_ms, room=room
        )
        return [Transmit(envelope)]

    def acknowledge(self, event: Envelope, now_ms: int) -> list[ClientAction]:
        """The application processed an ``ack: true`` event: acknowledge it."""
        self._remember_ack(event.id)
        if not self.open:
            return []  # the server re-sends it on resume and we ack the duplicate
        return [Transmit(self._ack_for(event, now_ms))]

    def _ack_for(self, event: Envelope, now_ms: int) -> Envelope:
        return Envelope(type=MessageType.ACK, id=self.new_id(), timestamp=now_ms, ref=event.id)

    def _remember_ack(self, ident: str) -> None:
        self._acked[ident] = None
        while len(self._acked) > self.options.max_remembered_acks:
            self._acked.popitem(last=False)

    # ------------------------------------------------------------ receiving

    def receive(self, envelope: Envelope, now_ms: int) -> list[ClientAction]:
        kind = envelope.type
        if kind is MessageType.EVENT:
            return self._event(envelope, now_ms)
        if kind is MessageType.WELCOME:
            return self._welcome(envelope, now_ms)
        if kind is MessageType.ACK or kind is MessageType.RESULT or kind is MessageType.ERROR:
            return self._answer(envelope, now_ms)
        if kind is MessageType.HEARTBEAT:
            self.observe_clock(envelope, now_ms)
            if envelope.ref is None:
                return [Transmit(heartbeat_envelope(self.new_id(), now_ms, envelope.id))]
            return []
        if kind is MessageType.SUBSCRIBE and envelope.room is not None:
            key = room_key(envelope.room)
            if envelope.offset is not None and envelope.epoch is not None:
                self.positions.setdefault(key, Position(envelope.offset, envelope.epoch))
            self.rooms.add(envelope.room)
            return [RoomChanged(envelope.room, True)]
        if kind is MessageType.UNSUBSCRIBE and envelope.room is not None:
            self.rooms.discard(envelope.room)
            self.positions.pop(room_key(envelope.room), None)
            return [RoomChanged(envelope.room, False)]
        return []

    def observe_clock(self, envelope: Envelope, now_ms: int) -> None:
        """Tighten the lower bound of the server's clock from an envelope it stamped.

        Only envelopes the connected node makes itself (welcome, heartbeats):
        an event may come from another node with another clock.
        """
        bound = envelope.timestamp - now_ms - 1  # both sides round down to ms
        if self.clock_offset_ms is None or bound > self.clock_offset_ms:
            self.clock_offset_ms = bound

    def _welcome(self, welcome: Envelope, now_ms: int) -> list[ClientAction]:
        if welcome.ref is None or welcome.ref != self._hello_id:
            return []
        data = welcome.data
        if not isinstance(data, dict) or not isinstance(data.get("session"), str):
            return []  # not a welcome we can use; the handshake times out
        # A hello is answered once: a repeated (or stale) welcome must not
        # reset the positions that events have advanced since.
        self._hello_id = self._url_hello_id = None
        self.rtt_ms = max(0, now_ms - self._hello_ms)
        self.observe_clock(welcome, now_ms)
        actions: list[ClientAction] = []
        lost: list[str] = []
        self.session = data["session"]
        self.data_limits = _data_limits(data.get("limits"), self.data_limits)
        token = data.get("resume_token")
        self.resume_token = token if isinstance(token, str) else None
        self.extensions = _granted_extensions(data.get("extensions"), self.options.extensions)
        streams: dict[str, Any] = data.get("streams", {})
        streams = streams if isinstance(streams, dict) else {}  # hostile until checked
        for name, info in streams.items():
            if not _valid_position(info):
                continue
            if not info.get("recovered", True):
                lost.append(name)
                actions.append(StreamLost(name, "not recovered on resume"))
            self._adopt(name, info)
        rooms = data.get("rooms")
        joined = {r for r in rooms if isinstance(r, str)} if isinstance(rooms, list) else set()
        denied = data.get("denied")
        asked = self._hello_rooms
        late = sorted(room for room in self.rooms if room not in asked and room not in joined)
        left = sorted(room for room in asked if room not in self.rooms and room in joined)
        joined.difference_update(left)
        for room in self.rooms - joined - set(late):
            self.positions.pop(room_key(room), None)
            code = denied.get(room) if isinstance(denied, dict) else None
            code = code if type(code) is int else None
            actions.append(RoomChanged(room, False, code))
        self.rooms = joined
        self.open = True
        actions.append(Welcomed(str(self.session), data.get("resumed") is True, data, tuple(lost)))
        for room in late:
            actions.extend(self.subscribe(room, now_ms))
        for room in left:
            actions.extend(self.unsubscribe(room, now_ms))
        actions.extend(self._flush(now_ms))
        return actions

    def _event(self, event: Envelope, now_ms: int) -> list[ClientAction]:
        stream, offset, epoch = event.stream, event.offset, event.epoch
        if stream is None or offset is None or epoch is None:
            return []  # not a stream event: servers never send these
        actions: list[ClientAction] = []
        known = self.positions.get(stream)
        if known is None:
            known = Position(offset - 1, epoch)
        elif known.epoch != epoch:
            actions.append(StreamLost(stream, "epoch changed"))
            known = Position(offset - 1, epoch)
        if offset <= known.offset:
            if event.ack and event.id in self._acked:
                actions.append(Transmit(self._ack_for(event, now_ms)))
            return actions
        if offset > known.offset + 1:
            self.positions[stream] = known
            actions.append(
                Reconnect(
                    ErrorCode.STREAM_GAP, f"{stream}: expected {known.offset + 1}, got {offset}"
                )
            )
            return actions
        self.positions[stream] = Position(offset, epoch)
        if event.code is None:
            actions.append(Deliver(event))
        elif event.code != ErrorCode.EXPIRED:
            # A placeholder for a message the server could not encode for us
            # (protocol.md 5.2): skipped without a gap, and reported.
            actions.append(StreamLost(stream, f"message {offset} undeliverable ({event.code})"))
        return actions

    def _answer(self, answer: Envelope, now_ms: int) -> list[ClientAction]:
        ref = answer.ref
        if ref is None:
            return []
        if ref == self._url_hello_id and self._url_hello_open and answer.type is MessageType.ERROR:
            # The server read the URL's hello and refused it (protocol.md 4.5):
            # the connection still waits for a hello, which goes as a frame.
            return [Transmit(self.hello(now_ms))]
        room = self._subscribing.pop(ref, None)
        if room is not None:
            return self._subscribe_answer(room, answer)
        outgoing = self._inflight.pop(ref, None)
        if outgoing is None:
            return []  # a late duplicate answer: the outcome was already given
        attempts = outgoing.attempts
        if answer.type is MessageType.ERROR:
            message = answer.data.get("message", "") if isinstance(answer.data, dict) else ""
            code = answer.code or int(ErrorCode.INTERNAL_ERROR)
            status = Status.EXPIRED if code == ErrorCode.EXPIRED else Status.REJECTED
            return [Outcome(ref, status, answer.data, code, str(message), attempts)]
        if answer.type is MessageType.RESULT:
            return [Outcome(ref, Status.RESULT, answer.data, attempts=attempts)]
        return [Outcome(ref, Status.ACKED, answer.data, attempts=attempts)]

    def _subscribe_answer(self, room: str, answer: Envelope) -> list[ClientAction]:
        key = room_key(room)
        if answer.type is MessageType.ERROR:
            self.rooms.discard(room)
            self.positions.pop(key, None)
            return [RoomChanged(room, False, answer.code)]
        info = answer.data if isinstance(answer.data, dict) else {}
        actions: list[ClientAction] = []
        if _valid_position(info):
            if not info.get("recovered", True):
                actions.append(StreamLost(key, "not recovered on subscribe"))
            self._adopt(key, info)
        actions.append(RoomChanged(room, True))
        return actions

    def _adopt(self, name: str, info: dict[str, Any]) -> None:
        """Take the position of a welcome or subscribe answer (protocol.md 5.3).

        ``recovered: true`` for a position we presented: keep our own (the
        answer carries the server's current offset and the replay brings us
        there). Otherwise (new stream, or not recovered) start at the answer's.
        """
        epoch = str(info["epoch"])
        own = self.positions.get(name)
        if info.get("recovered", True) and own is not None and own.epoch == epoch:
            return
        self.positions[name] = Position(int(info["offset"]), epoch)

    # ------------------------------------------------------------ time

    def tick(self, now_ms: int) -> list[ClientAction]:
        """Expire what is past its deadline or TTL; retry unanswered messages."""
        actions: list[ClientAction] = []
        for outgoing in list(self._queued.values()):
            failure = self._expiry(outgoing, now_ms)
            if failure is not None:
                self._queued.pop(outgoing.envelope.id)
                outgoing.queued = False
                actions.append(failure)
        for ident, outgoing in list(self._inflight.items()):
            failure = self._expiry(outgoing, now_ms)
            if failure is not None:
                del self._inflight[ident]
                actions.append(failure)
            elif (
                self.open
                and outgoing.next_retry_ms is not None
                and now_ms >= outgoing.next_retry_ms
            ):
                actions.append(self._transmit(outgoing, now_ms))
        return actions

    def _expiry(self, outgoing: Outgoing, now_ms: int) -> Outcome | None:
        if outgoing.deadline_ms is not None and now_ms >= outgoing.deadline_ms:
            return self._failed(outgoing, ErrorCode.TIMEOUT, "no answer before the deadline")
        if outgoing.envelope.expired(now_ms):
            return self._failed(outgoing, ErrorCode.EXPIRED, "ttl elapsed")
        return None

    def next_wakeup(self) -> int | None:
        """When ``tick`` next has something to do, or None."""
        times = [o.deadline_ms for o in self._queued.values() if o.deadline_ms is not None]
        times += [
            o.envelope.timestamp + o.envelope.ttl
            for o in self._queued.values()
            if o.envelope.ttl is not None
        ]
        for outgoing in self._inflight.values():
            if outgoing.deadline_ms is not None:
                times.append(outgoing.deadline_ms)
            if outgoing.next_retry_ms is not None:
                times.append(outgoing.next_retry_ms)
        return min(times) if times else None

    # ------------------------------------------------------------ durability

    def find(self, ident: str) -> Outgoing | None:
        """The queued or in-flight message with this id."""
        return self._queued.get(ident) or self._inflight.get(ident)

    def restore(
        self, envelope: Envelope, priority: int, deadline_ms: int | None, now_ms: int
    ) -> list[ClientAction]:
        """Re-queue a message saved before a restart, with its original id."""
        if self.find(envelope.id) is not None:
            return []
        tracked = envelope.ack or envelope.type is MessageType.CALL
        outgoing = Outgoing(
            envelope,
            priority,
            next(self._seq),
            tracked,
            deadline_ms,
            _expiry_of(envelope, deadline_ms),
        )
        self._enqueue(outgoing)
        return self._flush(now_ms) if self.open else []


def _expiry_of(envelope: Envelope, deadline_ms: int | None) -> int | None:
    """The earlier of the deadline and the end of the envelope's own ttl."""
    ends = [deadline_ms] if deadline_ms is not None else []
    if envelope.ttl is not None:
        ends.append(envelope.timestamp + envelope.ttl)
    return min(ends) if ends else None


def _data_limits(limits: object, current: DataLimits) -> DataLimits:
    """The bounds a welcome's ``limits`` announce (protocol.md 4.2), if valid."""
    if not isinstance(limits, dict):
        return current
    depth, values = limits.get("max_depth"), limits.get("max_values")
    if type(depth) is not int or type(values) is not int or depth < 2 or values < 1:
        return current
    return DataLimits(depth, values)


def _valid_position(info: object) -> bool:
    if not isinstance(info, dict):
        return False
    offset, epoch = info.get("offset"), info.get("epoch")
    return type(offset) is int and offset >= 0 and isinstance(epoch, str) and bool(epoch)


def _granted_extensions(raw: Any, asked: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``welcome.data.extensions``, hostile until checked: only extensions this
    client asked for, each with an object of parameters."""
    if not isinstance(raw, dict):
        return {}
    return {
        name: params for name, params in raw.items() if name in asked and isinstance(params, dict)
    }
