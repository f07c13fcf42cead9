"""Autobahn's protocol options as class attributes (warpsocket/server/protocol.py).

The factory binds its options to a subclass of the protocol, so that a
connection copies none of them into its own dictionary; Autobahn's
per-connection copy loop is given nothing to iterate. Over real sockets: a
connection reads the factory's options, a later change applies to later
connections only (Autobahn's semantics), and the message-size limit still
closes an oversized message with 1009.
"""

from __future__ import annotations

import base64

from autobahn.websocket.protocol import WebSocketServerProtocol

from tests.wsclient import ServerTestCase, async_test, connect
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


class HandshakeListTests(ServerTestCase):
    """Once open, Autobahn's lists from the opening handshake are tuples
    (``_compat.shed_handshake_lists``): fewer objects for the collector."""

    @async_test
    async def test_an_open_connection_keeps_tuples_that_still_work(self) -> None:
        self.start_server(open_rooms=True)
        client = await self.connect(rooms=["r"])
        protocol = self.server_side(client)
        self.assertEqual(protocol.websocket_protocols, ("warpsocket.v1.json",))
        self.assertEqual(protocol.websocket_protocol_in_use, "warpsocket.v1.json")
        self.assertEqual(protocol.websocket_extensions, ())
        self.assertEqual(protocol.websocket_extensions_in_use, ())
        self.assertEqual(protocol._valid_events, ("message",))
        # Autobahn's observable API still validates event names against it.
        protocol.on("message", lambda *args, **kwargs: None)
        with self.assertRaises(RuntimeError):
            protocol.on("no-such-event", lambda: None)
        # A second connection shares the same (empty and valid-events) tuples.
        other = self.server_side(await self.connect(rooms=["r"]))
        self.assertIs(other._valid_events, protocol._valid_events)
        self.assertIs(other.websocket_extensions, protocol.websocket_extensions)
        reply = await client.request({"type": "subscribe", "id": "s-2", "room": "q"})
        self.assertEqual(reply["type"], "ack")

    @async_test
    async def test_the_handshake_texts_are_emptied_once_open(self) -> None:
        """Autobahn's server reads them in ``processHandshake`` only: a
        connection keeps none of them (nor a URL hello in its params)."""
        self.start_server(open_rooms=True)
        hello = base64.urlsafe_b64encode(
            b'{"type":"hello","id":"h1","timestamp":1,"data":{"rooms":["r"]}}'
        )
        client = await connect(self.port, path="/ws?v=2&hello=" + hello.decode().rstrip("="))
        self.clients.append(client)
        client.session = (await client.next_of("welcome"))["data"]["session"]
        protocol = self.server_side(client)
        self.assertEqual(protocol.http_request_data, b"")
        self.assertEqual(protocol.http_status_line, "")
        self.assertEqual(protocol.http_request_uri, "")
        self.assertEqual(protocol.http_response_data, "")
        assert protocol.handshake is not None
        self.assertEqual(dict(protocol.handshake.params), {"v": ["2"]})
        # The connection works on: a call, a room, a close.
        reply = await client.request({"type": "subscribe", "id": "s-1", "room": "q"})
        self.assertEqual(reply["type"], "ack")
        await client.close()

    def test_agreed_extensions_are_kept_and_other_valid_events_left_alone(self) -> None:
        from warpsocket import _compat

        class Opened:
            pass

        protocol = Opened()
        deflate = object()
        protocol.websocket_extensions_in_use = [deflate]  # type: ignore[attr-defined]
        protocol.websocket_protocols = ["a", "b"]  # type: ignore[attr-defined]
        protocol._valid_events = ["message", "custom"]  # type: ignore[attr-defined]
        _compat.shed_handshake_lists(protocol)
        self.assertEqual(protocol.websocket_extensions_in_use, (deflate,))  # type: ignore[attr-defined]
        self.assertEqual(protocol.websocket_protocols, ("a", "b"))  # type: ignore[attr-defined]
        self.assertEqual(protocol._valid_events, ["message", "custom"])  # type: ignore[attr-defined]
        self.assertFalse(hasattr(protocol, "websocket_extensions"))
