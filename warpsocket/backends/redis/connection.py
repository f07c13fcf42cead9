"""txredisapi glue: the command and subscriber connections of a node.

Each is found (from the URL, or from Sentinel's current master), opened, and
opened again with backoff when it is lost; what a new connection means for
the node (re-subscribe, re-read streams, rewrite sessions) is the backend's.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

import txredisapi
from twisted.internet import protocol, ssl
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from warpsocket import _compat
from warpsocket._nodelay import set_no_delay
from warpsocket.backends.redis.options import RedisAddress, RedisOptions, host_port, parse_redis_url

Batch = Callable[[], AbstractContextManager[None]]
Later = Callable[..., None]
"""``later(delay, func, *args)``: a timer the backend cancels when it stops."""
_log = Logger()


class RedisLink(Protocol):
    """What the backend's parts use of their connections: one Redis (``Connections``)
    or a Redis Cluster (``cluster.ClusterConnections``) alike."""

    cmd: Any
    sub: Any
    batch: Batch
    error: str
    running: bool

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def close_sentinel(self) -> Deferred[None]: ...
    def drop(self, conn: Any) -> None: ...
    def trouble(self, conn: Any, failure: Failure) -> None: ...


def reply_text(value: Any) -> str:
    """A Redis reply as text (txredisapi hands out bytes or str)."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def build_command(args: tuple[Any, ...], charset: str, errors: str) -> bytes:
    """A RESP command, as txredisapi builds it, in one join (its own builder
    encodes each argument and its length separately: a tenth of a node's
    time per acked message in a cluster)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode(charset, errors)
        elif type(arg) is int:
            data = b"%d" % arg
        elif isinstance(arg, float):
            data = format(arg, "f").encode()
        else:
            data = str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


SetOptions = tuple[int, bytes]
"""``SET``'s options after the value, as RESP, and how many they are (``set_options``)."""


def set_options(*options: Any) -> SetOptions:
    """``SET``'s options (``"PX", 1000``) in RESP, built once for many commands."""
    whole = build_command(options, "utf-8", "strict")
    return len(options), whole[whole.index(b"\r\n") + 2 :]


def set_command(key: str, value: bytes, options: SetOptions) -> bytes:
    """``SET key value`` and ``options`` in RESP: the only formatting per command."""
    raw = key.encode("utf-8")
    count, tail = options
    return b"*%d\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n%b" % (
        count + 3,
        len(raw),
        raw,
        len(value),
        value,
        tail,
    )


class ReadsInOneBatch:
    """Each read of a Redis connection is handled inside the hub's write batch
    (``factory.batch``): one read can carry many published messages, or the
    replies to a turn's dedup claims (``CommandProtocol.dataReceived`` does
    the same for those), and the frames they cause leave together when the
    read ends, one write per connection."""

    factory: Any

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        with self.factory.batch():
            super().dataReceived(data, unpause)  # type: ignore[misc]


class Pipelined:
    """Commands written together (``send_commands``), waiting for their replies."""

    __slots__ = ("answered", "count", "failed", "replies", "timer")

    def __init__(
        self,
        count: int,
        answered: Callable[[list[Any]], None],
        failed: Callable[[Exception], None],
    ) -> None:
        self.count = count
        self.replies: list[Any] = []
        self.answered = answered
        self.failed = failed
        self.timer: Any = None


