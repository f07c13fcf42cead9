"""The frame path of an open connection: the common frame read and written
without Autobahn's machinery, eager writes, and corking into write batches.

``FastPathProtocol`` is Autobahn's server protocol with that path; the
WarpSocket protocol (protocol.py) derives from it and adds the glue.

- Reading (``dataReceived``): whole common frames (framing.py) are taken
  here and handed to ``onMessage``; everything else goes to Autobahn.
- Writing (``write_frame``): a whole data frame, held while the hub's write
  batch is open (batching.py) and then written in one write per connection.
- Eager writes: Twisted's TCP transport never sends from ``write()``: it
  buffers the data, registers the socket for writability (``epoll_ctl``),
  sends on the next reactor iteration through ``doWrite``, then unregisters
  it (``epoll_ctl`` again). A WebSocket server writes one small frame per
  connection per event, so that is three system calls and a trip through
  ``doWrite`` per frame, most of what a paced broadcast costs. When the
  transport's buffer is empty, sending at once is what the transport would
  do next anyway; whatever the socket does not take goes to the transport's
  buffer as before, so order, flow control (producers, ``bufferSize``) and
  error handling are unchanged. Only plain TCP and UNIX connections qualify:
  TLS has its own buffering (and ``_compat.eager_socket`` falls back to
  the transport's own write if this Twisted lacks what it reads).

What watches the writes (the outbound bound, the close deadline) is a
``WriteWatch`` given to ``start_fast_path``: this module knows nothing of
the security rules.
"""

from __future__ import annotations

from typing import Any, Protocol

from autobahn.twisted.websocket import WebSocketServerProtocol

from warpsocket import _compat
from warpsocket.server.wire import framing
from warpsocket.server.wire.batching import WriteBatch

# The first byte of a ping and of a pong frame (FIN, opcode 9 / 10).
_METERED_CONTROL = (b"\x89", b"\x8a")
# The first byte of a close frame (FIN, opcode 8).
_CLOSE_FRAME = b"\x88"


class WriteWatch(Protocol):
    """What is told about the writes of an open connection."""

    # True while every write must be followed by ``check`` (the buffer backs up).
    congested: bool

    def check(self) -> None:
        """A frame was written (or a ping or pong, when congested)."""

    def closing(self) -> None:
        """Our close frame (or our answer to the peer's) is being written."""


