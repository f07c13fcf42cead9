"""The Python client's batches (warpsocket/client/batching.py): the window
on a Clock, and the client against a real server over a socket."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.helpers.client import ClientTestCase, ServerFixture, make_hub
from warpsocket.client.batching import OutgoingBatch, granted_bounds
from warpsocket.client.options import ClientOptions
from warpsocket.protocol.codecs import JsonCodec
from warpsocket.protocol.envelope import Envelope, MessageType


def event(ident: str, data: Any = None) -> Envelope:
    return Envelope(type=MessageType.EVENT, id=ident, timestamp=1, data=data)


class WindowTests(unittest.SynchronousTestCase):
    def batcher(self, window_ms: float, bounds: tuple[int, int] = (4, 1024)) -> OutgoingBatch:
        self.clock = Clock()
        self.sent: list[tuple[str, Any]] = []
        return OutgoingBatch(
            self.clock,
            window_ms,
            bounds,
            JsonCodec(),
            send_one=lambda envelope: self.sent.append(("one", envelope.id)),
            send_payload=lambda payload: self.sent.append(
                ("batch", [e["id"] for e in json.loads(payload)["data"]])
            ),
            new_id=lambda: "b",
            now_ms=lambda: 1,
        )

    def test_the_window_starts_with_the_first_envelope(self) -> None:
        batch = self.batcher(5)
        self.assertTrue(batch.add(event("a")))
        self.clock.advance(0.003)
        self.assertTrue(batch.add(event("b")))
        self.clock.advance(0.0019)
        self.assertEqual(self.sent, [])
        self.clock.advance(0.0002)
        self.assertEqual(self.sent, [("batch", ["a", "b"])])
        batch.add(event("c"))
        self.clock.advance(0.005)
        self.assertEqual(self.sent[-1], ("one", "c"))  # alone, as itself

    def test_window_zero_flushes_on_the_next_turn(self) -> None:
        batch = self.batcher(0)
        for ident in "abc":
            batch.add(event(ident))
        self.assertEqual(self.sent, [])
        self.clock.advance(0)
        self.assertEqual(self.sent, [("batch", ["a", "b", "c"])])

    def test_full_at_max_envelopes_and_split_over_max_bytes(self) -> None:
        batch = self.batcher(5)
        for ident in "abcd":
            batch.add(event(ident))
        self.assertEqual(self.sent, [("batch", ["a", "b", "c", "d"])])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        batch.add(event("e", "x" * 600))
        batch.add(event("f", "y" * 600))
        batch.add(event("g"))
        self.clock.advance(0.005)
        self.assertEqual(self.sent[1:], [("one", "e"), ("batch", ["f", "g"])])

    def test_hello_goes_alone_after_what_was_held_and_drop_sends_nothing(self) -> None:
        batch = self.batcher(5)
        batch.add(event("a"))
        hello = Envelope(type=MessageType.HELLO, id="h", timestamp=1, data={})
        self.assertFalse(batch.add(hello))
        self.assertEqual(self.sent, [("one", "a")])
        batch.add(event("b"))
        batch.drop()
        self.clock.advance(1)
        self.assertEqual(self.sent, [("one", "a")])

    def test_granted_bounds_are_checked(self) -> None:
        self.assertEqual(granted_bounds({"max_envelopes": 8, "max_bytes": 4096}), (8, 4096))
        for bad in (None, [], {"max_envelopes": 1, "max_bytes": 4096}, {"max_envelopes": "8"}):
            self.assertIsNone(granted_bounds(bad))

    def test_options_refuse_a_bad_window(self) -> None:
        for bad in (-1, 5000):
            with self.assertRaises(ValueError):
                ClientOptions(batch_window_ms=bad)


class OverTheWireTests(ClientTestCase):
    @inlineCallbacks
    def test_acked_sends_of_one_turn_leave_and_are_acked_in_one_frame(self) -> Any:
        hub = make_hub()
        seen: list[Any] = []
        hub.on("note", lambda ctx, data: seen.append(data))
        server = ServerFixture(self, hub)
        for subprotocol in ("warpsocket.v1.json", "warpsocket.v1.protobuf"):
            client = self.client(server.url, subprotocol=subprotocol)
            yield client.connect()
            self.assertIn("batch", client.extensions)
            batches_in = hub.metrics.traffic.messages_in["batch"]
            batches_out = hub.metrics.traffic.messages_out["batch"]
            acks_out = hub.metrics.traffic.messages_out["ack"]
            frames: list[bytes] = []
            take = client._frame_received

            def counting(
                protocol: Any, payload: bytes, binary: bool, take: Any = take, frames: Any = frames
            ) -> None:
                frames.append(payload)
                take(protocol, payload, binary)

            client._frame_received = counting  # type: ignore[method-assign]
            yield gatherResults([client.send("note", i, ack=True) for i in range(20)])
            self.assertEqual(hub.metrics.traffic.messages_in["batch"] - batches_in, 1)
            self.assertEqual(hub.metrics.traffic.messages_out["batch"] - batches_out, 1)
            self.assertEqual(hub.metrics.traffic.messages_out["ack"] - acks_out, 20)
            self.assertEqual(len(frames), 1)  # the 20 acks in one frame
            self.assertEqual(client.stats.batch_frames, 1)
            yield client.close()
        self.assertEqual(seen, list(range(20)) * 2)

    @inlineCallbacks
    def test_off_sends_each_alone(self) -> Any:
        hub = make_hub()
        hub.on("note", lambda ctx, data: None)
        server = ServerFixture(self, hub)
        client = self.client(server.url, batch_window_ms=None)
        yield client.connect()
        self.assertNotIn("batch", client.extensions)
        yield gatherResults([client.send("note", i, ack=True) for i in range(5)])
        self.assertEqual(hub.metrics.traffic.messages_in["batch"], 0)
        self.assertEqual(client.stats.batch_frames, 0)
