"""Every use of a private attribute of Twisted or Autobahn, in one place.

WarpSocket reaches into a few internals of its two libraries, for speed (eager
writes, the frame fast path) or for what no public API tells (the bytes still
waiting in a transport's buffers, the parsed TLS options of an ``ssl:``
endpoint). Each such use is a function here, documented with what it relies
on, and each has a fallback for a release where the attribute is gone or
renamed: the feature degrades (the fast path turns off, the meter counts what
the public attributes show, TLS reload says it cannot), it never crashes.
setup.cfg bounds both libraries to the majors the suite has run against;
tests/test_compat.py runs every fallback. Nothing else in the package may
touch a private name of either library (docs/architecture.md).
"""

from __future__ import annotations

import pprint
from collections.abc import Callable
from functools import partial
from typing import Any

from twisted.internet import tcp
from twisted.internet.abstract import FileDescriptor
from twisted.logger import Logger

log = Logger()

Masker = Callable[[bytes, bytes], bytes]

# ------------------------------------------------------------------ Twisted

# ``tcp.Connection``'s write state, read on every eager write: the chunks
# written since the last send (``_tempDataLen``), and whether the connection
# is being aborted or half-closed (``_aborting``, ``_writeDisconnected``).
_TCP_WRITE_STATE = (
    "_tempDataLen",
    "offset",
    "dataBuffer",
    "disconnecting",
    "_aborting",
    "_writeDisconnected",
    "connected",
    "socket",
)


def eager_socket(transport: Any) -> Any | None:
    """``transport`` if it is a plain TCP/UNIX ``tcp.Connection`` that can be
    written eagerly (``write_socket_first``), else None.

    Relies on ``tcp.Connection``'s private write state (``_TCP_WRITE_STATE``).
    Fallback: None when any of it is missing (or for TLS and other
    transports), and the caller uses the transport's own ``write``.
    """
    if not isinstance(transport, tcp.Connection) or getattr(transport, "TLS", False):
        return None
    kind = type(transport)
    usable = _EAGER_TYPES.get(kind)
    if usable is None:
        # (Checked on an instance: some of the state is set in ``__init__``.)
        usable = all(hasattr(transport, name) for name in _TCP_WRITE_STATE)
        if len(_EAGER_TYPES) < 64:
            _EAGER_TYPES[kind] = usable
    return transport if usable else None


# Transport class -> whether it has every attribute of ``_TCP_WRITE_STATE``.
_EAGER_TYPES: dict[type, bool] = {}


def write_socket_first(protocol: Any, data: bytes) -> None:
    """The body of ``FastPathProtocol._write`` (server/wire/fastpath.py) and
    of the Redis command connection's (backends/redis/connection.py):
    ``protocol._socket`` (from ``eager_socket``) is sent to at once when
    nothing waits in it, else ``protocol.transport.write``. A method of the
    protocol's class, not a per-connection callable: nothing for the garbage
    collector to visit per connection, and one call per write."""
    transport = protocol._socket
    if transport is None:
        protocol.transport.write(data)
    else:
        _eager_write(transport, data)


def _eager_write(transport: Any, data: bytes) -> None:
    if (
        transport._tempDataLen
        or transport.offset != len(transport.dataBuffer)
        or transport.disconnecting
        or transport._aborting
        or transport._writeDisconnected
        or not transport.connected
    ):
        transport.write(data)  # keep the order behind what is already waiting
        return
    try:
        sent = transport.socket.send(data)
    except OSError:
        # EAGAIN, or the connection is failing: the transport's own write
        # path queues it, or finds the error and reports connectionLost.
        transport.write(data)
        return
    if sent < len(data):
        transport.write(data[sent:])


def socket_buffered(fd: FileDescriptor) -> int:
    """Bytes written to ``fd`` and not yet handed to the kernel.

    Relies on ``FileDescriptor._tempDataLen`` (the writes since the last send;
    ``dataBuffer[offset:]`` is what that send left). Fallback: the public
    ``dataBuffer`` and ``offset`` only, which miss the newest writes until
    the reactor's next send, so a slow consumer is seen a little later.
    """
    pending = len(fd.dataBuffer) - fd.offset
    return pending + getattr(fd, "_tempDataLen", 0)


def socket_meter(fd: FileDescriptor) -> Callable[[], int]:
    """``socket_buffered(fd)`` as a function of no argument (a ``partial``:
    one object, no closure, for the connection's lifetime)."""
    return partial(socket_buffered, fd)


