"""The common WebSocket frame read and written without Autobahn's machinery.

``warpsocket.server.wire.framing`` is checked against Autobahn's own masker and
against a small RFC 6455 parser written here (independent of the module);
then the server's fast path (``WarpSocketServerProtocol.dataReceived`` and
``sendMessage``) is driven over real sockets with hand-made frames: batches in
one write, frames split across writes, simple frames mixed with control
frames and fragments, and every frame it must leave to Autobahn, which has to
close with the RFC's code. Hub timers run on a ``Clock``; only the network
runs on the real reactor.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
from autobahn.websocket.xormasker import create_xor_masker  # type: ignore[attr-defined]
from twisted.trial import unittest

from tests.helpers.security import QUIET, RawPeer, SecureTestCase, frame, upgrade_request
from tests.wsclient import JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL, Message, async_test, wait_until
from warpsocket.core.server import CoreOptions
from warpsocket.server.protocol import WarpSocketServerProtocol
from warpsocket.server.wire import framing

# ---------------------------------------------------------------- independent RFC 6455 helpers


def xor(data: bytes, mask: bytes) -> bytes:
    """RFC 6455 5.3, byte by byte: octet i XOR mask[i mod 4]."""
    return bytes(octet ^ mask[index % 4] for index, octet in enumerate(data))


def client_frame(
    payload: bytes,
    opcode: int = 0x1,
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    mask: bytes | None = None,
    form: int | None = None,
) -> bytes:
    """A client frame with a random (non-zero) mask; ``form`` forces the 7-,
    16- or 64-bit length encoding (even a non-minimal one)."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    size = len(payload)
    if form is None:
        form = 7 if size < 126 else 16 if size < 65_536 else 64
    mask_bit = 0x80 if masked else 0
    if form == 7:
        header = bytes([first, mask_bit | size])
    elif form == 16:
        header = bytes([first, mask_bit | 126]) + size.to_bytes(2, "big")
    else:
        header = bytes([first, mask_bit | 127]) + size.to_bytes(8, "big")
    if not masked:
        return header + payload
    if mask is None:
        mask = os.urandom(4)
        while mask == b"\x00\x00\x00\x00":
            mask = os.urandom(4)
    return header + mask + xor(payload, mask)


@dataclass(frozen=True)
class Parsed:
    fin: bool
    rsv: int
    opcode: int
    masked: bool
    form: int  # 7, 16 or 64: the length encoding used
    header: bytes  # up to the mask (or the payload, unmasked)
    payload: bytes  # unmasked


def parse_frames(data: bytes) -> tuple[list[Parsed], int]:
    """Every complete frame in ``data`` and the offset after the last one."""
    frames: list[Parsed] = []
    at = 0
    while len(data) - at >= 2:
        first, second = data[at], data[at + 1]
        length, head, form = second & 0x7F, 2, 7
        if length == 126:
            if len(data) - at < 4:
                break
            length, head, form = int.from_bytes(data[at + 2 : at + 4], "big"), 4, 16
        elif length == 127:
            if len(data) - at < 10:
                break
            length, head, form = int.from_bytes(data[at + 2 : at + 10], "big"), 10, 64
        masked = bool(second & 0x80)
        mask = b""
        if masked:
            mask = data[at + head : at + head + 4]
            head += 4
        if len(data) - at < head + length:
            break
        payload = data[at + head : at + head + length]
        frames.append(
            Parsed(
                fin=bool(first & 0x80),
                rsv=(first >> 4) & 0x7,
                opcode=first & 0x0F,
                masked=masked,
                form=form,
                header=data[at : at + (head - 4 if masked else head)],
                payload=xor(payload, mask) if masked else payload,
            )
        )
        at += head + length
    return frames, at


def minimal_form(size: int) -> int:
    return 7 if size < 126 else 16 if size < 65_536 else 64


def envelope(kind: str, ident: str, **fields: Any) -> Message:
    return {"type": kind, "id": ident, "timestamp": 0, **fields}


def encode(message: Message, binary: bool) -> bytes:
    if binary:
        return bytes(msgpack.packb(message))
    return json.dumps(message).encode("utf-8")


def data_frame(message: Message, binary: bool = False) -> bytes:
    return client_frame(encode(message, binary), 0x2 if binary else 0x1)


def call(ident: str, event: str = "echo", data: Any = None, binary: bool = False) -> bytes:
    return data_frame(envelope("call", ident, event=event, data=data), binary)


# ---------------------------------------------------------------- unit tests of framing.py


