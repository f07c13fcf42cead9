"""``AsyncClient``: the client for asyncio code (``async with``, ``await``).

The same client (and core) as ``WarpSocketClient``, on Twisted's asyncio
reactor, which runs on the application's own event loop: no second thread,
no ``ensureDeferred``. The asyncio reactor is installed on the running loop
when the first ``AsyncClient`` is made, so no other Twisted reactor may have
been installed in the process before (``twisted.internet.reactor`` not yet
imported); the error says so.

Handlers, listeners and the token provider may be plain functions or
``async def``; coroutines run as asyncio tasks on the same loop.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from twisted.internet.defer import Deferred

from warpsocket import _compat
from warpsocket.client.client import ClientStats, Message, Opened, WarpSocketClient
from warpsocket.client.options import ClientOptions
from warpsocket.client.state import ClientState
from warpsocket.core.client import Outcome

T = TypeVar("T")


def asyncio_reactor(loop: asyncio.AbstractEventLoop) -> Any:
    """Twisted's reactor on ``loop``, installing it if no reactor is installed yet."""
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor, install

    if "twisted.internet.reactor" not in sys.modules:
        install(loop)
    from twisted.internet import reactor

    if not isinstance(reactor, AsyncioSelectorReactor):
        raise RuntimeError(
            "AsyncClient needs Twisted's asyncio reactor, but another reactor is installed: "
            "create the AsyncClient before anything imports twisted.internet.reactor, "
            "or use WarpSocketClient (Twisted) or BlockingClient (threads)"
        )
    running = _compat.asyncio_reactor_loop(reactor)
    if running is not None and running is not loop:
        raise RuntimeError("Twisted's asyncio reactor runs on another event loop")
    return reactor


def _bridged(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` with any awaitable result run as a task and handed back as a Deferred."""

    def call(*args: Any) -> Any:
        result = func(*args)
        if inspect.isawaitable(result) and not isinstance(result, Deferred):
            return Deferred.fromFuture(asyncio.ensure_future(result))
        return result

    return call


class AsyncClient:
    """``WarpSocketClient`` with coroutine methods; use inside a running event loop."""

    def __init__(
        self,
        url: str,
        options: ClientOptions | None = None,
        *,
        token: Callable[[], Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        reactor = asyncio_reactor(self._loop)
        self.client = WarpSocketClient(
            url,
            options,
            reactor=reactor,
            token=_bridged(token) if token is not None else None,
            **kwargs,
        )

    async def _wait(self, deferred: Deferred[T]) -> T:
        return await deferred.asFuture(self._loop)

    # ------------------------------------------------------------ connection

    async def connect(self, timeout: float | None = None) -> None:
        """Return once welcomed; ``ConnectTimeoutError`` after ``timeout`` s (it keeps trying)."""
        await self._wait(self.client.connect(timeout))

    def reconnect(self) -> None:
        self.client.reconnect()

    async def close(self) -> None:
        """Close for good: messages without an outcome fail (see ``WarpSocketClient.close``)."""
        await self._wait(self.client.close())

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------ messages

    async def send(self, event: str, data: Any = None, **kwargs: Any) -> Outcome | None:
        """With ``ack=True`` returns the outcome (raises DeliveryError on failure)."""
        waiter = self.client.send(event, data, **kwargs)
        if waiter is None:
            return None
        outcome: Outcome = await self._wait(waiter)
        return outcome

    async def call(self, method: str, data: Any = None, *, timeout: float = 30.0) -> Any:
        return await self._wait(self.client.call(method, data, timeout=timeout))

    def subscribe(self, room: str, handler: Callable[[Message], Any] | None = None) -> None:
        self.client.subscribe(room, _bridged(handler) if handler is not None else None)

    def unsubscribe(self, room: str) -> None:
        self.client.unsubscribe(room)

    def ping(self) -> None:
        self.client.ping()

    async def refresh_token(self) -> None:
        await self._wait(self.client.refresh_token())

    # ------------------------------------------------------------ handlers

    def on(self, event: str, handler: Callable[[Message], Any]) -> Callable[[Message], Any]:
        self.client.on(event, _bridged(handler))
        return handler

    def on_state(
        self, listener: Callable[[ClientState, ClientState], Any]
    ) -> Callable[[ClientState, ClientState], Any]:
        self.client.on_state(_bridged(listener))
        return listener

    def on_lost(self, listener: Callable[[str, str], Any]) -> Callable[[str, str], Any]:
        self.client.on_lost(_bridged(listener))
        return listener

    def on_open(self, listener: Callable[[Opened], Any]) -> Callable[[Opened], Any]:
        self.client.on_open(_bridged(listener))
        return listener

    # ------------------------------------------------------------ introspection

    @property
    def state(self) -> ClientState:
        return self.client.state

    @property
    def stats(self) -> ClientStats:
        return self.client.stats

    @property
    def queue_length(self) -> int:
        return self.client.queue_length

    @property
    def session(self) -> str | None:
        return self.client.session

    @property
    def rooms(self) -> set[str]:
        return self.client.rooms


__all__ = ["AsyncClient", "asyncio_reactor"]
