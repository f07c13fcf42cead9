"""WarpSocketService: listening endpoints, the HTTP side and graceful shutdown."""

from __future__ import annotations

import json

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError, ConnectionRefusedError
from twisted.web.client import HTTPConnectionPool

from tests.wsclient import (
    HandshakeRefusedError,
    ServerTestCase,
    async_test,
    connect,
    http_get,
    wait_until,
)
from warpsocket.core.server import CoreOptions
from warpsocket.protocol.codes import ErrorCode
from warpsocket.server.hub import AckTimeoutError, Hub
from warpsocket.server.middleware import Handshake, Reject
from warpsocket.server.service import WarpSocketService
from warpsocket.server.web import build_site


class ListeningTests(ServerTestCase):
    @async_test
    async def test_several_endpoints_serve_the_same_hub(self) -> None:
        hub = self.start_server(
            endpoints=["tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1"]
        )
        ports = [port.getHost().port for port in self.service.ports]
        self.assertEqual(len(set(ports)), 2)
        for port in ports:
            code, body, _ = await http_get(port, "/healthz")
            self.assertEqual((code, body), (200, b"ok\n"))
        self.port = ports[1]
        client = await self.connect()
        self.assertEqual(hub.connection_count, 1)
        self.assertTrue(hub.is_connected(client.session or ""))

    @async_test
    async def test_custom_path(self) -> None:
        self.start_server(path="/api/live")
        client = await self.connect(path="/api/live")
        self.assertIsNotNone(client.session)
        with self.assertRaises(HandshakeRefusedError) as caught:
            await self.connect(path="/ws")
        self.assertEqual(caught.exception.status, 404)
        code, body, _ = await http_get(self.port, "/")
        self.assertEqual(code, 200)
        self.assertIn(b"WarpSocket", body)
        self.assertRaises(ValueError, build_site, self.hub, "/")

    def test_port_in_use_fails_startup(self) -> None:
        self.start_server()
        other = WarpSocketService(Hub(), [f"tcp:{self.port}:interface=127.0.0.1"])
        self.assertRaises(CannotListenError, other.startService)
        self.assertEqual(other.ports, [])

    @async_test
    async def test_ticks_follow_the_hub_clock(self) -> None:
        self.start_server(CoreOptions(handshake_timeout_ms=3_000))
        client = await self.connect(hello=False)
        self.clock.advance(2.9)
        await http_get(self.port, "/healthz")  # a round trip on the real reactor
        self.assertIsNone(client.close_code)
        self.clock.advance(0.1)
        self.clock.advance(1)
        code, _ = await client.wait_closed()
        self.assertEqual(code, 4205)


class ShutdownTests(ServerTestCase):
    @async_test
    async def test_graceful_stop(self) -> None:
        hub = self.start_server(shutdown_timeout=10, reconnect_hint_ms=1_500)
        stops: list[Deferred[None]] = []
        hooks: list[tuple[int | None, bool]] = []
        hub.on_close(lambda ctx, code: hooks.append((code, stops[0].called)))
        live = await self.connect()
        slow = await self.connect()
        assert live.session is not None
        waiter = hub.send(live.session, "job", 1, ack=True)
        assert waiter is not None
        await live.wait_for(lambda m: m.get("type") == "event")
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        code, _, _ = await http_get(self.port, "/healthz", pool)
        self.assertEqual(code, 200)
        # This client does not read its socket for now, so the drain cannot finish.
        slow.freeze()

        stopping = self.service.stopService()
        stops.append(stopping)
        self.assertTrue(hub.draining)
        self.assertFalse(stopping.called)
        # Pending acknowledged sends fail at once, with the going-away code.
        failure = self.failureResultOf(waiter, AckTimeoutError)
        self.assertEqual(failure.value.code, ErrorCode.GOING_AWAY)
        self.assertEqual(self.metric("warpsocket_acks_pending"), 0.0)
        # /healthz (on an already open HTTP connection) says draining.
        code, body, _ = await http_get(self.port, "/healthz", pool)
        self.assertEqual((code, body), (503, b"draining\n"))
        self.assertFalse(stopping.called)
        # Clients are told to go away, with a reconnect hint.
        code, reason = await live.wait_closed()
        self.assertEqual(code, 4500)
        self.assertEqual(json.loads(reason or ""), {"retry_after_ms": 1_500})
        # New WebSockets are refused with 503 (tests/test_drain.py has the details).
        with self.assertRaises(HandshakeRefusedError) as refused:
            await connect(self.port)
        self.assertEqual(refused.exception.status, 503)
        # A new WebSocket on an old HTTP connection would be refused too.
        self.assertRaises(
            Reject, hub.port.check_handshake, Handshake("peer", "host", "/ws", {}, {}, None)
        )
        self.assertFalse(stopping.called)
        slow.thaw()
        code, reason = await slow.wait_closed()
        self.assertEqual(code, 4500)
        await stopping
        # on_close hooks all ran before the stop completed.
        self.assertEqual(hooks, [(4500, False), (4500, False)])
        self.assertEqual(hub.connection_count, 0)
        self.assertFalse(self.service.running)
        self.assertEqual(self.service.ports, [])
        # The port closed when the drain ended.
        with self.assertRaises(ConnectionRefusedError):
            await connect(self.port)
        self.assertEqual(
            self.metric("warpsocket_disconnects_total", {"code": "4500"}),
            2.0,
        )

    @async_test
    async def test_stop_gives_up_after_shutdown_timeout(self) -> None:
        hub = self.start_server(shutdown_timeout=3)
        stuck = await self.connect()
        stuck.freeze()
        stopping = self.service.stopService()
        self.clock.advance(2.999)  # the shutdown timeout runs on the hub's clock
        await http_get(self.port, "/healthz")  # a round trip on the real reactor
        self.assertNoResult(stopping)
        self.clock.advance(0.001)
        await stopping
        await wait_until(lambda: hub.connection_count == 0, what="abort")
        stuck.thaw()
        code, _ = await stuck.wait_closed()
        self.assertEqual(code, 4500)

    @async_test
    async def test_stop_with_no_clients_is_immediate(self) -> None:
        hub = self.start_server()
        stopping = self.service.stopService()
        await stopping
        self.assertTrue(hub.draining)
        self.service.startService()
        self.assertFalse(hub.draining)
        self.port = self.service.ports[0].getHost().port
        code, _, _ = await http_get(self.port, "/healthz")
        self.assertEqual(code, 200)
