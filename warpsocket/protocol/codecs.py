"""Codecs turn envelopes into WebSocket payloads and back.

A codec is chosen per connection by WebSocket subprotocol. Applications may
register their own (``CodecRegistry.register``); the built-in ones are
``warpsocket.v1.json`` (text frames, the default, also used when a client
offers no subprotocol), ``warpsocket.v1.msgpack`` and
``warpsocket.v1.protobuf`` (binary frames; warpsocket/protocol/protobuf.py).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import msgpack

from warpsocket.protocol.codes import ErrorCode, ProtocolError
from warpsocket.protocol.compact import CompactData
from warpsocket.protocol.datamodel import DEFAULT_LIMITS, MAX_SAFE_INTEGER, DataLimits
from warpsocket.protocol.envelope import Envelope, MessageType, is_plain_reply
from warpsocket.protocol.jsontext import compact, fast_dumps, fast_loads

JSON_SUBPROTOCOL = "warpsocket.v1.json"
MSGPACK_SUBPROTOCOL = "warpsocket.v1.msgpack"


class Codec(Protocol):
    """What the server and client need from a codec: one per WebSocket
    subprotocol (``JSON_SUBPROTOCOL``, ``MSGPACK_SUBPROTOCOL``). A custom codec
    is registered in a ``CodecRegistry`` given to the hub."""

    @property
    def subprotocol(self) -> str: ...

    @property
    def binary(self) -> bool:
        """True when payloads go in binary frames, False for text frames."""
        ...

    def encode(self, envelope: Envelope) -> bytes: ...

    def decode(self, payload: bytes, is_binary: bool) -> Envelope:
        """Decode and validate; raise ProtocolError (BAD_FRAME / BAD_ENVELOPE ...)."""
        ...


def _no_scanner(text: str, index: int) -> tuple[Any, int]:
    raise StopIteration(index)  # then ``decode`` does it all


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class JsonCodec:
    subprotocol = JSON_SUBPROTOCOL
    binary = False

    def __init__(self, limits: DataLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._decoder = json.JSONDecoder(parse_constant=_reject_constant)
        # The decoder's scanner (set by JSONDecoder.__init__; typeshed omits it).
        self._scan: Callable[[str, int], tuple[Any, int]] = getattr(
            self._decoder, "scan_once", _no_scanner
        )
        # Frames within this depth limit nest too shallow for either parser's
        # own limit (orjson's 1,024 levels; the stdlib's recursion limit, less
        # the stack), so both read them. A deeper limit leaves it all to the
        # stdlib, as before orjson.
        self._orjson_depth = limits.max_depth <= _ORJSON_MAX_DEPTH

    def encode(self, envelope: Envelope) -> bytes:
        data = envelope.data
        if is_plain_reply(envelope):
            # Most envelopes a server sends are acks and results: type, id,
            # timestamp, data and ref, formatted in to_wire's order without
            # building the mapping (byte for byte what the encoder writes).
            assert envelope.ref is not None
            if data is None:
                text = _REPLY_ONLY % (
                    _TYPE_NAMES[envelope.type],
                    _json_string(envelope.id),
                    envelope.timestamp,
                    _json_string(envelope.ref),
                )
                return text.encode("utf-8")
            if type(data) is not CompactData:
                text = _REPLY_WITH_DATA % (
                    _TYPE_NAMES[envelope.type],
                    _json_string(envelope.id),
                    envelope.timestamp,
                    compact(data),
                    _json_string(envelope.ref),
                )
                return text.encode("utf-8")
            # A result encoded once when it was checked (``packed_result``):
            # the splice below, byte for byte, without the mapping.
            return _REPLY_WITH_PACKED % (
                _TYPE_BYTES[envelope.type],
                _json_string(envelope.id).encode("utf-8"),
                envelope.timestamp,
                _json_string(envelope.ref).encode("utf-8"),
                data.json,
            )
        if type(data) is CompactData:
            # A stored payload is JSON already: splice it in, unchanged.
            head = compact(envelope.to_wire(with_data=False)).encode("utf-8")
            return b"".join((head[:-1], b',"data":', data.json, b"}"))
        return compact(envelope.to_wire()).encode("utf-8")

    def decode(self, payload: bytes, is_binary: bool) -> Envelope:
        if is_binary:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"{self.subprotocol} uses text frames")
        plain = self._plainly_inside(payload)
        if plain and self._orjson_depth and fast_loads is not None:
            # orjson, where every number reads back as the stdlib reads it
            # and nothing nests past the data model (where the stdlib's
            # scanner runs out of recursion depends on the stack: a frame
            # nested a thousand deep is refused without a ``ref``); larger
            # frames are rare and kept as they were. Whatever orjson refuses
            # gets the stdlib's verdict, so each error keeps its code and
            # message.
            try:
                raw = fast_loads(payload)
            except ValueError:
                raw = self._standard_decode(payload)
        else:
            raw = self._standard_decode(payload)
        return Envelope.from_wire(
            raw,
            self.limits,
            strings_checked=True,
            values_checked=plain,
        )

    def _standard_decode(self, payload: bytes) -> Any:
        """The standard library's decoder; its error messages are the codec's."""
        try:
            text = payload.decode("utf-8")
            try:
                # The decoder's own scanner, without ``decode``'s whitespace
                # handling: the same value for a document with none around it.
                raw, end = self._scan(text, 0)
                if end != len(text):
                    raise ValueError
            except (StopIteration, ValueError):
                # Anything else (whitespace, an error): the decoder's own
                # verdict, so errors keep its message.
                raw = self._decoder.decode(text)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"not valid JSON: {exc}") from None
        except RecursionError:
            # Far past the data model's depth (protocol.md 2.1): refused as
            # such, though no id can be read from it.
            raise ProtocolError(
                ErrorCode.BAD_ENVELOPE, f"nested deeper than {self.limits.max_depth} levels"
            ) from None
        if _SURROGATE_ESCAPE.search(payload) and not _encodable(raw):
            # "\ud800" decodes to a lone surrogate, which no UTF-8 peer can hold.
            raise ProtocolError(ErrorCode.BAD_FRAME, "lone UTF-16 surrogate escape")
        return raw

    def _plainly_inside(self, payload: bytes) -> bool:
        """True when the text alone shows every value is in the data model.

        Most frames are small and plain: no number that could overflow (16
        digits in a row, or a 3-digit exponent), fewer brackets than the depth
        limit and fewer bytes than two per allowed value. Those need no walk
        over the decoded value (the walk costs ~0.1 us per value); the rest
        are checked value by value.
        """
        return (
            len(payload) < 2 * self.limits.max_values - 1
            and _numbers_exact(payload)
            and self._shallow(payload)
        )

    def _shallow(self, payload: bytes) -> bool:
        """True when the text shows nothing nests deeper than the depth limit."""
        limits = self.limits
        # Strip the text down to its brackets and peel off the
        # innermost pairs, one level per pass (brackets inside strings can
        # only make this stricter).
        skeleton = payload.translate(None, _NOT_BRACKETS)
        if len(skeleton) < limits.max_depth:
            # Fewer brackets than levels: nothing can nest too deep.
            return True
        for _ in range(limits.max_depth - 1):
            if not skeleton:
                return True
            # A marker keeps a parent that this pass empties from going too.
            leaves = skeleton.replace(b"{}", b"x").replace(b"[]", b"x")
            skeleton = leaves.replace(b"x", b"")
        return not skeleton


# The deepest data-model limit under which the JSON codec lets orjson parse.
_ORJSON_MAX_DEPTH = 512


def _numbers_exact(payload: bytes) -> bool:
    """True when no number in the text can be an integer past 2^53-1 or a
    float that overflows: then every parser reads each number alike."""
    shape = payload.translate(_NUMBER_SHAPE, b"+-")
    return b"1111111111111111" not in shape and b"e111" not in shape


# An integer beyond 2^53-1 has at least 16 digits; a double overflows only
# with a 3-digit exponent or 300-odd digits. Found by substring search in the
# text's "shape" (digits -> 1, e/E -> e, signs dropped), which runs at C
# speed; strings are searched too: a false alarm only costs the exact check.
_NUMBER_SHAPE = bytes(
    ord("1") if 48 <= b <= 57 else ord("e") if b in b"eE" else ord(".") for b in range(256)
)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")

# The compact form of an envelope with only type, id, timestamp and ref,
# and with data too (to_wire's order: data before ref).
_REPLY_ONLY = '{"type":"%s","id":%s,"timestamp":%d,"ref":%s}'
_REPLY_WITH_DATA = '{"type":"%s","id":%s,"timestamp":%d,"data":%s,"ref":%s}'
_REPLY_WITH_PACKED = b'{"type":"%s","id":%s,"timestamp":%d,"ref":%s,"data":%s}'
# json's own string encoder (ensure_ascii=False), as JsonCodec's encoder uses.
_json_string = json.encoder.encode_basestring
# The wire name of each type (``MessageType.value`` is a slower property).
_TYPE_NAMES = {kind: kind.value for kind in MessageType}
_TYPE_BYTES = {kind: kind.value.encode("ascii") for kind in MessageType}
_ONLY_STR = frozenset({str})
# The scalars a flat result may hold besides numbers (whose range is checked).
_LEAVES = frozenset({str, bool, type(None)})
_MIN_SAFE = -MAX_SAFE_INTEGER
_MAX_FLOAT = sys.float_info.max
_MIN_FLOAT = -_MAX_FLOAT


def _plain_leaves(members: Iterable[Any]) -> bool:
    """Every member a plain scalar: integers within +-(2^53-1), floats finite."""
    for member in members:
        leaf = type(member)
        if leaf is int:
            if not _MIN_SAFE <= member <= MAX_SAFE_INTEGER:
                return False
        elif leaf is float:
            if not _MIN_FLOAT <= member <= _MAX_FLOAT:  # (NaN compares false)
                return False
        elif leaf not in _LEAVES:
            return False
    return True


def packed_result(value: Any, limits: DataLimits) -> CompactData | None:
    """A handler's result checked against the data model and encoded in one go.

    A flat object or array (members that are plain scalars: exact ``str``,
    ``int``, ``float``, ``bool`` or None; the shape of most results) is
    checked by one loop over its members that looks only at what the
    encoding cannot show: the keys' type (the encoder turns ``{1: "a"}``
    into ``{"1":"a"}``), each integer's range and each float's finiteness
    (orjson writes NaN as null). Both encoders refuse lone surrogates; the
    shape bounds the depth and the count. Such a value is encoded by orjson
    where it is installed (``fast_dumps``): the same JSON values as the
    stdlib's, some floats written otherwise (``1e-7`` for ``1e-07``).

    For the other plain shapes (an object whose members hold no further
    object, or an array holding none) the compact JSON text shows what the
    walk of ``check_value`` would: the brackets bound the depth, the length
    bounds the value count, and no 16 digits in a row means no integer past
    2^53-1; the keys of the one object allowed are checked by type. None:
    not such a shape, or not plainly inside; the caller checks with
    ``check_value`` instead (which also names what is wrong).
    """
    kind = type(value)
    if kind is dict:
        if not _ONLY_STR.issuperset(map(type, value)):
            return None  # (the encoder would turn {1: "a"} into {"1":"a"})
        members: Any = value.values()
        objects = 1
    elif kind is list:
        members = value
        objects = 0
    else:
        return None
    if len(value) < limits.max_values and limits.max_depth > 2 and _plain_leaves(members):
        try:  # (lone surrogates are refused here)
            if fast_dumps is not None:
                return CompactData(fast_dumps(value))
            return CompactData(compact(value).encode("utf-8"))
        except Exception:
            return None
    try:
        payload = compact(value).encode("utf-8")
    except Exception:  # NaN, a lone surrogate, an object JSON cannot hold ...
        return None
    if (
        payload.count(b"{") != objects  # (a brace inside a string: only a false alarm)
        or len(payload) >= limits.max_values
        or len(payload.translate(None, _NOT_BRACKETS)) >= limits.max_depth - 2
        or b"1111111111111111" in payload.translate(_NUMBER_SHAPE, b"+-")
    ):
        return None
    return CompactData(payload)


def _encodable(value: object) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class MsgpackCodec:
    subprotocol = MSGPACK_SUBPROTOCOL
    binary = True

    def __init__(self, limits: DataLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits

    def encode(self, envelope: Envelope) -> bytes:
        packed: bytes = msgpack.packb(envelope.to_wire(), use_bin_type=True)
        return packed

    def decode(self, payload: bytes, is_binary: bool) -> Envelope:
        if not is_binary:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"{self.subprotocol} uses binary frames")
        try:
            raw = msgpack.unpackb(payload, raw=False, strict_map_key=True, max_ext_len=0)
        except Exception as exc:  # msgpack raises several unrelated types
            raise ProtocolError(ErrorCode.BAD_FRAME, f"not valid msgpack: {exc}") from None
        # bin values arrive as bytes and fail the data model with 4001 and
        # the envelope's id; strings were decoded as strict UTF-8.
        return Envelope.from_wire(raw, self.limits, strings_checked=True)


class CodecRegistry:
    """Subprotocol name -> codec; the first registered is the default.

    ``default_codecs()`` holds JSON (the default, also used when a client
    offers no subprotocol) and MessagePack. Pass ``Hub(codecs=...)`` to add or
    restrict codecs.
    """

    def __init__(self, codecs: Iterable[Codec] = ()) -> None:
        self._codecs: dict[str, Codec] = {}
        for codec in codecs:
            self.register(codec)

    def register(self, codec: Codec) -> None:
        if codec.subprotocol in self._codecs:
            raise ValueError(f"codec {codec.subprotocol!r} is already registered")
        self._codecs[codec.subprotocol] = codec

    @property
    def subprotocols(self) -> list[str]:
        return list(self._codecs)

    @property
    def default(self) -> Codec:
        return next(iter(self._codecs.values()))

    def get(self, subprotocol: str) -> Codec | None:
        return self._codecs.get(subprotocol)

    def negotiate(self, offered: Iterable[str]) -> Codec | None:
        """The first offered subprotocol we support; the default if none offered.

        Returns None when the client offered subprotocols and none is ours: the
        handshake must then fail rather than silently pick a codec.
        """
        offered = list(offered)
        if not offered:
            return self.default
        for name in offered:
            codec = self._codecs.get(name)
            if codec is not None:
                return codec
        return None


def default_codecs(limits: DataLimits = DEFAULT_LIMITS) -> CodecRegistry:
    """JSON (the default), MessagePack and Protocol Buffers, enforcing
    ``limits`` at decode."""
    # Imported here: protobuf.py imports this module's siblings only, but
    # keeping the protobuf runtime off the import path of ``codecs`` keeps
    # ``import warpsocket.protocol`` light.
    from warpsocket.protocol.protobuf import ProtobufCodec

    return CodecRegistry([JsonCodec(limits), MsgpackCodec(limits), ProtobufCodec(limits)])
