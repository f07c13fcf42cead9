"""Signatures over real sockets (protocol.md "Extension: signatures"): the
server verifies what clients send and signs what it sends; bad signatures,
unknown keys, replays and stale timestamps each get their code, with the
envelope's id as ``ref``, and the connection goes on. The replay window runs
on a ``twisted.internet.task.Clock``."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.helpers.client import ClientTestCase, ServerFixture, wait_until
from tests.wsclient import WsClient, connect, new_id
from warpsocket.core.server import CoreOptions
from warpsocket.crypto.client import CryptoFailure
from warpsocket.crypto.hub import SigningOptions
from warpsocket.crypto.signing import (
    Ed25519Key,
    HmacKey,
    SignatureKeys,
    sign_wire,
)
from warpsocket.protocol.codes import ErrorCode
from warpsocket.server.hub import Hub, HubOptions
from warpsocket.server.service import WarpSocketService

SECRET = b"warpsocket-test-hmac-secret-0001"
SERVER_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
CLIENT_SEED = bytes(range(32))
T0 = 1_764_300_000.0  # seconds: the Clock starts here


def server_keys() -> SignatureKeys:
    client_public = Ed25519Key.from_seed("alice", CLIENT_SEED).public
    return SignatureKeys.of(
        [
            HmacKey("shared", SECRET),
            Ed25519Key.from_seed("server", SERVER_SEED),
            Ed25519Key("alice", client_public),
        ],
        signer="server",
    )


def client_keys(signer: str = "alice") -> SignatureKeys:
    server_public = Ed25519Key.from_seed("server", SERVER_SEED).public
    return SignatureKeys.of(
        [
            HmacKey("shared", SECRET),
            Ed25519Key.from_seed("alice", CLIENT_SEED),
            Ed25519Key("server", server_public),
        ],
        signer=signer,
    )


class RawSignedTests(unittest.TestCase):
    """Exact envelopes from a raw client; the server's clock is a Clock."""

    timeout = 20

    def start(self, **signing: Any) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        options = HubOptions(
            # Heartbeats out of the way of the minutes the window tests skip.
            core=CoreOptions(heartbeat_interval_ms=600_000, heartbeat_timeout_ms=900_000),
            open_rooms=True,
            signing=SigningOptions(server_keys(), **signing),
        )
        self.hub = Hub(options, clock=self.clock)
        service = WarpSocketService(self.hub, ["tcp:0:interface=127.0.0.1"])
        service.startService()
        self.addCleanup(service.stopService)
        self.port = service.ports[0].getHost().port
        self.keys = client_keys()

    async def client(self, sign: bool = True) -> tuple[WsClient, dict[str, Any]]:
        client = await connect(self.port, clock=self.clock)
        self.addCleanup(client.close)
        data: dict[str, Any] = {"session": None, "streams": {}, "rooms": ["chat"]}
        if sign:
            data["extensions"] = ["sign"]
        welcome = await client.request({"type": "hello", "data": data})
        return client, welcome

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    def signed(self, envelope: dict[str, Any], kid: str = "alice") -> dict[str, Any]:
        full = {"id": new_id(), "timestamp": self.now_ms(), **envelope}
        return sign_wire(full, self.keys.keys[kid])

    async def refused(self, client: WsClient, envelope: dict[str, Any], code: int) -> None:
        answer = await client.request(envelope)
        self.assertEqual((answer["type"], answer["code"]), ("error", code), answer)
        self.assertEqual(answer["ref"], envelope["id"])

    async def acked(self, client: WsClient, envelope: dict[str, Any]) -> dict[str, Any]:
        answer = await client.request(envelope)
        self.assertEqual(answer["type"], "ack", answer)
        return answer

    def event(self, **fields: Any) -> dict[str, Any]:
        return {"type": "event", "event": "say", "room": "chat", "ack": True, **fields}

    async def test_signed_both_ways(self) -> None:
        self.start()
        client, welcome = await self.client()
        params = welcome["data"]["extensions"]["sign"]
        self.assertEqual(params["kid"], "server")
        self.assertEqual(params["window_ms"], 300_000)
        # The welcome itself is signed by the server's key, and verifies.
        self.assertEqual(self.keys.verify(welcome), "server")
        for kid in ("alice", "shared"):
            answer = await self.acked(client, self.signed(self.event(data={"by": kid}), kid))
            self.assertEqual(self.keys.verify(answer), "server")
        events = [m for m in client.drain() if m["type"] == "event"]
        self.assertEqual([m["data"] for m in events], [{"by": "alice"}, {"by": "shared"}])
        for message in events:
            self.assertEqual(self.keys.verify(message), "server")

    async def test_a_signature_covers_the_trace_as_sent(self) -> None:
        """An invalid ``trace`` (ignored, protocol.md 14) or one with extra keys
        is still part of what was signed: the envelope verifies as received."""
        self.start()
        client, _ = await self.client()
        valid = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        for trace in (
            {"traceparent": "not a traceparent"},
            {"traceparent": valid, "tracestate": "\u00e9 not ascii", "more": 1},
            "just a string",
        ):
            await self.acked(client, self.signed(self.event(data=1, trace=trace)))

    async def test_each_failure_has_its_code_and_costs_only_itself(self) -> None:
        self.start()
        client, _ = await self.client()
        good = self.signed(self.event(data=1))
        await self.acked(client, good)
        tampered = {**self.signed(self.event(data=2)), "data": 3}
        await self.refused(client, tampered, ErrorCode.BAD_SIGNATURE)
        unsigned = {"id": new_id(), "timestamp": self.now_ms(), **self.event(data=4)}
        await self.refused(client, unsigned, ErrorCode.BAD_SIGNATURE)
        foreign = self.signed(self.event(data=5))
        foreign["sig"] = {**foreign["sig"], "kid": "mallory"}
        await self.refused(client, foreign, ErrorCode.UNKNOWN_KEY)
        # The exact same envelope again: a replay (acked or not).
        await self.refused(client, good, ErrorCode.REPLAYED)
        loose = self.signed({"type": "event", "event": "say", "room": "chat"})
        client.send(loose)
        await self.refused(client, loose, ErrorCode.REPLAYED)
        # Nothing else was lost: the connection takes the next one.
        await self.acked(client, self.signed(self.event(data=6)))
        stored = [m.get("data") for m in client.drain() if m["type"] == "event"]
        self.assertEqual(stored, [1, None, 6])

    async def test_the_timestamp_window_on_the_servers_clock(self) -> None:
        self.start(window_ms=60_000)
        client, _ = await self.client()
        early = self.signed(self.event(data="early"))
        self.clock.advance(59)
        await self.acked(client, early)  # 59 s old: inside
        late = self.signed(self.event(data="late"))
        self.clock.advance(61)
        await self.refused(client, late, ErrorCode.STALE)  # 61 s old: outside
        future = self.signed(self.event(data="future"), "shared")
        future = sign_wire(
            {**future, "timestamp": self.now_ms() + 61_000}, self.keys.keys["shared"]
        )
        await self.refused(client, future, ErrorCode.STALE)
        # The guard forgot "early" once it left the window: its replay is stale.
        await self.refused(client, early, ErrorCode.STALE)

    async def test_bounded_ids_never_let_a_replay_through(self) -> None:
        self.start(max_entries=2)
        client, _ = await self.client()
        first = self.signed(self.event(data=1))
        await self.acked(client, first)
        self.clock.advance(0.001)
        for n in (2, 3):
            await self.acked(client, self.signed(self.event(data=n)))
            self.clock.advance(0.001)
        await self.refused(client, first, ErrorCode.STALE)

    async def test_clients_that_did_not_ask_are_served_unsigned_unless_required(self) -> None:
        self.start()
        client, welcome = await self.client(sign=False)
        self.assertNotIn("sig", welcome)
        answer = await self.acked(
            client, {"type": "event", "event": "say", "room": "chat", "ack": True}
        )
        self.assertNotIn("sig", answer)

    async def test_required_refuses_unsigned_clients(self) -> None:
        self.start(required=True)
        client, welcome = await self.client(sign=False)
        self.assertTrue(welcome["data"]["extensions"] == {})
        unsigned = {"id": new_id(), "timestamp": self.now_ms(), **self.event()}
        await self.refused(client, unsigned, ErrorCode.BAD_SIGNATURE)
        # Signed, it is taken even without the extension (not answered signed).
        answer = await self.acked(client, self.signed(self.event()))
        self.assertNotIn("sig", answer)


