"""Attacks that once got through (issue 19), over real sockets on 127.0.0.1.

Two kinds of test: against a ``twist warpsocket`` process (the floods,
which need real time and the server's own memory: its VmRSS is read from
``/proc/<pid>/status`` while the attack runs), and against an in-process
server whose hub runs on a ``Clock`` (every rule that depends on time).
The figures the process tests print are the ones docs/security.md quotes.
"""

from __future__ import annotations

import errno
import json
import os
import select
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

import jwt
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThread
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests.helpers.processes import ServerProcess, free_port
from tests.helpers.security import SECRET, SecureTestCase, frame, upgrade_request
from tests.wsclient import async_test, http_get, sleep, wait_until
from warpsocket.server.cli import Options, makeService
from warpsocket.server.security import JWTAuthenticator, SecurityOptions
from warpsocket.server.security.limits import buffered_bytes
from warpsocket.server.security.outbound import BACKLOG_CLOSE_TIMEOUT, CLOSE_HANDSHAKE_TIMEOUT
from warpsocket.server.security.ratelimit import Refusals
from warpsocket.server.service import EndpointListener

REPO = Path(__file__).resolve().parent.parent
MiB = 1_048_576
PING = 0x9
PONG = 0xA
CONTINUATION = 0x0
HELLO = json.dumps({"type": "hello", "id": "h1", "timestamp": 0, "data": {}}).encode()
# A message the server answers with nothing (a heartbeat reply): a flood of
# them shows exactly what the rate limiter writes back.
QUIET_MESSAGE = json.dumps({"type": "heartbeat", "id": "x1", "timestamp": 0, "ref": "n-1"}).encode()


def rss_kib(pid: int) -> int:
    """The resident set size of process ``pid`` (VmRSS), in KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def server_frames(data: bytes) -> tuple[list[tuple[int, bytes]], int]:
    """The complete unmasked frames at the start of ``data``: ([(opcode, payload)], used)."""
    frames: list[tuple[int, bytes]] = []
    at = 0
    while len(data) - at >= 2:
        opcode, length = data[at] & 0x0F, data[at + 1] & 0x7F
        head = 2
        if length == 126:
            if len(data) - at < 4:
                break
            length, head = struct.unpack("!H", data[at + 2 : at + 4])[0], 4
        elif length == 127:
            if len(data) - at < 10:
                break
            length, head = struct.unpack("!Q", data[at + 2 : at + 10])[0], 10
        if len(data) - at < head + length:
            break
        frames.append((opcode, data[at + head : at + head + length]))
        at += head + length
    return frames, at


def close_code(payload: bytes) -> int | None:
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


# ---------------------------------------------------------------- blocking attackers
# They run in a thread (deferToThread): the server is another process, and
# a blocking socket is what an attacker's script would use.


def open_websocket(port: int, rcvbuf: int | None = None) -> tuple[socket.socket, bytes]:
    """A WebSocket after its hello's welcome; (socket, bytes read past the welcome)."""
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(upgrade_request())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    head, _, data = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    sock.sendall(frame(HELLO))
    while True:
        frames, used = server_frames(data)
        if frames:
            assert json.loads(frames[0][1])["type"] == "welcome", frames
            return sock, data[used:]
        chunk = sock.recv(4096)
        assert chunk
        data += chunk


def pinger(port: int, pid: int, seconds: float) -> dict[str, float]:
    """Ping as fast as the server takes them, never read: the figures of the attack."""
    sock, _ = open_websocket(port, rcvbuf=4096)
    before = rss_kib(pid)
    burst = frame(b"p" * 125, PING) * 100
    peak = before
    start = time.monotonic()
    closed_after = -1.0
    at_close = -1
    sent = 0
    while time.monotonic() - start < seconds:
        try:
            sock.sendall(burst)
        except TimeoutError:
            break  # the server stopped reading for 10 s: a failure (closed_after < 0)
        except OSError as error:  # reset: the server aborted the connection
            assert error.errno in (errno.ECONNRESET, errno.EPIPE), error
            closed_after = time.monotonic() - start
            at_close = rss_kib(pid)
            break
        sent += len(burst)
        peak = max(peak, rss_kib(pid))
    sock.close()
    return {
        "rss_before_kib": before,
        "rss_peak_kib": peak,
        "rss_at_close_kib": at_close,
        "closed_after_s": closed_after,
        "sent_bytes": sent,
    }


