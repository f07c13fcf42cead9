"""Chunked transfers when things go wrong: a hostile raw client (credits,
gaps, corrupt chunks), cuts in the middle (resume from the last acknowledged
chunk), tampering in transit, and cancellation on either side."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from twisted.internet.defer import inlineCallbacks

from tests.helpers.client import ServerFixture, make_hub, spy_inbound, wait_until
from tests.test_transfer import CHUNK, RecordingSink, TransferTestCase, payload
from tests.wsclient import WsClient, connect
from warpsocket.core.server import Send
from warpsocket.protocol.codes import ErrorCode
from warpsocket.protocol.envelope import Envelope, MessageType
from warpsocket.transfer import wire
from warpsocket.transfer.client import ReceivingTransfer
from warpsocket.transfer.errors import TransferError
from warpsocket.transfer.server import TransferOptions


def chunk(transfer: str, seq: int, data: bytes, *, hash_of: bytes | None = None) -> dict[str, Any]:
    body = wire.chunk_data(transfer, seq, data)
    if hash_of is not None:
        body["hash"] = hashlib.sha256(hash_of).hexdigest()
    return {"type": "transfer", "data": body}


def op_of(kind: str, transfer: str = "t1") -> Any:
    return lambda m: (
        m["type"] == "transfer" and m["data"]["op"] == kind and m["data"]["transfer"] == transfer
    )


class HostileClientTests(TransferTestCase):
    @inlineCallbacks
    def raw(self, extensions: list[str] | None = None) -> Any:
        client: WsClient = yield connect(self.server.port)
        self.addCleanup(client.drop)
        data: dict[str, Any] = {"session": None, "streams": {}, "rooms": []}
        data["extensions"] = ["chunks"] if extensions is None else extensions
        welcome = yield client.request({"type": "hello", "data": data})
        self.assertEqual(welcome["type"], "welcome")
        return client

    @inlineCallbacks
    def offer(self, client: WsClient, size: int) -> Any:
        client.send(
            {
                "type": "transfer",
                "data": {"op": "offer", "transfer": "t1", "size": size, "chunk_size": CHUNK},
            }
        )
        credit = yield client.wait_for(op_of("credit"))
        limit = min(4, wire.chunk_count(size, CHUNK))
        self.assertEqual((credit["data"]["next"], credit["data"]["limit"]), (0, limit))
        return credit

    @inlineCallbacks
    def test_downloads_per_connection_are_bounded(self) -> Any:
        """Each pull holds an open spool file: a connection gets at most
        ``max_transfers`` at once, the next is refused with 4624 (busy)."""
        client = yield self.raw()
        (session,) = self.hub.core.sessions  # the raw client's
        limit = self.transfers.options.max_transfers
        ids = []
        for index in range(limit + 1):
            path = self.mktemp()
            with open(path, "wb") as out:
                out.write(payload(8 * CHUNK, seed=index))
            ids.append((yield self.transfers.share(path, session=session)))
        for transfer in ids:  # pulled, never credited: every reader stays open
            client.send(
                {
                    "type": "transfer",
                    "data": {"op": "pull", "transfer": transfer, "next": 0, "limit": 1},
                }
            )
        busy = yield client.wait_for(op_of("cancel", ids[-1]))
        self.assertEqual(busy["code"], ErrorCode.TRANSFER_BUSY)
        self.assertEqual(len(self.transfers._readers), limit)

    @inlineCallbacks
    def test_not_negotiated_is_an_unknown_type(self) -> Any:
        client = yield self.raw(extensions=[])
        answer = yield client.request(
            {"type": "transfer", "data": {"op": "offer", "transfer": "t1"}}
        )
        self.assertEqual((answer["type"], answer["code"]), ("error", 4002))

    @inlineCallbacks
    def test_invalid_ops_are_bad_envelopes(self) -> Any:
        client = yield self.raw()
        for data in (
            {"op": "warp", "transfer": "t1"},
            {"op": "offer", "transfer": "t 1", "size": 1, "chunk_size": CHUNK},
            {"op": "offer", "transfer": "t1", "size": -1, "chunk_size": CHUNK},
            {"op": "offer", "transfer": "t1", "size": 1, "chunk_size": 10},
            {"op": "chunk", "transfer": "t1", "seq": 0, "hash": "zz", "bytes": ""},
            {"op": "credit", "transfer": "t1", "next": 5, "limit": 1},
        ):
            answer = yield client.request({"type": "transfer", "data": data})
            self.assertEqual((answer["type"], answer["code"]), ("error", 4001), data)

    @inlineCallbacks
    def test_a_chunk_beyond_the_credit_ends_the_transfer(self) -> Any:
        client = yield self.raw()
        yield self.offer(client, 10 * CHUNK)
        client.send(chunk("t1", 5, payload(CHUNK)))  # credit was chunks 0-3
        cancel = yield client.wait_for(op_of("cancel"))
        self.assertEqual(cancel["code"], ErrorCode.TRANSFER_FLOW)
        self.assertEqual(self.transfers.open_uploads, 0)
        [incoming] = self.incoming
        failure = yield self.assertFailure(incoming.done, TransferError)
        self.assertEqual(failure.code, ErrorCode.TRANSFER_FLOW)
        self.assertTrue(self.sinks[0].aborted)

    @inlineCallbacks
    def test_never_more_than_a_window_is_held(self) -> Any:
        # A sink that never finishes writing: credits stop, chunks do not pile up.
        from twisted.internet.defer import Deferred

        pending: list[Deferred[None]] = []

        class Stuck:
            def write(self, data: bytes) -> Deferred[None]:
                pending.append(Deferred())
                return pending[-1]

        ended: list[Any] = []

        def stuck(ctx: Any, incoming: Any) -> Stuck:
            incoming.done.addErrback(ended.append)
            return Stuck()

        self.transfers.on_transfer(stuck)
        client = yield self.raw()
        yield self.offer(client, 10 * CHUNK)
        data = payload(10 * CHUNK)
        for seq in range(4):
            client.send(chunk("t1", seq, data[seq * CHUNK : (seq + 1) * CHUNK]))
        yield wait_until(lambda: self.transfers.buffered_chunks == 4)
        client.send(chunk("t1", 4, data[4 * CHUNK : 5 * CHUNK]))  # no credit for it
        cancel = yield client.wait_for(op_of("cancel"))
        self.assertEqual(cancel["code"], ErrorCode.TRANSFER_FLOW)
        self.assertEqual(self.transfers.buffered_chunks, 0)
        self.assertEqual(ended[0].value.code, ErrorCode.TRANSFER_FLOW)

    @inlineCallbacks
    def test_a_corrupt_chunk_and_a_gap_are_re_requested(self) -> Any:
        client = yield self.raw()
        data = payload(3 * CHUNK)
        yield self.offer(client, len(data))
        parts = [data[i * CHUNK : (i + 1) * CHUNK] for i in range(3)]
        client.send(chunk("t1", 0, parts[0], hash_of=b"something else"))
        nack = yield client.wait_for(op_of("nack"))
        self.assertEqual(nack["data"]["seq"], 0)
        client.send(chunk("t1", 0, parts[0]))
        client.send(chunk("t1", 2, parts[2]))  # chunk 1 "lost"
        nack = yield client.wait_for(lambda m: op_of("nack")(m) and m["data"]["seq"] == 1)
        client.send(chunk("t1", 1, parts[1]))
        client.send(chunk("t1", 2, parts[2]))
        yield client.wait_for(lambda m: op_of("credit")(m) and m["data"]["next"] == 3)
        bad_end = {"op": "end", "transfer": "t1", "sha256": "0" * 64}
        client.send({"type": "transfer", "data": bad_end})
        cancel = yield client.wait_for(op_of("cancel"))
        self.assertEqual(cancel["code"], ErrorCode.TRANSFER_CORRUPT)
        self.assertEqual(bytes(self.sinks[0].data), data)  # written, but refused whole
        yield self.assertFailure(self.incoming[0].done, TransferError)

    @inlineCallbacks
    def test_a_chunk_that_keeps_failing_ends_the_transfer(self) -> Any:
        client = yield self.raw()
        yield self.offer(client, CHUNK)
        for _ in range(wire.MAX_RESENDS + 1):
            client.send(chunk("t1", 0, payload(CHUNK), hash_of=b"x"))
        cancel = yield client.wait_for(op_of("cancel"))
        self.assertEqual(cancel["code"], ErrorCode.TRANSFER_CORRUPT)
        failure = yield self.assertFailure(self.incoming[0].done, TransferError)
        self.assertEqual(failure.code, ErrorCode.TRANSFER_CORRUPT)

    @inlineCallbacks
    def test_server_side_size_limit_and_unknown_transfers(self) -> Any:
        client = yield self.raw()
        offer = {"op": "offer", "transfer": "t1", "size": 65 * CHUNK, "chunk_size": CHUNK}
        client.send({"type": "transfer", "data": offer})
        cancel = yield client.wait_for(op_of("cancel"))
        self.assertEqual(cancel["code"], ErrorCode.TRANSFER_TOO_LARGE)
        client.send(chunk("t9", 0, b"x"))
        cancel = yield client.wait_for(op_of("cancel", "t9"))
        self.assertEqual(cancel["code"], ErrorCode.TRANSFER_UNKNOWN)
        pull = {"op": "pull", "transfer": "t8", "next": 0, "limit": 4}
        client.send({"type": "transfer", "data": pull})
        cancel = yield client.wait_for(op_of("cancel", "t8"))
        self.assertEqual(cancel["code"], ErrorCode.TRANSFER_UNKNOWN)


class ResumeTests(TransferTestCase):
    options = TransferOptions(
        chunk_size=CHUNK, window=4, max_size=1024 * CHUNK, can_relay=lambda ctx, target: True
    )

    @inlineCallbacks
    def test_an_upload_resumes_after_a_cut_from_the_acknowledged_chunk(self) -> Any:
        client = self.transfer_client()
        yield client.connect()
        data = payload(200 * CHUNK + 7, seed=9)
        seen = spy_inbound(self.hub)
        handle = client.send_bytes(data)
        yield wait_until(lambda: handle.acknowledged >= 50 * CHUNK)
        self.server.drop_all()
        digest = yield handle.result
        self.assertEqual(digest, hashlib.sha256(data).hexdigest())
        self.assertEqual(bytes(self.sinks[0].data), data)  # each byte written once, in order
        self.assertEqual(len(self.sinks), 1)  # one upload, resumed: not a second one
        self.assertGreaterEqual(client.stats.reconnects, 1)
        chunks = [e for e in seen if e.type is MessageType.TRANSFER and e.data["op"] == "chunk"]
        offers = [e for e in seen if e.type is MessageType.TRANSFER and e.data["op"] == "offer"]
        # Resumed from the acknowledged prefix: at most a window or two sent twice.
        self.assertEqual(len(offers), 2)
        self.assertLessEqual(len(chunks), 201 + 2 * self.options.window)

    @inlineCallbacks
    def test_a_download_resumes_after_the_receiver_is_cut(self) -> Any:
        sinks: list[RecordingSink] = []
        got: list[ReceivingTransfer] = []
        receiver = self.transfer_client()

        @receiver.on_transfer
        def take(transfer: ReceivingTransfer) -> RecordingSink:
            sinks.append(RecordingSink())
            got.append(transfer)
            return sinks[-1]

        yield receiver.connect()
        path = self.mktemp()
        data = payload(300 * CHUNK + 3, seed=5)
        with open(path, "wb") as out:
            out.write(data)
        yield self.transfers.share(path, session=receiver.session)
        yield wait_until(lambda: bool(got) and got[0].received >= 60 * CHUNK)
        self.server.drop_all()
        digest = yield got[0].done
        self.assertEqual(digest, hashlib.sha256(data).hexdigest())
        self.assertEqual(bytes(sinks[0].data), data)
        self.assertEqual((len(got), receiver.stats.reconnects), (1, 1))

    @inlineCallbacks
    def test_tampering_in_transit_is_detected_and_re_requested(self) -> Any:
        # Both directions: the client's chunk 3 and the server's chunk 2 are
        # altered once on their way; both are re-requested and the whole matches.
        client = self.transfer_client()
        yield client.connect()
        transmit = client._transmit
        tampered: list[int] = []

        def corrupting(envelope: Envelope) -> None:
            body = envelope.data
            chunk = envelope.type is MessageType.TRANSFER and body["op"] == "chunk"
            if chunk and body["seq"] == 3 and not tampered:
                tampered.append(3)
                raw = bytearray(wire.decode_bytes(body["bytes"]))
                raw[10] ^= 0xFF
                envelope = envelope.evolve(data={**body, "bytes": wire.encode_bytes(raw)})
            transmit(envelope)

        client._transmit = corrupting  # type: ignore[method-assign]
        data = payload(8 * CHUNK, seed=6)
        digest = yield client.send_bytes(data).result
        self.assertEqual((tampered, digest), ([3], hashlib.sha256(data).hexdigest()))
        self.assertEqual(bytes(self.sinks[0].data), data)

        got: list[ReceivingTransfer] = []
        sinks: list[RecordingSink] = []

        @client.on_transfer
        def take(transfer: ReceivingTransfer) -> RecordingSink:
            sinks.append(RecordingSink())
            got.append(transfer)
            return sinks[-1]

        run = self.transfers._run
        flipped: list[int] = []

        def corrupt_out(actions: list[Any]) -> None:
            for i, action in enumerate(actions):
                body = action.envelope.data if isinstance(action, Send) else None
                chunk = isinstance(body, dict) and body.get("op") == "chunk"
                if chunk and body["seq"] == 2 and not flipped:
                    flipped.append(2)
                    body = {**body, "bytes": wire.encode_bytes(b"\0" * CHUNK)}
                    actions[i] = Send(action.conn, action.envelope.evolve(data=body))
            run(actions)

        self.transfers._run = corrupt_out  # type: ignore[method-assign]
        path = self.mktemp()
        with open(path, "wb") as out:
            out.write(data)
        yield self.transfers.share(path, session=client.session)
        yield wait_until(lambda: bool(got))
        self.assertEqual((yield got[0].done), digest)
        self.assertEqual((flipped, bytes(sinks[0].data)), ([2], data))


class LostEndTests(TransferTestCase):
    @inlineCallbacks
    def test_an_end_lost_in_a_cut_is_sent_again_after_the_resume(self) -> Any:
        client = self.transfer_client()
        yield client.connect()
        transmit = client._transmit
        swallowed: list[Envelope] = []

        def lossy(envelope: Envelope) -> None:
            end = envelope.type is MessageType.TRANSFER and envelope.data["op"] == "end"
            if end and not swallowed:
                swallowed.append(envelope)  # the cut takes it
                return
            transmit(envelope)

        client._transmit = lossy  # type: ignore[method-assign]
        data = payload(3 * CHUNK, seed=8)
        handle = client.send_bytes(data)
        yield wait_until(lambda: bool(swallowed))
        self.server.drop_all()
        self.assertEqual((yield handle.result), hashlib.sha256(data).hexdigest())
        self.assertEqual(bytes(self.sinks[0].data), data)

    @inlineCallbacks
    def test_transfers_first_used_after_connect_fail_at_once(self) -> Any:
        client = self.client(self.server.url)  # the hello did not ask for chunks
        yield client.connect()
        failure = yield self.assertFailure(client.send_bytes(b"abc").result, TransferError)
        self.assertEqual(failure.code, ErrorCode.UNKNOWN_TYPE)
        self.assertIn("after connect", failure.message)


class CancelTests(TransferTestCase):
    options = TransferOptions(chunk_size=CHUNK, window=2, max_size=1024 * CHUNK)

    @inlineCallbacks
    def test_the_sender_cancels_and_the_server_lets_go(self) -> Any:
        client = self.transfer_client()
        yield client.connect()
        handle = client.send_bytes(payload(500 * CHUNK))
        yield wait_until(lambda: handle.acknowledged > 0)
        handle.cancel()
        failure = yield self.assertFailure(handle.result, TransferError)
        self.assertEqual(failure.code, ErrorCode.TRANSFER_CANCELLED)
        [incoming] = self.incoming
        failure = yield self.assertFailure(incoming.done, TransferError)
        self.assertEqual(failure.code, ErrorCode.TRANSFER_CANCELLED)
        self.assertEqual((self.transfers.open_uploads, self.sinks[0].aborted), (0, True))
        self.assertEqual(client.transfers.outgoing, [])

    @inlineCallbacks
    def test_a_cancelled_relay_deletes_its_spool_file(self) -> Any:
        client = self.transfer_client()
        client.subscribe("files")
        yield client.connect()
        handle = client.send_bytes(payload(500 * CHUNK), room="files")
        yield wait_until(lambda: handle.acknowledged > 0)
        spool = self.transfers._spool_dir
        self.assertEqual(len(os.listdir(spool)), 1)
        self.assertEqual(self.transfers.spool_bytes, 500 * CHUNK)
        handle.cancel()
        yield self.assertFailure(handle.result, TransferError)
        yield wait_until(lambda: self.transfers.open_uploads == 0)
        self.assertEqual((os.listdir(spool), self.transfers.spool_bytes), ([], 0))

    @inlineCallbacks
    def test_the_application_cancels_and_the_sender_is_told(self) -> Any:
        client = self.transfer_client()
        yield client.connect()
        handle = client.send_bytes(payload(500 * CHUNK))
        yield wait_until(lambda: bool(self.incoming) and self.incoming[0].received > 0)
        self.incoming[0].cancel("enough")
        yield self.assertFailure(self.incoming[0].done, TransferError)
        failure = yield self.assertFailure(handle.result, TransferError)
        self.assertEqual((failure.code, failure.message), (ErrorCode.TRANSFER_CANCELLED, "enough"))
        self.assertEqual((self.transfers.open_uploads, client.transfers.outgoing), (0, []))

    @inlineCallbacks
    def test_a_receiver_cancels_a_download(self) -> Any:
        client = self.transfer_client()
        got: list[ReceivingTransfer] = []

        @client.on_transfer
        def take(transfer: ReceivingTransfer) -> RecordingSink:
            got.append(transfer)
            return RecordingSink()

        yield client.connect()
        path = self.mktemp()
        with open(path, "wb") as out:
            out.write(payload(500 * CHUNK))
        yield self.transfers.share(path, session=client.session)
        yield wait_until(lambda: bool(got) and got[0].received > 0)
        got[0].cancel()
        failure = yield self.assertFailure(got[0].done, TransferError)
        self.assertEqual(failure.code, ErrorCode.TRANSFER_CANCELLED)
        yield wait_until(lambda: not self.transfers._readers)
        self.assertEqual(client.transfers.incoming, [])


class IdleTests(TransferTestCase):
    @inlineCallbacks
    def test_an_abandoned_upload_is_dropped_after_the_idle_timeout(self) -> Any:
        from twisted.internet.task import Clock

        clock = Clock()
        hub = make_hub(clock=clock)
        from warpsocket.transfer.server import TransferServer

        transfers = TransferServer(hub, TransferOptions(chunk_size=CHUNK, idle_timeout=30))
        self.addCleanup(transfers.stop)
        sinks: list[RecordingSink] = []
        failures: list[Any] = []

        def take(ctx: Any, incoming: Any) -> RecordingSink:
            incoming.done.addErrback(failures.append)
            sinks.append(RecordingSink())
            return sinks[-1]

        transfers.on_transfer(take)
        server = ServerFixture(self, hub)
        client: WsClient = yield connect(server.port)
        self.addCleanup(client.drop)
        hello = {"session": None, "streams": {}, "rooms": [], "extensions": ["chunks"]}
        yield client.request({"type": "hello", "data": hello})
        offer = {"op": "offer", "transfer": "t1", "size": 5 * CHUNK, "chunk_size": CHUNK}
        client.send({"type": "transfer", "data": offer})
        yield client.wait_for(op_of("credit"))
        yield client.drop()
        for _ in range(29):
            clock.advance(1)
        self.assertEqual(transfers.open_uploads, 1)  # a reconnect could still resume it
        clock.advance(2)
        self.assertEqual((transfers.open_uploads, sinks[0].aborted), (0, True))
        self.assertEqual(failures[0].value.code, ErrorCode.TRANSFER_CANCELLED)
