"""A protocol-aware fuzz over real sockets, small enough for every CI run.

Three attackers (two JSON, one MessagePack) send envelopes mutated from valid
ones: fields replaced by hostile values (numbers past the data model, deep
nesting, object bombs, bin, wrong types), fields dropped, unknown fields
added, and session hijack attempts. Two bystanders (one per codec) sit in the
room being published into. Whatever the attackers send:

- no connection is dropped and nothing is answered with 4501/1011;
- every bystander sees the room's stream with consecutive offsets, and a
  replay from offset 0 (in both codecs) equals what it saw live;
- no attacker takes a bystander's session.

The seed is fixed, so a failure reproduces; FUZZ_SEED picks another.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

import msgpack

from tests.wsclient import (
    JSON_SUBPROTOCOL,
    MSGPACK_SUBPROTOCOL,
    ServerTestCase,
    WsClient,
    async_test,
    new_id,
)
from warpsocket.core.server import CoreOptions

SEED = int(os.environ.get("FUZZ_SEED", "20261205"))
ROOM = "fuzz"
STREAM = "room:fuzz"
PER_ATTACKER = 500


def deep(levels: int) -> Any:
    value: Any = 0
    for _ in range(levels):
        value = [value]
    return value


# Values that must never get into a stream, and some that may.
HOSTILE: list[Any] = [
    2**53,
    -(2**53),
    2**64 - 1,
    -(2**63),
    deep(63),
    deep(200),
    [{}] * 140_000,
    {"a": deep(70)},
    "x" * 300,
    "",
    None,
    True,
    -1,
    0,
    1.5,
    [],
    {},
]
MSGPACK_ONLY: list[Any] = [float("inf"), float("-inf"), float("nan"), b"\x00bin", {b"k": 1}]
JSON_ONLY: list[Any] = [2**64, -(2**63) - 1, 10**30]
JSON_TEXT_ONLY = ["1e400", "-1e400", "18446744073709551616", "[" * 980 + "]" * 980]
FIELDS = ["type", "id", "timestamp", "data", "event", "room", "stream", "offset", "epoch",
          "ack", "ref", "ttl", "code"]  # fmt: skip


def base_envelopes(rng: random.Random) -> list[dict[str, Any]]:
    ident = new_id("f")
    return [
        {"type": "event", "id": ident, "room": ROOM, "event": "x", "ack": True,
         "data": {"n": rng.randrange(1000)}},
        {"type": "event", "id": ident, "event": "nothing", "ack": True, "data": [1, 2]},
        {"type": "call", "id": ident, "event": "nothing", "data": {}},
        {"type": "subscribe", "id": ident, "room": ROOM},
        {"type": "heartbeat", "id": ident},
        {"type": "ack", "id": ident, "ref": "nope"},
        {"type": "hello", "id": ident, "data": {}},
    ]  # fmt: skip


def mutate(rng: random.Random, binary: bool) -> bytes:
    envelope = rng.choice(base_envelopes(rng))
    envelope.setdefault("timestamp", 1)
    pool = HOSTILE + (MSGPACK_ONLY if binary else JSON_ONLY)
    for _ in range(rng.randrange(1, 3)):
        roll = rng.random()
        if roll < 0.45:
            envelope["data"] = rng.choice(pool)
        elif roll < 0.75:
            envelope[rng.choice(FIELDS)] = rng.choice(pool)
        elif roll < 0.85:
            envelope.pop(rng.choice(FIELDS), None)
        else:
            envelope["x-" + str(rng.randrange(5))] = rng.choice(pool)
    if binary:
        packed: bytes = msgpack.packb(envelope, use_bin_type=True)
        return packed
    text = json.dumps(envelope)
    if rng.random() < 0.15:
        # Values only JSON text can hold, spliced in as data.
        text = text[:-1] + ', "data": ' + rng.choice(JSON_TEXT_ONLY) + "}"
    return text.encode("utf-8")


def room_events(client: WsClient) -> list[dict[str, Any]]:
    return [m for m in client.messages if m.get("type") == "event" and m.get("stream") == STREAM]


class FuzzTests(ServerTestCase):
    timeout = 60

    @async_test
    async def test_mutated_envelopes_never_hurt_a_room_or_a_session(self) -> None:
        rng = random.Random(SEED)
        self.start_server(CoreOptions(), open_rooms=True)
        bystanders = [
            await self.connect(rooms=[ROOM]),
            await self.connect(protocols=[MSGPACK_SUBPROTOCOL], rooms=[ROOM]),
        ]
        victim_ids = [b.session for b in bystanders]
        attackers = [
            await self.connect(rooms=[ROOM]),
            await self.connect(rooms=[ROOM]),
            await self.connect(protocols=[MSGPACK_SUBPROTOCOL], rooms=[ROOM]),
        ]
        for round_start in range(0, PER_ATTACKER, 50):
            for attacker in attackers:
                for _ in range(min(50, PER_ATTACKER - round_start)):
                    attacker.send_raw(mutate(rng, attacker.binary), binary=attacker.binary)
                # Hijack attempts: a bystander's session id without its token.
                if rng.random() < 0.3:
                    thief = await self.connect(hello=False)
                    welcome = await thief.hello(
                        session=rng.choice(victim_ids), resume_token="stolen-" + new_id()
                    )
                    self.assertFalse(welcome.get("data")["resumed"])
                    await thief.close()
            # A barrier per attacker: everything before it was taken in order.
            for attacker in attackers:
                answer = await attacker.request({"type": "heartbeat"})
                self.assertEqual(answer["type"], "heartbeat")
        for client in (*attackers, *bystanders):
            self.assertFalse(client.closed.called, client.close_code)
            codes = {m.get("code") for m in client.messages if m.get("type") == "error"}
            self.assertNotIn(4501, codes)
        for attacker in attackers:
            # Every refusal that could name its envelope did.
            errors = [m for m in attacker.messages if m.get("type") == "error"]
            self.assertGreater(len(errors), 100)
        # The room: consecutive offsets for every bystander, the same messages.
        live = [room_events(b) for b in bystanders]
        self.assertGreater(len(live[0]), 20)
        for events in live:
            self.assertEqual([e["offset"] for e in events], list(range(1, len(events) + 1)))
        self.assertEqual([e.get("data") for e in live[0]], [e.get("data") for e in live[1]])
        # An exact replay from offset 0, in both codecs.
        epoch = live[0][0]["epoch"]
        for protocols in ([JSON_SUBPROTOCOL], [MSGPACK_SUBPROTOCOL]):
            late = await self.connect(
                protocols=protocols, rooms=[ROOM], streams={STREAM: {"offset": 0, "epoch": epoch}}
            )
            assert late.welcome is not None
            self.assertTrue(late.welcome.get("data")["streams"][STREAM]["recovered"])
            await late.request({"type": "heartbeat"})
            replay = room_events(late)
            self.assertEqual(
                [(e["offset"], e.get("data")) for e in replay],
                [(e["offset"], e.get("data")) for e in live[0]],
            )
        # No bystander lost its session to a thief.
        for bystander in bystanders:
            assert bystander.session is not None
            self.assertTrue(self.hub.is_connected(bystander.session))
