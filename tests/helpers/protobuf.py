"""Build ``warpsocket.v1.Envelope`` frames from decoded JSON values, for tests
that feed the Protobuf codec what a hostile or future peer could send."""

from __future__ import annotations

from typing import Any

from warpsocket.protocol.protobuf import EnvelopeMessage, add_value

_STRINGS = ("type", "id", "event", "room", "stream", "epoch", "ref")
_UINTS = ("timestamp", "offset", "ttl", "code", "deadline")
_SINT64 = range(-(2**63), 2**63)


class NotExpressibleError(Exception):
    """The value has no Protobuf form (a field of the wrong type, a number
    beyond 64 bits): the JSON frame's problem cannot happen in Protobuf."""


def _tokenizable(value: Any) -> bool:
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, bool) or item is None or isinstance(item, (str, float)):
            continue
        elif not isinstance(item, int) or item not in _SINT64:
            return False
    return True


def frame_of(raw: Any) -> bytes:
    """The Protobuf frame of a decoded JSON envelope; raises NotExpressibleError."""
    if not isinstance(raw, dict):
        raise NotExpressibleError("not an object")
    message = EnvelopeMessage()
    extra: dict[str, Any] = {}
    for name, value in raw.items():
        if value is None:
            continue  # null is absent, as on the JSON wire
        if name in _STRINGS:
            if not isinstance(value, str):
                raise NotExpressibleError(name)
            setattr(message, name, value)
        elif name in _UINTS:
            if type(value) is not int or not 0 <= value < 2**64:
                raise NotExpressibleError(name)
            setattr(message, name, value)
        elif name == "ack":
            if not isinstance(value, bool):
                raise NotExpressibleError(name)
            message.ack = value
        elif name == "data":
            if not _tokenizable(value):
                raise NotExpressibleError(name)
            add_value(message.data, value)
        else:
            extra[name] = value
    if extra:
        if not _tokenizable(extra):
            raise NotExpressibleError("extra")
        add_value(message.extra, extra)
    encoded: bytes = message.SerializeToString()
    return encoded
