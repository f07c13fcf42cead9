"""HTTP side of a WarpSocket port: the WebSocket path, /healthz and /metrics."""

from __future__ import annotations

from typing import Any

from autobahn.twisted.resource import WebSocketResource
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.interfaces import IAddress
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from warpsocket.server.hub import Hub
from warpsocket.server.protocol import WarpSocketServerFactory
from warpsocket.server.security.gate import Gate, GuardProtocol


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


class GuardedSite(Site):
    """A Site whose every connection is wrapped in a ``GuardProtocol``: the
    address rules, connection limits and the upgrade deadline apply before
    the HTTP parser sees a byte (docs/security.md)."""

    def __init__(self, resource: Resource, gate: Gate, **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)
        self.gate = gate

    def buildProtocol(self, addr: IAddress | None) -> Any:
        channel = super().buildProtocol(addr)
        if channel is None:
            return None
        return GuardProtocol(self, channel, self.gate)

    # What ProtocolWrapper expects of its factory (a WrappingFactory).
    def registerProtocol(self, protocol: GuardProtocol) -> None:
        pass

    def unregisterProtocol(self, protocol: GuardProtocol) -> None:
        pass


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
    parent.putChild(segments[-1].encode(), WebSocketResource(factory))
    root.putChild(b"healthz", HealthResource(hub))
    root.putChild(b"metrics", MetricsResource(hub))
    from warpsocket.server.bundle import add_bundle  # the browser client (clients/js)

    add_bundle(root)
    site = GuardedSite(root, factory.gate)
    site.noisy = False
    if not hub.options.debug:
        # One access-log line per WebSocket upgrade costs more than the upgrade.
        site.log = lambda request: None  # type: ignore[method-assign]
    return site