class CommandProtocol(txredisapi.RedisProtocol):  # type: ignore[misc]
    """The command connection: txredisapi's, with a faster command builder,
    and ``send_commands``: many commands, one callback with all their replies
    (no Deferred, no timer per command), read straight from the reply parser.
    Each read is handled inside the hub's write batch, as ``ReadsInOneBatch``
    does for the subscriber."""

    # The socket ``send_commands`` writes to at once (``_compat.eager_socket``):
    # a turn's dedup commands leave when they are built, not after the
    # reactor's next poll (which costs two epoll_ctl calls and a write event).
    _socket: Any = None
    _write = _compat.write_socket_first

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # In the order they were written, what waits for the next replies:
        # None for one txredisapi command, a ``Pipelined`` for its commands.
        self._expected: deque[Pipelined | None] = deque()

    def connectionMade(self) -> Any:
        self._socket = _compat.eager_socket(self.transport)
        return super().connectionMade()

    def _build_command(self, *args: Any, **kwargs: Any) -> bytes:
        return build_command(args, self.charset or "utf-8", self.errors)

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        sent = super().execute_command(*args, **kwargs)
        self._expected.append(None)
        return sent

    def send_commands(
        self,
        commands: bytes,
        count: int,
        answered: Callable[[list[Any]], None],
        failed: Callable[[Exception], None],
    ) -> None:
        """Write ``count`` RESP ``commands``; ``answered(replies)`` once every
        reply is in (an error reply is a ``txredisapi.ResponseError`` in the
        list), or ``failed(reason)`` if the connection is lost first (or no
        reply comes within the reply timeout, which drops the connection).

        Replies are matched to requests by their order, so txredisapi's own
        pipelining (which writes its commands later) must not be on."""
        if not self.connected or self.pipelining:
            refused = "Not connected" if not self.connected else "pipelining"
            _tell(failed, txredisapi.ConnectionError(refused))
            return
        if not count:
            _tell(answered, [])
            return
        waiting = Pipelined(count, answered, failed)
        if self.replyTimeout:
            waiting.timer = self.callLater(self.replyTimeout, self._timed_out)
        self._expected.append(waiting)
        self._write(commands)

    def _timed_out(self) -> None:
        # As txredisapi does for its own commands: the connection is dropped
        # (and opened again), which fails everything still waiting.
        self.transport.abortConnection()

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        # ``ReadsInOneBatch``'s batch around both: the answers a read decides
        # leave together at its end.
        with self.factory.batch():
            reader = getattr(self, "_reader", None)  # (hiredis's; None without it)
            if reader is None:
                txredisapi.RedisProtocol.dataReceived(self, data, unpause)
                return
            if data:
                reader.feed(data)
            self._take_pipelined(reader)
            # Whatever is left (txredisapi's own commands first in line), its way.
            txredisapi.RedisProtocol.dataReceived(self, b"", unpause)

    def _take_pipelined(self, reader: Any) -> None:
        """The replies of ``send_commands`` batches at the head of the line,
        straight from hiredis's reader. txredisapi's loop costs about a
        microsecond more per reply (a call for each conversion, transaction
        bookkeeping that plain commands do not need), and an acked message on
        a cluster node has two replies (docs/performance.md, "Eleventh
        round"). The replies are converted as txredisapi converts them (text
        decoded with the connection's charset; this connection never turns
        numbers in text into numbers). A MULTI in progress, or a connection
        that converts numbers, leaves everything to txredisapi."""
        charset = self.charset
        while not self.inTransaction and not self.convertNumbers:
            expected = self._expected  # (a listener may drop the connection: a new deque)
            head = expected[0] if expected else None
            if head is None:
                return  # nothing waiting, or a txredisapi command: its reply is next
            replies = head.replies
            while len(replies) < head.count:
                reply = reader.gets()
                if reply is False:
                    return  # the rest of the batch is in a later read
                if type(reply) is bytes:
                    if charset is not None:
                        reply = _text(reply, charset)
                elif type(reply) is list:
                    reply = self.tryConvertData(reply)
                replies.append(reply)
            self._finish(head)

    def replyReceived(self, reply: Any) -> None:
        expected = self._expected
        head = expected[0] if expected else None
        if head is None:
            if expected:
                expected.popleft()
            super().replyReceived(reply)
            return
        head.replies.append(reply)
        if len(head.replies) == head.count:
            self._finish(head)

    def _finish(self, head: Pipelined) -> None:
        """Every reply of the batch at the head of the line is in: answer it."""
        self._expected.popleft()
        if head.timer is not None and head.timer.active():
            head.timer.cancel()
        _tell(head.answered, head.replies)

    def connectionLost(self, why: Any) -> None:
        expected, self._expected = self._expected, deque()
        # txredisapi's part first: once the batches hear of it, the connection
        # is no longer ``connected`` (nothing can be sent on it again) and
        # the backend no longer holds it as its command connection.
        super().connectionLost(why)
        for waiting in expected:
            if waiting is not None:
                if waiting.timer is not None and waiting.timer.active():
                    waiting.timer.cancel()
                _tell(waiting.failed, txredisapi.ConnectionError("Lost connection"))


