"""The live demo at /demo: served only with --demo (docs/browser.md)."""

from __future__ import annotations

import socket
from importlib import resources
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.trial import unittest

import tests.test_command as command_tests  # its ServeTests helpers (not its tests)
from tests.wsclient import async_test, http_get
from warpsocket.server.cli import Options, makeService
from warpsocket.server.demo import demo_origins


def _service(*argv: str) -> Any:
    options = Options()
    options.parseOptions(["--endpoint", "tcp:0:interface=127.0.0.1", *argv])
    return options, makeService(options)


class DemoServedTests(unittest.TestCase):
    def start(self, *argv: str) -> int:
        _, service = _service(*argv)
        service.startService()
        self.addCleanup(lambda: ensureDeferred(_stop(service)))
        port: int = service.ports[0].getHost().port
        return port

    @async_test
    async def test_no_demo_without_the_flag(self) -> None:
        port = self.start()
        for path in ("/demo", "/demo/", "/demo/demo.js", "/demo/demo.css"):
            code, _, _ = await http_get(port, path)
            self.assertEqual(code, 404, path)
        code, _, _ = await http_get(port, "/healthz")
        self.assertEqual(code, 200)

    @async_test
    async def test_demo_page_and_assets_with_the_flag(self) -> None:
        port = self.start("--demo")
        folder = resources.files("warpsocket") / "static" / "demo"
        for path, name, kind in (
            ("/demo", "index.html", b"text/html; charset=utf-8"),
            ("/demo/", "index.html", b"text/html; charset=utf-8"),
            ("/demo/demo.js", "demo.js", b"text/javascript; charset=utf-8"),
            ("/demo/demo.css", "demo.css", b"text/css; charset=utf-8"),
        ):
            code, body, headers = await http_get(port, path)
            self.assertEqual(code, 200, path)
            self.assertEqual(body, (folder / name).read_bytes())
            self.assertEqual(headers.getRawHeaders(b"content-type"), [kind])
            self.assertEqual(headers.getRawHeaders(b"x-content-type-options"), [b"nosniff"])
            csp = (headers.getRawHeaders(b"content-security-policy") or [b""])[0]
            self.assertIn(b"script-src 'self'", csp)
        for path in ("/demo/nope.js", "/demo/demo.js/more", "/demo/../demo.js", "/demo/%2e%2e"):
            code, _, _ = await http_get(port, path)
            self.assertEqual(code, 404, path)
        # The page imports the bundle the same server serves.
        code, _, _ = await http_get(port, "/warpsocket.js")
        self.assertEqual(code, 200)


class DemoServeTests(unittest.TestCase):
    """``warpsocket serve --demo``: the same flag through the console script."""

    timeout = 60
    serve = command_tests.ServeTests.serve
    until_serving = command_tests.ServeTests.until_serving

    @async_test
    async def test_serve_demo(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        process = self.serve("--endpoint", f"tcp:{port}:interface=127.0.0.1", "--demo")
        await self.until_serving(process, port)
        code, body, _ = await http_get(port, "/demo")
        self.assertEqual(code, 200)
        self.assertIn(b"/demo/demo.js", body)


async def _stop(service: Any) -> None:
    await service.stopService()


class DemoOptionsTests(unittest.TestCase):
    def test_demo_opens_rooms(self) -> None:
        options, _ = _service("--demo")
        self.assertTrue(options["hub_options"].open_rooms)
        plain, _ = _service()
        self.assertFalse(plain["hub_options"].open_rooms)

    def test_demo_allows_its_loopback_origins_unless_told(self) -> None:
        options = Options()
        options.parseOptions(["--endpoint", "tcp:8080", "--demo"])
        self.assertEqual(
            options["hub_options"].security.allowed_origins,
            ("http://localhost:8080", "http://127.0.0.1:8080", "http://[::1]:8080"),
        )
        told = Options()
        told.parseOptions(["--endpoint", "tcp:8080", "--demo", "--allow-origin", "https://x.test"])
        self.assertEqual(told["hub_options"].security.allowed_origins, ("https://x.test",))
        plain = Options()
        plain.parseOptions(["--endpoint", "tcp:8080"])
        self.assertEqual(plain["hub_options"].security.allowed_origins, ())

    def test_demo_origins_of_endpoints(self) -> None:
        self.assertEqual(
            demo_origins(
                [
                    "tcp:8080:interface=127.0.0.1",
                    "ssl:port=8443:privateKey=k.pem:certKey=c.pem",
                    "tcp6:9000",
                    "unix:/tmp/sock",
                    "tcp:0",
                    "tcp:interface=127.0.0.1",
                ]
            ),
            [
                "http://localhost:8080",
                "http://127.0.0.1:8080",
                "http://[::1]:8080",
                "https://localhost:8443",
                "https://127.0.0.1:8443",
                "https://[::1]:8443",
                "http://localhost:9000",
                "http://127.0.0.1:9000",
                "http://[::1]:9000",
            ],
        )
