"""The connection registry and the performer of the core's actions.

``ActionRunner.run`` carries out what ``ServerCore`` returns: it writes
``Send`` and ``Fanout`` envelopes to connections (a fan-out is encoded and
framed once per codec in use, then the same frame goes to every recipient),
closes connections, and hands the actions that need the application or the
backend (``Dispatch``, ``Publish``, ``AckResult``, ``SessionOpened``,
``SessionExpired``) to the callbacks it was given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.logger import Logger
from twisted.python.failure import Failure

from warpsocket.core.history import unencodable_placeholder
from warpsocket.core.server import (
    AckResult,
    Action,
    Close,
    ConnId,
    Dispatch,
    Fanout,
    Publish,
    Send,
    SessionExpired,
    SessionOpened,
)
from warpsocket.protocol.codecs import Codec
from warpsocket.protocol.codes import ErrorCode
from warpsocket.protocol.envelope import Envelope, MessageType
from warpsocket.server.connection import Connection
from warpsocket.server.metrics import HubMetrics


class Collector(Protocol):
    """Gathers replies instead of writing them (batches.py's ``BatchReplies``)."""

    def take(self, conn_id: ConnId, envelope: Envelope) -> bool: ...

    def flush(self) -> None: ...


def _unrouted(*_: object) -> None:
    raise RuntimeError("ActionRunner.route was not called")


# The wire name of each type (``MessageType.value`` is a slower property).
_WIRE_NAMES = {kind: kind.value for kind in MessageType}
# What ``fanout`` remembers for a codec that could not encode the envelope.
_UNSENDABLE = object()


class ActionRunner:
    """Open connections by id, and what to do with each kind of action."""

    log = Logger()
    # Told of every envelope written (the inspector's ring buffers), when set.
    tap: Callable[[tuple[ConnId, ...], Envelope], None] | None = None
    # The batch extension (batches.py), only while a batch is taken: gathers
    # the replies to its connection into one frame. None: nothing to do.
    collect: Collector | None = None

    def __init__(self, metrics: HubMetrics) -> None:
        self.metrics = metrics
        self.connections: dict[ConnId, Connection] = {}
        self._dispatch: Callable[[Dispatch], None] = _unrouted
        self._publish: Callable[[Publish], None] = _unrouted
        self._ack_result: Callable[[AckResult], None] = _unrouted
        self._opened: Callable[[SessionOpened, Connection], None] = _unrouted
        self._expired: Callable[[str], None] = _unrouted
        # metrics.resumes' two children, by ``SessionOpened.resumed``.
        self._resumes: dict[bool, Any] = {}

    def route(
        self,
        *,
        dispatch: Callable[[Dispatch], None],
        publish: Callable[[Publish], None],
        ack_result: Callable[[AckResult], None],
        opened: Callable[[SessionOpened, Connection], None],
        expired: Callable[[str], None],
    ) -> None:
        """Where the actions that are not writes go. Set once the parts that
        take them exist: they are built with this runner's ``run``."""
        self._dispatch = dispatch
        self._publish = publish
        self._ack_result = ack_result
        self._opened = opened
        self._expired = expired

    def run(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Fanout):
                self.fanout(action.conns, action.envelope)
            elif isinstance(action, Send):
                self.send(action.conn, action.envelope)
            elif isinstance(action, Dispatch):
                self._dispatch(action)
            elif isinstance(action, Close):
                self.close(action.conn, action.code, action.reason)
            elif isinstance(action, AckResult):
                self._ack_result(action)
            elif isinstance(action, SessionOpened):
                self._session_opened(action)
            elif isinstance(action, Publish):
                self._publish(action)
            elif isinstance(action, SessionExpired):
                self._expired(action.session)

    def _session_opened(self, opened: SessionOpened) -> None:
        # The two series, looked up once (``labels`` takes a lock and a tuple per call).
        series = self._resumes.get(opened.resumed)
        if series is None:
            label = "resumed" if opened.resumed else "new"
            series = self._resumes[opened.resumed] = self.metrics.resumes.labels(label)
        series.inc()
        connection = self.connections.get(opened.conn)
        if connection is not None:
            self._opened(opened, connection)

    def send(self, conn_id: ConnId, envelope: Envelope) -> None:
        connection = self.connections.get(conn_id)
        if connection is None or not connection.can_send:
            # Closing (our close frame or the peer's is out): nothing more may be sent.
            return
        if self.collect is not None and self.collect.take(conn_id, envelope):
            return
        codec = connection.codec
        payload: bytes | None
        try:
            payload = codec.encode(envelope)
        except Exception:
            payload = self._unencodable(codec, envelope, Failure())
        if payload is None:
            return
        if self.tap is not None:
            self.tap((conn_id,), envelope)
        traffic = self.metrics.traffic
        traffic.encodes += 1
        traffic.messages_out[_WIRE_NAMES[envelope.type]] += 1
        traffic.bytes_out += len(payload)
        connection.send_payload(payload)

    def fanout(self, conn_ids: tuple[ConnId, ...], envelope: Envelope) -> None:
        """Encode and frame once per codec, then write the same frame to everyone:
        per recipient one dict lookup, one state check and one write."""
        if self.tap is not None:
            self.tap(conn_ids, envelope)
        if self.collect is not None:
            self.collect.flush()  # a batch's replies so far go first
        prepared: dict[str, object] = {}
        connections = self.connections
        sent = 0
        size = 0
        last_codec: Codec | None = None
        message: object = None
        for conn_id in conn_ids:
            connection = connections.get(conn_id)
            if connection is None or not connection.can_send:
                # A prepared frame must never follow a close frame.
                continue
            codec: Codec = connection.codec
            if codec is not last_codec:
                last_codec = codec
                message = prepared.get(codec.subprotocol)
                if message is None:
                    payload: bytes | None
                    try:
                        payload = codec.encode(envelope)
                    except Exception:
                        payload = self._unencodable(codec, envelope, Failure())
                    if payload is None:
                        message = _UNSENDABLE  # tried (and logged) once per codec
                    else:
                        self.metrics.traffic.encodes += 1
                        size = len(payload)
                        message = connection.prepare(payload)
                    prepared[codec.subprotocol] = message
            if message is _UNSENDABLE:
                continue
            connection.send_prepared(message)
            sent += 1
        if sent:
            traffic = self.metrics.traffic
            traffic.messages_out[envelope.type.value] += sent
            traffic.bytes_out += size * sent

    def _unencodable(self, codec: Codec, envelope: Envelope, failure: Failure) -> bytes | None:
        """An envelope this codec cannot encode (the data model makes it rare:
        an application's own codec, say). It costs that one envelope, never
        the connection or the stream: a stream event is replaced by a
        placeholder (protocol.md 5.2) so members see no gap; anything else is
        dropped. Returns what to send instead, if anything."""
        self.log.failure(
            "cannot encode {kind} {id} (stream {stream}, offset {offset}) with {codec}",
            failure,
            kind=envelope.type.value,
            id=envelope.id,
            stream=envelope.stream,
            offset=envelope.offset,
            codec=codec.subprotocol,
        )
        self.metrics.encode_failures.inc()
        if envelope.offset is None:
            return None
        try:
            return codec.encode(unencodable_placeholder(envelope))
        except Exception:
            self.log.failure("cannot encode a placeholder with {codec}", codec=codec.subprotocol)
            return None

    def close(self, conn_id: ConnId, code: ErrorCode, reason: str) -> None:
        if self.collect is not None:
            self.collect.flush()  # a batch's replies so far go before the close frame
        connection = self.connections.get(conn_id)
        if connection is not None:
            connection.close(int(code), reason or code.wire_name)
