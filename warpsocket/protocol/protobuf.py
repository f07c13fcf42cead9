"""The Protocol Buffers codec: subprotocol ``warpsocket.v1.protobuf``.

The schema is warpsocket/protocol/proto/warpsocket.proto (protocol.md 2.2).
Values of the data model travel flattened into columns (a shape list and one
list per scalar kind): a deep value is no deeper as a message, the decoder
needs no recursion, and the columns are read and written at C speed.
The decoded envelope goes through the same validation as the other codecs'
(``Envelope.from_wire``), so every codec answers a bad envelope alike.
"""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory

from warpsocket.protocol.codes import ErrorCode, ProtocolError
from warpsocket.protocol.compact import CompactData
from warpsocket.protocol.datamodel import DEFAULT_LIMITS, MAX_SAFE_INTEGER, DataLimits
from warpsocket.protocol.envelope import Envelope, batch_limits
from warpsocket.protocol.proto.schema import SERIALIZED

PROTOBUF_SUBPROTOCOL = "warpsocket.v1.protobuf"

# A private pool: an application's own descriptors cannot clash with ours.
_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(descriptor_pb2.FileDescriptorProto.FromString(SERIALIZED))
EnvelopeMessage: Any = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName("warpsocket.v1.Envelope")
)

# Envelope fields with a number of their own, in to_wire's order.
_STRINGS = ("event", "room", "stream", "epoch", "ref")
_INTEGERS = ("offset", "ttl", "code", "deadline")
_NAMED = frozenset({"type", "id", "timestamp", "data", "ack", *_STRINGS, *_INTEGERS})
# Everything from_wire reads, in its order of checks (id and type first).
_SCALARS = ("type", "id", "timestamp", "event", "room", "stream", "offset", "epoch")
_SCALARS_2 = ("ack", "ref", "ttl", "code", "deadline")


class ProtobufCodec:
    """Envelopes as ``warpsocket.v1.Envelope`` messages in binary frames."""

    subprotocol = PROTOBUF_SUBPROTOCOL
    binary = True

    def __init__(self, limits: DataLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits

    def encode(self, envelope: Envelope) -> bytes:
        return encode_mapping(envelope.to_wire())

    def decode(self, payload: bytes, is_binary: bool) -> Envelope:
        if not is_binary:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"{self.subprotocol} uses binary frames")
        try:
            # Strings are checked as UTF-8 here (proto3), so none can hold a
            # lone surrogate.
            parsed = EnvelopeMessage.FromString(payload)
        except message.DecodeError as exc:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"not a valid Envelope: {exc}") from None
        raw: dict[str, Any] = {}
        for name in _SCALARS:
            if parsed.HasField(name):
                raw[name] = getattr(parsed, name)
        for name in _SCALARS_2:
            if parsed.HasField(name):
                raw[name] = getattr(parsed, name)
        ident = raw.get("id")
        ref = ident if isinstance(ident, str) and 0 < len(ident) <= 128 else None
        limits = self.limits
        if parsed.HasField("data"):
            # A batch's inner envelopes sit two levels deeper (protocol.md 18).
            bounds = batch_limits(limits) if raw.get("type") == "batch" else limits
            raw["data"] = value_of(parsed.data, bounds, ref, "data")
        if parsed.HasField("extra"):
            extra = value_of(parsed.extra, limits, ref, "extra", level=0)
            if not isinstance(extra, dict):
                raise ProtocolError(ErrorCode.BAD_ENVELOPE, "extra must be one object", ref)
            clash = _NAMED.intersection(extra)
            if clash:
                raise ProtocolError(
                    ErrorCode.BAD_ENVELOPE, f"extra repeats field {min(clash)!r}", ref
                )
            raw.update(extra)
        # value_of bounded the depth; when the columns show every number in
        # range too, the value walk is not needed (else it names the path).
        checked = _numbers_inside(parsed, limits)
        return Envelope.from_wire(raw, limits, strings_checked=True, values_checked=checked)


# Value kinds, in the low 3 bits of a shape entry (protocol.md 2.2).
NULL, FALSE, TRUE, INT, FLOAT, STRING, ARRAY, OBJECT = range(8)


def encode_mapping(wire: dict[str, Any]) -> bytes:
    """An envelope's wire mapping (``Envelope.to_wire``, or one with extension
    fields such as ``sig``) as a Protobuf frame."""
    out = EnvelopeMessage()
    extra: dict[str, Any] = {}
    for name, value in wire.items():
        if name == "data":
            add_value(out.data, value)
        elif name in _NAMED:
            setattr(out, name, value)
        else:
            extra[name] = value
    if extra:
        add_value(out.extra, extra)
    encoded: bytes = out.SerializeToString()
    return encoded


