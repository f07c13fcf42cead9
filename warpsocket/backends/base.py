"""The interface every cluster backend implements (docs/cluster.md).

The core reads histories synchronously through ``store``; everything that
may need the network returns a Deferred. A synchronous backend (memory)
returns Deferreds that have already fired, so the hub behaves exactly as if
it called the store directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred

from warpsocket.core.history import Position
from warpsocket.core.store import StreamStore
from warpsocket.protocol.envelope import Envelope

Delivery = Callable[[str, Envelope], None]
"""``(key, stored)``: a stream message for this node's local members, in offset order."""


@dataclass(frozen=True)
class AckNotice:
    """A client acknowledged server events of its ``direct`` stream: either
    cumulatively, every ``ack: true`` event with offset <= ``through`` in
    ``epoch``, or one event by id (``ref``)."""

    session: str
    epoch: str | None = None
    through: int | None = None
    ref: str | None = None


AckListener = Callable[[AckNotice], None]


class BackendUnavailableError(Exception):
    """The backend cannot take writes now (e.g. Redis is unreachable).

    A send or publish fails with it and nothing is stored; clients whose
    messages meet it get ``4304`` and retry them (docs/cluster.md).
    """


@dataclass(frozen=True)
class SessionRecord:
    """What another node needs to resume a session."""

    id: str
    user: str | None
    claims: Mapping[str, Any] = field(default_factory=dict)
    rooms: tuple[str, ...] = ()
    starts: Mapping[str, Position] = field(default_factory=dict)
    # SHA-256 of the session's resume token: resuming needs the token itself.
    resume_hash: str = ""


@dataclass(frozen=True)
class Claim:
    """The answer to a shared dedup claim of a client message id.

    ``first``: this node handles it. Otherwise ``reply`` is the recorded
    answer, or None while another node is still handling it.
    """

    first: bool
    reply: Envelope | None = None


#: The answers without a reply, shared (a claim is answered once per tracked message).
FIRST = Claim(True)
TAKEN = Claim(False)
#: Hears a claim's answer, with the context given to ``Backend.claim_then``.
Decided = Callable[[Claim, Any], None]


class Backend(Protocol):
    """Where a hub keeps streams, sessions, dedup records and presence.

    ``MemoryBackend`` (one node, the default) and ``RedisBackend`` (a cluster
    sharing one Redis) implement it, and the hub talks to nothing else; pass
    one as ``Hub(backend=...)`` and the service starts and stops it.
    ``BackendContract`` in tests/test_cluster.py is the shared test suite an
    implementation must pass (docs/cluster.md describes the contract).
    """

    store: StreamStore
    #: True when other nodes share the streams (sends to unknown sessions are
    #: published anyway: the session may live on another node).
    clustered: bool

    @property
    def health(self) -> str | None:
        """None when healthy, else why not (shown by /healthz)."""

    def set_delivery(self, deliver: Delivery) -> None: ...

    def set_batch(self, batch: Callable[[], AbstractContextManager[None]]) -> None:
        """Wrap each group of deliveries that arrive together (one read from the
        cluster) in ``batch()``, so that their frames leave together."""

    def announce_ack(self, notice: AckNotice) -> None:
        """Tell every node (this one included) that a client acknowledged:
        the node that sent the message may not be the one the client is on.
        Best effort: a notice lost in a Redis outage leaves the sender's
        waiter to time out; delivery never depends on it."""

    def set_ack_listener(self, listener: AckListener) -> None:
        """Where announced acknowledgements are handed (clustered backends)."""

    def start(self) -> Deferred[None]: ...

    def stop(self) -> Deferred[None]: ...

    def publish(self, key: str, template: Envelope, now_ms: int) -> Deferred[Envelope]:
        """Append to a stream; fires with the stored envelope (offset, epoch).

        Local members get it through the delivery callback, never from here.
        Fails with ``BackendUnavailableError`` when the append cannot be made.
        """

    def prepare(self, keys: Iterable[str]) -> Deferred[None]:
        """Make ``store`` hold these streams (and follow them) before the core reads them."""

    def release(self, key: str) -> None:
        """No local member is left: stop following the stream."""

    def following(self) -> Iterable[str]:
        """The keys this node follows now."""

    def save_session(self, record: SessionRecord, ttl_ms: int) -> None: ...

    def load_session(self, session_id: str) -> Deferred[SessionRecord | None]: ...

    def claim(self, principal: str, message_id: str, now_ms: int) -> Deferred[Claim]: ...

    def claim_then(
        self, principal: str, message_id: str, now_ms: int, decided: Decided, context: Any
    ) -> None:
        """``claim``, answered by calling ``decided(claim, context)``, maybe at
        once; never with a failure (a backend in trouble answers ``FIRST``:
        the node's own dedup window applies). Saves a Deferred per message."""

    def unclaim(self, principal: str, message_id: str) -> None: ...

    def record(self, principal: str, message_id: str, reply: Envelope) -> None: ...

    def set_presence(self, room: str, session: str, present: bool) -> None: ...

    def presence(self, room: str) -> Deferred[set[str]] | None:
        """Sessions in ``room`` on every live node; None: ask the local core."""

    def sessions_of_user(self, user: str) -> Deferred[set[str]] | None:
        """Sessions of ``user`` on every node; None: ask the local core."""

    def tick(self, now_ms: int) -> None: ...
