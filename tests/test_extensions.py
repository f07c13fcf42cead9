"""Extension negotiation (protocol.md 4.4): in the cores, and over a real socket."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from tests.helpers.client import ClientTestCase, ServerFixture, make_hub
from tests.helpers.core import T0, make_server
from warpsocket.core.client import ClientCore, ClientCoreOptions, Transmit
from warpsocket.core.server import CoreOptions, Send, ServerCore
from warpsocket.protocol import Envelope, MessageType

OFFERED = {"chunks": {"chunk_size": 65536}, "sign": {}}


def hello_with(extensions: Any) -> Envelope:
    data = {"session": None, "streams": {}, "rooms": [], "extensions": extensions}
    return Envelope(type=MessageType.HELLO, id="h1", timestamp=T0, data=data)


def only_sent(actions: list[Any]) -> Envelope:
    [envelope] = [a.envelope for a in actions if isinstance(a, Send)]
    return envelope


class ServerNegotiationTests(unittest.SynchronousTestCase):
    def welcome(self, server: ServerCore, extensions: Any) -> Envelope:
        server.open(1, T0)
        actions = server.receive(1, hello_with(extensions), T0)
        return next(a.envelope for a in actions if isinstance(a, Send))

    def test_granted_are_the_intersection_with_parameters(self) -> None:
        server = make_server(extensions=OFFERED)
        welcome = self.welcome(server, ["sign", "unknown-ext", "chunks"])
        self.assertEqual(welcome.type, MessageType.WELCOME)
        self.assertEqual(welcome.data["extensions"], OFFERED)
        self.assertEqual(server.connections[1].extensions, frozenset({"sign", "chunks"}))

    def test_nothing_asked_nothing_granted(self) -> None:
        server = make_server(extensions=OFFERED)
        for asked in (None, []):
            welcome = self.welcome(server, asked)
            self.assertEqual(welcome.data["extensions"], {})
            self.assertEqual(server.connections[1].extensions, frozenset())
            server.close(1, T0)

    def test_a_server_without_extensions_grants_none(self) -> None:
        welcome = self.welcome(make_server(), ["sign"])
        self.assertEqual(welcome.data["extensions"], {})

    def test_malformed_lists_are_refused_and_the_connection_stays(self) -> None:
        server = make_server(extensions=OFFERED)
        server.open(1, T0)
        for bad in ("sign", [1], ["UPPER"], [""], ["x" * 65], ["a"] * 33, {"sign": {}}):
            error = only_sent(server.receive(1, hello_with(bad), T0))
            self.assertEqual((error.type, error.code, error.ref), (MessageType.ERROR, 4001, "h1"))
        welcome = only_sent(server.receive(1, hello_with(["chunks"]), T0)[:1])
        self.assertEqual(welcome.data["extensions"], {"chunks": OFFERED["chunks"]})

    def test_bad_offered_names_are_a_configuration_error(self) -> None:
        with self.assertRaises(ValueError):
            CoreOptions(extensions={"Bad Name": {}})


class ClientNegotiationTests(unittest.SynchronousTestCase):
    def handshake(self, asked: tuple[str, ...], granted: Any) -> ClientCore:
        ids = iter(f"c{i}" for i in range(100))
        core = ClientCore(ClientCoreOptions(extensions=asked), lambda: next(ids))
        [transmit] = core.connected(T0)
        assert isinstance(transmit, Transmit)
        hello = transmit.envelope
        if asked:
            self.assertEqual(hello.data["extensions"], list(asked))
        else:
            self.assertNotIn("extensions", hello.data)
        welcome = Envelope(
            type=MessageType.WELCOME,
            id="w1",
            timestamp=T0,
            ref=hello.id,
            data={"session": "s1", "streams": {}, "rooms": [], "extensions": granted},
        )
        core.receive(welcome, T0)
        return core

    def test_keeps_only_what_it_asked_for(self) -> None:
        core = self.handshake(("sign",), {"sign": {"alg": "hmac"}, "chunks": {}})
        self.assertEqual(core.extensions, {"sign": {"alg": "hmac"}})

    def test_hostile_welcome_values_are_ignored(self) -> None:
        for granted in (None, [], "sign", {"sign": 1}):
            self.assertEqual(self.handshake(("sign",), granted).extensions, {})

    def test_asks_for_nothing_by_default(self) -> None:
        self.assertEqual(self.handshake((), {"sign": {}}).extensions, {})


class OverTheWireTests(ClientTestCase):
    """A real server offering extensions, the Python client asking for some."""

    @inlineCallbacks
    def test_negotiated_over_a_socket(self) -> Any:
        server = ServerFixture(self, make_hub(core=CoreOptions(node="n1", extensions=OFFERED)))
        for asked, expected in ((("chunks", "nope"), {"chunks": OFFERED["chunks"]}), ((), {})):
            # (batch_window_ms=None: the client does not add its own ``batch``.)
            options = {"core": ClientCoreOptions(extensions=asked), "batch_window_ms": None}
            client = self.client(server.url, **options)
            yield client.connect()
            self.assertEqual(client.extensions, expected)
            yield client.close()


class CoreAloneTests(unittest.SynchronousTestCase):
    def test_a_batch_reaching_the_core_is_an_unknown_type(self) -> None:
        """Batches are taken apart before the core (server/batches.py); the
        core alone answers one as it answers any type it was not given."""
        server = make_server()
        server.open(1, T0)
        server.receive(1, hello_with(None), T0)
        batch = Envelope(type=MessageType.BATCH, id="b1", timestamp=T0, data=[])
        error = only_sent(server.receive(1, batch, T0))
        self.assertEqual((error.code, error.ref), (4002, "b1"))
