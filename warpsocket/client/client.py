"""``WarpSocketClient``: a WebSocket that comes back, and loses nothing on the way.

Everything that must survive a reconnect (session, stream positions, rooms,
the offline queue, messages awaiting an answer) lives in the sans-I/O
``ClientCore``; this module connects it to Autobahn and the reactor.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import IO, Any
from urllib.parse import parse_qsl

from autobahn.websocket.util import parse_url
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import TimeoutError as TCPTimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from warpsocket._deferreds import invoke
from warpsocket.client import batching
from warpsocket.client.durable import DurableQueue
from warpsocket.client.netwatch import NetworkWatcher
from warpsocket.client.observe import ClientTracer, SlowAck, SlowListener
from warpsocket.client.options import ClientOptions, DisconnectCause
from warpsocket.client.protocol import WarpSocketClientFactory, WarpSocketClientProtocol
from warpsocket.client.state import ClientState, check_transition
from warpsocket.client.tokens import RefreshPolicy
from warpsocket.core.client import (
    URL_HELLO_PARAMETER,
    ClientAction,
    ClientCore,
    Deliver,
    Outcome,
    Reconnect,
    RoomChanged,
    Status,
    StreamLost,
    Transmit,
    Welcomed,
    url_hello_query,
)
from warpsocket.core.ids import random_id
from warpsocket.core.messages import heartbeat_envelope
from warpsocket.crypto.client import ClientCrypto, CryptoFailure, asked_extensions, nack_for
from warpsocket.crypto.replay import ReplayGuard
from warpsocket.protocol.codecs import Codec, default_codecs
from warpsocket.protocol.codes import ErrorCode, ProtocolError
from warpsocket.protocol.envelope import Envelope, MessageType
from warpsocket.protocol.tracecontext import TraceContext
from warpsocket.transfer.client import ClientTransfers, OutgoingTransfer, ReceivingTransfer
from warpsocket.transfer.wire import ANNOUNCE_EVENT


class DeliveryError(Exception):
    """A message's final outcome was a rejection or an expiry."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(f"{outcome.status.value} ({outcome.code}): {outcome.message}")
        self.outcome = outcome
        self.code = outcome.code
        self.status = outcome.status


class ClientClosedError(Exception):
    """The client is closed, or was closed (or gave up) before the message had an outcome.

    For a message, ``outcome`` is its ``FAILED`` outcome: the message has
    left the queue and no later connection sends it. ``outcome.sent`` False:
    the server never saw it. True: a copy left the client; the server may
    have handled it, and no copy is handled after its deadline (or ttl).
    """

    def __init__(self, message: str = "client closed", outcome: Outcome | None = None) -> None:
        super().__init__(message)
        self.outcome = outcome


class ConnectTimeoutError(TimeoutError):
    """``connect(timeout=...)`` passed without a welcome; the client keeps trying."""


@dataclass
class Message:
    """A stream event as the application sees it."""

    envelope: Envelope
    client: WarpSocketClient

    @property
    def event(self) -> str:
        return self.envelope.event or "message"

    @property
    def data(self) -> Any:
        return self.envelope.data

    @property
    def stream(self) -> str:
        return self.envelope.stream or ""

    @property
    def room(self) -> str | None:
        stream = self.stream
        return stream[5:] if stream.startswith("room:") else None

    @property
    def offset(self) -> int:
        return self.envelope.offset or 0

    @property
    def trace(self) -> TraceContext | None:
        """The event's W3C trace context (protocol.md "Trace context"), if any."""
        return self.envelope.trace

    def ack(self) -> None:
        """Acknowledge (manual-ack mode); harmless when no ack was requested."""
        if self.envelope.ack:
            self.client._acknowledge(self.envelope)


@dataclass(frozen=True)
class Opened:
    """What an ``on_open`` listener is told after each welcome."""

    session: str
    resumed: bool  # the session (its rooms, positions, pending messages) carried over
    lost: tuple[str, ...]  # streams not recovered: the application must re-sync them
    reconnect: bool  # not the first open of this client object

    @property
    def recovered(self) -> bool:
        """Resumed with every stream recovered: nothing was missed."""
        return self.resumed and not self.lost


@dataclass
class ClientStats:
    """Counters of one client since it was made (``client.stats``): attempts,
    connections, reconnects and resumes, messages in and out, reconnect times
    and round-trip times (docs/client.md, "Statistics")."""

    attempts: int = 0
    connections: int = 0
    reconnects: int = 0
    resumes: int = 0
    last_reconnect_seconds: float | None = None
    rtt_seconds: float | None = None
    messages_in: int = 0
    messages_out: int = 0
    streams_lost: int = 0
    # Batch frames sent (the batch extension): envelopes out per frame is
    # messages_out / (messages_out - envelopes in batches + batch_frames).
    batch_frames: int = 0
    # Hellos carried in the upgrade request (protocol.md 4.5), not in frames
    # (neither in messages_out).
    url_hellos: int = 0
    reconnect_times: list[float] = field(default_factory=list)

    @property
    def success_rate(self) -> float:
        return self.connections / self.attempts if self.attempts else 0.0


Handler = Callable[[Message], Any]
StateListener = Callable[[ClientState, ClientState], Any]
LostListener = Callable[[str, str], Any]
OpenListener = Callable[[Opened], Any]
TokenProvider = Callable[[], "str | Deferred[str | None] | None"]


