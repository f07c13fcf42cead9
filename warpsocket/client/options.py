"""Client settings: a frozen, validated dataclass given at construction."""

from __future__ import annotations

import enum
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from warpsocket.core.backoff import Backoff
from warpsocket.core.client import ClientCoreOptions
from warpsocket.crypto.e2e import KeyProvider
from warpsocket.crypto.replay import DEFAULT_WINDOW_MS
from warpsocket.crypto.signing import SignatureKeys
from warpsocket.protocol.codecs import JSON_SUBPROTOCOL
from warpsocket.protocol.codes import ErrorCode

# Close codes after which reconnecting cannot help without the application's
# consent (protocol.md section 10).
NO_RECONNECT_CODES = frozenset(
    {
        int(ErrorCode.UNAUTHORIZED),
        int(ErrorCode.FORBIDDEN),
        int(ErrorCode.ORIGIN_REJECTED),
        int(ErrorCode.ADDRESS_REJECTED),
        int(ErrorCode.SESSION_REPLACED),
        int(ErrorCode.UNSUPPORTED_CODEC),
    }
)


class DisconnectCause(str, enum.Enum):
    """How the last connection (or attempt) ended: the second argument of ``should_reconnect``."""

    REFUSED = "refused"  # no connection was made (refused, unreachable); code is None
    CUT = "cut"  # an established connection ended without a close frame (code 1006)
    CLOSED = "closed"  # the server closed with a close frame; code is its close code
    TIMEOUT = "timeout"  # the client gave up on a silent server (handshake or heartbeat)


ShouldReconnect = Callable[[int | None, DisconnectCause], bool]


def default_should_reconnect(code: int | None, cause: DisconnectCause | None = None) -> bool:
    """Reconnect after anything but a refusal that a retry would only repeat."""
    return code not in NO_RECONNECT_CODES


def _two_arguments(predicate: Callable[..., bool]) -> ShouldReconnect:
    """Accept the older one-argument predicates ``f(code)`` too."""
    try:
        parameters = inspect.signature(predicate).parameters.values()
    except (TypeError, ValueError):
        return predicate
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) == 1 and not any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return lambda code, cause: bool(predicate(code))
    return predicate


@dataclass(frozen=True)
class ClientOptions:
    """How a client connects, retries and queues; every default is documented
    in docs/client.md ("Options"). Frozen: build a new one to change it."""

    subprotocol: str = JSON_SUBPROTOCOL
    backoff: Backoff = field(default_factory=Backoff)
    # Consecutive connection attempts without a welcome before giving up
    # (None: never give up). N means exactly N attempts.
    max_attempts: int | None = None
    # ``f(code, cause)``: reconnect after this disconnect? (``f(code)`` works too.)
    should_reconnect: Callable[..., bool] = default_should_reconnect
    core: ClientCoreOptions = field(default_factory=ClientCoreOptions)
    auto_ack: bool = True
    # Used until the first welcome tells the server's values.
    heartbeat_timeout: float = 60.0
    # An attempt not welcomed within this (or the heartbeat timeout, if
    # shorter) is abandoned: TCP connect, WebSocket upgrade and hello included.
    handshake_timeout: float = 10.0
    # Seconds between the client's own heartbeats (they measure the round
    # trip time); None: the server's heartbeat interval; 0: none.
    ping_interval: float | None = None
    tick_interval: float = 0.5
    # Where to keep the offline queue across process restarts (None: memory only).
    queue_path: str | None = None
    # React to local network changes (Linux): retry at once, probe an open link.
    watch_network: bool = True
    network_probe_timeout: float = 5.0
    # A JWT from the token provider is refreshed this long before its exp, or
    # at half its remaining life if that is shorter; never sooner than
    # refresh_min_interval after the last refresh. An unchanged, no longer
    # lived or failed refresh is retried after refresh_min_interval,
    # doubling up to refresh_max_interval.
    refresh_before: float = 30.0
    refresh_min_interval: float = 5.0
    refresh_max_interval: float = 60.0
    # Observability (docs/observability.md). ``slow_ack``: seconds after which
    # an acked send still unanswered raises the client's ``slow`` event.
    # ``tracing``: OpenTelemetry spans and the ``trace`` field (the otel
    # extra); ``tracer_provider`` (implies tracing) else the global provider.
    slow_ack: float | None = None
    tracing: bool = False
    tracer_provider: Any = None
    # End-to-end encryption of event data (protocol.md "Extension: end-to-end
    # encryption"): where keys come from, per scope. None: off.
    e2e: KeyProvider | None = None
    # Envelope signatures (protocol.md "Extension: signatures"): the keys that
    # verify the server and the one this client signs with; the replay window.
    signing: SignatureKeys | None = None
    replay_window_ms: int = DEFAULT_WINDOW_MS
    # Batches (protocol.md "Extension: batches"): envelopes transmitted within
    # this many milliseconds of the first leave in one frame. 0: those of the
    # same reactor turn (a loop of sends), with no added delay; None: off.
    batch_window_ms: float | None = 0.0
    # The hello in the upgrade request (protocol.md 4.5): a fresh session's
    # hello without a token rides in the URL's ``hello`` parameter and the
    # welcome comes with the 101, one round trip sooner. False: always a frame.
    url_hello: bool = True

    def __post_init__(self) -> None:
        if self.slow_ack is not None and not self.slow_ack > 0:
            raise ValueError("slow_ack must be a positive number of seconds or None")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1 or None")
        if (
            min(
                self.heartbeat_timeout,
                self.tick_interval,
                self.network_probe_timeout,
                self.handshake_timeout,
                self.refresh_min_interval,
            )
            <= 0
        ):
            raise ValueError("timeouts, intervals and refresh_min_interval must be positive")
        if self.refresh_before < 0 or self.refresh_max_interval < self.refresh_min_interval:
            raise ValueError("need refresh_before >= 0, refresh_max >= refresh_min_interval")
        if self.batch_window_ms is not None and not 0 <= self.batch_window_ms <= 1000:
            raise ValueError("batch_window_ms must be within 0-1000 or None")
        if self.ping_interval is not None and self.ping_interval < 0:
            raise ValueError("ping_interval must be >= 0 or None")
        object.__setattr__(self, "should_reconnect", _two_arguments(self.should_reconnect))

    def reconnect_wanted(self, code: int | None, cause: DisconnectCause) -> bool:
        predicate: Any = self.should_reconnect
        return bool(predicate(code, cause))
