"""Eager writes (warpsocket/server/wire/fastpath.py), over real sockets.

A data frame goes to the socket at once when the transport has nothing
buffered; what the socket does not take is buffered by the transport, in
order, with its flow control; TLS connections keep the transport's path.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.ssl import Certificate, optionsForClientTLS

from tests.wsclient import ServerTestCase, async_test, connect, wait_until
from warpsocket.server.protocol import WarpSocketServerProtocol

CERTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "certs")


class EagerWriteTests(ServerTestCase):
    def socket_transport(self, protocol: WarpSocketServerProtocol) -> Any:
        guard: Any = protocol.transport
        return guard.transport

    @async_test
    async def test_an_idle_connection_is_written_without_the_reactor(self) -> None:
        self.start_server(open_rooms=True)
        client = await self.connect(rooms=["r"])
        raw = self.socket_transport(self.server_side(client))
        await wait_until(lambda: raw not in reactor.getWriters(), what="handshake flushed")
        self.hub.publish("r", "tick", 1)
        # Sent: nothing buffered, the socket not registered for writing.
        self.assertEqual(raw._tempDataLen, 0)
        self.assertNotIn(raw, reactor.getWriters())
        message = await client.wait_for(lambda m: m.get("event") == "tick")
        self.assertEqual(message["data"], 1)

    @async_test
    async def test_what_the_socket_does_not_take_follows_in_order(self) -> None:
        self.start_server(open_rooms=True)
        client = await self.connect(rooms=["r"])
        raw = self.socket_transport(self.server_side(client))
        raw.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        client.freeze()
        payload = "x" * 1000
        buffered_at: list[int] = []
        for n in range(300):
            self.hub.publish("r", "tick", {"n": n, "pad": payload})
            if raw._tempDataLen and not buffered_at:
                buffered_at.append(n)
        # The socket filled up part way, and the rest waited in the transport.
        self.assertTrue(buffered_at, "the socket took 300 KB with a 4 KB send buffer")
        self.assertGreater(buffered_at[0], 0)
        client.thaw()
        await client.wait_for(lambda m: m.get("data", {}).get("n") == 299, timeout=10)
        received = [m["data"]["n"] for m in client.messages if m.get("event") == "tick"]
        self.assertEqual(received, list(range(300)))

    @async_test
    async def test_tls_connections_keep_the_transport_write(self) -> None:
        key, cert = os.path.join(CERTS, "server.key"), os.path.join(CERTS, "server.pem")
        self.start_server(
            open_rooms=True,
            endpoints=[f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"],
        )
        with open(os.path.join(CERTS, "ca.pem"), "rb") as pem:
            ca = Certificate.loadPEM(pem.read())
        client = await connect(
            self.port, tls=optionsForClientTLS("localhost", trustRoot=ca), host="localhost"
        )
        self.clients.append(client)
        await client.hello(rooms=["r"])
        protocol = self.server_side(client)
        # No socket to write to eagerly: every write goes to the transport.
        self.assertIsNone(protocol._socket)
        for n in range(50):
            self.hub.publish("r", "tick", n)
        await client.wait_for(lambda m: m.get("data") == 49)
        received = [m["data"] for m in client.messages if m.get("event") == "tick"]
        self.assertEqual(received, list(range(50)))
