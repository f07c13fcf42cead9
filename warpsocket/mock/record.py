"""Record mode: a WebSocket proxy that writes what a server sent as a scenario.

``warpsocket mock --record out.json --upstream ws://host/ws`` listens (on
``--endpoint``) and passes each client's frames to the upstream server and
back, untouched, with the subprotocol the upstream chose. Of the first
session it sees (later ones are passed through, not recorded) it keeps
every stream event the server sent, once each (a resume's replay is not
recorded twice), with its time since that session's first welcome, and the
first answer to each RPC method; the scenario it writes plays them back to
the next client that connects to ``warpsocket mock out.json``: the same
events on the same streams in the same order, at the same times.
"""

from __future__ import annotations

import json
import os
from typing import Any

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
    connectWS,
)
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest, ConnectionResponse
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from warpsocket._nodelay import set_no_delay
from warpsocket.core.keys import BROADCAST, DIRECT, ROOM_PREFIX
from warpsocket.protocol.codecs import Codec, default_codecs
from warpsocket.protocol.codes import ProtocolError
from warpsocket.protocol.envelope import Envelope, MessageType

# Headers a client's upgrade request carries on to the upstream.
_FORWARDED = ("authorization", "cookie")


class Recorder:
    """The scenario being recorded; ``write`` puts it in ``path`` (atomically)."""

    log = Logger()

    def __init__(self, path: str, clock: IReactorTime, name: str = "recording") -> None:
        self.path = path
        self.clock = clock
        self.name = name
        self.session: str | None = None
        self.started: float | None = None
        self.events: list[dict[str, Any]] = []
        self.rpc: dict[str, dict[str, Any]] = {}
        self._seen: set[tuple[str, str | None, int | None]] = set()
        self._calls: dict[str, str] = {}  # call id -> method
        self._pending_write: IDelayedCall | None = None

    def client_sent(self, envelope: Envelope) -> None:
        if envelope.type is MessageType.CALL and envelope.event and envelope.id:
            self._calls[envelope.id] = envelope.event

    def server_sent(self, envelope: Envelope) -> None:
        kind = envelope.type
        if kind is MessageType.WELCOME:
            data = envelope.data if isinstance(envelope.data, dict) else {}
            session = data.get("session")
            if self.session is None and isinstance(session, str):
                self.session = session
                self.started = self.clock.seconds()
            return
        if kind is MessageType.EVENT and envelope.stream is not None:
            self._event(envelope)
        elif kind in (MessageType.RESULT, MessageType.ERROR) and envelope.ref in self._calls:
            method = self._calls.pop(envelope.ref or "")
            if method in self.rpc:
                return
            if kind is MessageType.RESULT:
                self.rpc[method] = {"result": envelope.data}
            else:
                data = envelope.data if isinstance(envelope.data, dict) else {}
                message = data.get("message")
                error = {
                    # A scenario's error codes are 4000-4999 (scenario.py).
                    "code": envelope.code if 4000 <= (envelope.code or 0) <= 4999 else 4300,
                    "message": message if isinstance(message, str) else "",
                }
                self.rpc[method] = {"error": error}
            self._soon()

    def _event(self, envelope: Envelope) -> None:
        if self.started is None:
            return
        stream = envelope.stream or ""
        key = (stream, envelope.epoch, envelope.offset)
        if key in self._seen:
            return  # sent again after a resume
        self._seen.add(key)
        at = round(self.clock.seconds() - self.started, 3)
        rule: dict[str, Any] = {"on": "connect", "times": 1, "at": f"{at}s"}
        if stream.startswith(ROOM_PREFIX):
            rule["room"] = stream[len(ROOM_PREFIX) :]
        elif stream == BROADCAST:
            rule["broadcast"] = True
        elif stream != DIRECT:
            return
        rule["event"] = envelope.event or "message"
        rule["data"] = envelope.data
        self.events.append(rule)
        self._soon()

    def scenario(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": "recorded by warpsocket mock --record",
            "events": self.events,
            "rpc": self.rpc,
        }

    def _soon(self) -> None:
        if self._pending_write is None or not self._pending_write.active():
            self._pending_write = self.clock.callLater(0.2, self.write)

    def write(self) -> None:
        if self._pending_write is not None and self._pending_write.active():
            self._pending_write.cancel()
        self._pending_write = None
        temporary = f"{self.path}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(self.scenario(), handle, indent=2, ensure_ascii=False)
            handle.write("\n")
        os.replace(temporary, self.path)