def add_value(column: Any, value: Any) -> None:
    """Write one value (protocol.md 2.2) into a ``Value`` message: its shape
    in prefix order and its scalars in their columns."""
    if type(value) is CompactData:
        value = value.value
    shape: list[int] = []
    ints: list[int] = []
    floats: list[float] = []
    strings: list[str] = []
    pending = [value]
    while pending:
        item = pending.pop()
        kind = type(item)
        if kind is str:
            shape.append(STRING)
            strings.append(item)
        elif kind is _Key:
            strings.append(item.name)  # a member's name: no shape entry
        elif item is None:
            shape.append(NULL)
        elif kind is bool:
            shape.append(TRUE if item else FALSE)
        elif kind is int:
            shape.append(INT)
            ints.append(item)
        elif kind is float:
            shape.append(FLOAT)
            floats.append(item)
        elif isinstance(item, dict):
            shape.append(len(item) << 3 | OBJECT)
            # Pushed in reverse onto a stack: popped in the sender's order.
            for key, member in reversed(item.items()):
                pending.append(member)
                pending.append(_Key(key))
        elif isinstance(item, (list, tuple)):
            shape.append(len(item) << 3 | ARRAY)
            pending.extend(reversed(item))
        else:
            pending.append(_plain_scalar(item))
    # The columns are written at C speed (packed repeated fields).
    column.shape.extend(shape)
    column.ints.extend(ints)
    column.floats.extend(floats)
    column.strings.extend(strings)


def _plain_scalar(item: object) -> bool | int | float | str:
    """A subclass of a JSON scalar (an IntEnum, a str enum) as the plain type."""
    for plain in (bool, int, float, str):
        if isinstance(item, plain):
            return plain(item)
    raise TypeError(f"{type(item).__name__} is outside the data model")


class _Key:
    """A member name on the encoder's stack (a str there is a value)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


def value_of(column: Any, limits: DataLimits, ref: str | None, where: str, level: int = 1) -> Any:
    """Rebuild the one value a ``Value`` message holds; a malformed one is 4001.

    ``level``: the depth of the value's parent (1, the envelope, for ``data``;
    0 for ``extra``, whose object stands for the envelope itself).
    """

    def bad(problem: str) -> ProtocolError:
        return ProtocolError(ErrorCode.BAD_ENVELOPE, f"{where}: {problem}", ref)

    shape = column.shape
    if len(shape) > limits.max_values:
        raise bad(f"more than {limits.max_values} values")
    ints = iter(column.ints)
    floats = iter(column.floats)
    strings = iter(column.strings)
    root: list[Any] = []
    # Open containers: [container, members still expected, depth]. The root
    # holds exactly one value, at the envelope's level (1).
    stack: list[list[Any]] = [[root, 1, level]]
    try:
        for entry in shape:
            if not stack:
                raise bad("shape entries after the end of the value")
            top = stack[-1]
            kind = entry & 7
            count = entry >> 3
            if count and kind < ARRAY:
                raise bad(f"a count on a scalar shape entry ({entry})")
            container = top[0]
            # An object member's name comes just before its value.
            key = None if type(container) is list else next(strings)
            opened: list[Any] | None = None
            if kind == INT:
                value: Any = next(ints)
            elif kind == STRING:
                value = next(strings)
            elif kind == FLOAT:
                value = next(floats)
            elif kind == OBJECT:
                value = {}
                if count:
                    opened = [value, count, top[2] + 1]
            elif kind == ARRAY:
                value = []
                if count:
                    opened = [value, count, top[2] + 1]
            else:
                value = (None, False, True)[kind]
            if key is None:
                container.append(value)
            else:
                if key in container:
                    raise bad(f"duplicate key {key[:64]!r}")
                container[key] = value
            top[1] -= 1
            if top[1] == 0:
                stack.pop()  # complete (its parent counted it when it opened)
            if opened is not None:
                # Its members sit one level deeper than it (protocol.md 2.1).
                if opened[2] >= limits.max_depth:
                    raise bad(f"nested deeper than {limits.max_depth} levels")
                stack.append(opened)
    except StopIteration:
        raise bad("a column ends before the shape does") from None
    if stack:
        raise bad("the value ends early")
    for rest, name in ((ints, "ints"), (floats, "floats"), (strings, "strings")):
        if next(rest, _END) is not _END:
            raise bad(f"values left over in {name}")
    return root[0]


_END = object()


def _numbers_inside(parsed: Any, limits: DataLimits) -> bool:
    """True when the frame's values are inside the model on every count that
    value_of does not check: integer range, finite floats, total values."""
    data, extra = parsed.data, parsed.extra
    if len(data.shape) + len(extra.shape) > limits.max_values:
        return False
    for column in (data, extra):
        ints, floats = column.ints, column.floats
        if ints and (max(ints) > MAX_SAFE_INTEGER or min(ints) < -MAX_SAFE_INTEGER):
            return False
        if floats and (any(map(math.isinf, floats)) or any(map(math.isnan, floats))):
            return False
    return True
