"""Shared by the test modules that run the server as a real process."""

from __future__ import annotations

import socket

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ServerProcess(ProcessProtocol):
    def __init__(self) -> None:
        self.output = bytearray()
        # Fires with the exception of processEnded (ProcessDone or ProcessTerminated).
        self.ended: Deferred[BaseException] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output.extend(data)

    def errReceived(self, data: bytes) -> None:
        self.output.extend(data)

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(reason.value)

    def log(self) -> str:
        return self.output.decode("utf-8", "replace")[-16000:]
