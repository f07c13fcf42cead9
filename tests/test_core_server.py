"""Tests for warpsocket.core.server: the sans-I/O server reliability core."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from tests.helpers.core import T0, TOKEN, event, hello, make_server
from warpsocket.core.history import HistoryLimits
from warpsocket.core.keys import direct_key
from warpsocket.core.server import (
    AckResult,
    Action,
    Close,
    CoreOptions,
    Dispatch,
    Fanout,
    Publish,
    QueueFullError,
    Send,
    ServerCore,
    SessionExpired,
    SessionOpened,
    UnknownSessionError,
    hash_resume_token,
    new_resume_token,
)
from warpsocket.protocol import Envelope, ErrorCode, MessageType, ProtocolError


def publish(
    server: ServerCore,
    key: str,
    event: str,
    data: Any,
    now_ms: int,
    *,
    ttl: int | None = None,
    ack: bool = False,
) -> tuple[Envelope, list[Action]]:
    """What a backend does with a publish, for the core alone: append it to
    the store, then deliver it (the hub's path is server/outbox.py)."""
    template = Envelope(
        type=MessageType.EVENT,
        id=server.new_id(),
        timestamp=now_ms,
        event=event,
        data=data,
        ttl=ttl,
        ack=ack,
    )
    stored = server.store.append(key, template, now_ms)
    return stored, server.deliver(key, stored)


def send_direct(
    server: ServerCore,
    session: str,
    event: str,
    data: Any,
    now_ms: int,
    *,
    ack: bool = False,
    ttl: int | None = None,
    timeout_ms: int | None = None,
) -> tuple[Envelope, list[Action]]:
    """A direct send, for the core alone: checked, published, then tracked."""
    server.check_send(session, ack)
    stored, actions = publish(server, direct_key(session), event, data, now_ms, ttl=ttl, ack=ack)
    if ack:
        actions += server.track_ack(session, stored, now_ms, timeout_ms)
    return stored, actions


def perform(server: ServerCore, action: Publish, now_ms: int) -> list[Action]:
    """A ``Publish`` action against the store: append, deliver, settle."""
    stored = server.store.append(action.key, action.template, now_ms)
    reply_to = action.reply_to
    return server.deliver(action.key, stored) + server.settle(
        reply_to.session, reply_to.envelope, now_ms
    )


def call(ident: str, method: str = "add", data: Any = None) -> Envelope:
    return Envelope(type=MessageType.CALL, id=ident, timestamp=T0, event=method, data=data)


def sent(actions: list[Action], conn: int | None = None) -> list[Envelope]:
    """Envelopes that reach ``conn`` (any connection when None), in order."""
    out: list[Envelope] = []
    for action in actions:
        if isinstance(action, Send):
            targets: tuple[int, ...] = (action.conn,)
        elif isinstance(action, Fanout):
            targets = action.conns
        else:
            continue
        if conn is None or conn in targets:
            out.append(action.envelope)
    return out


def of_type(actions: list[Action], kind: type) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def welcome_of(actions: list[Action]) -> Envelope:
    welcomes = [e for e in sent(actions) if e.type is MessageType.WELCOME]
    assert len(welcomes) == 1, welcomes
    return welcomes[0]


def position(stream: dict[str, Any]) -> dict[str, Any]:
    return {"offset": stream["offset"], "epoch": stream["epoch"]}


class Base(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.server = make_server()

    def connect(
        self, conn: int = 1, now: int = T0, server: ServerCore | None = None, **kwargs: Any
    ) -> tuple[str, dict[str, Any], list[Action]]:
        server = server or self.server
        server.open(conn, now)
        actions = server.receive(conn, hello(f"h{conn}", **kwargs), now)
        data = welcome_of(actions).data
        return data["session"], data, actions


class HelloTests(Base):
    def test_welcome_contents(self) -> None:
        publish(self.server, "broadcast", "old", 1, T0 - 5)
        self.server.open(1, T0)
        actions = self.server.receive(1, hello("h1", rooms=["chat", "secret", "chat"]), T0)
        welcome = welcome_of(actions)
        self.assertEqual(actions[0], Send(1, welcome))
        self.assertEqual((welcome.ref, welcome.timestamp), ("h1", T0))
        data = welcome.data
        self.assertEqual(data["session"], "sess-1")
        self.assertFalse(data["resumed"])
        self.assertEqual(list(data["streams"]), ["direct", "broadcast", "room:chat"])
        self.assertEqual(data["streams"]["broadcast"]["offset"], 1)
        self.assertEqual(data["streams"]["direct"]["offset"], 0)
        self.assertTrue(all(s["recovered"] for s in data["streams"].values()))
        self.assertEqual(data["rooms"], ["chat"])
        self.assertEqual(data["denied"], {"secret": int(ErrorCode.FORBIDDEN)})
        self.assertEqual(data["heartbeat"], {"interval": 25_000, "timeout": 60_000})
        self.assertEqual(
            data["limits"],
            {
                "max_message_size": 1_048_576,
                "max_pending": 1_000,
                "max_depth": 64,
                "max_values": 131_072,
            },
        )
        self.assertEqual(data["node"], "n1")
        self.assertEqual(of_type(actions, SessionOpened), [SessionOpened(1, "sess-1", False)])
        # The welcome is a valid wire envelope.
        self.assertEqual(Envelope.from_wire(welcome.to_wire()), welcome)

    def test_room_limit(self) -> None:
        self.server = make_server(max_rooms=1)
        _, data, _ = self.connect(rooms=["a", "b"])
        self.assertEqual(data["rooms"], ["a"])
        self.assertEqual(data["denied"], {"b": int(ErrorCode.QUEUE_FULL)})

    def test_hello_required_first(self) -> None:
        self.server.open(1, T0)
        for envelope in (event("m1", ack=True), call("c1")):
            actions = self.server.receive(1, envelope, T0)
            [error] = sent(actions, 1)
            self.assertEqual((error.type, error.code), (MessageType.ERROR, 4003))
            self.assertEqual(error.ref, envelope.id)
            self.assertEqual(of_type(actions, Dispatch), [])
        # The connection stays usable: hello still works afterwards.
        welcome_of(self.server.receive(1, hello(), T0))

    def test_second_hello_and_server_only_types(self) -> None:
        self.connect()
        welcome = Envelope(type=MessageType.WELCOME, id="w", timestamp=T0, ref="x", data={})
        result = Envelope(type=MessageType.RESULT, id="r", timestamp=T0, ref="x")
        for envelope in (hello("h2"), welcome, result):
            [error] = sent(self.server.receive(1, envelope, T0))
            self.assertEqual((error.code, error.ref), (4006, envelope.id))

    def test_bad_hello_data(self) -> None:
        self.server.open(1, T0)
        for data in (
            {"session": 5},
            {"streams": []},
            {"streams": {"direct": []}},
            {"rooms": {}},
            {"streams": {"direct": {"offset": -1, "epoch": "e"}}},
            {"streams": {"direct": {"offset": 1}}},
            {"rooms": "chat"},
            {"rooms": [""]},
        ):
            bad = Envelope(type=MessageType.HELLO, id="h", timestamp=T0, data=data)
            [error] = sent(self.server.receive(1, bad, T0))
            self.assertEqual((error.code, error.ref), (4001, "h"))
        welcome_of(self.server.receive(1, hello(), T0))

    def test_unknown_connection_is_ignored(self) -> None:
        self.assertEqual(self.server.receive(9, hello(), T0), [])
        self.assertIsNone(self.server.close(9, T0))
        error = ProtocolError(ErrorCode.BAD_FRAME, "bad")
        self.assertEqual(self.server.protocol_error(9, error, T0), [])

    def test_protocol_error_is_answered(self) -> None:
        self.server.open(1, T0)
        error = ProtocolError(ErrorCode.BAD_ENVELOPE, "nope", "m-1")
        [reply] = sent(self.server.protocol_error(1, error, T0))
        self.assertEqual((reply.code, reply.ref), (4001, "m-1"))
        self.assertEqual(reply.data, {"name": "bad_envelope", "message": "nope"})

    def test_handshake_timeout(self) -> None:
        self.server.open(1, T0)
        self.server.open(2, T0)
        self.server.receive(2, hello(), T0)
        self.assertEqual(of_type(self.server.tick(T0 + 9_999), Close), [])
        closes = of_type(self.server.tick(T0 + 10_000), Close)
        self.assertEqual(closes, [Close(1, ErrorCode.HANDSHAKE_TIMEOUT)])
        self.assertEqual(of_type(self.server.tick(T0 + 20_000), Close), [])


class ResumeTests(Base):
    def setUp(self) -> None:
        super().setUp()
        self.session, data, _ = self.connect(rooms=["chat"])
        self.streams = data["streams"]
        publish(self.server, "room:chat", "seen", 1, T0)
        self.server.close(1, T0 + 1)

    def resume(
        self, now: int, streams: dict[str, dict[str, Any]] | None = None
    ) -> tuple[dict[str, Any], list[Action]]:
        presented = {name: position(s) for name, s in self.streams.items()}
        presented["room:chat"]["offset"] = 1  # the client processed "seen"
        presented.update(streams or {})
        self.server.open(2, now)
        actions = self.server.receive(2, hello("h2", self.session, presented, ["chat"]), now)
        return welcome_of(actions).data, actions

    def test_resume_with_replay(self) -> None:
        publish(self.server, "room:chat", "a", 2, T0 + 2)
        publish(self.server, "broadcast", "b", 3, T0 + 3)
        publish(self.server, "room:chat", "c", 4, T0 + 4)
        data, actions = self.resume(T0 + 5)
        self.assertTrue(data["resumed"])
        self.assertEqual(data["session"], self.session)
        streams = data["streams"]
        self.assertTrue(all(s["recovered"] for s in streams.values()))
        # The welcome carries the current positions (protocol.md 4.2, 13).
        self.assertEqual(streams["room:chat"]["offset"], 3)
        self.assertEqual(streams["broadcast"]["offset"], 1)
        replay = sent(actions, 2)[1:]
        # Stream after stream, in the welcome's order: broadcast, then room:chat.
        self.assertEqual(
            [(e.stream, e.offset, e.data) for e in replay],
            [("broadcast", 1, 3), ("room:chat", 2, 2), ("room:chat", 3, 4)],
        )
        self.assertEqual(of_type(actions, SessionOpened), [SessionOpened(2, self.session, True)])
        # Live events now reach the new connection.
        _, live = publish(self.server, "room:chat", "d", 5, T0 + 6)
        self.assertEqual(live, [Fanout((2,), sent(live)[0])])

    def test_not_recovered_on_epoch_change(self) -> None:
        publish(self.server, "room:chat", "a", 2, T0 + 2)
        data, actions = self.resume(T0 + 3, {"room:chat": {"offset": 1, "epoch": "other"}})
        chat = data["streams"]["room:chat"]
        self.assertFalse(chat["recovered"])
        # What the old epoch had is lost (reported); the new epoch is whole, so
        # the client starts at its beginning and gets all of it.
        self.assertEqual(position(chat), position(self.streams["room:chat"]) | {"offset": 0})
        self.assertTrue(data["streams"]["broadcast"]["recovered"])
        self.assertEqual(
            [(e.stream, e.offset) for e in sent(actions, 2)[1:]],
            [("room:chat", 1), ("room:chat", 2)],
        )

    def test_not_recovered_when_history_trimmed(self) -> None:
        self.server = make_server(history=HistoryLimits(max_messages=2))
        self.session, data, _ = self.connect(rooms=["chat"])
        self.streams = data["streams"]
        publish(self.server, "room:chat", "seen", 1, T0)
        self.server.close(1, T0)
        for i in range(3):
            publish(self.server, "room:chat", "x", i, T0 + 1)
        data, actions = self.resume(T0 + 2)
        self.assertTrue(data["resumed"])
        self.assertFalse(data["streams"]["room:chat"]["recovered"])
        self.assertEqual(data["streams"]["room:chat"]["offset"], 4)
        self.assertEqual(sent(actions, 2)[1:], [])

    def test_not_recovered_when_history_too_old(self) -> None:
        publish(self.server, "room:chat", "a", 2, T0 + 2)
        data, _ = self.resume(T0 + 2 + 300_001)
        self.assertFalse(data["streams"]["room:chat"]["recovered"])

    def test_expired_session(self) -> None:
        send_direct(self.server, self.session, "note", 1, T0 + 1)
        actions = self.server.tick(T0 + 1 + 119_999)
        self.assertEqual(of_type(actions, SessionExpired), [])
        actions = self.server.tick(T0 + 1 + 120_000)
        self.assertEqual(of_type(actions, SessionExpired), [SessionExpired(self.session)])
        self.assertNotIn(self.session, self.server.sessions)
        self.assertEqual(self.server.room_sessions, {}, "expired sessions leave their rooms")
        presented = {"direct": {"offset": 1, "epoch": self.streams["direct"]["epoch"]}}
        data, actions = self.resume(T0 + 200_000, presented)
        self.assertFalse(data["resumed"])
        self.assertNotEqual(data["session"], self.session)
        # The direct stream died with the session; rooms come back from hello.
        self.assertFalse(data["streams"]["direct"]["recovered"])
        self.assertNotEqual(data["streams"]["direct"]["epoch"], self.streams["direct"]["epoch"])
        self.assertEqual(data["rooms"], ["chat"])
        self.assertTrue(data["streams"]["room:chat"]["recovered"])

    def test_unknown_session_starts_a_new_one(self) -> None:
        self.server.open(2, T0)
        data = welcome_of(self.server.receive(2, hello("h2", "nope"), T0)).data
        self.assertFalse(data["resumed"])
        self.assertNotEqual(data["session"], "nope")

    def test_stream_not_presented_starts_where_the_session_did(self) -> None:
        """A room joined while away is replayed from the join (welcome = start)."""
        self.server.join(self.session, "news", T0 + 2)
        publish(self.server, "room:news", "n", 1, T0 + 3)
        data, actions = self.resume(T0 + 4)
        news = data["streams"]["room:news"]
        self.assertEqual((news["offset"], news["recovered"]), (0, True))
        self.assertEqual([(e.stream, e.offset) for e in sent(actions, 2)[1:]], [("room:news", 1)])

    def test_session_replaced(self) -> None:
        # Connection 2 holds the session; connection 3 takes it over.
        self.resume(T0 + 2)
        self.server.open(3, T0 + 3)
        actions = self.server.receive(3, hello("h3", self.session, {}, ["chat"]), T0 + 3)
        self.assertIn(Close(2, ErrorCode.SESSION_REPLACED), actions)
        self.assertTrue(welcome_of(actions).data["resumed"])
        _, live = publish(self.server, "room:chat", "x", 1, T0 + 4)
        self.assertEqual(live[0], Fanout((3,), sent(live)[0]))
        # Closing the replaced connection does not detach the session.
        self.assertIsNone(self.server.close(2, T0 + 5))
        self.assertEqual(self.server.sessions[self.session].conn, 3)
        self.assertEqual(of_type(self.server.tick(T0 + 500_000), SessionExpired), [])


class ClientMessageTests(Base):
    def setUp(self) -> None:
        super().setUp()
        self.session, _, _ = self.connect(rooms=["chat", "readonly"])

    def test_acked_event_dispatch_then_ack(self) -> None:
        message = event("m1", event="say", data={"t": 1}, ack=True)
        actions = self.server.receive(1, message, T0)
        self.assertEqual(actions, [Dispatch(1, self.session, message)])
        [ack] = sent(self.server.settle(self.session, message, T0 + 1))
        self.assertEqual((ack.type, ack.ref), (MessageType.ACK, "m1"))
        # A retry gets the recorded reply, without a second Dispatch.
        again = self.server.receive(1, message, T0 + 2)
        self.assertEqual(again, [Send(1, ack)])

    def test_duplicate_while_in_progress(self) -> None:
        message = event("m1", ack=True)
        self.server.receive(1, message, T0)
        self.assertEqual(self.server.receive(1, message, T0 + 1), [])
        # The retry came on a new connection: the answer goes there.
        self.server.close(1, T0 + 2)
        self.server.open(2, T0 + 2)
        self.server.receive(2, hello("h2", self.session), T0 + 2)
        self.assertEqual(self.server.receive(2, message, T0 + 3), [])
        [ack] = sent(self.server.settle(self.session, message, T0 + 4), 2)
        self.assertEqual(ack.ref, "m1")

    def test_settle_while_detached_is_answered_on_retry(self) -> None:
        message = event("m1", ack=True)
        self.server.receive(1, message, T0)
        self.server.close(1, T0)
        self.assertEqual(self.server.settle(self.session, message, T0 + 1), [])
        self.server.open(2, T0 + 2)
        self.server.receive(2, hello("h2", self.session), T0 + 2)
        [ack] = sent(self.server.receive(2, message, T0 + 3))
        self.assertEqual((ack.type, ack.ref), (MessageType.ACK, "m1"))

    def test_call_result(self) -> None:
        request = call("c1", data=[1, 2])
        self.assertEqual(self.server.receive(1, request, T0), [Dispatch(1, self.session, request)])
        [result] = sent(self.server.settle(self.session, request, T0, result=3))
        self.assertEqual((result.type, result.ref, result.data), (MessageType.RESULT, "c1", 3))
        self.assertEqual(sent(self.server.receive(1, request, T0 + 1)), [result])

    def test_rejection_is_final(self) -> None:
        message = event("m1", ack=True)
        self.server.receive(1, message, T0)
        error = (ErrorCode.HANDLER_ERROR, "boom")
        [reply] = sent(self.server.settle(self.session, message, T0, error=error))
        self.assertEqual((reply.type, reply.code, reply.ref), (MessageType.ERROR, 4300, "m1"))
        self.assertEqual(reply.data, {"name": "handler_error", "message": "boom"})
        self.assertEqual(sent(self.server.receive(1, message, T0 + 1)), [reply])

    def test_fire_and_forget_is_not_deduplicated(self) -> None:
        message = event("m1")
        self.assertEqual(self.server.receive(1, message, T0), [Dispatch(1, self.session, message)])
        self.assertEqual(self.server.settle(self.session, message, T0), [])
        self.assertEqual(self.server.receive(1, message, T0), [Dispatch(1, self.session, message)])
        [error] = sent(self.server.settle(self.session, message, T0, error=(4301, "no")))
        self.assertEqual((error.code, error.ref), (4301, "m1"))

    def test_expired_ttl(self) -> None:
        message = event("m1", ack=True, ttl=100)
        [error] = sent(self.server.receive(1, message, T0 + 100))
        self.assertEqual((error.code, error.ref), (4302, "m1"))
        self.assertEqual(of_type(self.server.receive(1, message, T0 + 100), Dispatch), [])
        self.assertEqual(len(self.server.receive(1, event("m2", ttl=100), T0 + 99)), 1)

    def test_retry_after_ttl_gets_the_recorded_reply(self) -> None:
        message = event("m1", ack=True, ttl=100)
        self.server.receive(1, message, T0 + 50)
        [ack] = sent(self.server.settle(self.session, message, T0 + 60))
        self.assertEqual(sent(self.server.receive(1, message, T0 + 500)), [ack])

    def test_room_publish_deferred_to_the_caller(self) -> None:
        # A client's room event comes back as a Publish action: the hub
        # appends it through its backend (outbox.py), then settles it.
        message = event("m1", event="say", room="chat", data="hi", ack=True)
        [publish] = self.server.receive(1, message, T0)
        assert isinstance(publish, Publish)
        self.assertEqual((publish.key, publish.reply_to.envelope), ("room:chat", message))
        self.assertEqual(self.server.store.position("room:chat").offset, 0)
        [fanout, ack] = perform(self.server, publish, T0)
        assert isinstance(fanout, Fanout)
        self.assertEqual(fanout.envelope.offset, 1)
        self.assertEqual(sent([ack])[0].ref, "m1")

    def test_track_ack_remembers_an_ack_that_came_first(self) -> None:
        stored = Envelope(
            type=MessageType.EVENT,
            id="d1",
            timestamp=T0,
            stream="direct",
            offset=1,
            epoch="e",
            ack=True,
        )
        self.server.receive(1, Envelope(type=MessageType.ACK, id="a1", timestamp=T0, ref="d1"), T0)
        self.assertEqual(
            self.server.track_ack(self.session, stored, T0), [AckResult(self.session, 1, None)]
        )
        later = stored.evolve(id="d2", offset=2)
        self.assertEqual(self.server.track_ack(self.session, later, T0), [])
        self.assertIn(2, self.server.sessions[self.session].pending)

    def test_adopt_session_resumes_it(self) -> None:
        self.server.adopt_session(
            "elsewhere", None, {}, ["lobby"], {}, T0, hash_resume_token(TOKEN)
        )
        self.server.open(9, T0)
        actions = self.server.receive(9, hello("h9", session="elsewhere"), T0)
        data = welcome_of(actions).data
        self.assertEqual(
            (data["session"], data["resumed"], data["rooms"], data["resume_token"]),
            ("elsewhere", True, ["lobby"], TOKEN),
        )

    def test_a_session_id_alone_does_not_resume(self) -> None:
        """The id is no credential: without the resume token, or with another
        one, the hello gets a new session and the owner keeps its connection."""
        self.server.open(2, T0)
        owner = welcome_of(self.server.receive(2, hello("h2"), T0)).data
        for conn, token in ((3, None), (4, "guess"), (5, owner["resume_token"] + "x")):
            self.server.open(conn, T0)
            data: dict[str, Any] = {"session": owner["session"]}
            if token is not None:
                data["resume_token"] = token
            attempt = Envelope(type=MessageType.HELLO, id=f"h{conn}", timestamp=T0, data=data)
            actions = self.server.receive(conn, attempt, T0)
            welcome = welcome_of(actions).data
            self.assertNotEqual(welcome["session"], owner["session"])
            self.assertFalse(welcome["resumed"])
            self.assertEqual(of_type(actions, Close), [])
            self.assertEqual(welcome["streams"]["direct"]["offset"], 0)
        self.assertEqual(self.server.sessions[owner["session"]].conn, 2)

    def test_the_resume_token_resumes_and_is_not_kept_in_clear(self) -> None:
        self.server.open(2, T0)
        owner = welcome_of(self.server.receive(2, hello("h2"), T0)).data
        session = self.server.sessions[owner["session"]]
        self.assertEqual(session.resume_hash, hash_resume_token(owner["resume_token"]))
        self.assertNotIn(owner["resume_token"], repr(session))
        self.server.open(3, T0)
        actions = self.server.receive(3, hello("h3", session=owner["session"]), T0)
        self.assertTrue(welcome_of(actions).data["resumed"])
        self.assertEqual(of_type(actions, Close), [Close(2, ErrorCode.SESSION_REPLACED)])

    def test_resume_tokens_are_random_and_long(self) -> None:
        tokens = {new_resume_token() for _ in range(100)}
        self.assertEqual(len(tokens), 100)
        self.assertTrue(all(len(t) == 43 for t in tokens))

    def test_client_event_with_stream_is_refused(self) -> None:
        message = event("m1", stream="direct", offset=1, epoch="e")
        [error] = sent(self.server.receive(1, message, T0))
        self.assertEqual((error.code, error.ref), (4001, "m1"))

    def test_deadline_bounds_handling_but_not_the_room_event(self) -> None:
        message = event("m1", event="say", room="chat", data="hi", ack=True, deadline=5_000)
        [publish_action] = self.server.receive(1, message, T0 + 4_999)
        assert isinstance(publish_action, Publish)
        [fanout, ack] = perform(self.server, publish_action, T0 + 4_999)
        assert isinstance(fanout, Fanout)
        self.assertEqual(sent([ack])[0].ref, "m1")
        self.assertEqual((fanout.envelope.ttl, fanout.envelope.deadline), (None, None))
        late = event("m2", event="say", room="chat", data="hi", ack=True, deadline=5_000)
        [refusal] = sent(self.server.receive(1, late, T0 + 5_000))
        self.assertEqual((refusal.code, refusal.ref), (4302, "m2"))

    def test_room_publish(self) -> None:
        message = event("m1", event="say", room="chat", data="hi", ack=True)
        [publish_action] = self.server.receive(1, message, T0)
        assert isinstance(publish_action, Publish)
        [fanout, ack] = perform(self.server, publish_action, T0)
        assert isinstance(fanout, Fanout)
        self.assertEqual(fanout.conns, (1,))
        published = fanout.envelope
        self.assertEqual((published.stream, published.offset), ("room:chat", 1))
        self.assertEqual((published.event, published.data), ("say", "hi"))
        self.assertEqual(sent([ack])[0].ref, "m1")
        # A retry is not published twice.
        self.assertEqual(sent(self.server.receive(1, message, T0)), [sent([ack])[0]])
        self.assertEqual(self.server.store.position("room:chat").offset, 1)

    def test_room_publish_forbidden(self) -> None:
        message = event("m1", room="readonly", ack=True)
        [error] = sent(self.server.receive(1, message, T0))
        self.assertEqual((error.code, error.ref), (4102, "m1"))
        self.assertEqual(self.server.store.position("room:readonly").offset, 0)

    def test_auth_is_dispatched(self) -> None:
        auth = Envelope(type=MessageType.AUTH, id="a1", timestamp=T0, data={"token": "t"})
        self.assertEqual(self.server.receive(1, auth, T0), [Dispatch(1, self.session, auth)])
        [ack] = sent(self.server.settle(self.session, auth, T0))
        self.assertEqual((ack.type, ack.ref), (MessageType.ACK, "a1"))


class RoomTests(Base):
    def setUp(self) -> None:
        super().setUp()
        self.session, _, _ = self.connect()

    def subscribe(self, ident: str, room: str, **position: Any) -> list[Action]:
        envelope = Envelope(
            type=MessageType.SUBSCRIBE, id=ident, timestamp=T0, room=room, **position
        )
        return self.server.receive(1, envelope, T0)

    def test_subscribe_allowed(self) -> None:
        publish(self.server, "room:chat", "old", 1, T0)
        [ack] = sent(self.subscribe("s1", "chat"))
        self.assertEqual((ack.type, ack.ref), (MessageType.ACK, "s1"))
        epoch = self.server.store.position("room:chat").epoch
        self.assertEqual(
            ack.data, {"stream": "room:chat", "offset": 1, "epoch": epoch, "recovered": True}
        )
        _, live = publish(self.server, "room:chat", "new", 2, T0)
        self.assertEqual(of_type(live, Fanout)[0].conns, (1,))

    def test_subscribe_with_position_replays(self) -> None:
        for i in range(3):
            publish(self.server, "room:chat", "m", i, T0)
        epoch = self.server.store.position("room:chat").epoch
        ack, *replay = sent(self.subscribe("s1", "chat", offset=1, epoch=epoch))
        self.assertEqual(ack.data["offset"], 3)  # current, as in a welcome
        self.assertTrue(ack.data["recovered"])
        self.assertEqual([e.offset for e in replay], [2, 3])
        ack, *replay = sent(self.subscribe("s2", "chat", offset=1, epoch="gone"))
        self.assertEqual((ack.data["offset"], ack.data["recovered"], replay), (3, False, []))

    def test_subscribe_forbidden(self) -> None:
        [error] = sent(self.subscribe("s1", "secret"))
        self.assertEqual((error.type, error.code, error.ref), (MessageType.ERROR, 4102, "s1"))
        self.assertEqual(publish(self.server, "room:secret", "x", 1, T0)[1], [])

    def test_unsubscribe(self) -> None:
        self.subscribe("s1", "chat")
        unsubscribe = Envelope(type=MessageType.UNSUBSCRIBE, id="u1", timestamp=T0, room="chat")
        [ack] = sent(self.server.receive(1, unsubscribe, T0))
        self.assertEqual((ack.type, ack.ref), (MessageType.ACK, "u1"))
        self.assertEqual(publish(self.server, "room:chat", "x", 1, T0)[1], [])
        self.assertEqual(self.server.room_sessions, {})

    def test_server_join_and_leave_notices(self) -> None:
        [notice] = sent(self.server.join(self.session, "news", T0))
        self.assertEqual(
            (notice.type, notice.room, notice.offset), (MessageType.SUBSCRIBE, "news", 0)
        )
        self.assertEqual(self.server.join(self.session, "news", T0), [])
        [notice] = sent(self.server.leave(self.session, "news", T0))
        self.assertEqual((notice.type, notice.room), (MessageType.UNSUBSCRIBE, "news"))
        self.assertEqual(self.server.leave(self.session, "news", T0), [])
        self.assertRaises(UnknownSessionError, self.server.join, "nope", "news", T0)


class DirectAckTests(Base):
    def setUp(self) -> None:
        super().setUp()
        self.session, _, _ = self.connect()

    def direct(self, now: int = T0, **kwargs: Any) -> Envelope:
        stored, actions = send_direct(self.server, self.session, "note", 1, now, ack=True, **kwargs)
        self.assertEqual(sent(actions, 1), [stored])
        return stored

    def client_ack(self, now: int = T0, **fields: Any) -> list[Action]:
        ack = Envelope(type=MessageType.ACK, id=f"a{now}", timestamp=now, **fields)
        return self.server.receive(1, ack, now)

    def test_pending_acks_of_a_lost_epoch_fail_instead_of_being_resent(self) -> None:
        """History lost (a flushed Redis): old offsets mean nothing in the new epoch."""
        old = self.direct()
        self.server.store.drop(direct_key(self.session))  # the direct stream's history is gone
        self.server.close(1, T0 + 1)
        self.server.open(2, T0 + 2)
        actions = self.server.receive(2, hello("h2", self.session), T0 + 2)
        self.assertEqual(
            of_type(actions, AckResult), [AckResult(self.session, 1, ErrorCode.UNAVAILABLE)]
        )
        self.assertEqual(of_type(actions, AckResult)[0].epoch, old.epoch)
        self.assertNotIn(old, sent(actions, 2))  # not re-sent into the new epoch
        self.assertEqual(self.server.sessions[self.session].pending, {})

    def test_ack_by_ref(self) -> None:
        stored = self.direct()
        self.assertTrue(stored.ack)
        self.assertEqual((stored.stream, stored.offset), ("direct", 1))
        self.assertEqual(self.client_ack(ref="unrelated"), [])
        self.assertEqual(self.client_ack(ref=stored.id), [AckResult(self.session, 1, None)])
        self.assertEqual(self.client_ack(ref=stored.id), [])

    def test_cumulative_ack(self) -> None:
        for _ in range(3):
            self.direct()
        send_direct(self.server, self.session, "plain", 0, T0)  # offset 4, no ack asked
        self.direct()  # offset 5
        self.assertEqual(self.client_ack(stream="broadcast", offset=9), [])
        self.assertEqual(
            self.client_ack(stream="direct", offset=4),
            [AckResult(self.session, o, None) for o in (1, 2, 3)],
        )
        self.assertEqual(
            self.client_ack(stream="direct", offset=5), [AckResult(self.session, 5, None)]
        )

    def test_retry_then_timeout(self) -> None:
        stored = self.direct(timeout_ms=25_000)
        self.assertEqual(sent(self.server.tick(T0 + 9_999)), [])
        self.assertEqual(sent(self.server.tick(T0 + 10_000), 1), [stored])
        self.assertEqual(sent(self.server.tick(T0 + 15_000), 1), [])
        self.assertEqual(sent(self.server.tick(T0 + 20_000), 1), [stored])
        actions = self.server.tick(T0 + 25_000)
        self.assertEqual(
            of_type(actions, AckResult), [AckResult(self.session, 1, ErrorCode.TIMEOUT)]
        )
        self.assertEqual(self.client_ack(ref=stored.id), [])

    def test_pending_resent_on_resume(self) -> None:
        stored = self.direct()
        self.server.close(1, T0)
        epoch = stored.epoch
        assert epoch is not None
        self.server.open(2, T0 + 1)
        presented = {"direct": {"offset": 1, "epoch": epoch}}  # delivered, ack lost
        actions = self.server.receive(2, hello("h2", self.session, presented), T0 + 1)
        self.assertEqual(sent(actions, 2)[1:], [stored])
        # Not re-sent twice when the replay already carries it.
        self.server.close(2, T0 + 2)
        self.server.open(3, T0 + 3)
        presented = {"direct": {"offset": 0, "epoch": epoch}}
        actions = self.server.receive(3, hello("h3", self.session, presented), T0 + 3)
        self.assertEqual(sent(actions, 3)[1:], [stored])

    def test_session_expiry_fails_pending(self) -> None:
        self.direct()
        self.direct()
        self.server.close(1, T0)
        actions = self.server.tick(T0 + 120_000)
        self.assertEqual(
            actions[:3],
            [
                AckResult(self.session, 1, ErrorCode.TIMEOUT),
                AckResult(self.session, 2, ErrorCode.TIMEOUT),
                SessionExpired(self.session),
            ],
        )
        self.assertRaises(UnknownSessionError, send_direct, self.server, self.session, "x", 1, T0)

    def test_pending_limit(self) -> None:
        self.server = make_server(max_pending_acks=2)
        self.session, _, _ = self.connect()
        self.direct()
        self.direct()
        self.assertRaises(
            QueueFullError, send_direct, self.server, self.session, "x", 1, T0, ack=True
        )
        send_direct(self.server, self.session, "x", 1, T0)  # without ack: fine


class HeartbeatTests(Base):
    def test_heartbeat_fanout_and_timeout(self) -> None:
        self.connect(1)
        self.connect(2)
        self.server.open(3, T0)  # no hello yet: no heartbeat
        self.assertEqual(self.server.tick(T0), [])
        self.assertEqual(self.server.tick(T0 + 24_999), [Close(3, ErrorCode.HANDSHAKE_TIMEOUT)])
        [beat] = self.server.tick(T0 + 25_000)
        assert isinstance(beat, Fanout)
        self.assertEqual(sorted(beat.conns), [1, 2])
        self.assertEqual((beat.envelope.type, beat.envelope.ref), (MessageType.HEARTBEAT, None))
        # Connection 2 answers; connection 1 stays silent.
        answer = Envelope(type=MessageType.HEARTBEAT, id="hb", timestamp=T0, ref=beat.envelope.id)
        self.assertEqual(self.server.receive(2, answer, T0 + 40_000), [])
        actions = self.server.tick(T0 + 60_000)
        self.assertIn(Close(1, ErrorCode.HEARTBEAT_TIMEOUT), actions)
        self.assertEqual(of_type(actions, Fanout)[0].conns, (2,))

    def test_client_heartbeat_is_answered(self) -> None:
        self.connect()
        ping = Envelope(type=MessageType.HEARTBEAT, id="p1", timestamp=T0)
        [pong] = sent(self.server.receive(1, ping, T0))
        self.assertEqual((pong.type, pong.ref), (MessageType.HEARTBEAT, "p1"))

    def test_idle_timeout(self) -> None:
        self.server = make_server(idle_timeout_ms=30_000)
        self.connect(1)
        self.connect(2)
        self.server.tick(T0)
        ping = Envelope(type=MessageType.HEARTBEAT, id="p", timestamp=T0)
        self.server.receive(1, ping, T0 + 20_000)
        self.server.receive(2, event("m1"), T0 + 25_000)  # application traffic
        actions = self.server.tick(T0 + 50_000)
        self.assertEqual(of_type(actions, Close), [Close(1, ErrorCode.IDLE_TIMEOUT)])
        self.assertEqual(of_type(actions, Fanout)[0].conns, (2,))

    def test_options_validation(self) -> None:
        self.assertRaises(ValueError, CoreOptions, session_ttl_ms=0)
        self.assertRaises(ValueError, CoreOptions, idle_timeout_ms=0)
        self.assertRaises(
            ValueError, CoreOptions, heartbeat_interval_ms=10, heartbeat_timeout_ms=10
        )
