"""Client settings: a frozen, validated dataclass given at construction."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from warpsocket.core.backoff import Backoff
from warpsocket.core.client import ClientCoreOptions
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


def default_should_reconnect(code: int | None) -> bool:
    """Reconnect after anything but a refusal that a retry would only repeat."""
    return code not in NO_RECONNECT_CODES


@dataclass(frozen=True)
class ClientOptions:
    subprotocol: str = JSON_SUBPROTOCOL
    backoff: Backoff = field(default_factory=Backoff)
    max_attempts: int | None = None  # consecutive failed attempts before giving up
    should_reconnect: Callable[[int | None], bool] = default_should_reconnect
    core: ClientCoreOptions = field(default_factory=ClientCoreOptions)
    auto_ack: bool = True
    # Used until the first welcome tells the server's values.
    heartbeat_timeout: float = 60.0
    tick_interval: float = 0.5
    # Where to keep the offline queue across process restarts (None: memory only).
    queue_path: str | None = None
    # React to local network changes (Linux): retry at once, probe an open link.
    watch_network: bool = True
    network_probe_timeout: float = 5.0
    # Refresh a JWT from the token provider this many seconds before its exp.
    refresh_before: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1 or None")
        if min(self.heartbeat_timeout, self.tick_interval, self.network_probe_timeout) <= 0:
            raise ValueError("heartbeat_timeout and tick_interval must be positive")
