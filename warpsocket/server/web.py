"""HTTP side of a WarpSocket port: the WebSocket path, /healthz and /metrics."""

from __future__ import annotations

import hashlib
from importlib import resources
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


class BundleResource(Resource):
    """The browser client (clients/js, built into warpsocket/static/), as
    Socket.IO serves its own: ``import ... from "/warpsocket.js"``.

    Revalidated on every use (the URL carries no version) with a strong ETag,
    and readable cross-origin, since a page's module scripts are fetched in
    CORS mode and the page is often served from another origin.
    """

    isLeaf = True

    def __init__(self, body: bytes, content_type: bytes) -> None:
        super().__init__()
        self.body = body
        self.content_type = content_type
        self.etag = b'"' + hashlib.sha256(body).hexdigest()[:32].encode("ascii") + b'"'

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", self.content_type)
        request.setHeader(b"cache-control", b"public, no-cache")
        request.setHeader(b"etag", self.etag)
        request.setHeader(b"access-control-allow-origin", b"*")
        request.setHeader(b"x-content-type-options", b"nosniff")
        if request.getHeader(b"if-none-match") == self.etag:
            request.setResponseCode(304)
            return b""
        return self.body

    def render_HEAD(self, request: Request) -> bytes:
        return self.render_GET(request)


BUNDLE_FILES = {
    b"warpsocket.js": b"text/javascript; charset=utf-8",
    b"warpsocket.js.map": b"application/json; charset=utf-8",
}


def _bundle_resources() -> dict[bytes, BundleResource]:
    """The shipped bundle files; none when the package was built without them."""
    found: dict[bytes, BundleResource] = {}
    folder = resources.files("warpsocket") / "static"
    for name, content_type in BUNDLE_FILES.items():
        try:
            body = (folder / name.decode("ascii")).read_bytes()
        except OSError:
            continue
        found[name] = BundleResource(body, content_type)
    return found


class RootResource(Resource):
    def getChild(self, path: bytes, request: Request) -> Resource:
        # "/" traverses to the child b"": serve it here instead of a 404.
        if path == b"":
            return self
        return super().getChild(path, request)  # type: ignore[no-any-return]

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"WarpSocket server. WebSocket endpoint, /healthz, /metrics, /warpsocket.js.\n"


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
    for name, bundle in _bundle_resources().items():
        root.putChild(name, bundle)
    site = GuardedSite(root, factory.gate)
    site.noisy = False
    if not hub.options.debug:
        # One access-log line per WebSocket upgrade costs more than the upgrade.
        site.log = lambda request: None  # type: ignore[method-assign]
    return site
