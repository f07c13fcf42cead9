"""The common WebSocket frame, read and written without Autobahn's general machinery.

Almost every frame a WarpSocket server sees is one whole, masked, unfragmented,
uncompressed text or binary frame of a few hundred bytes, and almost every
frame it writes is one such frame, unmasked. Autobahn handles every case of
RFC 6455 through a per-frame state machine (header object, masker object,
incremental UTF-8 validator, message begin/data/end callbacks, an observer
event with a future per message, debug-log arguments built eagerly); for this
one case that costs more CPU than everything WarpSocket does with the message.

``read_simple_frame`` recognises exactly that case and returns ``None`` for
anything else (control frames, fragments, RSV bits, unmasked frames, 64-bit
lengths, non-minimal lengths, sizes over the limit, incomplete frames): the
caller then hands the bytes to Autobahn, which enforces the RFC and fails the
connection with the right close code. So this module never decides that a
frame is bad; it only takes the fast path when a frame is plainly good.
"""

from __future__ import annotations

import struct

from warpsocket import _compat

OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2
# FIN set, RSV clear, opcode text / binary.
_FIN_TEXT = 0x80 | OPCODE_TEXT
_FIN_BINARY = 0x80 | OPCODE_BINARY
# Above this, Autobahn's C masker is faster than Python's big-integer XOR.
_INT_UNMASK_MAX = 512
_masker = _compat.xor_masker()
# Headers with a 16-bit and a 64-bit payload length (network byte order).
_HEAD_16 = struct.Struct("!BBH").pack
_HEAD_64 = struct.Struct("!BBQ").pack


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR ``payload`` with the repeated 4-byte ``mask`` (RFC 6455 5.3)."""
    size = len(payload)
    if size > _INT_UNMASK_MAX:
        return _masker(payload, mask)
    key = (mask * ((size + 3) >> 2))[:size]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
        size, "little"
    )


def read_simple_frame(buffer: bytes, start: int, limit: int) -> tuple[int, bool, bytes] | None:
    """The frame at ``buffer[start:]`` if it is a complete, masked, final,
    uncompressed text or binary frame whose payload is at most ``limit`` bytes
    (0: no limit) and fits a 7- or 16-bit length, with a text payload that is
    valid UTF-8: ``(end, is_binary, payload)``, payload unmasked. Else ``None``.
    """
    available = len(buffer) - start
    if available < 6:
        return None
    first = buffer[start]
    if first == _FIN_TEXT:
        is_binary = False
    elif first == _FIN_BINARY:
        is_binary = True
    else:
        return None
    second = buffer[start + 1]
    if not second & 0x80:
        return None  # unmasked: a protocol violation, Autobahn fails it
    length = second & 0x7F
    if length < 126:
        header = 2
    elif length == 126:
        if available < 8:
            return None
        length = (buffer[start + 2] << 8) | buffer[start + 3]
        if length < 126:
            return None  # not the minimal encoding: a protocol violation
        header = 4
    else:
        return None  # 64-bit lengths: large, rare, Autobahn's
    if limit and length > limit:
        return None  # Autobahn closes with 1009
    body = start + header + 4
    end = body + length
    if end > len(buffer):
        return None  # incomplete: Autobahn buffers it
    payload = unmask(buffer[body:end], buffer[body - 4 : body]) if length else b""
    if not is_binary:
        try:
            payload.decode("utf-8")  # strict: rejects overlongs and surrogates, as 6455 asks
        except UnicodeDecodeError:
            return None  # Autobahn closes with 1007
    return end, is_binary, payload


def frame(payload: bytes, is_binary: bool) -> bytes:
    """A final, unmasked (server-to-client) data frame carrying ``payload``."""
    size = len(payload)
    first = _FIN_BINARY if is_binary else _FIN_TEXT
    if size < 126:
        return bytes((first, size)) + payload
    if size < 0x10000:
        # (A result of a call, most often: one C call for the 4-byte header.)
        return _HEAD_16(first, 126, size) + payload
    return _HEAD_64(first, 127, size) + payload
