"""The README's chat example, over real sockets: it works, and it never shows
anyone a session id (protocol.md 4.3: ids are not to be published)."""

from __future__ import annotations

import json

from tests.wsclient import ServerTestCase, async_test
from warpsocket.examples.chat import setup


class ChatExampleTests(ServerTestCase):
    @async_test
    async def test_join_say_who_without_leaking_session_ids(self) -> None:
        setup(self.start_server())
        ann = await self.connect()
        bob = await self.connect()
        eve = await self.connect()
        joined = await ann.request(
            {"type": "call", "event": "join", "data": {"room": "lobby", "name": "ann"}}
        )
        self.assertEqual(joined["data"], {"room": "lobby", "members": 1})
        await bob.request(
            {"type": "call", "event": "join", "data": {"room": "lobby", "name": "bob"}}
        )
        said = await ann.request(
            {"type": "event", "event": "say", "data": {"room": "lobby", "text": "hi"}, "ack": True}
        )
        self.assertEqual(said["type"], "ack")
        message = await bob.wait_for(lambda m: m.get("event") == "said")
        self.assertEqual(message["data"], {"from": "ann", "text": "hi"})
        who = await bob.request({"type": "call", "event": "who", "data": {"room": "lobby"}})
        self.assertEqual(who["data"], {"room": "lobby", "members": 2})
        # Outsiders may neither ask nor speak.
        for event in ("who", "say"):
            refused = await eve.request(
                {"type": "call", "event": event, "data": {"room": "lobby", "text": "x"}}
            )
            self.assertEqual((refused["type"], refused["code"]), ("error", 4102), event)
        # No frame anyone received carries another client's session id.
        for client, others in ((ann, (bob, eve)), (bob, (ann, eve)), (eve, (ann, bob))):
            seen = json.dumps(client.messages)
            for other in others:
                assert other.session is not None
                self.assertNotIn(other.session, seen)

    @async_test
    async def test_server_side_joins_respect_the_room_limit(self) -> None:
        """The chat's join RPC joins for the client: past max_rooms it gets 4206."""
        from warpsocket.core.server import CoreOptions

        setup(self.start_server(CoreOptions(max_rooms=3)))
        client = await self.connect()
        answers = [
            await client.request({"type": "call", "event": "join", "data": {"room": f"r{n}"}})
            for n in range(5)
        ]
        self.assertEqual([a["type"] for a in answers], ["result"] * 3 + ["error"] * 2)
        self.assertEqual({a.get("code") for a in answers[3:]}, {4206})
        assert client.session is not None
        self.assertEqual(len(self.hub.session_info(client.session).rooms), 3)  # type: ignore[union-attr]
