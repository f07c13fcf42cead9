"""The mock server: a real WarpSocket server that plays a scenario (docs/mock.md).

``MockService`` is the real thing (``Hub`` and ``WarpSocketService``: the
whole protocol, the same codecs, resume, acks, rooms, RPC) with a scenario
installed through the hub's public API: RPC methods are handlers, triggers
are an open hook, a handler per client event and a middleware that watches
subscribes; events go out with ``hub.send``/``publish``/``broadcast``. The
faults are what a network or an operator would do: ``wire.py`` delays and
stalls the bytes under the WebSocket, ``restart`` replaces the hub by a new
one (the in-memory histories and sessions are gone, as after a process
restart: clients see new epochs and ``recovered: false``), ``go_away``
takes the drain path (``4500`` with ``{"retry_after_ms": N}``, upgrades
refused meanwhile), ``refuse_tokens`` has the authenticator refuse.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any, cast

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Site

from warpsocket.mock.engine import ScenarioEngine, Values
from warpsocket.mock.scenario import EventAction, FaultAction, RpcMethod, Scenario
from warpsocket.mock.wire import ShapedTransport, ShapingFactory, shaped
from warpsocket.protocol.codes import ErrorCode
from warpsocket.protocol.envelope import Envelope, MessageType
from warpsocket.server.context import Context
from warpsocket.server.hub import Hub
from warpsocket.server.middleware import Middleware, Reject
from warpsocket.server.options import HubOptions
from warpsocket.server.security.auth import AuthError, Identity
from warpsocket.server.service import EndpointListener, WarpSocketService
from warpsocket.server.tls_reload import reloadable_endpoint


class MockService(MultiService):
    """Listens on ``endpoints`` and serves the scenario; ``restart`` swaps in a new hub.

    ``hub`` is the current hub; ``generation`` counts restarts. ``app`` (the
    ``--app`` callable) is called with every new hub before the scenario is
    installed on it, so a scenario can stand in for part of a real app;
    ``setup_site(site, hub)`` likewise with every new site (the HTTP API).
    """

    log = Logger()

    def __init__(
        self,
        scenario: Scenario,
        endpoints: Sequence[str],
        *,
        options: HubOptions | None = None,
        path: str = "/ws",
        app: Callable[[Hub], Any] | None = None,
        setup_site: Callable[[Site, Hub], None] | None = None,
        reactor: Any = None,
        clock: IReactorTime | None = None,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.scenario = scenario
        options = options if options is not None else HubOptions()
        # Any room, as a front-end under development expects.
        self.options = dataclasses.replace(options, open_rooms=True)
        if scenario.auth is not None:
            security = dataclasses.replace(
                self.options.security, authenticator=MockAuthenticator(self), require_auth=True
            )
            self.options = dataclasses.replace(self.options, security=security)
        self.path = path
        self.app = app
        self.setup_site = setup_site
        self.generation = 0
        self.engine = ScenarioEngine(scenario, self.clock, self)
        # refuse_tokens: refused until this time, or this many more hellos.
        self.refuse_code = ErrorCode.UNAUTHORIZED
        self.refuse_until = 0.0
        self.refuse_count = 0
        self.tokens_refused = 0
        self.draining_until = 0.0
        self._timers: set[IDelayedCall] = set()
        self.current = self._new_server()
        self.current.setServiceParent(self)
        self.shaper = ShapingFactory(
            self.current.site, self.clock, self.options.security.max_outbound_buffer
        )
        self.listeners: list[EndpointListener] = []
        for description in endpoints:
            endpoint, _ = reloadable_endpoint(self.reactor, description)
            listener = EndpointListener(endpoint, cast(Any, self.shaper))
            listener.setServiceParent(self)
            self.listeners.append(listener)

    @property
    def hub(self) -> Hub:
        return self.current.hub

    @property
    def ports(self) -> list[IListeningPort]:
        return [listener.port for listener in self.listeners if listener.port is not None]

    def startService(self) -> None:
        super().startService()
        self.engine.start()

    def stopService(self) -> Deferred[None]:
        self.engine.stop()
        for call in self._timers:
            if call.active():
                call.cancel()
        self._timers.clear()
        for transport in self.shaper.connections:
            transport.reshape(delay=0.0, stall_until=0.0)  # the goodbyes go out now
        return cast("Deferred[None]", super().stopService())

    def _later(self, delay: float, func: Callable[..., object], *args: Any) -> None:
        """A timer of a fault, cancelled if the service stops first."""
        holder: list[IDelayedCall] = []

        def run() -> None:
            self._timers.discard(holder[0])
            func(*args)

        holder.append(self.clock.callLater(delay, run))
        self._timers.add(holder[0])

    # ------------------------------------------------------------ the hub

    def _new_server(self) -> WarpSocketService:
        hub = Hub(self.options, clock=self.clock, reactor=self.reactor)
        if self.app is not None:
            self.app(hub)
        self._install(hub)
        server = WarpSocketService(hub, [], path=self.path, reactor=self.reactor)
        if self.setup_site is not None:
            self.setup_site(server.site, hub)
        if self.scenario.control.enabled:
            from warpsocket.mock.control import mount_control

            mount_control(server.site, self)
        return server

    def _install(self, hub: Hub) -> None:
        engine = self.engine
        for method in self.scenario.rpc.values():
            hub.on(method.name, self._rpc_handler(method))
        for name in {r.trigger.name for r in self.scenario.rules if r.trigger.kind == "event"}:
            assert name is not None
            hub.on(name, self._event_handler(name, hub.handlers.get(name)))

        def opened(ctx: Context, resumed: bool) -> None:
            info = hub.session_info(ctx.session)
            engine.connected(ctx.session, ctx.user, info.rooms if info else frozenset())

        hub.on_open(opened)
        hub.use(_JoinWatch(self, hub))

    def _rpc_handler(self, method: RpcMethod) -> Callable[[Context, Any], Any]:
        def handle(ctx: Context, data: Any) -> Any:
            values = {
                "session": ctx.session,
                "user": ctx.user,
                "event": method.name,
                "data": data,
                "seq": 0,
                "now": int(self.clock.seconds() * 1000),
            }

            def answer(_: object = None) -> Any:
                if method.error_code is not None:
                    assert method.error_message is not None
                    message = str(method.error_message.render(values) or "")
                    code = method.error_code
                    known = code in ErrorCode._value2member_map_
                    # An application's own code travels as the number it is.
                    raise Reject(
                        ErrorCode(code) if known else cast(ErrorCode, code), message or "error"
                    )
                assert method.result is not None
                return method.result.render(values)

            if method.delay > 0:
                return deferLater(self.clock, method.delay, answer)
            return answer()

        return handle

    def _event_handler(
        self, name: str, app_handler: Callable[[Context, Any], Any] | None
    ) -> Callable[[Context, Any], Any]:
        def handle(ctx: Context, data: Any) -> Any:
            self.engine.client_event(ctx.session, ctx.user, name, data)
            return app_handler(ctx, data) if app_handler is not None else None

        return handle

    # ------------------------------------------------------------ Performer (engine.py)

    def alive(self, session: str) -> bool:
        return self.hub.session_info(session) is not None

    def emit(self, action: EventAction, values: Values, session: str | None) -> Deferred[Any]:
        hub = self.hub
        data = action.data.render(values)
        sent: Deferred[Any]
        if action.room is not None:
            sent = hub.publish(action.room, action.event, data, ttl=action.ttl)
        elif action.broadcast:
            sent = hub.broadcast(action.event, data, ttl=action.ttl)
        elif session is not None:
            sent = hub.send(session, action.event, data, ack=action.ack, ttl=action.ttl)
        else:
            return succeed(None)
        return sent.addErrback(self._emit_failed, action.event)

    def _emit_failed(self, failure: Failure, event: str) -> None:
        self.log.info("mock event {event}: {why}", event=event, why=failure.getErrorMessage())

    def fault(self, action: FaultAction, session: str | None) -> int:
        """Inject a fault; returns how many connections it touched (faults of
        the whole server, restart, refuse_tokens and go_away to all, count 1)."""
        kind = action.fault
        self.log.info("mock fault {kind} ({target})", kind=kind, target=session or "all")
        if kind == "restart":
            self.restart()
            return 1
        if kind == "refuse_tokens":
            self.refuse_code = ErrorCode(action.code or 4100)
            if action.duration is not None:
                self.refuse_until = self.clock.seconds() + action.duration
            else:
                self.refuse_count += action.count or 1
            return 1
        if kind == "clear":
            self.refuse_until, self.refuse_count = 0.0, 0
            self.draining_until = 0.0
            self.hub.port.draining = False
            for transport in self.shaper.connections:
                transport.reshape(delay=0.0, stall_until=0.0)
            return 1
        if kind == "go_away" and session is None:
            return self.go_away(action.retry_after)
        connections = self.connections(session)
        for conn in connections:
            self._fault_one(action, conn)
        return len(connections)

    def _fault_one(self, action: FaultAction, conn: Any) -> None:
        kind = action.fault
        if kind == "cut":
            conn.abort()
        elif kind == "close":
            conn.close(int(action.code or 1000), action.reason)
        elif kind == "go_away":
            conn.close(int(ErrorCode.GOING_AWAY), _hint(action.retry_after))
        else:
            transport = shaped(conn.transport)
            if transport is None:
                return
            if kind == "stall":
                transport.reshape(stall_until=self.clock.seconds() + (action.duration or 0.0))
            elif kind == "delay":
                transport.reshape(delay=action.by or 0.0)
                if action.duration is not None:
                    self._later(action.duration, _undelay, transport, action.by)

    def connections(self, session: str | None) -> list[Any]:
        """The open WebSocket connections of a session (or all of them)."""
        return [
            conn
            for conn in self.hub.port.connections.values()
            if session is None or conn.session == session
        ]

    def go_away(self, retry_after: float) -> int:
        """The drain path without the stop: upgrades refused with ``503`` and
        ``Retry-After``, every client closed with 4500 and the hint, pending
        acknowledged sends failed with 4500; serving again after the hint."""
        hub = self.hub
        count = len(hub.port.connections)
        hub.port.draining = True
        self.draining_until = self.clock.seconds() + retry_after
        hub.port.close_all(ErrorCode.GOING_AWAY, _hint(retry_after))
        hub.port.fail_pending_acks(ErrorCode.GOING_AWAY)
        self._later(retry_after, self._undrain)
        return count

    def _undrain(self) -> None:
        if self.clock.seconds() >= self.draining_until:
            self.hub.port.draining = False

    def restart(self) -> None:
        """A crash and a restart: every connection cut, a new hub (new epochs)."""
        old = self.current
        self.engine.forget_sessions()
        self.generation += 1
        self.current = self._new_server()
        self.shaper.switch(self.current.site)
        old.hub.port.abort_all()
        old.disownServiceParent()  # stops it: its timers and backend
        self.current.setServiceParent(self)  # started at once if we run

    # ------------------------------------------------------------ refuse_tokens

    def refusing(self) -> bool:
        """Whether to refuse this token (counted in ``tokens_refused``)."""
        if self.clock.seconds() < self.refuse_until:
            self.tokens_refused += 1
            return True
        if self.refuse_count > 0:
            self.refuse_count -= 1
            self.tokens_refused += 1
            return True
        return False

    def state(self) -> dict[str, Any]:
        """What ``GET /mock/state`` reports."""
        hub = self.hub
        now = self.clock.seconds()
        sessions = []
        for session in sorted(hub.core.sessions):
            info = hub.session_info(session)
            if info is not None:
                sessions.append(
                    {
                        "id": info.id,
                        "user": info.user,
                        "rooms": sorted(info.rooms),
                        "connected": info.connected,
                    }
                )
        return {
            "scenario": self.scenario.name,
            "generation": self.generation,
            "connections": len(hub.port.connections),
            "sessions": sessions,
            "fired": dict(self.engine.fired),
            "draining": hub.port.draining,
            "delayed": sum(1 for t in self.shaper.connections if t.delay > 0),
            "stalled": sum(1 for t in self.shaper.connections if t.stalled_until > now),
            "refusing_tokens": now < self.refuse_until or self.refuse_count > 0,
            "tokens_refused": self.tokens_refused,
            "control": {
                "faults": sorted(self.scenario.control.faults),
                "emit": self.scenario.control.emit,
            },
        }


def _hint(seconds: float) -> str:
    return json.dumps({"retry_after_ms": max(1, int(seconds * 1000))})


def _undelay(transport: ShapedTransport, by: float | None) -> None:
    if transport.delay == by:
        transport.reshape(delay=0.0)


class _JoinWatch(Middleware):
    """After a client's ``subscribe`` was handled, fire the join triggers of its new rooms."""

    def __init__(self, service: MockService, hub: Hub) -> None:
        self.service = service
        self.hub = hub

    def on_inbound(self, ctx: Context, envelope: Envelope) -> Envelope:
        if envelope.type is MessageType.SUBSCRIBE:
            self.service.clock.callLater(0, self._check, ctx.session, ctx.user)
        return envelope

    def _check(self, session: str, user: str | None) -> None:
        info = self.hub.session_info(session)
        if info is not None and self.service.hub is self.hub:
            self.service.engine.rooms_now(session, user, info.rooms)


class MockAuthenticator:
    """Any token (or the scenario's ``auth.tokens``), unless ``refuse_tokens`` is on."""

    def __init__(self, service: MockService) -> None:
        self.service = service

    def authenticate(self, token: str, now: float) -> Identity:
        service = self.service
        if service.refusing():
            raise AuthError(service.refuse_code, "mock_refused")
        auth = service.scenario.auth
        tokens = auth.tokens if auth is not None else None
        if tokens is None:
            return Identity(None, {})
        user = tokens.get(token)
        if user is None:
            raise AuthError(ErrorCode.UNAUTHORIZED, "unknown_token")
        return Identity(user, {"sub": user})
