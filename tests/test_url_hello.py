"""The hello in the upgrade request (protocol.md 4.5), against a real server
over sockets: tests/vectors/url_hello.json's ``decode`` and ``invalid`` lists,
and what follows a URL hello (one write, errors, a second hello, other
codecs, tokens, the drain)."""

from __future__ import annotations

import json
from base64 import urlsafe_b64encode
from pathlib import Path
from typing import Any

import msgpack
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from tests.helpers.security import SECRET, RawPeer, SecureTestCase, frame, hs256, upgrade_request
from tests.wsclient import MSGPACK_SUBPROTOCOL, async_test, connect, wait_until
from warpsocket.core.server import CoreOptions
from warpsocket.server.security import JWTAuthenticator, SecurityOptions
from warpsocket.server.url_hello import MAX_BYTES

VECTORS = json.loads(
    (Path(__file__).parent / "vectors" / "url_hello.json").read_text(encoding="utf-8")
)


def query_of(envelope: dict[str, Any]) -> str:
    text = json.dumps(envelope, separators=(",", ":"))
    return "hello=" + urlsafe_b64encode(text.encode()).decode().rstrip("=")


def hello_query(hello_id: str = "h1", **data: Any) -> str:
    return query_of({"type": "hello", "id": hello_id, "timestamp": 1, "data": data})


def frames_after_upgrade(peer: RawPeer) -> list[tuple[int, bytes]]:
    """The whole frames the server sent after its ``101`` (opcode, payload)."""
    data = bytes(peer.data)
    at = data.find(b"\r\n\r\n") + 4
    found = []
    while len(data) - at >= 2:
        opcode, length, head = data[at] & 0x0F, data[at + 1] & 0x7F, 2
        if length == 126:
            length, head = int.from_bytes(data[at + 2 : at + 4], "big"), 4
        if len(data) - at < head + length:
            break
        found.append((opcode, data[at + head : at + head + length]))
        at += head + length
    return found


class UrlHelloVectorTests(SecureTestCase):
    @async_test
    async def test_decode_vectors_are_welcomed_without_a_frame_from_the_client(self) -> None:
        self.start_secure(open_rooms=True)
        for vector in VECTORS["decode"]:
            peer = await self.raw_ws(upgrade_request(path="/ws?" + vector["query"]))
            await wait_until(lambda p=peer: bool(frames_after_upgrade(p)), what=vector["name"])
            opcode, payload = frames_after_upgrade(peer)[0]
            welcome = json.loads(payload)
            self.assertEqual((opcode, welcome["type"]), (0x1, "welcome"), vector["name"])
            self.assertEqual(welcome["ref"], vector["expected"]["id"], vector["name"])
            rooms = vector["expected"]["data"].get("rooms", [])
            self.assertEqual(welcome["data"]["rooms"], sorted(rooms), vector["name"])
        self.assertEqual(self.hub.connection_count, len(VECTORS["decode"]))

    @async_test
    async def test_invalid_vectors_are_refused_before_the_upgrade(self) -> None:
        self.start_secure()
        for vector in VECTORS["invalid"]:
            status, reason = await self.raw_status(upgrade_request(path="/ws?" + vector["query"]))
            self.assertEqual(status, vector["status"], vector["name"])
            self.assertTrue(reason.startswith(f"{vector['code']} bad_envelope"), reason)
        self.assertEqual(
            self.metric("warpsocket_rejected_handshakes_total", {"reason": "bad_envelope"}),
            len(VECTORS["invalid"]),
        )
        self.assertEqual(self.hub.connection_count, 0)
        # Nothing else was touched: the next client is served.
        client = await self.open()
        self.assertEqual((await client.hello())["type"], "welcome")

    def test_the_limit_is_the_specs(self) -> None:
        self.assertEqual(MAX_BYTES, 2048)


