"""The chunked-transfer extension on the wire, shared by client and server.

docs/protocol.md "Extension: chunked transfers" is the normative text; this
module is its executable form: the ``transfer`` envelopes, their validation
(everything here arrives from the network and is hostile until checked),
the chunk encoding (base64url in both codecs) and the integrity hashes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from warpsocket.protocol.codes import ErrorCode, ProtocolError
from warpsocket.protocol.envelope import Envelope, MessageType

EXTENSION = "chunks"
# The stream event that announces a relayed transfer to its receivers.
ANNOUNCE_EVENT = "warpsocket.transfer"

DEFAULT_CHUNK_SIZE = 256 * 1024
MIN_CHUNK_SIZE = 1024
# Base64 grows a chunk by 4/3: 512 KiB stays well inside the 1 MiB message limit.
MAX_CHUNK_SIZE = 512 * 1024
DEFAULT_WINDOW = 8
MAX_WINDOW = 64
# A chunk that fails its hash this many times in a row ends the transfer (4620).
MAX_RESENDS = 8

OPS = frozenset({"offer", "chunk", "credit", "nack", "end", "done", "pull", "cancel"})
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_MAX_SAFE = 2**53 - 1


@dataclass(frozen=True)
class Params:
    """``welcome.data.extensions.chunks``: what the server grants."""

    chunk_size: int = DEFAULT_CHUNK_SIZE
    window: int = DEFAULT_WINDOW
    max_size: int = 4 * 1024**3
    max_transfers: int = 4
    relay: bool = True

    def to_wire(self) -> dict[str, Any]:
        return {
            "chunk_size": self.chunk_size,
            "window": self.window,
            "max_size": self.max_size,
            "max_transfers": self.max_transfers,
            "relay": self.relay,
        }

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> Params:
        """The server's parameters as a client reads them (hostile: clamped)."""

        def number(name: str, default: int, low: int, high: int) -> int:
            value = raw.get(name)
            if type(value) is not int:
                return default
            return max(low, min(high, value))

        return cls(
            chunk_size=number("chunk_size", DEFAULT_CHUNK_SIZE, MIN_CHUNK_SIZE, MAX_CHUNK_SIZE),
            window=number("window", DEFAULT_WINDOW, 1, MAX_WINDOW),
            max_size=number("max_size", 0, 0, _MAX_SAFE),
            max_transfers=number("max_transfers", 1, 1, 1024),
            relay=raw.get("relay") is True,
        )


