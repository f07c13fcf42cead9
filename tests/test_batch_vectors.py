"""Run the batch vectors (tests/vectors/batch.json) through every codec, the
server's checks (warpsocket/server/batches.py) and the client's expansion."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.trial import unittest

from warpsocket.client.batching import expand
from warpsocket.protocol.codecs import default_codecs
from warpsocket.protocol.codes import ProtocolError
from warpsocket.protocol.datamodel import DEFAULT_LIMITS
from warpsocket.protocol.envelope import Envelope, MessageType
from warpsocket.protocol.protobuf import encode_mapping
from warpsocket.server.batches import BatchParams, parse_inner, whole_problem

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "vectors" / "batch.json").read_text(encoding="utf-8")
)
PARAMS = BatchParams.from_wire(VECTORS["params"])
_REGISTRY = default_codecs()
CODECS = [_REGISTRY.get(name) for name in _REGISTRY.subprotocols]


def frames(raw: dict[str, Any]) -> list[tuple[Any, bytes]]:
    """The batch as each codec's frame (encoded from the mapping as it is)."""
    import msgpack

    found = []
    for codec in CODECS:
        if codec.subprotocol.endswith("json"):
            payload = json.dumps(raw, ensure_ascii=False).encode()
        elif codec.subprotocol.endswith("msgpack"):
            payload = msgpack.packb(raw)
        else:
            payload = encode_mapping(raw)
        found.append((codec, payload))
    return found


def judge(codec: Any, payload: bytes) -> tuple[int, list[Any]]:
    """What a server does with a batch frame: (whole-batch code or 0, outcomes)."""
    try:
        batch = codec.decode(payload, codec.binary)
    except ProtocolError as error:
        return int(error.code), []
    assert batch.type is MessageType.BATCH
    if whole_problem(len(batch.data), len(payload), PARAMS) is not None:
        return 4640, []
    outcomes: list[Any] = []
    for item in batch.data:
        try:
            parse_inner(item, DEFAULT_LIMITS)
            outcomes.append({"valid": True})
        except ProtocolError as error:
            outcomes.append({"code": int(error.code), "ref": error.ref})
    return 0, outcomes


class BatchVectorTests(unittest.SynchronousTestCase):
    def test_inner_outcomes_in_every_codec(self) -> None:
        for vector in VECTORS["inner"]:
            for codec, payload in frames(vector["batch"]):
                name = f"{vector['name']} ({codec.subprotocol})"
                self.assertEqual(judge(codec, payload), (0, vector["outcomes"]), name)

    def test_whole_batch_refusals_in_every_codec(self) -> None:
        for vector in VECTORS["whole"]:
            for codec, payload in frames(vector["batch"]):
                name = f"{vector['name']} ({codec.subprotocol})"
                self.assertEqual(judge(codec, payload), (vector["code"], []), name)

    def test_whole_refusals_name_the_batch(self) -> None:
        for vector in VECTORS["whole"]:
            if vector["code"] != 4001:
                continue
            codec, payload = frames(vector["batch"])[0]
            with self.assertRaises(ProtocolError) as raised:
                codec.decode(payload, codec.binary)
            self.assertEqual(raised.exception.ref, vector["batch"]["id"], vector["name"])

    def test_clients_take_the_server_batches_apart(self) -> None:
        for vector in VECTORS["server"]:
            for codec, payload in frames(vector["batch"]):
                batch = codec.decode(payload, codec.binary)
                got = [e.to_wire() for e in expand(batch, DEFAULT_LIMITS)]
                self.assertEqual(got, vector["envelopes"], vector["name"])

    def test_encoders_carry_a_batch_unchanged(self) -> None:
        for vector in VECTORS["server"]:
            batch = Envelope.from_wire(vector["batch"])
            for codec in CODECS:
                again = codec.decode(codec.encode(batch), codec.binary)
                self.assertEqual(again.data, vector["batch"]["data"], codec.subprotocol)
