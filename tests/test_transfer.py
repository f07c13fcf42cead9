"""Chunked transfers (protocol.md "Extension: chunked transfers") over real
sockets: uploads to the application, relays to a session and a room, both
codecs, resume across reconnects, corruption, credits and cancellation."""

from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Any

from twisted.internet.defer import inlineCallbacks

from tests.helpers.client import ClientTestCase, ServerFixture, make_hub, wait_until
from warpsocket.client.client import WarpSocketClient
from warpsocket.core.client import ClientCoreOptions
from warpsocket.core.history import Position
from warpsocket.protocol.codecs import JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL
from warpsocket.protocol.codes import ErrorCode
from warpsocket.server.context import Context
from warpsocket.server.middleware import Reject
from warpsocket.transfer import wire
from warpsocket.transfer.client import ReceivingTransfer
from warpsocket.transfer.errors import TransferError
from warpsocket.transfer.server import IncomingTransfer, TransferOptions, TransferServer

CHUNK = 4096


def payload(size: int, seed: int = 1) -> bytes:
    """Deterministic, not repetitive: every chunk differs."""
    out = bytearray()
    block = seed.to_bytes(8, "big")
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


class RecordingSink:
    """A bounded sink: keeps a hash and a count, and the largest write."""

    def __init__(self) -> None:
        self.hasher = hashlib.sha256()
        self.size = 0
        self.largest = 0
        self.aborted = False
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.hasher.update(data)
        self.size += len(data)
        self.largest = max(self.largest, len(data))
        self.data += data

    def abort(self) -> None:
        self.aborted = True


class TransferTestCase(ClientTestCase):
    subprotocol = JSON_SUBPROTOCOL
    options = TransferOptions(chunk_size=CHUNK, window=4, max_size=64 * CHUNK)

    def setUp(self) -> None:
        self.hub = make_hub()
        self.transfers = TransferServer(self.hub, self.options)
        self.addCleanup(self.transfers.stop)
        self.server = ServerFixture(self, self.hub)
        self.sinks: list[RecordingSink] = []
        self.incoming: list[IncomingTransfer] = []

        @self.transfers.on_transfer
        def accept(ctx: Context, incoming: IncomingTransfer) -> RecordingSink:
            if incoming.name == "refused":
                raise Reject(ErrorCode.FORBIDDEN, "not this one")
            sink = RecordingSink()
            self.sinks.append(sink)
            self.incoming.append(incoming)
            return sink

    def transfer_client(self, **options: Any) -> WarpSocketClient:
        options.setdefault("subprotocol", self.subprotocol)
        options.setdefault("core", ClientCoreOptions(extensions=("chunks",)))
        client = self.client(self.server.url, **options)
        client.transfers  # noqa: B018 (asks for the extension before connecting)
        return client


class UploadTests(TransferTestCase):
    @inlineCallbacks
    def test_bytes_reach_the_application_verified_with_progress(self) -> Any:
        client = self.transfer_client()
        yield client.connect()
        self.assertIn("chunks", client.extensions)
        data = payload(10 * CHUNK + 123)
        seen: list[tuple[int, int]] = []
        handle = client.send_bytes(
            data, name="a.bin", meta={"k": 1}, on_progress=lambda *a: seen.append(a)
        )
        digest = yield handle.result
        self.assertEqual(digest, hashlib.sha256(data).hexdigest())
        [sink], [incoming] = self.sinks, self.incoming
        self.assertEqual(bytes(sink.data), data)
        self.assertEqual(
            (incoming.name, incoming.meta, incoming.size), ("a.bin", {"k": 1}, len(data))
        )
        self.assertEqual((yield incoming.done), digest)
        self.assertLessEqual(sink.largest, CHUNK)
        self.assertEqual(seen[-1], (len(data), len(data)))
        self.assertEqual([done for done, _ in seen], sorted(done for done, _ in seen))
        self.assertEqual(self.transfers.open_uploads, 0)

    @inlineCallbacks
    def test_a_file_path_and_an_empty_transfer(self) -> Any:
        client = self.transfer_client()
        yield client.connect()
        path = self.mktemp()
        with open(path, "wb") as out:
            out.write(payload(3 * CHUNK))
        digest = yield client.send_file(path).result
        self.assertEqual(self.incoming[0].name, os.path.basename(path))
        self.assertEqual(digest, hashlib.sha256(payload(3 * CHUNK)).hexdigest())
        empty = yield client.send_bytes(b"").result
        self.assertEqual(empty, hashlib.sha256(b"").hexdigest())

    @inlineCallbacks
    def test_refusals_have_their_codes(self) -> Any:
        client = self.transfer_client()
        yield client.connect()
        failure = yield self.assertFailure(
            client.send_bytes(b"x", name="refused").result, TransferError
        )
        self.assertEqual(failure.code, ErrorCode.FORBIDDEN)
        big = io.BytesIO(bytes(self.options.max_size + 1))
        failure = yield self.assertFailure(client.send_file(big).result, TransferError)
        self.assertEqual(failure.code, ErrorCode.TRANSFER_TOO_LARGE)

    @inlineCallbacks
    def test_a_server_without_the_extension_fails_the_transfer(self) -> Any:
        hub = make_hub()
        server = ServerFixture(self, hub)
        client = self.client(server.url)
        handle = client.send_bytes(b"abc")
        yield client.connect()
        failure = yield self.assertFailure(handle.result, TransferError)
        self.assertEqual(failure.code, ErrorCode.UNKNOWN_TYPE)


