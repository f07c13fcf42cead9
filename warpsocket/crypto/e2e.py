"""End-to-end payload encryption, AES-256-GCM (protocol.md "Extension:
end-to-end encryption").

An encrypted ``data`` is ``{"$enc": {"alg": "A256GCM", "kid", "nonce", "ct"}}``:
a value of the data model, so the server routes it, stores it in stream
histories and replays it without the key. The associated data binds the
ciphertext to its key id, event name and scope (the stream it is meant for:
``room:<name>``, ``direct`` or ``broadcast``), so it cannot be moved to
another event or room. Keys come from a ``KeyProvider``; distributing them is
the application's job.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from warpsocket.crypto.canonical import b64url, b64url_decode, canonical_json
from warpsocket.protocol.codes import ErrorCode
from warpsocket.protocol.datamodel import DEFAULT_LIMITS, DataLimits, DataModelError, check_value

EXTENSION = "e2e.aes-gcm"
ALGORITHM = "A256GCM"
MARKER = "$enc"
AAD_PREFIX = b"warpsocket.e2e.v1\n"
KEY_BYTES = 32
NONCE_BYTES = 12
MAX_KID = 64


class E2EError(Exception):
    """A payload that cannot be opened: ``code`` is ``DECRYPT_FAILED`` (4600)
    or ``UNKNOWN_KEY`` (4603). It is reported, never delivered as data."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.wire_name} ({int(code)}): {message}")
        self.code = code
        self.message = message


class KeyProvider(Protocol):
    """Where encryption keys come from, per scope (``room:<name>``, ``direct``,
    ``broadcast``): the current key to seal with and any known key to open."""

    def sending_key(self, scope: str) -> tuple[str, bytes] | None:
        """(key id, 32-byte key) to encrypt for ``scope``; None: send in clear."""
        ...

    def receiving_key(self, scope: str, kid: str) -> bytes | None:
        """The key ``kid`` for ``scope``, or None when it is not known."""
        ...


@dataclass
class KeyRing:
    """Keys by id and the current one: rotation is ``add`` then ``use``; the
    old keys stay for opening until ``remove``d. One ring serves every scope
    (a per-session key); ``ScopedKeys`` gives each room its own."""

    keys: dict[str, bytes] = field(default_factory=dict)
    current: str | None = None

    def __post_init__(self) -> None:
        for kid, key in self.keys.items():
            _check_key(kid, key)
        if self.current is not None and self.current not in self.keys:
            raise ValueError(f"current key {self.current!r} is not in the ring")

    def add(self, kid: str, key: bytes) -> None:
        _check_key(kid, key)
        self.keys[kid] = key

    def use(self, kid: str) -> None:
        if kid not in self.keys:
            raise KeyError(kid)
        self.current = kid

    def remove(self, kid: str) -> None:
        self.keys.pop(kid, None)
        if self.current == kid:
            self.current = None

    def sending_key(self, scope: str) -> tuple[str, bytes] | None:
        return None if self.current is None else (self.current, self.keys[self.current])

    def receiving_key(self, scope: str, kid: str) -> bytes | None:
        return self.keys.get(kid)


@dataclass
class ScopedKeys:
    """A ``KeyRing`` per scope (``"room:chat"``), and ``default`` for the others
    (None: scopes without a ring are sent in clear and cannot be opened)."""

    rings: dict[str, KeyRing] = field(default_factory=dict)
    default: KeyRing | None = None

    def _ring(self, scope: str) -> KeyRing | None:
        return self.rings.get(scope, self.default)

    def sending_key(self, scope: str) -> tuple[str, bytes] | None:
        ring = self._ring(scope)
        return None if ring is None else ring.sending_key(scope)

    def receiving_key(self, scope: str, kid: str) -> bytes | None:
        ring = self._ring(scope)
        return None if ring is None else ring.receiving_key(scope, kid)


def _check_key(kid: str, key: bytes) -> None:
    if not isinstance(kid, str) or not 0 < len(kid) <= MAX_KID:
        raise ValueError(f"key ids are strings of 1-{MAX_KID} characters")
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise ValueError("AES-256-GCM keys are 32 bytes")


