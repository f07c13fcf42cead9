"""A raw WebSocket test client for end-to-end tests of the WarpSocket server.

It speaks the wire protocol by hand (no reliability logic): tests send exact
envelopes, read back exactly what the server framed, and see the close code.

    client = yield connect(port)                # Deferred[WsClient]
    welcome = yield client.hello(rooms=["chat"])
    client.send({"type": "event", "event": "say", "data": 1})
    message = yield client.wait_for(lambda m: m["type"] == "ack")
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, cast

import msgpack
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionResponse
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionDone
from twisted.internet.error import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IReactorTime
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS, IResponse

from warpsocket.core.server import CoreOptions
from warpsocket.protocol.codecs import JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL
from warpsocket.server.hub import Hub, HubOptions
from warpsocket.server.middleware import Middleware
from warpsocket.server.protocol import WarpSocketServerProtocol
from warpsocket.server.service import WarpSocketService

Message = dict[str, Any]
Predicate = Callable[[Message], bool]

reactor: Any = _reactor
# Only a failing wait ever lasts this long; generous, so a loaded machine
# (CI shares its cores) is not mistaken for a lost message.
DEFAULT_TIMEOUT = 20.0
_ids = itertools.count(1)


def new_id(prefix: str = "t") -> str:
    return f"{prefix}-{next(_ids)}"


# Session id -> the resume token its welcome gave: tests resume sessions from
# new clients, as a real client would from its saved state.
RESUME_TOKENS: dict[str, str] = {}
KNOWN_TOKEN = object()  # hello(): present the token remembered for the session


class HandshakeRefusedError(Exception):
    """The server answered the WebSocket upgrade with an HTTP error status."""

    def __init__(self, status: int | None, reason: str) -> None:
        super().__init__(f"handshake refused ({status}): {reason}")
        self.status = status
        self.reason = reason


class ConnectFailedError(Exception):
    """The connection was lost before the WebSocket opened (e.g. a TLS failure)."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(f"connection failed: {failure.value!r}")
        self.failure = failure


_CONNECTION_DONE = Failure(ConnectionDone())
Closed = tuple[int | None, str | None]


class _Protocol(WebSocketClientProtocol):
    factory: _Factory

    def onConnect(self, response: ConnectionResponse) -> None:
        self.factory.client.subprotocol = response.protocol

    def onOpen(self) -> None:
        self.factory.client._opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.state != WebSocketProtocol.STATE_OPEN:
            # A data frame after the peer's close frame: RFC 6455 5.5.1 forbids it.
            self.factory.client.after_close.append(payload)
        self.factory.client._received(payload, isBinary)

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        self.factory.client.lost_reason = reason
        super().connectionLost(reason)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.client.was_clean = wasClean
        self.factory.client._closed(self, code, reason)


class _Factory(WebSocketClientFactory):
    protocol = _Protocol

    def __init__(self, client: WsClient, url: str, protocols: Sequence[str]) -> None:
        super().__init__(url, protocols=list(protocols))
        self.client = client
        # Large enough for the oversize tests; the server's limit is what we test.
        self.setProtocolOptions(
            maxFramePayloadSize=0,
            maxMessagePayloadSize=0,
            autoPingInterval=0,
        )


