"""The ``batch`` extension on the server (protocol.md "Extension: batches").

A client that agreed to ``batch`` may send many envelopes in one frame: a
``batch`` envelope whose ``data`` is an array of envelopes. ``Batches.received``
takes such a frame apart and feeds its envelopes, in order, through the same
path as envelopes that arrived alone (the inbound pipeline's ``take``): each
is validated as if alone, costs a token of the message rate, and an invalid
one costs only itself. While it does, ``BatchReplies`` sits on the runner
(``ActionRunner.collect``) and gathers the acks, results and errors written
to that connection, which then leave as one ``batch`` frame.

Nothing here runs for a frame that is not a ``batch``: the inbound pipeline
checks the type once, and the runner's hook is None outside a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from warpsocket.core.server import ConnId, CoreOptions, Send, ServerCore
from warpsocket.crypto.signing import EXTENSION as SIGN
from warpsocket.protocol.codes import ErrorCode, ProtocolError
from warpsocket.protocol.datamodel import DataLimits
from warpsocket.protocol.envelope import Envelope, MessageType
from warpsocket.server.connection import Connection
from warpsocket.server.metrics import HubMetrics
from warpsocket.server.runner import ActionRunner
from warpsocket.server.security.ratelimit import Refusals

EXTENSION = "batch"
DEFAULT_MAX_ENVELOPES = 64
DEFAULT_MAX_BYTES = 65_536
MIN_MAX_BYTES = 1024
# What may not travel inside a batch (protocol.md 18).
_NOT_INSIDE = frozenset({MessageType.BATCH, MessageType.HELLO})
# What the server gathers into its answering batch: replies, never stream
# events (those are written in order, after the replies gathered so far).
_REPLIES = frozenset({MessageType.ACK, MessageType.RESULT, MessageType.ERROR})


@dataclass(frozen=True)
class BatchParams:
    """``welcome.data.extensions.batch``: the bounds of a batch in either direction."""

    max_envelopes: int = DEFAULT_MAX_ENVELOPES
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        if self.max_envelopes < 2 or self.max_bytes < MIN_MAX_BYTES:
            raise ValueError("a batch needs max_envelopes >= 2 and max_bytes >= 1024")

    def to_wire(self) -> dict[str, Any]:
        return {"max_envelopes": self.max_envelopes, "max_bytes": self.max_bytes}

    @classmethod
    def for_core(cls, core: CoreOptions) -> BatchParams:
        """The defaults, kept within the frame size and the value budget: every
        value takes at least one byte in every codec, so a batch of at most
        ``max_values`` bytes can never exceed the data model's bound."""
        bound = min(DEFAULT_MAX_BYTES, core.max_message_size, core.data_limits.max_values)
        return cls(DEFAULT_MAX_ENVELOPES, bound)

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> BatchParams:
        envelopes, size = raw.get("max_envelopes"), raw.get("max_bytes")
        if not isinstance(envelopes, int) or not isinstance(size, int):
            raise ValueError("batch parameters need integer max_envelopes and max_bytes")
        return cls(envelopes, size)


def offered_batches(core: CoreOptions) -> CoreOptions:
    """``core`` offering ``batch`` (with the default bounds unless it names its own)."""
    if EXTENSION in core.extensions:
        # The application's own bounds: refused at start if they are not usable.
        own = BatchParams.from_wire(core.extensions[EXTENSION])
        bound = min(core.max_message_size, core.data_limits.max_values)
        if own.max_bytes > bound:
            raise ValueError(f"batch max_bytes must be at most {bound} (frame size, max_values)")
        return core
    if core.max_message_size < MIN_MAX_BYTES:
        return core  # frames too small to hold a batch worth having
    offered = BatchParams.for_core(core).to_wire()
    return replace(core, extensions={**core.extensions, EXTENSION: offered})


def whole_problem(count: int, size: int, params: BatchParams) -> str | None:
    """Why a batch of ``count`` envelopes in ``size`` bytes is refused whole
    (4640, protocol.md 18 step 2), or None."""
    if not count:
        return "an empty batch"
    if count > params.max_envelopes:
        return f"more than {params.max_envelopes} envelopes in a batch"
    if size > params.max_bytes:
        return f"a batch of more than {params.max_bytes} bytes"
    return None


def parse_inner(item: Any, limits: DataLimits) -> Envelope:
    """One element of a batch's ``data``, validated as if it had come alone
    (protocol.md 18 step 3); raises ``ProtocolError`` with its code and ref."""
    # Its values were checked with the frame's (envelope.batch_limits).
    inner = Envelope.from_wire(item, limits, strings_checked=True, values_checked=True)
    if inner.type in _NOT_INSIDE:
        raise ProtocolError(ErrorCode.BAD_BATCH, f"no {inner.type.value} inside a batch", inner.id)
    return inner


class _Rated(Protocol):
    """The message rate of a real connection (security/message_rate.py)."""

    refusals: Refusals | None

    def charge(self, size: int) -> bool: ...


class BatchReplies:
    """Gathers the replies written to one connection while its batch is taken."""

    __slots__ = ("conn_id", "flushing", "replies", "write_batch", "write_one")

    def __init__(
        self,
        conn_id: ConnId,
        write_one: Callable[[ConnId, Envelope], None],
        write_batch: Callable[[ConnId, list[Envelope]], None],
    ) -> None:
        self.conn_id = conn_id
        self.replies: list[Envelope] = []
        self.flushing = False
        self.write_one = write_one
        self.write_batch = write_batch

    def take(self, conn_id: ConnId, envelope: Envelope) -> bool:
        """The runner's hook: True when the envelope was gathered (not written)."""
        if conn_id != self.conn_id or self.flushing:
            return False
        if envelope.type in _REPLIES or (
            envelope.type is MessageType.HEARTBEAT and envelope.ref is not None
        ):
            self.replies.append(envelope)
            return True
        self.flush()  # a stream event: after the replies before it
        return False

    def flush(self) -> None:
        """Write what was gathered: one envelope alone, more as one batch."""
        replies, self.replies = self.replies, []
        if not replies:
            return
        self.flushing = True
        try:
            if len(replies) == 1:
                self.write_one(self.conn_id, replies[0])
            else:
                self.write_batch(self.conn_id, replies)
        finally:
            self.flushing = False


