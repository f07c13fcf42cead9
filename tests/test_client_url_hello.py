"""The Python client carries its hello in the upgrade request (protocol.md 4.5).

The encoder against ``tests/vectors/url_hello.json``; the core's choice
between the URL and a frame, and its fallback to frames; then real sockets:
the real server (which answers a URL hello with the ``101``), and tiny raw
Autobahn servers that play an older server (one that ignores the parameter
and waits for a hello frame) and a server that answers the URL hello with an
error. Network I/O runs on the real reactor; the client's timers run on a
``Clock`` where the test is about time.
"""

from __future__ import annotations

import json
from base64 import urlsafe_b64decode
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qsl

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

import warpsocket.server.protocol as server_protocol
from tests.helpers.client import (
    FAST,
    ClientTestCase,
    ServerFixture,
    make_hub,
    reactor,
    reconnect_call,
    wait_until,
)
from warpsocket.client.blocking import BlockingClient
from warpsocket.client.client import Opened, WarpSocketClient
from warpsocket.client.options import ClientOptions
from warpsocket.client.pool import ClientPool
from warpsocket.client.state import ClientState
from warpsocket.core.client import (
    URL_HELLO_MAX_BYTES,
    ClientAction,
    ClientCore,
    ClientCoreOptions,
    Transmit,
    Welcomed,
    url_hello_query,
)
from warpsocket.core.ids import SequentialIds
from warpsocket.protocol.codecs import JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL, JsonCodec
from warpsocket.protocol.codes import ErrorCode
from warpsocket.protocol.envelope import Envelope, MessageType
from warpsocket.protocol.protobuf import PROTOBUF_SUBPROTOCOL

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parent / "vectors" / "url_hello.json").read_text("utf-8")
)
T0 = 1_764_300_000_000


def core(**options: Any) -> ClientCore:
    return ClientCore(ClientCoreOptions(**options), SequentialIds("c"))


def transmitted(actions: list[ClientAction]) -> list[Envelope]:
    return [a.envelope for a in actions if isinstance(a, Transmit)]


def welcome(
    ref: str, session: str = "s1", token: str | None = "rt1", rooms: tuple[str, ...] = ()
) -> Envelope:
    data: dict[str, Any] = {
        "session": session,
        "resumed": False,
        "streams": {},
        "rooms": list(rooms),
    }
    if token is not None:
        data["resume_token"] = token
    return Envelope(type=MessageType.WELCOME, id="w-" + ref, timestamp=T0, ref=ref, data=data)


def hello_of(resource: str) -> dict[str, Any] | None:
    """The hello envelope a request target carries in its ``hello`` parameter."""
    values = [v for k, v in parse_qsl(resource.partition("?")[2]) if k == "hello"]
    assert len(values) <= 1, resource
    return cast(dict[str, Any], json.loads(unbase64url(values[0]))) if values else None


def unbase64url(value: str) -> bytes:
    return urlsafe_b64decode(value + "=" * (-len(value) % 4))


# ---------------------------------------------------------------- encoding


class EncodeVectorTests(unittest.SynchronousTestCase):
    def test_every_encode_vector(self) -> None:
        self.assertTrue(VECTORS["encode"])
        for vector in VECTORS["encode"]:
            self.assertEqual(url_hello_query(vector["json"]), vector["query"], vector["name"])

    def test_the_text_is_the_json_codecs_encoding_and_decodes_back(self) -> None:
        client = core(extensions=("batch",))
        client.rooms.update({"chat", "café & co"})
        text = client.url_hello(T0)
        assert text is not None
        envelope = JsonCodec().decode(text.encode("utf-8"), False)
        self.assertEqual(JsonCodec().encode(envelope).decode("utf-8"), text)
        self.assertEqual(unbase64url(url_hello_query(text).removeprefix("hello=")), text.encode())
        self.assertEqual(envelope.type, MessageType.HELLO)
        self.assertEqual(envelope.data["rooms"], ["café & co", "chat"])
        self.assertEqual(envelope.data["extensions"], ["batch"])


