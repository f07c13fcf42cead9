"""Origin checks against an exact allowlist (cross-site WebSocket hijacking)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from warpsocket.protocol.codes import ErrorCode

# (scheme, host, port), or "null" for opaque origins (sandboxed frames, file:).
Origin = tuple[str, str, int]
ANY_ORIGIN = "*"
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def parse_origin(text: str, *, strict: bool = False) -> Origin | None:
    """``scheme://host[:port]`` as a comparable triple; None for ``null`` or garbage.

    With ``strict`` (configuration), anything but a bare origin raises ValueError.
    """
    value = text.strip()
    if value.lower() == "null":
        return None
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        if strict:
            raise ValueError(f"not an origin: {text!r}") from None
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname  # lower-cased by urlsplit
    if strict and (parts.path not in ("", "/") or parts.query or parts.fragment):
        raise ValueError(f"an origin has no path, query or fragment: {text!r}")
    if strict and (parts.username is not None or parts.password is not None):
        raise ValueError(f"an origin has no user info: {text!r}")
    if not scheme or not host or (port is None and scheme not in _DEFAULT_PORTS):
        if strict:
            raise ValueError(f"an origin is scheme://host[:port]: {text!r}")
        return None
    return scheme, host, port if port is not None else _DEFAULT_PORTS[scheme]


@dataclass(frozen=True)
class OriginPolicy:
    """Which ``Origin`` headers a WebSocket handshake may carry.

    - an origin in ``allowed`` (exact scheme, host and port) passes;
    - ``null`` passes only with ``allow_null``;
    - any other origin passes only with ``allow_any`` (the ``*`` entry), or
      when the allowlist is empty and every connection must authenticate
      with a token (a token, unlike a cookie, is not sent by a cross-site page);
    - a missing Origin (non-browser clients) is decided by the caller: it
      must present a token whenever an authenticator is configured.
    """

    allowed: frozenset[Origin] = frozenset()
    allow_any: bool = False
    allow_null: bool = False

    @classmethod
    def from_strings(cls, origins: Iterable[str], allow_null: bool = False) -> OriginPolicy:
        allowed: set[Origin] = set()
        allow_any = False
        for text in origins:
            if text.strip() == ANY_ORIGIN:
                allow_any = True
                continue
            if text.strip().lower() == "null":
                allow_null = True
                continue
            origin = parse_origin(text, strict=True)
            assert origin is not None
            allowed.add(origin)
        return cls(frozenset(allowed), allow_any, allow_null)

    def check(self, origin: str | None, auth_required: bool) -> ErrorCode | None:
        """None if the handshake may proceed; ``ORIGIN_REJECTED`` if not."""
        if origin is None or origin == "":
            return None
        if origin.strip().lower() == "null":
            return None if self.allow_null else ErrorCode.ORIGIN_REJECTED
        parsed = parse_origin(origin)
        if parsed is None:
            return ErrorCode.ORIGIN_REJECTED
        if parsed in self.allowed or self.allow_any:
            return None
        if not self.allowed and auth_required:
            return None
        return ErrorCode.ORIGIN_REJECTED
