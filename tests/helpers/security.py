"""Shared by the security test modules: tokens, raw TCP peers, raw frames, the
secure-server fixture."""

from __future__ import annotations

import base64
import os
import socket
from collections.abc import Sequence
from typing import Any, cast

import jwt
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from tests.wsclient import (
    JSON_SUBPROTOCOL,
    HandshakeRefusedError,
    Message,
    ServerTestCase,
    WsClient,
    _Factory,
    wait_until,
)
from warpsocket.core.server import CoreOptions
from warpsocket.server.hub import Hub, HubOptions
from warpsocket.server.middleware import Middleware
from warpsocket.server.protocol import WarpSocketServerProtocol
from warpsocket.server.security import SecurityOptions
from warpsocket.server.security.gate import Gate
from warpsocket.server.security.limits import transport_chain
from warpsocket.server.service import WarpSocketService

SECRET = b"s" * 48


# Timers that must not interfere: heartbeats and the hello timeout far away.
QUIET = CoreOptions(
    heartbeat_interval_ms=1_000_000,
    heartbeat_timeout_ms=2_000_000,
    handshake_timeout_ms=1_000_000,
)


def hs256(**claims: Any) -> str:
    return jwt.encode(claims, SECRET, algorithm="HS256")


# ---------------------------------------------------------------- raw TCP peers


class RawPeer(Protocol):
    """Bytes in, bytes out; parses the server's frames once upgraded."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.lost: Deferred[None] = Deferred()
        self.close_code: int | None = None
        self._frames_at: int | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data.extend(data)
        if self._frames_at is None:
            end = self.data.find(b"\r\n\r\n")
            if end >= 0 and self.data.startswith(b"HTTP/1.1 101"):
                self._frames_at = end + 4
        if self._frames_at is not None and self.close_code is None:
            self._scan_frames()

    def _scan_frames(self) -> None:
        assert self._frames_at is not None
        view = bytes(self.data[self._frames_at :])
        at = 0
        while len(view) - at >= 2:
            opcode, length = view[at] & 0x0F, view[at + 1] & 0x7F
            head = 2
            if length == 126:
                length, head = int.from_bytes(view[at + 2 : at + 4], "big"), 4
            elif length == 127:
                length, head = int.from_bytes(view[at + 2 : at + 10], "big"), 10
            if len(view) - at < head + length:
                return
            if opcode == 0x8:
                self.close_code = int.from_bytes(view[at + head : at + head + 2], "big")
                assert self.transport is not None
                self.transport.loseConnection()
                return
            at += head + length

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.lost.callback(None)

    @property
    def status(self) -> tuple[int, str] | None:
        end = self.data.find(b"\r\n")
        if end < 0:
            return None
        _, code, reason = bytes(self.data[:end]).decode("latin-1").split(" ", 2)
        return int(code), reason

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


def upgrade_request(
    path: str = "/ws",
    origin: str | None = None,
    headers: dict[str, str] | None = None,
    extensions: str | None = None,
) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Protocol: " + JSON_SUBPROTOCOL,
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    if extensions is not None:
        lines.append(f"Sec-WebSocket-Extensions: {extensions}")
    lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def frame(
    payload: bytes,
    opcode: int = 0x1,
    *,
    fin: bool = True,
    rsv1: bool = False,
    declared: int | None = None,
) -> bytes:
    """A masked client frame (mask key 0: the payload goes out as is)."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    length = len(payload) if declared is None else declared
    if length < 126:
        header = bytes([first, 0x80 | length])
    elif length < 65_536:
        header = bytes([first, 0x80 | 126]) + length.to_bytes(2, "big")
    else:
        header = bytes([first, 0x80 | 127]) + length.to_bytes(8, "big")
    return header + b"\x00\x00\x00\x00" + payload


# ---------------------------------------------------------------- fixture