# ---------------------------------------------------------------- the core


class UrlOrFrameTests(unittest.SynchronousTestCase):
    """``ClientCore.url_hello`` (the URL) against ``connected`` (a frame)."""

    def url_handshake(self, client: ClientCore, now: int = T0) -> Envelope:
        text = client.url_hello(now)
        assert text is not None
        self.assertEqual(client.connected(now), [])  # never also a frame
        return JsonCodec().decode(text.encode("utf-8"), False)

    def frame_handshake(self, client: ClientCore, now: int = T0) -> Envelope:
        [hello] = transmitted(client.connected(now))
        return hello

    def test_a_fresh_hello_goes_in_the_url_and_its_welcome_opens(self) -> None:
        client = core()
        client.rooms.add("chat")
        hello = self.url_handshake(client)
        self.assertEqual(hello.data, {"session": None, "streams": {}, "rooms": ["chat"]})
        self.assertFalse(client.open)
        actions = client.receive(welcome(hello.id, rooms=("chat",)), T0 + 7)
        self.assertEqual([type(a) for a in actions], [Welcomed])
        self.assertTrue(client.open)
        self.assertEqual(client.rtt_ms, 7)  # from the upgrade request

    def test_the_api_without_url_hello_is_unchanged(self) -> None:
        client = core()
        hello = self.frame_handshake(client)
        self.assertIsNone(hello.data["session"])
        client.receive(welcome(hello.id), T0)
        self.assertTrue(client.open)

    def test_a_resume_goes_in_a_frame(self) -> None:
        client = core()
        client.receive(welcome(self.url_handshake(client).id), T0)
        client.disconnected(T0)
        self.assertIsNone(client.url_hello(T0))
        hello = self.frame_handshake(client)
        self.assertEqual((hello.data["session"], hello.data["resume_token"]), ("s1", "rt1"))

    def test_a_session_without_resume_token_goes_in_a_frame(self) -> None:
        client = core()
        client.receive(welcome(self.url_handshake(client).id, token=None), T0)
        client.disconnected(T0)
        self.assertIsNone(client.url_hello(T0))
        self.assertEqual(self.frame_handshake(client).data["session"], "s1")

    def test_a_token_goes_in_a_frame(self) -> None:
        # The caller has the token and asks for a frame: connected(now, token).
        client = core()
        [hello] = transmitted(client.connected(T0, "jwt"))
        self.assertEqual(hello.data["token"], "jwt")

    def test_at_most_2048_bytes(self) -> None:
        def sized(length: int) -> ClientCore:
            client = core()
            client.rooms.add("x")
            base = len(cast(str, client.url_hello(T0)).encode("utf-8"))
            client = core()
            client.rooms.add("x" * (1 + length - base))
            return client

        exact = sized(URL_HELLO_MAX_BYTES).url_hello(T0)
        assert exact is not None
        self.assertEqual(len(exact.encode("utf-8")), URL_HELLO_MAX_BYTES)
        over = sized(URL_HELLO_MAX_BYTES + 1)
        self.assertIsNone(over.url_hello(T0))
        hello = self.frame_handshake(over)  # the frame is the whole hello
        self.assertEqual(len(JsonCodec().encode(hello)), URL_HELLO_MAX_BYTES + 1)
        self.assertEqual(over.receive(welcome(hello.id), T0)[-1].__class__, Welcomed)

    def test_bytes_not_characters_count(self) -> None:
        client = core()
        client.rooms.add("é" * 1000)  # 1,000 characters, 2,000 bytes
        self.assertIsNone(client.url_hello(T0))

    def test_4205_before_a_welcome_falls_back_to_frames(self) -> None:
        client = core()
        self.url_handshake(client)
        client.disconnected(T0, ErrorCode.HANDSHAKE_TIMEOUT)
        self.assertTrue(client.url_hello_refused)
        self.assertIsNone(client.url_hello(T0))
        hello = self.frame_handshake(client)
        self.assertIsNone(hello.data["session"])  # still a fresh session
        client.receive(welcome(hello.id), T0)
        client.disconnected(T0)
        self.assertTrue(client.url_hello_refused)  # for good

    def test_an_unanswered_url_hello_timed_out_after_the_open_falls_back(self) -> None:
        # An older server with the default timeouts: the client's own
        # handshake timeout (from the dial) comes before the server's 4205.
        client = core()
        self.url_handshake(client)
        client.disconnected(T0, 1006, timed_out=True)
        self.assertTrue(client.url_hello_refused)

    def test_what_does_not_fall_back(self) -> None:
        # Timed out before the upgrade finished: nothing says the server ignored it.
        client = core()
        self.assertIsNotNone(client.url_hello(T0))
        client.disconnected(T0, None, timed_out=True)
        self.assertFalse(client.url_hello_refused)
        # Other codes, on a URL hello.
        for code in (None, 1006, 1000, ErrorCode.GOING_AWAY):
            self.url_handshake(client)
            client.disconnected(T0, code)
            self.assertFalse(client.url_hello_refused, code)
        # 4205 on a hello frame (too long for the URL).
        client.rooms.add("r" * 3000)
        self.assertIsNone(client.url_hello(T0))
        self.frame_handshake(client)
        client.disconnected(T0, ErrorCode.HANDSHAKE_TIMEOUT)
        self.assertFalse(client.url_hello_refused)
        # 4205 after the URL hello's welcome (a server that closes idle sessions so).
        client = core()
        client.receive(welcome(self.url_handshake(client).id), T0)
        client.disconnected(T0, ErrorCode.HANDSHAKE_TIMEOUT)
        self.assertFalse(client.url_hello_refused)

    def test_an_error_answering_the_url_hello_sends_it_as_a_frame(self) -> None:
        client = core()
        client.rooms.add("chat")
        first = self.url_handshake(client)
        error = Envelope(
            type=MessageType.ERROR, id="e1", timestamp=T0, ref=first.id, code=4200, data={}
        )
        [frame] = transmitted(client.receive(error, T0 + 1))
        self.assertEqual((frame.type, frame.data), (MessageType.HELLO, first.data))
        self.assertNotEqual(frame.id, first.id)
        self.assertEqual(client.receive(welcome(first.id), T0), [])  # the old one is done
        self.assertEqual(transmitted(client.receive(error, T0)), [])  # answered once
        client.receive(welcome(frame.id), T0)
        self.assertTrue(client.open)
        # The server did read the URL hello: no fallback whatever comes next.
        client.disconnected(T0, ErrorCode.HANDSHAKE_TIMEOUT)
        self.assertFalse(client.url_hello_refused)

    def test_disconnected_forgets_the_url_hello(self) -> None:
        client = core()
        self.assertIsNotNone(client.url_hello(T0))  # the upgrade failed: never opened
        client.disconnected(T0)
        self.assertEqual(len(transmitted(client.connected(T0))), 1)


