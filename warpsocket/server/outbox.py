"""What the server sends and publishes: the one path from a send to a stream.

Every message a stream gets goes through here: the application's sends and
publishes (``send``, ``publish``) and a client's room events (the core's
``Publish`` action, ``perform``). Each is appended through the backend,
which hands it back to ``delivered`` for this node's members (at once, with
the memory backend; through the cluster, with Redis); an acknowledged direct
send then waits for the client's ack (``ServerCore.track_ack``).

The property tests in ``tests/test_core_property.py`` drive this class over
a ``MemoryBackend``: the composition they check is the one the hub runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from warpsocket.backends.base import Backend
from warpsocket.core.keys import direct_key
from warpsocket.core.server import AckResult, Action, Publish, ServerCore
from warpsocket.protocol.codes import ErrorCode
from warpsocket.protocol.datamodel import DataLimits, check_value
from warpsocket.protocol.envelope import Envelope, MessageType
from warpsocket.server.metrics import HubMetrics
from warpsocket.server.middleware import Middleware
from warpsocket.server.remote_acks import RemoteAcks


class AckTimeoutError(Exception):
    """An acknowledged send was not acknowledged in time (or its session expired).

    The Deferred of ``Hub.send(..., ack=True)`` fails with it; ``session`` and
    ``offset`` name the message, ``code`` says why (``TIMEOUT``, or e.g.
    ``GOING_AWAY`` when the server shut down first).
    """

    def __init__(self, session: str, offset: int, code: ErrorCode) -> None:
        super().__init__(f"session {session}: message {offset} not acknowledged ({code.wire_name})")
        self.session = session
        self.offset = offset
        self.code = code


class Outbox:
    """Appends through the backend, delivers to local members, tracks acked sends."""

    log = Logger()
    # Told of each stored acked send and its waiter (slow-ack alerts), when set.
    ack_watch: Callable[[str, Envelope, Deferred[None]], None] | None = None

    def __init__(
        self,
        core: ServerCore,
        backend: Backend,
        *,
        run: Callable[[list[Action]], None],
        now_ms: Callable[[], int],
        clock: IReactorTime,
        metrics: HubMetrics,
        middleware: Sequence[Middleware] = (),
        remote_acks: RemoteAcks | None = None,
    ) -> None:
        self.core = core
        self.backend = backend
        self._run = run
        self._now_ms = now_ms
        self._clock = clock
        self.metrics = metrics
        # The hub's list: middleware added later applies too.
        self.middleware = middleware
        self.data_limits: DataLimits = core.options.data_limits
        # Acked sends to sessions on other nodes (clustered backends only).
        self.remote_acks = (
            remote_acks
            if remote_acks is not None
            else RemoteAcks(
                clock,
                core.options.max_pending_acks,
                lambda session, offset: AckTimeoutError(session, offset, ErrorCode.TIMEOUT),
            )
        )
        # (session, offset, epoch) of acknowledged direct sends -> their Deferred.
        self._ack_waiters: dict[tuple[str, int, str | None], Deferred[None]] = {}
        backend.set_delivery(self.delivered)

    # ------------------------------------------------------------ application sends

    def outbound(self, event: str, data: Any, ttl: float | None, *, ack: bool = False) -> Envelope:
        """The envelope an application send becomes, after outbound middleware."""
        envelope = Envelope(
            type=MessageType.EVENT,
            id=self.core.new_id(),
            timestamp=self._now_ms(),
            event=event,
            data=data,
            ttl=None if ttl is None else max(1, int(ttl * 1000)),
            ack=ack,
        )
        for middleware in self.middleware:
            envelope = middleware.on_outbound(None, envelope)
        # Refuse it here, before the core stores it: a payload no codec can
        # encode would otherwise sit in the stream history and break every
        # replay of it (each resume of the session would fail).
        if envelope.data is not None:
            check_value(envelope.data, self.data_limits)
        return envelope

    def send(
        self,
        session: str,
        event: str,
        data: Any = None,
        *,
        ack: bool = False,
        ttl: float | None = None,
        timeout: float | None = None,
    ) -> Deferred[None]:
        """``Hub.send``: to one session's ``direct`` stream, on any node."""
        envelope = self.outbound(event, data, ttl, ack=ack)
        remote = self.backend.clustered and session not in self.core.sessions
        if remote and ack:
            self.remote_acks.check(session)
        elif not remote:
            self.core.check_send(session, ack)
        appended = self.backend.publish(direct_key(session), envelope, envelope.timestamp)
        if not ack:
            return appended.addCallback(lambda _: None)
        waiter: Deferred[None] = Deferred()
        timeout_ms = None if timeout is None else int(timeout * 1000)
        if remote:
            # Attached to another node, or to none yet: that node's client
            # acknowledges there, and the notice comes back (remote_acks.py).
            seconds = timeout if timeout is not None else self.core.options.ack_timeout_ms / 1000

            def wait_remote(stored: Envelope) -> None:
                assert stored.offset is not None
                waiting = self.remote_acks.wait(
                    session, stored.offset, stored.epoch, stored.id, seconds
                )
                waiting.chainDeferred(waiter)
                if self.ack_watch is not None:
                    self.ack_watch(session, stored, waiter)

            appended.addCallbacks(wait_remote, waiter.errback)
            return waiter

        def track(stored: Envelope) -> None:
            assert stored.offset is not None
            self._ack_waiters[(session, stored.offset, stored.epoch)] = waiter
            self.metrics.acks_pending.set(len(self._ack_waiters))
            self._run(self.core.track_ack(session, stored, self._now_ms(), timeout_ms))
            if self.ack_watch is not None:
                self.ack_watch(session, stored, waiter)

        appended.addCallbacks(track, waiter.errback)
        return waiter

    def publish(self, key: str, event: str, data: Any, ttl: float | None) -> Deferred[Envelope]:
        """``Hub.publish`` and ``Hub.broadcast``: into a room's or the broadcast stream."""
        envelope = self.outbound(event, data, ttl)
        appended = self.backend.publish(key, envelope, envelope.timestamp)
        # The history keeps the payload compact; the caller gets its own back.
        return appended.addCallback(lambda stored: stored.evolve(data=envelope.data))

    # ------------------------------------------------------------ the core's side

    def perform(self, publish: Publish) -> None:
        """A client's room event (the ``Publish`` action): append it, then answer."""
        reply_to = publish.reply_to

        def settle(error: tuple[ErrorCode | int, str] | None = None) -> None:
            self._run(
                self.core.settle(reply_to.session, reply_to.envelope, self._now_ms(), error=error)
            )

        def failed(failure: Failure) -> None:
            self.log.warn("room publish failed: {why}", why=failure.getErrorMessage())
            settle((ErrorCode.UNAVAILABLE, f"cluster unavailable: {failure.getErrorMessage()}"))

        self.backend.publish(publish.key, publish.template, self._now_ms()).addCallbacks(
            lambda _: settle(), failed
        )

    def delivered(self, key: str, stored: Envelope) -> None:
        """The backend hands over a stream message for this node's members."""
        actions = self.core.deliver(key, stored)
        if actions:
            self._run(actions)
            latency = self._clock.seconds() - stored.timestamp / 1000
            self.metrics.delivery.observe(key.partition(":")[0], latency)

    def ack_result(self, result: AckResult) -> None:
        """The ``AckResult`` action: an acked send was acknowledged, or failed."""
        waiter = self._ack_waiters.pop((result.session, result.offset, result.epoch), None)
        self.metrics.acks_pending.set(len(self._ack_waiters))
        if waiter is None:
            return
        if result.code is None:
            waiter.callback(None)
        else:
            waiter.errback(AckTimeoutError(result.session, result.offset, result.code))

    def fail_pending_acks(self, code: ErrorCode) -> None:
        """Every acked send still waiting fails with ``code`` (a shutdown)."""
        for (session, offset, epoch), waiter in list(self._ack_waiters.items()):
            del self._ack_waiters[(session, offset, epoch)]
            waiter.errback(AckTimeoutError(session, offset, code))
        self.metrics.acks_pending.set(len(self._ack_waiters))
        self.remote_acks.fail_all(lambda session, offset: AckTimeoutError(session, offset, code))
