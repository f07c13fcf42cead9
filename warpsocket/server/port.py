"""The hub's port: the narrow interface the transport and the service use.

The WebSocket protocol (``protocol.py``) attaches and detaches connections,
hands over what they receive and reports their close frames; the security
gate sets the identity a token proves; the service runs the timers and the
housekeeping tick and drains on shutdown. None of that is application API,
so none of it is on ``Hub``: it is here, as ``hub.port``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from warpsocket.backends.base import Backend
from warpsocket.core.keys import DIRECT_PREFIX, ROOM_PREFIX
from warpsocket.core.server import ConnId, ServerCore, SessionOpened
from warpsocket.core.store import LocalStreamStore
from warpsocket.protocol.codes import ErrorCode
from warpsocket.protocol.envelope import Envelope
from warpsocket.server.cluster_sync import ClusterSync
from warpsocket.server.connection import Connection
from warpsocket.server.dispatcher import Dispatcher
from warpsocket.server.inbound import Inbound
from warpsocket.server.metrics import HubMetrics
from warpsocket.server.middleware import Handshake, Middleware, Reject
from warpsocket.server.outbox import Outbox
from warpsocket.server.runner import ActionRunner
from warpsocket.server.timers import ConnectionTimers
from warpsocket.server.wire.batching import WriteBatch

# Ticks between sweeps of unused in-memory streams.
STREAM_COLLECT_TICKS = 60


def _close_label(code: int | None) -> str:
    """A metrics label for a close code: the peer chooses it, so unknown ones share one."""
    if code is None or 1000 <= code <= 1015 or code in ErrorCode._value2member_map_:
        return str(code)
    return "other"


class HubPort:
    """Connection lifecycle, timers and shutdown, for the transport and the service."""

    log = Logger()

    def __init__(
        self,
        core: ServerCore,
        backend: Backend,
        metrics: HubMetrics,
        clock: IReactorTime,
        *,
        runner: ActionRunner,
        inbound: Inbound,
        dispatcher: Dispatcher,
        cluster: ClusterSync,
        outbox: Outbox,
        middleware: list[Middleware],
        write_batch: WriteBatch,
    ) -> None:
        self.core = core
        self.backend = backend
        self.metrics = metrics
        self.clock = clock
        self._runner = runner
        self._connections = runner.connections
        self._inbound = inbound
        self._dispatcher = dispatcher
        self._cluster = cluster
        self._outbox = outbox
        self._middleware = middleware
        # Frames written while it is open leave in one write per connection.
        self.write_batch = write_batch
        # Set by the service while it drains: new handshakes are refused.
        self.draining = False
        # Hello/heartbeat timeouts, idle eviction and heartbeats, each on time
        # (timers.py); started and stopped by the service.
        self.timers = ConnectionTimers(clock, core.next_timer_ms, self.run_timers)
        core.on_deadline = self.timers.wake_by
        self._next_conn = 0
        self._empty_waiters: list[Deferred[None]] = []
        # Connections we sent a close frame (their disconnect is counted).
        self._closing: set[ConnId] = set()
        self._ticks = 0
        # A whole message arrived (the pipeline's own methods: no extra call
        # per message); ``decoded``: one the transport decoded already (an
        # authenticated hello), so that it is not decoded twice.
        self.received: Callable[[ConnId, bytes, bool], None] = inbound.received
        self.decoded: Callable[[ConnId, Envelope, int], None] = inbound.decoded
        # The gauges are counted when /metrics is scraped, not set on every
        # connect, welcome and close.
        connections = self._connections
        metrics.connections.set_function(lambda: len(connections))
        metrics.sessions.set_function(lambda: len(core.sessions))
        metrics.rooms.set_function(lambda: len(core.room_sessions))

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    @property
    def connections(self) -> Mapping[ConnId, Connection]:
        """The open connections by id (a read-only view)."""
        return MappingProxyType(self._connections)

    # ------------------------------------------------------------ the transport

    def check_handshake(self, handshake: Handshake) -> None:
        """Run connect middleware; raises Reject to refuse."""
        if self.draining:
            raise Reject(ErrorCode.GOING_AWAY, "server is shutting down")
        for middleware in self._middleware:
            middleware.on_connect(handshake)

    def attach(self, connection: Connection, handshake: Handshake) -> ConnId:
        self._next_conn += 1
        conn_id = self._next_conn
        self._connections[conn_id] = connection
        self.core.open(conn_id, self.now_ms(), handshake.user, handshake.claims)
        return conn_id

    def heard(self, conn_id: ConnId) -> None:
        """Bytes of a frame of any type arrived on the connection (protocol.md section 9)."""
        self.core.heard(conn_id, self.now_ms())

    def set_identity(self, conn_id: ConnId, user: str | None, claims: Mapping[str, Any]) -> bool:
        """A token in the hello proved who the connection is, before the core sees it."""
        return self.core.set_identity(conn_id, user, claims)

    def set_claims(self, session: str, user: str | None, claims: Mapping[str, Any]) -> bool:
        """A session takes the claims of a newer token of its user."""
        return self.core.set_claims(session, user, claims)

    def closing(self, conn_id: ConnId, code: int | None) -> None:
        """We sent the connection our close frame: the disconnect is counted
        now, under our code, not when the peer answers or the close times out."""
        if conn_id in self._connections and conn_id not in self._closing:
            self._closing.add(conn_id)
            self.metrics.disconnects.labels(_close_label(code)).inc()

    def detach(self, conn_id: ConnId, code: int | None) -> None:
        connection = self._connections.pop(conn_id, None)
        if connection is None:
            return
        if conn_id in self._closing:
            self._closing.discard(conn_id)  # counted when we decided to close it
        else:
            self.metrics.disconnects.labels(_close_label(code)).inc()
        self._inbound.forget(conn_id)
        session = self.core.close(conn_id, self.now_ms())
        if session is not None:
            self._cluster.detached(session)
            self._dispatcher.closed(session.id, connection, code)
        # Last: a graceful stop may complete as soon as this fires, and the
        # on_close hooks of the last connection belong before that.
        if not self._connections:
            waiters, self._empty_waiters = self._empty_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def opened(self, opened: SessionOpened, connection: Connection) -> None:
        """The core welcomed a connection into a session (the runner's callback)."""
        if opened.session not in self.core.sessions:
            return
        connection.session = opened.session
        self._dispatcher.opened(opened.session, connection, opened.resumed)
        self._cluster.session_changed(opened.session)

    # ------------------------------------------------------------ timers

    def run_timers(self, due_ms: int) -> None:
        """The connection timers due by ``due_ms`` (called by ``self.timers``)."""
        try:
            self._runner.run(self.core.run_timers(max(self.now_ms(), due_ms)))
        except Exception:
            self.log.failure("connection timers failed")

    def tick(self) -> None:
        # An exception escaping here would stop the TimerService's LoopingCall
        # for good (no more heartbeats, timeouts or retries): log it instead.
        try:
            now = self.now_ms()
            self._runner.run(self.core.tick(now))
            store = self.core.store
            if isinstance(store, LocalStreamStore):
                self.metrics.history_bytes.set(store.bytes)
            self.backend.tick(now)
            if self.backend.clustered:
                self._cluster.tick(now)
            else:
                self._collect_streams(now)
        except Exception:
            self.log.failure("hub tick failed")

    def _collect_streams(self, now: int) -> None:
        """Now and then, forget in-memory streams of rooms and sessions that are gone."""
        self._ticks += 1
        store = self.core.store
        if self._ticks % STREAM_COLLECT_TICKS or not isinstance(store, LocalStreamStore):
            return
        core = self.core

        def in_use(key: str) -> bool:
            if key.startswith(ROOM_PREFIX):
                return key[len(ROOM_PREFIX) :] in core.room_sessions or key in core.members
            if key.startswith(DIRECT_PREFIX):
                return key[len(DIRECT_PREFIX) :] in core.sessions
            return True  # broadcast

        store.collect(in_use, now)

    # ------------------------------------------------------------ shutdown

    def close_all(self, code: ErrorCode, reason: str) -> None:
        for connection in list(self._connections.values()):
            connection.close(int(code), reason)

    def when_empty(self) -> Deferred[None]:
        """Fires when no connection is left (at once if there is none)."""
        if not self._connections:
            return succeed(None)
        waiter: Deferred[None] = Deferred(lambda d: self._empty_waiters.remove(d))
        self._empty_waiters.append(waiter)
        return waiter

    def abort_all(self) -> None:
        for connection in list(self._connections.values()):
            connection.abort()

    def fail_pending_acks(self, code: ErrorCode) -> None:
        self._outbox.fail_pending_acks(code)
