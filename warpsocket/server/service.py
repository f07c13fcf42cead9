"""The server as a Twisted service: hub timers and listening endpoints in a MultiService."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Site

from warpsocket.protocol.codes import ErrorCode
from warpsocket.server.heap import (
    STARTUP_HEAP,
    YOUNG_THRESHOLD,
    YOUNG_THRESHOLD_OF_3_13,
    check_young_threshold,
)
from warpsocket.server.hub import Hub
from warpsocket.server.tls_reload import ReloadableTLS, reloadable_endpoint
from warpsocket.server.web import build_site


class WarpSocketService(MultiService):
    """Listens on every endpoint, runs the hub's timers, and drains gracefully.

    ``stopService`` drains so that a load balancer can see it
    (docs/deployment.md): the ports keep accepting throughout, ``/healthz``
    answers ``503 draining`` at once and new WebSocket upgrades are refused
    with ``503`` and ``Retry-After``. After ``drain_delay`` seconds (a
    pre-stop period for the balancer to stop routing here; 0 by default)
    every client is closed with ``4500 going_away`` and a reconnect hint and
    pending acknowledged sends fail with that code. The ports close when the
    last connection is gone, or ``shutdown_timeout`` seconds later with the
    rest aborted. Both delays run on the hub's clock.

    While it runs, what the process had when it started (modules, classes,
    the application's set-up) is frozen out of the cyclic collector's full
    collections (heap.py); ``freeze_heap=False`` leaves it unfrozen. On
    CPython 3.12 and before, the collector's young generation is collected
    every ``young_gc_threshold`` (2,000: CPython 3.13's default) net new
    objects instead of 700, unless the application changed the thresholds;
    ``young_gc_threshold=None`` leaves them as they are.
    """

    def __init__(
        self,
        hub: Hub,
        endpoints: Sequence[str],
        path: str = "/ws",
        reactor: Any = None,
        *,
        freeze_heap: bool = True,
        young_gc_threshold: int | None = YOUNG_THRESHOLD_OF_3_13,
    ) -> None:
        super().__init__()
        self.hub = hub
        self.freeze_heap = freeze_heap
        self._holds_heap = False
        if young_gc_threshold is not None:
            check_young_threshold(young_gc_threshold)
        self.young_gc_threshold = young_gc_threshold
        self._holds_threshold = False
        self.reactor = reactor if reactor is not None else hub.reactor
        self.site = build_site(hub, path)
        self.listeners: list[EndpointListener] = []
        self.tls: list[ReloadableTLS] = []
        self._stopping: Deferred[None] | None = None
        for description in endpoints:
            endpoint, tls = reloadable_endpoint(self.reactor, description)
            if tls is not None:
                self.tls.append(tls)
            listener = EndpointListener(endpoint, self.site)
            listener.setServiceParent(self)
            self.listeners.append(listener)
        # Housekeeping (ack retries, session expiry, backend); the connection
        # timers run on their own, each when due (timers.py).
        ticker = TimerService(hub.options.tick_interval, hub.port.tick)
        ticker.clock = hub.clock
        ticker.setServiceParent(self)

    @property
    def ports(self) -> list[IListeningPort]:
        """The listening ports (use port 0 in tests, then read the real one here)."""
        return [listener.port for listener in self.listeners if listener.port is not None]

    def reload_tls(self) -> bool:
        """Read every ``ssl:`` endpoint's key and certificate files again: new
        connections get the new certificate, open ones keep theirs. False if
        any reload failed (that endpoint keeps its current certificate)."""
        results = [tls.reload() for tls in self.tls]
        return all(results)

    def startService(self) -> None:
        self._stopping = None
        self.hub.port.draining = False
        self.hub.backend.start()
        super().startService()
        self.hub.port.timers.start()
        if self.freeze_heap and not self._holds_heap:
            # Last: the listening ports and the timers are part of the start-up heap.
            STARTUP_HEAP.freeze()
            self._holds_heap = True
        if self.young_gc_threshold is not None and not self._holds_threshold:
            YOUNG_THRESHOLD.hold(self.young_gc_threshold)
            self._holds_threshold = True

    def stopService(self) -> Deferred[None]:
        if self._stopping is not None:
            return self._stopping
        stopping = self._stopping = ensureDeferred(self._drain())

        def failed(failure: Failure) -> Failure:
            # Not stopped (the ports may still listen): a later call tries again.
            self._stopping = None
            return failure

        stopping.addErrback(failed)
        return stopping

    async def _drain(self) -> None:
        hub = self.hub
        hub.port.draining = True
        if hub.options.drain_delay > 0:
            await deferLater(hub.clock, hub.options.drain_delay, lambda: None)
        await self._send_clients_away()
        try:
            await super().stopService()  # the ports close, the ticker stops
            hub.port.timers.stop()
            await hub.backend.stop()
        finally:
            if self._holds_heap:
                self._holds_heap = False
                STARTUP_HEAP.thaw()
            if self._holds_threshold:
                self._holds_threshold = False
                YOUNG_THRESHOLD.release()

    def _send_clients_away(self) -> Deferred[None]:
        """4500 with the hint to everyone; fires when all are gone or given up on."""
        hub = self.hub
        hint = json.dumps({"retry_after_ms": hub.options.reconnect_hint_ms})
        hub.port.close_all(ErrorCode.GOING_AWAY, hint)
        hub.port.fail_pending_acks(ErrorCode.GOING_AWAY)
        drained = hub.port.when_empty()
        timeout = hub.clock.callLater(hub.options.shutdown_timeout, drained.cancel)

        def finish(_: object) -> None:
            if timeout.active():
                timeout.cancel()
            hub.port.abort_all()

        return drained.addBoth(finish)


class EndpointListener(Service):
    """Listens on one endpoint while running; a port that cannot be bound fails startup."""

    log = Logger()

    def __init__(self, endpoint: IStreamServerEndpoint, site: Site) -> None:
        self.endpoint = endpoint
        self.site = site
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        failures: list[Failure] = []
        listening = self.endpoint.listen(self.site)
        listening.addCallbacks(self._listening, failures.append)
        if failures:
            failures[0].raiseException()

    def _listening(self, port: IListeningPort) -> None:
        self.port = port

    def stopService(self) -> Deferred[None]:
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        return maybeDeferred(port.stopListening).addCallback(lambda _: None)
