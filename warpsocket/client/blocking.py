"""``BlockingClient``: the client from ordinary blocking Python code.

Threading: the reactor runs in a daemon thread (started on first use if it is
not running yet). Every method hands its work to that thread and waits for
the answer, so any thread may call them, except the reactor thread itself
(a handler calling a blocking method would wait for itself: it raises
``RuntimeError`` instead). Handlers and listeners (``on``, ``subscribe``,
``on_state``, ``on_lost``, ``on_open``) run on the reactor thread: keep them
short and hand longer work to your own threads, e.g. through a
``queue.Queue``.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from twisted.internet.threads import blockingCallFromThread
from twisted.python.threadable import isInIOThread

from warpsocket.client.client import (
    ClientStats,
    LostListener,
    Message,
    OpenListener,
    StateListener,
    WarpSocketClient,
)
from warpsocket.client.options import ClientOptions
from warpsocket.client.state import ClientState
from warpsocket.core.client import Outcome

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
    """``WarpSocketClient``'s methods, blocking until each is done."""

    def __init__(self, url: str, options: ClientOptions | None = None, **kwargs: Any) -> None:
        self.reactor = _reactor()
        self.client: WarpSocketClient = self._run(
            lambda: WarpSocketClient(url, options, reactor=self.reactor, **kwargs)
        )

    def _run(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if isInIOThread():
            raise RuntimeError(
                "BlockingClient methods block: do not call them on the reactor thread"
            )
        return blockingCallFromThread(self.reactor, func, *args, **kwargs)

    # ------------------------------------------------------------ connection

    def connect(self, timeout: float | None = None) -> None:
        """Block until welcomed; ``ConnectTimeoutError`` after ``timeout`` s (it keeps trying)."""
        self._run(self.client.connect, timeout)

    def reconnect(self) -> None:
        self._run(self.client.reconnect)

    def close(self) -> None:
        """Close for good: messages without an outcome fail (see ``WarpSocketClient.close``)."""
        self._run(self.client.close)

    def __enter__(self) -> BlockingClient:
        self.connect()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------ messages

    def send(self, event: str, data: Any = None, **kwargs: Any) -> Outcome | None:
        """With ``ack=True`` blocks until the outcome (raises DeliveryError on failure)."""
        result: Outcome | None = self._run(self.client.send, event, data, **kwargs)
        return result

    def call(self, method: str, data: Any = None, timeout: float = 30.0) -> Any:
        return self._run(self.client.call, method, data, timeout=timeout)

    def subscribe(self, room: str, handler: Callable[[Message], Any] | None = None) -> None:
        self._run(self.client.subscribe, room, handler)

    def unsubscribe(self, room: str) -> None:
        self._run(self.client.unsubscribe, room)

    def ping(self) -> None:
        self._run(self.client.ping)

    def refresh_token(self) -> None:
        self._run(self.client.refresh_token)

    # ------------------------------------------------------------ handlers (reactor thread)

    def on(self, event: str, handler: Callable[[Message], Any]) -> Callable[[Message], Any]:
        self._run(self.client.on, event, handler)
        return handler

    def on_state(self, listener: StateListener) -> StateListener:
        return self._run(self.client.on_state, listener)  # type: ignore[no-any-return]

    def on_lost(self, listener: LostListener) -> LostListener:
        return self._run(self.client.on_lost, listener)  # type: ignore[no-any-return]

    def on_open(self, listener: OpenListener) -> OpenListener:
        return self._run(self.client.on_open, listener)  # type: ignore[no-any-return]

    # ------------------------------------------------------------ introspection

    @property
    def state(self) -> ClientState:
        return self.client.state

    @property
    def stats(self) -> ClientStats:
        """A copy, taken on the reactor thread."""

        def copy() -> ClientStats:
            stats = self.client.stats
            return dataclasses.replace(stats, reconnect_times=list(stats.reconnect_times))

        return self._run(copy)  # type: ignore[no-any-return]

    @property
    def queue_length(self) -> int:
        return self._run(lambda: self.client.queue_length)  # type: ignore[no-any-return]

    @property
    def session(self) -> str | None:
        return self.client.session

    @property
    def rooms(self) -> set[str]:
        return self._run(lambda: self.client.rooms)  # type: ignore[no-any-return]
