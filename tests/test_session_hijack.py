"""An anonymous session id is not a credential (protocol.md 4.3, security.md).

Over real sockets: a client that presents another client's session id
without that session's resume token gets a new session of its own; the owner
keeps its connection, its stream and its rooms, and still resumes with its
token.
"""

from __future__ import annotations

from tests.wsclient import ServerTestCase, async_test


class SessionHijackTests(ServerTestCase):
    @async_test
    async def test_a_stolen_session_id_gets_a_new_session(self) -> None:
        hub = self.start_server(open_rooms=True)
        owner = await self.connect(rooms=["private"])
        assert owner.session is not None and owner.welcome is not None
        token = owner.welcome["data"]["resume_token"]
        self.assertEqual(len(token), 43)
        await hub.send(owner.session, "secret", {"n": 1})
        for attempt in (None, "guess", token[:-1] + ("A" if token[-1] != "A" else "B")):
            thief = await self.connect(hello=False)
            welcome = await thief.hello(
                session=owner.session,
                streams={"direct": {"offset": 0, "epoch": owner.positions["direct"]["epoch"]}},
                resume_token=attempt,
            )
            self.assertEqual(welcome["type"], "welcome")
            self.assertNotEqual(welcome["data"]["session"], owner.session)
            self.assertFalse(welcome["data"]["resumed"])
            self.assertEqual(welcome["data"]["rooms"], [])
            self.assertNotEqual(welcome["data"]["resume_token"], token)
            # Nothing of the owner's direct stream is replayed to the thief.
            self.assertFalse(welcome["data"]["streams"]["direct"]["recovered"])
            await thief.close()
        self.assertFalse(owner.closed.called)
        self.assertTrue(hub.is_connected(owner.session))
        event = await owner.next_of("event")
        self.assertEqual(event["data"], {"n": 1})

    @async_test
    async def test_the_owner_resumes_with_its_token(self) -> None:
        hub = self.start_server(open_rooms=True)
        owner = await self.connect(rooms=["private"])
        assert owner.session is not None and owner.welcome is not None
        token = owner.welcome["data"]["resume_token"]
        again = await self.connect(hello=False)
        welcome = await again.hello(session=owner.session, resume_token=token)
        self.assertTrue(welcome["data"]["resumed"])
        self.assertEqual(welcome["data"]["rooms"], ["private"])
        self.assertEqual(welcome["data"]["resume_token"], token)
        code, _ = await owner.wait_closed()
        self.assertEqual(code, 4400)
        self.assertTrue(hub.is_connected(owner.session))
