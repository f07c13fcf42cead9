"""The ``trace`` envelope field: W3C Trace Context (protocol.md, "Trace context").

Sans-I/O and free of OpenTelemetry: it only validates and carries the two
header values. An invalid ``trace`` is ignored (as if absent), never an
error: a peer that does not know the field ignores it too (protocol.md 2),
so both kinds of receiver treat the envelope alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# version 00 only: "00-" 32 hex "-" 16 hex "-" 2 hex, lower case (55 characters).
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_ZERO_TRACE = "0" * 32
_ZERO_PARENT = "0" * 16
MAX_TRACESTATE_LENGTH = 512
# Printable ASCII: what a tracestate header may hold.
_TRACESTATE = re.compile(r"[\x20-\x7e]{1,512}")


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A validated ``trace`` value: ``traceparent`` and optional ``tracestate``."""

    traceparent: str
    tracestate: str | None = None

    @property
    def trace_id(self) -> str:
        """The 32 hex digits naming the trace."""
        return self.traceparent[3:35]

    @property
    def parent_id(self) -> str:
        """The 16 hex digits naming the sender's span."""
        return self.traceparent[36:52]

    def to_wire(self) -> dict[str, str]:
        wire = {"traceparent": self.traceparent}
        if self.tracestate is not None:
            wire["tracestate"] = self.tracestate
        return wire


def valid_traceparent(value: object) -> bool:
    if not isinstance(value, str):
        return False
    match = _TRACEPARENT.fullmatch(value)
    return match is not None and match[1] != _ZERO_TRACE and match[2] != _ZERO_PARENT


def parse_trace(raw: object) -> TraceContext | None:
    """The ``trace`` field of a received envelope, or None when it is invalid.

    A valid ``traceparent`` with an invalid ``tracestate`` keeps the former
    and drops the latter (W3C Trace Context 3.3.1.1). Other keys are ignored.
    """
    if not isinstance(raw, dict):
        return None
    parent: Any = raw.get("traceparent")
    if not valid_traceparent(parent):
        return None
    state: Any = raw.get("tracestate")
    if not (isinstance(state, str) and _TRACESTATE.fullmatch(state)):
        state = None
    return TraceContext(parent, state)


__all__ = ["MAX_TRACESTATE_LENGTH", "TraceContext", "parse_trace", "valid_traceparent"]
