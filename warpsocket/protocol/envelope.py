"""The envelope: the one shape every WarpSocket frame carries.

Validation is strict about the fields it knows and ignores the ones it does
not, so that newer peers can add optional fields. docs/protocol.md is the
normative description; this module is its executable form.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from warpsocket.protocol.codes import ErrorCode, ProtocolError
from warpsocket.protocol.compact import CompactData
from warpsocket.protocol.datamodel import (
    DEFAULT_LIMITS,
    MAX_SAFE_INTEGER,
    DataLimits,
    DataModelError,
    check_value,
    valid_text,
)
from warpsocket.protocol.tracecontext import TraceContext, parse_trace

MAX_ID_LENGTH = 128
MAX_NAME_LENGTH = 256
MAX_EPOCH_LENGTH = 64


class MessageType(str, enum.Enum):
    """The ``type`` of an envelope (protocol.md section 3); the value is the
    name on the wire."""

    HELLO = "hello"
    WELCOME = "welcome"
    EVENT = "event"
    ACK = "ack"
    CALL = "call"
    RESULT = "result"
    ERROR = "error"
    HEARTBEAT = "heartbeat"
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    AUTH = "auth"
    # The chunked-transfer extension's one type (protocol.md "Extension:
    # chunked transfers"); refused as unknown where it was not negotiated.
    TRANSFER = "transfer"
    # The batch extension's one type (protocol.md "Extension: batches"):
    # ``data`` is an array of envelopes, each validated as if it came alone.
    BATCH = "batch"


_TYPES: dict[str, MessageType] = {t.value: t for t in MessageType}

# The optional fields and the validator that checks each one.
_STRING_FIELDS = {
    "event": MAX_NAME_LENGTH,
    "room": MAX_NAME_LENGTH,
    "stream": MAX_NAME_LENGTH,
    "epoch": MAX_EPOCH_LENGTH,
    "ref": MAX_ID_LENGTH,
}


# Shared by every envelope without unknown fields (almost all): one empty
# mapping instead of a dict each, which a stored message would carry too.
_NO_EXTRA: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True, init=False)
class Envelope:
    """One protocol message, immutable. ``None`` means "field absent" for
    optionals.

    ``Envelope.from_wire`` validates a decoded mapping (fields, types, the
    data model) and raises ``ProtocolError``; ``to_wire`` gives the mapping a
    codec encodes. Middleware and ``can_publish`` policies receive envelopes
    and return or inspect them; ``dataclasses.replace`` makes a changed copy.
    A subclass may add methods but no fields (``__new__`` builds the fields
    of this class).
    """

    type: MessageType
    id: str
    timestamp: int
    data: Any = None
    event: str | None = None
    room: str | None = None
    stream: str | None = None
    offset: int | None = None
    epoch: str | None = None
    ack: bool = False
    ref: str | None = None
    ttl: int | None = None
    code: int | None = None
    # Client to server only: ms after ``timestamp`` after which the server must
    # not handle the message; unlike ``ttl`` it never reaches a stream event.
    deadline: int | None = None
    # W3C trace context (protocol.md "Trace context"); an invalid one is ignored.
    trace: TraceContext | None = None
    # Unknown fields received from the peer, kept for middleware; never sent.
    extra: Mapping[str, Any] = field(default_factory=lambda: _NO_EXTRA, compare=False, repr=False)

    def __new__(
        cls,
        type: MessageType,
        id: str,
        timestamp: int,
        data: Any = None,
        event: str | None = None,
        room: str | None = None,
        stream: str | None = None,
        offset: int | None = None,
        epoch: str | None = None,
        ack: bool = False,
        ref: str | None = None,
        ttl: int | None = None,
        code: int | None = None,
        deadline: int | None = None,
        trace: TraceContext | None = None,
        extra: Mapping[str, Any] = _NO_EXTRA,
    ) -> Envelope:
        # The fields are written into a writable twin of the same layout,
        # which then becomes an Envelope: a frozen dataclass sets each field
        # with object.__setattr__, 16 calls that cost ~1.4 us more per
        # envelope than plain stores, and a message builds two (in and out).
        draft: Any = _new_draft(_Draft)
        draft.type = type
        draft.id = id
        draft.timestamp = timestamp
        draft.data = data
        draft.event = event
        draft.room = room
        draft.stream = stream
        draft.offset = offset
        draft.epoch = epoch
        draft.ack = ack
        draft.ref = ref
        draft.ttl = ttl
        draft.code = code
        draft.deadline = deadline
        draft.trace = trace
        draft.extra = extra
        draft.__class__ = cls
        return draft  # type: ignore[no-any-return]

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # (``copy.copy`` rebuilds it through ``__new__``.)
        return (self.__class__, tuple(getattr(self, name) for name in self.__slots__))

    def expired(self, now_ms: int) -> bool:
        """True when the envelope carries a TTL that has elapsed at ``now_ms``."""
        return self.ttl is not None and now_ms >= self.timestamp + self.ttl

    def overdue(self, now_ms: int) -> bool:
        """True when it may no longer be handled: its TTL or its deadline passed."""
        # (``expired`` inlined: asked of every event and call received.)
        ttl, deadline = self.ttl, self.deadline
        return (ttl is not None and now_ms >= self.timestamp + ttl) or (
            deadline is not None and now_ms >= self.timestamp + deadline
        )

    def evolve(self, **changes: Any) -> Envelope:
        return replace(self, **changes)

    def to_wire(self, *, with_data: bool = True) -> dict[str, Any]:
        """The mapping a codec serialises: present fields only.

        A stored payload (``CompactData``) is decoded here; ``with_data=False``
        leaves ``data`` out for a codec that writes it itself.
        """
        wire: dict[str, Any] = {
            "type": self.type.value,
            "id": self.id,
            "timestamp": self.timestamp,
        }
        data = self.data
        if data is not None and with_data:
            wire["data"] = data.value if type(data) is CompactData else data
        if self.event is not None:
            wire["event"] = self.event
        if self.room is not None:
            wire["room"] = self.room
        if self.stream is not None:
            wire["stream"] = self.stream
        if self.offset is not None:
            wire["offset"] = self.offset
        if self.epoch is not None:
            wire["epoch"] = self.epoch
        if self.ack:
            wire["ack"] = True
        if self.ref is not None:
            wire["ref"] = self.ref
        if self.ttl is not None:
            wire["ttl"] = self.ttl
        if self.code is not None:
            wire["code"] = self.code
        if self.deadline is not None:
            wire["deadline"] = self.deadline
        if self.trace is not None:
            wire["trace"] = self.trace.to_wire()
        return wire

    @classmethod
    def from_wire(
        cls,
        raw: object,
        limits: DataLimits = DEFAULT_LIMITS,
        *,
        strings_checked: bool = False,
        values_checked: bool = False,
    ) -> Envelope:
        """Validate a decoded frame; raise ProtocolError with the right code.

        ``limits``: the data model's depth and size bounds (protocol.md 2.1).
        ``strings_checked``: the decoder already refused lone surrogates.
        ``values_checked``: the decoder already knows every value is inside
        the data model (the JSON codec can tell from the text of most frames).
        """
        if type(raw) is dict and raw.keys() <= _COMMON_FIELDS:
            common = _common_envelope(raw, limits, strings_checked, values_checked)
            if common is not None:
                return common
        if not isinstance(raw, dict):
            raise ProtocolError(ErrorCode.BAD_ENVELOPE, "envelope must be an object")
        ident = raw.get("id")
        ref = ident if _valid_string(ident, MAX_ID_LENGTH) else None
        kind = raw.get("type")
        if not isinstance(kind, str):
            raise ProtocolError(ErrorCode.BAD_ENVELOPE, "`type` must be a string", ref)
        message_type = _TYPES.get(kind)
        if message_type is None:
            raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown type {kind[:64]!r}", ref)
        if ref is None:
            raise ProtocolError(
                ErrorCode.BAD_ENVELOPE, f"`id` must be a string of 1-{MAX_ID_LENGTH} characters"
            )
        timestamp: Any = raw.get("timestamp")
        if not _valid_uint(timestamp):
            raise ProtocolError(
                ErrorCode.BAD_ENVELOPE, "`timestamp` must be a non-negative integer", ref
            )
        values: dict[str, Any] = {}
        for name, limit in _STRING_FIELDS.items():
            value = raw.get(name)
            if value is not None:
                if not _valid_string(value, limit):
                    raise ProtocolError(
                        ErrorCode.BAD_ENVELOPE,
                        f"`{name}` must be a string of 1-{limit} characters",
                        ref,
                    )
                values[name] = value
        offset = raw.get("offset")
        if offset is not None:
            if not _valid_uint(offset):
                raise ProtocolError(
                    ErrorCode.BAD_ENVELOPE, "`offset` must be a non-negative integer", ref
                )
            values["offset"] = offset
        for name in ("ttl", "deadline"):
            value = raw.get(name)
            if value is not None:
                if not _valid_uint(value) or value == 0:
                    raise ProtocolError(
                        ErrorCode.BAD_ENVELOPE, f"`{name}` must be a positive integer", ref
                    )
                values[name] = value
        code = raw.get("code")
        if code is not None:
            if not _valid_uint(code) or not 1000 <= code <= 4999:
                raise ProtocolError(
                    ErrorCode.BAD_ENVELOPE, "`code` must be an integer in 1000-4999", ref
                )
            values["code"] = code
        ack = raw.get("ack")
        if ack is None:
            ack = False
        elif not isinstance(ack, bool):
            raise ProtocolError(ErrorCode.BAD_ENVELOPE, "`ack` must be a boolean", ref)
        extra: Mapping[str, Any] = {
            k: v for k, v in raw.items() if k not in _KNOWN_FIELDS
        } or _NO_EXTRA
        trace = raw.get("trace")
        if trace is not None:
            # Held to the data model like any field, then ignored if invalid.
            extra_checked: Mapping[str, Any] = {**extra, "trace": trace}
            parsed = parse_trace(trace)
            values["trace"] = parsed
            if parsed is None or parsed.to_wire() != trace:
                # Kept as received too (never sent on): a signature covers
                # the envelope as its sender wrote it (protocol.md 16).
                extra = extra_checked
        else:
            extra_checked = extra
        if not values_checked:
            if message_type is MessageType.BATCH:
                limits = batch_limits(limits)
            _check_values(raw.get("data"), extra_checked, limits, strings_checked, ref)
        envelope = cls(
            type=message_type,
            id=ref,
            timestamp=timestamp,
            data=raw.get("data"),
            ack=ack,
            extra=extra,
            **values,
        )
        _check_type_rules(envelope)
        return envelope


class _Draft:
    """An Envelope while ``Envelope.__new__`` fills it in: the same slots in
    the same order (so the object may change class), writable."""

    __slots__ = Envelope.__slots__


_new_draft = object.__new__


def is_plain_reply(envelope: Envelope) -> bool:
    """Only type, id, timestamp, ref and maybe data: how an ack or a result is
    built (the codec formats these without the mapping; the dedup window
    keeps them as a tuple of their fields)."""
    return (
        envelope.ref is not None
        and envelope.event is None
        and envelope.room is None
        and envelope.stream is None
        and envelope.offset is None
        and envelope.epoch is None
        and not envelope.ack
        and envelope.ttl is None
        and envelope.code is None
        and envelope.deadline is None
        and envelope.trace is None
    )


def batch_limits(limits: DataLimits) -> DataLimits:
    """The data model's bounds for a ``batch`` envelope: its inner envelopes
    sit two levels down (its ``data`` array, then the envelope), so the depth
    bound is two more, which is ``max_depth`` counted from each inner
    envelope; ``max_values`` bounds the whole frame (protocol.md section 18)."""
    return DataLimits(limits.max_depth + 2, limits.max_values)


_KNOWN_FIELDS = frozenset(
    {
        "type",
        "id",
        "timestamp",
        "data",
        "ack",
        "offset",
        "ttl",
        "code",
        "deadline",
        "trace",
        *_STRING_FIELDS,
    }
)


# The fields of the envelopes a server mostly receives and a client mostly
# gets back: events and calls, acks by ref, results, heartbeats, hellos.
_COMMON_FIELDS = frozenset(
    {"type", "id", "timestamp", "data", "event", "ack", "ref", "ttl", "deadline"}
)
_COMMON_TYPES: dict[str, MessageType] = {
    t.value: t
    for t in (
        MessageType.EVENT,
        MessageType.CALL,
        MessageType.ACK,
        MessageType.RESULT,
        MessageType.HEARTBEAT,
        MessageType.HELLO,
    )
}


def _common_envelope(
    raw: dict[str, Any], limits: DataLimits, strings_checked: bool, values_checked: bool
) -> Envelope | None:
    """``from_wire`` for a valid envelope of a common shape (fields within
    ``_COMMON_FIELDS``, a type of ``_COMMON_TYPES``), in one pass of exact type
    tests. None for anything else, valid or not: ``from_wire`` then judges it
    the general way, so every refusal keeps its code and message, and an
    envelope accepted here is the one ``from_wire`` would build
    (tests/test_envelope_fast.py compares the two on generated input)."""
    name = raw.get("type")
    if type(name) is not str:
        return None
    kind = _COMMON_TYPES.get(name)
    ident = raw.get("id")
    timestamp = raw.get("timestamp")
    if (
        kind is None
        or type(ident) is not str
        or not 0 < len(ident) <= MAX_ID_LENGTH
        or type(timestamp) is not int
        or not 0 <= timestamp <= MAX_SAFE_INTEGER
    ):
        return None
    event = raw.get("event")
    if event is not None and (type(event) is not str or not 0 < len(event) <= MAX_NAME_LENGTH):
        return None
    ref = raw.get("ref")
    if ref is not None and (type(ref) is not str or not 0 < len(ref) <= MAX_ID_LENGTH):
        return None
    ttl = raw.get("ttl")
    if ttl is not None and (type(ttl) is not int or not 0 < ttl <= MAX_SAFE_INTEGER):
        return None
    deadline = raw.get("deadline")
    if deadline is not None and (type(deadline) is not int or not 0 < deadline <= MAX_SAFE_INTEGER):
        return None
    ack = raw.get("ack")
    if ack is None:
        ack = False
    elif type(ack) is not bool:
        return None
    data = raw.get("data")
    if data is not None and not values_checked:
        try:
            check_value(data, limits, strings_checked=strings_checked)
        except DataModelError:
            return None
    # The per-type rules of ``_check_type_rules`` for these types and fields.
    if kind is MessageType.CALL:
        if event is None:
            return None
    elif kind is MessageType.ACK or kind is MessageType.RESULT:
        if ref is None:
            return None
    elif kind is MessageType.HELLO and type(data) is not dict:
        return None
    return Envelope(
        kind, ident, timestamp, data, event, None, None, None, None, ack, ref, ttl, None, deadline
    )


def _check_values(
    data: Any, extra: Mapping[str, Any], limits: DataLimits, strings_checked: bool, ref: str
) -> None:
    """``data`` and the unknown fields stay in the data model (protocol.md 2.1)."""
    try:
        budget = limits.max_values
        if data is not None:
            budget -= check_value(data, limits, strings_checked=strings_checked)
        for name, value in extra.items():
            if not isinstance(name, str) or (not strings_checked and not valid_text(name)):
                raise DataModelError("envelope", "field names must be strings")
            budget -= check_value(
                value, limits, path=name[:32], strings_checked=strings_checked, budget=budget
            )
    except DataModelError as error:
        raise ProtocolError(ErrorCode.BAD_ENVELOPE, str(error), ref) from None


def _valid_string(value: object, limit: int) -> bool:
    return isinstance(value, str) and 0 < len(value) <= limit


def _valid_uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SAFE_INTEGER


def _require(envelope: Envelope, condition: bool, message: str) -> None:
    if not condition:
        raise ProtocolError(ErrorCode.BAD_ENVELOPE, message, envelope.id)


def _check_type_rules(envelope: Envelope) -> None:
    """The per-type field rules of docs/protocol.md, section "Message types"."""
    kind = envelope.type
    has_position = envelope.offset is not None or envelope.epoch is not None
    if kind is MessageType.HELLO or kind is MessageType.WELCOME:
        _require(envelope, isinstance(envelope.data, dict), f"`{kind.value}` needs object `data`")
        if kind is MessageType.WELCOME:
            _require(envelope, envelope.ref is not None, "`welcome` needs `ref`")
    elif kind is MessageType.EVENT:
        positioned = envelope.stream is not None
        _require(
            envelope,
            positioned == (envelope.offset is not None) == (envelope.epoch is not None),
            "`stream`, `offset` and `epoch` go together",
        )
        _require(
            envelope,
            envelope.offset is None or envelope.offset >= 1,
            "stream offsets start at 1",
        )
    elif kind is MessageType.ACK:
        cumulative = envelope.stream is not None and envelope.offset is not None
        _require(
            envelope,
            envelope.ref is not None or cumulative,
            "`ack` needs `ref`, or `stream` and `offset`",
        )
    elif kind is MessageType.CALL:
        _require(envelope, envelope.event is not None, "`call` needs `event` (the method)")
    elif kind is MessageType.RESULT:
        _require(envelope, envelope.ref is not None, "`result` needs `ref`")
    elif kind is MessageType.ERROR:
        _require(envelope, envelope.code is not None, "`error` needs `code`")
    elif kind is MessageType.SUBSCRIBE:
        _require(envelope, envelope.room is not None, "`subscribe` needs `room`")
        _require(
            envelope,
            not has_position or (envelope.offset is not None and envelope.epoch is not None),
            "`offset` and `epoch` go together",
        )
    elif kind is MessageType.UNSUBSCRIBE:
        _require(envelope, envelope.room is not None, "`unsubscribe` needs `room`")
    elif kind is MessageType.TRANSFER:
        _require(
            envelope,
            isinstance(envelope.data, dict) and isinstance(envelope.data.get("op"), str),
            "`transfer` needs `data.op`",
        )
    elif kind is MessageType.BATCH:
        _require(envelope, isinstance(envelope.data, list), "`batch` needs array `data`")
    elif kind is MessageType.AUTH:
        _require(
            envelope,
            # Any length here: the authenticator refuses oversized tokens with
            # its own code (4100), as for tokens in hello (security.md).
            isinstance(envelope.data, dict) and _valid_string(envelope.data.get("token"), 2**31),
            "`auth` needs `data.token`",
        )
