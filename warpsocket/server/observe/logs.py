"""Structured logs: one JSON object per line (``--log-format json``).

The schema (docs/observability.md) is stable: ``time`` (ISO 8601, UTC),
``level``, ``namespace``, ``message`` (the formatted text), ``trace_id`` and
``span_id`` when the event was logged inside a span or names a traced
message, ``error`` (the traceback) for failures, and ``fields``: the event's
own keys that are JSON scalars (secrets masked), e.g. ``message_id``,
``stream``, ``offset``, ``session`` of a slow-message warning.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    textFileLogObserver,
)
from zope.interface import provider

from warpsocket.server.observe.redact import REDACTED, SECRET_KEYS

LOG_FORMATS = ("text", "json")
_SCALARS = (str, int, float, bool, type(None))


def _current_span_ids() -> tuple[str | None, str | None]:
    try:
        from opentelemetry import trace
    except ImportError:  # the otel extra is not installed
        return None, None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None, None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def json_line(event: LogEvent) -> str:
    """The JSON line of one log event (without the newline)."""
    level = event.get("log_level")
    trace_id, span_id = _current_span_ids()
    fields: dict[str, Any] = {}
    for key, value in event.items():
        if key.startswith("log_") or key in ("format", "message", "isError", "time", "system"):
            continue
        if key.lower() in SECRET_KEYS:
            fields[key] = REDACTED
        elif isinstance(value, _SCALARS):
            fields[key] = value
    if trace_id is None and isinstance(fields.get("trace_id"), str):
        trace_id = fields["trace_id"]
    line: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), timezone.utc).isoformat(
            timespec="milliseconds"
        ),
        "level": level.name if isinstance(level, type(LogLevel.info)) else "info",
        "namespace": event.get("log_namespace", ""),
        "message": formatEvent(event),
    }
    if trace_id is not None:
        line["trace_id"] = trace_id
    if span_id is not None:
        line["span_id"] = span_id
    failure = event.get("log_failure")
    if failure is not None:
        line["error"] = failure.getTraceback()
    if fields:
        line["fields"] = fields
    return json.dumps(line, ensure_ascii=False, default=repr)


def json_log_observer(out: IO[str]) -> ILogObserver:
    """Writes ``json_line`` of every event to ``out``, one line each."""

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        out.write(json_line(event) + "\n")
        out.flush()

    return observe  # type: ignore[no-any-return]


def log_observer(fmt: str, out: IO[str], debug: bool = False) -> ILogObserver:
    """The observer for ``--log-format``: ``json`` lines or readable ``text``
    lines, at info level and up (debug too with ``debug``)."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    inner = json_log_observer(out) if fmt == "json" else textFileLogObserver(out)
    predicate = LogLevelFilterPredicate(LogLevel.debug if debug else LogLevel.info)
    return FilteringLogObserver(inner, [predicate])


def use_for_twistd(service: Any, observer: ILogObserver) -> None:
    """Make ``observer`` twistd's log observer: twistd takes the application's
    ``ILogObserver`` component, and the application is the service's parent
    (set by twistd before it starts logging)."""
    set_parent: Callable[[Any], Any] = service.setServiceParent

    def parented(parent: Any) -> Any:
        if hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, observer)
        return set_parent(parent)

    service.setServiceParent = parented


__all__ = ["LOG_FORMATS", "json_line", "json_log_observer", "log_observer", "use_for_twistd"]
