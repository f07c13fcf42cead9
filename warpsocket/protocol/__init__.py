"""The wire layer: envelopes, codecs and error codes. Sans-I/O."""

from warpsocket.protocol.codecs import (
    JSON_SUBPROTOCOL,
    MSGPACK_SUBPROTOCOL,
    Codec,
    CodecRegistry,
    JsonCodec,
    MsgpackCodec,
    default_codecs,
)
from warpsocket.protocol.codes import CODE_INFO, ErrorCode, ProtocolError
from warpsocket.protocol.envelope import Envelope, MessageType

__all__ = [
    "CODE_INFO",
    "JSON_SUBPROTOCOL",
    "MSGPACK_SUBPROTOCOL",
    "Codec",
    "CodecRegistry",
    "Envelope",
    "ErrorCode",
    "JsonCodec",
    "MessageType",
    "MsgpackCodec",
    "ProtocolError",
    "default_codecs",
]
