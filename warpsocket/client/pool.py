"""``ClientPool``: many logical channels or a high message rate over N connections.

Each member is a whole ``WarpSocketClient`` (its own connection, session,
resume state, offline queue and reconnect backoff), to one URL or spread
over several nodes. A message with a ``key`` always goes through the same
member, chosen by rendezvous hashing, so messages of one key keep the order
the client guarantees on one connection; messages without a key are spread
round-robin. Nothing is ordered across keys or members (docs/client.md
"Connection pools").
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, gatherResults

from warpsocket.client.client import Handler, WarpSocketClient
from warpsocket.client.options import ClientOptions
from warpsocket.client.state import ClientState
from warpsocket.core.client import Outcome


class ClientPool:
    """``size`` clients over ``urls`` (a URL or a list: member *i* dials
    ``urls[i % len(urls)]``), with the client's sending API.

    - ``send(event, data, key=..., ...)`` / ``call(method, data, key=...)``:
      through ``member_for(key)``; without a key, the next member in turn.
      ``room=`` on ``send`` is the key when no key is given.
    - ``subscribe(room, handler)``: one member joins the room (the one its
      name hashes to), so each room event arrives once, in order.
    - ``on(event, handler)``: on every member (events arrive from any).

    A member that is disconnected keeps its keys: their messages wait in its
    queue and go out, in order, when it has reconnected and resumed (the
    others are unaffected). ``make_client(url, options)`` builds each member
    (default ``WarpSocketClient(url, options, **client_kwargs)``).
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        size: int = 4,
        options: ClientOptions | None = None,
        *,
        make_client: Callable[[str, ClientOptions], WarpSocketClient] | None = None,
        **client_kwargs: Any,
    ) -> None:
        targets = [urls] if isinstance(urls, str) else list(urls)
        if not targets or size < 1:
            raise ValueError("a pool needs at least one URL and one member")
        options = options if options is not None else ClientOptions()

        def default(url: str, opts: ClientOptions) -> WarpSocketClient:
            return WarpSocketClient(url, opts, **client_kwargs)

        build = make_client or default
        self.members: list[WarpSocketClient] = [
            build(targets[i % len(targets)], options) for i in range(size)
        ]
        # Rendezvous-hash seeds: member i's identity, stable across runs.
        self._seeds = [f"{i}:{targets[i % len(targets)]}".encode() for i in range(size)]
        self._turn = itertools.cycle(range(size))

    # ------------------------------------------------------------ membership

    def member_for(self, key: str) -> WarpSocketClient:
        """The member that carries ``key``: highest rendezvous score, so that
        a pool of another size moves only the keys it must."""
        return self.members[self.index_for(key)]

    def index_for(self, key: str) -> int:
        encoded = key.encode("utf-8")
        scores = [
            hashlib.blake2b(seed + b"\0" + encoded, digest_size=8).digest() for seed in self._seeds
        ]
        return max(range(len(scores)), key=scores.__getitem__)

    def _pick(self, key: str | None) -> WarpSocketClient:
        if key is None:
            return self.members[next(self._turn)]
        return self.member_for(key)

    # ------------------------------------------------------------ lifecycle

    def connect(self, timeout: float | None = None) -> Deferred[None]:
        """Connect every member; fires when all are welcomed (fails with the
        first member's failure, e.g. ``ConnectTimeoutError``)."""
        started = [member.connect(timeout) for member in self.members]
        done: Deferred[Any] = gatherResults(started, consumeErrors=True)
        return done.addCallback(lambda _: None)

    def close(self) -> Deferred[None]:
        closed = DeferredList([member.close() for member in self.members])
        return closed.addCallback(lambda _: None)

    @property
    def open_members(self) -> int:
        return sum(1 for member in self.members if member.state is ClientState.OPEN)

    # ------------------------------------------------------------ the client's API

    def send(
        self,
        event: str,
        data: Any = None,
        *,
        key: str | None = None,
        ack: bool = False,
        room: str | None = None,
        ttl: float | None = None,
        priority: int = 0,
        timeout: float | None = None,
    ) -> Deferred[Outcome] | None:
        """``WarpSocketClient.send`` through the member for ``key`` (or ``room``)."""
        member = self._pick(key if key is not None else room)
        return member.send(
            event, data, ack=ack, room=room, ttl=ttl, priority=priority, timeout=timeout
        )

    def call(
        self, method: str, data: Any = None, *, key: str | None = None, timeout: float = 30.0
    ) -> Deferred[Any]:
        return self._pick(key).call(method, data, timeout=timeout)

    def subscribe(self, room: str, handler: Handler | None = None) -> None:
        self.member_for(room).subscribe(room, handler)

    def unsubscribe(self, room: str) -> None:
        self.member_for(room).unsubscribe(room)

    def on(self, event: str, handler: Handler) -> Handler:
        for member in self.members:
            member.on(event, handler)
        return handler

    @property
    def sessions(self) -> list[str | None]:
        return [member.session for member in self.members]

    @property
    def queue_length(self) -> int:
        return sum(member.queue_length for member in self.members)


__all__ = ["ClientPool"]