class ClientChoiceTests(unittest.SynchronousTestCase):
    """What ``WarpSocketClient`` asks for in the upgrade request (no socket)."""

    def resource(self, url: str, **kwargs: Any) -> str | None:
        options = kwargs.pop("options", ClientOptions(watch_network=False))
        client = WarpSocketClient(url, options, clock=Clock(), **kwargs)
        return client._connecting(cast(Any, None))

    def test_the_urls_own_parameters_stay(self) -> None:
        plain = self.resource("ws://127.0.0.1:1/ws")
        assert plain is not None
        self.assertTrue(plain.startswith("/ws?hello=eyJ0eXBlIjoiaGVsbG8i"), plain)
        with_token = self.resource("ws://127.0.0.1:1/ws?token=abc&v=2")
        assert with_token is not None
        self.assertTrue(with_token.startswith("/ws?token=abc&v=2&hello="), with_token)
        self.assertEqual(cast(dict[str, Any], hello_of(with_token))["type"], "hello")
        bare = self.resource("ws://127.0.0.1:1")
        self.assertTrue(bare is not None and bare.startswith("/?hello="), bare)

    def test_when_not(self) -> None:
        self.assertIsNone(
            self.resource("ws://127.0.0.1:1/ws", options=ClientOptions(url_hello=False))
        )
        self.assertIsNone(self.resource("ws://127.0.0.1:1/ws", token=lambda: "jwt"))
        self.assertIsNone(self.resource("ws://127.0.0.1:1/ws?hello=mine"))  # not two


