"""The live demo at ``/demo`` (``--demo``): a chat whose page shows the
client's recovery as it happens (docs/browser.md).

The page is static (``warpsocket/static/demo/``) and uses only the client
bundle the server serves at ``/warpsocket.js``: a chat line is a room
``publish`` with ``ack``, read back by ``subscribe``, so ``--demo`` needs no
application, only open rooms (which it turns on). Nothing is mounted
without ``--demo``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from importlib import resources

from twisted.web.resource import NoResource, Resource
from twisted.web.server import Request

DEMO_FILES = {
    "index.html": b"text/html; charset=utf-8",
    "demo.js": b"text/javascript; charset=utf-8",
    "demo.css": b"text/css; charset=utf-8",
}

# The page loads only its own files and the bundle, and talks only to this
# server's WebSocket path.
_CSP = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class DemoFile(Resource):
    isLeaf = True

    def __init__(self, body: bytes, content_type: bytes) -> None:
        super().__init__()
        self.body = body
        self.content_type = content_type
        self.etag = b'"' + hashlib.sha256(body).hexdigest()[:32].encode("ascii") + b'"'

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", self.content_type)
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"etag", self.etag)
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"content-security-policy", _CSP)
        request.setHeader(b"referrer-policy", b"no-referrer")
        if request.getHeader(b"if-none-match") == self.etag:
            request.setResponseCode(304)
            return b""
        return self.body

    def render_HEAD(self, request: Request) -> bytes:
        return self.render_GET(request)


class DemoResource(Resource):
    """``/demo`` (and ``/demo/``) is the page; ``/demo/<file>`` its assets."""

    def __init__(self, files: dict[str, DemoFile]) -> None:
        super().__init__()
        self.files = files

    def getChild(self, path: bytes, request: Request) -> Resource:
        name = path.decode("ascii", "replace") or "index.html"
        found = self.files.get(name)
        if found is None or request.postpath:
            return NoResource()
        return found

    def render_GET(self, request: Request) -> bytes:
        return self.files["index.html"].render_GET(request)

    def render_HEAD(self, request: Request) -> bytes:
        return self.render_GET(request)


def demo_resource() -> DemoResource:
    """The page and its assets, read once from the package."""
    folder = resources.files("warpsocket") / "static" / "demo"
    files = {
        name: DemoFile((folder / name).read_bytes(), content_type)
        for name, content_type in DEMO_FILES.items()
    }
    return DemoResource(files)


_SCHEMES = {"tcp": "http", "tcp6": "http", "ssl": "https"}


def demo_origins(endpoints: Iterable[str]) -> list[str]:
    """The loopback origins of the page on these endpoints (``tcp:8080`` gives
    ``http://localhost:8080`` and ``http://127.0.0.1:8080``), which ``--demo``
    allows when no ``--allow-origin`` is given. Other endpoint types (unix,
    systemd, ...) have no port to tell: give ``--allow-origin`` for them."""
    origins: list[str] = []
    for description in endpoints:
        kind, _, rest = description.partition(":")
        scheme = _SCHEMES.get(kind.strip().lower())
        if scheme is None:
            continue
        port = None
        for field in rest.split(":"):
            key, equals, value = field.partition("=")
            candidate = value if equals and key == "port" else (key if not equals else "")
            if candidate.isdigit():
                port = int(candidate)
                break
        if port is None or not 0 < port < 65536:
            continue
        for host in ("localhost", "127.0.0.1", "[::1]"):
            origin = f"{scheme}://{host}:{port}"
            if origin not in origins:
                origins.append(origin)
    return origins