def scope_of(*, room: str | None = None, stream: str | None = None) -> str:
    """The scope of a message: its room's stream, else the stream it arrives
    on, else ``direct`` (a client's message to the server application)."""
    if room is not None:
        return "room:" + room
    return stream if stream is not None else "direct"


def associated_data(kid: str, event: str, scope: str) -> bytes:
    """What the ciphertext is bound to (authenticated, not encrypted)."""
    return AAD_PREFIX + canonical_json(
        {"alg": ALGORITHM, "kid": kid, "event": event, "scope": scope}
    )


def is_sealed(data: Any) -> bool:
    """True for a ``data`` that is an encrypted payload (``{"$enc": {...}}``)."""
    return isinstance(data, dict) and len(data) == 1 and MARKER in data


def seal(
    data: Any, kid: str, key: bytes, event: str, scope: str, nonce: bytes | None = None
) -> dict[str, Any]:
    """``data`` encrypted: the ``{"$enc": ...}`` value to send in its place.

    ``nonce`` is for test vectors only: a random 96-bit nonce per message is
    what keeps GCM safe (never reuse one with the same key).
    """
    _check_key(kid, key)
    nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
    if len(nonce) != NONCE_BYTES:
        raise ValueError("AES-GCM nonces are 12 bytes")
    sealed = AESGCM(key).encrypt(nonce, canonical_json(data), associated_data(kid, event, scope))
    return {MARKER: {"alg": ALGORITHM, "kid": kid, "nonce": b64url(nonce), "ct": b64url(sealed)}}


def open_sealed(
    data: Any,
    provider: KeyProvider,
    event: str,
    scope: str,
    limits: DataLimits = DEFAULT_LIMITS,
) -> Any:
    """The plaintext of a sealed ``data``; raises ``E2EError`` for anything
    that does not open into a value of the data model."""
    enc = data.get(MARKER) if isinstance(data, dict) else None
    if not isinstance(enc, Mapping):
        raise E2EError(ErrorCode.DECRYPT_FAILED, "not an encrypted payload")
    kid, alg = enc.get("kid"), enc.get("alg")
    nonce, sealed = b64url_decode(enc.get("nonce")), b64url_decode(enc.get("ct"))
    if alg != ALGORITHM or not isinstance(kid, str) or not 0 < len(kid) <= MAX_KID:
        raise E2EError(ErrorCode.DECRYPT_FAILED, "bad `alg` or `kid`")
    if nonce is None or len(nonce) != NONCE_BYTES or sealed is None or len(sealed) < 16:
        raise E2EError(ErrorCode.DECRYPT_FAILED, "bad `nonce` or `ct`")
    key = provider.receiving_key(scope, kid)
    if key is None:
        raise E2EError(ErrorCode.UNKNOWN_KEY, f"no key {kid!r} for {scope}")
    try:
        plain = AESGCM(key).decrypt(nonce, sealed, associated_data(kid, event, scope))
    except InvalidTag:
        raise E2EError(ErrorCode.DECRYPT_FAILED, "authentication failed") from None
    try:
        value = json.loads(plain.decode("utf-8"), parse_constant=_refuse)
        check_value(value, limits)
    except (UnicodeDecodeError, ValueError, RecursionError, DataModelError) as exc:
        # Authentic but not a value: a buggy sender. Still never delivered.
        raise E2EError(ErrorCode.DECRYPT_FAILED, f"plaintext is not a value: {exc}") from None
    return value


def _refuse(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class Sealer:
    """Seal and open with a provider's keys: what the clients use, and what a
    server application uses to be an end itself (a handler opening what a
    client sealed, a publish sealed for a room's members)."""

    def __init__(self, provider: KeyProvider, limits: DataLimits = DEFAULT_LIMITS) -> None:
        self.provider = provider
        self.limits = limits

    def seal(self, data: Any, event: str, scope: str) -> Any:
        """``data`` sealed with the scope's current key; as it is when the
        provider has none for the scope (sent in clear)."""
        found = self.provider.sending_key(scope)
        if found is None:
            return data
        check_value(data, self.limits)
        return seal(data, found[0], found[1], event, scope)

    def open(self, data: Any, event: str, scope: str) -> Any:
        """The plaintext of a sealed ``data`` (``E2EError`` if it does not
        open); any other ``data`` as it is."""
        if not is_sealed(data):
            return data
        return open_sealed(data, self.provider, event, scope, self.limits)
