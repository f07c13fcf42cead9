"""The server as a Twisted service: hub timers and listening endpoints in a MultiService."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Site

from warpsocket.protocol.codes import ErrorCode
from warpsocket.server.hub import Hub
from warpsocket.server.tls_reload import ReloadableTLS, reloadable_endpoint
from warpsocket.server.web import build_site


class WarpSocketService(MultiService):
    """Listens on every endpoint, ticks the hub, and shuts down gracefully.

    ``stopService``: ``/healthz`` turns 503 at once, the ports stop
    accepting, every client is closed with ``4500 going_away`` and a
    reconnect hint, pending acknowledged sends are failed with that code,
    and the stop completes when the last connection is gone or after
    ``shutdown_timeout`` seconds, whichever comes first.
    """

    def __init__(
        self, hub: Hub, endpoints: Sequence[str], path: str = "/ws", reactor: Any = None
    ) -> None:
        super().__init__()
        self.hub = hub
        self.reactor = reactor if reactor is not None else hub.reactor
        self.site = build_site(hub, path)
        self.listeners: list[EndpointListener] = []
        self.tls: list[ReloadableTLS] = []
        for description in endpoints:
            endpoint, tls = reloadable_endpoint(self.reactor, description)
            if tls is not None:
                self.tls.append(tls)
            listener = EndpointListener(endpoint, self.site)
            listener.setServiceParent(self)
            self.listeners.append(listener)
        ticker = TimerService(hub.options.tick_interval, hub.tick)
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
        self.hub.draining = False
        self.hub.backend.start()
        super().startService()

    def stopService(self) -> Deferred[None]:
        hub = self.hub
        hub.draining = True
        stopped = super().stopService()
        hint = json.dumps({"retry_after_ms": hub.options.reconnect_hint_ms})
        hub.close_all(ErrorCode.GOING_AWAY, hint)
        hub.fail_pending_acks(ErrorCode.GOING_AWAY)
        drained = hub.when_empty()
        timeout = self.reactor.callLater(hub.options.shutdown_timeout, drained.cancel)

        def finish(_: object) -> None:
            if timeout.active():
                timeout.cancel()
            hub.abort_all()

        drained.addBoth(finish)
        both = DeferredList([stopped, drained], consumeErrors=True)

        def stop_backend(_: object) -> Deferred[None]:
            return hub.backend.stop()

        return both.addCallback(stop_backend)


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