def tls_buffered(tls: Any) -> int:
    """Cleartext queued in a ``TLSMemoryBIOProtocol`` before its handshake finished.

    Relies on ``TLSMemoryBIOProtocol._appSendBuffer`` (a list of byte chunks).
    Fallback: 0 (the public API does not say; the socket below is still metered).
    """
    chunks = getattr(tls, "_appSendBuffer", None)
    if not chunks:
        return 0
    return sum(len(chunk) for chunk in chunks)


def drop_unsent_writes(fd: FileDescriptor) -> int:
    """Discard the whole writes still waiting in ``fd`` (none of their bytes has
    left); the number of bytes dropped. The first chunk is kept when no send is
    under way, as it may be the rest of a write the socket took part of.

    Relies on ``FileDescriptor._tempDataBuffer`` and ``_tempDataLen`` (each
    write kept as its own chunk until a send joins them into ``dataBuffer``).
    Fallback: nothing is dropped (0), so a slow consumer's close frame waits
    behind its backlog, which the close deadline bounds.
    """
    chunks = getattr(fd, "_tempDataBuffer", None)
    if not isinstance(chunks, list) or not hasattr(fd, "_tempDataLen"):
        return 0
    keep = chunks[:1] if fd.offset >= len(fd.dataBuffer) else []
    kept = sum(len(chunk) for chunk in keep)
    dropped = int(fd._tempDataLen) - kept
    fd._tempDataBuffer = keep
    fd._tempDataLen = kept
    return dropped


def tls_membrane_producer(producer: Any) -> Any:
    """The producer a TLS transport wraps in its producer membrane, else ``producer``.

    Relies on ``twisted.protocols.tls._ProducerMembrane._producer``. Fallback:
    ``producer`` itself (under TLS the abandoned ``HTTPChannel`` is then not
    found and stays registered: it only costs memory, as before the release).
    """
    return getattr(producer, "_producer", producer)


def _haproxy_wrapper() -> type | None:
    try:
        from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper
    except ImportError:
        return None
    return HAProxyProtocolWrapper


_HAPROXY_WRAPPER = _haproxy_wrapper()


def is_haproxy_wrapper(level: object) -> bool:
    """Whether ``level`` is the wrapper of a ``haproxy:`` endpoint's connections.

    Relies on ``twisted.protocols.haproxy._wrapper.HAProxyProtocolWrapper``
    (only ``proxyEndpoint`` is public). Fallback: any class of that name in
    ``level``'s type hierarchy.
    """
    wrapper = _HAPROXY_WRAPPER
    if wrapper is not None:
        return isinstance(level, wrapper)
    return any(cls.__name__ == "HAProxyProtocolWrapper" for cls in type(level).__mro__)


class TLSReloadUnsupportedError(RuntimeError):
    """This Twisted's ``ssl:`` endpoint does not keep its options where we look."""


_SSL_OPTIONS = "_sslContextFactory"


def _is_ssl_endpoint(endpoint: object) -> bool:
    from twisted.internet.endpoints import SSL4ServerEndpoint

    return isinstance(endpoint, SSL4ServerEndpoint)


def tls_context_factory(endpoint: object) -> Any:
    """The context factory of an ``ssl:`` server endpoint; None for other endpoints.

    Relies on ``SSL4ServerEndpoint._sslContextFactory`` (no public accessor).
    Fallback: ``TLSReloadUnsupportedError`` for an ``ssl:`` endpoint without it,
    so that ``--tls-reload`` says why instead of serving without reloads.
    """
    factory = getattr(endpoint, _SSL_OPTIONS, None)
    if factory is None and _is_ssl_endpoint(endpoint):
        raise TLSReloadUnsupportedError(
            "this Twisted's SSL4ServerEndpoint has no _sslContextFactory: "
            "certificates cannot be reloaded (restart the server to change them)"
        )
    return factory


def set_tls_context_factory(endpoint: object, factory: Any) -> None:
    """Make ``endpoint`` (an ``ssl:`` endpoint) use ``factory`` for new connections.

    Relies on ``SSL4ServerEndpoint._sslContextFactory``. Fallback: raises
    ``TLSReloadUnsupportedError`` when the attribute is missing.
    """
    if not hasattr(endpoint, _SSL_OPTIONS):
        raise TLSReloadUnsupportedError(
            "this Twisted's SSL4ServerEndpoint has no _sslContextFactory"
        )
    setattr(endpoint, _SSL_OPTIONS, factory)


