"""Envelope signatures: HMAC-SHA256 and Ed25519 over the canonical form
(protocol.md "Extension: signatures").

The signature travels in the envelope's ``sig`` field,
``{"alg": "hmac-sha256" | "ed25519", "kid": ..., "value": base64url}``. It is
computed over ``SIGNING_PREFIX`` followed by the canonical JSON (RFC 8785) of
the envelope without ``sig.value``: every other field that is present (null
fields and ``ack: false`` left out), and ``sig`` with ``alg`` and ``kid`` only.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from warpsocket.crypto.canonical import CanonicalError, b64url, b64url_decode, canonical_json
from warpsocket.crypto.replay import ReplayGuard
from warpsocket.protocol.codes import ErrorCode

EXTENSION = "sign"
SIGNING_PREFIX = b"warpsocket.sig.v1\n"
HMAC_SHA256 = "hmac-sha256"
ED25519 = "ed25519"
MAX_KID = 64


class SignatureError(Exception):
    """An envelope refused: ``code`` is 4601 (bad signature), 4602 (replayed),
    4603 (unknown key) or 4604 (stale)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.wire_name} ({int(code)}): {message}")
        self.code = code
        self.message = message


class SignatureKey(Protocol):
    """A key that verifies, and signs when it holds the secret half."""

    @property
    def kid(self) -> str: ...

    @property
    def alg(self) -> str: ...

    @property
    def can_sign(self) -> bool: ...

    def sign(self, message: bytes) -> bytes: ...

    def verify(self, message: bytes, signature: bytes) -> bool: ...


@dataclass(frozen=True)
class HmacKey:
    """A shared secret (at least 32 bytes) under a key id: signs and verifies."""

    kid: str
    secret: bytes = field(repr=False)
    alg: str = HMAC_SHA256

    def __post_init__(self) -> None:
        _check_kid(self.kid)
        if len(self.secret) < 32:
            raise ValueError("HMAC-SHA256 secrets must be at least 32 bytes")

    @property
    def can_sign(self) -> bool:
        return True

    def sign(self, message: bytes) -> bytes:
        return hmac.new(self.secret, message, hashlib.sha256).digest()

    def verify(self, message: bytes, signature: bytes) -> bool:
        return hmac.compare_digest(self.sign(message), signature)


@dataclass(frozen=True)
class Ed25519Key:
    """An Ed25519 public key under a key id, with its private key when this
    side signs. ``from_seed`` / ``from_public`` take the raw 32 bytes."""

    kid: str
    public: Ed25519PublicKey
    private: Ed25519PrivateKey | None = None
    alg: str = ED25519

    def __post_init__(self) -> None:
        _check_kid(self.kid)

    @classmethod
    def from_seed(cls, kid: str, seed: bytes) -> Ed25519Key:
        private = Ed25519PrivateKey.from_private_bytes(seed)
        return cls(kid, private.public_key(), private)

    @classmethod
    def from_public(cls, kid: str, public: bytes) -> Ed25519Key:
        return cls(kid, Ed25519PublicKey.from_public_bytes(public))

    @property
    def can_sign(self) -> bool:
        return self.private is not None

    def sign(self, message: bytes) -> bytes:
        if self.private is None:
            raise ValueError(f"key {self.kid!r} has no private key")
        return self.private.sign(message)

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            self.public.verify(signature, message)
        except InvalidSignature:
            return False
        return True


def _check_kid(kid: object) -> None:
    if not isinstance(kid, str) or not 0 < len(kid) <= MAX_KID:
        raise ValueError(f"key ids are strings of 1-{MAX_KID} characters")


def signing_input(wire: Mapping[str, Any], alg: str, kid: str) -> bytes:
    """The bytes a signature covers, for an envelope's wire mapping."""
    signed = {
        name: value
        for name, value in wire.items()
        if value is not None and name != "sig" and not (name == "ack" and value is False)
    }
    signed["sig"] = {"alg": alg, "kid": kid}
    return SIGNING_PREFIX + canonical_json(signed)


def sign_wire(wire: dict[str, Any], key: SignatureKey) -> dict[str, Any]:
    """``wire`` with its ``sig`` field added (a new mapping)."""
    value = key.sign(signing_input(wire, key.alg, key.kid))
    return {**wire, "sig": {"alg": key.alg, "kid": key.kid, "value": b64url(value)}}


@dataclass
class SignatureKeys:
    """The keys one side uses: ``keys`` verify by key id; ``signer`` (a key id
    of one that can sign) signs what this side sends (None: verify only)."""

    keys: Mapping[str, SignatureKey]
    signer: str | None = None

    def __post_init__(self) -> None:
        for kid, key in self.keys.items():
            if key.kid != kid:
                raise ValueError(f"key {key.kid!r} filed under {kid!r}")
        if self.signer is not None and not (
            self.signer in self.keys and self.keys[self.signer].can_sign
        ):
            raise ValueError(f"signer {self.signer!r} is not a key that can sign")

    @classmethod
    def of(cls, keys: Iterable[SignatureKey], signer: str | None = None) -> SignatureKeys:
        return cls({key.kid: key for key in keys}, signer)

    @property
    def signing_key(self) -> SignatureKey | None:
        return None if self.signer is None else self.keys[self.signer]

    def verify(self, wire: Mapping[str, Any]) -> str:
        """The key id that signed ``wire``; raises ``SignatureError``."""
        sig = wire.get("sig")
        if not isinstance(sig, Mapping):
            raise SignatureError(ErrorCode.BAD_SIGNATURE, "missing `sig`")
        alg, kid = sig.get("alg"), sig.get("kid")
        value = b64url_decode(sig.get("value"))
        if not isinstance(alg, str) or not isinstance(kid, str) or value is None:
            raise SignatureError(ErrorCode.BAD_SIGNATURE, "malformed `sig`")
        key = self.keys.get(kid)
        if key is None:
            raise SignatureError(ErrorCode.UNKNOWN_KEY, f"unknown signing key {kid[:64]!r}")
        if key.alg != alg:
            raise SignatureError(ErrorCode.BAD_SIGNATURE, f"key {kid!r} is not {alg[:32]!r}")
        try:
            message = signing_input(wire, alg, kid)
        except CanonicalError as exc:
            raise SignatureError(ErrorCode.BAD_SIGNATURE, str(exc)) from None
        if not key.verify(message, value):
            raise SignatureError(ErrorCode.BAD_SIGNATURE, "signature does not verify")
        return kid


def check_replay(guard: ReplayGuard, kid: str, wire: Mapping[str, Any], now_ms: int) -> None:
    """Raise ``SignatureError`` for a stale or replayed envelope (after its
    signature verified: unsigned junk must not fill the guard)."""
    code = guard.check(kid, str(wire.get("id")), int(wire.get("timestamp", -1)), now_ms)
    if code is ErrorCode.STALE:
        raise SignatureError(code, f"timestamp outside +-{guard.window_ms} ms")
    if code is not None:
        raise SignatureError(code, "envelope already received")
