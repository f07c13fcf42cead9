"""End-to-end encryption over real sockets: Python clients and a server that
routes, stores and replays sealed room messages without the key; what does
not open is reported with its code and nothing else is lost. (The
TypeScript client's side: clients/js/test/integration/crypto.test.mjs.)"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import inlineCallbacks

from tests.helpers.client import ClientTestCase, ServerFixture, make_hub, wait_until
from warpsocket.client.client import DeliveryError
from warpsocket.core.history import Position
from warpsocket.crypto import e2e
from warpsocket.crypto.client import CryptoFailure
from warpsocket.protocol.codes import ErrorCode
from warpsocket.protocol.compact import plain
from warpsocket.server.context import Context
from warpsocket.server.middleware import Reject
from warpsocket.server.outbox import AckTimeoutError

ROOM_KEY = bytes(range(32))
OTHER_KEY = bytes(range(32, 64))


def ring(kid: str = "r1", key: bytes = ROOM_KEY) -> e2e.KeyRing:
    return e2e.KeyRing({kid: key}, current=kid)


def stored(server: ServerFixture, key: str) -> list[Any]:
    """The data of every message the server keeps for replay on ``key``."""
    store = server.hub.store
    epoch = store.position(key).epoch
    found = store.read_after(key, Position(0, epoch), server.hub.now_ms()) or []
    return [plain(message.data) for message in found]


class EncryptedRoomTests(ClientTestCase):
    def setUp(self) -> None:
        self.server = ServerFixture(self, make_hub())

    def member(self, provider: e2e.KeyProvider | None) -> tuple[Any, list[Any], list[Any]]:
        client = self.client(self.server.url, e2e=provider)
        seen: list[Any] = []
        refused: list[CryptoFailure] = []
        client.subscribe("chat", lambda message: seen.append(message.data))
        client.on_crypto_error(refused.append)
        return client, seen, refused

    @inlineCallbacks
    def test_routed_stored_and_replayed_sealed(self) -> Any:
        alice, alice_seen, _ = self.member(ring())
        bob, bob_seen, bob_refused = self.member(ring())
        yield alice.connect()
        yield bob.connect()
        self.assertIn(e2e.EXTENSION, alice.extensions)
        yield alice.send("say", {"text": "meet at noon"}, room="chat", ack=True)
        yield wait_until(lambda: len(bob_seen) == 1 and len(alice_seen) == 1)
        self.assertEqual(bob_seen, [{"text": "meet at noon"}])
        # Bob is away; the application (which holds the room key too) and
        # Alice publish; Bob's resume replays both from the server's history.
        self.server.drop_all()
        sealer = e2e.Sealer(ring())
        yield self.server.hub.publish(
            "chat", "say", sealer.seal("from the app", "say", "room:chat")
        )
        yield wait_until(lambda: alice.state.value == "open" and bob.state.value == "open")
        yield alice.send("say", ["and", "then"], room="chat", ack=True)
        yield wait_until(lambda: len(bob_seen) == 3)
        self.assertEqual(bob_seen, [{"text": "meet at noon"}, "from the app", ["and", "then"]])
        self.assertEqual(bob_refused, [])
        history = stored(self.server, "room:chat")
        self.assertEqual(len(history), 3)
        self.assertTrue(all(e2e.is_sealed(data) for data in history))
        text = json.dumps(history)
        for words in ("meet at noon", "from the app", "then"):
            self.assertNotIn(words, text)

    @inlineCallbacks
    def test_a_client_without_keys_gets_the_sealed_form(self) -> Any:
        alice, _, _ = self.member(ring())
        eve, eve_seen, _ = self.member(None)
        yield alice.connect()
        yield eve.connect()
        yield alice.send("say", "secret", room="chat", ack=True)
        yield wait_until(lambda: len(eve_seen) == 1)
        self.assertTrue(e2e.is_sealed(eve_seen[0]))
        self.assertNotIn("secret", json.dumps(eve_seen))

    @inlineCallbacks
    def test_wrong_key_unknown_kid_and_tampering_are_reported_not_delivered(self) -> Any:
        wrong, wrong_seen, wrong_refused = self.member(ring(key=OTHER_KEY))
        stranger, stranger_seen, stranger_refused = self.member(ring(kid="r9"))
        good, good_seen, good_refused = self.member(ring())
        lost: list[str] = []
        good.on_lost(lambda stream, reason: lost.append(stream))
        for client in (wrong, stranger, good):
            yield client.connect()
        sealer = e2e.Sealer(ring())
        sealed = sealer.seal({"n": 1}, "say", "room:chat")
        ct = sealed["$enc"]["ct"]
        tampered = {"$enc": {**sealed["$enc"], "ct": ("B" if ct[0] == "A" else "A") + ct[1:]}}
        yield self.server.hub.publish("chat", "say", tampered)
        yield self.server.hub.publish("chat", "say", sealer.seal({"n": 2}, "say", "room:chat"))
        yield wait_until(lambda: len(good_seen) == 1 and len(stranger_refused) == 2)
        yield wait_until(lambda: len(wrong_refused) == 2)
        # The good key opens the good message; the tampered one is refused.
        self.assertEqual(good_seen, [{"n": 2}])
        self.assertEqual([f.code for f in good_refused], [ErrorCode.DECRYPT_FAILED])
        self.assertEqual(good_refused[0].offset, 1)
        self.assertEqual(lost, ["room:chat"])
        self.assertEqual([f.code for f in wrong_refused], [ErrorCode.DECRYPT_FAILED] * 2)
        # The key id is looked up first: the tampered one is unknown_key too.
        self.assertEqual([f.code for f in stranger_refused], [ErrorCode.UNKNOWN_KEY] * 2)
        self.assertEqual(wrong_seen + stranger_seen, [])
        # Nothing else is lost: the stream goes on.
        yield self.server.hub.publish("chat", "say", sealer.seal({"n": 3}, "say", "room:chat"))
        yield wait_until(lambda: len(good_seen) == 2)
        self.assertEqual(good_seen, [{"n": 2}, {"n": 3}])

    @inlineCallbacks
    def test_an_acked_send_that_does_not_open_fails_on_the_server_with_the_code(self) -> Any:
        client = self.client(self.server.url, e2e=ring(kid="mine"))
        refused: list[CryptoFailure] = []
        client.on_crypto_error(refused.append)
        yield client.connect()
        session = client.session
        assert session is not None
        sealer = e2e.Sealer(ring(kid="not-yours"))
        sent = self.server.hub.send(
            session, "note", sealer.seal("x", "note", "direct"), ack=True, timeout=60
        )
        failure = yield self.assertFailure(sent, AckTimeoutError)
        self.assertEqual(failure.code, ErrorCode.UNKNOWN_KEY)
        self.assertEqual([f.code for f in refused], [ErrorCode.UNKNOWN_KEY])
        # A good one is acknowledged as usual.
        yield self.server.hub.send(
            session, "note", e2e.Sealer(ring(kid="mine")).seal(1, "note", "direct"), ack=True
        )

    @inlineCallbacks
    def test_the_server_application_can_be_an_end(self) -> Any:
        keys = e2e.Sealer(ring())
        opened: list[Any] = []

        def note(ctx: Context, data: Any) -> Any:
            opened.append(keys.open(data, "note", e2e.scope_of(room=None)))
            return None

        self.server.hub.on("note", note)

        def bad(ctx: Context, data: Any) -> Any:
            try:
                return keys.open(data, "bad", "direct")
            except e2e.E2EError as error:
                raise Reject(error.code, error.message) from None

        self.server.hub.on("bad", bad)
        client = self.client(self.server.url, e2e=ring())
        yield client.connect()
        yield client.send("note", {"pin": 1234}, ack=True)
        self.assertEqual(opened, [{"pin": 1234}])
        # Sealed under another event name: the handler refuses it with the code.
        sealed = e2e.Sealer(ring()).seal(1, "note", "direct")
        plain = self.client(self.server.url)
        yield plain.connect()
        failure = yield self.assertFailure(plain.send("bad", sealed, ack=True), DeliveryError)
        self.assertEqual(failure.outcome.code, ErrorCode.DECRYPT_FAILED)
