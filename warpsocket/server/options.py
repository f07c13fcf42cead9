"""The hub's options (``HubOptions``), apart so that every part of the hub can read them."""

from __future__ import annotations

from dataclasses import dataclass, field

from warpsocket.core.server import CoreOptions
from warpsocket.crypto.hub import SigningOptions
from warpsocket.server.observe.slow import SlowThresholds
from warpsocket.server.security.config import SecurityOptions


@dataclass(frozen=True)
class HubOptions:
    """Everything a ``Hub`` is configured with; defaults are the production
    values (``twistd warpsocket`` builds one from its command line).

    - ``core``: the reliability settings (``CoreOptions``: sessions, timers,
      acks, limits, histories).
    - ``security``: origins, authentication, address lists and rate and size
      limits (``SecurityOptions``, docs/security.md).
    - ``open_rooms``: clients may join and publish into any room (standalone
      mode); otherwise only what ``can_join``/``can_publish`` allow.
    - ``tick_interval``: seconds between housekeeping runs (ack retries,
      session expiry, the backend's upkeep).
    - ``drain_delay`` / ``shutdown_timeout``: the drain sequence of
      ``WarpSocketService.stopService`` (docs/deployment.md).
    - ``reconnect_hint_ms``: the delay suggested to clients sent away by a drain.
    - ``debug``: log every envelope in and out (``LoggingMiddleware``), with
      payloads cut and secrets masked.
    - ``tracing``: OpenTelemetry spans (the ``otel`` extra; docs/observability.md).
    - ``slow``: slow-message alert thresholds (``SlowThresholds``; all off by default).
    - ``inspect``: record the envelopes of connections the inspector looks at.
    - ``signing``: verify clients' signatures and sign what the server sends
      (``SigningOptions``; protocol.md "Extension: signatures"). None: off.
    - ``batches``: offer the ``batch`` extension (protocol.md "Extension:
      batches"; its bounds: ``CoreOptions.extensions["batch"]``). On by default.
    """

    core: CoreOptions = field(default_factory=CoreOptions)
    tick_interval: float = 1.0
    shutdown_timeout: float = 10.0
    # Seconds of a drain during which /healthz says 503 before clients are
    # told to go (a load balancer's pre-stop period; docs/deployment.md).
    drain_delay: float = 0.0
    reconnect_hint_ms: int = 2_000
    debug: bool = False
    # Standalone mode: clients may subscribe to and publish into any room.
    open_rooms: bool = False
    # Origins, tokens, address lists and limits (docs/security.md).
    security: SecurityOptions = field(default_factory=SecurityOptions)
    # Observability (docs/observability.md): each off by default, free when off.
    tracing: bool = False
    slow: SlowThresholds = field(default_factory=SlowThresholds)
    inspect: bool = False
    # Envelope signatures (protocol.md "Extension: signatures"); None: off.
    signing: SigningOptions | None = None
    # Batches (protocol.md "Extension: batches", warpsocket/server/batches.py).
    batches: bool = True

    def __post_init__(self) -> None:
        if self.tick_interval <= 0 or self.shutdown_timeout <= 0:
            raise ValueError("tick_interval and shutdown_timeout must be positive")
        if self.reconnect_hint_ms < 0 or self.drain_delay < 0:
            raise ValueError("reconnect_hint_ms and drain_delay must be >= 0")
