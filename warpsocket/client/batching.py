"""The ``batch`` extension on the client (protocol.md "Extension: batches").

``OutgoingBatch`` holds the envelopes a client transmits within its batch
window and sends them as one ``batch`` frame (one alone as itself). The
window starts with the first envelope held: 0 gathers what is transmitted in
the same reactor turn (a loop of sends) and adds no delay a caller could
see; a positive window waits that long for more. A batch is sent early when
it reaches the server's ``max_envelopes``, and split when its frame would
exceed ``max_bytes``. ``expand`` turns a ``batch`` the server sent into its
envelopes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from warpsocket.protocol.codecs import Codec
from warpsocket.protocol.codes import ProtocolError
from warpsocket.protocol.datamodel import DataLimits
from warpsocket.protocol.envelope import Envelope, MessageType

EXTENSION = "batch"
# Never inside a batch (protocol.md 18).
_ALONE = frozenset({MessageType.HELLO, MessageType.BATCH})


def granted_bounds(params: Mapping[str, Any] | None) -> tuple[int, int] | None:
    """``(max_envelopes, max_bytes)`` from ``welcome.data.extensions.batch``
    (hostile until checked); None: not granted, or unusable bounds."""
    if not isinstance(params, Mapping):
        return None
    envelopes, size = params.get("max_envelopes"), params.get("max_bytes")
    if type(envelopes) is not int or type(size) is not int or envelopes < 2 or size < 64:
        return None
    return envelopes, size


def expand(batch: Envelope, limits: DataLimits) -> list[Envelope]:
    """The envelopes of a ``batch`` the server sent, in order; invalid ones
    are left out (the server never sends them)."""
    found: list[Envelope] = []
    items = batch.data if isinstance(batch.data, list) else []
    for item in items:
        try:
            # The frame's values were checked when it was decoded.
            inner = Envelope.from_wire(item, limits, strings_checked=True, values_checked=True)
        except ProtocolError:
            continue
        if inner.type not in _ALONE:
            found.append(inner)
    return found


class OutgoingBatch:
    """Envelopes waiting for the end of the window, for one connection."""

    def __init__(
        self,
        clock: IReactorTime,
        window_ms: float,
        bounds: tuple[int, int],
        codec: Codec,
        *,
        send_one: Callable[[Envelope], None],
        send_payload: Callable[[bytes], None],
        new_id: Callable[[], str],
        now_ms: Callable[[], int],
    ) -> None:
        self.clock = clock
        self.window = window_ms / 1000
        self.max_envelopes, self.max_bytes = bounds
        self.codec = codec
        self._send_one = send_one
        self._send_payload = send_payload
        self._new_id = new_id
        self._now_ms = now_ms
        self.pending: list[Envelope] = []
        self._timer: IDelayedCall | None = None
        # Batch frames sent, and the envelopes they carried.
        self.frames = 0
        self.carried = 0

    def add(self, envelope: Envelope) -> bool:
        """Hold ``envelope`` for the batch (True), or not (False: send it now)."""
        if envelope.type in _ALONE:
            self.flush()  # what was held goes first
            return False
        self.pending.append(envelope)
        if len(self.pending) >= self.max_envelopes:
            self.flush()
        elif self._timer is None:
            self._timer = self.clock.callLater(self.window, self.flush)
        return True

    def flush(self) -> None:
        """Send what is held now."""
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        pending, self.pending = self.pending, []
        if pending:
            self._send(pending)

    def drop(self) -> None:
        """The connection is gone: what is held is not sent (a tracked message
        goes back to the client's queue, as any unsent one)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.pending = []

    def _send(self, envelopes: list[Envelope]) -> None:
        if len(envelopes) == 1:
            self._send_one(envelopes[0])
            return
        batch = Envelope(
            type=MessageType.BATCH,
            id=self._new_id(),
            timestamp=self._now_ms(),
            data=[envelope.to_wire() for envelope in envelopes],
        )
        payload = self.codec.encode(batch)
        if len(payload) > self.max_bytes:
            # Too large for one frame: in halves, down to single envelopes.
            half = len(envelopes) // 2
            self._send(envelopes[:half])
            self._send(envelopes[half:])
            return
        self.frames += 1
        self.carried += len(envelopes)
        self._send_payload(payload)