class WsClient:
    """One raw WebSocket connection: a queue of decoded envelopes and its close."""

    def __init__(self, clock: IReactorTime | None = None) -> None:
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.protocol: _Protocol | None = None
        self.subprotocol: str | None = None
        self.messages: list[Message] = []  # everything received, in order
        self.frames: list[tuple[bytes, bool]] = []  # raw (payload, is_binary)
        self.after_close: list[bytes] = []  # payloads that arrived after a close frame
        self.queue: list[Message] = []  # received and not yet taken by a test
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.was_clean: bool | None = None
        self.lost_reason: Failure | None = None
        self.not_clean_reason: str | None = None
        self.opened: Deferred[WsClient] = Deferred()
        self.closed: Deferred[Closed] = Deferred()
        self.positions: dict[str, dict[str, Any]] = {}  # stream -> {offset, epoch}
        self.session: str | None = None
        self.welcome: Message | None = None
        # Answer server heartbeats (as a live client does); tests of silence turn it off.
        self.answer_heartbeats = True
        self._waiters: list[tuple[Predicate, Deferred[Message]]] = []

    # ------------------------------------------------------------ callbacks

    def _opened(self, protocol: _Protocol) -> None:
        self.protocol = protocol
        self.opened.callback(self)

    def _received(self, payload: bytes, is_binary: bool) -> None:
        self.frames.append((payload, is_binary))
        message: Message = msgpack.unpackb(payload) if is_binary else json.loads(payload)
        self.messages.append(message)
        if message.get("type") == "heartbeat" and "ref" not in message and self.answer_heartbeats:
            self.send({"type": "heartbeat", "ref": message["id"]})
        if message.get("type") == "event" and "stream" in message:
            self.positions[message["stream"]] = {
                "offset": message["offset"],
                "epoch": message["epoch"],
            }
        for waiter in list(self._waiters):
            predicate, deferred = waiter
            if predicate(message):
                self._waiters.remove(waiter)
                deferred.callback(message)
                return
        self.queue.append(message)

    def _closed(self, protocol: _Protocol, code: int | None, reason: str | None) -> None:
        self.close_code = code
        self.close_reason = reason
        self.not_clean_reason = getattr(protocol, "wasNotCleanReason", None)
        if not self.opened.called:
            status: int | None = None
            found = re.search(r"\[(\d{3})\]", self.not_clean_reason or "")
            if found is not None:
                status = int(found.group(1))
                self.opened.errback(HandshakeRefusedError(status, self.not_clean_reason or ""))
            else:
                lost = self.lost_reason or Failure(Exception(self.not_clean_reason))
                self.opened.errback(ConnectFailedError(lost))
        for _, deferred in self._waiters:
            deferred.errback(ConnectionError(f"closed with {code} {reason!r} while waiting"))
        self._waiters.clear()
        self.closed.callback((code, reason))

    # ------------------------------------------------------------ reading

    def wait_for(self, predicate: Predicate, timeout: float = DEFAULT_TIMEOUT) -> Deferred[Message]:
        """The first queued or future message matching ``predicate`` (removed from the queue)."""
        for index, message in enumerate(self.queue):
            if predicate(message):
                del self.queue[index]
                d: Deferred[Message] = Deferred()
                d.callback(message)
                return d
        deferred: Deferred[Message] = Deferred()
        if self.closed.called:
            deferred.errback(ConnectionError(f"already closed with {self.close_code}"))
            return deferred
        waiter = (predicate, deferred)
        self._waiters.append(waiter)

        def expire() -> None:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                deferred.errback(DeferredTimeoutError(timeout, "no matching message"))

        call = reactor.callLater(timeout, expire)
        deferred.addBoth(_cancel_call(call))
        return deferred

    def next_message(self, timeout: float = DEFAULT_TIMEOUT) -> Deferred[Message]:
        return self.wait_for(lambda _: True, timeout)

    def next_of(self, kind: str, timeout: float = DEFAULT_TIMEOUT) -> Deferred[Message]:
        return self.wait_for(lambda m: m.get("type") == kind, timeout)

    def reply_to(self, ref: str, timeout: float = DEFAULT_TIMEOUT) -> Deferred[Message]:
        return self.wait_for(lambda m: m.get("ref") == ref, timeout)

    def wait_closed(self, timeout: float = DEFAULT_TIMEOUT) -> Deferred[Closed]:
        """Fires with (code, reason) when the connection is closed."""
        result: Deferred[Closed] = Deferred()

        def fire(value: Closed) -> Closed:
            if not result.called:
                result.callback(value)
            return value

        self.closed.addCallback(fire)
        if not result.called:
            call = reactor.callLater(
                timeout,
                lambda: (
                    result.called or result.errback(DeferredTimeoutError(timeout, "not closed"))
                ),
            )
            result.addBoth(_cancel_call(call))
        return result

    def drain(self) -> list[Message]:
        taken, self.queue = self.queue, []
        return taken

    # ------------------------------------------------------------ writing

    @property
    def binary(self) -> bool:
        return self.subprotocol == MSGPACK_SUBPROTOCOL

    def send_raw(self, payload: bytes, binary: bool = False) -> None:
        assert self.protocol is not None
        self.protocol.sendMessage(payload, isBinary=binary)

    def send(self, envelope: Message) -> Message:
        """Fill in ``id`` and ``timestamp`` when missing, encode with the codec, send."""
        full: Message = {"id": new_id(), "timestamp": int(self.clock.seconds() * 1000)}
        full.update(envelope)
        if self.binary:
            self.send_raw(msgpack.packb(full), binary=True)
        else:
            self.send_raw(json.dumps(full).encode("utf-8"))
        return full

    def request(self, envelope: Message, timeout: float = DEFAULT_TIMEOUT) -> Deferred[Message]:
        """Send and wait for the envelope that answers it (same ``ref``)."""
        sent = self.send(envelope)
        return self.reply_to(sent["id"], timeout)

    def hello(
        self,
        session: str | None = None,
        streams: dict[str, dict[str, Any]] | None = None,
        rooms: Sequence[str] = (),
        timeout: float = DEFAULT_TIMEOUT,
        resume_token: object = KNOWN_TOKEN,
    ) -> Deferred[Message]:
        """Send hello; fires with the welcome (and remembers the session id).

        Resuming ``session`` presents the resume token an earlier welcome gave
        for it (any client of this process), unless ``resume_token`` is given.
        """
        data: Message = {"session": session, "streams": dict(streams or {}), "rooms": list(rooms)}
        if resume_token is KNOWN_TOKEN:
            resume_token = RESUME_TOKENS.get(session) if session is not None else None
        if resume_token is not None:
            data["resume_token"] = resume_token
        answered = self.request({"type": "hello", "data": data}, timeout)

        presented = dict(streams or {})

        def remember(message: Message) -> Message:
            # protocol.md 5.3: keep our own position on a recovered stream we
            # presented (the replay follows); otherwise start at the welcome's.
            if message.get("type") == "welcome":
                self.session = message["data"]["session"]
                token = message["data"].get("resume_token")
                if isinstance(token, str):
                    RESUME_TOKENS[self.session] = token
                self.welcome = message
                for stream, position in message["data"]["streams"].items():
                    if position["recovered"] and stream in presented:
                        continue
                    self.positions[stream] = {
                        "offset": position["offset"],
                        "epoch": position["epoch"],
                    }
            return message

        return answered.addCallback(remember)

    def ack(self, ref: str) -> Message:
        return self.send({"type": "ack", "ref": ref})

    def close(self, code: int = 1000) -> Deferred[Closed]:
        assert self.protocol is not None
        self.protocol.sendClose(code)
        return self.wait_closed()

    def drop(self) -> Deferred[Closed]:
        """Vanish without a close handshake (as a lost network would)."""
        assert self.protocol is not None and self.protocol.transport is not None
        self.protocol.transport.abortConnection()
        return self.wait_closed()

    def freeze(self) -> None:
        """Stop reading from the socket: a peer that is alive at TCP level but silent."""
        assert self.protocol is not None and self.protocol.transport is not None
        self.protocol.transport.pauseProducing()

    def thaw(self) -> None:
        assert self.protocol is not None and self.protocol.transport is not None
        self.protocol.transport.resumeProducing()