# ---------------------------------------------------------------- real sockets


def spy_frames(client: WarpSocketClient) -> list[Envelope]:
    """Every envelope the client writes as a frame of its own (hellos are never batched)."""
    sent: list[Envelope] = []
    transmit_now = client._transmit_now

    def spy(envelope: Envelope) -> None:
        sent.append(envelope)
        transmit_now(envelope)

    client._transmit_now = spy  # type: ignore[method-assign]
    return sent


def hellos(frames: list[Envelope]) -> list[Envelope]:
    return [e for e in frames if e.type is MessageType.HELLO]


class RealServerTests(ClientTestCase):
    def spy_requests(self) -> list[str]:
        """The request target of every upgrade the server reads."""
        targets: list[str] = []
        on_connect = server_protocol.WarpSocketServerProtocol.onConnect

        def spy(protocol: Any, request: Any) -> Any:
            targets.append(protocol.http_request_uri)
            return on_connect(protocol, request)

        self.patch(server_protocol.WarpSocketServerProtocol, "onConnect", spy)
        return targets

    @inlineCallbacks
    def welcomed_without_a_frame(self, subprotocol: str) -> Any:
        hub = make_hub()
        hub.on("add", lambda ctx, data: data[0] + data[1])
        server = ServerFixture(self, hub)
        targets = self.spy_requests()
        client = self.client(server.url + "?v=2", subprotocol=subprotocol)
        frames = spy_frames(client)
        client.subscribe("chat")
        yield client.connect()
        self.assertEqual(client.state, ClientState.OPEN)
        self.assertEqual(hellos(frames), [])
        self.assertEqual(client.stats.url_hellos, 1)
        [target] = targets
        self.assertTrue(target.startswith("/ws?v=2&hello="), target)
        hello = hello_of(target)
        assert hello is not None
        self.assertEqual(hello["data"]["rooms"], ["chat"])
        self.assertIsNone(hello["data"]["session"])
        self.assertEqual(client.rooms, {"chat"})
        self.assertIsNotNone(client.stats.rtt_seconds)
        self.assertEqual((yield client.call("add", [2, 3])), 5)
        self.assertEqual(hub.metrics.traffic.messages_in["hello"], 1)

    def test_json_client_is_welcomed_without_a_hello_frame(self) -> Any:
        return self.welcomed_without_a_frame(JSON_SUBPROTOCOL)

    def test_msgpack_client_carries_json_text_in_the_url(self) -> Any:
        return self.welcomed_without_a_frame(MSGPACK_SUBPROTOCOL)

    def test_protobuf_client_carries_json_text_in_the_url(self) -> Any:
        return self.welcomed_without_a_frame(PROTOBUF_SUBPROTOCOL)

    @inlineCallbacks
    def test_a_reconnect_resumes_with_a_hello_frame(self) -> Any:
        server = ServerFixture(self, make_hub())
        targets = self.spy_requests()
        client = self.client(server.url)
        frames = spy_frames(client)
        opened: list[Opened] = []
        client.on_open(opened.append)
        yield client.connect()
        first = client.session
        server.drop_all()
        yield wait_until(lambda: client.stats.connections == 2)
        self.assertEqual([o.resumed for o in opened], [False, True])
        self.assertEqual(client.session, first)
        self.assertEqual(len(targets), 2)
        self.assertIsNotNone(hello_of(targets[0]))
        self.assertEqual(targets[1], "/ws")
        for target in targets:
            self.assertNotIn("resume_token", json.dumps(hello_of(target)))
        [hello] = hellos(frames)
        self.assertEqual(hello.data["session"], first)
        self.assertIsInstance(hello.data["resume_token"], str)
        self.assertEqual(client.stats.url_hellos, 1)

    @inlineCallbacks
    def test_a_token_provider_sends_its_hello_as_a_frame(self) -> Any:
        server = ServerFixture(self, make_hub())
        targets = self.spy_requests()
        client = WarpSocketClient(
            server.url, ClientOptions(backoff=FAST, watch_network=False), token=lambda: None
        )
        self.addCleanup(client.close)
        frames = spy_frames(client)
        yield client.connect()
        self.assertEqual((targets, len(hellos(frames))), (["/ws"], 1))
        self.assertEqual(client.stats.url_hellos, 0)

    @inlineCallbacks
    def test_option_off_and_too_long_hellos_are_frames(self) -> Any:
        server = ServerFixture(self, make_hub())
        targets = self.spy_requests()
        off = self.client(server.url, url_hello=False)
        long = self.client(server.url)
        rooms = {f"room-{i:02}-" + "x" * 50 for i in range(40)}
        for room in rooms:
            long.subscribe(room)
        frames = [spy_frames(off), spy_frames(long)]
        yield off.connect()
        yield long.connect()
        self.assertEqual(targets, ["/ws", "/ws"])
        self.assertEqual([len(hellos(f)) for f in frames], [1, 1])
        self.assertEqual(long.rooms, rooms)

    @inlineCallbacks
    def test_blocking_client_and_pool_carry_it_too(self) -> Any:
        server = ServerFixture(self, make_hub())
        targets = self.spy_requests()

        def script() -> int:
            client = BlockingClient(server.url, ClientOptions(backoff=FAST, watch_network=False))
            try:
                client.connect(timeout=5)
                return client.stats.url_hellos
            finally:
                client.close()

        self.assertEqual((yield deferToThread(script)), 1)
        pool = ClientPool(server.url, 2, ClientOptions(backoff=FAST, watch_network=False))
        self.addCleanup(pool.close)
        yield pool.connect()
        self.assertEqual([m.stats.url_hellos for m in pool.members], [1, 1])
        self.assertEqual(len(targets), 3)
        self.assertTrue(all(hello_of(t) is not None for t in targets), targets)


