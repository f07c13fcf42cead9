"""Shared by the client test modules: a live server fixture, a hub, timing helpers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest

from warpsocket.client.client import ClientClosedError, WarpSocketClient
from warpsocket.client.options import ClientOptions
from warpsocket.core.backoff import Backoff
from warpsocket.core.server import CoreOptions
from warpsocket.protocol.envelope import Envelope
from warpsocket.server.hub import Hub, HubOptions
from warpsocket.server.service import WarpSocketService

reactor: Any = _reactor


FAST = Backoff(initial=0.02, factor=2.0, maximum=0.1, jitter=0.0)


def pause(seconds: float = 0.01) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


@inlineCallbacks
def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> Any:
    """Let real I/O happen until ``predicate`` holds (timers stay on Clocks)."""
    waited = 0.0
    while not predicate():
        if waited >= timeout:
            raise AssertionError("condition not reached in time")
        yield pause(0.01)
        waited += 0.01


class ServerFixture:
    def __init__(self, test: unittest.TestCase, hub: Hub, port: int = 0) -> None:
        self.test = test
        self.hub = hub
        self.service = WarpSocketService(hub, [f"tcp:{port}:interface=127.0.0.1"])
        self.service.startService()
        self.port = self.service.ports[0].getHost().port
        test.addCleanup(self.stop)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def stop(self) -> Deferred[None]:
        if not self.service.running:
            return Deferred.fromCoroutine(_nothing())
        return self.service.stopService()

    def drop_all(self) -> None:
        """Cut every connection abruptly, as a network failure would."""
        for connection in list(self.hub.port.connections.values()):
            connection.abort()


async def _nothing() -> None:
    return None


def make_hub(clock: Clock | None = None, **options: Any) -> Hub:
    core = options.pop("core", CoreOptions())
    return Hub(HubOptions(core=core, open_rooms=True, **options), clock=clock)


def reconnect_call(clock: Clock) -> Any:
    """The client's pending reconnect timer on ``clock``."""
    (call,) = [c for c in clock.getDelayedCalls() if getattr(c.func, "__name__", "") == "reconnect"]
    return call


def ignore_closed(failure: Any) -> None:
    failure.trap(ClientClosedError)


class ClientTestCase(unittest.TestCase):
    def client(self, url: str, clock: Clock | None = None, **options: Any) -> WarpSocketClient:
        options.setdefault("backoff", FAST)
        client = WarpSocketClient(url, ClientOptions(**options), clock=clock)
        self.addCleanup(client.close)
        return client


def spy_inbound(hub: Hub) -> list[Envelope]:
    """Every envelope the server core receives, in order: through ``receive``,
    or, for the hub's hot path (events and calls), ``check_message``."""
    seen: list[Envelope] = []
    receive = hub.core.receive
    check_message = hub.core.check_message
    inside: list[int] = []

    def spy(conn: int, envelope: Envelope, now: int) -> Any:
        seen.append(envelope)
        inside.append(1)
        try:
            return receive(conn, envelope, now)
        finally:
            inside.pop()

    def spy_check(conn: Any, session: Any, envelope: Envelope, now: int) -> Any:
        if not inside:  # (``receive`` calls it too: seen once)
            seen.append(envelope)
        return check_message(conn, session, envelope, now)

    hub.core.receive = spy  # type: ignore[method-assign]
    hub.core.check_message = spy_check  # type: ignore[method-assign]
    return seen
