"""Transport introspection for the limits: outbound buffer size, TLS, PROXY."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.protocols.tls import TLSMemoryBIOProtocol

from warpsocket import _compat
from warpsocket.protocol.codes import ErrorCode

# HTTP status for a connection or handshake refused before the WebSocket opens.
HTTP_STATUS = {
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.TOKEN_EXPIRED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.ORIGIN_REJECTED: 403,
    ErrorCode.ADDRESS_REJECTED: 403,
    ErrorCode.TOO_MANY_CONNECTIONS: 503,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.GOING_AWAY: 503,
}


def transport_chain(transport: Any, depth: int = 8) -> list[Any]:
    """``transport``, its transport, and so on down to the socket.

    Reads ``__dict__`` so that ``ProtocolWrapper.__getattr__`` (which
    forwards unknown names downwards) cannot make a level appear twice.
    """
    chain: list[Any] = []
    while transport is not None and len(chain) < depth:
        chain.append(transport)
        transport = getattr(transport, "__dict__", {}).get("transport")
    return chain


def buffered_bytes(transport: Any) -> int:
    """Bytes written to ``transport`` that the peer has not taken yet.

    Counts the socket's user-space write buffer (Twisted's FileDescriptor,
    which grows without bound when a peer stops reading) and, under TLS,
    the cleartext queued before the TLS handshake finished. The kernel's
    socket buffer comes on top and is bounded by the OS.
    """
    total = 0
    for level in transport_chain(transport):
        if isinstance(level, TLSMemoryBIOProtocol):
            total += _compat.tls_buffered(level)
        elif isinstance(level, FileDescriptor):
            total += _compat.socket_buffered(level)
            break
    return total


class OutboundMeter:
    """``buffered_bytes`` for one connection, with the transport levels found
    once: a write to a broadcast's thousands of recipients costs a few
    attribute reads each, not a walk down the transport chain."""

    __slots__ = ("_socket", "_tls")

    def __init__(self, transport: Any) -> None:
        self._tls: TLSMemoryBIOProtocol | None = None
        self._socket: Callable[[], int] | None = None
        for level in transport_chain(transport):
            if isinstance(level, TLSMemoryBIOProtocol) and self._tls is None:
                self._tls = level
            elif isinstance(level, FileDescriptor):
                self._socket = _compat.socket_meter(level)
                break

    def __call__(self) -> int:
        total = 0
        tls = self._tls
        if tls is not None:
            total += _compat.tls_buffered(tls)
        socket = self._socket
        if socket is not None:
            total += socket()
        return total


def drop_unsent(transport: Any) -> int:
    """Discard the whole writes still waiting in a plain socket's user-space
    buffer (none of their bytes has left); the number of bytes dropped.

    Every write of a WebSocket connection is one or more whole frames, and
    Twisted keeps each write as its own chunk (``_tempDataBuffer``) until a
    send moves them all into ``dataBuffer``, so dropping the chunks never
    cuts a frame: what follows (a close frame) goes out right behind the
    bytes already on their way. One exception: the rest of a write the
    socket took only part of (eager writes) is the first chunk when nothing
    else waits, and is kept. Under TLS the records are already encrypted
    in sequence: nothing is dropped.
    """
    if behind_tls(transport):
        return 0
    chain = transport_chain(transport)
    socket = chain[-1] if chain else None
    if not isinstance(socket, FileDescriptor):
        return 0
    return _compat.drop_unsent_writes(socket)


def behind_tls(transport: Any) -> bool:
    if isinstance(transport, FileDescriptor):
        return False  # (a plain socket: nothing above it, the common case)
    return any(isinstance(level, TLSMemoryBIOProtocol) for level in transport_chain(transport))


def behind_proxy_protocol(transport: Any) -> bool:
    """True under a ``haproxy:`` endpoint, whose peer is known only after its header."""
    if isinstance(transport, FileDescriptor):
        return False  # (a plain socket: nothing above it, the common case)
    return any(_compat.is_haproxy_wrapper(level) for level in transport_chain(transport))


def http_refusal(code: ErrorCode) -> bytes:
    """A complete HTTP response refusing a connection with a registry code.

    The reason phrase is ``<code> <name>`` (as for refusals in onConnect),
    so that any client library's error message shows why.
    """
    status = HTTP_STATUS.get(code, 403)
    body = f"{int(code)} {code.wire_name}\n".encode("ascii")
    lines = [
        f"HTTP/1.1 {status} {int(code)} {code.wire_name}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
        "Cache-Control: no-store",
    ]
    if status in (429, 503):
        lines.append("Retry-After: 1")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body