class SecureTestCase(ServerTestCase):
    """ServerTestCase with ``SecurityOptions`` and raw-socket helpers."""

    def start_secure(
        self,
        security: SecurityOptions | None = None,
        core: CoreOptions = QUIET,
        *,
        open_rooms: bool = False,
        middleware: Sequence[Middleware] = (),
        endpoints: Sequence[str] = ("tcp:0:interface=127.0.0.1",),
        **hub_kwargs: Any,
    ) -> Hub:
        self.clock = Clock()
        self.clients: list[WsClient] = []
        self.raw_peers: list[RawPeer] = []
        options = HubOptions(
            core=core,
            open_rooms=open_rooms,
            shutdown_timeout=3.0,
            security=security if security is not None else SecurityOptions(),
        )
        self.hub = Hub(options, clock=self.clock, middleware=middleware, **hub_kwargs)
        self.service = WarpSocketService(self.hub, endpoints)
        self.service.startService()
        self.addCleanup(self._stop_server)
        self.addCleanup(self._drop_raw)
        self.port = self.service.ports[0].getHost().port
        self.hub.on("whoami", lambda ctx, data: {"user": ctx.user, **ctx.annotations})
        return self.hub

    @property
    def gate(self) -> Gate:
        return cast(Any, self.service.site).gate  # type: ignore[no-any-return]

    async def _drop_raw(self) -> None:
        for peer in self.raw_peers:
            if not peer.lost.called and peer.transport is not None:
                peer.transport.abortConnection()  # type: ignore[attr-defined]
            await peer.lost

    async def raw(self, data: bytes = b"") -> RawPeer:
        peer = RawPeer()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), peer)
        self.raw_peers.append(peer)
        if data:
            peer.write(data)
        return peer

    async def raw_status(self, data: bytes) -> tuple[int, str]:
        """Send ``data``; the status line of the answer (101 or a refusal)."""
        peer = await self.raw(data)
        await wait_until(lambda: peer.status is not None or peer.lost.called, what="status")
        status = peer.status
        assert status is not None, bytes(peer.data)
        return status

    async def raw_ws(self, request: bytes | None = None) -> RawPeer:
        peer = await self.raw(request or upgrade_request())
        await wait_until(lambda: b"\r\n\r\n" in peer.data or peer.lost.called, what="upgrade")
        self.assertEqual(peer.status and peer.status[0], 101, bytes(peer.data))
        return peer

    async def open(
        self,
        *,
        origin: str | None = None,
        headers: dict[str, str] | None = None,
        path: str = "/ws",
    ) -> WsClient:
        """A WebSocket (no hello yet), with an Origin and headers if given."""
        client = WsClient(self.clock)
        factory = _Factory(client, f"ws://127.0.0.1:{self.port}{path}", [JSON_SUBPROTOCOL])
        factory.origin = origin
        factory.headers = headers or {}
        connecting = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port).connect(factory)
        connecting.addErrback(lambda f: client.opened.called or client.opened.errback(f))
        opened = await client.opened
        self.clients.append(opened)
        return opened

    async def refused(self, **kwargs: Any) -> HandshakeRefusedError:
        with self.assertRaises(HandshakeRefusedError) as caught:
            await self.open(**kwargs)
        return caught.exception

    async def hello_with(self, client: WsClient, token: Any = None, **data: Any) -> Message:
        """Say hello (with a token if given); records the session like ``hello``."""
        if token is not None:
            data["token"] = token
        answer = await client.request({"type": "hello", "data": data})
        if answer["type"] == "welcome":
            client.session = answer["data"]["session"]
            client.welcome = answer
        return answer

    async def closed_after_hello(self, token: Any, **open_kwargs: Any) -> int | None:
        client = await self.open(**open_kwargs)
        client.send({"type": "hello", "data": {"token": token} if token is not None else {}})
        code, _ = await client.wait_closed()
        return code

    async def whoami(self, client: WsClient) -> dict[str, Any]:
        reply = await client.request({"type": "call", "event": "whoami"})
        self.assertEqual(reply["type"], "result", reply)
        return cast(dict[str, Any], reply["data"])

    def server_protocol(self, client: WsClient) -> WarpSocketServerProtocol:
        assert client.session is not None
        info = self.hub.core.sessions.get(client.session)
        assert info is not None and info.conn is not None
        return self.gate.protocols[info.conn]

    def shrink_buffers(self, client: WsClient) -> WarpSocketServerProtocol:
        """Small socket buffers on both ends, so that a frozen reader backs up fast."""
        server_side = self.server_protocol(client)
        transport_chain(server_side.transport)[-1].getHandle().setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4_096
        )
        assert client.protocol is not None and client.protocol.transport is not None
        client.protocol.transport.getHandle().setsockopt(  # type: ignore[attr-defined]
            socket.SOL_SOCKET, socket.SO_RCVBUF, 4_096
        )
        return server_side

    def reason(self, error: HandshakeRefusedError) -> str:
        return error.reason.rsplit("]: ", 1)[-1]
