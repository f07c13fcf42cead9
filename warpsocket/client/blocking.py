"""``BlockingClient``: the client from ordinary blocking Python code.

The reactor runs in a daemon thread (started on first use if it is not
running yet); every method hands its work to that thread and waits for the
answer. Handlers registered with ``on`` run on the reactor thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from twisted.internet.threads import blockingCallFromThread

from warpsocket.client.client import Message, WarpSocketClient
from warpsocket.client.options import ClientOptions
from warpsocket.client.state import ClientState

_started = threading.Lock()


def _reactor() -> Any:
    from twisted.internet import reactor

    with _started:
        if not reactor.running:
            ready = threading.Event()
            reactor.callWhenRunning(ready.set)
            thread = threading.Thread(
                target=reactor.run,
                kwargs={"installSignalHandlers": False},
                name="warpsocket-reactor",
                daemon=True,
            )
            thread.start()
            ready.wait(10)
    return reactor


class BlockingClient:
    def __init__(self, url: str, options: ClientOptions | None = None, **kwargs: Any) -> None:
        self.reactor = _reactor()
        self.client: WarpSocketClient = blockingCallFromThread(
            self.reactor, lambda: WarpSocketClient(url, options, **kwargs)
        )

    def _run(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return blockingCallFromThread(self.reactor, func, *args, **kwargs)

    def connect(self) -> None:
        """Block until the client is welcomed."""
        self._run(self.client.connect)

    def send(self, event: str, data: Any = None, **kwargs: Any) -> Any:
        """With ``ack=True`` blocks until the outcome (raises DeliveryError on failure)."""
        return self._run(self.client.send, event, data, **kwargs)

    def call(self, method: str, data: Any = None, timeout: float = 30.0) -> Any:
        return self._run(self.client.call, method, data, timeout=timeout)

    def subscribe(self, room: str, handler: Callable[[Message], Any] | None = None) -> None:
        self._run(self.client.subscribe, room, handler)

    def unsubscribe(self, room: str) -> None:
        self._run(self.client.unsubscribe, room)

    def on(self, event: str, handler: Callable[[Message], Any]) -> None:
        self._run(self.client.on, event, handler)

    @property
    def state(self) -> ClientState:
        return self.client.state

    def close(self) -> None:
        self._run(self.client.close)
