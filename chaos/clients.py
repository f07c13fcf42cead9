"""Chaos clients: a ``WarpSocketClient`` each, sending acked messages and recording
everything the application sees.

A client's history is one list of records, in the order the application saw
them (``t`` is wall-clock time, comparable with the server journals):

- ``["open", t, session, resumed, {stream: [offset, epoch]}]``: welcomed, with
  the position of every stream once the welcome was applied;
- ``["join", t, stream, offset, epoch]``: a subscribe was answered;
- ``["lost", t, stream, reason]``: ``on_lost`` (``recovered: false``);
- ``["msg", t, stream, epoch, offset, event, id, session]``: a delivered event;
- ``["sent", t, id, seq]`` and ``["outcome", t, id, status, code]`` for
  every acknowledged send.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

from twisted.python.failure import Failure

from warpsocket.client.client import ClientClosedError, DeliveryError, Message, WarpSocketClient
from warpsocket.client.options import ClientOptions
from warpsocket.client.state import ClientState
from warpsocket.core.client import ClientAction, Outcome, RoomChanged, Welcomed


class RecordingClient(WarpSocketClient):
    """Records the stream positions a welcome or a subscribe answer leaves behind.

    The public API tells the application about deliveries and lost streams,
    but not where a (re)joined stream starts; the checker needs that to tell
    a legitimate start from a silent gap, so it is read from the core right
    after the client applied the answer.
    """

    recorder: ChaosClient

    def _transport_closed(self, protocol: Any, code: int | None, reason: str | None) -> None:
        if protocol is self._protocol or self._protocol is None:
            self.recorder.close_codes[str(code)] += 1
        super()._transport_closed(protocol, code, reason)

    def _run(self, actions: list[ClientAction]) -> None:
        super()._run(actions)
        for action in actions:
            if isinstance(action, Welcomed):
                self.recorder.welcomed(action)
            elif isinstance(action, RoomChanged) and action.joined:
                self.recorder.joined(action.room)


class ChaosClient:
    def __init__(
        self,
        name: str,
        url: str,
        rooms: list[str],
        late_rooms: list[str],
        rng: random.Random,
        reactor: Any,
        options: ClientOptions,
        send_interval: tuple[float, float],
    ) -> None:
        self.name = name
        self.rooms = rooms
        self.late_rooms = late_rooms
        self.rng = rng
        self.reactor = reactor
        self.send_interval = send_interval
        self.records: list[list[Any]] = []
        self.unresolved: set[str] = set()
        self.seq = 0
        self.sending = False
        self.reconnect_times: list[float] = []
        self.warnings: list[str] = []
        self.close_codes: Counter[str] = Counter()
        self.burst_chance = 0.03
        self._down_since: float | None = None
        self._send_call: Any = None
        self.client = RecordingClient(url, options, reactor=reactor)
        self.client.recorder = self
        for room in rooms:
            self.client.subscribe(room, self.delivered)
        self.client.on("dm", self.delivered)
        self.client.on("bc", self.delivered)
        self.client.on_lost(self.lost)
        self.client.on_state(self.state_changed)

    def record(self, *fields: Any) -> None:
        self.records.append([fields[0], time.time(), *fields[1:]])

    # ------------------------------------------------------------ what the app sees

    def delivered(self, message: Message) -> None:
        envelope = message.envelope
        data = message.data if isinstance(message.data, dict) else {}
        self.record(
            "msg",
            message.stream,
            envelope.epoch,
            message.offset,
            message.event,
            data.get("id"),
            data.get("session"),
        )

    def lost(self, stream: str, reason: str) -> None:
        self.record("lost", stream, reason)

    def welcomed(self, welcomed: Welcomed) -> None:
        positions = {name: [p.offset, p.epoch] for name, p in self.client.core.positions.items()}
        self.record("open", welcomed.session, welcomed.resumed, positions)

    def joined(self, room: str) -> None:
        stream = "room:" + room
        position = self.client.core.positions.get(stream)
        if position is not None:
            self.record("join", stream, position.offset, position.epoch)

    def state_changed(self, old: ClientState, new: ClientState) -> None:
        now = time.monotonic()
        if old is ClientState.OPEN:
            self._down_since = now
        elif new is ClientState.OPEN and self._down_since is not None:
            self.reconnect_times.append(now - self._down_since)
            self._down_since = None

    # ------------------------------------------------------------ sending

    async def start(self) -> None:
        await self.client.connect()
        for room in self.late_rooms:
            self.reactor.callLater(self.rng.uniform(0.2, 1.5), self._late_subscribe, room)
        self.sending = True
        self._schedule()

    def _late_subscribe(self, room: str) -> None:
        if self.client.state is not ClientState.CLOSED:
            self.client.subscribe(room, self.delivered)

    def _schedule(self) -> None:
        self._send_call = self.reactor.callLater(self.rng.uniform(*self.send_interval), self._send)

    def _send(self) -> None:
        self._send_call = None
        if not self.sending:
            return
        # Now and then a burst, so that many messages are in flight at once.
        count = self.rng.randint(10, 40) if self.rng.random() < self.burst_chance else 1
        for _ in range(count):
            self._send_one()
        self._schedule()

    def _send_one(self) -> None:
        self.seq += 1
        ident = f"{self.name}/{self.seq}"
        self.record("sent", ident, self.seq)
        self.unresolved.add(ident)
        waiter = self.client.send(
            "n", {"id": ident, "sender": self.name, "seq": self.seq}, ack=True
        )
        assert waiter is not None
        waiter.addCallbacks(self._acked, self._failed, callbackArgs=(ident,), errbackArgs=(ident,))

    def _acked(self, outcome: Outcome, ident: str) -> None:
        self.unresolved.discard(ident)
        self.record("outcome", ident, "acked", None)

    def _failed(self, failure: Failure, ident: str) -> None:
        self.unresolved.discard(ident)
        if failure.check(DeliveryError):
            error: Any = failure.value
            self.record("outcome", ident, error.status.value, error.code)
        elif failure.check(ClientClosedError):
            self.record("outcome", ident, "closed", None)
        else:
            self.record("outcome", ident, "error", None)
            self.warnings.append(f"{ident}: {failure.getErrorMessage()}")

    def stop_sending(self) -> None:
        self.sending = False
        if self._send_call is not None and self._send_call.active():
            self._send_call.cancel()
        self._send_call = None

    def position(self, stream: str) -> tuple[int, str] | None:
        found = self.client.core.positions.get(stream)
        return None if found is None else (found.offset, found.epoch)