class UploadMsgpackTests(UploadTests):
    subprotocol = MSGPACK_SUBPROTOCOL


class RelayTests(TransferTestCase):
    options = TransferOptions(
        chunk_size=CHUNK, window=4, max_size=64 * CHUNK, can_relay=lambda ctx, target: True
    )

    def receiver(
        self, sinks: list[RecordingSink], transfers: list[ReceivingTransfer], **kw: Any
    ) -> WarpSocketClient:
        client = self.transfer_client(**kw)

        @client.on_transfer
        def take(transfer: ReceivingTransfer) -> RecordingSink:
            sink = RecordingSink()
            sinks.append(sink)
            transfers.append(transfer)
            return sink

        return client

    @inlineCallbacks
    def test_to_a_session_across_codecs(self) -> Any:
        sinks: list[RecordingSink] = []
        got: list[ReceivingTransfer] = []
        receiver = self.receiver(sinks, got, subprotocol=MSGPACK_SUBPROTOCOL)
        yield receiver.connect()
        sender = self.transfer_client()
        yield sender.connect()
        data = payload(7 * CHUNK + 5, seed=2)
        digest = yield sender.send_bytes(data, to=receiver.session, name="n").result
        yield wait_until(lambda: bool(got))
        [transfer] = got
        self.assertEqual(
            (transfer.sender, transfer.name, transfer.size), (sender.session, "n", len(data))
        )
        self.assertEqual((yield transfer.done), digest)
        self.assertEqual(bytes(sinks[0].data), data)
        yield wait_until(lambda: not self.transfers._readers)

    @inlineCallbacks
    def test_a_room_broadcast_reaches_every_member(self) -> Any:
        received: list[tuple[list[RecordingSink], list[ReceivingTransfer]]] = []
        members = []
        for codec in (JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL, JSON_SUBPROTOCOL):
            sinks: list[RecordingSink] = []
            got: list[ReceivingTransfer] = []
            received.append((sinks, got))
            member = self.receiver(sinks, got, subprotocol=codec)
            member.subscribe("files")
            members.append(member)
            yield member.connect()
        sender = self.transfer_client()
        sender.subscribe("files")
        yield sender.connect()
        data = payload(9 * CHUNK, seed=3)
        digest = yield sender.send_bytes(data, room="files").result
        for sinks, got in received:
            yield wait_until(lambda got=got: bool(got))
            self.assertEqual((yield got[0].done), digest)
            self.assertEqual(bytes(sinks[0].data), data)
        # One copy on disk, not one per member.
        self.assertEqual(self.transfers.spool_bytes, len(data))
        # The room's history holds the announcement only, never the bytes.
        start = self.hub.store.position("room:files")
        history = self.hub.store.read_after(
            "room:files", Position(0, start.epoch), self.hub.now_ms()
        )
        assert history is not None
        self.assertEqual([e.event for e in history], [wire.ANNOUNCE_EVENT])
        self.assertLess(len(json.dumps(history[0].to_wire())), 1024)
        self.assertLess(self.hub.store.bytes, 64 * 1024)

    @inlineCallbacks
    def test_relays_need_permission(self) -> Any:
        sender = self.transfer_client()
        yield sender.connect()
        failure = yield self.assertFailure(
            sender.send_bytes(b"x", to="no-such-session").result, TransferError
        )
        self.assertEqual(failure.code, ErrorCode.TRANSFER_UNKNOWN)
        failure = yield self.assertFailure(
            sender.send_bytes(b"x", room="not-joined").result, TransferError
        )
        self.assertEqual(failure.code, ErrorCode.FORBIDDEN)

    @inlineCallbacks
    def test_the_server_application_shares_a_file(self) -> Any:
        sinks: list[RecordingSink] = []
        got: list[ReceivingTransfer] = []
        receiver = self.receiver(sinks, got)
        yield receiver.connect()
        path = self.mktemp()
        data = payload(5 * CHUNK + 1, seed=4)
        with open(path, "wb") as out:
            out.write(data)
        yield self.transfers.share(path, session=receiver.session, name="report.pdf")
        yield wait_until(lambda: bool(got))
        self.assertEqual((yield got[0].done), hashlib.sha256(data).hexdigest())
        self.assertEqual((got[0].name, got[0].sender), ("report.pdf", None))
        self.assertTrue(os.path.exists(path))  # not the spool's to delete
