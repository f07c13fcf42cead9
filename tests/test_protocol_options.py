"""Autobahn's protocol options as class attributes (warpsocket/server/protocol.py).

The factory binds its options to a subclass of the protocol, so that a
connection copies none of them into its own dictionary; Autobahn's
per-connection copy loop is given nothing to iterate. Over real sockets: a
connection reads the factory's options, a later change applies to later
connections only (Autobahn's semantics), and the message-size limit still
closes an oversized message with 1009.
"""

from __future__ import annotations

from autobahn.websocket.protocol import WebSocketServerProtocol

from tests.wsclient import ServerTestCase, async_test
from warpsocket.core.server import CoreOptions


class ProtocolOptionTests(ServerTestCase):
    @async_test
    async def test_options_are_read_from_the_class_not_copied(self) -> None:
        self.start_server(open_rooms=True)
        client = await self.connect(rooms=["r"])
        protocol = self.server_side(client)
        limit = self.hub.options.core.max_message_size
        self.assertEqual(protocol.maxMessagePayloadSize, limit)
        self.assertEqual(protocol.maxFramePayloadSize, limit)
        self.assertFalse(protocol.failByDrop)
        copied = set(vars(protocol)) & set(WebSocketServerProtocol.CONFIG_ATTRS)
        self.assertEqual(copied, set())
        self.assertEqual(type(protocol).CONFIG_ATTRS, ())

    @async_test
    async def test_a_later_change_applies_to_later_connections(self) -> None:
        self.start_server(open_rooms=True)
        first = await self.connect(rooms=["r"])
        factory = self.server_side(first).factory
        factory.setProtocolOptions(autoPingInterval=30)
        second = await self.connect(rooms=["r"])
        self.assertEqual(self.server_side(first).autoPingInterval, 0)
        self.assertEqual(self.server_side(second).autoPingInterval, 30)

    @async_test
    async def test_the_message_size_limit_still_applies(self) -> None:
        self.start_server(CoreOptions(max_message_size=4096), open_rooms=True)
        client = await self.connect(rooms=["r"])
        client.send_raw(b"x" * 8192)
        code, _ = await client.wait_closed()
        self.assertEqual(code, 1009)