def chunk_count(size: int, chunk_size: int) -> int:
    """Chunks of a transfer: all ``chunk_size`` bytes but the last; 0 for empty."""
    return -(-size // chunk_size)


def chunk_length(seq: int, size: int, chunk_size: int) -> int:
    return min(chunk_size, size - seq * chunk_size)


def encode_bytes(data: bytes) -> str:
    """base64url without padding (RFC 4648 section 5)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def decode_bytes(text: str) -> bytes:
    """The inverse of ``encode_bytes``; ``ValueError`` on anything else.

    Unused trailing bits are not checked: the chunk's hash is over the
    decoded bytes, so another spelling of the same bytes does no harm.
    """
    if len(text) % 4 == 1 or not text.isascii() or any(c in text for c in "+/="):
        raise ValueError("not unpadded base64url")
    try:
        return binascii.a2b_base64(
            text.translate(_FROM_URLSAFE) + "=" * (-len(text) % 4), strict_mode=True
        )
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc


_FROM_URLSAFE = str.maketrans("-_", "+/")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunk_data(transfer: str, seq: int, data: bytes) -> dict[str, Any]:
    return {
        "op": "chunk",
        "transfer": transfer,
        "seq": seq,
        "hash": digest(data),
        "bytes": encode_bytes(data),
    }


def envelope(ident: str, now_ms: int, data: dict[str, Any], code: int | None = None) -> Envelope:
    return Envelope(type=MessageType.TRANSFER, id=ident, timestamp=now_ms, data=data, code=code)


def cancel_data(transfer: str, code: ErrorCode | int, message: str) -> dict[str, Any]:
    known = ErrorCode(code) if code in ErrorCode._value2member_map_ else None
    name = known.wire_name if known is not None else "error"
    return {"op": "cancel", "transfer": transfer, "name": name, "message": message}


# ------------------------------------------------------------------ parsing


def valid_id(value: str) -> bool:
    return _ID.match(value) is not None


def valid_hex(value: str) -> bool:
    return _HEX64.match(value) is not None


def _bad(message: str, ref: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_ENVELOPE, message, ref)


@dataclass(frozen=True)
class Op:
    """A validated ``transfer`` envelope: its ``op``, transfer id and fields."""

    op: str
    transfer: str
    data: Mapping[str, Any]
    code: int | None = None

    def number(self, name: str) -> int:
        value: int = self.data[name]
        return value


def parse(env: Envelope) -> Op:
    """Validate a ``transfer`` envelope's ``data`` (protocol.md, the op table);
    raise ``ProtocolError`` (4001, with ``ref``) when it breaks a rule."""
    data = env.data
    if not isinstance(data, dict):
        raise _bad("`transfer` needs object `data`", env.id)
    op = data.get("op")
    if op not in OPS:
        raise _bad("unknown transfer op", env.id)
    transfer = data.get("transfer")
    if not isinstance(transfer, str) or not _ID.match(transfer):
        raise _bad("`data.transfer` must be 1-128 characters of [A-Za-z0-9_.:-]", env.id)
    if op == "offer":
        _uint(data, "size", env.id)
        _uint(data, "chunk_size", env.id, low=MIN_CHUNK_SIZE, high=MAX_CHUNK_SIZE)
        _text(data, "name", env.id, optional=True, limit=256)
        _text(data, "to", env.id, optional=True, limit=256)
        _text(data, "room", env.id, optional=True, limit=256)
        if data.get("to") is not None and data.get("room") is not None:
            raise _bad("an offer has `to` or `room`, not both", env.id)
    elif op == "chunk":
        _uint(data, "seq", env.id)
        if not isinstance(data.get("hash"), str) or not _HEX64.match(data["hash"]):
            raise _bad("`data.hash` must be 64 lowercase hex digits", env.id)
        if not isinstance(data.get("bytes"), str):
            raise _bad("`data.bytes` must be a base64url string", env.id)
    elif op in ("credit", "pull"):
        _uint(data, "next", env.id)
        _uint(data, "limit", env.id)
        if data["limit"] < data["next"]:
            raise _bad("`data.limit` must be >= `data.next`", env.id)
    elif op == "nack":
        _uint(data, "seq", env.id)
    elif op in ("end", "done") and (
        not isinstance(data.get("sha256"), str) or not _HEX64.match(data["sha256"])
    ):
        raise _bad("`data.sha256` must be 64 lowercase hex digits", env.id)
    return Op(op, transfer, data, env.code)


def _uint(
    data: Mapping[str, Any], name: str, ref: str, low: int = 0, high: int = _MAX_SAFE
) -> None:
    value = data.get(name)
    if type(value) is not int or not low <= value <= high:
        raise _bad(f"`data.{name}` must be an integer in {low}..{high}", ref)


def _text(
    data: Mapping[str, Any], name: str, ref: str, *, optional: bool = False, limit: int = 256
) -> None:
    value = data.get(name)
    if value is None and optional:
        return
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise _bad(f"`data.{name}` must be a string of 1-{limit} characters", ref)


def verified_chunk(op: Op, size: int, chunk_size: int) -> bytes | None:
    """The chunk's bytes when they decode, have the right length for their
    ``seq`` and match their hash; None otherwise (the receiver re-requests)."""
    try:
        raw = decode_bytes(op.data["bytes"])
    except ValueError:
        return None
    seq = op.number("seq")
    if len(raw) != chunk_length(seq, size, chunk_size) or digest(raw) != op.data["hash"]:
        return None
    return raw