def flooder(port: int, payload: bytes, opcode: int, seconds: float) -> dict[str, Any]:
    """Send ``payload`` frames as fast as possible while reading everything:
    the close code, when it came, and the bytes each way."""
    sock, pending = open_websocket(port)
    sock.setblocking(False)
    burst = frame(payload, opcode) * 200
    sent = received = 0
    out = b""
    start = time.monotonic()
    code: int | None = None
    closed_after = -1.0
    while time.monotonic() - start < seconds and code is None:
        readable, writable, _ = select.select([sock], [sock], [], 0.5)
        if readable:
            try:
                chunk = sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            received += len(chunk)
            pending += chunk
            frames, used = server_frames(pending)
            pending = pending[used:]
            for kind, body in frames:
                if kind == 0x8:
                    code = close_code(body)
                    closed_after = time.monotonic() - start
        if writable and code is None:
            if not out:
                out = burst
            try:
                written = sock.send(out)
            except BlockingIOError:
                continue
            except OSError:
                # Reset: what arrived before the reset can still be read.
                pending += drain(sock)
                for kind, body in server_frames(pending)[0]:
                    if kind == 0x8:
                        code = close_code(body)
                        closed_after = time.monotonic() - start
                break
            sent += written
            out = out[written:]
    sock.close()
    return {"code": code, "closed_after_s": closed_after, "sent": sent, "received": received}


