"""``SecurityOptions``: every security default and limit of a node, in one place.

docs/security.md lists each value, its close code and the attack it stops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from warpsocket.server.security.auth import Authenticator
from warpsocket.server.security.iplist import AddressPolicy
from warpsocket.server.security.origin import OriginPolicy

MiB = 1_048_576


@dataclass(frozen=True)
class SecurityOptions:
    """Safe production defaults; loosen them knowingly.

    Origins and authentication:

    - ``allowed_origins``: exact ``scheme://host[:port]`` entries; ``"*"``
      accepts any origin, ``"null"`` the opaque origin. With no entry,
      browser origins are accepted only when ``require_auth`` holds.
    - ``authenticator``: verifies tokens (``JWTAuthenticator``, or any
      ``Authenticator``). ``require_auth`` defaults to "yes if there is an
      authenticator"; without one, nothing can be required.
    - tokens are read from ``hello.data.token`` (preferred), the
      ``Authorization: Bearer`` header (``token_in_header``) and, only if
      enabled, the ``token`` query parameter (``token_in_query``).

    Addresses: ``allow_ips`` / ``deny_ips`` (CIDR; deny wins),
    ``trusted_proxies`` (how many X-Forwarded-For hops to trust).

    Limits: connections per node and per address, new connections per
    second per address and messages per second per connection (token
    buckets), the time to complete the HTTP upgrade, and the outbound buffer
    of each connection with the grace a slow consumer gets.
    """

    allowed_origins: tuple[str, ...] = ()
    allow_null_origin: bool = False
    authenticator: Authenticator | None = None
    require_auth: bool | None = None
    token_in_header: bool = True
    token_in_query: bool = False
    allow_ips: tuple[str, ...] = ()
    deny_ips: tuple[str, ...] = ()
    trusted_proxies: int = 0
    max_connections: int = 10_000
    max_connections_per_ip: int = 256
    connection_rate: float = 20.0
    connection_burst: int | None = None  # None: 5 x connection_rate
    message_rate: float = 1_000.0
    message_burst: int | None = None  # None: 2 x message_rate
    upgrade_timeout: float = 10.0
    max_outbound_buffer: int = 4 * MiB
    slow_consumer_grace: float = 10.0
    compression: bool = False

    def __post_init__(self) -> None:
        if self.require_auth and self.authenticator is None:
            raise ValueError("require_auth needs an authenticator (e.g. a JWT key)")
        if self.trusted_proxies < 0:
            raise ValueError("trusted_proxies must be >= 0")
        for name in ("max_connections", "max_connections_per_ip", "max_outbound_buffer"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer")
        for name in ("connection_rate", "message_rate", "upgrade_timeout", "slow_consumer_grace"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number")
        for name in ("connection_burst", "message_burst"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive integer")
        # Parse now, so that a bad origin or CIDR is a configuration error.
        self.origin_policy  # noqa: B018
        self.address_policy  # noqa: B018

    @property
    def auth_required(self) -> bool:
        if self.require_auth is None:
            return self.authenticator is not None
        return self.require_auth

    @property
    def origin_policy(self) -> OriginPolicy:
        return OriginPolicy.from_strings(self.allowed_origins, self.allow_null_origin)

    @property
    def address_policy(self) -> AddressPolicy:
        return AddressPolicy.from_cidrs(self.allow_ips, self.deny_ips)

    @property
    def connection_bucket(self) -> int:
        if self.connection_burst is not None:
            return self.connection_burst
        return max(1, math.ceil(5 * self.connection_rate))

    @property
    def message_bucket(self) -> int:
        if self.message_burst is not None:
            return self.message_burst
        return max(1, math.ceil(2 * self.message_rate))

    @property
    def max_outbound_hard(self) -> int:
        """Past this, a connection is closed at once (no grace): 4x the bound."""
        return 4 * self.max_outbound_buffer
