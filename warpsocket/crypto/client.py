"""The client's side of encryption and signatures, behind a few calls from
``WarpSocketClient``: seal outgoing event data, sign what it writes, and
verify and open what it receives (protocol.md, the two extension sections).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from warpsocket.crypto import e2e
from warpsocket.crypto.replay import ReplayGuard
from warpsocket.crypto.signing import (
    EXTENSION as SIGN,
)
from warpsocket.crypto.signing import (
    SignatureError,
    SignatureKeys,
    check_replay,
    sign_wire,
)
from warpsocket.crypto.wire import encode_wire, wire_of
from warpsocket.protocol.codecs import Codec
from warpsocket.protocol.codes import ErrorCode
from warpsocket.protocol.datamodel import DEFAULT_LIMITS, DataLimits
from warpsocket.protocol.envelope import Envelope, MessageType


@dataclass(frozen=True)
class CryptoFailure:
    """A received envelope refused: it was not delivered. ``code`` is 4600
    (does not decrypt), 4601 (bad signature), 4602 (replayed), 4603 (unknown
    key) or 4604 (stale); ``envelope`` is what arrived (still sealed)."""

    code: int
    message: str
    envelope: Envelope

    @property
    def id(self) -> str:
        return self.envelope.id

    @property
    def stream(self) -> str | None:
        return self.envelope.stream

    @property
    def offset(self) -> int | None:
        return self.envelope.offset


def asked_extensions(
    base: tuple[str, ...], provider: e2e.KeyProvider | None, keys: SignatureKeys | None
) -> tuple[str, ...]:
    """The extensions a hello asks for: the application's, plus ours."""
    wanted = list(base)
    if provider is not None and e2e.EXTENSION not in wanted:
        wanted.append(e2e.EXTENSION)
    if keys is not None and SIGN not in wanted:
        wanted.append(SIGN)
    return tuple(wanted)


class ClientCrypto:
    """Per client: the key provider, the signature keys and the replay guard."""

    def __init__(
        self,
        provider: e2e.KeyProvider | None,
        keys: SignatureKeys | None,
        guard: ReplayGuard,
    ) -> None:
        self.provider = provider
        self.keys = keys
        self.guard = guard
        self.limits: DataLimits = DEFAULT_LIMITS
        # This connection agreed to ``sign`` (set by its welcome), and the
        # server signs what it sends on it.
        self.signed = False
        self.verifying = False

    def seal(self, event: str, data: Any, room: str | None) -> Any:
        """Outgoing event data, sealed when the provider has a key for its scope."""
        if self.provider is None:
            return data
        return e2e.Sealer(self.provider, self.limits).seal(data, event, e2e.scope_of(room=room))

    def encode(self, codec: Codec, envelope: Envelope, server_now_ms: int) -> bytes:
        """The frame for ``envelope``: signed on a connection that agreed to ``sign``.

        A copy without ``ttl`` or ``deadline`` (whose ends count from the
        stamp) is stamped now, on the server's clock as far as known: a
        message queued offline for long is not refused as stale (4604).
        """
        key = self.keys.signing_key if self.keys is not None else None
        if not self.signed or key is None:
            return codec.encode(envelope)
        if envelope.ttl is None and envelope.deadline is None:
            envelope = envelope.evolve(timestamp=max(0, server_now_ms))
        return encode_wire(codec, sign_wire(envelope.to_wire(), key))

    def disconnected(self) -> None:
        self.signed = self.verifying = False

    def receive(
        self, envelope: Envelope, now_ms: int
    ) -> tuple[Envelope | None, CryptoFailure | None]:
        """What the core gets instead of ``envelope`` (None: nothing), and what to report.

        A stream event that fails becomes a placeholder with the code
        (protocol.md 5.2): the client moves past it, reports it, never
        delivers it. Anything else that fails is dropped and reported.
        """
        if envelope.type is MessageType.WELCOME:
            granted = envelope.data.get("extensions") if isinstance(envelope.data, dict) else None
            params = granted.get(SIGN) if isinstance(granted, dict) else None
            self.signed = self.keys is not None and isinstance(params, dict)
            # The server signs only when its parameters name its key.
            self.verifying = self.signed and isinstance(params, dict) and "kid" in params
        try:
            if self.verifying:
                self._verify(envelope, now_ms)
            if (
                envelope.type is MessageType.EVENT
                and self.provider is not None
                and envelope.stream is not None
                and e2e.is_sealed(envelope.data)
            ):
                event = envelope.event or "message"
                plain = e2e.open_sealed(
                    envelope.data, self.provider, event, envelope.stream, self.limits
                )
                return envelope.evolve(data=plain), None
        except (SignatureError, e2e.E2EError) as error:
            failure = CryptoFailure(int(error.code), error.message, envelope)
            if envelope.type is MessageType.EVENT and envelope.offset is not None:
                return envelope.evolve(data=None, code=int(error.code)), failure
            if envelope.type is MessageType.WELCOME:
                self.signed = self.verifying = False
            return None, failure
        return envelope, None

    def _verify(self, envelope: Envelope, now_ms: int) -> None:
        assert self.keys is not None
        wire = wire_of(envelope)
        kid = self.keys.verify(wire)
        # A stream event may be a replay from history, legitimately old: its
        # offset protects it (protocol.md 5.2). Everything else: the window.
        if envelope.stream is None or envelope.type is not MessageType.EVENT:
            check_replay(self.guard, kid, wire, now_ms)


def nack_for(failure: CryptoFailure, new_id: str, now_ms: int) -> Envelope | None:
    """The ``error`` answer to an acked server event the client refused, so
    that the server's send fails with the code instead of waiting."""
    event = failure.envelope
    if event.type is not MessageType.EVENT or not event.ack:
        return None
    code = ErrorCode(failure.code)
    return Envelope(
        type=MessageType.ERROR,
        id=new_id,
        timestamp=now_ms,
        ref=event.id,
        code=int(code),
        data={"name": code.wire_name, "message": failure.message[:200]},
    )
