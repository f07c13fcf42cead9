"""The upgrade request parsed once (warpsocket/server/upgrade.py), over real sockets.

An upgrade on the WebSocket path goes straight to Autobahn; everything else,
and every request while draining, goes to twisted.web as before, byte for
byte. The security checks on the upgrade (origin, trusted X-Forwarded-For,
tokens, access lists, limits, PROXY headers) have their own tests in
test_security.py and test_attacks.py, which run over this path too.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

from tests.helpers.security import SecureTestCase, upgrade_request
from tests.wsclient import async_test, http_get, sleep, wait_until
from warpsocket.server.hub import HubOptions
from warpsocket.server.security import SecurityOptions
from warpsocket.server.service import WarpSocketService
from warpsocket.server.upgrade import MAX_HEAD, UpgradeSniffer
from warpsocket.server.web import GuardedSite


class UpgradeTests(SecureTestCase):
    def count_channels(self) -> list[Any]:
        """Each twisted.web channel the site makes, from now on."""
        made: list[Any] = []
        site = self.service.site
        original = GuardedSite.http_channel

        def counted(addr: Any) -> Any:
            channel = original(site, addr)  # type: ignore[arg-type]
            made.append(channel)
            return channel

        patcher = mock.patch.object(site, "http_channel", counted)
        patcher.start()
        self.addCleanup(patcher.stop)
        return made

    @async_test
    async def test_an_upgrade_on_the_path_skips_twisted_web(self) -> None:
        self.start_secure(SecurityOptions(), open_rooms=True)
        channels = self.count_channels()
        client = await self.open()
        welcome = await client.hello(rooms=["r"])
        self.assertEqual(welcome["type"], "welcome")
        self.assertEqual(channels, [])
        guard = self.server_side(client).transport
        self.assertNotIsInstance(guard.wrappedProtocol, UpgradeSniffer)  # type: ignore[union-attr]
        # Every other path is twisted.web's, on a channel of its own.
        code, body, _ = await http_get(self.port, "/healthz")
        self.assertEqual((code, body), (200, b"ok\n"))
        self.assertEqual(len(channels), 1)

    @async_test
    async def test_a_head_in_pieces_still_upgrades(self) -> None:
        self.start_secure(SecurityOptions())
        channels = self.count_channels()
        request = upgrade_request("/ws?token=")
        peer = await self.raw()
        for at in range(0, len(request), 7):
            peer.write(request[at : at + 7])
            await sleep(0.001)
        await wait_until(lambda: peer.status is not None, what="status")
        self.assertEqual(peer.status and peer.status[0], 101)
        self.assertEqual(channels, [])

    @async_test
    async def test_anything_unusual_goes_to_twisted_web(self) -> None:
        self.start_secure(SecurityOptions())
        channels = self.count_channels()
        plain = upgrade_request()
        cases = [
            plain.replace(b"HTTP/1.1", b"HTTP/1.0", 1),  # twisted.web upgrades it (as before)
            plain.replace(b"GET /ws ", b"GET /%77s ", 1),
            plain.replace(b"GET /ws ", b"GET /ws/ ", 1),
            plain.replace(b"\r\n\r\n", b"\r\nContent-Length: 0\r\n\r\n"),
            plain.replace(b"GET ", b"POST ", 1),
        ]
        for number, request in enumerate(cases, 1):
            status = await self.raw_status(request)
            self.assertEqual(len(channels), number, request)
            self.assertIn(status[0], (101, 400, 405, 426), request)

    @async_test
    async def test_an_oversized_head_is_refused_by_twisted_web(self) -> None:
        self.start_secure(SecurityOptions())
        channels = self.count_channels()
        padding = b"X-Pad: " + b"y" * 1000 + b"\r\n"
        request = upgrade_request().replace(b"\r\n\r\n", b"\r\n" + padding * 20 + b"\r\n")
        self.assertGreater(len(request), MAX_HEAD)
        status = await self.raw_status(request)
        self.assertIn(status[0], (400, 431))
        self.assertEqual(len(channels), 1)

    @async_test
    async def test_frames_right_behind_the_head_are_read(self) -> None:
        """A client may write its hello before the 101 arrives: one read, both."""
        self.start_secure(SecurityOptions())
        from tests.helpers.security import frame

        hello = b'{"type":"hello","id":"h1","timestamp":1,"data":{}}'
        peer = await self.raw(upgrade_request() + frame(hello))
        await wait_until(lambda: b'"welcome"' in peer.data, what="welcome")

    @async_test
    async def test_while_draining_twisted_web_answers_503(self) -> None:
        self.start_secure(SecurityOptions())
        channels = self.count_channels()
        self.hub.port.draining = True
        status = await self.raw_status(upgrade_request())
        self.assertEqual(status[0], 503)
        self.assertEqual(len(channels), 1)
        self.hub.port.draining = False

    def test_with_debug_every_request_goes_through_twisted_web(self) -> None:
        from warpsocket import Hub

        service = WarpSocketService(Hub(HubOptions(debug=True)), ["tcp:0:interface=127.0.0.1"])
        site: Any = service.site
        self.assertEqual(site.upgrade_prefix, b"")
        self.assertNotIsInstance(site.buildProtocol(None).wrappedProtocol, UpgradeSniffer)