def _cancel_call(call: Any) -> Callable[[Any], Any]:
    def cancel(result: Any) -> Any:
        if call.active():
            call.cancel()
        return result

    return cancel


def connect(
    port: int,
    protocols: Sequence[str] | None = (JSON_SUBPROTOCOL,),
    path: str = "/ws",
    tls: IOpenSSLClientConnectionCreator | None = None,
    host: str = "127.0.0.1",
    clock: IReactorTime | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Deferred[WsClient]:
    """Open a WebSocket to ``host:port`` on 127.0.0.1; fires once it is open.

    Fails with ``HandshakeRefusedError`` (carrying the HTTP status) when the server
    refuses the upgrade, or ``ConnectFailedError`` when the connection drops first.
    """
    client = WsClient(clock)
    scheme = "wss" if tls is not None else "ws"
    factory = _Factory(client, f"{scheme}://{host}:{port}{path}", protocols or [])
    endpoint: Any = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=timeout)
    if tls is not None:
        endpoint = wrapClientTLS(tls, endpoint)
    connecting = endpoint.connect(factory)
    connecting.addErrback(lambda failure: client.opened.called or client.opened.errback(failure))
    call = reactor.callLater(
        timeout,
        lambda: (
            client.opened.called
            or client.opened.errback(DeferredTimeoutError(timeout, "WebSocket did not open"))
        ),
    )
    client.opened.addBoth(_cancel_call(call))
    return client.opened


__all__ = [
    "JSON_SUBPROTOCOL",
    "MSGPACK_SUBPROTOCOL",
    "ConnectFailedError",
    "HandshakeRefusedError",
    "Message",
    "WsClient",
    "connect",
    "new_id",
]


