"""Nagle's algorithm off on the TCP connections WarpSocket opens or proxies.

A WebSocket frame is a small write that should leave at once. With Nagle's
algorithm on, a small write made while an earlier one is still
unacknowledged waits for that acknowledgement, and a peer with nothing to
send back delays it (40 ms on Linux). Python client events sent 2 ms apart
reached the server up to 39 ms late that way (docs/performance.md
"Fourteenth round").

Autobahn means to turn it off: its ``tcpNoDelay`` option is on by default.
But on Twisted its ``connectionMade`` reads ``self.tcpNoDelay`` before
``_connectionMade`` has copied the option from the factory, swallows the
``AttributeError``, and leaves the socket as it was (Autobahn 26.x). The
server's protocol classes carry the options as class attributes
(server/protocol.py), so Autobahn's call works there; everything else
WarpSocket builds on Autobahn, and its Redis connections, call this.
"""

from __future__ import annotations


def set_no_delay(transport: object, enabled: bool = True) -> bool:
    """Set ``TCP_NODELAY`` on ``transport`` (TCP, or TLS over TCP, whose
    wrapper passes the call down). False where there is no such option: a
    Unix socket's or a test's transport (Twisted logs and eats an ``OSError``
    of the call itself)."""
    setter = getattr(transport, "setTcpNoDelay", None)
    if setter is None:
        return False
    setter(enabled)
    return True
