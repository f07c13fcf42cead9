"""The data model every value in an envelope must stay in (protocol.md 2.1).

Both codecs, the Python peers and the TypeScript client carry exactly these
values, so anything accepted round-trips unchanged through JSON, MessagePack,
Python and JavaScript: null, booleans, strings (no lone surrogates), finite
numbers with integers inside +-(2^53-1), arrays and objects with string keys;
no deeper than ``max_depth`` levels (the envelope is level 1) and no more than
``max_values`` values in all (each array, object and scalar counts once).

Checked when a frame is decoded, so an envelope outside it is refused with
``4001`` before anything is stored, and before an application's own data is
stored, so a stream can never hold a message some member cannot be sent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MAX_SAFE_INTEGER = 2**53 - 1
DEFAULT_MAX_DEPTH = 64
DEFAULT_MAX_MESSAGE_SIZE = 1_048_576
# One value per 8 bytes of the size limit: a decoded value costs at least a
# pointer, and most far more, so this bounds what one frame can expand to.
BYTES_PER_VALUE = 8
MIN_MAX_VALUES = 1024


class DataModelError(ValueError):
    """A value outside the data model; ``path`` names where (``data.items[3]``)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(frozen=True, slots=True)
class DataLimits:
    """How deep and how large one envelope's values may be (protocol.md 2.1).

    ``max_depth`` counts levels with the envelope as level 1 (64 by default);
    ``max_values`` counts every array, object and scalar once. A server
    derives both from its message size limit (``CoreOptions.data_limits``,
    ``for_message_size``); codecs take them to check every decoded frame.
    """

    max_depth: int = DEFAULT_MAX_DEPTH
    max_values: int = DEFAULT_MAX_MESSAGE_SIZE // BYTES_PER_VALUE

    def __post_init__(self) -> None:
        if self.max_depth < 2:
            raise ValueError("max_depth must be at least 2")
        if self.max_values < 1:
            raise ValueError("max_values must be positive")

    @classmethod
    def for_message_size(
        cls, max_message_size: int, max_depth: int = DEFAULT_MAX_DEPTH
    ) -> DataLimits:
        """The limits in proportion to a message size limit (the server's default)."""
        return cls(max_depth, max(MIN_MAX_VALUES, max_message_size // BYTES_PER_VALUE))


DEFAULT_LIMITS = DataLimits()

_SCALARS = (type(None), bool, str)


def check_value(
    value: Any,
    limits: DataLimits = DEFAULT_LIMITS,
    *,
    path: str = "data",
    depth: int = 2,
    strings_checked: bool = False,
    budget: int | None = None,
) -> int:
    """Raise ``DataModelError`` unless ``value`` is inside the model.

    ``depth`` is the level ``value`` sits at (``data`` is level 2).
    ``strings_checked``: the decoder already refused lone surrogates (saves
    re-encoding every string). ``budget``: how many values are still allowed
    (default ``limits.max_values``). Returns how many values it counted.
    """
    allowed = limits.max_values if budget is None else budget
    if type(value) in _SCALARS and strings_checked:
        return _count_one(allowed, path)
    if type(value) is dict and len(value) < allowed and depth < limits.max_depth:
        # A flat object of plain scalars (most results and payloads): one
        # loop, no stack. Anything else is the general walk's.
        for key, member in value.items():
            kind = type(member)
            if (
                type(key) is not str
                or not (strings_checked or key.isascii() or valid_text(key))
                or not (
                    member is None
                    or kind is bool
                    or (kind is str and (strings_checked or member.isascii()))
                    or (kind is int and -MAX_SAFE_INTEGER <= member <= MAX_SAFE_INTEGER)
                    or (kind is float and math.isfinite(member))
                )
            ):
                break
        else:
            return len(value) + 1
    # The fast pass: one loop, no paths. Only a failure pays for a second
    # pass that finds and names the offending value.
    count = _scan(value, depth, limits.max_depth, allowed, strings_checked)
    if count < 0:
        _explain(value, path, depth, limits.max_depth, allowed, strings_checked)
        raise DataModelError(path, "outside the data model")  # not reached
    return count


def _count_one(allowed: int, path: str) -> int:
    if allowed < 1:
        raise DataModelError(path, "too many values in one message")
    return 1


def _scan(value: Any, depth: int, max_depth: int, allowed: int, strings_checked: bool) -> int:
    """How many values ``value`` holds, or -1 when anything is outside the model."""
    count = 0
    stack: list[tuple[Any, int]] = [(value, depth)]
    pop = stack.pop
    push = stack.append
    while stack:
        item, level = pop()
        count += 1
        if count > allowed:
            return -1
        kind = type(item)
        if kind is str:
            if not strings_checked and not valid_text(item):
                return -1
        elif kind is int:
            if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                return -1
        elif kind is float:
            if not math.isfinite(item):
                return -1
        elif kind is dict:
            if level >= max_depth and item:
                return -1
            for key, member in item.items():
                if type(key) is not str or (not strings_checked and not valid_text(key)):
                    return -1
                push((member, level + 1))
        elif kind is list:
            if level >= max_depth and item:
                return -1
            for member in item:
                push((member, level + 1))
        elif item is None or kind is bool:
            pass
        else:
            # Subclasses and tuples (an application's own values): judged as
            # what they are, as the codecs would encode them.
            converted = _plain(item)
            if converted is _OUTSIDE:
                return -1
            count -= 1
            push((converted, level))
    return count


_OUTSIDE = object()


def _plain(item: Any) -> Any:
    if isinstance(item, bool):
        return bool(item)
    if isinstance(item, int):
        return int(item)
    if isinstance(item, float):
        return float(item)
    if isinstance(item, str):
        return str(item)
    if isinstance(item, (list, tuple)):
        return list(item)
    if isinstance(item, dict):
        return dict(item)
    return _OUTSIDE


def valid_text(text: str) -> bool:
    """True unless ``text`` holds a lone surrogate (no UTF-8 peer can hold it)."""
    if text.isascii():  # (a flag of the string: no encoding needed)
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _explain(
    value: Any, path: str, depth: int, max_depth: int, allowed: int, strings_checked: bool
) -> None:
    """Walk again, in document order, and raise for the first offending value."""
    seen = 0

    def visit(item: Any, where: str, level: int) -> None:
        nonlocal seen
        seen += 1
        if seen > allowed:
            raise DataModelError(where, "too many values in one message")
        kind = type(item)
        if kind is not bool and kind is not type(None):
            plain = _plain(item)
            if plain is _OUTSIDE:
                raise DataModelError(where, f"{type(item).__name__} is not in the data model")
            item = plain
        if isinstance(item, str):
            if not strings_checked and not valid_text(item):
                raise DataModelError(where, "string holds a lone surrogate")
        elif isinstance(item, bool) or item is None:
            return
        elif isinstance(item, int):
            if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                raise DataModelError(where, "integer outside +-(2^53-1)")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise DataModelError(where, "number is not finite")
        elif isinstance(item, dict):
            if level >= max_depth and item:
                raise DataModelError(where, f"nested deeper than {max_depth} levels")
            for key, member in item.items():
                if not isinstance(key, str):
                    raise DataModelError(where, "object keys must be strings")
                if not strings_checked and not valid_text(key):
                    raise DataModelError(where, "object key holds a lone surrogate")
                visit(member, f"{where}.{_short(key)}", level + 1)
        elif isinstance(item, list):
            if level >= max_depth and item:
                raise DataModelError(where, f"nested deeper than {max_depth} levels")
            for index, member in enumerate(item):
                visit(member, f"{where}[{index}]", level + 1)

    visit(value, path, depth)


def _short(key: str) -> str:
    return key if len(key) <= 32 else key[:29] + "..."


__all__ = [
    "DEFAULT_LIMITS",
    "MAX_SAFE_INTEGER",
    "DataLimits",
    "DataModelError",
    "check_value",
    "valid_text",
]
