"""The signature key file of ``warpsocket serve --sign-key-file`` (docs/cli.md).

A JSON object::

    {"signer": "server-1",
     "keys": [{"kid": "shared-1", "alg": "hmac-sha256", "secret": "<hex>"},
              {"kid": "server-1", "alg": "ed25519", "seed": "<hex>"},
              {"kid": "alice", "alg": "ed25519", "public": "<hex>"}]}

``signer``: the key id the server signs with (absent: it only verifies).
Secrets and seeds are 64 hex digits (32 bytes; HMAC secrets may be longer).
"""

from __future__ import annotations

import json
from typing import Any

from warpsocket.crypto.signing import (
    ED25519,
    HMAC_SHA256,
    Ed25519Key,
    HmacKey,
    SignatureKey,
    SignatureKeys,
)


def load_signature_keys(path: str) -> SignatureKeys:
    """Read and check a key file; ``ValueError`` says what is wrong."""
    try:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read signature key file {path}: {exc}") from None
    return signature_keys_from(raw)


def signature_keys_from(raw: Any) -> SignatureKeys:
    if not isinstance(raw, dict) or not isinstance(raw.get("keys"), list) or not raw["keys"]:
        raise ValueError("a signature key file is an object with a non-empty `keys` list")
    keys = [_key(entry) for entry in raw["keys"]]
    if len({key.kid for key in keys}) != len(keys):
        raise ValueError("key ids must be unique")
    signer = raw.get("signer")
    if signer is not None and not isinstance(signer, str):
        raise ValueError("`signer` must be a key id")
    return SignatureKeys.of(keys, signer)


def _key(entry: Any) -> SignatureKey:
    if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
        raise ValueError("each key is an object with a `kid`")
    kid, alg = entry["kid"], entry.get("alg")
    if alg == HMAC_SHA256:
        return HmacKey(kid, _hex(entry.get("secret"), kid, "secret"))
    if alg == ED25519:
        if "seed" in entry:
            return Ed25519Key.from_seed(kid, _hex(entry["seed"], kid, "seed", exact=True))
        return Ed25519Key.from_public(kid, _hex(entry.get("public"), kid, "public", exact=True))
    raise ValueError(f"key {kid!r}: `alg` must be {HMAC_SHA256!r} or {ED25519!r}")


def _hex(value: Any, kid: str, name: str, exact: bool = False) -> bytes:
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) < 32 or (exact and len(raw) != 32):
        raise ValueError(
            f"key {kid!r}: `{name}` must be {'' if exact else 'at least '}32 bytes in hex"
        )
    return raw
