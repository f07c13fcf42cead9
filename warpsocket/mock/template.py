"""The scenario's data templates: ``{{name}}`` placeholders, nothing else.

A template is any JSON value. In its strings, ``{{seq}}``, ``{{now}}``,
``{{session}}``, ``{{user}}``, ``{{room}}``, ``{{event}}``, ``{{data}}`` and
``{{data.a.b}}`` are replaced (docs/mock.md). A string that is exactly one
placeholder becomes the value itself (a number stays a number, an object an
object); inside a longer string the value is written as text (JSON for
objects). No expressions, no calls, no attribute access: a path only walks
dict keys and list indexes of the trigger's data, so a template cannot reach
anything else.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*|[0-9]+")

# Every name a placeholder may start with.
NAMES = frozenset({"seq", "now", "session", "user", "room", "event", "data"})
# The names each kind of trigger provides (the rest are template errors).
ALWAYS = frozenset({"seq", "now"})


class TemplateError(ValueError):
    pass


@dataclass(frozen=True)
class Template:
    """A compiled template (``render`` it with the values of one firing)."""

    value: Any
    names: frozenset[str]

    def render(self, values: Mapping[str, Any]) -> Any:
        return _render(self.value, values)


def compile_template(value: Any, allowed: Iterable[str]) -> Template:
    """Check every placeholder of ``value``; raises TemplateError naming the bad one."""
    allowed = frozenset(allowed)
    used: set[str] = set()
    _check(value, allowed, used)
    return Template(value, frozenset(used))


def _check(value: Any, allowed: frozenset[str], used: set[str]) -> None:
    if isinstance(value, str):
        for match in _PLACEHOLDER.finditer(value):
            path = match.group(1).split(".")
            if not all(_NAME.fullmatch(part) for part in path):
                raise TemplateError(f"bad placeholder {match.group(0)!r}")
            head = path[0]
            if head not in NAMES:
                raise TemplateError(
                    f"unknown placeholder {match.group(0)!r} (known: {', '.join(sorted(NAMES))})"
                )
            if head not in allowed:
                raise TemplateError(f"{match.group(0)!r} is not available for this trigger")
            if len(path) > 1 and head != "data":
                raise TemplateError(f"only data has fields: {match.group(0)!r}")
            used.add(head)
    elif isinstance(value, list):
        for item in value:
            _check(item, allowed, used)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check(key, allowed, used)
            _check(item, allowed, used)


def _lookup(path: list[str], values: Mapping[str, Any]) -> Any:
    found: Any = values.get(path[0])
    for part in path[1:]:
        if isinstance(found, dict):
            found = found.get(part)
        elif isinstance(found, list) and part.isdigit() and int(part) < len(found):
            found = found[int(part)]
        else:
            return None
    return found


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _render(value: Any, values: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        whole = _PLACEHOLDER.fullmatch(value)
        if whole is not None:
            return _lookup(whole.group(1).split("."), values)
        if "{{" not in value:
            return value
        return _PLACEHOLDER.sub(lambda m: _text(_lookup(m.group(1).split("."), values)), value)
    if isinstance(value, list):
        return [_render(item, values) for item in value]
    if isinstance(value, dict):
        return {_text(_render(k, values)): _render(v, values) for k, v in value.items()}
    return value