# ---------------------------------------------------------------- server fixture


def async_test(
    method: Callable[..., Coroutine[Any, Any, None]],
) -> Callable[..., Deferred[None]]:
    """Let trial run an ``async def`` test method (it expects a Deferred)."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Deferred[None]:
        return Deferred.fromCoroutine(method(*args, **kwargs))

    return wrapper


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


async def wait_until(
    predicate: Callable[[], bool], timeout: float = DEFAULT_TIMEOUT, what: str = "condition"
) -> None:
    """Poll ``predicate`` on the real reactor (for state the network has to carry)."""
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await sleep(0.005)


async def http_get(
    port: int,
    path: str,
    pool: HTTPConnectionPool | None = None,
    tls: IPolicyForHTTPS | None = None,
) -> tuple[int, bytes, Headers]:
    """GET http://127.0.0.1:port/path, or https://localhost:port/path with ``tls``."""
    if tls is None:
        agent = Agent(reactor, pool=pool)
        url = f"http://127.0.0.1:{port}{path}"
    else:
        agent = Agent(reactor, contextFactory=tls, pool=pool)
        url = f"https://localhost:{port}{path}"
    response: IResponse = await agent.request(b"GET", url.encode("ascii"))
    body: bytes = await readBody(response)
    return response.code, body, response.headers


class ServerTestCase(unittest.TestCase):
    """A real WarpSocketService on 127.0.0.1:<ephemeral>, its timers on a Clock.

    Heartbeats, timeouts, retries and session expiry only move when a test
    calls ``advance``; the network runs on the real reactor.
    """

    timeout = 20
    clock: Clock
    hub: Hub
    service: WarpSocketService
    port: int

    def start_server(
        self,
        core: CoreOptions | None = None,
        *,
        open_rooms: bool = False,
        debug: bool = False,
        shutdown_timeout: float = 3.0,
        reconnect_hint_ms: int = 2_000,
        drain_delay: float = 0.0,
        middleware: Sequence[Middleware] = (),
        endpoints: Sequence[str] = ("tcp:0:interface=127.0.0.1",),
        path: str = "/ws",
        **hub_kwargs: Any,
    ) -> Hub:
        self.clock = Clock()
        self.clients: list[WsClient] = []
        options = HubOptions(
            core=core if core is not None else CoreOptions(),
            open_rooms=open_rooms,
            debug=debug,
            shutdown_timeout=shutdown_timeout,
            reconnect_hint_ms=reconnect_hint_ms,
            drain_delay=drain_delay,
        )
        self.hub = Hub(options, clock=self.clock, middleware=middleware, **hub_kwargs)
        self.service = WarpSocketService(self.hub, endpoints, path=path)
        self.service.startService()
        self.addCleanup(self._stop_server)
        self.port = self.service.ports[0].getHost().port
        return self.hub

    async def _stop_server(self) -> None:
        if self.service.running:
            await self.service.stopService()
        for client in self.clients:
            if not client.closed.called and client.opened.called:
                await client.wait_closed()

    def advance(self, seconds: float, step: float = 1.0) -> None:
        """Move the hub's clock in tick-sized steps (the TimerService ticks each second)."""
        remaining = seconds
        while remaining > 1e-9:
            delta = min(step, remaining)
            self.clock.advance(delta)
            remaining -= delta

    async def connect(
        self,
        *,
        protocols: Sequence[str] | None = (JSON_SUBPROTOCOL,),
        path: str = "/ws",
        hello: bool = True,
        rooms: Sequence[str] = (),
        session: str | None = None,
        streams: dict[str, dict[str, Any]] | None = None,
    ) -> WsClient:
        """Connect (and by default say hello and take the welcome off the queue)."""
        client = await connect(self.port, protocols, path=path, clock=self.clock)
        self.clients.append(client)
        if hello:
            welcome = await client.hello(session=session, streams=streams, rooms=rooms)
            self.assertEqual(welcome["type"], "welcome", welcome)
        return client

    def server_side(self, client: WsClient) -> WarpSocketServerProtocol:
        """The server's protocol instance for ``client``'s connection."""
        for connection in self.hub.port.connections.values():
            if connection.session == client.session:
                return cast(WarpSocketServerProtocol, connection)
        raise AssertionError(f"no server connection for {client.session}")

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.hub.metrics.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else float(value)
