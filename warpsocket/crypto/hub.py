"""The server's side of signatures: verify what clients send, sign what it
sends (protocol.md "Extension: signatures"). ``HubOptions.signing`` turns it
on; the hub calls in here from two small hooks and costs nothing otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from warpsocket.core.server import CoreOptions
from warpsocket.crypto import e2e
from warpsocket.crypto.replay import DEFAULT_MAX_ENTRIES, DEFAULT_WINDOW_MS, ReplayGuard
from warpsocket.crypto.signing import (
    EXTENSION,
    SignatureError,
    SignatureKeys,
    check_replay,
    sign_wire,
)
from warpsocket.crypto.wire import encode_wire, wire_of
from warpsocket.protocol.codecs import Codec
from warpsocket.protocol.codes import ProtocolError
from warpsocket.protocol.envelope import Envelope


@dataclass(frozen=True)
class SigningOptions:
    """``HubOptions.signing``: the keys (``SignatureKeys``: clients' keys to
    verify by key id, and the server's own ``signer``), the replay window and
    the bound of the ids remembered in it (per node). ``required``: clients
    that did not ask for ``sign`` are refused (4601) too, envelope by envelope.
    """

    keys: SignatureKeys
    window_ms: int = DEFAULT_WINDOW_MS
    max_entries: int = DEFAULT_MAX_ENTRIES
    required: bool = False

    def __post_init__(self) -> None:
        if self.window_ms <= 0 or self.max_entries < 1:
            raise ValueError("window_ms and max_entries must be positive")

    @property
    def parameters(self) -> dict[str, Any]:
        """``welcome.data.extensions.sign``."""
        params: dict[str, Any] = {
            "algs": sorted({key.alg for key in self.keys.keys.values()}),
            "window_ms": self.window_ms,
            "required": self.required,
        }
        if self.keys.signer is not None:
            params["kid"] = self.keys.signer
        return params


def offered_extensions(core: CoreOptions, signing: SigningOptions | None) -> CoreOptions:
    """``core`` offering ``e2e.aes-gcm`` (the server routes sealed payloads
    as they are) and, when configured, ``sign``."""
    offered: dict[str, Mapping[str, Any]] = {e2e.EXTENSION: {}}
    if signing is not None:
        offered[EXTENSION] = signing.parameters
    missing = {k: v for k, v in offered.items() if k not in core.extensions}
    return replace(core, extensions={**core.extensions, **missing}) if missing else core


class HubSigning:
    """Per node: the replay guard and the two hooks."""

    def __init__(self, options: SigningOptions) -> None:
        self.options = options
        self.guard = ReplayGuard(options.window_ms, options.max_entries)

    def check(self, envelope: Envelope, agreed: bool, now_ms: int) -> ProtocolError | None:
        """An envelope a welcomed client sent: None to take it, or the refusal
        (answered with ``ref`` = its id; the connection stays open)."""
        if not agreed and not self.options.required:
            return None
        wire = wire_of(envelope)
        try:
            kid = self.options.keys.verify(wire)
            check_replay(self.guard, kid, wire, now_ms)
        except SignatureError as error:
            return ProtocolError(error.code, error.message, envelope.id)
        return None

    def codec_for(self, codec: Codec) -> Codec:
        """What a connection that agreed to ``sign`` encodes with from its welcome on."""
        key = self.options.keys.signing_key
        return codec if key is None else SigningCodec(codec, key)


class SigningCodec:
    """A codec that adds ``sig`` to every envelope it encodes. Its
    ``subprotocol`` differs from the inner codec's, so that a fan-out frames
    one signed copy for the signed connections and another for the rest."""

    def __init__(self, inner: Codec, key: Any) -> None:
        self.inner = inner
        self.key = key
        self.subprotocol = inner.subprotocol + "+sig"
        self.binary = inner.binary

    def encode(self, envelope: Envelope) -> bytes:
        return encode_wire(self.inner, sign_wire(envelope.to_wire(), self.key))

    def decode(self, payload: bytes, is_binary: bool) -> Envelope:
        return self.inner.decode(payload, is_binary)