def asyncio_reactor_loop(reactor: Any) -> Any:
    """The asyncio event loop an ``AsyncioSelectorReactor`` runs on.

    Relies on ``AsyncioSelectorReactor._asyncioEventloop``. Fallback: None
    (the caller cannot check that the loops match, and trusts the user).
    """
    return getattr(reactor, "_asyncioEventloop", None)


# ------------------------------------------------------------------ Autobahn


def compression_negotiated(protocol: Any) -> bool:
    """Whether permessage-deflate is in use on an open Autobahn connection.

    Relies on ``WebSocketProtocol._perMessageCompress``. Fallback: True, which
    sends every message through Autobahn's own (compressing) path, never the
    fast path.
    """
    return getattr(protocol, "_perMessageCompress", True) is not None


# Autobahn's per-connection lists that are only read during the opening
# handshake (the subprotocols and extensions the client asked for, the
# extensions agreed on). Once open, each becomes a tuple: a tuple of strings
# is untracked by the garbage collector, an empty one is shared.
_HANDSHAKE_LISTS = ("websocket_protocols", "websocket_extensions", "websocket_extensions_in_use")
# What ``WebSocketProtocol.__init__`` passes to ``set_valid_events``: one
# shared tuple instead of a list per connection (``ObservableMixin`` only
# tests membership and joins it into an error message).
_VALID_EVENTS = ("message",)


def shed_handshake_lists(protocol: Any) -> None:
    """Make the lists Autobahn keeps from the opening handshake tuples (a
    connection then keeps fewer objects for the collector to visit).

    Relies on ``WebSocketServerProtocol`` reading ``websocket_protocols``,
    ``websocket_extensions`` and ``websocket_extensions_in_use`` during the
    handshake only, and on ``ObservableMixin._valid_events`` being read only
    (checked by tests/test_protocol_options.py). Fallback: an attribute that
    is not a list, or a valid-events list other than Autobahn's default, is
    left as it is.
    """
    attributes = protocol.__dict__
    for name in _HANDSHAKE_LISTS:
        value = attributes.get(name)
        if type(value) is list:
            attributes[name] = tuple(value) if value else ()
    if attributes.get("_valid_events") == ["message"]:
        attributes["_valid_events"] = _VALID_EVENTS


# The texts of the opening handshake Autobahn keeps for the life of a server
# connection: the request's bytes, its status line and target, the response.
_HANDSHAKE_TEXTS = (
    ("http_request_data", b""),
    ("http_status_line", ""),
    ("http_request_uri", ""),
    ("http_response_data", ""),
)


def drop_handshake_texts(protocol: Any) -> None:
    """Empty the texts Autobahn keeps from the opening handshake: some 600
    bytes per connection, and a hello in the URL (protocol.md 4.5) once more
    in each of the first three.

    Relies on ``WebSocketServerProtocol`` reading them during
    ``processHandshake`` only (its client side reads its own, never these);
    checked by tests/test_protocol_options.py. Fallback: an attribute that
    is not there or not of the expected type is left alone.
    """
    attributes = protocol.__dict__
    for name, empty in _HANDSHAKE_TEXTS:
        if type(attributes.get(name)) is type(empty):
            attributes[name] = empty


def traffic_stats(protocol: Any) -> Any | None:
    """Autobahn's traffic statistics of an open connection, where the fast
    path adds the wire bytes of the frames it read without Autobahn
    (``stats.incomingOctetsWireLevel += size``; made once per connection,
    in ``connectionMade``).

    Relies on ``WebSocketProtocol.trafficStats.incomingOctetsWireLevel``
    (undocumented). Fallback: None, and nothing is counted.
    """
    stats = getattr(protocol, "trafficStats", None)
    if stats is not None and hasattr(stats, "incomingOctetsWireLevel"):
        return stats
    return None


def count_preopen_outgoing(stats: Any, size: int) -> None:
    """Add ``size`` bytes written before the WebSocket opened (the upgrade
    response) to Autobahn's traffic statistics, as its ``sendData`` does.

    Relies on ``TrafficStats.preopenOutgoingOctetsWireLevel`` (undocumented).
    Fallback: nothing is counted.
    """
    if hasattr(stats, "preopenOutgoingOctetsWireLevel"):
        stats.preopenOutgoingOctetsWireLevel += size


