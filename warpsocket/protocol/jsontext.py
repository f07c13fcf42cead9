"""Compact JSON text, with the standard library's encoder made once.

``json.JSONEncoder.encode`` builds a new C encoder object (and a closure) on
every call; per message that is most of what encoding a small envelope costs.
``compact`` keeps one, made without the encoder's circular-reference markers
(which it cannot share between calls: an error leaves entries behind), and
gives exactly what ``JSONEncoder(separators=(",", ":"), ensure_ascii=False,
allow_nan=False).encode`` gives. What it cannot encode is handed to that
encoder, so every error is the one it raises (a cycle included, which the
data model keeps out of every envelope anyway: it bounds the values).
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Callable
from typing import Any

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


__all__ = ["ENCODER", "compact"]
