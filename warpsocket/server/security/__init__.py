"""Security and limits: origins, tokens, address lists, rate and size limits.

One module per concern; ``SecurityOptions`` (``HubOptions.security``) holds
every default, and docs/security.md explains each one.
"""

from warpsocket.server.security.auth import (
    Authenticator,
    AuthError,
    ClaimsPolicy,
    Identity,
    JWTAuthenticator,
    StaticKeyAuthenticator,
)
from warpsocket.server.security.config import SecurityOptions
from warpsocket.server.security.iplist import AddressPolicy, forwarded_client
from warpsocket.server.security.origin import OriginPolicy
from warpsocket.server.security.ratelimit import KeyedBuckets, TokenBucket

__all__ = [
    "AddressPolicy",
    "AuthError",
    "Authenticator",
    "ClaimsPolicy",
    "Identity",
    "JWTAuthenticator",
    "KeyedBuckets",
    "OriginPolicy",
    "SecurityOptions",
    "StaticKeyAuthenticator",
    "TokenBucket",
    "forwarded_client",
]
