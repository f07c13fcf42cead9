"""Nagle's algorithm is off on both ends of WarpSocket's connections (warpsocket/_nodelay.py).

Autobahn means to turn it off (``tcpNoDelay``, on by default) but its attempt
fails on Twisted, so without WarpSocket's own call the Python client's socket
keeps Nagle's algorithm: a small frame written while the previous one is
unacknowledged waits for the server's delayed ACK, up to 40 ms. These read
the option back from the kernel (``getsockopt``) over real sockets: the
client's and the server's, over TCP and TLS, the mock server's (whose
transport is wrapped for shaping), both sides of the recording proxy, and a
node's connection to a real redis-server.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from tests.helpers.client import FAST
from tests.redis_harness import RedisProcess
from tests.wsclient import async_test, wait_until
from warpsocket._nodelay import set_no_delay
from warpsocket.backends.redis import parse_redis_url
from warpsocket.backends.redis.connection import (
    CommandProtocol,
    ConnectionFactory,
    open_connection,
)
from warpsocket.client.client import WarpSocketClient
from warpsocket.client.options import ClientOptions
from warpsocket.mock import MockService
from warpsocket.mock.record import Recorder, RecordingProxyFactory
from warpsocket.mock.scenario import parse_scenario
from warpsocket.server.hub import Hub, HubOptions
from warpsocket.server.security.limits import transport_chain
from warpsocket.server.service import WarpSocketService

CERTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "certs")


def no_delay(transport: Any) -> int:
    """TCP_NODELAY of the socket under ``transport`` (through any TLS wrapper)."""
    sock = transport_chain(transport)[-1].getHandle()
    return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


class NoDelayTests(unittest.TestCase):
    timeout = 30

    def started(self, service: Any) -> Any:
        """``service`` started, and stopped after the test (after its clients:
        cleanups run last added first)."""
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def serve(self, endpoint: str) -> tuple[Hub, int]:
        hub = Hub(HubOptions(open_rooms=True))
        service = self.started(WarpSocketService(hub, [endpoint]))
        return hub, service.ports[0].getHost().port

    async def connected(self, url: str, **kwargs: Any) -> Any:
        """A Python client connected to ``url``; its protocol."""
        client = WarpSocketClient(url, ClientOptions(backoff=FAST, watch_network=False), **kwargs)
        self.addCleanup(client.close)
        await client.connect(timeout=10)
        return client._protocol

    def server_side(self, hub: Hub) -> Any:
        (connection,) = hub.port.connections.values()
        return connection

    @async_test
    async def test_both_ends_over_tcp(self) -> None:
        hub, port = self.serve("tcp:0:interface=127.0.0.1")
        client = await self.connected(f"ws://127.0.0.1:{port}/ws")
        self.assertEqual(no_delay(client.transport), 1)  # was 0: Autobahn's call failed
        self.assertEqual(no_delay(self.server_side(hub).transport), 1)

    @async_test
    async def test_both_ends_over_tls(self) -> None:
        key, cert = os.path.join(CERTS, "server.key"), os.path.join(CERTS, "server.pem")
        hub, port = self.serve(f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}")
        client = await self.connected(
            f"wss://localhost:{port}/ws", ca_file=os.path.join(CERTS, "ca.pem")
        )
        self.assertEqual(no_delay(client.transport), 1)
        self.assertEqual(no_delay(self.server_side(hub).transport), 1)

    @async_test
    async def test_the_mock_server(self) -> None:
        mock = self.started(
            MockService(parse_scenario({"name": "nodelay"}), ["tcp:0:interface=127.0.0.1"])
        )
        await self.connected(f"ws://127.0.0.1:{mock.ports[0].getHost().port}/ws")
        self.assertEqual(no_delay(self.server_side(mock.hub).transport), 1)

    @async_test
    async def test_both_sides_of_the_recording_proxy(self) -> None:
        _, upstream_port = self.serve("tcp:0:interface=127.0.0.1")
        proxy = RecordingProxyFactory(
            f"ws://127.0.0.1:{upstream_port}/ws", Recorder(self.mktemp() + ".json", reactor)
        )
        listening = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(proxy)
        self.addCleanup(listening.stopListening)
        await self.connected(f"ws://127.0.0.1:{listening.getHost().port}/ws")
        await wait_until(lambda: proxy.recorded is not None, what="the proxied welcome")
        downstream = proxy.recorded
        assert downstream is not None and downstream.upstream is not None
        self.assertEqual(no_delay(downstream.transport), 1)  # the client's side
        self.assertEqual(no_delay(downstream.upstream.transport), 1)  # the server's side

    @async_test
    async def test_a_nodes_redis_connection(self) -> None:
        redis = RedisProcess().start()
        self.addCleanup(redis.cleanup)
        address = parse_redis_url(f"redis://127.0.0.1:{redis.port}")
        conn = await open_connection(
            reactor, 5.0, ConnectionFactory(CommandProtocol, address, None)
        )
        self.addCleanup(conn.transport.loseConnection)
        self.assertEqual(no_delay(conn.transport), 1)


class SetNoDelayTests(unittest.TestCase):
    def test_a_transport_without_the_option_is_left_alone(self) -> None:
        self.assertFalse(set_no_delay(StringTransport()))
        self.assertFalse(set_no_delay(None))

    def test_the_setting_asked_for_is_passed_down(self) -> None:
        asked: list[bool] = []

        class Transport:
            def setTcpNoDelay(self, enabled: bool) -> None:
                asked.append(enabled)

        self.assertTrue(set_no_delay(Transport()))
        self.assertTrue(set_no_delay(Transport(), False))
        self.assertEqual(asked, [True, False])