def count_incoming_octets(protocol: Any, size: int) -> None:
    """Add ``size`` wire bytes to Autobahn's traffic statistics (``traffic_stats``)."""
    stats = traffic_stats(protocol)
    if stats is not None:
        stats.incomingOctetsWireLevel += size


def cancel_auto_ping_timeout(protocol: Any) -> None:
    """Incoming data answers an auto-ping, as Autobahn does for its own frames.

    Relies on ``WebSocketProtocol._cancelAutoPingTimeoutCall``. Fallback: the
    public part of it: cancel ``autoPingTimeoutCall`` and forget it.
    """
    cancel = getattr(protocol, "_cancelAutoPingTimeoutCall", None)
    if cancel is not None:
        cancel()
        return
    call = getattr(protocol, "autoPingTimeoutCall", None)
    if call is not None:
        protocol.autoPingTimeoutCall = None
        if call.active():
            call.cancel()


class _LazyPformat:
    """``pprint.pformat(value)``, computed only if a log event is ever rendered."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        return pprint.pformat(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def __repr__(self) -> str:
        return str(self)


def _pformat(value: object, *args: Any, **kwargs: Any) -> Any:
    # Only the list of ``WebSocketProtocol._connectionMade`` (its protocol
    # options, for a debug log line) is deferred; any other caller in the
    # module (``Timings.__str__`` must return a str) gets pprint's string.
    if type(value) is list and not args and not kwargs:
        return _LazyPformat(value)
    return pprint.pformat(value, *args, **kwargs)


def defer_option_dump(module: Any) -> bool:
    """Autobahn's ``_connectionMade`` pretty-prints all its protocol options for
    a debug log line on every connection, logged or not (about 20% of the CPU
    of a connection): rebind ``module``'s ``pformat`` (autobahn.websocket.protocol)
    to one that formats only when the line is rendered. True if done.

    Relies on that module importing ``pprint.pformat`` by name. Fallback: left
    as it is (the cost comes back, nothing breaks).
    """
    if getattr(module, "pformat", None) is not pprint.pformat:
        return False
    setattr(module, "pformat", _pformat)  # noqa: B010
    return True


class _LazyTypeName:
    """``autobahn.util.hltype(obj)``, computed only if a log event is ever rendered."""

    __slots__ = ("hltype", "obj")

    def __init__(self, hltype: Callable[[Any], str], obj: object) -> None:
        self.hltype = hltype
        self.obj = obj

    def __str__(self) -> str:
        return self.hltype(self.obj)

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def __repr__(self) -> str:
        return str(self)


def defer_type_names(*modules: Any) -> int:
    """Autobahn formats a highlighted type name (``hltype``) for a debug log
    line four times per accepted connection (``connectionMade``,
    ``_connectionMade``, ``dataReceived``, ``processHandshake``), logged or
    not: rebind each module's ``hltype`` to one that formats only when the
    line is rendered. The number of modules changed.

    Relies on those modules importing ``autobahn.util.hltype`` by name.
    Fallback: a module without it is left as it is (the cost stays, nothing
    breaks).
    """
    try:
        from autobahn.util import hltype
    except ImportError:
        return 0

    def lazy_hltype(obj: object) -> Any:
        return _LazyTypeName(hltype, obj)

    changed = 0
    for module in modules:
        if getattr(module, "hltype", None) is hltype:
            setattr(module, "hltype", lazy_hltype)  # noqa: B010
            changed += 1
    return changed


def _python_unmask(payload: bytes, mask: bytes) -> bytes:
    size = len(payload)
    key = (mask * ((size + 3) >> 2))[:size]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
        size, "little"
    )


def _xor_masker() -> Masker:
    try:
        # The C masker when autobahn was built with NVX, else its pure-Python one.
        from autobahn.websocket.xormasker import (  # type: ignore[attr-defined]
            create_xor_masker,
        )
    except ImportError:
        return _python_unmask

    def unmask(payload: bytes, mask: bytes) -> bytes:
        return bytes(create_xor_masker(mask, len(payload)).process(payload))

    return unmask


def xor_masker() -> Masker:
    """``unmask(payload, mask)`` by Autobahn's masker (its C one when built with NVX).

    Relies on ``autobahn.websocket.xormasker.create_xor_masker`` (not in its
    ``__all__``). Fallback: Python's big-integer XOR, slower on large frames.
    """
    return _xor_masker()
