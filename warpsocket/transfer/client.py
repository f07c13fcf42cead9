"""The Python client's side of chunked transfers.

``client.send_file(path_or_file, to=... | room=...)`` and
``client.send_bytes(data)`` return an ``OutgoingTransfer``: chunks leave as
the server's credits allow (never more than one window ahead of what it has
written), the source is read one chunk at a time, and across a reconnect the
transfer resumes from the last chunk the server acknowledged.

``client.on_transfer(handler)`` receives transfers that the server relays
(from another client, or ``TransferServer.share``): the handler gets a
``ReceivingTransfer`` and returns a sink; each verified chunk is written to
it as it arrives, and the whole is checked against its SHA-256 at the end.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import IO, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from warpsocket.client.state import ClientState
from warpsocket.core.ids import random_id
from warpsocket.protocol.codes import ErrorCode
from warpsocket.protocol.envelope import Envelope
from warpsocket.transfer import wire
from warpsocket.transfer.errors import TransferError

Progress = Callable[[int, int], Any]
_NOT_NEGOTIATED = (
    "the connection has no chunks extension (the server does not offer it, "
    "or transfers were first used after connect)"
)


@dataclass(eq=False)
class OutgoingTransfer:
    """A transfer this client sends.

    ``result`` fires with the SHA-256 (hex) once the server has every byte
    and verified the whole (for a relay: stored it for its receivers); it
    fails with ``TransferError``. ``acknowledged`` is the bytes the server
    has confirmed; ``on_progress(acknowledged, size)`` is called as it grows.
    """

    id: str
    size: int
    name: str | None
    to: str | None = None
    room: str | None = None
    meta: Any = None
    acknowledged: int = 0
    result: Deferred[str] = field(default_factory=Deferred)
    on_progress: Progress | None = None
    _source: IO[bytes] | None = field(default=None, repr=False)
    _owned: bool = False
    _base: int = 0  # the source's position at the start
    _chunk_size: int = 0
    _count: int = 0
    _acked: int = 0
    _sent: int = 0
    _limit: int = 0
    _hashed: int = 0
    _hasher: Any = field(default_factory=hashlib.sha256)
    _offered: bool = False  # an offer is out and its first credit not back
    _ended: bool = False
    _owner: ClientTransfers | None = field(default=None, repr=False)

    def cancel(self, message: str = "cancelled by the sender") -> None:
        """Stop sending; the server drops what it has (``result`` fails with 4621)."""
        if self._owner is not None:
            self._owner._cancel_outgoing(self, message)


@dataclass(eq=False)
class ReceivingTransfer:
    """A transfer the server offers this client (an ``on_transfer`` handler's
    argument). ``done`` fires with the SHA-256 once the sink has every byte
    and the whole matched; it fails with ``TransferError``. ``sender`` is the
    sending session (None when the server application shares a file)."""

    id: str
    size: int
    sha256: str
    name: str | None
    meta: Any
    room: str | None
    sender: str | None
    received: int = 0
    done: Deferred[str] = field(default_factory=Deferred)
    on_progress: Progress | None = None
    _chunk_size: int = 0
    _sink: Any = field(default=None, repr=False)
    _next: int = 0
    _hasher: Any = field(default_factory=hashlib.sha256)
    _nacked: int | None = None
    _resends: int = 0
    _owner: ClientTransfers | None = field(default=None, repr=False)

    def cancel(self, message: str = "cancelled by the receiver") -> None:
        if self._owner is not None:
            self._owner._cancel_incoming(self, ErrorCode.TRANSFER_CANCELLED, message, tell=True)


TransferHandler = Callable[[ReceivingTransfer], Any]


class ClientTransfers:
    """The ``chunks`` extension on one ``WarpSocketClient`` (the client makes
    it on first use: ``client.transfers``). Creating it before ``connect``
    asks for the extension in every hello."""

    log = Logger()

    def __init__(self, client: Any) -> None:
        self.client = client
        core = client.core
        if wire.EXTENSION not in core.options.extensions:
            extensions = (*core.options.extensions, wire.EXTENSION)
            core.options = replace(core.options, extensions=extensions)
        self._outgoing: dict[str, OutgoingTransfer] = {}
        self._incoming: dict[str, ReceivingTransfer] = {}
        self._handler: TransferHandler | None = None
        self._params: wire.Params | None = None
        client.on_open(self._opened)
        if client.state is ClientState.OPEN:
            self._opened(None)  # made after connect: the extension was not asked for

    # ------------------------------------------------------------ public API

    def send(
        self,
        source: str | os.PathLike[str] | bytes | IO[bytes],
        *,
        to: str | None = None,
        room: str | None = None,
        name: str | None = None,
        meta: Any = None,
        on_progress: Progress | None = None,
    ) -> OutgoingTransfer:
        """Send a file (path or seekable binary file object) or bytes; see
        ``WarpSocketClient.send_file``."""
        if to is not None and room is not None:
            raise ValueError("send to a session or a room, not both")
        owned = False
        if isinstance(source, bytes):
            stream: IO[bytes] = io.BytesIO(source)
        elif isinstance(source, (str, os.PathLike)):
            stream, owned = open(source, "rb"), True  # noqa: SIM115 (closed when it ends)
            if name is None:
                name = os.path.basename(os.fspath(source))
        else:
            stream = source
        if not stream.seekable():
            raise ValueError("the source must be seekable (a resume re-reads chunks)")
        base = stream.tell()
        size = stream.seek(0, os.SEEK_END) - base
        transfer = OutgoingTransfer(
            id=random_id(),
            size=size,
            name=name,
            to=to,
            room=room,
            meta=meta,
            on_progress=on_progress,
            _source=stream,
            _owned=owned,
            _base=base,
            _owner=self,
        )
        self._outgoing[transfer.id] = transfer
        transfer.result.addBoth(self._finished, transfer)
        if self.client.state is ClientState.OPEN:
            if self._params is None:  # this connection did not negotiate it
                error = TransferError(ErrorCode.UNKNOWN_TYPE, _NOT_NEGOTIATED)
                transfer.result.errback(Failure(error))
            else:
                self._offer(transfer)
        return transfer

    def on_transfer(self, handler: TransferHandler) -> TransferHandler:
        """``handler(transfer) -> sink | None`` for each transfer offered to
        this client; a sink has ``write(bytes)``; None declines."""
        self._handler = handler
        return handler

    @property
    def outgoing(self) -> list[OutgoingTransfer]:
        return list(self._outgoing.values())

    @property
    def incoming(self) -> list[ReceivingTransfer]:
        return list(self._incoming.values())

    # ------------------------------------------------------------ connection

    def _is_open(self) -> bool:
        protocol = self.client._protocol
        return protocol is not None and protocol.state == protocol.STATE_OPEN

    def _opened(self, _: object) -> None:
        granted = self.client.extensions.get(wire.EXTENSION)
        if granted is None:
            self._params = None
            for transfer in list(self._outgoing.values()):
                error = TransferError(ErrorCode.UNKNOWN_TYPE, _NOT_NEGOTIATED)
                transfer.result.errback(Failure(error))
            return
        self._params = wire.Params.from_wire(granted)
        for transfer in list(self._outgoing.values()):
            self._offer(transfer)  # new, or a resume: the credit says where
        for incoming in list(self._incoming.values()):
            self._pull(incoming)

    def _tell(self, data: dict[str, Any], code: int | None = None) -> None:
        if self._is_open():
            client = self.client
            client._transmit(wire.envelope(random_id(), client._now_ms(), data, code))

    # ------------------------------------------------------------ sending

    def _offer(self, transfer: OutgoingTransfer) -> None:
        params = self._params
        assert params is not None
        if transfer._chunk_size == 0:
            if params.max_size and transfer.size > params.max_size:
                transfer.result.errback(
                    Failure(TransferError(ErrorCode.TRANSFER_TOO_LARGE, "over the server's limit"))
                )
                return
            transfer._chunk_size = params.chunk_size
            transfer._count = wire.chunk_count(transfer.size, params.chunk_size)
        data: dict[str, Any] = {
            "op": "offer",
            "transfer": transfer.id,
            "size": transfer.size,
            "chunk_size": transfer._chunk_size,
        }
        for key in ("name", "to", "room", "meta"):
            value = getattr(transfer, key)
            if value is not None:
                data[key] = value
        transfer._offered = True
        transfer._ended = False  # a resume may have lost our `end`: send it again
        self._tell(data)

    def _credit(self, transfer: OutgoingTransfer, op: wire.Op) -> None:
        next_, limit = op.number("next"), op.number("limit")
        if transfer._offered:
            # The answer to an offer: the server's written prefix is where we
            # go on from (0 for a new transfer, more after a reconnect).
            transfer._offered = False
            transfer._sent = next_
            transfer._acked = next_
            transfer._limit = limit
        else:
            transfer._acked = max(transfer._acked, min(next_, transfer._sent))
            transfer._limit = max(transfer._limit, limit)
        acknowledged = min(transfer.size, transfer._acked * transfer._chunk_size)
        if acknowledged != transfer.acknowledged:
            transfer.acknowledged = acknowledged
            if transfer.on_progress is not None:
                try:
                    transfer.on_progress(acknowledged, transfer.size)
                except Exception:
                    self.log.failure("on_progress failed")
        self._pump(transfer)

    def _pump(self, transfer: OutgoingTransfer) -> None:
        source = transfer._source
        assert source is not None
        end = min(transfer._limit, transfer._count)
        while transfer._sent < end and self._is_open():
            seq = transfer._sent
            source.seek(transfer._base + seq * transfer._chunk_size)
            data = source.read(wire.chunk_length(seq, transfer.size, transfer._chunk_size))
            if seq == transfer._hashed:  # each chunk enters the hash once, in order
                transfer._hasher.update(data)
                transfer._hashed += 1
            transfer._sent += 1
            self._tell(wire.chunk_data(transfer.id, seq, data))
        if transfer._acked == transfer._count and not transfer._ended:
            transfer._ended = True
            self._tell(
                {"op": "end", "transfer": transfer.id, "sha256": transfer._hasher.hexdigest()}
            )

    def _nack(self, transfer: OutgoingTransfer, op: wire.Op) -> None:
        seq = op.number("seq")
        if transfer._acked <= seq < transfer._sent:
            transfer._sent = seq  # go back: the receiver drops what followed
        self._pump(transfer)

    def _cancel_outgoing(self, transfer: OutgoingTransfer, message: str) -> None:
        if transfer.id not in self._outgoing:
            return
        self._tell(wire.cancel_data(transfer.id, ErrorCode.TRANSFER_CANCELLED, message))
        transfer.result.errback(Failure(TransferError(ErrorCode.TRANSFER_CANCELLED, message)))

    def _finished(self, result: Any, transfer: OutgoingTransfer) -> Any:
        self._outgoing.pop(transfer.id, None)
        if transfer._owned and transfer._source is not None:
            transfer._source.close()
        transfer._source = None
        return result

    # ------------------------------------------------------------ receiving

    def announced(self, envelope: Envelope) -> bool:
        """A ``warpsocket.transfer`` stream event: True when taken here (there
        is an ``on_transfer`` handler and the announcement is valid)."""
        if self._handler is None:
            return False
        incoming = _parse_announcement(envelope.data)
        if incoming is None:
            self.log.warn("invalid transfer announcement ignored")
            return True
        if incoming.id in self._incoming:
            return True
        incoming._owner = self
        try:
            sink = self._handler(incoming)
        except Exception:
            self.log.failure("on_transfer handler failed")
            return True
        if sink is None:
            return True  # declined: nothing is pulled
        incoming._sink = sink
        self._incoming[incoming.id] = incoming
        if incoming.size == 0:
            self._complete(incoming)
        else:
            self._pull(incoming)
        return True

    def _pull(self, incoming: ReceivingTransfer) -> None:
        window = self._params.window if self._params is not None else wire.DEFAULT_WINDOW
        incoming._nacked = None
        self._tell(
            {
                "op": "pull",
                "transfer": incoming.id,
                "next": incoming._next,
                "limit": incoming._next + window,
            }
        )

    def _chunk(self, incoming: ReceivingTransfer, op: wire.Op) -> None:
        seq = op.number("seq")
        if seq < incoming._next:
            return  # a duplicate after a go-back
        if seq > incoming._next:
            if incoming._nacked != incoming._next:
                incoming._nacked = incoming._next
                self._tell({"op": "nack", "transfer": incoming.id, "seq": incoming._next})
            return
        data = wire.verified_chunk(op, incoming.size, incoming._chunk_size)
        if data is None:
            incoming._resends += 1
            if incoming._resends > wire.MAX_RESENDS:
                self._cancel_incoming(
                    incoming, ErrorCode.TRANSFER_CORRUPT, "chunk failed too often", tell=True
                )
                return
            incoming._nacked = incoming._next
            self._tell({"op": "nack", "transfer": incoming.id, "seq": incoming._next})
            return
        try:
            incoming._sink.write(data)
        except Exception as exc:
            self._cancel_incoming(incoming, ErrorCode.HANDLER_ERROR, f"sink: {exc}", tell=True)
            return
        incoming._hasher.update(data)
        incoming._next += 1
        incoming._resends, incoming._nacked = 0, None
        incoming.received += len(data)
        if incoming.on_progress is not None:
            try:
                incoming.on_progress(incoming.received, incoming.size)
            except Exception:
                self.log.failure("on_progress failed")
        if incoming.received == incoming.size:
            self._complete(incoming)
            return
        window = self._params.window if self._params is not None else wire.DEFAULT_WINDOW
        self._tell(
            {
                "op": "credit",
                "transfer": incoming.id,
                "next": incoming._next,
                "limit": incoming._next + window,
            }
        )

    def _complete(self, incoming: ReceivingTransfer) -> None:
        sha256 = incoming._hasher.hexdigest()
        if sha256 != incoming.sha256:
            self._cancel_incoming(incoming, ErrorCode.TRANSFER_CORRUPT, "SHA-256 mismatch", True)
            return
        self._incoming.pop(incoming.id, None)
        if incoming.size:
            self._tell({"op": "done", "transfer": incoming.id, "sha256": sha256})
        incoming.done.callback(sha256)

    def _cancel_incoming(
        self, incoming: ReceivingTransfer, code: ErrorCode | int, message: str, tell: bool
    ) -> None:
        if self._incoming.pop(incoming.id, None) is None:
            return
        if tell:
            self._tell(wire.cancel_data(incoming.id, code, message), int(code))
        incoming.done.errback(Failure(TransferError(code, message)))

    # ------------------------------------------------------------ inbound

    def received(self, envelope: Envelope) -> None:
        """A ``transfer`` envelope from the server (hostile until parsed)."""
        try:
            op = wire.parse(envelope)
        except Exception:
            self.log.warn("invalid transfer envelope ignored")
            return
        outgoing = self._outgoing.get(op.transfer)
        incoming = self._incoming.get(op.transfer)
        if op.op == "cancel":
            code = op.code if op.code is not None else int(ErrorCode.TRANSFER_CANCELLED)
            message = op.data.get("message")
            text = message if isinstance(message, str) else "cancelled"
            if outgoing is not None:
                outgoing.result.errback(Failure(TransferError(code, text)))
            if incoming is not None:
                self._cancel_incoming(incoming, code, text, tell=False)
        elif outgoing is not None and op.op == "credit":
            self._credit(outgoing, op)
        elif outgoing is not None and op.op == "nack":
            self._nack(outgoing, op)
        elif outgoing is not None and op.op == "done":
            # After a resume the server may be done before this side hashed
            # every chunk: then the source is read again to check.
            whole = outgoing._hashed == outgoing._count
            ours = outgoing._hasher.hexdigest() if whole else _file_sha256(outgoing)
            if op.data["sha256"] == ours:
                outgoing.acknowledged = outgoing.size
                outgoing.result.callback(ours)
            else:
                error = TransferError(ErrorCode.TRANSFER_CORRUPT, "SHA-256 mismatch")
                outgoing.result.errback(Failure(error))
        elif incoming is not None and op.op == "chunk":
            self._chunk(incoming, op)


def _file_sha256(transfer: OutgoingTransfer) -> str:
    source = transfer._source
    assert source is not None
    hasher = hashlib.sha256()
    source.seek(transfer._base)
    remaining = transfer.size
    while remaining > 0:
        block = source.read(min(remaining, 1 << 20))
        if not block:
            break
        hasher.update(block)
        remaining -= len(block)
    return hasher.hexdigest()


def _parse_announcement(data: Any) -> ReceivingTransfer | None:
    """The ``warpsocket.transfer`` event's data, hostile until checked."""
    if not isinstance(data, dict):
        return None
    ident, size, sha256 = data.get("transfer"), data.get("size"), data.get("sha256")
    chunk_size = data.get("chunk_size")
    if not (
        isinstance(ident, str)
        and wire.valid_id(ident)
        and type(size) is int
        and 0 <= size <= 2**53 - 1
        and isinstance(sha256, str)
        and wire.valid_hex(sha256)
        and type(chunk_size) is int
        and wire.MIN_CHUNK_SIZE <= chunk_size <= wire.MAX_CHUNK_SIZE
    ):
        return None
    name, room, sender = data.get("name"), data.get("room"), data.get("from")
    return ReceivingTransfer(
        id=ident,
        size=size,
        sha256=sha256,
        name=name if isinstance(name, str) else None,
        meta=data.get("meta"),
        room=room if isinstance(room, str) else None,
        sender=sender if isinstance(sender, str) else None,
        _chunk_size=chunk_size,
    )
