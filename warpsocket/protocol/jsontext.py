"""Compact JSON text, with the standard library's encoder made once.

``json.JSONEncoder.encode`` builds a new C encoder object (and a closure) on
every call; per message that is most of what encoding a small envelope costs.
``compact`` keeps one, made without the encoder's circular-reference markers
(which it cannot share between calls: an error leaves entries behind), and
gives exactly what ``JSONEncoder(separators=(",", ":"), ensure_ascii=False,
allow_nan=False).encode`` gives. What it cannot encode is handed to that
encoder, so every error is the one it raises (a cycle included, which the
data model keeps out of every envelope anyway: it bounds the values).

``fast_loads`` and ``fast_dumps`` are orjson's parser and encoder where it is
installed (CPython; setup.cfg), for the paths that check what orjson would
let through differently: see their callers in codecs.py.
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Callable
from typing import Any

try:
    import orjson
except ImportError:  # (PyPy, or a platform without its wheel): the stdlib does it all
    orjson = None  # type: ignore[assignment]

ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _c_encoder() -> Callable[[Any, int], Any] | None:
    """The C accelerator's encoder (CPython), or None (then ``ENCODER`` does all)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    try:
        made: Callable[[Any, int], Any] = make(
            None,  # markers: none (see the module docstring)
            ENCODER.default,
            json.encoder.encode_basestring,  # ensure_ascii=False
            None,  # indent
            ":",
            ",",
            False,  # sort_keys
            False,  # skipkeys
            False,  # allow_nan
        )
        if "".join(made({"a": [1, 2.5, "\u00e9", None, True]}, 0)) != ENCODER.encode(
            {"a": [1, 2.5, "\u00e9", None, True]}
        ):
            return None
    except Exception:  # another signature in another Python: the encoder does it
        return None
    return made


_encode = _c_encoder()


def compact(value: Any) -> str:
    """``value`` as compact JSON text (``ENCODER.encode(value)``, faster)."""
    if _encode is not None:
        try:
            return "".join(_encode(value, 0))
        except Exception:
            pass  # the encoder's own error, below
    text: str = ENCODER.encode(value)
    return text


# orjson's parser: bytes in, a value out; raises ValueError (its JSONDecodeError)
# on what is not JSON. Unlike the stdlib it reads integers past 64 bits as
# floats, reads frames nested up to 1,024 deep and refuses lone surrogate
# escapes; codecs.py only gives it text that shows no such integer and no
# nesting past the data model, and takes the stdlib's verdict on whatever it
# refuses.
fast_loads: Callable[[bytes], Any] | None = None if orjson is None else orjson.loads


def _orjson_dumps(value: Any) -> bytes:
    # Copied into a fresh bytes object: kept as orjson returns them (the dedup
    # window keeps every reply for a while), they made a call 2 us slower
    # (docs/performance.md, "Fourteenth round"); copied, 0.6 us faster.
    return b"%b" % (orjson.dumps(value),)


# orjson's encoder, or None. Unlike ``compact`` it writes NaN and infinities
# as null, some floats otherwise (1e-7 and 0.00001 for 1e-07 and 1e-05), and
# encodes dataclasses, enums, UUIDs and datetimes: only for values whose every
# member was checked to be a finite, exact JSON scalar (codecs.packed_result).
fast_dumps: Callable[[Any], bytes] | None = None if orjson is None else _orjson_dumps


__all__ = ["ENCODER", "compact", "fast_dumps", "fast_loads"]
