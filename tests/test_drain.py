"""A drain a load balancer can see: probed with NEW connections, as a balancer does.

Over real sockets on 127.0.0.1; the drain delay and the shutdown timeout run
on the hub's Clock, which the tests advance.
"""

from __future__ import annotations

import json

from twisted.internet import reactor
from twisted.internet.error import ConnectionRefusedError
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from tests.wsclient import (
    HandshakeRefusedError,
    ServerTestCase,
    WsClient,
    async_test,
    connect,
    http_get,
    wait_until,
)
from warpsocket.server.hub import AckTimeoutError, HubOptions


async def upgrade(port: int) -> tuple[int, bytes, Headers]:
    """A WebSocket upgrade request on a new connection (while draining it gets no 101)."""
    headers = Headers(
        {
            b"upgrade": [b"websocket"],
            b"connection": [b"Upgrade"],
            b"sec-websocket-key": [b"dGhlIHNhbXBsZSBub25jZQ=="],
            b"sec-websocket-version": [b"13"],
            b"sec-websocket-protocol": [b"warpsocket.v1.json"],
        }
    )
    response = await Agent(reactor).request(b"GET", f"http://127.0.0.1:{port}/ws".encode(), headers)
    body: bytes = await readBody(response)
    return response.code, body, response.headers


async def round_trip(client: WsClient) -> None:
    """A heartbeat round trip: the connection is served."""
    sent = client.send({"type": "heartbeat"})
    await client.reply_to(sent["id"])


class DrainTests(ServerTestCase):
    async def assert_draining_to_new_connections(self) -> None:
        code, body, _ = await http_get(self.port, "/healthz")  # a new connection each time
        self.assertEqual((code, body), (503, b"draining\n"))
        code, body, headers = await upgrade(self.port)
        self.assertEqual((code, body), (503, b"draining\n"))
        self.assertEqual(headers.getRawHeaders(b"retry-after"), [b"2"])
        with self.assertRaises(HandshakeRefusedError) as refused:
            await connect(self.port)
        self.assertEqual(refused.exception.status, 503)

    @async_test
    async def test_drain_delay_then_going_away_then_port_closes(self) -> None:
        hub = self.start_server(shutdown_timeout=3, reconnect_hint_ms=1_500, drain_delay=5)
        live = await self.connect()
        assert live.session is not None
        waiter = hub.send(live.session, "job", 1, ack=True)
        await live.wait_for(lambda m: m.get("type") == "event")

        stopping = self.service.stopService()
        self.assertTrue(hub.draining)
        # The pre-stop period: the port accepts, health and upgrades say 503,
        # open clients are still served and may still acknowledge.
        await self.assert_draining_to_new_connections()
        self.assertEqual(
            self.metric("warpsocket_rejected_handshakes_total", {"reason": "draining"}), 2.0
        )
        await round_trip(live)
        self.assertNoResult(waiter)
        self.clock.advance(4.999)
        await round_trip(live)
        self.assertIsNone(live.close_code)
        self.assertNoResult(stopping)
        # The delay is over: 4500 with the hint, pending acks fail with it.
        self.clock.advance(0.001)
        failure = self.failureResultOf(waiter, AckTimeoutError)
        self.assertEqual(failure.value.code, 4500)
        code, reason = await live.wait_closed()
        self.assertEqual((code, json.loads(reason or "")), (4500, {"retry_after_ms": 1_500}))
        await stopping
        # The drain ended with the last client: the port is closed.
        with self.assertRaises(ConnectionRefusedError):
            await http_get(self.port, "/healthz")

    @async_test
    async def test_port_accepts_until_the_last_client_is_gone(self) -> None:
        hub = self.start_server(shutdown_timeout=3)
        slow = await self.connect()
        quick = await self.connect()
        slow.freeze()  # cannot read the close frame: the drain waits for it
        stopping = self.service.stopService()
        code, _ = await quick.wait_closed()
        self.assertEqual(code, 4500)
        await wait_until(lambda: hub.connection_count == 1, what="quick gone")
        # Clients were told; one is still there: the balancer still sees 503s.
        await self.assert_draining_to_new_connections()
        self.assertNoResult(stopping)
        slow.thaw()
        code, _ = await slow.wait_closed()
        self.assertEqual(code, 4500)
        await stopping
        self.assertEqual(self.service.ports, [])
        with self.assertRaises(ConnectionRefusedError):
            await http_get(self.port, "/healthz")

    @async_test
    async def test_port_closes_at_the_shutdown_timeout(self) -> None:
        hub = self.start_server(shutdown_timeout=3)
        stuck = await self.connect()
        stuck.freeze()
        stopping = self.service.stopService()
        self.clock.advance(2.999)
        await self.assert_draining_to_new_connections()
        self.assertNoResult(stopping)
        self.clock.advance(0.001)  # the rest are cut
        await stopping
        with self.assertRaises(ConnectionRefusedError):
            await http_get(self.port, "/healthz")
        await wait_until(lambda: hub.connection_count == 0, what="abort")
        stuck.thaw()
        await stuck.wait_closed()

    @async_test
    async def test_a_second_stop_is_the_same_drain(self) -> None:
        self.start_server()
        client = await self.connect()
        client.freeze()
        first = self.service.stopService()
        second = self.service.stopService()
        self.assertIs(first, second)
        client.thaw()
        await client.wait_closed()
        await first

    @async_test
    async def test_restart_after_a_drain_serves_again(self) -> None:
        hub = self.start_server()
        await self.service.stopService()
        self.service.startService()
        self.port = self.service.ports[0].getHost().port
        self.assertFalse(hub.draining)
        code, _, _ = await http_get(self.port, "/healthz")
        self.assertEqual(code, 200)
        client = await self.connect()
        self.assertIsNotNone(client.session)

    def test_drain_delay_must_not_be_negative(self) -> None:
        self.assertRaises(ValueError, HubOptions, drain_delay=-1)

    @async_test
    async def test_service_runs_the_connection_timers_only_while_running(self) -> None:
        self.start_server()
        self.assertTrue(self.hub.port.timers.running)
        self.assertNotEqual(self.clock.getDelayedCalls(), [])
        await self.service.stopService()
        self.assertFalse(self.hub.port.timers.running)
        self.assertEqual(self.clock.getDelayedCalls(), [])