def _text(reply: bytes, charset: str) -> str | bytes:
    """A reply's bytes as text, as txredisapi converts them (kept as bytes if
    they are not in ``charset``)."""
    try:
        return reply.decode(charset)
    except UnicodeDecodeError:
        return reply


def _tell(listener: Callable[[Any], None], what: Any) -> None:
    try:
        listener(what)
    except Exception:
        # A listener's bug must not break the connection's reading of replies.
        _log.failure("a Redis reply's listener failed")


class Subscriber(ReadsInOneBatch, txredisapi.SubscriberProtocol):  # type: ignore[misc]
    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        self.factory.on_message(channel, message)


class ConnectionFactory(protocol.Factory):
    """Builds one txredisapi protocol; reconnection is ``Connections``' job."""

    isLazy = False
    noisy = False

    def __init__(
        self,
        protocol_class: Any,
        address: RedisAddress,
        reply_timeout: float | None,
        on_message: Callable[[Any, Any], None] | None = None,
        batch: Batch = nullcontext,
    ) -> None:
        self.protocol_class = protocol_class
        self.address = address
        self.reply_timeout = reply_timeout
        self.on_message = on_message
        self.batch = batch
        self.error: str | None = None

    def buildProtocol(self, addr: Any) -> Any:
        built = self.protocol_class(
            "utf-8",
            replyTimeout=self.reply_timeout,
            password=self.address.password,
            dbid=self.address.db or None,
            convertNumbers=False,
        )
        built.factory = self
        return built

    def stopTrying(self) -> None:  # called by txredisapi when AUTH/SELECT fail
        pass

    def connectionError(self, why: str) -> None:
        self.error = why


def open_connection(reactor: Any, timeout: float, factory: ConnectionFactory) -> Deferred[Any]:
    """Connect, and fire once txredisapi's setup (AUTH, SELECT) is done.

    Fails if that takes longer than twice ``timeout`` or the connection closes first.
    """
    address = factory.address
    endpoint: IStreamClientEndpoint = HostnameEndpoint(
        reactor, address.host, address.port, timeout=timeout
    )
    if address.tls:
        endpoint = wrapClientTLS(ssl.optionsForClientTLS(address.host), endpoint)
    connecting: Deferred[Any] = endpoint.connect(factory)
    timer = reactor.callLater(timeout * 2, connecting.cancel)

    def opened(conn: Any) -> Deferred[Any]:
        # Small pipelined commands must not wait for Nagle's algorithm.
        set_no_delay(getattr(conn, "transport", None))
        ready: Deferred[Any] = conn.whenConnected()
        # AUTH or SELECT failing closes the connection without firing it.
        conn.whenDisconnected().addCallback(
            lambda _: (
                None
                if ready.called
                else ready.errback(
                    ConnectionError(factory.error or "connection closed during setup")
                )
            )
        )
        return ready

    def untime(result: Any) -> Any:
        if timer.active():
            timer.cancel()
        return result

    return connecting.addCallback(opened).addBoth(untime)


