"""When to ask the token provider again: before expiry, and never in a storm.

A JWT is refreshed ``refresh_before`` seconds before its ``exp``, or at half
its remaining life when that is sooner, and never sooner than
``min_interval``. A provider that fails, or answers with the same token or
one that lives no longer, is asked again after ``min_interval``, doubling up
to ``max_interval``.
"""

from __future__ import annotations

from dataclasses import dataclass

import jwt


def token_expiry(token: object) -> float | None:
    """The ``exp`` of a JWT, read without verifying it (only to schedule a refresh)."""
    if not isinstance(token, str) or token.count(".") != 2:
        return None
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    expires = claims.get("exp")
    return float(expires) if isinstance(expires, (int, float)) else None


@dataclass
class RefreshPolicy:
    refresh_before: float
    min_interval: float
    max_interval: float
    failures: int = 0

    def delay(self, token: str | None, now: float) -> float | None:
        """Seconds until ``token`` should be refreshed; None: it does not expire."""
        expires = token_expiry(token)
        if expires is None:
            return None
        remaining = expires - now
        return max(self.min_interval, remaining - min(self.refresh_before, remaining / 2))

    def judge(self, previous: str | None, token: object, now: float) -> tuple[bool, bool]:
        """(send it, it is fresh): a new unexpired token is sent; only a fresh one
        (longer-lived than ``previous`` and than ``min_interval``) ends the back-off."""
        if not isinstance(token, str) or token == previous:
            return False, False
        expires, before = token_expiry(token), token_expiry(previous)
        send = expires is None or expires > now
        fresh = expires is None or (
            expires > now + self.min_interval and (before is None or expires > before)
        )
        return send, fresh

    def succeeded(self) -> None:
        self.failures = 0

    def backoff(self) -> float:
        """The delay after one more unsuccessful refresh."""
        self.failures += 1
        step: float = self.min_interval * 2 ** min(self.failures - 1, 16)
        return min(step, self.max_interval)
