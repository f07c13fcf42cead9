"""Test an application's handlers, acks and rooms without a socket.

``HubHarness`` runs a real ``Hub`` (core, backend, handlers, middleware,
timers) on a ``twisted.internet.task.Clock`` and connects fake clients to it
through ``FakeConnection``, the in-memory implementation of the hub's
``Connection`` interface. A fake client says hello, sends envelopes and
keeps, decoded, everything the hub sends it; the harness advances time. No
reactor runs and no port is opened, so a test takes milliseconds, in the
manner of ``twisted.internet.testing`` and ``treq.testing``::

    from twisted.trial import unittest
    from warpsocket import Hub
    from warpsocket.testing import HubHarness

    class ChatTests(unittest.TestCase):
        def test_say_reaches_the_room(self) -> None:
            harness = HubHarness()
            harness.hub.on("say", lambda ctx, text: ctx.hub.publish("lobby", "said", text))
            alice = harness.connect(rooms=["lobby"])
            bob = harness.connect(rooms=["lobby"])
            reply = alice.send("say", "hi", ack=True)
            self.assertEqual(reply.type.value, "ack")
            self.assertEqual([e.data for e in bob.events("room:lobby")], ["hi"])

What the harness does not model is the transport: frames, the WebSocket
handshake's HTTP side, the security gate (origins, tokens, rate limits) and
write batching. Give ``connect`` the ``user`` and ``claims`` a token would
have proved. docs/testing.md has more.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

from twisted.internet.task import Clock, LoopingCall
from twisted.python import threadable

from warpsocket.core.keys import DIRECT
from warpsocket.core.server import ConnId
from warpsocket.protocol.codecs import JSON_SUBPROTOCOL, Codec
from warpsocket.protocol.envelope import Envelope, MessageType
from warpsocket.server.hub import Hub, HubOptions
from warpsocket.server.middleware import Handshake


class FakeConnection:
    """A ``Connection`` (server/connection.py) in memory.

    Every payload the hub sends it is decoded with its codec and appended to
    ``sent``. ``close`` records the code and reason and, as a peer answering
    the close frame would, has the connection detached from the hub on the
    clock's next turn (``HubHarness`` turns it after every step).
    """

    def __init__(self, codec: Codec, handshake: Handshake | None = None) -> None:
        self.codec = codec
        self.session: str | None = None
        self._handshake = handshake
        self.sent: list[Envelope] = []
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.aborted = False
        # The client went away (its close, or the network): nothing more arrives.
        self.gone = False
        # Told when the hub closes or aborts the connection (the harness detaches it).
        self.on_close: Callable[[int | None], None] | None = None
        # Told of every envelope the hub sends (the fake client answers heartbeats).
        self.on_envelope: Callable[[Envelope], None] | None = None

    @property
    def handshake(self) -> Handshake | None:
        return self._handshake

    @property
    def can_send(self) -> bool:
        return self.close_code is None and not self.aborted and not self.gone

    def send_payload(self, payload: bytes) -> None:
        envelope = self.codec.decode(payload, self.codec.binary)
        self.sent.append(envelope)
        if self.on_envelope is not None:
            self.on_envelope(envelope)

    def prepare(self, payload: bytes) -> object:
        return payload

    def send_prepared(self, prepared: object) -> None:
        assert isinstance(prepared, bytes)
        self.send_payload(prepared)

    def close(self, code: int, reason: str) -> None:
        if not self.can_send:
            return
        self.close_code, self.close_reason = code, reason
        if self.on_close is not None:
            self.on_close(code)

    def abort(self) -> None:
        if self.aborted:
            return
        first = self.can_send
        self.aborted = True
        if self.on_close is not None and first:
            self.on_close(None)


class FakeClient:
    """One fake client of a ``HubHarness``: send envelopes, read what came back.

    ``received`` holds every envelope the hub sent this connection, decoded,
    in order. ``session`` and ``resume_token`` come from the welcome, and
    ``positions`` are the last stream positions seen, so ``reconnect``
    resumes the session as a real client would. Like a real client it
    answers the hub's heartbeats (set ``answer_heartbeats = False`` to play
    a silent one).
    """

    answer_heartbeats = True

    def __init__(self, harness: HubHarness, connection: FakeConnection, conn_id: ConnId) -> None:
        self.harness = harness
        self.connection = connection
        self.conn_id = conn_id
        self.welcome: Envelope | None = None
        self.session: str | None = None
        self.resume_token: str | None = None
        self.rooms: list[str] = []
        self.positions: dict[str, dict[str, Any]] = {}
        self._read = 0
        connection.on_envelope = self._heard

    def _heard(self, envelope: Envelope) -> None:
        beat = envelope.type is MessageType.HEARTBEAT and envelope.ref is None
        if beat and self.answer_heartbeats:
            # After the hub's own step, as a peer's answer would arrive.
            self.harness.clock.callLater(0, self._answer_heartbeat, envelope)

    def _answer_heartbeat(self, beat: Envelope) -> None:
        if not self.closed:
            answer = self.envelope(MessageType.HEARTBEAT, ref=beat.id)
            self.harness.hub.port.heard(self.conn_id)
            self.harness.hub.port.received(
                self.conn_id, self.connection.codec.encode(answer), self.connection.codec.binary
            )

    # ------------------------------------------------------------ what came back

    @property
    def received(self) -> list[Envelope]:
        """Everything the hub sent this connection, decoded, in order."""
        return self.connection.sent

    def take(self) -> list[Envelope]:
        """The envelopes received since the last ``take`` (or the welcome)."""
        new = self.connection.sent[self._read :]
        self._read = len(self.connection.sent)
        for envelope in new:
            self._track(envelope)
        return new

    def events(self, stream: str | None = None) -> list[Envelope]:
        """The ``event`` envelopes received, of one stream if named
        (``"direct"``, ``"broadcast"``, ``"room:<name>"``)."""
        return [
            e
            for e in self.connection.sent
            if e.type is MessageType.EVENT and (stream is None or e.stream == stream)
        ]

    @property
    def closed(self) -> bool:
        return not self.connection.can_send

    @property
    def close_code(self) -> int | None:
        return self.connection.close_code

    # ------------------------------------------------------------ sending

    def feed(self, envelope: Envelope) -> list[Envelope]:
        """Send one envelope as a frame of this connection's codec; returns what
        the hub sent this connection meanwhile (see ``take``)."""
        payload = self.connection.codec.encode(envelope)
        return self.feed_payload(payload, self.connection.codec.binary)

    def feed_payload(self, payload: bytes, is_binary: bool = False) -> list[Envelope]:
        """Send raw bytes as one message (a malformed frame, say)."""
        self.harness.hub.port.heard(self.conn_id)
        self.harness.hub.port.received(self.conn_id, payload, is_binary)
        self.harness.turn()
        return self.take()

    def hello(
        self,
        *,
        session: str | None = None,
        resume_token: str | None = None,
        rooms: Iterable[str] = (),
        streams: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Envelope:
        """Say hello; returns the answer (a ``welcome``, or an error)."""
        data: dict[str, Any] = {"rooms": list(rooms)}
        if session is not None:
            data["session"] = session
        if resume_token is not None:
            data["resume_token"] = resume_token
        if streams:
            data["streams"] = {name: dict(position) for name, position in streams.items()}
        hello = self.envelope(MessageType.HELLO, data=data)
        answer = self._answer(hello.id, self.feed(hello))
        if answer.type is MessageType.WELCOME:
            self.welcome = answer
            welcome = answer.data
            self.session = welcome["session"]
            self.resume_token = welcome["resume_token"]
            self.rooms = list(welcome["rooms"])
            for name, position in welcome["streams"].items():
                self.positions.setdefault(
                    name, {"offset": position["offset"], "epoch": position["epoch"]}
                )
        return answer

    def send(
        self,
        event: str,
        data: Any = None,
        *,
        ack: bool = False,
        room: str | None = None,
        ttl: int | None = None,
    ) -> Envelope | None:
        """An ``event`` (to the application's handler, or into ``room``). With
        ``ack=True`` returns the hub's answer to it (``ack`` or ``error``)."""
        envelope = self.envelope(
            MessageType.EVENT, event=event, data=data, ack=ack, room=room, ttl=ttl
        )
        replies = self.feed(envelope)
        return self._answer(envelope.id, replies) if ack else None

    def call(self, method: str, data: Any = None) -> Envelope:
        """A ``call``; returns its answer (``result`` or ``error``)."""
        envelope = self.envelope(MessageType.CALL, event=method, data=data)
        return self._answer(envelope.id, self.feed(envelope))

    def subscribe(self, room: str) -> Envelope:
        """Join a room; returns the answer (``ack`` with the position, or ``error``)."""
        envelope = self.envelope(MessageType.SUBSCRIBE, room=room)
        return self._answer(envelope.id, self.feed(envelope))

    def unsubscribe(self, room: str) -> Envelope:
        envelope = self.envelope(MessageType.UNSUBSCRIBE, room=room)
        return self._answer(envelope.id, self.feed(envelope))

    def ack(self, event: Envelope) -> None:
        """Acknowledge a received ``direct`` event (cumulatively, by offset)."""
        self.feed(self.envelope(MessageType.ACK, stream=DIRECT, offset=event.offset))

    def heartbeat(self) -> Envelope:
        envelope = self.envelope(MessageType.HEARTBEAT)
        return self._answer(envelope.id, self.feed(envelope))

    def disconnect(self, code: int | None = 1000) -> None:
        """The client goes away (its close frame, or ``None``: the network failed)."""
        self.connection.gone = True
        self.harness.detach(self, code)

    def reconnect(self, *, resume: bool = True) -> FakeClient:
        """A new connection of the same client, resuming its session with its
        resume token and last positions unless ``resume=False``."""
        if not self.closed:
            self.disconnect()
        self.take()
        handshake = self.connection.handshake
        if not resume:
            return self.harness.connect(rooms=self.rooms)
        return self.harness.connect(
            session=self.session,
            resume_token=self.resume_token,
            rooms=self.rooms,
            streams=self.positions,
            user=handshake.user if handshake is not None else None,
            claims=handshake.claims if handshake is not None else None,
        )

    # ------------------------------------------------------------ helpers

    def request(self, kind: MessageType | str, **fields: Any) -> Envelope:
        """Send any envelope (``id`` and ``timestamp`` filled in unless given);
        returns the hub's answer to it (the envelope whose ``ref`` is its id)."""
        envelope = self.envelope(MessageType(kind), **fields)
        return self._answer(envelope.id, self.feed(envelope))

    def envelope(self, kind: MessageType, **fields: Any) -> Envelope:
        """An envelope from this client (``id`` and ``timestamp`` filled in
        unless given), not sent: ``feed`` sends it."""
        fields.setdefault("id", self.harness.new_id())
        fields.setdefault("timestamp", self.harness.hub.now_ms())
        return Envelope(type=kind, **fields)

    def _track(self, envelope: Envelope) -> None:
        if envelope.stream is not None and envelope.offset is not None:
            self.positions[envelope.stream] = {"offset": envelope.offset, "epoch": envelope.epoch}

    @staticmethod
    def _answer(ident: str, replies: list[Envelope]) -> Envelope:
        for reply in replies:
            if reply.ref == ident:
                return reply
        raise AssertionError(f"no answer to {ident}: got {[r.to_wire() for r in replies]}")


class HubHarness:
    """A ``Hub`` on a fake clock, with fake clients instead of sockets.

    ``HubHarness()`` makes a hub with default options (``options=`` to
    choose them) on a new ``Clock``; or pass a ``hub`` built with
    ``clock=Clock()``. The connection timers and the hub's one-second tick
    run on that clock as the service would run them: ``advance(seconds)``
    moves time and fires whatever falls due (heartbeats, timeouts, ack
    retries, session expiry).
    """

    def __init__(
        self,
        hub: Hub | None = None,
        *,
        clock: Clock | None = None,
        options: HubOptions | None = None,
        **hub_kwargs: Any,
    ) -> None:
        if hub is None:
            clock = clock if clock is not None else Clock()
            hub = Hub(options, clock=clock, **hub_kwargs)
        elif not isinstance(hub.clock, Clock):
            raise TypeError("the hub must run on a twisted.internet.task.Clock")
        if threadable.ioThread is None:
            # No reactor ran yet: this thread plays the reactor thread, so
            # the hub's methods run here instead of waiting for a reactor
            # (server/threads.py). A running reactor registers its own.
            threadable.registerAsIOThread()
        self.hub = hub
        self.clock: Clock = cast(Clock, hub.clock)
        self._ids = itertools.count(1)
        self._peers = itertools.count(1)
        self.clients: list[FakeClient] = []
        self._by_connection: dict[int, FakeClient] = {}
        hub.port.timers.start()
        self._ticker = LoopingCall(hub.port.tick)
        self._ticker.clock = self.clock
        self._ticker.start(hub.options.tick_interval, now=True)

    def new_id(self) -> str:
        return f"t{next(self._ids)}"

    def connect(
        self,
        *,
        user: str | None = None,
        claims: Mapping[str, Any] | None = None,
        session: str | None = None,
        resume_token: str | None = None,
        rooms: Iterable[str] = (),
        streams: Mapping[str, Mapping[str, Any]] | None = None,
        codec: str = JSON_SUBPROTOCOL,
        hello: bool = True,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, list[str]] | None = None,
        origin: str | None = None,
        path: str = "/ws",
    ) -> FakeClient:
        """A new connection; it says hello (and is welcomed) unless ``hello=False``.

        ``user`` and ``claims`` are what an authenticated token would have
        proved. Connect middleware runs (``Reject`` propagates, as the
        handshake's refusal). A hello that is refused leaves the client
        open with the error in ``received``.
        """
        found = self.hub.codecs.get(codec)
        if found is None:
            raise ValueError(f"the hub has no codec {codec!r}")
        handshake = Handshake(
            peer=f"fake:{next(self._peers)}",
            host="localhost",
            path=path,
            headers=dict(headers or {}),
            params=dict(params or {}),
            origin=origin,
            user=user,
            claims=dict(claims or {}),
        )
        self.hub.port.check_handshake(handshake)
        connection = FakeConnection(found, handshake)
        conn_id = self.hub.port.attach(connection, handshake)
        client = FakeClient(self, connection, conn_id)
        connection.on_close = lambda code: self._closed_by_hub(client, code)
        self.clients.append(client)
        if hello:
            client.hello(session=session, resume_token=resume_token, rooms=rooms, streams=streams)
        return client

    def advance(self, seconds: float) -> None:
        """Move the clock on, firing every timer that falls due on the way (in
        steps of at most the tick interval, so that every tick runs)."""
        step = self.hub.options.tick_interval
        while seconds > 0:
            delta = min(step, seconds)
            self.clock.advance(delta)
            seconds -= delta
        self.turn()

    def turn(self) -> None:
        """Run what is due now (connections the hub closed are detached)."""
        self.clock.advance(0)

    def detach(self, client: FakeClient, code: int | None) -> None:
        self.hub.port.detach(client.conn_id, code)

    def _closed_by_hub(self, client: FakeClient, code: int | None) -> None:
        # As the protocol does: counted when the close frame goes out, and
        # detached with our code once the peer has answered it.
        if code is not None:
            self.hub.port.closing(client.conn_id, code)
        self.clock.callLater(0, self.detach, client, code)

    def stop(self) -> None:
        """Stop the timers (call it from a test's cleanup)."""
        if self._ticker.running:
            self._ticker.stop()
        self.hub.port.timers.stop()


__all__ = ["FakeClient", "FakeConnection", "HubHarness"]
