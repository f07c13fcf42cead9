"""HTTP side of a WarpSocket port: the WebSocket path, /healthz and /metrics."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.interfaces import IAddress
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from warpsocket.protocol.codes import ErrorCode
from warpsocket.server.http_api import ApiResource, limited_request
from warpsocket.server.hub import Hub
from warpsocket.server.protocol import WarpSocketServerFactory
from warpsocket.server.security.gate import Gate, GuardProtocol, find_guard
from warpsocket.server.security.limits import HTTP_STATUS
from warpsocket.server.upgrade import UpgradeSniffer


class HealthResource(Resource):
    """200 ``ok`` while serving; 503 with the reason while draining or degraded."""

    isLeaf = True

    def __init__(self, hub: Hub) -> None:
        super().__init__()
        self.hub = hub

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        problem = self.hub.health
        if problem is not None:
            # "draining", or "degraded: <reason>" while the cluster backend
            # cannot serve (docs/cluster.md); local clients stay connected.
            request.setResponseCode(503)
            return problem.encode("utf-8") + b"\n"
        return b"ok\n"


class UpgradeResource(WebSocketResource):
    """The WebSocket path: while draining, ``503`` with ``Retry-After`` instead
    of an upgrade, so that a client (or the balancer) tries another node."""

    def __init__(self, factory: WarpSocketServerFactory) -> None:
        super().__init__(factory)
        self.hub = factory.hub

    def render(self, request: Request) -> Any:
        if not self.hub.draining:
            return super().render(request)
        request.setResponseCode(503)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        seconds = max(1, math.ceil(self.hub.options.reconnect_hint_ms / 1000))
        request.setHeader(b"retry-after", str(seconds).encode("ascii"))
        self.hub.metrics.rejected_handshakes.labels("draining").inc()
        return b"draining\n"


class MetricsResource(Resource):
    isLeaf = True

    def __init__(self, hub: Hub) -> None:
        super().__init__()
        self.hub = hub

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        payload: bytes = generate_latest(self.hub.metrics.registry)
        return payload


class RootResource(Resource):
    def getChild(self, path: bytes, request: Request) -> Resource:
        # "/" traverses to the child b"": serve it here instead of a 404.
        if path == b"":
            return self
        return super().getChild(path, request)  # type: ignore[no-any-return]

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"WarpSocket server. WebSocket endpoint, /healthz, /metrics.\n"


class RefusedResource(Resource):
    """An HTTP refusal carrying a registry code, as the guard's (limits.http_refusal)."""

    isLeaf = True

    def __init__(self, code: ErrorCode) -> None:
        super().__init__()
        self.code = code

    def render(self, request: Request) -> bytes:
        text = f"{int(self.code)} {self.code.wire_name}"
        request.setResponseCode(HTTP_STATUS.get(self.code, 403), text.encode("ascii"))
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return text.encode("ascii") + b"\n"


class GuardedSite(Site):
    """A Site whose every connection is wrapped in a ``GuardProtocol``: the
    address rules, connection limits and the upgrade deadline apply before
    the HTTP parser sees a byte (docs/security.md)."""

    def __init__(self, resource: Resource, gate: Gate, **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)
        self.gate = gate
        # Set by ``serve_upgrades``: upgrades on this path skip twisted.web.
        self.upgrade_prefix = b""
        self._websocket: WarpSocketServerFactory | None = None

    def serve_upgrades(self, path: str, factory: WarpSocketServerFactory) -> None:
        """Hand upgrade requests on ``path`` straight to ``factory``'s protocol
        (upgrade.py); the resource tree still serves everything else."""
        self.upgrade_prefix = b"GET " + path.encode("ascii")
        self._websocket = factory

    def buildProtocol(self, addr: IAddress | None) -> Any:
        inner: Any
        if self._websocket is not None:
            inner = UpgradeSniffer(self, addr)
        else:
            inner = super().buildProtocol(addr)
            if inner is None:
                return None
        return GuardProtocol(self, inner, self.gate)

    # What the sniffer needs (upgrade.UpgradeSite).

    def http_channel(self, addr: IAddress | None) -> Any:
        return super().buildProtocol(addr)

    def websocket(self, addr: IAddress | None) -> Any:
        assert self._websocket is not None
        return self._websocket.buildProtocol(addr)

    def accepts_upgrades(self) -> bool:
        assert self._websocket is not None
        return not self._websocket.hub.draining

    def getResourceFor(self, request: Request) -> Any:
        resource = super().getResourceFor(request)
        if isinstance(resource, WebSocketResource):
            return resource  # checked in onConnect, with the origin and the token
        # Every other path (/healthz, /metrics, ...) obeys the address rules
        # too, which behind trusted proxies only the request can tell.
        transport = getattr(request.channel, "transport", None)
        code, _ = self.gate.check_http(
            find_guard(transport), transport, _header(request, b"x-forwarded-for")
        )
        if code is not None:
            self.gate.metrics.refused_connections.labels(code.wire_name).inc()
            return RefusedResource(code)
        return resource

    # What ProtocolWrapper expects of its factory (a WrappingFactory).
    def registerProtocol(self, protocol: GuardProtocol) -> None:
        pass

    def unregisterProtocol(self, protocol: GuardProtocol) -> None:
        pass