class FastPathProtocol(WebSocketServerProtocol):
    # Frames held while the hub's write batch is open (see write_frame).
    _corked: list[bytes] | None = None
    _batch: WriteBatch | None = None
    _watch: WriteWatch | None = None
    # Once ``use_socket`` ran (``_direct``), every write of the connection (the
    # upgrade response, then the frames) goes through ``_write``: to
    # ``_socket`` at once when nothing waits in it, else to the transport.
    _write = _compat.write_socket_first
    _socket: Any = None
    _direct = False
    _plain_config = False
    # permessage-deflate was negotiated (set when the WebSocket opens).
    _compressed = False
    # Autobahn's traffic statistics, counting the frames read here too.
    _stats: Any = None
    # True while the connection is served its own frames (dataReceived): what
    # it is sent in answer is exempt from the hard outbound cap.
    own_request = False
    # Autobahn's per-connection options (class attributes, see the factory).
    maxMessagePayloadSize: int
    autoFragmentSize: int
    logOctets: bool
    logFrames: bool

    def use_socket(self, socket: Any) -> None:
        """The connection is made: ``socket`` is the transport the bytes go to
        (below any pass-through wrapper). From here on Autobahn's own writes
        (the upgrade response first) take the eager path too."""
        self._socket = _compat.eager_socket(socket)
        self._direct = True

    def start_fast_path(self, batch: WriteBatch, watch: WriteWatch) -> None:
        """The WebSocket is open (``use_socket`` ran): ``watch`` is told about
        the writes."""
        self._batch = batch
        self._watch = watch
        _compat.shed_handshake_lists(self)
        _compat.drop_handshake_texts(self)
        if not self._direct:
            self.use_socket(self.transport)
        self._stats = _compat.traffic_stats(self)
        # Fixed from here on: the options are the class's, compression was negotiated.
        self._compressed = _compat.compression_negotiated(self)
        self._plain_config = not (
            self._compressed or self.autoFragmentSize or self.logOctets or self.logFrames
        )

    def heard(self) -> None:
        """Bytes of a frame of an open connection arrived (any frame)."""

    # ------------------------------------------------------------ inbound frames

    def dataReceived(self, data: bytes) -> None:
        batch = self._batch
        if batch is None:  # the handshake
            super().dataReceived(data)
            return
        self.heard()
        # Everything these bytes cause is written in one write per connection
        # (batching.py), and what this connection is sent in answer to its own
        # frames is exempt from the hard outbound cap (the outbound guard).
        self.own_request = True
        batch.open()
        try:
            self._take_frames(data)
        finally:
            batch.close_soon()
            self.own_request = False

    def _take_frames(self, data: bytes) -> None:
        """Whole common frames of an open connection are taken here and handed to
        ``onMessage``; everything else (the handshake, control frames, fragments,
        compressed, oversized, invalid or incomplete frames, the closing
        handshake) goes to autobahn, starting at the first frame not taken."""
        if (
            self.state != WebSocketServerProtocol.STATE_OPEN
            or self.current_frame is not None
            or self.inside_message
            or self.logOctets
            or self.logFrames
        ):
            super().dataReceived(data)
            return
        buffer = self.data + data if self.data else data
        stats = self._stats
        if stats is not None:
            stats.incomingOctetsWireLevel += len(data)
        limit = self.maxMessagePayloadSize
        read = framing.read_simple_frame
        end = len(buffer)
        position = 0
        while self.state == WebSocketServerProtocol.STATE_OPEN:
            taken = read(buffer, position, limit)
            if taken is None:
                break
            position, is_binary, payload = taken
            if self.autoPingTimeoutCall is not None and self.autoPingRestartOnAnyTraffic:
                _compat.cancel_auto_ping_timeout(self)
            self.onMessage(payload, is_binary)
            if position == end:
                break  # (most reads: one whole frame)
        if position == end:
            self.data = b""
            return
        rest = buffer[position:] if position else buffer
        # Whatever was not taken (and any data after a close began): autobahn's.
        self.data = rest
        self.consumeData()  # (a no-op once the connection is closed)

    # ------------------------------------------------------------ outbound

    def sendMessage(
        self,
        payload: bytes,
        isBinary: bool = False,
        fragmentSize: int | None = None,
        sync: bool = False,
        doNotCompress: bool = False,
    ) -> None:
        if (
            fragmentSize is None
            and not sync
            and self._plain_writes()  # (uncompressed connections only)
            and not 0 < self.maxMessagePayloadSize < len(payload)
        ):
            # The common frame, written directly (see framing.py).
            self.write_frame(framing.frame(payload, isBinary))
            return
        super().sendMessage(payload, isBinary, fragmentSize, sync, doNotCompress)
        watch = self._watch
        if watch is not None and watch.congested:
            watch.check()

    def sendPreparedMessage(self, preparedMsg: Any) -> None:
        if self._compressed and not preparedMsg.doNotCompress:
            self.sendMessage(preparedMsg.payload, preparedMsg.binary)  # compressed per connection
        elif self._plain_writes():
            self.write_frame(preparedMsg.payloadHybi)
        else:
            self.sendData(preparedMsg.payloadHybi)
            watch = self._watch
            if watch is not None and watch.congested:
                watch.check()

    @property
    def plain(self) -> bool:
        """Whether a prepared frame of an open connection can be written as is
        (``write_frame``): uncompressed, no frame-level debugging, and nothing
        queued in autobahn's chopped/synchronous send queue (its order holds)."""
        return self._plain_config and not self.send_queue

    def _plain_writes(self) -> bool:
        """``plain``, for a connection that may not be open any more."""
        return self.state == WebSocketServerProtocol.STATE_OPEN and self.plain

    def write_frame(self, frame: bytes) -> None:
        """Write a whole data frame; while the hub's write batch is open it is
        held and leaves with this connection's other frames (batching.py)."""
        corked = self._corked
        if corked is not None:
            corked.append(frame)
            return
        batch = self._batch
        if batch is not None and batch.depth:
            self._corked = [frame]
            batch.dirty.append(self)
            return
        self._write(frame)
        watch = self._watch
        if watch is not None and watch.congested:
            watch.check()

    def uncork(self, metered: bool = True) -> None:
        corked = self._corked
        if corked is None:
            return
        self._corked = None
        if self.transport is None or self.state == WebSocketServerProtocol.STATE_CLOSED:
            return  # gone while its frames waited
        self._write(corked[0] if len(corked) == 1 else b"".join(corked))
        watch = self._watch
        if metered and watch is not None and watch.congested:
            watch.check()

    def drop_corked(self) -> None:
        """Forget the frames held for the batch (a slow consumer's: see limits.drop_unsent)."""
        self._corked = None

    def _count_written(self, size: int) -> None:
        stats = self._stats or _compat.traffic_stats(self)
        if stats is None:
            return
        state = self.state
        if state == WebSocketServerProtocol.STATE_OPEN:
            stats.outgoingOctetsWireLevel += size
        elif state == WebSocketServerProtocol.STATE_CONNECTING:
            _compat.count_preopen_outgoing(stats, size)

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        # Autobahn's own writes (control frames, the close handshake, the slow
        # path) go after any frames this connection has waiting in a batch.
        # The flush is unmetered: the meter could close the connection in
        # between, and this write would follow that close frame.
        if self._corked is not None:
            self.uncork(metered=False)
        watch = self._watch
        if watch is not None and data[:1] == _CLOSE_FRAME:
            watch.closing()
        if self._direct and not (sync or chopsize or self.send_queue or self.logOctets):
            # Autobahn's ``sendData`` for this case is ``transport.write``, its
            # traffic count and a debug line whose arguments it formats every
            # time (a few microseconds of each upgrade response).
            self._write(data)
            self._count_written(len(data))
        else:
            super().sendData(data, sync, chopsize)
        # Pings and pongs are metered here; data frames by the caller
        # (sendMessage, sendPreparedMessage) once the whole message is out.
        # Never after a close frame: autobahn changes its state only after
        # writing it, so a close from the meter would be a second one.
        if watch is not None and watch.congested and data[:1] in _METERED_CONTROL:
            watch.check()