class _Upstream(WebSocketClientProtocol):
    factory: _UpstreamFactory

    def connectionMade(self) -> None:
        set_no_delay(self.transport)  # (what Autobahn fails to do: _nodelay.py)
        super().connectionMade()

    def onConnect(self, response: ConnectionResponse) -> None:
        self.factory.downstream.upstream_ready(self, response.protocol)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.downstream.from_upstream(payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.downstream.upstream_closed(code, reason)


class _UpstreamFactory(WebSocketClientFactory):
    protocol = _Upstream  # type: ignore[assignment]
    downstream: _Downstream

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        # Unreachable: the client's upgrade is refused (502), not left waiting.
        self.downstream.upstream_closed(None, None)


class _Downstream(WebSocketServerProtocol):
    """One client: its frames go upstream, the upstream's come back (and are recorded)."""

    factory: RecordingProxyFactory
    upstream: _Upstream | None = None
    codec: Codec | None = None
    _ready: Deferred[str | None] | None = None

    def connectionMade(self) -> None:
        set_no_delay(self.transport)  # (what Autobahn fails to do: _nodelay.py)
        super().connectionMade()

    def onConnect(self, request: ConnectionRequest) -> Deferred[str | None]:  # type: ignore[override]
        proxy = self.factory
        headers = {name: request.headers[name] for name in _FORWARDED if name in request.headers}
        # The client's query goes along: a hello in it (protocol.md 4.5), a token.
        url = proxy.upstream_url
        query = self.http_request_uri.partition("?")[2]
        if query:
            url += ("&" if "?" in url else "?") + query
        upstream = _UpstreamFactory(
            url,
            protocols=request.protocols,
            headers=headers,
            origin=request.origin or None,
        )
        upstream.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0)
        upstream.downstream = self
        self._ready = Deferred()
        connectWS(upstream, timeout=10)
        return self._ready

    def upstream_ready(self, upstream: _Upstream, subprotocol: str | None) -> None:
        self.upstream = upstream
        self.codec = default_codecs().get(subprotocol or "") if subprotocol else None
        ready, self._ready = self._ready, None
        if ready is not None:
            ready.callback(subprotocol)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.upstream is not None:
            self.upstream.sendMessage(payload, isBinary)
        envelope = self._decode(payload, isBinary)
        if envelope is not None and self.factory.recorded in (None, self):
            self.factory.recorder.client_sent(envelope)

    def from_upstream(self, payload: bytes, isBinary: bool) -> None:
        envelope = self._decode(payload, isBinary)
        if envelope is not None:
            self.factory.observe(self, envelope)
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.sendMessage(payload, isBinary)

    def _decode(self, payload: bytes, is_binary: bool) -> Envelope | None:
        if self.codec is None:
            return None
        try:
            return self.codec.decode(payload, is_binary)
        except ProtocolError:
            return None

    def upstream_closed(self, code: int | None, reason: str | None) -> None:
        ready, self._ready = self._ready, None
        if ready is not None:
            ready.errback(ConnectionDeny(502, "upstream refused the connection"))
            return
        if self.state != WebSocketServerProtocol.STATE_OPEN:
            return
        if code is not None and (code == 1000 or 3000 <= code <= 4999):
            self.sendClose(code, reason or None)
        else:
            self.dropConnection(abort=True)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        upstream, self.upstream = self.upstream, None
        if upstream is None or upstream.state != WebSocketClientProtocol.STATE_OPEN:
            return
        if wasClean and code is not None and (code == 1000 or 3000 <= code <= 4999):
            upstream.sendClose(code, reason or None)
        else:
            upstream.dropConnection(abort=True)


class RecordingProxyFactory(WebSocketServerFactory):
    """The proxy's listening side: give it to ``listen`` (``twisted.web`` not needed)."""

    protocol = _Downstream  # type: ignore[assignment]

    def __init__(self, upstream_url: str, recorder: Recorder) -> None:
        super().__init__()
        self.upstream_url = upstream_url
        self.recorder = recorder
        self.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0)
        self.recorded: _Downstream | None = None

    def observe(self, connection: _Downstream, envelope: Envelope) -> None:
        recorder = self.recorder
        if envelope.type is MessageType.WELCOME:
            data = envelope.data if isinstance(envelope.data, dict) else {}
            if recorder.session is None or data.get("session") == recorder.session:
                self.recorded = connection
        if connection is self.recorded or envelope.type is MessageType.WELCOME:
            recorder.server_sent(envelope)