class Connections:
    """``cmd`` and ``sub``: the current command and subscriber connections, or None."""

    def __init__(
        self,
        options: RedisOptions,
        reactor: Any,
        *,
        later: Later,
        stats: dict[str, int],
        log: Logger,
        on_message: Callable[[Any, Any], None],
        on_connected: Callable[[str, Any], None],
        on_lost: Callable[[str, bool], None],
    ) -> None:
        self.options = options
        self.reactor = reactor
        self._later = later
        self._stats = stats
        self._log = log
        self._on_message = on_message
        # ``(kind, conn)``, once ``cmd`` or ``sub`` is the new connection.
        self._on_connected = on_connected
        # ``(kind, current)``: ``current`` when it was ``cmd`` or ``sub`` still.
        self._on_lost = on_lost
        self.batch: Batch = nullcontext
        self.cmd: Any = None
        self.sub: Any = None
        self.error = "starting"
        self.running = False
        self._connecting: set[str] = set()
        self._retry: dict[str, float] = {}
        self._sentinel: Any = None

    def start(self) -> None:
        self.running = True
        if self.options.sentinels:
            addresses = [host_port(a) for a in self.options.sentinels]
            self._sentinel = txredisapi.Sentinel(addresses)
        self._connect("cmd")
        self._connect("sub")

    def stop(self) -> None:
        """Close both connections, for good."""
        self.running = False
        for conn in (self.cmd, self.sub):
            if conn is not None and conn.transport is not None:
                conn.transport.abortConnection()
        self.cmd = self.sub = None

    def close_sentinel(self) -> Deferred[None]:
        if self._sentinel is not None:
            sentinel, self._sentinel = self._sentinel, None
            done: Deferred[None] = sentinel.disconnect()
            return done.addBoth(lambda _: None)
        return succeed(None)

    def drop(self, conn: Any) -> None:
        """Abort a connection; it is opened again as if it had been lost."""
        if conn is not None and conn.transport is not None:
            conn.transport.abortConnection()

    def trouble(self, conn: Any, failure: Failure) -> None:
        """A READONLY reply means we talk to a demoted master: reconnect (rediscover)."""
        message = failure.getErrorMessage()
        if "READONLY" in message or "LOADING" in message or failure.check(txredisapi.TimeoutError):
            self.drop(conn)

    def _address(self) -> Deferred[RedisAddress]:
        options = self.options
        if self._sentinel is None:
            assert options.url is not None
            return succeed(parse_redis_url(options.url))

        def found(addr: tuple[str, int]) -> RedisAddress:
            return RedisAddress(addr[0], int(addr[1]), options.db or 0, options.password, False)

        discovered: Deferred[tuple[str, int]] = self._sentinel.discover_master(options.service)
        return discovered.addCallback(found)

    def _connect(self, kind: str) -> None:
        if not self.running or kind in self._connecting:
            return
        self._connecting.add(kind)

        def connect(address: RedisAddress) -> Deferred[Any]:
            if kind == "sub":
                factory = ConnectionFactory(
                    Subscriber, address, None, self._on_message, lambda: self.batch()
                )
            else:
                factory = ConnectionFactory(
                    CommandProtocol,
                    address,
                    self.options.reply_timeout,
                    batch=lambda: self.batch(),
                )
            return open_connection(self.reactor, self.options.connect_timeout, factory)

        def connected(conn: Any) -> None:
            self._connecting.discard(kind)
            self._retry.pop(kind, None)
            if not self.running:
                conn.transport.abortConnection()
                return
            conn.whenDisconnected().addCallback(lambda _: self._lost(kind, conn))
            if kind == "cmd":
                self.cmd = conn
                self.error = "ok"
            else:
                self.sub = conn
            self._on_connected(kind, conn)

        def failed(failure: Failure) -> None:
            self._connecting.discard(kind)
            self.error = failure.getErrorMessage() or repr(failure.value)
            self._backoff(kind)

        self._address().addCallback(connect).addCallbacks(connected, failed)

    def _backoff(self, kind: str) -> None:
        delay = self._retry.get(kind, self.options.reconnect_delay / 2) * 2
        delay = min(delay, self.options.max_reconnect_delay)
        self._retry[kind] = delay
        self._later(delay, self._connect, kind)

    def _lost(self, kind: str, conn: Any) -> None:
        self._stats["reconnects"] += 1
        current = False
        if kind == "cmd" and self.cmd is conn:
            self.cmd = None
            self.error = "connection lost"
            current = True
        elif kind == "sub" and self.sub is conn:
            self.sub = None
            current = True
        self._on_lost(kind, current)
        if self.running:
            self._log.warn("redis {kind} connection lost; reconnecting", kind=kind)
            self._backoff(kind)
