"""Token authentication: JWT (PyJWT) and a pluggable ``Authenticator``.

An authenticator turns a token into an ``Identity`` (a user, claims, and
when the identity stops being valid) or raises ``AuthError`` with a
registry code. It may answer synchronously or with a Deferred / coroutine
(a session store, an introspection endpoint), and is judged against the
time it is given, so tests drive it with the hub's clock.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import math
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import jwt
from twisted.internet.defer import Deferred

from warpsocket.protocol.codes import ErrorCode
from warpsocket.protocol.envelope import Envelope, MessageType
from warpsocket.server.middleware import Middleware, Reject

if TYPE_CHECKING:
    from warpsocket.core.server import Session
    from warpsocket.server.context import Context

#: Tokens longer than this are refused before any parsing.
MAX_TOKEN_LENGTH = 8_192

_HMAC = frozenset({"HS256", "HS384", "HS512"})
_ASYMMETRIC = frozenset(
    {
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
        "ES256",
        "ES256K",
        "ES384",
        "ES512",
        "EdDSA",
    }
)


class AuthError(Exception):
    """A token was refused. ``code`` is UNAUTHORIZED or TOKEN_EXPIRED;
    ``reason`` is a short fixed slug for metrics and logs (never sent to the
    client: the wire only says the code)."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(f"{code.wire_name}: {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Identity:
    """Who a token says the client is.

    ``expires_at`` is the time (same clock as ``now``) from which the
    identity is no longer valid (for a JWT: ``exp`` plus the leeway), or
    None if it never expires on its own.
    """

    user: str | None
    claims: Mapping[str, Any] = field(default_factory=dict)
    expires_at: float | None = None


AuthResult = Identity | Deferred[Identity] | Awaitable[Identity]


@runtime_checkable
class Authenticator(Protocol):
    """Anything with ``authenticate(token, now)``: JWT, API keys, sessions...

    ``authenticate`` returns an ``Identity`` (or a Deferred or coroutine of
    one) or raises ``AuthError``; ``now`` is the hub's clock in seconds. Give
    one as ``SecurityOptions(authenticator=...)``: ``JWTAuthenticator`` and
    ``StaticKeyAuthenticator`` are the two that ship.
    """

    def authenticate(self, token: str, now: float) -> AuthResult: ...


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class JWTAuthenticator:
    """Verifies JSON Web Tokens with the algorithm list pinned by configuration.

    - ``algorithms`` never comes from the token: a token whose header names
      another algorithm (``none``, or ``HS256`` against an RSA public key) is
      refused before its signature is looked at. HMAC and public-key
      algorithms cannot be mixed in one authenticator.
    - ``exp`` is required and judged, with ``nbf`` and ``iat``, against the
      ``now`` the caller passes (the hub's clock), with an explicit ``leeway``.
    - ``aud`` and ``iss`` are checked when configured; a token carrying an
      ``aud`` is refused when no audience is configured (PyJWT's rule).
    - the user is the ``user_claim`` (``sub``), which must be a string.

    Use it as ``SecurityOptions(authenticator=JWTAuthenticator(public_key,
    ["RS256"], audience="chat", leeway=30))``, or from the command line with
    ``--jwt-public-key`` / ``--jwt-secret`` (docs/security.md).
    """

    def __init__(
        self,
        key: str | bytes,
        algorithms: Sequence[str],
        *,
        audience: str | Sequence[str] | None = None,
        issuer: str | None = None,
        leeway: float = 0.0,
        user_claim: str = "sub",
        required: Iterable[str] = (),
    ) -> None:
        algs = tuple(dict.fromkeys(algorithms))
        if not algs:
            raise ValueError("pin at least one JWT algorithm")
        unknown = [a for a in algs if a not in _HMAC | _ASYMMETRIC]
        if unknown:
            raise ValueError(f"JWT algorithm(s) not allowed: {', '.join(unknown)}")
        hmac_algs = [a for a in algs if a in _HMAC]
        if hmac_algs and len(hmac_algs) != len(algs):
            raise ValueError("do not mix HMAC and public-key JWT algorithms (key confusion)")
        raw = key.encode("utf-8") if isinstance(key, str) else key
        if hmac_algs:
            if b"-----BEGIN" in raw or raw.startswith(b"ssh-"):
                raise ValueError("an HMAC secret must not be a PEM or SSH key")
            if len(raw) < 32:
                raise ValueError("an HMAC secret needs at least 32 bytes")
            self._key: Any = raw
        else:
            self._key = _load_public_key(raw)
        if leeway < 0 or not math.isfinite(leeway):
            raise ValueError("the JWT leeway must be a finite number of seconds >= 0")
        self.algorithms = algs
        self.audience = audience
        self.issuer = issuer
        self.leeway = float(leeway)
        self.user_claim = user_claim
        require = ["exp", user_claim, *required]
        if audience is not None:
            require.append("aud")
        if issuer is not None:
            require.append("iss")
        self._require = list(dict.fromkeys(require))

    def authenticate(self, token: str, now: float) -> Identity:
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            raise AuthError(ErrorCode.UNAUTHORIZED, "malformed")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthError(ErrorCode.UNAUTHORIZED, "malformed") from None
        if header.get("alg") not in self.algorithms:
            raise AuthError(ErrorCode.UNAUTHORIZED, "algorithm")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=list(self.algorithms),
                audience=self.audience,
                issuer=self.issuer,
                options={
                    "require": self._require,
                    # Time is judged below against the hub's clock.
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidSignatureError:
            raise AuthError(ErrorCode.UNAUTHORIZED, "signature") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(ErrorCode.UNAUTHORIZED, f"missing_{_slug(exc.claim)}") from None
        except jwt.InvalidAudienceError:
            raise AuthError(ErrorCode.UNAUTHORIZED, "audience") from None
        except jwt.InvalidIssuerError:
            raise AuthError(ErrorCode.UNAUTHORIZED, "issuer") from None
        except jwt.InvalidAlgorithmError:
            raise AuthError(ErrorCode.UNAUTHORIZED, "algorithm") from None
        except (jwt.InvalidTokenError, ValueError, TypeError):
            raise AuthError(ErrorCode.UNAUTHORIZED, "malformed") from None
        exp: Any = claims.get("exp")
        if not _number(exp):
            raise AuthError(ErrorCode.UNAUTHORIZED, "malformed")
        expires_at = float(exp) + self.leeway
        if now >= expires_at:
            raise AuthError(ErrorCode.TOKEN_EXPIRED, "expired")
        nbf = claims.get("nbf")
        if nbf is not None and (not _number(nbf) or now + self.leeway < nbf):
            raise AuthError(ErrorCode.UNAUTHORIZED, "not_yet_valid")
        iat = claims.get("iat")
        if iat is not None and (not _number(iat) or now + self.leeway < iat):
            raise AuthError(ErrorCode.UNAUTHORIZED, "issued_in_future")
        user = claims.get(self.user_claim)
        if not isinstance(user, str) or not 0 < len(user) <= 256:
            raise AuthError(ErrorCode.UNAUTHORIZED, "subject")
        return Identity(user, claims, expires_at)


def _slug(claim: str) -> str:
    return claim if claim in ("exp", "aud", "iss", "sub", "nbf", "iat") else "claim"


def _load_public_key(raw: bytes) -> Any:
    from cryptography.hazmat.primitives import serialization

    try:
        if raw.lstrip().startswith(b"-----BEGIN CERTIFICATE"):
            from cryptography import x509

            return x509.load_pem_x509_certificate(raw).public_key()
        return serialization.load_pem_public_key(raw)
    except ValueError as exc:
        raise ValueError(f"not a PEM public key or certificate: {exc}") from None


class StaticKeyAuthenticator:
    """API keys: a fixed mapping of key to user (keys compared by digest).

    An example of a non-JWT scheme: keys never expire on their own, so a
    revoked key takes effect at the next connection (or at the next
    ``auth`` refresh).
    """

    def __init__(self, keys: Mapping[str, str], claims: Mapping[str, Any] | None = None) -> None:
        self._users = {_digest(key): user for key, user in keys.items()}
        self._claims = dict(claims or {})

    def authenticate(self, token: str, now: float) -> Identity:
        digest = _digest(token)
        for known, user in self._users.items():
            if hmac.compare_digest(known, digest):
                return Identity(user, {**self._claims, "sub": user}, None)
        raise AuthError(ErrorCode.UNAUTHORIZED, "unknown_key")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class ClaimsPolicy(Middleware):
    """Per-room and per-event authorisation fed by the token's claims.

    The claims name patterns (``fnmatch``: ``chat.*``): ``rooms`` the rooms a
    session may join, ``publish`` the rooms it may publish into, ``events``
    the events and methods it may send. A missing claim allows nothing
    (fail closed). Wire it into the hub::

        policy = ClaimsPolicy()
        hub = Hub(options, can_join=policy.can_join,
                  can_publish=policy.can_publish, middleware=[policy])

    Refused joins answer ``4102 forbidden``, as do refused events and calls.
    A refreshed token (the ``auth`` envelope) replaces the claims at once.
    """

    def __init__(
        self,
        rooms_claim: str = "rooms",
        publish_claim: str = "publish",
        events_claim: str = "events",
    ) -> None:
        self.rooms_claim = rooms_claim
        self.publish_claim = publish_claim
        self.events_claim = events_claim

    @staticmethod
    def _allows(claims: Mapping[str, Any], claim: str, name: str) -> bool:
        patterns = claims.get(claim)
        if isinstance(patterns, str):
            patterns = [patterns]
        if not isinstance(patterns, list):
            return False
        return any(isinstance(p, str) and fnmatch.fnmatchcase(name, p) for p in patterns)

    def can_join(self, session: Session, room: str) -> bool:
        return self._allows(session.claims, self.rooms_claim, room)

    def can_publish(self, session: Session, room: str, envelope: Envelope) -> bool:
        return self._allows(session.claims, self.publish_claim, room)

    def on_inbound(self, ctx: Context, envelope: Envelope) -> Envelope:
        if envelope.type is MessageType.CALL or (
            envelope.type is MessageType.EVENT and envelope.room is None
        ):
            name = envelope.event or "message"
            if not self._allows(ctx.claims, self.events_claim, name):
                raise Reject(ErrorCode.FORBIDDEN, f"may not send {name!r}")
        return envelope
