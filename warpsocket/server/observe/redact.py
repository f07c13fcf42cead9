"""What logs and the inspector may show of an envelope: secrets masked, payloads cut."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from warpsocket.protocol.compact import CompactData
from warpsocket.protocol.envelope import Envelope

# Keys whose values are credentials wherever they appear in ``data``.
SECRET_KEYS = frozenset(
    {"token", "resume_token", "api_key", "apikey", "password", "secret", "authorization"}
)
REDACTED = "[redacted]"
# Characters of ``data`` (as JSON) shown before the rest is cut.
DATA_PREVIEW = 200


def _mask(value: Any, depth: int = 0) -> Any:
    if depth > 8:
        return "..."
    if isinstance(value, Mapping):
        return {
            k: REDACTED if isinstance(k, str) and k.lower() in SECRET_KEYS else _mask(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_mask(v, depth + 1) for v in value[:50]]
    return value


def safe_wire(envelope: Envelope, limit: int = DATA_PREVIEW) -> dict[str, Any]:
    """``envelope.to_wire()`` with secrets masked and ``data`` cut to ``limit``
    characters of JSON (then a string ending in an ellipsis)."""
    wire = envelope.to_wire(with_data=False)
    data = envelope.data
    if type(data) is CompactData:
        data = data.value
    if data is not None:
        masked = _mask(data)
        text = json.dumps(masked, ensure_ascii=False, separators=(",", ":"), default=repr)
        wire["data"] = masked if len(text) <= limit else text[:limit] + "..."
    return wire


__all__ = ["DATA_PREVIEW", "REDACTED", "SECRET_KEYS", "safe_wire"]
