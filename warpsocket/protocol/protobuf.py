"""The Protocol Buffers codec: subprotocol ``warpsocket.v1.protobuf``.

The schema is warpsocket/protocol/proto/warpsocket.proto (protocol.md 2.2).
Values of the data model travel as a flat list of tokens in prefix order, so
a deep value is no deeper as a message and the decoder needs no recursion.
The decoded envelope goes through the same validation as the other codecs'
(``Envelope.from_wire``), so every codec answers a bad envelope alike.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory

from warpsocket.protocol.codes import ErrorCode, ProtocolError
from warpsocket.protocol.compact import CompactData
from warpsocket.protocol.datamodel import DEFAULT_LIMITS, DataLimits
from warpsocket.protocol.envelope import Envelope
from warpsocket.protocol.proto.schema import SERIALIZED

PROTOBUF_SUBPROTOCOL = "warpsocket.v1.protobuf"

# A private pool: an application's own descriptors cannot clash with ours.
_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(descriptor_pb2.FileDescriptorProto.FromString(SERIALIZED))
EnvelopeMessage: Any = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName("warpsocket.v1.Envelope")
)
TokenMessage: Any = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName("warpsocket.v1.Token")
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
        wire = envelope.to_wire()
        out = EnvelopeMessage()
        extra: dict[str, Any] = {}
        for name, value in wire.items():
            if name == "data":
                add_tokens(out.data, value)
            elif name in _NAMED:
                setattr(out, name, value)
            else:
                extra[name] = value
        if extra:
            add_tokens(out.extra, extra)
        encoded: bytes = out.SerializeToString()
        return encoded

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
        if parsed.data:
            raw["data"] = value_of(parsed.data, limits, ref, "data")
        if parsed.extra:
            extra = value_of(parsed.extra, limits, ref, "extra")
            if not isinstance(extra, dict):
                raise ProtocolError(ErrorCode.BAD_ENVELOPE, "extra must be one object", ref)
            clash = _NAMED.intersection(extra)
            if clash:
                raise ProtocolError(
                    ErrorCode.BAD_ENVELOPE, f"extra repeats field {min(clash)!r}", ref
                )
            raw.update(extra)
        return Envelope.from_wire(raw, limits, strings_checked=True)


def add_tokens(tokens: Any, value: Any) -> None:
    """Append the flat tokens of one value (protocol.md 2.2) to a repeated
    ``Token`` field, in prefix order."""
    if type(value) is CompactData:
        value = value.value
    add = tokens.add
    pending = [value]
    while pending:
        item = pending.pop()
        kind = type(item)
        if kind is str:
            add(string=item)
        elif kind is _Key:
            add(key=item.name)
        elif item is None:
            add(null=0)
        elif kind is bool:
            add(bool=item)
        elif kind is int:
            add(int=item)
        elif kind is float:
            add(float=item)
        elif isinstance(item, dict):
            add(object=len(item))
            # Pushed in reverse onto a stack: popped in the sender's order.
            for key, member in reversed(item.items()):
                pending.append(member)
                pending.append(_Key(key))
        elif isinstance(item, (list, tuple)):
            add(array=len(item))
            pending.extend(reversed(item))
        else:
            pending.append(_plain_scalar(item))


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


def value_of(tokens: Any, limits: DataLimits, ref: str | None, where: str) -> Any:
    """Rebuild the one value a token list holds; a malformed list is 4001."""

    def bad(problem: str) -> ProtocolError:
        return ProtocolError(ErrorCode.BAD_ENVELOPE, f"{where}: {problem}", ref)

    if len(tokens) > limits.max_values:
        raise bad(f"more than {limits.max_values} values")
    root: list[Any] = []
    # Open containers: [container, members still expected, key awaited?,
    # depth]. The root holds exactly one value at the envelope's level (1).
    stack: list[list[Any]] = [[root, 1, False, 1]]
    key: str | None = None
    for token in tokens:
        if not stack:
            raise bad("tokens after the end of the value")
        top = stack[-1]
        container = top[0]
        kind = token.WhichOneof("kind")
        if top[2]:  # an object member starts with its name
            if kind != "key":
                raise bad("an object member must start with a key token")
            key = token.key
            if key in container:
                raise bad(f"duplicate key {key[:64]!r}")
            top[2] = False
            continue
        if kind == "key" or kind is None:
            raise bad("a value was expected")
        opened: list[Any] | None = None
        if kind == "array":
            value: Any = []
            if token.array:
                opened = [value, token.array, False, top[3] + 1]
        elif kind == "object":
            value = {}
            if token.object:
                opened = [value, token.object, True, top[3] + 1]
        else:
            value = None if kind == "null" else getattr(token, kind)
        if type(container) is list:
            container.append(value)
        else:
            container[key] = value
            top[2] = True
        top[1] -= 1
        if top[1] == 0:
            stack.pop()  # complete (its parent counted it when it opened)
        if opened is not None:
            # Its members sit one level deeper than it (protocol.md 2.1).
            if opened[3] >= limits.max_depth:
                raise bad(f"nested deeper than {limits.max_depth} levels")
            stack.append(opened)
    if stack:
        raise bad("the value ends early")
    return root[0]
