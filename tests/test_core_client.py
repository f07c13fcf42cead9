"""Tests for warpsocket.core.client: the sans-I/O client reliability core."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from warpsocket.core.client import (
    ClientAction,
    ClientCore,
    ClientCoreOptions,
    Deliver,
    Outcome,
    QueuePolicy,
    Reconnect,
    RoomChanged,
    Status,
    StreamLost,
    Transmit,
    Welcomed,
)
from warpsocket.core.history import Position
from warpsocket.core.ids import SequentialIds
from warpsocket.protocol import Envelope, ErrorCode, MessageType
from warpsocket.protocol.datamodel import DataModelError

T0 = 1_764_300_000_000


def make_client(**options: Any) -> ClientCore:
    return ClientCore(ClientCoreOptions(**options), SequentialIds("c"))


def transmitted(actions: list[ClientAction]) -> list[Envelope]:
    return [a.envelope for a in actions if isinstance(a, Transmit)]


def delivered(actions: list[ClientAction]) -> list[Any]:
    return [a.envelope.data for a in actions if isinstance(a, Deliver)]


def of_type(actions: list[ClientAction], kind: type) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def stream_event(
    stream: str, offset: int, epoch: str = "e1", *, ident: str | None = None, **fields: Any
) -> Envelope:
    fields.setdefault("data", f"{stream}#{offset}")
    return Envelope(
        type=MessageType.EVENT,
        id=ident or f"{stream}-{epoch}-{offset}",
        timestamp=T0,
        stream=stream,
        offset=offset,
        epoch=epoch,
        **fields,
    )


def answer(kind: MessageType, ref: str, **fields: Any) -> Envelope:
    return Envelope(type=kind, id="n-" + ref, timestamp=T0, ref=ref, **fields)


def stream_info(offset: int, epoch: str = "e1", recovered: bool = True) -> dict[str, Any]:
    return {"offset": offset, "epoch": epoch, "recovered": recovered}


class Base(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.client = make_client()

    def hello(self, now: int = T0, token: str | None = None) -> Envelope:
        [hello] = transmitted(self.client.connected(now, token))
        return hello

    def welcome(
        self,
        hello: Envelope,
        streams: dict[str, dict[str, Any]] | None = None,
        *,
        session: str = "s1",
        resumed: bool = False,
        rooms: list[str] | None = None,
        denied: dict[str, int] | None = None,
        now: int = T0,
    ) -> list[ClientAction]:
        data = {
            "session": session,
            "resumed": resumed,
            "streams": streams
            if streams is not None
            else {"direct": stream_info(0), "broadcast": stream_info(5)},
            "rooms": rooms or [],
            "denied": denied or {},
        }
        welcome = Envelope(
            type=MessageType.WELCOME, id="w-" + hello.id, timestamp=now, ref=hello.id, data=data
        )
        return self.client.receive(welcome, now)

    def connect(self, now: int = T0, **kwargs: Any) -> list[ClientAction]:
        return self.welcome(self.hello(now), now=now, **kwargs)


class HandshakeTests(Base):
    def test_first_hello(self) -> None:
        self.client.subscribe("b", T0)
        self.client.subscribe("a", T0)
        hello = self.hello(token="tok")
        self.assertEqual(hello.type, MessageType.HELLO)
        self.assertEqual(
            hello.data, {"session": None, "streams": {}, "rooms": ["a", "b"], "token": "tok"}
        )
        self.assertFalse(self.client.open)
        self.assertEqual(Envelope.from_wire(hello.to_wire()), hello)

    def test_welcome(self) -> None:
        actions = self.connect()
        [welcomed] = of_type(actions, Welcomed)
        self.assertEqual((welcomed.session, welcomed.resumed), ("s1", False))
        self.assertTrue(self.client.open)
        self.assertEqual(self.client.session, "s1")
        self.assertEqual(
            self.client.positions, {"direct": Position(0, "e1"), "broadcast": Position(5, "e1")}
        )
        self.assertEqual(of_type(actions, StreamLost), [])

    def test_hello_presents_positions(self) -> None:
        self.connect()
        self.client.receive(stream_event("broadcast", 6), T0)
        self.client.disconnected(T0)
        hello = self.hello()
        self.assertEqual(hello.data["session"], "s1")
        self.assertEqual(
            hello.data["streams"],
            {"direct": {"offset": 0, "epoch": "e1"}, "broadcast": {"offset": 6, "epoch": "e1"}},
        )

    def test_welcome_for_another_hello_is_ignored(self) -> None:
        hello = self.hello()
        self.client.disconnected(T0)
        self.hello()
        self.assertEqual(self.welcome(hello), [])
        self.assertFalse(self.client.open)

    def test_repeated_welcome_is_ignored(self) -> None:
        hello = self.hello()
        self.welcome(hello)
        self.client.receive(stream_event("broadcast", 6), T0)
        self.assertEqual(self.welcome(hello), [])
        self.assertEqual(self.client.positions["broadcast"], Position(6, "e1"))

    def test_not_recovered(self) -> None:
        self.connect()
        self.client.disconnected(T0)
        actions = self.welcome(
            self.hello(),
            {"direct": stream_info(3, "e9", False), "broadcast": stream_info(9, "e1", False)},
            session="s2",
        )
        self.assertEqual(
            of_type(actions, StreamLost),
            [
                StreamLost("direct", "not recovered on resume"),
                StreamLost("broadcast", "not recovered on resume"),
            ],
        )
        # Continue from the welcome's positions: later events arrive live.
        self.assertEqual(self.client.positions["direct"], Position(3, "e9"))
        self.assertEqual(self.client.positions["broadcast"], Position(9, "e1"))
        self.assertEqual(self.client.session, "s2")

    def test_recovered_keeps_own_position_and_takes_the_replay(self) -> None:
        self.connect()
        self.client.disconnected(T0)
        # Welcome carries the server's current offset (7); we presented 5.
        actions = self.welcome(
            self.hello(), {"direct": stream_info(0), "broadcast": stream_info(7)}, resumed=True
        )
        self.assertEqual(of_type(actions, StreamLost), [])
        self.assertEqual(self.client.positions["broadcast"], Position(5, "e1"))
        replay = [stream_event("broadcast", 6), stream_event("broadcast", 7)]
        got = [d for e in replay for d in delivered(self.client.receive(e, T0))]
        self.assertEqual(got, ["broadcast#6", "broadcast#7"])

    def test_denied_rooms(self) -> None:
        self.client.subscribe("chat", T0)
        self.client.subscribe("secret", T0)
        actions = self.connect(
            streams={"room:chat": stream_info(1)}, rooms=["chat"], denied={"secret": 4102}
        )
        self.assertEqual(of_type(actions, RoomChanged), [RoomChanged("secret", False, 4102)])
        self.assertEqual(self.client.rooms, {"chat"})

    def test_heartbeat_is_answered(self) -> None:
        self.connect()
        ping = Envelope(type=MessageType.HEARTBEAT, id="p1", timestamp=T0)
        [pong] = transmitted(self.client.receive(ping, T0))
        self.assertEqual((pong.type, pong.ref), (MessageType.HEARTBEAT, "p1"))
        self.assertEqual(self.client.receive(pong, T0), [])


class StreamTests(Base):
    def setUp(self) -> None:
        super().setUp()
        self.connect()

    def feed(self, *events: Envelope) -> list[ClientAction]:
        actions: list[ClientAction] = []
        for envelope in events:
            actions.extend(self.client.receive(envelope, T0))
        return actions

    def test_in_order_delivery(self) -> None:
        actions = self.feed(stream_event("broadcast", 6), stream_event("broadcast", 7))
        self.assertEqual(delivered(actions), ["broadcast#6", "broadcast#7"])
        self.assertEqual(self.client.positions["broadcast"], Position(7, "e1"))

    def test_duplicates_are_dropped(self) -> None:
        actions = self.feed(
            stream_event("broadcast", 6), stream_event("broadcast", 6), stream_event("broadcast", 5)
        )
        self.assertEqual(delivered(actions), ["broadcast#6"])

    def test_gap_reconnects_without_delivery(self) -> None:
        actions = self.feed(stream_event("broadcast", 8))
        self.assertEqual(delivered(actions), [])
        [reconnect] = of_type(actions, Reconnect)
        self.assertEqual(reconnect.code, ErrorCode.STREAM_GAP)
        self.assertEqual(int(reconnect.code), 4401)
        self.assertEqual(self.client.positions["broadcast"], Position(5, "e1"))

    def test_epoch_change_mid_stream(self) -> None:
        actions = self.feed(stream_event("broadcast", 1, "e2"))
        self.assertEqual(of_type(actions, StreamLost), [StreamLost("broadcast", "epoch changed")])
        self.assertEqual(delivered(actions), ["broadcast#1"])
        self.assertEqual(self.client.positions["broadcast"], Position(1, "e2"))
        # A new epoch is taken relative to offset - 1 (protocol.md 5.2 rule 1).
        actions = self.feed(stream_event("direct", 4, "e3"))
        self.assertEqual(delivered(actions), ["direct#4"])
        self.assertEqual(len(of_type(actions, StreamLost)), 1)

    def test_expired_placeholder_is_skipped(self) -> None:
        placeholder = stream_event("broadcast", 6, data=None, code=int(ErrorCode.EXPIRED))
        actions = self.feed(placeholder, stream_event("broadcast", 7))
        self.assertEqual(delivered(actions), ["broadcast#7"])
        self.assertEqual(transmitted(actions), [])
        self.assertEqual(self.client.positions["broadcast"], Position(7, "e1"))

    def test_undeliverable_placeholder_is_skipped_and_reported(self) -> None:
        placeholder = stream_event("broadcast", 6, data=None, code=int(ErrorCode.INTERNAL_ERROR))
        actions = self.feed(placeholder, stream_event("broadcast", 7))
        self.assertEqual(delivered(actions), ["broadcast#7"])
        self.assertEqual([lost.stream for lost in of_type(actions, StreamLost)], ["broadcast"])
        self.assertEqual(self.client.positions["broadcast"], Position(7, "e1"))

    def test_unknown_stream_starts_at_the_event(self) -> None:
        actions = self.feed(stream_event("room:x", 4))
        self.assertEqual(delivered(actions), ["room:x#4"])

    def test_acknowledge_and_reack_duplicates(self) -> None:
        note = stream_event("direct", 1, ack=True)
        [deliver] = self.feed(note)
        assert isinstance(deliver, Deliver)
        [ack] = transmitted(self.client.acknowledge(deliver.envelope, T0))
        self.assertEqual((ack.type, ack.ref), (MessageType.ACK, note.id))
        [again] = transmitted(self.feed(note))
        self.assertEqual(again.ref, note.id)
        # Not acknowledged by the application yet: a duplicate is just dropped.
        other = stream_event("direct", 2, ack=True)
        self.feed(other)
        self.assertEqual(self.feed(other), [])

    def test_acknowledge_offline_is_remembered(self) -> None:
        note = stream_event("direct", 1, ack=True)
        self.feed(note)
        self.client.disconnected(T0)
        self.assertEqual(self.client.acknowledge(note, T0), [])
        self.connect()
        self.assertEqual([e.ref for e in transmitted(self.feed(note))], [note.id])


class SendTests(Base):
    def test_offline_queue_priority_then_fifo(self) -> None:
        ids = []
        for priority in (0, 1, 0, 2, 1):
            ident, actions = self.client.send("e", priority, T0, priority=priority)
            self.assertEqual(actions, [])
            ids.append(ident)
        self.assertEqual(self.client.queue_length, 5)
        actions = self.connect()
        self.assertEqual(
            [e.id for e in transmitted(actions)], [ids[3], ids[1], ids[4], ids[0], ids[2]]
        )
        self.assertEqual(self.client.queue_length, 0)

    def test_send_while_open_goes_out_at_once(self) -> None:
        self.connect()
        ident, actions = self.client.send("say", {"t": 1}, T0, ack=True, room="chat", ttl=50)
        [envelope] = transmitted(actions)
        self.assertEqual(
            (envelope.id, envelope.event, envelope.room, envelope.ack, envelope.ttl),
            (ident, "say", "chat", True, 50),
        )
        self.assertEqual(self.client.inflight_count, 1)
        _, actions = self.client.send("fire", 1, T0)
        self.assertEqual(len(transmitted(actions)), 1)
        self.assertEqual(self.client.inflight_count, 1, "fire-and-forget is not tracked")

    def test_queue_full_reject_new(self) -> None:
        client = make_client(max_queue=2)
        client.send("e", 1, T0)
        client.send("e", 2, T0)
        third, actions = client.send("e", 3, T0)
        self.assertEqual(
            actions, [Outcome(third, Status.REJECTED, None, 4206, "offline queue is full")]
        )
        self.assertEqual(client.queue_length, 2)

    def test_queue_full_drop_oldest(self) -> None:
        client = make_client(max_queue=2, queue_policy=QueuePolicy.DROP_OLDEST)
        oldest, _ = client.send("e", 1, T0)
        urgent, _ = client.send("e", 2, T0, priority=5)
        newest, actions = client.send("e", 3, T0)
        [outcome] = of_type(actions, Outcome)
        self.assertEqual(
            (outcome.id, outcome.status, outcome.code), (oldest, Status.REJECTED, 4206)
        )
        self.assertEqual(client.queue_length, 2)
        [hello] = transmitted(client.connected(T0))
        welcome = Envelope(
            type=MessageType.WELCOME,
            id="w",
            timestamp=T0,
            ref=hello.id,
            data={"session": "s", "streams": {}, "rooms": []},
        )
        self.assertEqual([e.id for e in transmitted(client.receive(welcome, T0))], [urgent, newest])

    def test_answers(self) -> None:
        self.connect()
        acked, _ = self.client.send("e", 1, T0, ack=True)
        rejected, _ = self.client.send("e", 2, T0, ack=True)
        late, _ = self.client.send("e", 3, T0, ack=True, ttl=5)
        called, _ = self.client.call("add", [1, 2], T0)
        data = {"name": "handler_error", "message": "boom"}
        expired = {"name": "expired", "message": "ttl"}
        outcomes = [
            self.client.receive(answer(MessageType.ACK, acked), T0),
            self.client.receive(answer(MessageType.ERROR, rejected, code=4300, data=data), T0),
            self.client.receive(answer(MessageType.ERROR, late, code=4302, data=expired), T0),
            self.client.receive(answer(MessageType.RESULT, called, data=3), T0),
        ]
        self.assertEqual(
            outcomes,
            [
                [Outcome(acked, Status.ACKED)],
                [Outcome(rejected, Status.REJECTED, data, 4300, "boom")],
                [Outcome(late, Status.EXPIRED, expired, 4302, "ttl")],
                [Outcome(called, Status.RESULT, 3)],
            ],
        )
        self.assertEqual(self.client.inflight_count, 0)
        # A late duplicate answer gives no second outcome.
        self.assertEqual(self.client.receive(answer(MessageType.ACK, acked), T0), [])

    def test_not_now_answers_are_final_outcomes_with_their_code(self) -> None:
        """4200 and 4304 end the message: retrying it behind newer ones would reorder.

        The code says a resend may succeed (CODE_INFO retry: yes); the
        application decides.
        """
        self.connect()
        for code in (4200, 4304):
            ident, _ = self.client.send("e", code, T0, ack=True)
            actions = self.client.receive(answer(MessageType.ERROR, ident, code=code), T0 + 10)
            self.assertEqual(actions, [Outcome(ident, Status.REJECTED, None, code, "")])
            self.assertTrue(ErrorCode(code).info.retry)
        self.assertEqual(self.client.inflight_count, 0)

    def test_deadline_while_queued(self) -> None:
        ident, _ = self.client.send("e", 1, T0, ack=True, deadline_ms=1_000)
        self.assertEqual(self.client.next_wakeup(), T0 + 1_000)
        self.assertEqual(self.client.tick(T0 + 999), [])
        [outcome] = self.client.tick(T0 + 1_000)
        self.assertEqual((outcome.id, outcome.status, outcome.code), (ident, Status.EXPIRED, 4303))
        self.assertEqual(self.client.queue_length, 0)
        self.assertEqual(transmitted(self.connect()), [])

    def test_ttl_while_queued(self) -> None:
        ident, _ = self.client.send("e", 1, T0, ttl=500)
        self.assertEqual(self.client.next_wakeup(), T0 + 500)
        [outcome] = self.client.tick(T0 + 500)
        self.assertEqual((outcome.id, outcome.status, outcome.code), (ident, Status.EXPIRED, 4302))

    def test_reconnect_after_deadline_without_tick(self) -> None:
        """A reconnect may come before the tick: the deadline still holds."""
        ident, _ = self.client.send("e", 1, T0, ack=True, deadline_ms=1_000)
        ttl_ident, _ = self.client.send("e", 2, T0, ttl=1_000)
        actions = self.welcome(self.hello(T0 + 5_000), now=T0 + 5_000)
        self.assertEqual(transmitted(actions), [])
        self.assertEqual(
            [(o.id, o.code) for o in of_type(actions, Outcome)], [(ident, 4303), (ttl_ident, 4302)]
        )

    def test_inflight_deadline(self) -> None:
        self.connect()
        ident, _ = self.client.call("slow", None, T0, timeout_ms=3_000)
        [outcome] = of_type(self.client.tick(T0 + 3_000), Outcome)
        self.assertEqual((outcome.id, outcome.status, outcome.code), (ident, Status.EXPIRED, 4303))
        self.assertEqual(self.client.inflight_count, 0)
        self.assertEqual(self.client.receive(answer(MessageType.RESULT, ident), T0), [])

    def test_retries_with_backoff(self) -> None:
        self.connect()
        ident, actions = self.client.send("e", 1, T0, ack=True, deadline_ms=200_000)
        self.assertEqual(len(transmitted(actions)), 1)
        resent = []
        for now in range(T0, T0 + 120_001, 1_000):
            resent += [now - T0 for e in transmitted(self.client.tick(now)) if e.id == ident]
        # 5 s, then 10, 20, 30 (capped), 30, 30 between attempts.
        self.assertEqual(resent, [5_000, 15_000, 35_000, 65_000, 95_000])
        self.assertEqual(self.client.next_wakeup(), T0 + 125_000)

    def test_no_retry_while_disconnected(self) -> None:
        self.connect()
        self.client.send("e", 1, T0, ack=True)
        self.client.disconnected(T0)
        self.assertEqual(transmitted(self.client.tick(T0 + 30_000)), [])

    def test_disconnect_requeues_inflight_in_original_order(self) -> None:
        self.connect()
        first, _ = self.client.send("e", 1, T0, ack=True)
        second, _ = self.client.call("m", 2, T0)
        fire, _ = self.client.send("e", 3, T0)
        urgent, _ = self.client.send("e", 4, T0 + 1, ack=True, priority=1)
        self.assertEqual(self.client.inflight_count, 3)
        self.client.disconnected(T0 + 1)
        later, _ = self.client.send("e", 5, T0 + 2, ack=True)
        self.assertEqual((self.client.inflight_count, self.client.queue_length), (0, 4))
        actions = self.connect(T0 + 3)
        # Priority first, then the original order; fire-and-forget is not re-sent.
        self.assertEqual([e.id for e in transmitted(actions)], [urgent, first, second, later])
        self.assertNotIn(fire, [e.id for e in transmitted(actions)])
        self.assertEqual(self.client.inflight_count, 4)


class RoomTests(Base):
    def setUp(self) -> None:
        super().setUp()
        self.connect()

    def test_subscribe_answer(self) -> None:
        [request] = transmitted(self.client.subscribe("chat", T0))
        self.assertEqual(
            (request.type, request.room, request.offset), (MessageType.SUBSCRIBE, "chat", None)
        )
        data = {"stream": "room:chat", "offset": 4, "epoch": "e7", "recovered": True}
        actions = self.client.receive(answer(MessageType.ACK, request.id, data=data), T0)
        self.assertEqual(actions, [RoomChanged("chat", True)])
        self.assertEqual(self.client.positions["room:chat"], Position(4, "e7"))
        self.assertIn("chat", self.client.rooms)

    def test_resubscribe_with_position(self) -> None:
        self.client.positions["room:chat"] = Position(2, "e7")
        [request] = transmitted(self.client.subscribe("chat", T0))
        self.assertEqual((request.offset, request.epoch), (2, "e7"))
        data = {"stream": "room:chat", "offset": 4, "epoch": "e7", "recovered": True}
        self.client.receive(answer(MessageType.ACK, request.id, data=data), T0)
        # Recovered: keep our position; the replay of 3 and 4 follows.
        self.assertEqual(self.client.positions["room:chat"], Position(2, "e7"))
        actions = self.client.receive(stream_event("room:chat", 3, "e7"), T0)
        self.assertEqual(delivered(actions), ["room:chat#3"])

    def test_subscribe_not_recovered(self) -> None:
        self.client.positions["room:chat"] = Position(2, "e6")
        [request] = transmitted(self.client.subscribe("chat", T0))
        data = {"stream": "room:chat", "offset": 4, "epoch": "e7", "recovered": False}
        actions = self.client.receive(answer(MessageType.ACK, request.id, data=data), T0)
        self.assertEqual(
            actions,
            [StreamLost("room:chat", "not recovered on subscribe"), RoomChanged("chat", True)],
        )
        self.assertEqual(self.client.positions["room:chat"], Position(4, "e7"))

    def test_subscribe_denied(self) -> None:
        [request] = transmitted(self.client.subscribe("secret", T0))
        actions = self.client.receive(answer(MessageType.ERROR, request.id, code=4102), T0)
        self.assertEqual(actions, [RoomChanged("secret", False, 4102)])
        self.assertNotIn("secret", self.client.rooms)

    def test_subscribe_offline_goes_in_the_hello(self) -> None:
        self.client.disconnected(T0)
        self.assertEqual(self.client.subscribe("chat", T0), [])
        self.assertEqual(self.hello().data["rooms"], ["chat"])

    def test_a_room_asked_for_while_the_hello_is_on_its_way_is_subscribed_at_the_welcome(
        self,
    ) -> None:
        """A hello in the URL leaves before the application's first
        ``subscribe`` (protocol.md 4.5): the welcome cannot know the room, so
        it is asked for then, not reported refused."""
        self.client.disconnected(T0)
        hello = self.hello()
        self.assertEqual(self.client.subscribe("late", T0), [])
        actions = self.welcome(hello)
        self.assertEqual(of_type(actions, RoomChanged), [])
        [request] = [e for e in transmitted(actions) if e.type is MessageType.SUBSCRIBE]
        self.assertEqual(request.room, "late")
        data = {"stream": "room:late", "offset": 1, "epoch": "e1", "recovered": True}
        joined = self.client.receive(answer(MessageType.ACK, request.id, data=data), T0)
        self.assertEqual(joined, [RoomChanged("late", True)])
        self.assertIn("late", self.client.rooms)

    def test_a_room_left_while_the_hello_is_on_its_way_is_left_at_the_welcome(self) -> None:
        self.client.subscribe("chat", T0)
        self.client.disconnected(T0)
        hello = self.hello()
        self.assertEqual(hello.data["rooms"], ["chat"])
        self.client.unsubscribe("chat", T0)
        actions = self.welcome(hello, rooms=["chat"])
        [request] = [e for e in transmitted(actions) if e.type is MessageType.UNSUBSCRIBE]
        self.assertEqual(request.room, "chat")
        self.assertNotIn("chat", self.client.rooms)
        self.assertEqual(of_type(actions, RoomChanged), [])

    def test_a_room_the_welcome_refuses_is_still_reported(self) -> None:
        self.client.subscribe("secret", T0)
        self.client.disconnected(T0)
        actions = self.welcome(self.hello(), denied={"secret": 4102})
        self.assertEqual(of_type(actions, RoomChanged), [RoomChanged("secret", False, 4102)])
        self.assertEqual([e for e in transmitted(actions) if e.room == "secret"], [])

    def test_unsubscribe(self) -> None:
        self.client.subscribe("chat", T0)
        self.client.positions["room:chat"] = Position(2, "e7")
        [request] = transmitted(self.client.unsubscribe("chat", T0))
        self.assertEqual((request.type, request.room), (MessageType.UNSUBSCRIBE, "chat"))
        self.assertNotIn("chat", self.client.rooms)
        self.assertNotIn("room:chat", self.client.positions)

    def test_server_notices(self) -> None:
        notice = Envelope(
            type=MessageType.SUBSCRIBE, id="n1", timestamp=T0, room="news", offset=3, epoch="e5"
        )
        self.assertEqual(self.client.receive(notice, T0), [RoomChanged("news", True)])
        self.assertEqual(self.client.positions["room:news"], Position(3, "e5"))
        self.assertIn("news", self.client.rooms)
        leave = Envelope(type=MessageType.UNSUBSCRIBE, id="n2", timestamp=T0, room="news")
        self.assertEqual(self.client.receive(leave, T0), [RoomChanged("news", False)])
        self.assertNotIn("news", self.client.rooms)
        self.assertNotIn("room:news", self.client.positions)


class OptionsTests(unittest.SynchronousTestCase):
    def test_validation(self) -> None:
        self.assertRaises(ValueError, ClientCoreOptions, max_queue=0)
        self.assertRaises(ValueError, ClientCoreOptions, ack_deadline_ms=0)
        self.assertRaises(ValueError, ClientCoreOptions, retry_initial_ms=0)
        self.assertRaises(ValueError, ClientCoreOptions, retry_initial_ms=10, retry_max_ms=5)


class FinalOutcomeTests(Base):
    """An outcome, once given, stays true: the message is never sent again."""

    def test_every_tracked_copy_carries_its_deadline(self) -> None:
        """As ``deadline``, not ``ttl``: a room event it becomes keeps its own life."""
        self.connect()
        ident, actions = self.client.send("e", 1, T0, ack=True, deadline_ms=3_000)
        [first] = transmitted(actions)
        self.assertEqual(
            (first.id, first.timestamp, first.deadline, first.ttl), (ident, T0 - 1, 3_000, None)
        )

    def test_retries_carry_what_is_left(self) -> None:
        self.connect()
        ident, _ = self.client.send("e", 1, T0, ack=True, deadline_ms=20_000)
        [retry] = transmitted(self.client.tick(T0 + 5_000))
        self.assertEqual(
            (retry.id, retry.timestamp, retry.deadline), (ident, T0 + 5_000 - 1, 15_000)
        )

    def test_own_ttl_shorter_than_the_deadline_wins(self) -> None:
        self.connect()
        _, actions = self.client.send("e", 1, T0, ack=True, ttl=500, deadline_ms=3_000)
        [copy] = transmitted(actions)
        self.assertEqual((copy.ttl, copy.deadline), (500, 500))
        _, actions = self.client.send("e", 1, T0, ttl=700)  # fire-and-forget too
        self.assertEqual(
            (transmitted(actions)[0].ttl, transmitted(actions)[0].deadline), (700, 700)
        )
        _, actions = self.client.send("e", 1, T0)
        self.assertIsNone(transmitted(actions)[0].ttl)

    def test_timestamp_is_a_lower_bound_of_the_server_clock(self) -> None:
        """Server 10 s behind: the copy expires on the server's clock when ours says so."""
        hello = self.hello(T0)
        welcome = Envelope(
            type=MessageType.WELCOME,
            id="w",
            timestamp=T0 - 10_000,  # the server stamped its (slow) clock
            ref=hello.id,
            data={"session": "s", "streams": {}, "rooms": []},
        )
        self.client.receive(welcome, T0)
        self.assertEqual(self.client.clock_offset_ms, -10_001)
        _, actions = self.client.send("e", 1, T0 + 100, ack=True, deadline_ms=2_000)
        [copy] = transmitted(actions)
        # The server refuses it from its T0 - 10_000 + 2_099 on: 1 ms before our deadline.
        self.assertEqual(copy.timestamp + copy.deadline, T0 + 100 - 10_001 + 2_000)
        # A heartbeat stamped later tightens the bound.
        beat = Envelope(type=MessageType.HEARTBEAT, id="hb", timestamp=T0 - 9_000, ref=None)
        self.client.receive(beat, T0 + 1_000)
        self.assertEqual(self.client.clock_offset_ms, -10_001)
        beat = Envelope(type=MessageType.HEARTBEAT, id="hb2", timestamp=T0 - 8_000, ref=None)
        self.client.receive(beat, T0 + 1_000)
        self.assertEqual(self.client.clock_offset_ms, -9_001)

    def test_abandon_empties_the_queue_and_inflight(self) -> None:
        self.connect()
        sent, _ = self.client.send("e", 1, T0, ack=True)
        self.client.disconnected(T0)
        queued, _ = self.client.send("e", 2, T0, ack=True)
        fire, _ = self.client.send("e", 3, T0)
        self.connect(T0)  # re-sends `sent` and `queued`
        later, _ = self.client.send("e", 4, T0, ack=True)
        self.client.disconnected(T0)
        never, _ = self.client.send("e", 5, T0, ack=True)
        outcomes = self.client.abandon("closed")
        self.assertEqual(
            [(o.id, o.status, o.sent) for o in outcomes],
            [
                (sent, Status.FAILED, True),
                (queued, Status.FAILED, True),
                (later, Status.FAILED, True),
                (never, Status.FAILED, False),
            ],
        )
        self.assertNotIn(fire, [o.id for o in outcomes])
        self.assertEqual((self.client.queue_length, self.client.inflight_count), (0, 0))
        self.assertEqual(transmitted(self.connect(T0 + 1)), [])
        self.assertIsNone(self.client.next_wakeup())

    def test_expired_outcome_counts_attempts(self) -> None:
        self.client.send("e", 1, T0, ack=True, deadline_ms=1_000)
        [outcome] = self.client.tick(T0 + 1_000)
        self.assertFalse(outcome.sent)
        self.connect()
        ident, _ = self.client.send("e", 1, T0, ack=True, deadline_ms=1_000)
        [outcome] = of_type(self.client.tick(T0 + 1_000), Outcome)
        self.assertEqual((outcome.id, outcome.attempts), (ident, 1))