class UrlHelloTests(SecureTestCase):
    @async_test
    async def test_101_and_welcome_leave_in_one_write(self) -> None:
        """In process, over a transport that counts writes: the upgrade's
        response waits for the welcome of the URL's hello."""
        self.start_secure(open_rooms=True)
        writes: list[bytes] = []

        class Counting(StringTransport):
            def write(self, data: bytes) -> None:
                writes.append(data)
                super().write(data)

        peer = IPv4Address("TCP", "127.0.0.1", 40000)
        transport = Counting(peerAddress=peer, hostAddress=IPv4Address("TCP", "127.0.0.1", 1))
        protocol = self.service.site.buildProtocol(peer)
        assert protocol is not None
        protocol.makeConnection(transport)
        protocol.dataReceived(upgrade_request(path="/ws?" + hello_query(rooms=["chat"])))
        self.assertEqual(len(writes), 1, writes)
        self.assertTrue(writes[0].startswith(b"HTTP/1.1 101"), writes[0][:40])
        self.assertIn(b'"type":"welcome"', writes[0])
        self.assertIn(b'"ref":"h1"', writes[0])
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.hub.connection_count, 0)

    @async_test
    async def test_a_client_acts_on_the_welcome_at_once(self) -> None:
        hub = self.start_secure(open_rooms=True)
        hub.on("echo", lambda ctx, data: data)
        client = await connect(self.port, path="/ws?" + hello_query(rooms=["chat"]))
        self.clients.append(client)
        welcome = await client.next_message()
        self.assertEqual((welcome["type"], welcome["ref"]), ("welcome", "h1"))
        self.assertEqual(welcome["data"]["rooms"], ["chat"])
        result = await client.request({"type": "call", "event": "echo", "data": {"x": 1}})
        self.assertEqual(result["data"], {"x": 1})
        await hub.publish("chat", "news", {"n": 1})
        event = await client.next_of("event")
        self.assertEqual((event["stream"], event["data"]), ("room:chat", {"n": 1}))

    @async_test
    async def test_a_hello_frame_after_it_is_a_second_hello(self) -> None:
        self.start_secure()
        client = await connect(self.port, path="/ws?" + hello_query())
        self.clients.append(client)
        self.assertEqual((await client.next_message())["type"], "welcome")
        answer = await client.request({"type": "hello", "data": {}})
        self.assertEqual((answer["type"], answer["code"]), ("error", 4006))

    @async_test
    async def test_an_error_answering_it_leaves_the_connection_waiting_for_a_hello(self) -> None:
        self.start_secure()
        client = await connect(self.port, path="/ws?" + hello_query(rooms="chat"))
        self.clients.append(client)
        error = await client.next_message()
        self.assertEqual((error["type"], error["code"], error["ref"]), ("error", 4001, "h1"))
        self.assertEqual((await client.hello())["type"], "welcome")

    @async_test
    async def test_json_text_on_a_msgpack_connection(self) -> None:
        self.start_secure()
        client = await connect(
            self.port, protocols=[MSGPACK_SUBPROTOCOL], path="/ws?" + hello_query()
        )
        self.clients.append(client)
        welcome = await client.next_message()
        self.assertEqual(welcome["type"], "welcome")
        payload, binary = client.frames[0]
        self.assertTrue(binary)
        self.assertEqual(msgpack.unpackb(payload)["ref"], "h1")

    @async_test
    async def test_the_upgrades_token_authenticates_it(self) -> None:
        self.start_secure(SecurityOptions(authenticator=JWTAuthenticator(SECRET, ["HS256"])))
        self.hub.on("whoami", lambda ctx, data: {"user": ctx.user})
        token = hs256(sub="ann", exp=60)
        client = await self.open(
            path="/ws?" + hello_query(), headers={"Authorization": f"Bearer {token}"}
        )
        self.assertEqual((await client.next_message())["type"], "welcome")
        self.assertEqual(
            (await client.request({"type": "call", "event": "whoami"}))["data"], {"user": "ann"}
        )

    @async_test
    async def test_without_the_required_token_it_is_closed_unauthorized(self) -> None:
        self.start_secure(SecurityOptions(authenticator=JWTAuthenticator(SECRET, ["HS256"])))
        client = await self.open(path="/ws?" + hello_query())
        code, _ = await client.wait_closed()
        self.assertEqual(code, 4100)
        self.assertEqual(client.messages, [])

    @async_test
    async def test_the_hello_timeout_does_not_apply_after_it(self) -> None:
        self.start_secure(core=CoreOptions(handshake_timeout_ms=1_000, heartbeat_timeout_ms=1e9))
        client = await connect(self.port, path="/ws?" + hello_query())
        self.clients.append(client)
        self.assertEqual((await client.next_message())["type"], "welcome")
        self.advance(5)
        self.assertFalse(client.closed.called)

    @async_test
    async def test_other_query_parameters_and_the_path_split_keep_working(self) -> None:
        self.start_secure()
        peer = await self.raw_ws(upgrade_request(path="/ws?v=2&" + hello_query("h7") + "&x"))
        await wait_until(lambda: bool(frames_after_upgrade(peer)), what="welcome")
        self.assertEqual(json.loads(frames_after_upgrade(peer)[0][1])["ref"], "h7")

    @async_test
    async def test_a_frame_after_the_upgrade_request_waits_for_the_welcome(self) -> None:
        """A client that breaks 4.5 and pipelines a frame behind its request
        gets the welcome first, then the answer to the frame (4006)."""
        self.start_secure()
        second = json.dumps({"type": "hello", "id": "h2", "timestamp": 1, "data": {}})
        peer = await self.raw(upgrade_request(path="/ws?" + hello_query()) + frame(second.encode()))
        await wait_until(lambda: len(frames_after_upgrade(peer)) >= 2, what="two answers")
        first, then = (json.loads(p) for _, p in frames_after_upgrade(peer)[:2])
        self.assertEqual((first["type"], first["ref"]), ("welcome", "h1"))
        self.assertEqual((then["type"], then["code"], then["ref"]), ("error", 4006, "h2"))