class Batches:
    """Takes ``batch`` frames apart; answers their replies in one frame."""

    def __init__(
        self,
        core: ServerCore,
        metrics: HubMetrics,
        runner: ActionRunner,
        *,
        take: Callable[[ConnId, Connection, Envelope], None],
        now_ms: Callable[[], int],
    ) -> None:
        self.core = core
        self.metrics = metrics
        self._runner = runner
        # The inbound pipeline's per-envelope step (late-bound by the caller:
        # observability wraps it after the hub is built).
        self._take = take
        self._now_ms = now_ms
        raw = core.options.extensions.get(EXTENSION)
        self.params = BatchParams.from_wire(raw) if raw is not None else BatchParams()

    def received(self, conn_id: ConnId, connection: Connection, batch: Envelope, size: int) -> None:
        """A decoded ``batch`` frame of ``size`` bytes (its outer envelope is valid)."""
        conn = self.core.connections.get(conn_id)
        if conn is None or conn.session is None:
            self._take(conn_id, connection, batch)  # before welcome: 4003, as any other
            return
        self.metrics.traffic.messages_in[MessageType.BATCH.value] += 1
        if EXTENSION not in conn.extensions:
            # Not negotiated: as unknown as any other type (protocol.md 4.4).
            self._refuse(conn_id, ErrorCode.UNKNOWN_TYPE, "unknown type 'batch'", batch.id)
            return
        items: list[Any] = batch.data
        params = self.params
        problem = whole_problem(len(items), size, params)
        if SIGN in conn.extensions:
            problem = "no batches on a connection that signs its envelopes"
        if problem is not None:
            self._refuse(conn_id, ErrorCode.BAD_BATCH, problem, batch.id)
            return
        limits = self.core.options.data_limits
        rate: _Rated | None = getattr(connection, "rate", None)
        share = size // len(items)
        runner = self._runner
        replies = BatchReplies(conn_id, runner.send, self._write_batch)
        outer, runner.collect = runner.collect, replies
        try:
            for index, item in enumerate(items):
                if not connection.can_send:
                    break  # closed meanwhile (a flood over the rate): the rest with it
                ident = item.get("id") if isinstance(item, dict) else None
                ref = ident if isinstance(ident, str) and 0 < len(ident) <= 128 else None
                # The frame paid one token of the message rate; every further
                # envelope pays its own, as if it had come alone.
                if index and rate is not None and not rate.charge(share):
                    self._over_rate(conn_id, connection, rate, ref)
                    continue
                try:
                    inner = parse_inner(item, limits)
                except ProtocolError as error:
                    self._refuse(conn_id, error.code, error.message, error.ref)
                    continue
                self._take(conn_id, connection, inner)
        finally:
            runner.collect = outer  # None, unless batches ever nest
            replies.flush()

    def _over_rate(
        self, conn_id: ConnId, connection: Connection, rate: _Rated, ref: str | None
    ) -> None:
        """Answer an envelope over the rate with 4200 while the refused bytes pay
        for the answers (security/ratelimit.py ``Refusals``): a flood of tiny
        envelopes in batches must not make the server write more than it reads."""
        refusals = rate.refusals
        if refusals is None or not refusals.may_reply():
            return
        refusal = ProtocolError(ErrorCode.RATE_LIMITED, "too many messages", ref)
        actions = self.core.protocol_error(conn_id, refusal, self._now_ms())
        for action in actions:
            if isinstance(action, Send):
                refusals.replied(len(connection.codec.encode(action.envelope)))
        self.metrics.protocol_errors.labels(str(int(ErrorCode.RATE_LIMITED))).inc()
        self._runner.run(actions)

    def _refuse(self, conn_id: ConnId, code: ErrorCode, message: str, ref: str | None) -> None:
        self.metrics.protocol_errors.labels(str(int(code))).inc()
        refusal = ProtocolError(code, message, ref)
        self._runner.run(self.core.protocol_error(conn_id, refusal, self._now_ms()))

    def _write_batch(self, conn_id: ConnId, replies: list[Envelope]) -> None:
        """One ``batch`` frame of replies; one by one if it would break the bounds."""
        runner = self._runner
        connection = runner.connections.get(conn_id)
        if connection is None or not connection.can_send:
            return
        batch = Envelope(
            type=MessageType.BATCH,
            id=self.core.new_id(),
            timestamp=self._now_ms(),
            data=[reply.to_wire() for reply in replies],
        )
        payload: bytes | None
        try:
            payload = connection.codec.encode(batch)
        except Exception:  # a reply no codec can carry: each goes alone, the runner logs it
            payload = None
        if (
            payload is None
            or len(replies) > self.params.max_envelopes
            or len(payload) > self.params.max_bytes
        ):
            for reply in replies:
                runner.send(conn_id, reply)
            return
        if runner.tap is not None:  # the inspector sees each envelope
            for reply in replies:
                runner.tap((conn_id,), reply)
        traffic = self.metrics.traffic
        traffic.encodes += 1
        traffic.messages_out[MessageType.BATCH.value] += 1
        for reply in replies:  # each envelope by its type, wherever it travels
            traffic.messages_out[reply.type.value] += 1
        traffic.bytes_out += len(payload)
        connection.send_payload(payload)
