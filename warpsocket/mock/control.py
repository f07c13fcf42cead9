"""``/mock/``: the mock server's HTTP control endpoint (docs/mock.md).

``POST /mock/fault`` injects a fault now (``{"fault": "cut", "session":
optional}``, the same parameters as in a scenario), ``POST /mock/emit``
sends an event, ``GET /mock/state`` tells the sessions, rules fired and
faults in force. Only in mock mode, and only what the scenario's
``control`` section allows. Every body is hostile until checked: JSON
objects of at most 64 KiB, checked like a scenario; a bad one is answered
with 4xx and a message naming the field, and changes nothing.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from warpsocket.mock.engine import Values
from warpsocket.mock.scenario import (
    EventAction,
    FaultAction,
    Scenario,
    ScenarioError,
    emit_action,
    fault_action,
)
from warpsocket.server.hub import Hub

MAX_BODY = 64 * 1024


class Controlled(Protocol):
    """What the endpoint drives: server.py's ``MockService``, which mounts it."""

    @property
    def hub(self) -> Hub: ...

    @property
    def scenario(self) -> Scenario: ...

    @property
    def clock(self) -> IReactorTime: ...

    def state(self) -> dict[str, Any]: ...

    def fault(self, action: FaultAction, session: str | None) -> int: ...

    def emit(self, action: EventAction, values: Values, session: str | None) -> object: ...


class ControlError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ControlResource(Resource):
    isLeaf = True

    def __init__(self, service: Controlled) -> None:
        super().__init__()
        self.service = service

    def render(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        self._cors(request)
        try:
            return _dump(self._route(request))
        except ControlError as error:
            request.setResponseCode(error.status)
            return _dump({"error": error.message})

    def _route(self, request: Request) -> Any:
        path = b"/".join(request.postpath or [])
        method = request.method
        routes = {b"fault": b"POST", b"emit": b"POST", b"state": b"GET"}
        if path not in routes:
            raise ControlError(404, "no such control: use /mock/fault, /mock/emit or /mock/state")
        if method == b"OPTIONS":
            return {}
        if method != routes[path]:
            request.setHeader(b"allow", routes[path])
            raise ControlError(405, f"{path.decode()} takes {routes[path].decode()}")
        if path == b"state":
            return self.service.state()
        body = self._body(request)
        if path == b"fault":
            return self._fault(body)
        return self._emit(body)

    def _body(self, request: Request) -> dict[str, Any]:
        length = request.getHeader(b"content-length")
        if getattr(request, "too_large", False) or (
            length is not None and length.isdigit() and int(length) > MAX_BODY
        ):
            raise ControlError(413, f"body larger than {MAX_BODY} bytes")
        kind = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if kind != b"application/json":
            raise ControlError(415, "send JSON with content-type: application/json")
        raw = request.content.read(MAX_BODY + 1) if request.content is not None else b""
        if len(raw) > MAX_BODY:
            raise ControlError(413, f"body larger than {MAX_BODY} bytes")
        try:
            body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ControlError(400, f"body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ControlError(400, "body must be a JSON object")
        return body

    def _session(self, body: dict[str, Any]) -> str | None:
        session = body.get("session")
        if session is None:
            return None
        if not isinstance(session, str):
            raise ControlError(400, "session: must be a string")
        if self.service.hub.session_info(session) is None:
            raise ControlError(404, f"session: no session {session[:80]!r} here")
        return session

    def _fault(self, body: dict[str, Any]) -> Any:
        try:
            action = fault_action(body, "body", frozenset({"session"}))
        except ScenarioError as exc:
            raise ControlError(400, str(exc)) from None
        control = self.service.scenario.control
        if action.fault not in control.faults:
            raise ControlError(403, f"the scenario does not allow {action.fault} (control.faults)")
        if action.fault == "refuse_tokens" and self.service.scenario.auth is None:
            raise ControlError(409, "refuse_tokens needs an auth section in the scenario")
        session = self._session(body)
        if session is not None and action.fault in ("restart", "refuse_tokens", "clear"):
            raise ControlError(400, f"session: {action.fault} is not per session")
        affected = self.service.fault(action, session)
        return {"ok": True, "fault": action.fault, "affected": affected}

    def _emit(self, body: dict[str, Any]) -> Any:
        if not self.service.scenario.control.emit:
            raise ControlError(403, "the scenario does not allow emit (control.emit)")
        try:
            action, _ = emit_action(body, "body")
        except ScenarioError as exc:
            raise ControlError(400, str(exc)) from None
        session = self._session(body)
        info = self.service.hub.session_info(session) if session is not None else None
        values = {
            "seq": 0,
            "now": int(self.service.clock.seconds() * 1000),
            "session": session,
            "user": info.user if info is not None else None,
        }
        self.service.emit(action, values, session)
        return {"ok": True}

    def _cors(self, request: Request) -> None:
        """Pages the WebSocket admits (the same origin rules) may call the control too."""
        raw = request.getHeader(b"origin")
        if raw is None:
            return
        origin = raw.decode("latin-1")
        security = self.service.hub.options.security
        if security.origin_policy.check(origin, security.auth_required) is None:
            request.setHeader(b"access-control-allow-origin", raw)
            request.setHeader(b"access-control-allow-methods", b"GET, POST")
            request.setHeader(b"access-control-allow-headers", b"content-type")
            request.setHeader(b"vary", b"origin")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _dump(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8") + b"\n"


def mount_control(site: Site, service: Controlled) -> None:
    """Serve ``/mock/`` on ``site``; bodies bounded as they arrive."""
    from twisted.web.server import Request as PlainRequest

    from warpsocket.server.http_api import limited_request

    root: Any = site.resource
    root.putChild(b"mock", ControlResource(service))
    if site.requestFactory is PlainRequest:
        site.requestFactory = limited_request(MAX_BODY)