class WarpSocketClient:
    """The auto-reconnecting WarpSocket client, on the Twisted reactor.

    ``WarpSocketClient(url, options=ClientOptions(...))``; ``await
    client.connect()`` and it stays connected by itself (backoff with
    jitter, resume of its session, rooms and streams, the offline queue
    flushed on reconnect). ``send(event, data, ack=True)`` and ``call(method,
    data)`` return Deferreds with exactly one outcome each; ``on(event,
    handler)`` receives server events exactly once and in order per stream;
    ``on_lost`` is told of streams that could not be recovered. The guide is
    docs/client.md; ``BlockingClient`` and ``AsyncClient`` wrap this class.
    """

    log = Logger()

    def __init__(
        self,
        url: str,
        options: ClientOptions | None = None,
        *,
        reactor: Any = None,
        clock: IReactorTime | None = None,
        token: TokenProvider | None = None,
        ca_file: str | None = None,
        tls_options: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.options = options if options is not None else ClientOptions()
        self.url = url
        secure, host, port, resource, _, _ = parse_url(url)
        self._secure, self._host, self._port = secure, host, port
        # The hello may ride in the upgrade request (protocol.md 4.5), after
        # the URL's own parameters; not when the URL names one itself.
        self._resource: str = resource
        query = resource.partition("?")[2]
        self._url_hello = self.options.url_hello and all(
            name != URL_HELLO_PARAMETER for name, _ in parse_qsl(query, keep_blank_values=True)
        )
        self._tls_options = tls_options
        if secure and tls_options is None:
            trust = None
            if ca_file is not None:
                with open(ca_file, "rb") as pem:
                    trust = Certificate.loadPEM(pem.read())
            self._tls_options = optionsForClientTLS(host, trustRoot=trust)
        codec = default_codecs().get(self.options.subprotocol)
        if codec is None:
            raise ValueError(f"unknown subprotocol {self.options.subprotocol!r}")
        self.codec: Codec = codec
        options = self.options
        extensions = asked_extensions(options.core.extensions, options.e2e, options.signing)
        if (
            options.batch_window_ms is not None
            and options.signing is None  # signatures cover single envelopes
            and batching.EXTENSION not in extensions
        ):
            extensions = (*extensions, batching.EXTENSION)
        self.core = ClientCore(replace(options.core, extensions=extensions), random_id)
        # Encryption and signatures (warpsocket/crypto/client.py); inert when unset.
        self._crypto = ClientCrypto(
            options.e2e, options.signing, ReplayGuard(options.replay_window_ms)
        )
        self._crypto_listeners: list[Callable[[CryptoFailure], Any]] = []
        self.token_provider = token
        self.factory = WarpSocketClientFactory(_Events(self), url, protocols=[codec.subprotocol])
        self.factory.clock = self.clock  # type: ignore[assignment]
        self.factory.maxRetries = None
        # The client bounds the whole attempt itself (see _start_attempt).
        self.factory.setProtocolOptions(openHandshakeTimeout=0)
        self.state = ClientState.DISCONNECTED
        self.stats = ClientStats()
        self._protocol: WarpSocketClientProtocol | None = None
        self._connector: Any = None
        self._handlers: dict[str, list[Handler]] = {}
        self._state_listeners: list[StateListener] = []
        self._lost_listeners: list[LostListener] = []
        self._open_listeners: list[OpenListener] = []
        self._waiters: dict[str, Deferred[Any]] = {}
        self._open_waiters: list[Deferred[None]] = []
        self._ticker: LoopingCall | None = None
        self._last_rx = 0.0
        self._heartbeat_timeout = self.options.heartbeat_timeout
        self._last_close_code: int | None = None
        self._last_cause = DisconnectCause.REFUSED
        self._timed_out = False  # the client itself dropped a silent attempt/connection
        self._attempts_since_open = 0
        self._attempt_timer: Any = None
        self._attempt_protocol: WarpSocketClientProtocol | None = None
        self._ping_interval: float | None = self.options.ping_interval
        self._last_ping = 0.0
        self._refresh = RefreshPolicy(
            self.options.refresh_before,
            self.options.refresh_min_interval,
            self.options.refresh_max_interval,
        )
        self._hint_delay: float | None = None
        self._disconnected_at: float | None = None
        self._pings: dict[str, float] = {}
        self._probe_deadline: float | None = None
        self._token: str | None = None
        self._refresh_call: Any = None
        self._watcher = (
            NetworkWatcher(self.reactor, self._network_changed)
            if self.options.watch_network
            else None
        )
        # The batch extension, on a connection that agreed to it (client/batching.py).
        self._batch: batching.OutgoingBatch | None = None
        # The chunks extension, made on first use (``transfers``).
        self._transfers: ClientTransfers | None = None
        self._durable = DurableQueue(self.options.queue_path) if self.options.queue_path else None
        # Observability (client/observe.py): spans, and slow-ack timers by message id.
        self._tracer = (
            ClientTracer(self.options.tracer_provider)
            if self.options.tracing or self.options.tracer_provider is not None
            else None
        )
        self._slow_listeners: list[SlowListener] = []
        self._slow_calls: dict[str, Any] = {}
        if self._durable is not None:
            self._restore_durable()

    # ------------------------------------------------------------ public API

    def on(self, event: str, handler: Handler | None = None) -> Any:
        """Handle stream events named ``event`` (``"*"``: every event); decorator too.

        The handler gets a ``Message``; it may return a Deferred or be async.
        In auto-ack mode an event that asked for an ack is acknowledged once
        every handler has finished without error.
        """

        def register(func: Handler) -> Handler:
            self._handlers.setdefault(event, []).append(func)
            return func

        return register(handler) if handler is not None else register

    def on_state(self, listener: StateListener) -> StateListener:
        """``listener(old, new)`` on every state transition."""
        self._state_listeners.append(listener)
        return listener

    def on_lost(self, listener: LostListener) -> LostListener:
        """``listener(stream, reason)`` when a stream could not be recovered."""
        self._lost_listeners.append(listener)
        return listener

    def on_crypto_error(
        self, listener: Callable[[CryptoFailure], Any]
    ) -> Callable[[CryptoFailure], Any]:
        """Be told of each received envelope refused by encryption or
        signatures (``CryptoFailure``: code 4600-4604); it was not delivered."""
        self._crypto_listeners.append(listener)
        return listener

    def on_open(self, listener: OpenListener) -> OpenListener:
        """``listener(opened)`` after every welcome: resumed or not, streams lost."""
        self._open_listeners.append(listener)
        return listener

    def on_slow(self, listener: SlowListener) -> SlowListener:
        """``listener(SlowAck)`` when an acked send or call is still unanswered
        ``ClientOptions.slow_ack`` seconds after it was sent (once per message)."""
        self._slow_listeners.append(listener)
        return listener

    def connect(self, timeout: float | None = None) -> Deferred[None]:
        """Start connecting (and reconnecting); fires when welcomed.

        ``timeout``: fail with ``ConnectTimeoutError`` if not welcomed within
        that many seconds. The client keeps trying (``close()`` stops it).
        """
        if self.state in (ClientState.DISCONNECTED, ClientState.CLOSED):
            self._attempts_since_open = 0
            self.factory.resetDelay()
            self.factory.continueTrying = 1
            self._set_state(ClientState.CONNECTING)
            self._start_ticker()
            if self._watcher is not None:
                self._watcher.start()
            self._dial()
        if self.state is ClientState.OPEN:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._open_waiters.append(waiter)
        if timeout is not None:

            def expire() -> None:
                if waiter in self._open_waiters:
                    self._open_waiters.remove(waiter)
                    waiter.errback(ConnectTimeoutError(f"not connected within {timeout} s"))

            timer = self.clock.callLater(timeout, expire)

            def settled(result: object) -> object:
                if timer.active():
                    timer.cancel()
                return result

            waiter.addBoth(settled)
        return waiter

    def reconnect(self) -> None:
        """Drop the current connection (if any) and try again at once."""
        if self.state is ClientState.CLOSED:
            self.connect()
            return
        self._hint_delay = 0.0
        if self.state is ClientState.RECONNECTING:
            self.factory.retry_now()
            return
        if self._protocol is not None:
            self._protocol.dropConnection(abort=True)

    def close(self) -> Deferred[None]:
        """Close for good: no reconnect.

        Every message without an outcome fails at once with
        ``ClientClosedError`` and leaves the queue (and the durable journal):
        no later ``connect()`` sends it. Sends after ``close()`` raise
        ``ClientClosedError``.
        """
        if self.state is ClientState.CLOSED:
            return succeed(None)
        self.factory.stopTrying()
        self._stop_timers()
        protocol = self._protocol
        if self._batch is not None:
            self._batch.flush()  # what was sent before close() leaves before the close frame
        self._set_state(ClientState.CLOSED)
        self._fail_pending("client closed")
        if protocol is None:
            return succeed(None)
        closed: Deferred[None] = Deferred()
        protocol.is_closed.addBoth(lambda _: closed.callback(None))
        protocol.sendClose(1000)
        return closed

    def send(
        self,
        event: str,
        data: Any = None,
        *,
        ack: bool = False,
        room: str | None = None,
        ttl: float | None = None,
        priority: int = 0,
        timeout: float | None = None,
    ) -> Deferred[Outcome] | None:
        """Send an event; queued while offline, sent on reconnect.

        The queue goes out highest ``priority`` first, in send order within a
        priority. ``ack=True``: retried until the server answers or
        ``timeout`` (default ``core.ack_deadline_ms``) passes; returns a
        Deferred firing with the ``Outcome`` (acknowledged) or failing with
        ``DeliveryError`` (rejected with a code, or expired) or
        ``ClientClosedError``. Raises ``ClientClosedError`` once closed.
        """
        self._check_open_for_sends()
        span, trace = self._tracer.start_send(event) if self._tracer is not None else (None, None)
        ident, actions = self.core.send(
            event,
            self._crypto.seal(event, data, room),
            self._now_ms(),
            ack=ack,
            room=room,
            ttl=None if ttl is None else max(1, int(ttl * 1000)),
            priority=priority,
            deadline_ms=None if timeout is None else int(timeout * 1000),
            trace=trace,
        )
        waiter: Deferred[Any] | None = None
        if ack:
            waiter = Deferred()
            self._waiters[ident] = waiter
            self._persist(ident)
            self._watch_slow(ident, event)
        if span is not None:
            assert self._tracer is not None
            self._tracer.sent(span, ident, ack)
        self._run(actions)
        return waiter

    def call(self, method: str, data: Any = None, *, timeout: float = 30.0) -> Deferred[Any]:
        """Remote procedure call; fires with the result or fails with DeliveryError."""
        self._check_open_for_sends()
        span, trace = self._tracer.start_send(method) if self._tracer is not None else (None, None)
        ident, actions = self.core.call(
            method, data, self._now_ms(), timeout_ms=int(timeout * 1000), trace=trace
        )
        waiter: Deferred[Any] = Deferred()
        self._waiters[ident] = waiter
        self._watch_slow(ident, method)
        if span is not None:
            assert self._tracer is not None
            self._tracer.sent(span, ident, True)
        self._run(actions)
        return waiter

    def _watch_slow(self, ident: str, event: str) -> None:
        threshold = self.options.slow_ack
        if threshold is None:
            return
        started = self.clock.seconds()

        def overdue() -> None:
            self._slow_calls.pop(ident, None)
            slow = SlowAck(ident, event, self.clock.seconds() - started, threshold)
            self.log.warn(
                "slow ack: message {id} ({event}) unanswered after {seconds:.3f}s",
                id=ident,
                event=event,
                seconds=slow.seconds,
            )
            for listener in list(self._slow_listeners):
                invoke(listener, slow).addErrback(self._log_failure, "slow listener")

        self._slow_calls[ident] = self.clock.callLater(threshold, overdue)

    def subscribe(self, room: str, handler: Handler | None = None) -> None:
        """Join ``room`` (now, or at the next connection) and optionally handle its events."""
        if handler is not None:
            self._handlers.setdefault("room:" + room, []).append(handler)
        self._run(self.core.subscribe(room, self._now_ms()))

    def unsubscribe(self, room: str) -> None:
        self._handlers.pop("room:" + room, None)
        self._run(self.core.unsubscribe(room, self._now_ms()))

    @property
    def session(self) -> str | None:
        return self.core.session

    @property
    def rooms(self) -> set[str]:
        return set(self.core.rooms)

    # ------------------------------------------------------------ transfers

    @property
    def transfers(self) -> ClientTransfers:
        """Chunked transfers (the ``chunks`` extension, protocol.md). Made on
        first use, which asks for the extension in every later hello: use it
        (or ``on_transfer``) before ``connect``."""
        if self._transfers is None:
            self._transfers = ClientTransfers(self)
        return self._transfers

    def send_file(
        self,
        source: str | os.PathLike[str] | IO[bytes],
        *,
        to: str | None = None,
        room: str | None = None,
        name: str | None = None,
        meta: Any = None,
        on_progress: Callable[[int, int], Any] | None = None,
    ) -> OutgoingTransfer:
        """Send a file (a path, or a seekable binary file object) in chunks.

        Without ``to``/``room`` it goes to the server application's
        ``on_transfer`` handler; ``to=session`` or ``room=name`` relays it to
        that session or room's members. Returns an ``OutgoingTransfer``:
        ``result`` fires with the SHA-256 once the server has it all,
        ``cancel()`` stops it; it resumes by itself across reconnects.
        """
        return self.transfers.send(
            source, to=to, room=room, name=name, meta=meta, on_progress=on_progress
        )

    def send_bytes(
        self,
        data: bytes,
        *,
        to: str | None = None,
        room: str | None = None,
        name: str | None = None,
        meta: Any = None,
        on_progress: Callable[[int, int], Any] | None = None,
    ) -> OutgoingTransfer:
        """``send_file`` for a bytes object."""
        return self.transfers.send(
            data, to=to, room=room, name=name, meta=meta, on_progress=on_progress
        )

    def on_transfer(self, handler: Callable[[ReceivingTransfer], Any]) -> Any:
        """``handler(transfer) -> sink | None`` for transfers relayed to this
        client; each verified chunk is written to the sink as it arrives."""
        return self.transfers.on_transfer(handler)

    @property
    def extensions(self) -> dict[str, dict[str, Any]]:
        """Extensions the last welcome granted, with the server's parameters
        (protocol.md 4.4); ask for them with ``ClientCoreOptions.extensions``."""
        return dict(self.core.extensions)

    @property
    def queue_length(self) -> int:
        """Messages waiting to be sent (not those sent and awaiting an answer)."""
        return self.core.queue_length

    def _check_open_for_sends(self) -> None:
        if self.state is ClientState.CLOSED:
            raise ClientClosedError("the client is closed: connect() again first")

    def _fail_pending(self, why: str) -> None:
        """Every message without an outcome fails and leaves the queue (close, give up)."""
        # Take everything first: a callback may connect() and send again.
        abandoned = self.core.abandon(why)
        opening, self._open_waiters = self._open_waiters, []
        self._run(abandoned)
        for opened in opening:
            opened.errback(ClientClosedError(why))

    # ------------------------------------------------------------ state

    def _set_state(self, new: ClientState) -> None:
        old = self.state
        if old is new:
            return
        check_transition(old, new)
        self.state = new
        for listener in list(self._state_listeners):
            invoke(listener, old, new).addErrback(self._log_failure, "state listener")

    def _now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    # ------------------------------------------------------------ connection events

    def _dial(self) -> None:
        self._start_attempt()
        timeout = self._attempt_timeout()
        if self._connector is not None:
            self._connector.connect()
        elif self._secure:
            self._connector = self.reactor.connectSSL(
                self._host, self._port, self.factory, self._tls_options, timeout=timeout
            )
        else:
            self._connector = self.reactor.connectTCP(
                self._host, self._port, self.factory, timeout=timeout
            )

    def _attempting(self) -> None:
        """The reconnect timer fired."""
        self._set_state(ClientState.CONNECTING)
        self._start_attempt()

    def _attempt_timeout(self) -> float:
        return min(self.options.handshake_timeout, self._heartbeat_timeout)

    def _start_attempt(self) -> None:
        """Count the attempt and bound it: connect, upgrade, hello and welcome."""
        self.stats.attempts += 1
        self._attempts_since_open += 1
        self._timed_out = False
        self._cancel_attempt_timer()
        self._attempt_timer = self.clock.callLater(self._attempt_timeout(), self._attempt_expired)

    def _cancel_attempt_timer(self) -> None:
        if self._attempt_timer is not None and self._attempt_timer.active():
            self._attempt_timer.cancel()
        self._attempt_timer = None

    def _attempt_expired(self) -> None:
        self._attempt_timer = None
        if self.state is not ClientState.CONNECTING:
            return
        self.log.info("no welcome within {t} s: abandoning the attempt", t=self._attempt_timeout())
        self._timed_out = True
        protocol = self._protocol or self._attempt_protocol
        transport: Any = protocol.transport if protocol is not None else None
        if transport is not None:
            transport.abortConnection()
        elif self._connector is not None and self._connector.state == "connecting":
            self._connector.stopConnecting()

    def _tcp_connected(self, protocol: WarpSocketClientProtocol) -> None:
        self._attempt_protocol = protocol

    def _connecting(self, protocol: WarpSocketClientProtocol) -> str | None:
        """The upgrade request is about to be written: carry the hello in its
        URL when it may (protocol.md 4.5), saving the round trip of a hello
        frame, else ask for the URL as given (None).

        Only a hello without credentials: not with a token provider (its
        token goes in a hello frame), not for a resume (``core.url_hello``
        decides that, the size, and the fallback to frames after an older
        server ignored one).
        """
        if (
            not self._url_hello
            or self.token_provider is not None
            or self.state is ClientState.CLOSED
        ):
            return None
        text = self.core.url_hello(self._now_ms())
        if text is None:
            return None
        self.stats.url_hellos += 1
        separator = "&" if "?" in self._resource else "?"
        return f"{self._resource}{separator}{url_hello_query(text)}"

    def _transport_connected(
        self, protocol: WarpSocketClientProtocol, subprotocol: str | None
    ) -> None:
        if subprotocol not in (None, self.codec.subprotocol):
            protocol.dropConnection(abort=True)

    def _transport_open(self, protocol: WarpSocketClientProtocol) -> None:
        if self.state is ClientState.CLOSED:
            protocol.sendClose(1000)
            return
        self._protocol = protocol
        self._last_rx = self.clock.seconds()
        token = invoke(self.token_provider) if self.token_provider is not None else succeed(None)

        def hello(value: Any) -> None:
            if self._protocol is protocol:
                self._token = value
                self._run(self.core.connected(self._now_ms(), value))

        def token_failed(failure: Failure) -> None:
            self._log_failure(failure, "token provider")
            protocol.dropConnection(abort=True)

        token.addCallbacks(hello, token_failed)

    def _attempt_failed(self, reason: Failure) -> None:
        self.log.debug("connection attempt failed: {reason}", reason=reason.getErrorMessage())
        self._cancel_attempt_timer()
        self._last_close_code = None
        timed_out = self._timed_out or reason.check(TCPTimeoutError) is not None
        self._last_cause = DisconnectCause.TIMEOUT if timed_out else DisconnectCause.REFUSED
        if self.state is ClientState.CONNECTING:
            self._set_state(ClientState.DISCONNECTED)

    def _transport_closed(
        self, protocol: WarpSocketClientProtocol, code: int | None, reason: str | None
    ) -> None:
        if self._attempt_protocol is protocol:
            self._attempt_protocol = None
        if self._protocol is not protocol and self._protocol is not None:
            return
        self._protocol = None
        self._cancel_attempt_timer()
        self._last_close_code = code
        if self._timed_out:
            self._last_cause = DisconnectCause.TIMEOUT
        elif code is None or code == 1006:
            self._last_cause = DisconnectCause.CUT
        else:
            self._last_cause = DisconnectCause.CLOSED
        if code == ErrorCode.GOING_AWAY and reason:
            self._hint_delay = _retry_hint(reason)
        if self.state is ClientState.OPEN:
            self._disconnected_at = self.clock.seconds()
        self._pings.clear()
        if self._batch is not None:
            self._batch.drop()
            self._batch = None
        self._crypto.disconnected()
        refused = self.core.url_hello_refused
        self._run(self.core.disconnected(self._now_ms(), code, timed_out=self._timed_out))
        if self.core.url_hello_refused and not refused:
            self.log.info("{url} ignored the hello in the URL: hellos go in frames", url=self.url)
        if self.state is not ClientState.CLOSED:
            self._set_state(ClientState.DISCONNECTED)

    def _next_delay(self, retries: int) -> float | None:
        """The factory asks: how long until the next attempt (None: stop)."""
        if self.state is ClientState.CLOSED:
            return None
        code, cause = self._last_close_code, self._last_cause
        if not self.options.reconnect_wanted(code, cause):
            self._give_up(f"not reconnecting after {cause.value} (code {code})")
            return None
        max_attempts = self.options.max_attempts
        if max_attempts is not None and self._attempts_since_open >= max_attempts:
            self._give_up(f"gave up after {self._attempts_since_open} attempts")
            return None
        if self._hint_delay is not None:
            hint, self._hint_delay = self._hint_delay, None
            # Spread a rolling restart over [hint, 2 * hint].
            delay = hint * (1 + self.options.backoff.random())
        else:
            delay = self.options.backoff.delay(retries)
        if self.state is ClientState.CONNECTING:
            self._set_state(ClientState.DISCONNECTED)
        self._set_state(ClientState.RECONNECTING)
        return delay

    def _give_up(self, why: str) -> None:
        self.log.info("client {url}: {why}", url=self.url, why=why)
        # Before any callback runs: one may call connect() again.
        self.factory.stopTrying()
        self._stop_timers()
        if self.state is not ClientState.CLOSED:
            if self.state is ClientState.CONNECTING:
                self._set_state(ClientState.DISCONNECTED)
            self._set_state(ClientState.CLOSED)
        self._fail_pending(why)

    # ------------------------------------------------------------ frames

    def _frame_received(
        self, protocol: WarpSocketClientProtocol, payload: bytes, is_binary: bool
    ) -> None:
        if protocol is not self._protocol:
            return
        self._last_rx = self.clock.seconds()
        self.stats.messages_in += 1
        try:
            envelope = self.codec.decode(payload, is_binary)
        except ProtocolError as error:
            self.log.warn("bad frame from server: {error}", error=error)
            return
        if envelope.type is MessageType.BATCH and batching.EXTENSION in self.core.extensions:
            # The server's answers to one of our batches: each as if alone.
            envelopes = batching.expand(envelope, self.core.data_limits)
            self.stats.messages_in += len(envelopes) - 1
            for inner in envelopes:
                if protocol is not self._protocol:
                    return
                self._envelope_received(inner)
            return
        self._envelope_received(envelope)

    def _envelope_received(self, envelope: Envelope) -> None:
        self._probe_deadline = None
        # The replay window is judged on the server's clock, as far as known.
        server_now = self._now_ms() + (self.core.clock_offset_ms or 0)
        checked, failure = self._crypto.receive(envelope, server_now)
        if failure is not None:
            self._crypto_failed(failure)
        if checked is None:
            return
        envelope = checked
        if envelope.type is MessageType.HEARTBEAT and envelope.ref in self._pings:
            sent = self._pings.pop(envelope.ref or "")
            self.stats.rtt_seconds = self.clock.seconds() - sent
            self.core.observe_clock(envelope, self._now_ms())
            return
        if envelope.type is MessageType.ERROR and envelope.ref is None:
            self.log.warn("server error: {data}", data=envelope.data)
        if envelope.type is MessageType.TRANSFER:
            if self._transfers is not None:  # the chunks extension (warpsocket.transfer)
                self._transfers.received(envelope)
            return
        self._run(self.core.receive(envelope, self._now_ms()))

    def _crypto_failed(self, failure: CryptoFailure) -> None:
        self.log.warn(
            "refused {kind} {id}: {message} ({code})",
            kind=failure.envelope.type.value,
            id=failure.id,
            message=failure.message,
            code=failure.code,
        )
        nack = nack_for(failure, random_id(), self._now_ms())
        if nack is not None:
            self._transmit(nack)
        for listener in list(self._crypto_listeners):
            invoke(listener, failure).addErrback(self._log_failure, "crypto listener")

    def _run(self, actions: list[ClientAction]) -> None:
        for action in actions:
            if isinstance(action, Transmit):
                self._transmit(action.envelope)
            elif isinstance(action, Deliver):
                self._deliver(action.envelope)
            elif isinstance(action, Outcome):
                self._outcome(action)
            elif isinstance(action, Welcomed):
                self._welcomed(action)
            elif isinstance(action, StreamLost):
                self.stats.streams_lost += 1
                for listener in list(self._lost_listeners):
                    invoke(listener, action.stream, action.reason).addErrback(
                        self._log_failure, "lost listener"
                    )
            elif isinstance(action, RoomChanged):
                self.log.debug(
                    "room {room} joined={joined}", room=action.room, joined=action.joined
                )
            elif isinstance(action, Reconnect):
                self.log.warn("reconnecting: {reason}", reason=action.reason)
                if self._protocol is not None:
                    self._protocol.sendClose(int(action.code), action.reason[:100])

    def _transmit(self, envelope: Envelope) -> None:
        protocol = self._protocol
        if protocol is None or protocol.state != protocol.STATE_OPEN:
            # Closing: a tracked message goes back to the queue on disconnect.
            return
        self.stats.messages_out += 1
        if self._batch is not None and self._batch.add(envelope):
            return  # leaves with the batch, at the end of the window
        self._transmit_now(envelope)

    def _transmit_now(self, envelope: Envelope) -> None:
        protocol = self._protocol
        if protocol is None or protocol.state != protocol.STATE_OPEN:
            return
        offset = self.core.clock_offset_ms or 0
        payload = self._crypto.encode(self.codec, envelope, self._now_ms() + offset)
        protocol.sendMessage(payload, isBinary=self.codec.binary)

    def _welcomed(self, welcome: Welcomed) -> None:
        self._cancel_attempt_timer()
        self._crypto.limits = self.core.data_limits
        self._attempts_since_open = 0
        self._start_batching()
        heartbeat = welcome.data.get("heartbeat")
        heartbeat = heartbeat if isinstance(heartbeat, dict) else {}
        timeout, interval = heartbeat.get("timeout"), heartbeat.get("interval")
        if type(timeout) is int and timeout > 0:
            self._heartbeat_timeout = timeout / 1000
        if self.options.ping_interval is None and type(interval) is int and interval > 0:
            self._ping_interval = interval / 1000
        if self.core.rtt_ms is not None:
            self.stats.rtt_seconds = self.core.rtt_ms / 1000
        self._last_ping = self.clock.seconds()
        self.factory.resetDelay()
        self._hint_delay = None
        reconnect = self.stats.connections > 0
        self.stats.connections += 1
        if welcome.resumed:
            self.stats.resumes += 1
        if self._disconnected_at is not None:
            elapsed = self.clock.seconds() - self._disconnected_at
            self.stats.reconnects += 1
            self.stats.last_reconnect_seconds = elapsed
            self.stats.reconnect_times = [*self.stats.reconnect_times[-99:], elapsed]
            self._disconnected_at = None
        self._set_state(ClientState.OPEN)
        self._refresh.succeeded()
        self._schedule_refresh()
        opened = Opened(welcome.session, welcome.resumed, welcome.lost, reconnect)
        for listener in list(self._open_listeners):
            invoke(listener, opened).addErrback(self._log_failure, "open listener")
        waiters, self._open_waiters = self._open_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _start_batching(self) -> None:
        """Batch what this connection sends, if it agreed to ``batch``."""
        window = self.options.batch_window_ms
        bounds = batching.granted_bounds(self.core.extensions.get(batching.EXTENSION))
        if window is None or bounds is None or self._crypto.signed:
            return
        self._batch = batching.OutgoingBatch(
            # 0: the end of this reactor turn, on the reactor itself (not a
            # test's Clock, which would hold the frame until it is advanced).
            self.reactor if window == 0 else self.clock,
            window,
            bounds,
            self.codec,
            send_one=self._transmit_now,
            send_payload=self._send_batch,
            new_id=random_id,
            now_ms=self._now_ms,
        )

    def _send_batch(self, payload: bytes) -> None:
        protocol = self._protocol
        if protocol is not None and protocol.state == protocol.STATE_OPEN:
            self.stats.batch_frames += 1
            protocol.sendMessage(payload, isBinary=self.codec.binary)

    def _deliver(self, envelope: Envelope) -> None:
        if (
            self._transfers is not None
            and envelope.event == ANNOUNCE_EVENT
            and self._transfers.announced(envelope)
        ):
            return  # a transfer announcement, taken by on_transfer
        message = Message(envelope, self)
        handlers = [
            *self._handlers.get(envelope.stream or "", ()),
            *self._handlers.get(message.event, ()),
            *self._handlers.get("*", ()),
        ]
        if self._tracer is not None:
            span = self._tracer.deliver(envelope)
            with self._tracer.current(span):
                results = [invoke(handler, message) for handler in handlers]
            span.end()
        else:
            results = [invoke(handler, message) for handler in handlers]
        if not (envelope.ack and self.options.auto_ack):
            for result in results:
                result.addErrback(self._log_failure, "handler")
            return
        done = DeferredList(results, fireOnOneErrback=True, consumeErrors=True)

        def acknowledge(_: object) -> None:
            self._acknowledge(envelope)

        def failed(failure: Failure) -> None:
            # Not acknowledged: the server application learns of the failure
            # when its ack timeout passes.
            self._log_failure(failure, "handler")

        done.addCallbacks(acknowledge, failed)

    def _acknowledge(self, envelope: Envelope) -> None:
        self._run(self.core.acknowledge(envelope, self._now_ms()))

    def _outcome(self, outcome: Outcome) -> None:
        if self._durable is not None:
            self._durable.done(outcome.id)
        slow = self._slow_calls.pop(outcome.id, None)
        if slow is not None and slow.active():
            slow.cancel()
        if self._tracer is not None:
            self._tracer.outcome(outcome.id, outcome.status.value)
        waiter = self._waiters.pop(outcome.id, None)
        if waiter is None:
            if outcome.status in (Status.REJECTED, Status.EXPIRED, Status.FAILED):
                self.log.warn(
                    "message {id} {status}: {message}",
                    id=outcome.id,
                    status=outcome.status.value,
                    message=outcome.message,
                )
            return
        if outcome.status is Status.RESULT:
            waiter.callback(outcome.data)
        elif outcome.status is Status.ACKED:
            waiter.callback(outcome)
        elif outcome.status is Status.FAILED:
            waiter.errback(ClientClosedError(outcome.message, outcome))
        else:
            waiter.errback(DeliveryError(outcome))

    # ------------------------------------------------------------ timers

    def _start_ticker(self) -> None:
        if self._ticker is None:
            self._ticker = LoopingCall(self._tick)
            self._ticker.clock = self.clock
            self._ticker.start(self.options.tick_interval, now=False)

    def _stop_timers(self) -> None:
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        self._ticker = None
        self._cancel_attempt_timer()
        if self._refresh_call is not None and self._refresh_call.active():
            self._refresh_call.cancel()
        self._refresh_call = None
        if self._watcher is not None:
            self._watcher.stop()

    def _tick(self) -> None:
        now = self.clock.seconds()
        protocol = self._protocol
        if protocol is not None:
            silent = now - self._last_rx
            probe_failed = self._probe_deadline is not None and now >= self._probe_deadline
            if silent > self._heartbeat_timeout or probe_failed:
                self.log.warn("no frame from the server for {s:.1f}s: dropping", s=silent)
                self._timed_out = True
                protocol.dropConnection(abort=True)
            elif (
                self.state is ClientState.OPEN
                and self._ping_interval
                and now - self._last_ping >= self._ping_interval
            ):
                self.ping()  # keeps stats.rtt_seconds current
        self._run(self.core.tick(self._now_ms()))

    def _network_changed(self) -> None:
        """The local network changed: retry now, or check that the connection lives."""
        if self.state is ClientState.RECONNECTING:
            self.log.info("network changed: reconnecting now")
            self.reconnect()
        elif self.state is ClientState.OPEN and self._protocol is not None:
            # The path may be gone: ask for an answer and drop if none comes soon.
            self._probe_deadline = self.clock.seconds() + self.options.network_probe_timeout
            self.ping()

    # ------------------------------------------------------------ token refresh

    def _schedule_refresh(self, delay: float | None = None) -> None:
        """Plan the next refresh: ``delay`` seconds from now, or by the token's exp."""
        if self._refresh_call is not None and self._refresh_call.active():
            self._refresh_call.cancel()
        self._refresh_call = None
        if self.token_provider is None or self.state is ClientState.CLOSED:
            return
        if delay is None:
            delay = self._refresh.delay(self._token, self.clock.seconds())
            if delay is None:
                return
        self._refresh_call = self.clock.callLater(delay, self._refresh_due)

    def _refresh_due(self) -> None:
        self._refresh_call = None
        self.refresh_token()

    def refresh_token(self) -> Deferred[None]:
        """Ask the token provider for a new token and send it in band (``auth``).

        A token equal to the current one, or one that expires no later, is
        not a refresh: the next try backs off (``refresh_min_interval``
        doubling to ``refresh_max_interval``), as after a provider failure.
        """
        if self.token_provider is None:
            return succeed(None)
        previous = self._token

        def send(token: Any) -> None:
            if self._protocol is None or self.state is not ClientState.OPEN:
                return  # the next welcome schedules the next refresh
            deliver, fresh = self._refresh.judge(previous, token, self.clock.seconds())
            if deliver:
                self._token = token
                envelope = Envelope(
                    type=MessageType.AUTH,
                    id=random_id(),
                    timestamp=self._now_ms(),
                    data={"token": token},
                )
                self._transmit(envelope)
            if fresh:
                self._refresh.succeeded()
                self._schedule_refresh()
            else:
                self.log.warn("token provider gave no fresher token: backing off")
                self._schedule_refresh(self._refresh.backoff())

        def failed(failure: Failure) -> None:
            self._log_failure(failure, "token provider")
            if self.state is ClientState.OPEN:
                self._schedule_refresh(self._refresh.backoff())

        return invoke(self.token_provider).addCallbacks(send, failed)

    def ping(self) -> None:
        """Send a heartbeat; its answer updates ``stats.rtt_seconds``.

        The client also pings by itself every ``ping_interval``.
        """
        if self._protocol is None or self.state is not ClientState.OPEN:
            return
        envelope = heartbeat_envelope(random_id(), self._now_ms())
        self._last_ping = self.clock.seconds()
        self._pings[envelope.id] = self._last_ping
        self._transmit(envelope)

    # ------------------------------------------------------------ durability

    def _persist(self, ident: str) -> None:
        if self._durable is None:
            return
        queued = self.core.find(ident)
        if queued is not None:
            self._durable.add(queued.envelope, queued.priority, queued.deadline_ms)

    def _restore_durable(self) -> None:
        assert self._durable is not None
        for envelope, priority, deadline in self._durable.load():
            self._run(self.core.restore(envelope, priority, deadline, self._now_ms()))

    def _log_failure(self, failure: Failure, what: str) -> None:
        self.log.failure("{what} failed", failure, what=what)


def _retry_hint(reason: str) -> float | None:
    try:
        hint = json.loads(reason).get("retry_after_ms")
    except (ValueError, AttributeError):
        return None
    if isinstance(hint, int) and 0 <= hint <= 3_600_000:
        return hint / 1000
    return None


__all__ = [
    "ClientClosedError",
    "ClientStats",
    "ConnectTimeoutError",
    "DeliveryError",
    "Message",
    "Opened",
    "WarpSocketClient",
]


class _Events:
    """The client as its transport sees it (``TransportEvents``): the protocol
    and factory call these, and only these, so they need not know the client."""

    def __init__(self, client: WarpSocketClient) -> None:
        self._client = client

    def tcp_connected(self, protocol: WarpSocketClientProtocol) -> None:
        self._client._tcp_connected(protocol)

    def connecting(self, protocol: WarpSocketClientProtocol) -> str | None:
        return self._client._connecting(protocol)

    def upgraded(self, protocol: WarpSocketClientProtocol, subprotocol: str | None) -> None:
        self._client._transport_connected(protocol, subprotocol)

    def opened(self, protocol: WarpSocketClientProtocol) -> None:
        self._client._transport_open(protocol)

    def frame(self, protocol: WarpSocketClientProtocol, payload: bytes, binary: bool) -> None:
        self._client._frame_received(protocol, payload, binary)

    def closed(
        self, protocol: WarpSocketClientProtocol, code: int | None, reason: str | None
    ) -> None:
        self._client._transport_closed(protocol, code, reason)

    def attempt_failed(self, reason: Failure) -> None:
        self._client._attempt_failed(reason)

    def next_delay(self, retries: int) -> float | None:
        return self._client._next_delay(retries)

    def attempting(self) -> None:
        self._client._attempting()
