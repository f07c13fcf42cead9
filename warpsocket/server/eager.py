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

from warpsocket import _compat

Write = Callable[[bytes], None]


def eager_writer(transport: Any) -> Write | None:
    """A ``write`` for ``transport`` that tries the socket first, or None if
    ``transport`` is not a plain TCP/UNIX connection (or this Twisted lacks
    the state it reads: see ``_compat.eager_tcp_write``)."""
    return _compat.eager_tcp_write(transport)
