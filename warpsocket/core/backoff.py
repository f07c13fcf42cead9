"""Reconnect and retry delays: exponential with jitter, capped."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Backoff:
    """Delay before attempt ``n`` (0-based): ``initial * factor**n`` capped at ``maximum``.

    ``jitter`` is the fraction of the delay that is randomised: 0.0 gives the
    exact 1s, 2s, 4s, 8s ... schedule; 0.5 (the default) spreads each delay
    over [0.5d, d] so that many clients dropped at once do not return at once.
    The client's reconnect schedule is ``ClientOptions(backoff=Backoff(...))``;
    ``random`` is injectable for tests.
    """

    initial: float = 1.0
    factor: float = 2.0
    maximum: float = 30.0
    jitter: float = 0.5
    random: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.maximum < self.initial:
            raise ValueError("need 0 < initial <= maximum")
        if self.factor < 1:
            raise ValueError("factor must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within [0, 1]")

    def ceiling(self, attempt: int) -> float:
        """The un-jittered delay for ``attempt``."""
        if attempt < 0:
            raise ValueError("attempt must be >= 0")
        # Cap the exponent first so huge attempt numbers cannot overflow.
        delay = self.initial
        for _ in range(min(attempt, 64)):
            delay *= self.factor
            if delay >= self.maximum:
                return self.maximum
        return min(delay, self.maximum)

    def delay(self, attempt: int) -> float:
        ceiling = self.ceiling(attempt)
        return ceiling * (1 - self.jitter * self.random())
