"""Notice local network changes (Linux rtnetlink) so the client can act at once.

After a link goes down and up, or an address changes (Wi-Fi roaming, VPN up,
DHCP renewal), a reconnecting client should try now rather than wait out its
backoff, and an open connection may be dead without knowing it yet.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

# rtnetlink multicast groups: links, IPv4 addresses, IPv6 addresses.
_GROUPS = 0x1 | 0x10 | 0x100


@implementer(IReadDescriptor)
class NetworkWatcher:
    log = Logger()

    def __init__(self, reactor: Any, on_change: Callable[[], None], debounce: float = 0.2) -> None:
        self.reactor = reactor
        self.on_change = on_change
        self.debounce = debounce
        self._socket: socket.socket | None = None
        self._pending: Any = None

    @staticmethod
    def supported() -> bool:
        return sys.platform.startswith("linux") and hasattr(socket, "AF_NETLINK")

    def start(self) -> bool:
        """Start watching; False where the platform offers no netlink."""
        if self._socket is not None:
            return True
        if not self.supported():
            return False
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            sock.bind((0, _GROUPS))
        except OSError as error:
            self.log.info("network watching unavailable: {error}", error=error)
            return False
        sock.setblocking(False)
        self._socket = sock
        self.reactor.addReader(self)
        return True

    def stop(self) -> None:
        if self._socket is None:
            return
        self.reactor.removeReader(self)
        self._socket.close()
        self._socket = None
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None

    # IReadDescriptor

    def fileno(self) -> int:
        return self._socket.fileno() if self._socket is not None else -1

    def doRead(self) -> None:
        if self._socket is None:
            return
        try:
            while self._socket.recv(65536):
                pass
        except BlockingIOError:
            pass
        except OSError as error:  # ENOBUFS when events overflowed: still a change
            self.log.debug("netlink: {error}", error=error)
        # A burst of events (link, then addresses, then routes) is one change.
        if self._pending is None or not self._pending.active():
            self._pending = self.reactor.callLater(self.debounce, self.on_change)

    def connectionLost(self, reason: Failure) -> None:
        self.stop()

    def logPrefix(self) -> str:
        return "NetworkWatcher"
