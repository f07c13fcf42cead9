"""The TypeScript client's browser bundle, served by the server at /warpsocket.js."""

from __future__ import annotations

from importlib import resources

from twisted.internet import reactor
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from tests.wsclient import ServerTestCase, async_test, http_get


def _shipped(name: str) -> bytes:
    return (resources.files("warpsocket") / "static" / name).read_bytes()


class BundleTests(ServerTestCase):
    @async_test
    async def test_bundle_served_over_a_socket(self) -> None:
        """/warpsocket.js is the shipped module, revalidated by ETag, readable cross-origin."""
        self.start_server()
        code, body, headers = await http_get(self.port, "/warpsocket.js")
        self.assertEqual(code, 200)
        self.assertEqual(body, _shipped("warpsocket.js"))
        self.assertIn(b"WarpSocketClient", body)
        self.assertIn(b"sourceMappingURL=warpsocket.js.map", body)
        self.assertEqual(
            headers.getRawHeaders(b"content-type"), [b"text/javascript; charset=utf-8"]
        )
        self.assertEqual(headers.getRawHeaders(b"cache-control"), [b"public, no-cache"])
        self.assertEqual(headers.getRawHeaders(b"access-control-allow-origin"), [b"*"])
        self.assertEqual(headers.getRawHeaders(b"x-content-type-options"), [b"nosniff"])
        etag = (headers.getRawHeaders(b"etag") or [b""])[0]
        self.assertRegex(etag, rb'^"[0-9a-f]{32}"$')

        agent = Agent(reactor)
        url = f"http://127.0.0.1:{self.port}/warpsocket.js".encode("ascii")
        response = await agent.request(b"GET", url, Headers({b"if-none-match": [etag]}))
        self.assertEqual(response.code, 304)
        self.assertEqual(await readBody(response), b"")

    @async_test
    async def test_source_map_served(self) -> None:
        self.start_server()
        code, body, headers = await http_get(self.port, "/warpsocket.js.map")
        self.assertEqual(code, 200)
        self.assertEqual(body, _shipped("warpsocket.js.map"))
        self.assertEqual(
            headers.getRawHeaders(b"content-type"), [b"application/json; charset=utf-8"]
        )
        self.assertIn(b'"sourcesContent"', body)
