"""The canonical JSON form of values (RFC 8785, JCS), and base64url.

Signatures and the associated data of ciphertexts are computed over bytes
that every peer must rebuild identically from a decoded value, whatever the
codec and language: JCS gives exactly that for the data model (protocol.md
2.1). Numbers follow ECMAScript's ``Number.prototype.toString`` (so ``3.0``
and ``3`` are the same, as they are to a JavaScript peer), strings are
escaped minimally, object members are sorted by UTF-16 code units.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

_escape = json.encoder.encode_basestring  # json's ensure_ascii=False escaping: JCS's


class CanonicalError(ValueError):
    """A value outside the data model (a NaN, bytes, a non-string key ...)."""


def canonical_json(value: Any) -> bytes:
    """``value`` in canonical JSON (RFC 8785), as UTF-8 bytes."""
    out: list[str] = []
    _write(value, out)
    return "".join(out).encode("utf-8")


def _write(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_escape(value))
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        out.append(es_number(value))
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _write(item, out)
        out.append("]")
    elif isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise CanonicalError("object keys must be strings")
        out.append("{")
        for index, key in enumerate(sorted(value, key=_utf16)):
            if index:
                out.append(",")
            out.append(_escape(key))
            out.append(":")
            _write(value[key], out)
        out.append("}")
    else:
        raise CanonicalError(f"{type(value).__name__} is outside the data model")


def _utf16(key: str) -> bytes:
    # Big-endian UTF-16 compares bytewise as the code units do (RFC 8785 3.2.3).
    return key.encode("utf-16-be", "surrogatepass")


def es_number(number: float) -> str:
    """A float as ECMAScript's ``Number.prototype.toString`` writes it."""
    if not math.isfinite(number):
        raise CanonicalError("NaN and infinities are outside the data model")
    if number == 0:
        return "0"
    if number < 0:
        return "-" + es_number(-number)
    # repr gives the shortest digits that round-trip, as ECMAScript does.
    mantissa, _, exponent = repr(number).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    point = len(whole) + (int(exponent) if exponent else 0)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    digits = stripped.rstrip("0")
    k, n = len(digits), point
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * -n + digits
    e = n - 1
    sign = "+" if e >= 0 else "-"
    head = digits if k == 1 else digits[0] + "." + digits[1:]
    return f"{head}e{sign}{abs(e)}"


def b64url(raw: bytes) -> str:
    """base64url without padding (RFC 4648 section 5)."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def b64url_decode(text: object) -> bytes | None:
    """Strict base64url without padding; None for anything else (hostile input)."""
    if not isinstance(text, str) or len(text) % 4 == 1 or not set(text) <= _B64URL:
        return None
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    # Non-canonical trailing bits would give two texts for one value.
    return raw if b64url(raw) == text else None