def drain(sock: socket.socket) -> bytes:
    """What can still be read from ``sock`` (after a reset: what came before it)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except OSError:
            return data
        if not chunk:
            return data
        data += chunk


# ---------------------------------------------------------------- a twist process


class ProcessAttackTests(unittest.TestCase):
    """Floods against ``python -m twisted warpsocket`` (the documented server)."""

    timeout = 90

    async def serve(self, *args: str) -> tuple[int, int]:
        """Start the server with ``args``; (port, pid) once /healthz answers."""
        port = free_port()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
        process = ServerProcess()
        argv = [sys.executable, "-m", "twisted", "warpsocket"]
        argv += ["--endpoint", f"tcp:{port}:interface=127.0.0.1", "--heartbeat-interval", "300"]
        argv += ["--heartbeat-timeout", "600", *args]
        transport = reactor.spawnProcess(process, sys.executable, argv, env=env)

        async def stop() -> None:
            if not process.ended.called:
                transport.signalProcess("KILL")
                await process.ended

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        give_up = reactor.seconds() + 30
        while True:
            if process.ended.called:
                self.fail(f"server exited:\n{process.log()}")
            try:
                code, _, _ = await http_get(port, "/healthz")
            except (OSError, ConnectionRefusedError):
                code = 0
            if code == 200:
                break
            self.assertLess(reactor.seconds(), give_up, process.log())
            await sleep(0.1)
        pid = transport.pid
        assert pid is not None
        self.process = process
        return port, pid

    @async_test
    async def test_non_reading_pinger_closed_within_grace_rss_bounded(self) -> None:
        """Issue 19.2: pongs go through the outbound bound. The message rate is
        lifted here, so that only the bound can stop the pinger."""
        bound, grace = 1 * MiB, 2.0
        port, pid = await self.serve(
            "--max-outbound-buffer",
            str(bound),
            "--slow-consumer-grace",
            str(grace),
            "--message-rate",
            "10000000",
        )
        figures = await deferToThread(pinger, port, pid, 20.0)
        print(f"\nnon-reading pinger: {figures}", file=sys.stderr)
        # Closed (4201, then aborted as it never answers the close): the time
        # to fill the bound, the grace, and the slow consumer's close timeout.
        self.assertGreater(figures["closed_after_s"], 0, figures)
        limit = grace + BACKLOG_CLOSE_TIMEOUT + 5
        self.assertLess(figures["closed_after_s"], limit, figures)
        # What it cost the server: the bound, not what the pinger sent.
        growth = (figures["rss_peak_kib"] - figures["rss_before_kib"]) * 1024
        self.assertLess(growth, 4 * bound, figures)
        self.assertGreater(figures["sent_bytes"], 20 * bound, figures)
        self.assertNotIn("Traceback", self.process.log())

    @async_test
    async def test_ping_and_message_floods_closed_4200_server_writes_less(self) -> None:
        """Issue 19.2/19.3 at the default rate (1,000/s, burst 2,000): a flood
        of pings, or of messages, is closed with 4200 within a bounded time,
        and the server writes back less than the flood carried."""
        port, _ = await self.serve()
        for name, payload, opcode in (
            ("ping", b"p" * 8, PING),
            ("message", QUIET_MESSAGE, 0x1),
            ("pong", b"", PONG),
        ):
            figures = await deferToThread(flooder, port, payload, opcode, 15.0)
            print(f"\n{name} flood: {figures}", file=sys.stderr)
            self.assertEqual(figures["code"], 4200, (name, figures, self.process.log()))
            self.assertLess(figures["closed_after_s"], 5.0, (name, figures))
            self.assertLess(figures["received"], figures["sent"], (name, figures))
        self.assertNotIn("Traceback", self.process.log())


# ---------------------------------------------------------------- in process, on a Clock


class FramePeer(Protocol):
    """A raw WebSocket peer that records the server's frames and never
    answers a close (a peer that has died after reading it)."""

    def __init__(self) -> None:
        self.data = b""
        self.upgraded = False
        self.frames: list[tuple[int, bytes]] = []
        self.lost: Deferred[float] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if not self.upgraded:
            head, found, rest = self.data.partition(b"\r\n\r\n")
            if not found:
                return
            assert head.startswith(b"HTTP/1.1 101"), head
            self.upgraded, self.data = True, rest
        frames, used = server_frames(self.data)
        self.frames.extend(frames)
        self.data = self.data[used:]

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.lost.callback(reactor.seconds())

    def kinds(self, opcode: int) -> list[bytes]:
        return [body for kind, body in self.frames if kind == opcode]

    @property
    def close_code(self) -> int | None:
        closes = self.kinds(0x8)
        return close_code(closes[0]) if closes else None

    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(body) for body in self.kinds(0x1)]

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class ClockAttackTests(SecureTestCase):
    async def peer(self, *, hello: bool = True) -> FramePeer:
        peer = FramePeer()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), peer)
        self.addCleanup(self._drop, peer)
        peer.send(upgrade_request())
        await wait_until(lambda: peer.upgraded, what="upgrade")
        if hello:
            peer.send(frame(HELLO))
            await wait_until(lambda: len(peer.messages()) >= 1, what="welcome")
            self.assertEqual(peer.messages()[0]["type"], "welcome")
        return peer

    async def _drop(self, peer: FramePeer) -> None:
        if not peer.lost.called and peer.transport is not None:
            peer.transport.abortConnection()  # type: ignore[attr-defined]
        await peer.lost

    async def until_refused(self, peer: FramePeer, count: float) -> None:
        await wait_until(
            lambda: self.refused() >= count or peer.close_code is not None, what="refusals"
        )

    def refused(self) -> float:
        return self.metric("warpsocket_rate_limited_total", {"scope": "message"})

    @async_test
    async def test_pings_pongs_and_empty_fragments_count_against_the_rate(self) -> None:
        """With the clock stopped, a burst of 5 is all a connection gets: 4
        frames after its hello, then 5 refusals, and the 6th refusal closes."""
        self.start_secure(SecurityOptions(message_rate=5, message_burst=5))
        for name, first, then in (
            ("ping", frame(b"x", PING), frame(b"x", PING)),
            ("pong", frame(b"", PONG), frame(b"", PONG)),
            ("fragments", frame(b"{", fin=False), frame(b"", CONTINUATION, fin=False)),
        ):
            peer = await self.peer()
            await self.burst_then_close(peer, name, first, then)
            if name == "ping":
                self.assertEqual(peer.kinds(PONG), [b"x"] * 4)  # none for the refused ones

    async def burst_then_close(self, peer: FramePeer, name: str, first: bytes, then: bytes) -> None:
        before = self.refused()
        peer.send(first + then * 3)
        await sleep(0.05)
        self.assertIsNone(peer.close_code, name)
        self.assertEqual(self.refused(), before, name)
        peer.send(then * 5)
        await self.until_refused(peer, before + 5)
        self.assertIsNone(peer.close_code, name)
        peer.send(then)
        await wait_until(lambda: peer.close_code is not None, what=f"{name} closed")
        self.assertEqual(peer.close_code, 4200, name)

    @async_test
    async def test_a_flood_that_lets_the_bucket_refill_is_still_closed(self) -> None:
        """Issue 19.3: 3 messages per millisecond at 1,000/s: one accepted
        each time (a token refilled), two refused. Accepted messages in
        between must not reset the count: closed after a burst of refusals."""
        self.start_secure(SecurityOptions(message_rate=1000, message_burst=10))
        peer = await self.peer()
        peer.send(frame(QUIET_MESSAGE) * 9)  # the rest of the burst
        rounds = 0
        while peer.close_code is None:
            self.assertLess(rounds, 20, "never closed")
            self.clock.advance(0.001)
            before = self.refused()
            peer.send(frame(QUIET_MESSAGE) * 3)
            await self.until_refused(peer, before + 2)
            rounds += 1
        self.assertEqual(peer.close_code, 4200)
        self.assertEqual(rounds, 6)  # 11 refusals: 2 per round
        # Answers to refusals are paid by the bytes refused: never more written.
        # (the allowance of 512 bytes, plus the last answer that overdrew it).
        answers = [body for body in peer.kinds(0x1) if json.loads(body).get("code") == 4200]
        self.assertGreaterEqual(len(answers), 1)
        written = sum(len(body) + 2 for body in answers)
        paid = 512 + 12 * (len(QUIET_MESSAGE) + 6) + max(len(body) + 2 for body in answers)
        self.assertLessEqual(written, paid)
        self.assertLess(len(answers), 11)

    def test_refusals_rules(self) -> None:
        refusals = Refusals(burst=3, quiet=1.0, allowance=100)
        self.assertFalse(refusals.refused(0.1, 10))
        self.assertTrue(refusals.may_reply())  # the first refusal is answered
        refusals.replied(150)
        self.assertFalse(refusals.may_reply())  # the allowance is spent
        self.assertEqual([refusals.refused(0.1 * n, 10) for n in range(2, 4)], [False] * 2)
        self.assertFalse(refusals.may_reply())  # 30 bytes refused do not pay for 40 more
        self.assertTrue(refusals.refused(0.5, 10))  # the 4th in a row: close
        # A pause as long as the bucket's refill forgives.
        self.assertFalse(refusals.refused(1.6, 10))
        self.assertEqual(refusals.count, 1)
        self.assertTrue(refusals.may_reply())

    @async_test
    async def test_slow_consumer_gets_its_close_frame_at_once(self) -> None:
        """Issue 19.5: what a slow consumer has not been sent is dropped when it
        is closed with 4201, so the close frame is right behind what is on its
        way, and reaches the client as soon as it reads again."""
        self.start_secure(
            SecurityOptions(max_outbound_buffer=256 * 1024, slow_consumer_grace=1_000),
            open_rooms=True,
        )
        slow = await self.open()
        await slow.hello(rooms=["feed"])
        server_side = self.server_protocol(slow)
        slow.freeze()  # (the kernel's buffers fill first, then Twisted's)
        before = 0
        for n in range(4_000):
            before = buffered_bytes(server_side.transport)
            self.hub.publish("feed", "tick", {"n": n, "pad": "y" * 60_000})
            if not server_side.can_send:
                break  # this publish passed the hard cap (1 MiB): closed 4201
            await sleep(0.001)
        self.assertFalse(server_side.can_send)
        self.assertGreater(before, 3 * 256 * 1024)
        # Left before the close frame: the bytes already on their way (what
        # Twisted moved into its send slice), not the megabyte behind them.
        self.assertLess(buffered_bytes(server_side.transport), before / 2)
        slow.thaw()
        code, _ = await slow.wait_closed()
        self.assertEqual(code, 4201)
        seen = [m["data"]["n"] for m in slow.messages if m.get("event") == "tick"]
        self.assertEqual(seen, list(range(len(seen))))  # whole frames, in order, none cut

    @async_test
    async def test_a_peer_that_never_answers_a_close_loses_its_tcp_connection(self) -> None:
        """Issue 19.5: the close handshake timeout is Autobahn's 1 s, and kept
        to (txaio's batched timer would round it down to 0-1 s)."""
        self.start_secure(SecurityOptions())
        peer = await self.peer()
        peer.send(frame(b"x", 0x3))  # a reserved opcode: the server closes 1002
        await wait_until(lambda: peer.close_code is not None, what="close frame")
        closed_at = reactor.seconds()
        self.assertEqual(peer.close_code, 1002)
        lost_at = await peer.lost
        self.assertGreater(lost_at - closed_at, CLOSE_HANDSHAKE_TIMEOUT - 0.1)
        self.assertLess(lost_at - closed_at, CLOSE_HANDSHAKE_TIMEOUT + 0.5)
        self.assertEqual(CLOSE_HANDSHAKE_TIMEOUT, 1.0)

    @async_test
    async def test_a_close_behind_unsent_data_waits_longer(self) -> None:
        """The peer of a close frame that waits behind unsent data has to read
        its way to it first: 5 s (always after 4201)."""
        self.start_secure(
            SecurityOptions(max_outbound_buffer=256 * 1024, slow_consumer_grace=1_000),
            open_rooms=True,
        )
        slow = await self.open()
        await slow.hello(rooms=["feed"])
        server_side = self.server_protocol(slow)
        slow.freeze()
        for n in range(4_000):
            self.hub.publish("feed", "tick", {"n": n, "pad": "y" * 60_000})
            if not server_side.can_send:
                break
            await sleep(0.001)
        self.assertFalse(server_side.can_send)
        assert server_side.outbound is not None
        deadline = server_side.outbound.close_deadline
        assert deadline is not None
        self.assertGreater(deadline.getTime() - reactor.seconds(), 4.5)
        self.assertEqual(BACKLOG_CLOSE_TIMEOUT, 5.0)
        slow.thaw()
        code, _ = await slow.wait_closed()
        self.assertEqual(code, 4201)

    @async_test
    async def test_a_valid_hello_token_wins_over_a_bad_header_token(self) -> None:
        """Issue 19.5: docs/security.md says a hello token wins."""
        self.start_secure(SecurityOptions(authenticator=JWTAuthenticator(SECRET, ["HS256"])))
        self.clock.advance(1_000)
        good = jwt.encode({"sub": "alice", "exp": 5_000}, SECRET, algorithm="HS256")
        client = await self.open(headers={"Authorization": "Bearer not-a-token"})
        welcome = await self.hello_with(client, good)
        self.assertEqual(welcome["type"], "welcome")
        self.assertEqual((await self.whoami(client))["user"], "alice")
        # Without a hello token, the header's refusal stands.
        self.assertEqual(
            await self.closed_after_hello(None, headers={"Authorization": "Bearer not-a-token"}),
            4100,
        )

    @async_test
    async def test_proxy_v2_unix_source_is_the_proxy_itself(self) -> None:
        """Issue 19.5: an AF_UNIX source in a PROXY v2 header does not turn the
        address lists and per-address limits off: the proxy's address counts."""
        self.start_secure(
            SecurityOptions(deny_ips=("127.0.0.1",)),
            endpoints=("haproxy:tcp:0:interface=127.0.0.1",),
        )
        source = b"/run/client.sock".ljust(108, b"\0")
        header = b"\r\n\r\n\0\r\nQUIT\n" + bytes([0x21, 0x31]) + struct.pack("!H", 216)
        header += source + b"/run/proxy.sock".ljust(108, b"\0")
        self.assertEqual(
            await self.raw_status(header + upgrade_request()), (403, "4104 address_rejected")
        )

    @async_test
    async def test_proxy_v2_unix_source_counts_per_address(self) -> None:
        self.start_secure(endpoints=("haproxy:tcp:0:interface=127.0.0.1",))
        header = b"\r\n\r\n\0\r\nQUIT\n" + bytes([0x21, 0x31]) + struct.pack("!H", 216)
        header += b"/a".ljust(108, b"\0") + b"/b".ljust(108, b"\0")
        await self.raw_ws(header + upgrade_request())
        self.assertEqual(self.gate.per_address, {"127.0.0.1": 1})

    @async_test
    async def test_every_path_obeys_the_lists_behind_trusted_proxies(self) -> None:
        """Issue 19.5: /metrics and /healthz too, for the forwarded address."""
        self.start_secure(SecurityOptions(trusted_proxies=1, deny_ips=("203.0.113.0/24",)))
        for path in ("/metrics", "/healthz", "/", "/nothing"):
            request = (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "X-Forwarded-For: 203.0.113.9\r\nConnection: close\r\n\r\n"
            ).encode()
            self.assertEqual(await self.raw_status(request), (403, "4104 address_rejected"), path)
        allowed = (
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"X-Forwarded-For: 198.51.100.1\r\nConnection: close\r\n\r\n"
        )
        self.assertEqual(await self.raw_status(allowed), (200, "OK"))

    @async_test
    async def test_every_path_obeys_the_lists_without_proxies(self) -> None:
        self.start_secure(SecurityOptions(deny_ips=("127.0.0.1",)))
        request = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        self.assertEqual(await self.raw_status(request), (403, "4104 address_rejected"))


class MetricsEndpointTests(unittest.TestCase):
    @async_test
    async def test_metrics_on_their_own_endpoint_only(self) -> None:
        """Issue 19.5: ``--metrics-endpoint`` takes /metrics off the public port."""
        options = Options()
        options.parseOptions(
            [
                "--endpoint",
                "tcp:0:interface=127.0.0.1",
                "--metrics-endpoint",
                "tcp:0:interface=127.0.0.1",
            ]
        )
        service: Any = makeService(options)
        service.startService()
        self.addCleanup(service.stopService)
        public = service.ports[0].getHost().port
        listeners = [child for child in service if isinstance(child, EndpointListener)]
        internal = listeners[-1].port.getHost().port
        self.assertNotEqual(public, internal)
        self.assertEqual((await http_get(public, "/metrics"))[0], 404)
        self.assertEqual((await http_get(public, "/healthz"))[0], 200)
        code, body, _ = await http_get(internal, "/metrics")
        self.assertEqual(code, 200)
        self.assertIn(b"warpsocket_connections", body)

    def test_bad_metrics_endpoint_is_a_usage_error(self) -> None:
        with self.assertRaises(usage.UsageError) as caught:
            Options().parseOptions(["--metrics-endpoint", "nonsense:1"])
        self.assertIn("bad --metrics-endpoint", str(caught.exception))