class ResumeTokenTests(Base):
    def test_token_is_kept_with_the_session_and_presented(self) -> None:
        hello = self.hello()
        self.assertNotIn("resume_token", hello.data)
        welcome = Envelope(
            type=MessageType.WELCOME,
            id="w1",
            timestamp=T0,
            ref=hello.id,
            data={"session": "s1", "streams": {}, "rooms": [], "resume_token": "r" * 43},
        )
        self.client.receive(welcome, T0)
        self.assertEqual(self.client.resume_token, "r" * 43)
        self.client.disconnected(T0)
        hello = self.hello()
        self.assertEqual((hello.data["session"], hello.data["resume_token"]), ("s1", "r" * 43))

    def test_new_session_forgets_the_old_token(self) -> None:
        self.client.session, self.client.resume_token = "old", "t" * 43
        self.welcome(self.hello(), session="new")  # a server that issues no token
        self.assertIsNone(self.client.resume_token)
        self.assertNotIn("resume_token", self.hello().data)

    def test_hostile_welcome_is_ignored(self) -> None:
        hello = self.hello()
        for data in (None, [], {"session": 5}, {"streams": {}}):
            bad = Envelope(type=MessageType.WELCOME, id="w", timestamp=T0, ref=hello.id, data=data)
            self.assertEqual(self.client.receive(bad, T0), [])
        self.assertFalse(self.client.open)
        data = {
            "session": "s",
            "streams": {"direct": {"offset": "x"}, "b": 3},
            "rooms": "nope",
            "denied": [],
            "resume_token": 7,
        }
        good = Envelope(type=MessageType.WELCOME, id="w", timestamp=T0, ref=hello.id, data=data)
        [welcomed] = of_type(self.client.receive(good, T0), Welcomed)
        self.assertEqual(
            (welcomed.session, self.client.positions, self.client.resume_token), ("s", {}, None)
        )


class DataModelTests(Base):
    """Values outside the data model are refused at send, never queued or sent."""

    def test_outside_the_model_is_refused_locally(self) -> None:
        self.connect()
        for bad in (2**53, float("inf"), {"k": b"bytes"}, {1: "int key"}, _deep(70)):
            with self.subTest(bad=repr(bad)[:30]):
                self.assertRaises(DataModelError, self.client.send, "e", bad, T0, ack=True)
                self.assertRaises(DataModelError, self.client.call, "m", bad, T0)
        self.assertEqual(self.client.queue_length, 0)

    def test_the_welcome_limits_apply(self) -> None:
        hello = self.hello(T0)
        welcome = Envelope(
            type=MessageType.WELCOME,
            id="w",
            timestamp=T0,
            ref=hello.id,
            data={"session": "s", "streams": {}, "rooms": [],
                  "limits": {"max_depth": 64, "max_values": 10}},
        )  # fmt: skip
        self.client.receive(welcome, T0)
        self.client.send("e", list(range(9)), T0)
        self.assertRaises(DataModelError, self.client.send, "e", list(range(10)), T0)


def _deep(levels: int) -> Any:
    value: Any = 0
    for _ in range(levels):
        value = [value]
    return value
