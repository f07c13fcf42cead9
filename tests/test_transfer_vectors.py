"""Run the chunked-transfer vectors (tests/vectors/chunks.json) against
warpsocket.transfer.wire, and through both codecs as `transfer` envelopes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from twisted.trial import unittest

from warpsocket.protocol.codecs import default_codecs
from warpsocket.protocol.codes import ProtocolError
from warpsocket.protocol.envelope import Envelope, MessageType
from warpsocket.transfer import wire

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "vectors" / "chunks.json").read_text(encoding="utf-8")
)


def envelope(data: Any) -> Envelope:
    return Envelope(type=MessageType.TRANSFER, id="v-1", timestamp=1764300000000, data=data)


class ChunkVectorTests(unittest.SynchronousTestCase):
    def test_base64url_both_ways(self) -> None:
        for vector in VECTORS["base64url"]:
            raw = bytes.fromhex(vector["hex"])
            self.assertEqual(wire.encode_bytes(raw), vector["base64url"], vector["name"])
            self.assertEqual(wire.decode_bytes(vector["base64url"]), raw, vector["name"])

    def test_invalid_base64url_is_refused(self) -> None:
        for vector in VECTORS["base64url_invalid"]:
            with self.assertRaises(ValueError, msg=vector["name"]):
                wire.decode_bytes(vector["base64url"])

    def test_a_whole_transfer_splits_into_its_chunks(self) -> None:
        transfer = VECTORS["transfer"]
        content = bytes.fromhex(transfer["content_hex"])
        size, chunk_size = transfer["size"], transfer["chunk_size"]
        self.assertEqual(len(content), size)
        self.assertEqual(wire.chunk_count(size, chunk_size), transfer["chunk_count"])
        hasher = hashlib.sha256()
        for seq, expected in enumerate(transfer["chunks"]):
            part = content[seq * chunk_size : (seq + 1) * chunk_size]
            self.assertEqual(wire.chunk_data("u-1", seq, part), expected)
            checked = wire.verified_chunk(wire.parse(envelope(expected)), size, chunk_size)
            self.assertEqual(checked, part)
            hasher.update(checked or b"")
        self.assertEqual(hasher.hexdigest(), transfer["sha256"])

    def test_corrupt_chunks_fail_their_checks(self) -> None:
        for vector in VECTORS["corrupt_chunks"]:
            op = wire.parse(envelope(vector["data"]))
            self.assertIsNone(
                wire.verified_chunk(op, vector["size"], vector["chunk_size"]), vector["name"]
            )

    def test_valid_and_invalid_ops(self) -> None:
        for vector in VECTORS["valid_ops"]:
            self.assertEqual(wire.parse(envelope(vector["data"])).op, vector["data"]["op"])
        for vector in VECTORS["invalid_ops"]:
            with self.assertRaises(ProtocolError, msg=vector["name"]) as caught:
                wire.parse(envelope(vector["data"]))
            self.assertEqual((caught.exception.code, caught.exception.ref), (4001, "v-1"))

    def test_chunk_envelopes_round_trip_through_both_codecs(self) -> None:
        codecs = default_codecs()
        for name in codecs.subprotocols:
            codec = codecs.get(name)
            assert codec is not None
            for chunk in VECTORS["transfer"]["chunks"]:
                payload = codec.encode(envelope(chunk))
                self.assertEqual(codec.decode(payload, codec.binary).data, chunk, codec.subprotocol)