class UnmaskTests(unittest.TestCase):
    def test_equals_autobahn_masker_for_every_size_to_2000(self) -> None:
        rng = random.Random(6455)
        for size in range(0, 2001):
            mask = rng.randbytes(4)
            data = rng.randbytes(size)
            expected = bytes(create_xor_masker(mask, size).process(data))
            got = framing.unmask(data, mask)
            self.assertEqual(got, expected, f"size {size}")
            self.assertEqual(got, xor(data, mask), f"size {size}")

    def test_around_the_512_boundary_with_edge_masks(self) -> None:
        rng = random.Random(512)
        masks = [b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x01\x00\x00\x80"]
        masks += [rng.randbytes(4) for _ in range(20)]
        for size in (0, 1, 3, 4, 5, 510, 511, 512, 513, 514, 516, 4096):
            for mask in masks:
                for data in (rng.randbytes(size), b"\x00" * size, b"\xff" * size):
                    expected = bytes(create_xor_masker(mask, size).process(data))
                    self.assertEqual(framing.unmask(data, mask), expected, (size, mask))

    def test_unmask_is_an_involution_and_keeps_leading_zeros(self) -> None:
        mask = b"\x12\x34\x56\x78"
        for size in (1, 4, 100, 512, 513, 1500):
            data = mask * (size // 4) + mask[: size % 4]  # unmasks to all zeros
            self.assertEqual(framing.unmask(data, mask), b"\x00" * size)
            plain = bytes(range(256)) * (size // 256 + 1)
            plain = plain[:size]
            self.assertEqual(framing.unmask(framing.unmask(plain, mask), mask), plain)


class FrameTests(unittest.TestCase):
    def test_headers_at_the_length_boundaries(self) -> None:
        cases = {
            0: b"\x81\x00",
            1: b"\x81\x01",
            125: b"\x81\x7d",
            126: b"\x81\x7e\x00\x7e",
            65_535: b"\x81\x7e\xff\xff",
            65_536: b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00",
        }
        for size, header in cases.items():
            payload = bytes(random.Random(size).randbytes(size))
            text = framing.frame(payload, False)
            self.assertEqual(text[: len(header)], header, size)
            self.assertEqual(text[len(header) :], payload, size)
            binary = framing.frame(payload, True)
            self.assertEqual(binary[:1], b"\x82", size)
            self.assertEqual(binary[1 : len(header)], header[1:], size)
            self.assertEqual(binary[len(header) :], payload, size)

    def test_round_trips_through_an_independent_parser(self) -> None:
        rng = random.Random(7)
        sizes = [0, 1, 125, 126, 127, 1000, 65_535, 65_536, 70_000]
        stream = b""
        expected: list[tuple[bytes, bool]] = []
        for size in sizes:
            for is_binary in (False, True):
                payload = rng.randbytes(size)
                stream += framing.frame(payload, is_binary)
                expected.append((payload, is_binary))
        frames, end = parse_frames(stream)
        self.assertEqual(end, len(stream))
        self.assertEqual(len(frames), len(expected))
        for parsed, (payload, is_binary) in zip(frames, expected, strict=True):
            self.assertTrue(parsed.fin)
            self.assertEqual(parsed.rsv, 0)
            self.assertFalse(parsed.masked)
            self.assertEqual(parsed.opcode, 0x2 if is_binary else 0x1)
            self.assertEqual(parsed.form, minimal_form(len(payload)))
            self.assertEqual(parsed.payload, payload)

    def test_client_frames_read_back_by_read_simple_frame(self) -> None:
        rng = random.Random(8)
        for size in (0, 1, 125, 126, 600, 65_535):
            payload = rng.randbytes(size)
            data = client_frame(payload, 0x2)
            self.assertEqual(framing.read_simple_frame(data, 0, 0), (len(data), True, payload))


class ReadSimpleFrameTests(unittest.TestCase):
    TEXT = "héllo, wörld € 𝄞".encode()

    def read(self, data: bytes, start: int = 0, limit: int = 0) -> tuple[int, bool, bytes] | None:
        return framing.read_simple_frame(data, start, limit)

    def test_text_and_binary_at_offset_zero(self) -> None:
        text = client_frame(self.TEXT, 0x1)
        self.assertEqual(self.read(text), (len(text), False, self.TEXT))
        payload = bytes(range(256))
        binary = client_frame(payload, 0x2)
        self.assertEqual(self.read(binary), (len(binary), True, payload))
        empty = client_frame(b"", 0x1)
        self.assertEqual(len(empty), 6)
        self.assertEqual(self.read(empty), (6, False, b""))

    def test_sixteen_bit_lengths(self) -> None:
        for size in (126, 127, 600, 65_535):
            payload = b"a" * size
            data = client_frame(payload)
            self.assertEqual(data[1], 0x80 | 126)
            self.assertEqual(self.read(data), (len(data), False, payload))

    def test_at_a_non_zero_start(self) -> None:
        prefix = b"\x88\x82garbage\x00\xff"
        data = client_frame(self.TEXT) + b"trailing"
        self.assertEqual(
            self.read(prefix + data, len(prefix)),
            (len(prefix) + len(data) - len(b"trailing"), False, self.TEXT),
        )

    def test_back_to_back(self) -> None:
        rng = random.Random(3)
        payloads = [(rng.randbytes(rng.randrange(0, 700)), True) for _ in range(20)]
        payloads += [(("x" * n).encode(), False) for n in (0, 5, 125, 126, 300)]
        rng.shuffle(payloads)
        data = b"".join(client_frame(p, 0x2 if b else 0x1) for p, b in payloads)
        position = 0
        got: list[tuple[bytes, bool]] = []
        while True:
            taken = self.read(data, position)
            if taken is None:
                break
            position, is_binary, payload = taken
            got.append((payload, is_binary))
        self.assertEqual(position, len(data))
        self.assertEqual(got, payloads)

    def test_control_frames_are_not_simple(self) -> None:
        for opcode in (0x8, 0x9, 0xA):
            payload = b"\x03\xe8" if opcode == 0x8 else b"ping"
            self.assertIsNone(self.read(client_frame(payload, opcode)), hex(opcode))

    def test_reserved_opcodes_are_not_simple(self) -> None:
        for opcode in (0x3, 0x7, 0xB, 0xF):
            self.assertIsNone(self.read(client_frame(b"data", opcode)), hex(opcode))

    def test_fragments_are_not_simple(self) -> None:
        self.assertIsNone(self.read(client_frame(b"part", 0x1, fin=False)))
        self.assertIsNone(self.read(client_frame(b"part", 0x2, fin=False)))
        self.assertIsNone(self.read(client_frame(b"rest", 0x0, fin=True)))
        self.assertIsNone(self.read(client_frame(b"rest", 0x0, fin=False)))

    def test_rsv_bits_are_not_simple(self) -> None:
        for rsv in (0b100, 0b010, 0b001, 0b111):
            for opcode in (0x1, 0x2):
                self.assertIsNone(self.read(client_frame(b"data", opcode, rsv=rsv)), (rsv, opcode))

    def test_unmasked_is_not_simple(self) -> None:
        self.assertIsNone(self.read(client_frame(b"data", masked=False)))
        self.assertIsNone(self.read(client_frame(b"d" * 200, masked=False)))
        self.assertIsNone(self.read(client_frame(b"", masked=False) + b"\x00" * 8))

    def test_sixty_four_bit_lengths_are_not_simple(self) -> None:
        self.assertIsNone(self.read(client_frame(b"a" * 70_000, form=64)))  # minimal
        self.assertIsNone(self.read(client_frame(b"a" * 200, form=64)))  # non-minimal

    def test_non_minimal_sixteen_bit_length_is_not_simple(self) -> None:
        for size in (0, 1, 125):
            self.assertIsNone(self.read(client_frame(b"a" * size, form=16)), size)

    def test_limit(self) -> None:
        at_limit = client_frame(b"a" * 100)
        self.assertEqual(self.read(at_limit, limit=100), (len(at_limit), False, b"a" * 100))
        self.assertIsNone(self.read(client_frame(b"a" * 101), limit=100))
        self.assertIsNone(self.read(client_frame(b"a" * 300), limit=200))
        self.assertIsNotNone(self.read(client_frame(b"a" * 300), limit=0))  # 0: no limit

    def test_incomplete_header_and_payload(self) -> None:
        for payload in (b"", b"abc", b"a" * 125, b"a" * 126, b"a" * 1000):
            data = client_frame(payload)
            for cut in range(len(data)):
                self.assertIsNone(self.read(data[:cut]), (len(payload), cut))
                # The same, after a complete frame at a non-zero start.
                first = client_frame(b"first")
                self.assertIsNone(self.read(first + data[:cut], len(first)), (len(payload), cut))
            self.assertIsNotNone(self.read(data))

    def test_invalid_utf8_text_is_not_simple(self) -> None:
        for bad in (
            b"\xed\xa0\x80",  # an encoded surrogate (U+D800)
            b"\xc0\xaf",  # an overlong "/"
            b"\xe0\x80\xaf",  # an overlong "/" in three octets
            b"\xf4\x90\x80\x80",  # above U+10FFFF
            b"\x80",  # a lone continuation octet
            b"\xe2\x82",  # truncated
            b"\xff",
            b'{"ok": 1}\xce',  # valid, then truncated at the end
        ):
            self.assertIsNone(self.read(client_frame(bad, 0x1)), bad)
            # Long enough to be unmasked by Autobahn's masker.
            self.assertIsNone(self.read(client_frame(b"a" * 600 + bad, 0x1)), bad)

    def test_invalid_utf8_in_a_binary_frame_is_accepted(self) -> None:
        for bad in (b"\xed\xa0\x80", b"\xc0\xaf", b"\xff\xfe"):
            data = client_frame(bad, 0x2)
            self.assertEqual(self.read(data), (len(data), True, bad))

    def test_a_bad_frame_after_good_ones_stops_there(self) -> None:
        good = client_frame(b"good")
        ping = client_frame(b"", 0x9)
        data = good + ping + good
        self.assertEqual(self.read(data), (len(good), False, b"good"))
        self.assertIsNone(self.read(data, len(good)))


# ---------------------------------------------------------------- wire tests


class FramingWireCase(SecureTestCase):
    """Raw peers that say hello and read the server's frames; no tests here."""

    def start(self, core: CoreOptions = QUIET) -> None:
        hub = self.start_secure(core=core)
        self.recorded: list[Any] = []

        def record(ctx: Any, data: Any) -> Any:
            self.recorded.append(data)
            return data

        hub.on("echo", lambda ctx, data: data)
        hub.on("record", record)
        hub.on("big", lambda ctx, size: "x" * size)
        hub.on("size", lambda ctx, data: len(data))
        # Spies on the fast path: frames it took and frames it wrote.
        self.taken: list[tuple[bool, bytes]] = []
        self.written: list[tuple[bool, int]] = []
        read, write = framing.read_simple_frame, framing.frame

        def read_spy(buffer: bytes, start: int, limit: int) -> tuple[int, bool, bytes] | None:
            result = read(buffer, start, limit)
            if result is not None:
                self.taken.append((result[1], result[2]))
            return result

        def write_spy(payload: bytes, is_binary: bool) -> bytes:
            self.written.append((is_binary, len(payload)))
            return write(payload, is_binary)

        self.patch(framing, "read_simple_frame", read_spy)
        self.patch(framing, "frame", write_spy)

    async def session(self, binary: bool = False) -> RawPeer:
        request = upgrade_request()
        if binary:
            request = request.replace(JSON_SUBPROTOCOL.encode(), MSGPACK_SUBPROTOCOL.encode())
        peer = await self.raw_ws(request)
        peer.write(data_frame(envelope("hello", "hello-1", data={}), binary))
        welcome = await self.reply(peer, "hello-1")
        self.assertEqual(welcome["type"], "welcome", welcome)
        return peer

    def frames(self, peer: RawPeer) -> list[Parsed]:
        data = bytes(peer.data)
        end = data.find(b"\r\n\r\n")
        assert end >= 0, data
        frames, _ = parse_frames(data[end + 4 :])
        return frames

    def messages(self, peer: RawPeer) -> list[Message]:
        decoded: list[Message] = []
        for parsed in self.frames(peer):
            if parsed.opcode == 0x1:
                decoded.append(json.loads(parsed.payload))
            elif parsed.opcode == 0x2:
                decoded.append(msgpack.unpackb(parsed.payload))
        return decoded

    def find(self, peer: RawPeer, ref: str) -> Message | None:
        for message in self.messages(peer):
            if message.get("ref") == ref:
                return message
        return None

    async def reply(self, peer: RawPeer, ref: str) -> Message:
        await wait_until(
            lambda: self.find(peer, ref) is not None or peer.lost.called, what=f"reply to {ref}"
        )
        message = self.find(peer, ref)
        assert message is not None, (ref, self.messages(peer), peer.close_code)
        return message

    async def replies(self, peer: RawPeer, refs: Sequence[str]) -> list[Message]:
        """The answers to ``refs``, in the order the server sent them."""
        wanted = set(refs)

        def answered() -> list[Message]:
            return [m for m in self.messages(peer) if m.get("ref") in wanted]

        await wait_until(
            lambda: len(answered()) >= len(wanted) or peer.lost.called, what="all replies"
        )
        return answered()

    async def closed(self, peer: RawPeer) -> int | None:
        await peer.lost
        return peer.close_code

    def only_protocol(self) -> WarpSocketServerProtocol:
        (protocol,) = self.gate.protocols.values()
        return protocol

    async def server_read(self, protocol: WarpSocketServerProtocol, octets: int) -> None:
        """Until the server has read ``octets`` octets since the WebSocket opened."""
        await wait_until(
            lambda: protocol.trafficStats.incomingOctetsWireLevel >= octets,
            what=f"{octets} octets read",
        )

    def assert_results(self, answers: list[Message], expected: list[tuple[str, Any]]) -> None:
        self.assertEqual(
            [(m["type"], m["ref"], m.get("data")) for m in answers],
            [("result", ref, data) for ref, data in expected],
        )


class BatchAndSplitTests(FramingWireCase):
    @async_test
    async def test_fifty_calls_in_one_write_answered_in_order(self) -> None:
        self.start()
        peer = await self.session()
        taken_before = len(self.taken)
        refs = [f"c{i}" for i in range(50)]
        peer.write(b"".join(call(ref, data=i) for i, ref in enumerate(refs)))
        answers = await self.replies(peer, refs)
        self.assert_results(answers, [(ref, i) for i, ref in enumerate(refs)])
        self.assertEqual(len(self.taken) - taken_before, 50, "all 50 taken by the fast path")
        self.assertIsNone(peer.close_code)

    @async_test
    async def test_one_frame_split_byte_by_byte(self) -> None:
        self.start()
        peer = await self.session()
        protocol = self.only_protocol()
        data = call("split", data="s" * 150)  # a 16-bit length: a 4-octet header
        self.assertEqual(data[1], 0x80 | 126)
        start = protocol.trafficStats.incomingOctetsWireLevel
        for index in range(len(data)):
            peer.write(data[index : index + 1])
            # The server has read this octet before the next one is sent.
            await self.server_read(protocol, start + index + 1)
        answer = await self.reply(peer, "split")
        self.assertEqual((answer["type"], answer["data"]), ("result", "s" * 150))
        # Not corrupted for what follows: the fast path takes the next frames.
        taken_before = len(self.taken)
        peer.write(call("after-1") + call("after-2"))
        answers = await self.replies(peer, ["after-1", "after-2"])
        self.assert_results(answers, [("after-1", None), ("after-2", None)])
        self.assertEqual(len(self.taken) - taken_before, 2)

    @async_test
    async def test_a_frame_split_across_two_writes_after_a_whole_one(self) -> None:
        self.start()
        peer = await self.session()
        protocol = self.only_protocol()
        for cut in (1, 2, 3, 5, 8, 9, 200, -1):
            refs = [f"w1-{cut}", f"w2-{cut}", f"w3-{cut}"]
            first, third = call(refs[0], data=1), call(refs[2], data=3)
            second = call(refs[1], data="z" * 300)
            before = protocol.trafficStats.incomingOctetsWireLevel
            peer.write(first + second[:cut])
            await self.server_read(protocol, before + len(first + second[:cut]))
            peer.write(second[cut:] + third)
            answers = await self.replies(peer, refs)
            expected = [(refs[0], 1), (refs[1], "z" * 300), (refs[2], 3)]
            self.assert_results(answers, expected)


class MidFrameTests(FramingWireCase):
    @async_test
    async def test_the_rest_of_a_started_frame_is_never_read_as_a_new_frame(self) -> None:
        # The outer frame's mask is chosen so that its payload, from the cut
        # on, reads on the wire as a whole empty masked text frame (81 80 + mask).
        self.start()
        peer = await self.session()
        protocol = self.only_protocol()
        payload = encode(envelope("call", "outer", event="record", data="o" * 150), False)
        offset = 40  # into the payload, after the 8-octet header (and the mask)
        mask = bytearray(b"\x55\x55\x55\x55")
        mask[offset % 4] = payload[offset] ^ 0x81
        mask[(offset + 1) % 4] = payload[offset + 1] ^ 0x80
        outer = client_frame(payload, mask=bytes(mask))
        cut = 8 + offset
        self.assertEqual(outer[1], 0x80 | 126)
        self.assertEqual(outer[cut : cut + 2], b"\x81\x80")
        before = protocol.trafficStats.incomingOctetsWireLevel
        peer.write(outer[:cut])
        await self.server_read(protocol, before + cut)
        peer.write(outer[cut:] + call("after", "record", "after"))
        answers = await self.replies(peer, ["outer", "after"])
        self.assert_results(answers, [("outer", "o" * 150), ("after", "after")])
        self.assertEqual([m["type"] for m in self.messages(peer)].count("error"), 0)
        self.assertEqual(self.recorded, ["o" * 150, "after"])

    @async_test
    async def test_the_rest_of_a_started_ping_is_never_read_as_a_new_frame(self) -> None:
        # A control frame is not inside a message: only Autobahn's current
        # frame says that the next octets are its payload.
        self.start()
        peer = await self.session()
        protocol = self.only_protocol()
        body = b"ping-" + b"\x81\x80" + b"\x00" * 4 + b"-tail"
        ping = client_frame(body, 0x9, mask=b"\x00\x00\x00\x00")
        cut = 6 + 5  # header, mask, then "ping-"
        self.assertEqual(ping[cut : cut + 2], b"\x81\x80")
        before = protocol.trafficStats.incomingOctetsWireLevel
        peer.write(ping[:cut])
        await self.server_read(protocol, before + cut)
        peer.write(ping[cut:] + call("after", "record", "after"))
        answer = await self.reply(peer, "after")
        self.assertEqual(answer["type"], "result", answer)
        pongs = [f.payload for f in self.frames(peer) if f.opcode == 0xA]
        self.assertEqual(pongs, [body])
        self.assertEqual([m["type"] for m in self.messages(peer)], ["welcome", "result"])
        self.assertEqual(self.recorded, ["after"])


class MixedFrameTests(FramingWireCase):
    @async_test
    async def test_simple_ping_fragments_simple_in_one_write(self) -> None:
        self.start()
        peer = await self.session()
        fragmented = encode(envelope("call", "m2", event="echo", data="fragmented"), False)
        half = len(fragmented) // 2
        peer.write(
            call("m1", data="first")
            + client_frame(b"are you there", 0x9)
            + client_frame(fragmented[:half], 0x1, fin=False)
            + client_frame(fragmented[half:], 0x0, fin=True)
            + call("m3", data="last")
        )
        await self.replies(peer, ["m1", "m2", "m3"])
        kinds: list[tuple[int, Any]] = []
        for parsed in self.frames(peer)[1:]:  # after the welcome
            if parsed.opcode == 0xA:
                kinds.append((0xA, parsed.payload))
            else:
                message = json.loads(parsed.payload)
                kinds.append((parsed.opcode, (message["ref"], message["data"])))
        self.assertEqual(
            kinds,
            [
                (0x1, ("m1", "first")),
                (0xA, b"are you there"),
                (0x1, ("m2", "fragmented")),
                (0x1, ("m3", "last")),
            ],
        )
        self.assertIsNone(peer.close_code)

    @async_test
    async def test_fragment_right_after_a_simple_frame_with_a_ping_inside(self) -> None:
        # The fast path itself meets the FIN=0 frame (no control frame before it).
        self.start()
        peer = await self.session()
        fragmented = encode(envelope("call", "f2", event="echo", data="in two"), False)
        peer.write(
            call("f1", data=1)
            + client_frame(fragmented[:10], 0x1, fin=False)
            + client_frame(b"inside", 0x9)  # control frames may interleave (RFC 6455 5.4)
            + client_frame(fragmented[10:], 0x0, fin=True)
            + call("f3", data=3)
        )
        answers = await self.replies(peer, ["f1", "f2", "f3"])
        self.assert_results(answers, [("f1", 1), ("f2", "in two"), ("f3", 3)])
        pongs = [f.payload for f in self.frames(peer) if f.opcode == 0xA]
        self.assertEqual(pongs, [b"inside"])
        self.assertEqual([m["type"] for m in self.messages(peer)].count("error"), 0)
        self.assertIsNone(peer.close_code)

    @async_test
    async def test_continuation_in_a_later_write_and_a_whole_frame_inside_a_message(
        self,
    ) -> None:
        self.start()
        peer = await self.session()
        protocol = self.only_protocol()
        fragmented = encode(envelope("call", "later", event="record", data="x"), False)
        before = protocol.trafficStats.incomingOctetsWireLevel
        opening = client_frame(fragmented[:7], 0x1, fin=False)
        peer.write(opening)
        await self.server_read(protocol, before + len(opening))
        peer.write(client_frame(fragmented[7:], 0x0, fin=True))
        self.assertEqual((await self.reply(peer, "later"))["data"], "x")
        # A new data frame while a message is still open is a protocol error.
        before = protocol.trafficStats.incomingOctetsWireLevel
        opening = client_frame(b'{"type":', 0x1, fin=False)
        peer.write(opening)
        await self.server_read(protocol, before + len(opening))
        peer.write(call("inside", "record", "inside"))
        self.assertEqual(await self.closed(peer), 1002)
        self.assertIsNone(self.find(peer, "inside"))
        self.assertEqual(self.recorded, ["x"])

    @async_test
    async def test_binary_fragments_then_simple_frames(self) -> None:
        self.start()
        peer = await self.session(binary=True)
        payload = encode(envelope("call", "b1", event="echo", data=[1, 2, 3]), True)
        peer.write(
            client_frame(payload[:3], 0x2, fin=False)
            + client_frame(b"", 0xA)  # an unsolicited pong, ignored
            + client_frame(payload[3:], 0x0, fin=True)
            + call("b2", data={"k": "v"}, binary=True)
        )
        answers = await self.replies(peer, ["b1", "b2"])
        self.assert_results(answers, [("b1", [1, 2, 3]), ("b2", {"k": "v"})])


class HandedToAutobahnTests(FramingWireCase):
    @async_test
    async def test_invalid_utf8_after_a_good_frame_closes_1007(self) -> None:
        self.start()
        for bad in (b"\xed\xa0\x80", b"\xc0\xaf"):
            peer = await self.session()
            peer.write(call("good", "record", "ok") + client_frame(b'"' + bad + b'"', 0x1))
            self.assertEqual(await self.closed(peer), 1007, bad)
            answer = self.find(peer, "good")
            assert answer is not None
            self.assertEqual((answer["type"], answer["data"]), ("result", "ok"))
        self.assertEqual(self.recorded, ["ok", "ok"])

    @async_test
    async def test_invalid_utf8_in_a_binary_frame_reaches_the_codec(self) -> None:
        self.start()
        peer = await self.session(binary=True)
        peer.write(client_frame(b"\xc1\xed\xa0\x80", 0x2) + call("next", binary=True, data=1))
        answer = await self.reply(peer, "next")
        self.assertEqual(answer["type"], "result")
        error = [m for m in self.messages(peer) if m["type"] == "error"]
        self.assertEqual(len(error), 1, self.messages(peer))
        self.assertIsNone(peer.close_code)

    @async_test
    async def test_unmasked_frame_closes_1002(self) -> None:
        self.start()
        for binary in (False, True):
            peer = await self.session(binary)
            payload = encode(envelope("call", "u", event="record", data=1), binary)
            unmasked = client_frame(payload, 0x2 if binary else 0x1, masked=False)
            # Followed by more frames, so that an unmasked frame misread as a
            # masked one would be complete (and binary is not checked for UTF-8).
            peer.write(
                call("good", "record", 0, binary) + unmasked + call("next", "record", 2, binary)
            )
            self.assertEqual(await self.closed(peer), 1002, binary)
            self.assertIsNotNone(self.find(peer, "good"))
            self.assertIsNone(self.find(peer, "u"))
            self.assertIsNone(self.find(peer, "next"))
            self.assertEqual([m["type"] for m in self.messages(peer)], ["welcome", "result"])
        self.assertEqual(self.recorded, [0, 0])

    @async_test
    async def test_non_minimal_length_closes_1002(self) -> None:
        self.start()
        peer = await self.session()
        payload = encode(envelope("call", "n", event="record", data=1), False)
        self.assertLess(len(payload), 126)
        peer.write(client_frame(payload, form=16))
        self.assertEqual(await self.closed(peer), 1002)
        self.assertEqual(self.recorded, [])

    @async_test
    async def test_over_the_limit_with_a_16_bit_length_closes_1009(self) -> None:
        limit = 2048
        self.start(CoreOptions(**{**QUIET.__dict__, "max_message_size": limit}))
        peer = await self.session()

        def sized(ident: str, size: int) -> bytes:
            message = envelope("call", ident, event="size", data="")
            filler = size - len(encode(message, False))
            message["data"] = "f" * filler
            payload = encode(message, False)
            self.assertEqual(len(payload), size)
            return client_frame(payload)

        peer.write(sized("at-limit", limit))
        answer = await self.reply(peer, "at-limit")
        self.assertEqual(answer["type"], "result", answer)
        over = sized("over", limit + 1)
        self.assertEqual(over[1], 0x80 | 126)
        peer.write(over)
        self.assertEqual(await self.closed(peer), 1009)
        self.assertIsNone(self.find(peer, "over"))

    @async_test
    async def test_a_frame_after_the_close_frame_is_not_delivered(self) -> None:
        self.start()
        peer = await self.session()
        peer.write(call("before", "record", "before"))
        await self.reply(peer, "before")
        close = client_frame((1000).to_bytes(2, "big") + b"bye", 0x8)
        peer.write(close + call("after", "record", "after"))
        self.assertEqual(await self.closed(peer), 1000)
        await wait_until(lambda: self.hub.connection_count == 0, what="detached")
        self.assertEqual(self.recorded, ["before"])
        self.assertIsNone(self.find(peer, "after"))
        data_after_close = [f for f in self.frames(peer) if f.opcode in (0x1, 0x2)]
        self.assertEqual(len(data_after_close), 2)  # the welcome and "before"'s result

    @async_test
    async def test_shared_helper_frames_with_a_zero_mask(self) -> None:
        # test_security's ``frame`` (mask 0) takes the same path as a random mask.
        self.start()
        peer = await self.session()
        payload = encode(envelope("call", "z", event="echo", data="zero"), False)
        peer.write(frame(payload) + frame(b"\x03\xe8", 0x8))
        self.assertEqual(await self.closed(peer), 1000)
        answer = self.find(peer, "z")
        assert answer is not None
        self.assertEqual(answer["data"], "zero")


class MsgpackAndOutboundTests(FramingWireCase):
    @async_test
    async def test_msgpack_binary_frames_take_the_fast_path(self) -> None:
        self.start()
        peer = await self.session(binary=True)
        self.assertIn((True, encode(envelope("hello", "hello-1", data={}), True)), self.taken)
        taken_before = len(self.taken)
        refs = [f"p{i}" for i in range(10)]
        peer.write(b"".join(call(ref, data=[i, "ünï"], binary=True) for i, ref in enumerate(refs)))
        answers = await self.replies(peer, refs)
        self.assert_results(answers, [(ref, [i, "ünï"]) for i, ref in enumerate(refs)])
        self.assertEqual([binary for binary, _ in self.taken[taken_before:]], [True] * 10)
        frames = self.frames(peer)
        self.assertTrue(frames)
        self.assertEqual({f.opcode for f in frames}, {0x2})

    async def check_outbound(self, binary: bool) -> None:
        self.start()
        peer = await self.session(binary=binary)
        sizes = [0, 10, 200, 65_000, 70_000, 300_000]
        refs = [f"big{size}" for size in sizes]
        peer.write(b"".join(call(r, "big", s, binary) for r, s in zip(refs, sizes, strict=True)))
        answers = await self.replies(peer, refs)
        self.assert_results(answers, [(r, "x" * s) for r, s in zip(refs, sizes, strict=True)])
        frames = self.frames(peer)
        forms = set()
        for parsed in frames:
            self.assertTrue(parsed.fin)
            self.assertEqual(parsed.rsv, 0)
            self.assertFalse(parsed.masked, "a server must not mask")
            self.assertEqual(parsed.opcode, 0x2 if binary else 0x1)
            self.assertEqual(parsed.form, minimal_form(len(parsed.payload)))
            forms.add(parsed.form)
        self.assertEqual(forms, {7, 16, 64})
        # All of them were written by framing.frame.
        written = [(b, n) for b, n in self.written if n > 60_000]
        self.assertEqual(len(written), 3, self.written)
        self.assertTrue(all(b is binary for b, _ in self.written))
        # Payloads of exactly the boundary sizes, and their headers.
        first = 0x82 if binary else 0x81
        boundaries = {
            125: bytes([first, 125]),
            126: bytes([first, 126, 0, 126]),
            65_535: bytes([first, 126, 0xFF, 0xFF]),
            65_536: bytes([first, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        }
        for target, header in boundaries.items():
            parsed = await self.exact_payload(peer, binary, target)
            self.assertEqual(parsed.header, header, target)

    @async_test
    async def test_fanned_out_prepared_frames(self) -> None:
        # Broadcasts go out as Autobahn's prepared frames, written directly.
        self.start()
        json_peer = await self.session(binary=False)
        msgpack_peer = await self.session(binary=True)
        sizes = (5, 200, 70_000)
        for size in sizes:
            await self.hub.broadcast("news", "n" * size)
        for peer, opcode in ((json_peer, 0x1), (msgpack_peer, 0x2)):
            news = await self.news(peer, len(sizes))
            self.assertEqual([m["data"] for _, m in news], ["n" * size for size in sizes])
            forms = []
            for parsed, _ in news:
                self.assertTrue(parsed.fin)
                self.assertEqual(parsed.rsv, 0)
                self.assertFalse(parsed.masked)
                self.assertEqual(parsed.opcode, opcode)
                self.assertEqual(parsed.form, minimal_form(len(parsed.payload)))
                forms.append(parsed.form)
            self.assertEqual(forms[-1], 64)  # (a stream event never fits 7 bits)

    async def news(self, peer: RawPeer, count: int) -> list[tuple[Parsed, Message]]:
        """The server's frames carrying a ``news`` event, once there are ``count``."""

        def news() -> list[tuple[Parsed, Message]]:
            decoded = [(f, self.decode(f)) for f in self.frames(peer)]
            return [(f, m) for f, m in decoded if m.get("event") == "news"]

        await wait_until(lambda: len(news()) >= count, what="broadcasts")
        return news()

    async def exact_payload(self, peer: RawPeer, binary: bool, target: int) -> Parsed:
        """The server's frame answering a ``big`` call whose payload is ``target`` octets."""
        size = target - 80
        seen: list[int] = []
        for attempt in range(6):
            ref = f"exact-{target}-{attempt}"
            peer.write(call(ref, "big", size, binary))
            await self.reply(peer, ref)
            (parsed,) = [f for f in self.frames(peer) if self.decode(f).get("ref") == ref]
            seen.append(len(parsed.payload))
            if len(parsed.payload) == target:
                return parsed
            size += target - len(parsed.payload)
        self.fail(f"no payload of {target} octets: {seen}")

    def decode(self, parsed: Parsed) -> Message:
        if parsed.opcode == 0x2:
            return dict(msgpack.unpackb(parsed.payload))
        return dict(json.loads(parsed.payload))

    @async_test
    async def test_json_frames_from_the_server(self) -> None:
        await self.check_outbound(binary=False)

    @async_test
    async def test_msgpack_frames_from_the_server(self) -> None:
        await self.check_outbound(binary=True)
