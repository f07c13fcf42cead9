"""Envelopes as wire mappings, with the fields an extension adds (``sig``).

``Envelope`` keeps unknown fields in ``extra`` and never sends them, so a
signed envelope is written from its mapping by the codec's own format
(JSON, MessagePack or Protobuf, the built-in codecs).
"""

from __future__ import annotations

from typing import Any

import msgpack

from warpsocket.protocol.codecs import JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL, Codec
from warpsocket.protocol.envelope import Envelope
from warpsocket.protocol.jsontext import compact
from warpsocket.protocol.protobuf import PROTOBUF_SUBPROTOCOL, encode_mapping


def wire_of(envelope: Envelope) -> dict[str, Any]:
    """The mapping the peer sent (or will be sent): known and unknown fields."""
    wire = envelope.to_wire()
    if envelope.extra:
        wire.update(envelope.extra)
    return wire


def encode_wire(codec: Codec, wire: dict[str, Any]) -> bytes:
    """A wire mapping in ``codec``'s format; only the built-in codecs can."""
    if codec.subprotocol == JSON_SUBPROTOCOL:
        return compact(wire).encode("utf-8")
    if codec.subprotocol == MSGPACK_SUBPROTOCOL:
        packed: bytes = msgpack.packb(wire, use_bin_type=True)
        return packed
    if codec.subprotocol == PROTOBUF_SUBPROTOCOL:
        return encode_mapping(wire)
    raise ValueError(f"signatures need a built-in codec, not {codec.subprotocol!r}")