def _header(request: Request, name: bytes) -> str | None:
    value = request.getHeader(name)
    return value.decode("latin-1") if value is not None else None


def build_metrics_site(hub: Hub) -> Site:
    """``/metrics`` (and ``/healthz``) alone, for ``--metrics-endpoint``: an
    internal port, not behind the guard (bind it to an internal interface)."""
    root = Resource()
    root.putChild(b"metrics", MetricsResource(hub))
    root.putChild(b"healthz", HealthResource(hub))
    site = Site(root)
    site.noisy = False
    return site


def remove_metrics(site: Site) -> None:
    """Stop serving ``/metrics`` on a public site (served elsewhere instead)."""
    root: Any = site.resource
    root.children.pop(b"metrics", None)


def add_http_api(
    site: Site,
    hub: Hub,
    keys: Sequence[bytes],
    max_body: int | None = None,
    *,
    rate: float | None = None,
    burst: int | None = None,
) -> None:
    """Serve the HTTP server API under ``/api/`` on ``site`` (docs/http-api.md).

    Bodies are bounded as they arrive (``max_body``, default the hub's
    message size limit); the address rules apply as on every other path.
    ``rate``/``burst``: each key's token bucket (None: no limit)."""
    limit = max_body if max_body is not None else hub.options.core.max_message_size
    root: Any = site.resource
    root.putChild(b"api", ApiResource(hub, keys, limit, rate=rate, burst=burst))
    site.requestFactory = limited_request(limit)


def add_inspector(site: Site, hub: Hub, key: bytes) -> None:
    """Serve the live inspector at ``/inspect`` behind ``key`` (docs/observability.md).
    The hub needs ``HubOptions(inspect=True)`` for the envelope lists."""
    from warpsocket.server.observe.inspect import InspectResource

    root: Any = site.resource
    root.putChild(b"inspect", InspectResource(hub, key))


def _path_only(formatter: Any) -> Any:
    """An access-log formatter that leaves the query string out (a token
    given as ?token= must not reach the log)."""

    def format_line(timestamp: str, request: Request) -> str:
        line: str = formatter(timestamp, _WithoutQuery(request))
        return line

    return format_line


class _WithoutQuery:
    def __init__(self, request: Request) -> None:
        self._request = request
        self.uri = request.uri.split(b"?", 1)[0]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


def add_demo(site: Site) -> None:
    """Serve the live demo page at ``/demo`` (``--demo``; warpsocket/server/demo.py)."""
    from warpsocket.server.demo import demo_resource

    root: Any = site.resource
    root.putChild(b"demo", demo_resource())


def build_site(hub: Hub, path: str = "/ws") -> Site:
    """One Site serves the WebSocket path and the HTTP endpoints on the same port."""
    factory = WarpSocketServerFactory(hub)
    root = RootResource()
    segments = [s for s in path.split("/") if s]
    if not segments:
        raise ValueError("the WebSocket path needs at least one segment, e.g. /ws")
    parent: Resource = root
    for segment in segments[:-1]:
        child = Resource()
        parent.putChild(segment.encode(), child)
        parent = child
    parent.putChild(segments[-1].encode(), UpgradeResource(factory))
    root.putChild(b"healthz", HealthResource(hub))
    root.putChild(b"metrics", MetricsResource(hub))
    from warpsocket.server.bundle import add_bundle  # the browser client (clients/js)

    add_bundle(root)
    site = GuardedSite(root, factory.gate)
    site.noisy = False
    if not hub.options.debug:
        # One access-log line per WebSocket upgrade costs more than the upgrade;
        # parsing the upgrade twice (twisted.web, then Autobahn) as much again.
        site.log = lambda request: None  # type: ignore[method-assign]
        site.serve_upgrades("/" + "/".join(segments), factory)
    else:
        site._logFormatter = _path_only(site._logFormatter)
    return site