class _ScriptedProtocol(WebSocketServerProtocol):
    """An Autobahn server without WarpSocket: it records the upgrade requests
    and the frames, welcomes a hello frame, and otherwise does what the test
    says (``factory.on_open``)."""

    factory: _ScriptedServer

    def onConnect(self, request: ConnectionRequest) -> str | None:
        self.factory.targets.append(self.http_request_uri)
        return JSON_SUBPROTOCOL if JSON_SUBPROTOCOL in request.protocols else None

    def onOpen(self) -> None:
        self.factory.opened.append(self)
        self.factory.on_open(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        envelope = json.loads(payload)
        self.factory.frames.append(envelope)
        if envelope["type"] == "hello":
            self.send({"type": "welcome", "ref": envelope["id"], "data": {"session": "s-old"}})

    def send(self, envelope: dict[str, Any]) -> None:
        envelope = {"id": f"n{len(self.factory.frames)}", "timestamp": T0, **envelope}
        self.sendMessage(json.dumps(envelope).encode("utf-8"))


class _ScriptedServer(WebSocketServerFactory):
    protocol = _ScriptedProtocol

    def __init__(self) -> None:
        super().__init__()
        self.targets: list[str] = []
        self.opened: list[_ScriptedProtocol] = []
        self.frames: list[dict[str, Any]] = []
        # An older server ignores the URL's hello and waits for a frame.
        self.on_open: Any = lambda protocol: None


class _Silent(Protocol):
    """Accepts TCP and never answers the upgrade request."""


class OtherServerTests(ClientTestCase):
    def listen(self, factory: Any) -> str:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"ws://127.0.0.1:{port.getHost().port}/ws?v=1"

    @inlineCallbacks
    def test_closed_with_4205_the_client_falls_back_to_frames(self) -> Any:
        server = _ScriptedServer()
        clock = Clock()
        client = self.client(self.listen(server), clock)
        connected = client.connect()
        yield wait_until(lambda: len(server.opened) == 1)
        self.assertIsNotNone(hello_of(server.targets[0]))
        self.assertEqual(server.frames, [])  # the client waits for an answer
        # The older server's hello timeout (10 s by default) passes.
        server.opened[0].sendClose(int(ErrorCode.HANDSHAKE_TIMEOUT), "handshake_timeout")
        yield wait_until(lambda: client.state is ClientState.RECONNECTING)
        self.assertTrue(client.core.url_hello_refused)
        call = reconnect_call(clock)
        clock.advance(call.getTime() - clock.seconds())
        yield connected
        self.assertIsNone(hello_of(server.targets[1]))
        self.assertEqual(server.targets[1], "/ws?v=1")
        [hello] = server.frames
        self.assertEqual((hello["type"], hello["data"]["session"]), ("hello", None))
        self.assertEqual((client.session, client.stats.url_hellos), ("s-old", 1))

    @inlineCallbacks
    def test_unanswered_until_the_clients_own_timeout_it_falls_back(self) -> Any:
        # With the default timeouts the client gives up (10 s from the dial)
        # before an older server closes with 4205 (10 s from the upgrade).
        server = _ScriptedServer()
        clock = Clock()
        client = self.client(self.listen(server), clock)
        connected = client.connect()
        yield wait_until(lambda: len(server.opened) == 1)
        clock.advance(client.options.handshake_timeout)
        yield wait_until(lambda: client.state is ClientState.RECONNECTING)
        self.assertTrue(client.core.url_hello_refused)
        clock.advance(reconnect_call(clock).getTime() - clock.seconds())
        yield connected
        self.assertEqual([hello_of(t) is None for t in server.targets], [False, True])
        self.assertEqual([f["type"] for f in server.frames], ["hello"])

    @inlineCallbacks
    def test_a_timeout_before_the_upgrade_keeps_the_url_hello(self) -> Any:
        factory = Factory.forProtocol(_Silent)
        clock = Clock()
        client = self.client(self.listen(factory), clock)
        client.connect().addErrback(lambda _: None)
        yield wait_until(lambda: client._attempt_protocol is not None)
        self.assertEqual(client.stats.url_hellos, 1)
        clock.advance(client.options.handshake_timeout)
        yield wait_until(lambda: client.state is ClientState.RECONNECTING)
        self.assertFalse(client.core.url_hello_refused)
        yield client.close()

    @inlineCallbacks
    def test_an_error_answer_then_the_hello_as_a_frame_on_the_same_connection(self) -> Any:
        server = _ScriptedServer()

        def refuse(protocol: _ScriptedProtocol) -> None:
            hello = hello_of(server.targets[-1])
            if hello is not None:
                protocol.send({"type": "error", "ref": hello["id"], "code": 4200, "data": {}})

        server.on_open = refuse
        clock = Clock()
        client = self.client(self.listen(server), clock)
        yield client.connect()
        [target] = server.targets
        url_hello = hello_of(target)
        assert url_hello is not None
        [frame] = server.frames
        self.assertEqual(frame["data"], url_hello["data"])
        self.assertNotEqual(frame["id"], url_hello["id"])
        self.assertEqual((client.stats.attempts, client.core.url_hello_refused), (1, False))
