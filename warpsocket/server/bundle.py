"""The TypeScript client's browser bundle, served at ``/warpsocket.js``.

``clients/js`` builds it into ``warpsocket/static/`` (package data), so that
``pip install`` alone serves it, as Socket.IO serves its own client.
"""

from __future__ import annotations

import hashlib
from importlib import resources

from twisted.web.resource import Resource
from twisted.web.server import Request


class BundleResource(Resource):
    """One bundle file: ``import ... from "/warpsocket.js"`` in a page.

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


def add_bundle(root: Resource) -> None:
    """Serve the bundle files under ``root``."""
    for name, bundle in _bundle_resources().items():
        root.putChild(name, bundle)