def signing_hub(**signing: Any) -> Hub:
    options = HubOptions(open_rooms=True, signing=SigningOptions(server_keys(), **signing))
    return Hub(options)


class SignedClientTests(ClientTestCase):
    """The Python client signs what it sends and verifies what it receives."""

    @inlineCallbacks
    def test_a_signed_session(self) -> Any:
        server = ServerFixture(self, signing_hub(required=True))
        server.hub.on("add", lambda ctx, data: data[0] + data[1])
        refused: list[CryptoFailure] = []
        seen: list[Any] = []
        client = self.client(server.url, signing=client_keys())
        client.on_crypto_error(refused.append)
        client.subscribe("chat", lambda message: seen.append(message.data))
        client.on("note", lambda message: seen.append(message.data))
        yield client.connect()
        self.assertEqual(client.extensions["sign"]["kid"], "server")
        yield client.send("say", "hi", room="chat", ack=True)
        result = yield client.call("add", [2, 3])
        self.assertEqual(result, 5)
        session = client.session
        assert session is not None
        yield server.hub.send(session, "note", {"n": 1}, ack=True)
        yield wait_until(lambda: len(seen) == 2)
        self.assertEqual(seen, ["hi", {"n": 1}])
        self.assertEqual(refused, [])

    @inlineCallbacks
    def test_server_envelopes_that_do_not_verify_are_refused(self) -> Any:
        server = ServerFixture(self, signing_hub())
        refused: list[CryptoFailure] = []
        seen: list[Any] = []
        client = self.client(server.url, signing=client_keys(signer="shared"))
        client.on_crypto_error(refused.append)
        client.on("note", lambda message: seen.append(message.data))
        yield client.connect()
        session = client.session
        assert session is not None
        yield server.hub.send(session, "note", 1, ack=True)
        # The server now signs with a key its clients do not trust, under the
        # same key id (a forger): every envelope fails; acked ones are nacked.
        (connection,) = server.hub.port.connections.values()
        connection.codec.key = Ed25519Key.from_seed("server", bytes(32))  # type: ignore[attr-defined]
        sent = server.hub.send(session, "note", 2, ack=True, timeout=60)
        failure = yield self.assertFailure(sent, Exception)
        self.assertEqual(failure.code, ErrorCode.BAD_SIGNATURE)
        self.assertEqual(seen, [1])
        self.assertEqual([f.code for f in refused], [ErrorCode.BAD_SIGNATURE])
        self.assertEqual(refused[0].envelope.data, 2)

    @inlineCallbacks
    def test_a_server_that_only_verifies_is_not_verified(self) -> Any:
        keys = SignatureKeys.of([HmacKey("shared", SECRET)])  # no signer: it verifies only
        hub = Hub(HubOptions(open_rooms=True, signing=SigningOptions(keys, required=True)))
        server = ServerFixture(self, hub)
        refused: list[CryptoFailure] = []
        seen: list[Any] = []
        client = self.client(server.url, signing=client_keys(signer="shared"))
        client.on_crypto_error(refused.append)
        client.subscribe("chat", lambda message: seen.append(message.data))
        yield client.connect()
        self.assertNotIn("kid", client.extensions["sign"])
        yield client.send("say", "signed, answered unsigned", room="chat", ack=True)
        yield wait_until(lambda: len(seen) == 1)
        self.assertEqual(refused, [])
