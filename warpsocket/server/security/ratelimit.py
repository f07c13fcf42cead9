"""Token buckets, driven by an injected clock (the hub's), never by wall time."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; starts full."""

    __slots__ = ("_stamp", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self._stamp = now

    def _refill(self, now: float) -> None:
        elapsed = now - self._stamp
        if elapsed > 0:
            self.tokens = min(float(self.burst), self.tokens + elapsed * self.rate)
            self._stamp = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens if there are enough; False (nothing spent) if not."""
        if now > self._stamp:  # ``_refill``, inlined: once per message
            self.tokens = min(float(self.burst), self.tokens + (now - self._stamp) * self.rate)
            self._stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.burst


class KeyedBuckets(Generic[K]):
    """One bucket per key (an address), in bounded memory.

    A full bucket holds no information (a new one starts full), so buckets
    that have refilled are forgotten; past ``max_keys`` the least recently
    used key is dropped (which can only make that key's bucket full again,
    i.e. err towards admitting: an attacker with that many addresses is a
    job for the node-wide limits, not this table).
    """

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float], max_keys: int = 100_000
    ) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("need rate > 0, burst >= 1 and max_keys >= 1")
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: OrderedDict[K, TokenBucket] = OrderedDict()
        self._refill_time = burst / rate

    def take(self, key: K) -> bool:
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst, now)
            self._buckets[key] = bucket
        else:
            self._buckets.move_to_end(key)
        allowed = bucket.take(now)
        self._prune(now)
        return allowed

    def _prune(self, now: float) -> None:
        buckets = self._buckets
        while len(buckets) > self.max_keys:
            buckets.popitem(last=False)
        # The oldest entries were used longest ago: drop them while refilled.
        while buckets:
            key, bucket = next(iter(buckets.items()))
            if not bucket.full(now):
                break
            del buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


class Refusals:
    """What one connection's refused messages (over its token bucket) lead to.

    Two rules (docs/security.md, "Messages per second"):

    - **close**: more than ``burst`` refusals without a pause of ``quiet``
      seconds (the time the bucket takes to refill) between two of them
      means the client is not slowing down; accepted messages in between do
      not forgive it, so a flood at any multiple of the rate is closed after
      at most ``burst`` refusals.
    - **replies**: a refusal is answered only while the bytes of the refused
      frames pay for the answers (plus ``allowance`` bytes per episode, so
      that the first refusal is always answered): a flood of tiny frames
      cannot make the server write more than it reads.
    """

    __slots__ = ("_last", "allowance", "burst", "count", "credit", "quiet")

    def __init__(self, burst: int, quiet: float, allowance: int = 512) -> None:
        self.burst = burst
        self.quiet = quiet
        self.allowance = allowance
        self.count = 0
        self.credit = 0
        self._last: float | None = None

    def refused(self, now: float, size: int) -> bool:
        """Count one refused frame of ``size`` bytes; True: close the connection."""
        if self._last is None or now - self._last >= self.quiet:
            self.count = 0
            self.credit = self.allowance
        self._last = now
        self.count += 1
        # Capped, so that large refused frames cannot bank replies for later.
        self.credit = min(self.credit + size, self.allowance + size)
        return self.count > self.burst

    def may_reply(self) -> bool:
        return self.credit > 0

    def replied(self, size: int) -> None:
        self.credit -= size
