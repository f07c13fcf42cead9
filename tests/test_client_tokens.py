"""Token refresh cannot storm: time on a ``task.Clock``, the server real (127.0.0.1)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jwt as pyjwt
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.helpers.client import (
    FAST,
    ClientTestCase,
    ServerFixture,
    make_hub,
    spy_inbound,
    wait_until,
)
from warpsocket.client.client import WarpSocketClient
from warpsocket.client.options import ClientOptions
from warpsocket.client.state import ClientState
from warpsocket.client.tokens import RefreshPolicy
from warpsocket.core.server import CoreOptions
from warpsocket.protocol.envelope import MessageType

KEY = "k" * 32


def jwt_for(exp: float, n: int) -> str:
    return pyjwt.encode({"sub": "u", "exp": int(exp), "n": n}, KEY, algorithm="HS256")


class RefreshTests(ClientTestCase):
    def start(self, provider: Callable[[], Any], clock: Clock, **options: Any) -> Any:
        # Server heartbeats far apart: only the token schedule acts on the clock.
        core = CoreOptions(heartbeat_interval_ms=10_000_000, heartbeat_timeout_ms=20_000_000)
        hub = make_hub(core=core)
        self.received = spy_inbound(hub)
        server = ServerFixture(self, hub)
        client = WarpSocketClient(
            server.url,
            ClientOptions(backoff=FAST, ping_interval=0, watch_network=False, **options),
            clock=clock,
            token=provider,
        )
        self.addCleanup(client.close)
        return client

    def auth_tokens(self) -> list[str]:
        return [e.data["token"] for e in self.received if e.type is MessageType.AUTH]

    def run_for(self, clock: Clock, seconds: int) -> None:
        for _ in range(seconds * 2):
            clock.advance(0.5)

    @inlineCallbacks
    def test_shortLivedTokenRefreshesAtHalfItsLife(self) -> Any:
        """The ISSUE's 20 s token (< refresh_before): 14,491 calls in 4 s before; now 1 per 10 s."""
        clock = Clock()
        issued: list[str] = []

        def provider() -> str:
            issued.append(jwt_for(clock.seconds() + 20, len(issued)))
            return issued[-1]

        client = self.start(provider, clock)
        yield client.connect()
        self.run_for(clock, 4)
        self.assertEqual(len(issued), 1)
        self.run_for(clock, 56)  # t = 60
        self.assertEqual(len(issued), 7)  # the hello's, then at 10, 20, ... 60
        yield wait_until(lambda: len(self.auth_tokens()) == 6)
        self.assertEqual(self.auth_tokens(), issued[1:])

    @inlineCallbacks
    def test_unchangedTokenBacksOff(self) -> Any:
        clock = Clock()
        token = jwt_for(20, 0)
        calls: list[float] = []

        def provider() -> str:
            calls.append(clock.seconds())
            return token

        client = self.start(provider, clock)
        yield client.connect()
        self.run_for(clock, 200)
        # At 10 s (half its life), then 5, 10, 20, 40, 60 (the cap), 60 ... apart.
        self.assertEqual(calls, [0, 10, 15, 25, 45, 85, 145])
        self.assertEqual(self.auth_tokens(), [])  # nothing new to send
        self.assertEqual(client.state, ClientState.OPEN)

    @inlineCallbacks
    def test_alreadyExpiringTokensBackOff(self) -> Any:
        """New tokens, each expiring within the floor: sent, but no faster refreshes."""
        clock = Clock()
        calls: list[float] = []

        def provider() -> str:
            calls.append(clock.seconds())
            return jwt_for(clock.seconds() + 3, len(calls))

        client = self.start(provider, clock)
        yield client.connect()
        self.run_for(clock, 100)
        self.assertEqual(calls, [0, 5, 10, 20, 40, 80])
        yield wait_until(lambda: len(self.auth_tokens()) == 5)

    @inlineCallbacks
    def test_failingProviderBacksOffAndRecovers(self) -> Any:
        clock = Clock()
        calls: list[float] = []

        def provider() -> str:
            calls.append(clock.seconds())
            if 0 < clock.seconds() < 30:
                raise RuntimeError("identity provider down")
            return jwt_for(clock.seconds() + 20, len(calls))

        client = self.start(provider, clock)
        yield client.connect()
        self.run_for(clock, 70)
        # Fails at 10, 15, 25 (5 s, then 10, 20 apart); from 45 on every 10 s again.
        self.assertEqual(calls, [0, 10, 15, 25, 45, 55, 65])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 3)

    @inlineCallbacks
    def test_longLivedTokenRefreshesBeforeExpiry(self) -> Any:
        clock = Clock()
        issued: list[str] = []

        def provider() -> str:
            issued.append(jwt_for(clock.seconds() + 3600, len(issued)))
            return issued[-1]

        client = self.start(provider, clock)
        yield client.connect()
        clock.advance(3569)
        self.assertEqual(len(issued), 1)
        clock.advance(1)  # refresh_before (30 s) before exp
        self.assertEqual(len(issued), 2)


class PolicyTests(unittest.SynchronousTestCase):
    def policy(self) -> RefreshPolicy:
        return RefreshPolicy(refresh_before=30, min_interval=5, max_interval=60)

    def test_delay(self) -> None:
        policy = self.policy()
        self.assertEqual(policy.delay(jwt_for(3600, 0), 0), 3570)
        self.assertEqual(policy.delay(jwt_for(20, 0), 0), 10)
        self.assertEqual(policy.delay(jwt_for(4, 0), 0), 5)  # the floor
        self.assertEqual(policy.delay(jwt_for(-100, 0), 0), 5)  # expired: still the floor
        self.assertIsNone(policy.delay("opaque-token", 0))
        self.assertIsNone(policy.delay(None, 0))

    def test_judge(self) -> None:
        policy, old = self.policy(), jwt_for(20, 0)
        self.assertEqual(policy.judge(old, old, 10), (False, False))
        self.assertEqual(policy.judge(old, None, 10), (False, False))
        self.assertEqual(policy.judge(old, jwt_for(30, 1), 10), (True, True))
        self.assertEqual(policy.judge(old, jwt_for(20, 1), 10), (True, False))  # no longer
        self.assertEqual(policy.judge(old, jwt_for(12, 1), 0), (True, False))  # shorter
        self.assertEqual(policy.judge(old, jwt_for(14, 1), 10), (True, False))  # < floor
        self.assertEqual(policy.judge(old, jwt_for(9, 1), 10), (False, False))  # expired
        self.assertEqual(policy.judge(None, "opaque", 10), (True, True))

    def test_backoff(self) -> None:
        policy = self.policy()
        self.assertEqual([policy.backoff() for _ in range(7)], [5, 10, 20, 40, 60, 60, 60])
        policy.succeeded()
        self.assertEqual(policy.backoff(), 5)
