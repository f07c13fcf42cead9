"""Send at once when nothing is waiting, as asyncio's transports do.

Twisted's TCP transport never sends from ``write()``: it buffers the data,
registers the socket for writability (``epoll_ctl``), sends on the next
reactor iteration through ``doWrite``, then unregisters it (``epoll_ctl``
again). A WebSocket server writes one small frame per connection per event,
so that is three system calls and a trip through ``doWrite`` per frame, most
of what a paced broadcast costs. When the transport's buffer is empty,
sending at once is what the transport would do next anyway; whatever the
socket does not take goes to the transport's buffer as before, so order,
flow control (producers, ``bufferSize``) and error handling are unchanged.

Only plain TCP and UNIX connections qualify: TLS has its own buffering.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import tcp

Write = Callable[[bytes], None]
_STATE = (
    "_tempDataLen",
    "offset",
    "dataBuffer",
    "disconnecting",
    "_aborting",
    "_writeDisconnected",
    "connected",
    "socket",
)


def eager_writer(transport: Any) -> Write | None:
    """A ``write`` for ``transport`` that tries the socket first, or None if
    ``transport`` is not a plain TCP/UNIX connection."""
    if not isinstance(transport, tcp.Connection) or getattr(transport, "TLS", False):
        return None
    # The transport's own state, read on every write: if this Twisted does not
    # have these (private) attributes, it gets the plain write path.
    if not all(hasattr(transport, name) for name in _STATE):
        return None
    send = transport.socket.send
    buffered = transport.write

    def write(data: bytes) -> None:
        if (
            transport._tempDataLen
            or transport.offset != len(transport.dataBuffer)
            or transport.disconnecting
            or transport._aborting
            or transport._writeDisconnected
            or not transport.connected
        ):
            buffered(data)  # keep the order behind what is already waiting
            return
        try:
            sent = send(data)
        except OSError:
            # EAGAIN, or the connection is failing: the transport's own write
            # path queues it, or finds the error and reports connectionLost.
            buffered(data)
            return
        if sent < len(data):
            buffered(data[sent:])

    return write
