"""The hub's side of chunked transfers: uploads, the spool and downloads.

``TransferServer(hub, TransferOptions(...))`` offers the ``chunks``
extension on the hub's connections and takes their ``transfer`` envelopes:

- an upload addressed to nobody goes to the application: the
  ``on_transfer`` handler returns a sink, and every verified chunk is
  written to it as it arrives (memory: one chunk; credits bound the rest);
- an upload addressed to a session (``to``) or a room (``room``) is written
  to a spool file on disk; once whole and verified, the receivers are told
  with an ``warpsocket.transfer`` event on their stream (``direct`` or
  ``room:<name>``) and pull the chunks from the spool at their own pace.

Every transfer is flow-controlled by credits: the server never holds more
than one window of chunks per transfer, and a sender that sends past its
credit loses the transfer (``4625 transfer_flow``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import IO, Any, Protocol

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from warpsocket.core.ids import random_id
from warpsocket.core.messages import error_envelope
from warpsocket.core.server import ConnId, Dispatch, Send, Session
from warpsocket.protocol.codes import ErrorCode, ProtocolError
from warpsocket.protocol.envelope import Envelope, MessageType
from warpsocket.server.context import Context
from warpsocket.server.middleware import Reject
from warpsocket.transfer import wire
from warpsocket.transfer.errors import TransferError


class Sink(Protocol):
    """Where an upload's bytes go: ``write`` is called once per chunk, in
    order; it may return a Deferred (the next credit waits for it)."""

    def write(self, data: bytes, /) -> Any: ...


@dataclass(frozen=True)
class TransferOptions:
    """The ``chunks`` extension's settings on a hub.

    - ``chunk_size``, ``window``: the largest chunk and the credit (in
      chunks) per transfer; the server buffers at most one window.
    - ``max_size``: the largest transfer; ``max_transfers``: uploads one
      session may have open at once, and downloads one connection may pull
      at once (each holds an open spool file).
    - ``spool_dir``: where relayed transfers are kept (a fresh temporary
      directory when None); ``spool_max_bytes`` bounds it; a finished relay
      stays ``spool_ttl`` seconds for its receivers to pull.
    - ``idle_timeout``: an unfinished upload with no traffic this long is
      dropped (it survives reconnects of its sender until then).
    - ``can_relay(ctx, target_session)``: may this sender address a session
      directly (default: no). Room relays follow the hub's publish policy.
    - ``relay``: offer relays at all.
    """

    chunk_size: int = wire.DEFAULT_CHUNK_SIZE
    window: int = wire.DEFAULT_WINDOW
    max_size: int = 4 * 1024**3
    max_transfers: int = 4
    spool_dir: str | None = None
    spool_max_bytes: int = 16 * 1024**3
    spool_ttl: float = 300.0
    idle_timeout: float = 120.0
    can_relay: Callable[[Context, str], bool] | None = None
    relay: bool = True

    def __post_init__(self) -> None:
        if not wire.MIN_CHUNK_SIZE <= self.chunk_size <= wire.MAX_CHUNK_SIZE:
            raise ValueError(
                f"chunk_size must be {wire.MIN_CHUNK_SIZE}..{wire.MAX_CHUNK_SIZE} bytes"
            )
        if not 1 <= self.window <= wire.MAX_WINDOW:
            raise ValueError(f"window must be 1..{wire.MAX_WINDOW} chunks")
        if self.max_size < 0 or self.max_transfers < 1 or self.spool_max_bytes < 0:
            raise ValueError("max_size, spool_max_bytes >= 0 and max_transfers >= 1")

    @property
    def params(self) -> wire.Params:
        return wire.Params(
            self.chunk_size, self.window, self.max_size, self.max_transfers, self.relay
        )


@dataclass(eq=False)
class IncomingTransfer:
    """An upload to the application, as its ``on_transfer`` handler sees it.

    ``done`` fires with the SHA-256 (hex) once every byte was written to the
    sink and the whole verified; it fails with ``TransferError`` when the
    transfer is cancelled, corrupt or abandoned. ``received`` counts the
    bytes written so far; ``cancel()`` refuses the rest.
    """

    id: str
    session: str
    user: str | None
    name: str | None
    size: int
    meta: Any
    received: int = 0
    done: Deferred[str] = field(default_factory=Deferred)
    _server: TransferServer | None = field(default=None, repr=False)
    _key: tuple[str, str] = ("", "")

    def cancel(self, message: str = "cancelled by the application") -> None:
        if self._server is not None:
            self._server._abort_upload(self._key, ErrorCode.TRANSFER_CANCELLED, message, tell=True)


TransferHandler = Callable[[Context, IncomingTransfer], Sink | None]


@dataclass(eq=False)
class _Upload:
    key: tuple[str, str]  # (principal, transfer id)
    conn: ConnId
    session: str
    size: int
    chunk_size: int
    count: int
    target: tuple[str, str] | None  # ("to", session) / ("room", name) / None: the app
    name: str | None
    meta: Any
    sink: Any
    incoming: IncomingTransfer | None = None
    spool_path: str | None = None
    hasher: Any = field(default_factory=hashlib.sha256)
    expected: int = 0  # chunks accepted (written or being written)
    written: int = 0  # chunks written: the acknowledged prefix
    limit: int = 0  # the highest credit granted: chunks below it may be sent
    nacked: int | None = None
    resends: int = 0
    writing: Deferred[None] | None = None  # the sink's pending writes, in order
    last_ms: int = 0


@dataclass(eq=False)
class _Spooled:
    id: str
    path: str
    size: int
    sha256: str
    chunk_size: int
    session: str | None  # the one receiver, or None for a room
    room: str | None
    owned: bool  # the spool's own file: deleted on expiry
    expires_ms: int


@dataclass(eq=False)
class _Reader:
    entry: _Spooled
    conn: ConnId
    file: IO[bytes]
    acked: int = 0
    sent: int = 0  # the next chunk to send
    limit: int = 0
    resends: int = 0


class TransferServer:
    """Chunked transfers on a hub (module docstring): ``on_transfer`` for
    uploads to the application, ``share`` to offer a file to a session or a
    room, relays between clients through the spool."""

    log = Logger()

    def __init__(self, hub: Any, options: TransferOptions | None = None) -> None:
        self.hub = hub
        self.options = options if options is not None else TransferOptions()
        core = hub.core
        extensions = dict(core.options.extensions)
        extensions[wire.EXTENSION] = self.options.params.to_wire()
        core.options = replace(core.options, extensions=extensions)
        hub._dispatcher.transfers = self._receive
        self._run: Callable[[list[Any]], None] = hub._run
        self._core = core
        self._handler: TransferHandler | None = None
        self._uploads: dict[tuple[str, str], _Upload] = {}
        self._completed: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._spool: dict[str, _Spooled] = {}
        self._spool_bytes = 0  # spooled and being spooled
        self._readers: dict[tuple[ConnId, str], _Reader] = {}
        self._by_conn: dict[ConnId, set[str]] = {}
        self._spool_dir = self.options.spool_dir or tempfile.mkdtemp(prefix="warpsocket-spool-")
        os.makedirs(self._spool_dir, exist_ok=True)
        self._sweeper: Any = None
        self._schedule_sweep()

    # ------------------------------------------------------------ public API

    def on_transfer(self, handler: TransferHandler) -> TransferHandler:
        """Register ``handler(ctx, incoming) -> sink`` for uploads to the
        application; decorator too. Return a sink (``write(bytes)``), or
        raise ``Reject(code)`` to refuse (None refuses with 4621)."""
        self._handler = handler
        return handler

    @property
    def open_uploads(self) -> int:
        return len(self._uploads)

    @property
    def buffered_chunks(self) -> int:
        """Chunks accepted but not yet written to their sinks (<= window each)."""
        return sum(upload.expected - upload.written for upload in self._uploads.values())

    @property
    def spool_bytes(self) -> int:
        return self._spool_bytes

    def share(
        self,
        path: str,
        *,
        session: str | None = None,
        room: str | None = None,
        name: str | None = None,
        meta: Any = None,
    ) -> Deferred[str]:
        """Offer a file to one session or a room: they pull it in chunks.

        The file is read once here for its SHA-256 and must not change while
        it is shared (``spool_ttl``). Fires with the transfer id once the
        announcement is stored in the receivers' stream.
        """
        if (session is None) == (room is None):
            raise ValueError("share to a session or a room")
        hasher = hashlib.sha256()
        with open(path, "rb") as source:
            for block in iter(lambda: source.read(1 << 20), b""):
                hasher.update(block)
        size = os.path.getsize(path)
        entry = self._add_spooled(path, size, hasher.hexdigest(), session, room, owned=False)
        return self._announce(entry, name, meta, sender=None)

    def stop(self) -> None:
        """Cancel the sweep timer and drop every transfer (tests, shutdown)."""
        if self._sweeper is not None and self._sweeper.active():
            self._sweeper.cancel()
        self._sweeper = None
        for key in list(self._uploads):
            self._abort_upload(key, ErrorCode.GOING_AWAY, "server stopping", tell=False)
        for reader in list(self._readers.values()):
            self._drop_reader(reader)
        for entry in list(self._spool.values()):
            self._expire(entry)

    # ------------------------------------------------------------ inbound

    def _receive(self, dispatch: Dispatch, ctx: Context) -> None:
        envelope = dispatch.envelope
        try:
            op = wire.parse(envelope)
        except ProtocolError as error:
            self._send(dispatch.conn, self._error(error.code, error.message, envelope.id))
            return
        session = self._core.sessions.get(dispatch.session)
        if session is None:
            return
        handler = _HANDLERS[op.op]
        try:
            handler(self, dispatch.conn, session, ctx, op)
        except Exception:
            self.log.failure("transfer {op} failed", Failure(), op=op.op)
            self._cancel(dispatch.conn, op.transfer, ErrorCode.INTERNAL_ERROR, "internal error")

    # ------------------------------------------------------------ uploads

    def _offer(self, conn: ConnId, session: Session, ctx: Context, op: wire.Op) -> None:
        key = (session.principal, op.transfer)
        done = self._completed.get(key)
        if done is not None:  # a sender that missed our `done` offers again
            self._tell(conn, {"op": "done", "transfer": op.transfer, "sha256": done})
            return
        size, chunk_size = op.number("size"), op.number("chunk_size")
        upload = self._uploads.get(key)
        if upload is not None:  # a resume: continue from the acknowledged prefix
            if (upload.size, upload.chunk_size) != (size, chunk_size):
                self._abort_upload(key, ErrorCode.TRANSFER_UNKNOWN, "offer differs", tell=False)
                self._cancel(conn, op.transfer, ErrorCode.TRANSFER_UNKNOWN, "offer differs")
                return
            # Chunks sent on the old connection after the last credit may be
            # lost: the sender starts again from the written prefix (chunks
            # still being written are recognised as duplicates).
            upload.conn, upload.nacked, upload.last_ms = conn, None, self._now()
            self._credit(upload)
            return
        refusal = self._refuse_offer(session, size, chunk_size)
        if refusal is not None:
            self._cancel(conn, op.transfer, *refusal)
            return
        target = _target(op)
        try:
            sink, spool_path, incoming = self._open_sink(conn, session, ctx, op, key, target)
        except TransferError as error:
            self._cancel(conn, op.transfer, error.code, str(error))
            return
        upload = _Upload(
            key=key,
            conn=conn,
            session=session.id,
            size=size,
            chunk_size=chunk_size,
            count=wire.chunk_count(size, chunk_size),
            target=target,
            name=op.data.get("name"),
            meta=op.data.get("meta"),
            sink=sink,
            incoming=incoming,
            spool_path=spool_path,
            last_ms=self._now(),
        )
        self._uploads[key] = upload
        if spool_path is not None:
            self._spool_bytes += size
        self._credit(upload)

    def _refuse_offer(
        self, session: Session, size: int, chunk_size: int
    ) -> tuple[ErrorCode, str] | None:
        options = self.options
        if size > options.max_size:
            return ErrorCode.TRANSFER_TOO_LARGE, f"larger than {options.max_size} bytes"
        if chunk_size > options.chunk_size:
            return ErrorCode.TRANSFER_TOO_LARGE, f"chunks larger than {options.chunk_size} bytes"
        open_here = sum(1 for principal, _ in self._uploads if principal == session.principal)
        if open_here >= options.max_transfers:
            return ErrorCode.TRANSFER_BUSY, f"at most {options.max_transfers} open transfers"
        return None

    def _open_sink(
        self,
        conn: ConnId,
        session: Session,
        ctx: Context,
        op: wire.Op,
        key: tuple[str, str],
        target: tuple[str, str] | None,
    ) -> tuple[Any, str | None, IncomingTransfer | None]:
        size = op.number("size")
        if target is None:
            if self._handler is None:
                raise TransferError(ErrorCode.NO_HANDLER, "no transfer handler")
            incoming = IncomingTransfer(
                op.transfer,
                session.id,
                session.user,
                op.data.get("name"),
                size,
                op.data.get("meta"),
                _server=self,
                _key=key,
            )
            try:
                sink = self._handler(ctx, incoming)
            except Reject as reject:
                raise TransferError(reject.code, reject.message) from None
            except Exception:
                self.log.failure("transfer handler failed")
                raise TransferError(ErrorCode.HANDLER_ERROR, "handler failed") from None
            if sink is None:
                raise TransferError(ErrorCode.TRANSFER_CANCELLED, "declined")
            return sink, None, incoming
        if not self.options.relay:
            raise TransferError(ErrorCode.FORBIDDEN, "relays are not offered")
        kind, name = target
        if kind == "room":
            probe = Envelope(
                type=MessageType.EVENT,
                id=op.transfer,
                timestamp=self._now(),
                event=wire.ANNOUNCE_EVENT,
                room=name,
            )
            if name not in session.rooms or not self._core.can_publish(session, name, probe):
                raise TransferError(ErrorCode.FORBIDDEN, "may not publish to this room")
        else:
            policy = self.options.can_relay
            if policy is None or not policy(ctx, name):
                raise TransferError(ErrorCode.FORBIDDEN, "may not send to this session")
            if name not in self._core.sessions:  # the spool is this node's
                raise TransferError(ErrorCode.TRANSFER_UNKNOWN, "no such session on this node")
        if self._spool_bytes + size > self.options.spool_max_bytes:
            raise TransferError(ErrorCode.TRANSFER_BUSY, "the spool is full")
        fd, path = tempfile.mkstemp(prefix="up-", suffix=".part", dir=self._spool_dir)
        return os.fdopen(fd, "wb"), path, None

    def _chunk(self, conn: ConnId, session: Session, ctx: Context, op: wire.Op) -> None:
        key = (session.principal, op.transfer)
        upload = self._uploads.get(key)
        if upload is None:
            if key not in self._completed:
                self._cancel(conn, op.transfer, ErrorCode.TRANSFER_UNKNOWN, "no such transfer")
            return
        upload.last_ms = self._now()
        seq = op.number("seq")
        if seq >= upload.limit or seq >= upload.count:
            # Enforced, not buffered: a sender that ignores credits loses the transfer.
            self._abort_upload(key, ErrorCode.TRANSFER_FLOW, "chunk beyond the credit", tell=False)
            self._cancel(conn, op.transfer, ErrorCode.TRANSFER_FLOW, f"chunk {seq} beyond credit")
            return
        if seq < upload.expected:
            return  # a duplicate (a resend that crossed our credit)
        if seq > upload.expected:
            self._nack(upload, "sequence gap")  # a chunk went missing: go back to it
            return
        data = wire.verified_chunk(op, upload.size, upload.chunk_size)
        if data is None:
            upload.resends += 1
            if upload.resends > wire.MAX_RESENDS:
                message = f"chunk {seq} failed {wire.MAX_RESENDS} times"
                self._abort_upload(key, ErrorCode.TRANSFER_CORRUPT, message, tell=True)
                return
            self._nack(upload, "chunk hash or length mismatch", force=True)
            return
        upload.resends, upload.nacked = 0, None
        upload.expected += 1
        upload.hasher.update(data)
        self._write(upload, data)

    def _write(self, upload: _Upload, data: bytes) -> None:
        def written(_: object = None) -> None:
            if self._uploads.get(upload.key) is not upload:
                return
            upload.written += 1
            if upload.incoming is not None:
                upload.incoming.received += len(data)
            self._credit(upload)

        def failed(failure: Failure) -> None:
            self.log.failure("transfer sink failed", failure)
            self._abort_upload(upload.key, ErrorCode.HANDLER_ERROR, "sink failed", tell=True)

        if upload.writing is None:
            try:
                result = upload.sink.write(data)
            except Exception:
                failed(Failure())
                return
            if not isinstance(result, Deferred):
                written()
                return
            chain: Deferred[Any] = result
        else:
            chain = upload.writing.addCallback(lambda _: maybeDeferred(upload.sink.write, data))
        upload.writing = chain
        chain.addCallback(written)

        def settled(_: object) -> None:
            if upload.writing is chain:
                upload.writing = None

        chain.addCallbacks(settled, failed)

    def _credit(self, upload: _Upload) -> None:
        upload.limit = max(upload.limit, upload.written + self.options.window)
        self._tell(
            upload.conn,
            {
                "op": "credit",
                "transfer": upload.key[1],
                "next": upload.written,
                "limit": min(upload.limit, upload.count),
            },
        )

    def _nack(self, upload: _Upload, reason: str, force: bool = False) -> None:
        if upload.nacked == upload.expected and not force:
            return  # once per gap: the chunks after it are dropped until it comes
        upload.nacked = upload.expected
        self._tell(
            upload.conn,
            {"op": "nack", "transfer": upload.key[1], "seq": upload.expected, "reason": reason},
        )

    def _end(self, conn: ConnId, session: Session, ctx: Context, op: wire.Op) -> None:
        key = (session.principal, op.transfer)
        upload = self._uploads.get(key)
        if upload is None:
            done = self._completed.get(key)
            if done is not None:
                self._tell(conn, {"op": "done", "transfer": op.transfer, "sha256": done})
            else:
                self._cancel(conn, op.transfer, ErrorCode.TRANSFER_UNKNOWN, "no such transfer")
            return
        if upload.written < upload.count:
            self._credit(upload)  # not all here yet: tell the sender where we are
            return
        sha256 = upload.hasher.hexdigest()
        if op.data["sha256"] != sha256:
            self._abort_upload(key, ErrorCode.TRANSFER_CORRUPT, "SHA-256 mismatch", tell=True)
            return
        del self._uploads[key]
        self._remember(key, sha256)
        if upload.incoming is not None:
            upload.incoming.done.callback(sha256)
        else:
            upload.sink.close()
            assert upload.target is not None and upload.spool_path is not None
            kind, name = upload.target
            self._spool_bytes -= upload.size  # counted again by _add_spooled
            entry = self._add_spooled(
                upload.spool_path,
                upload.size,
                sha256,
                name if kind == "to" else None,
                name if kind == "room" else None,
                owned=True,
                chunk_size=upload.chunk_size,
            )
            announced = self._announce(entry, upload.name, upload.meta, sender=upload.session)
            # The upload is done either way; a failed announcement (the session
            # expired meanwhile, the backend is down) is the operator's to see.
            announced.addErrback(lambda failure: self.log.failure("announce failed", failure))
        self._tell(conn, {"op": "done", "transfer": op.transfer, "sha256": sha256})

    def _remember(self, key: tuple[str, str], sha256: str) -> None:
        self._completed[key] = sha256
        while len(self._completed) > 4096:
            self._completed.popitem(last=False)

    def _cancel_op(self, conn: ConnId, session: Session, ctx: Context, op: wire.Op) -> None:
        key = (session.principal, op.transfer)
        if key in self._uploads:
            self._abort_upload(key, ErrorCode.TRANSFER_CANCELLED, "cancelled by the sender")
        reader = self._readers.get((conn, op.transfer))
        if reader is not None:
            self._drop_reader(reader)

    def _abort_upload(
        self, key: tuple[str, str], code: ErrorCode, message: str, *, tell: bool = False
    ) -> None:
        upload = self._uploads.pop(key, None)
        if upload is None:
            return
        if tell:
            self._cancel(upload.conn, key[1], code, message)
        if upload.incoming is not None:
            abort = getattr(upload.sink, "abort", None)
            if callable(abort):
                try:
                    abort()
                except Exception:
                    self.log.failure("transfer sink abort failed")
            upload.incoming.done.errback(Failure(TransferError(code, message)))
        elif upload.spool_path is not None:
            self._spool_bytes -= upload.size
            upload.sink.close()
            _remove(upload.spool_path)

    # ------------------------------------------------------------ spool and downloads

    def _add_spooled(
        self,
        path: str,
        size: int,
        sha256: str,
        session: str | None,
        room: str | None,
        *,
        owned: bool,
        chunk_size: int | None = None,
    ) -> _Spooled:
        entry = _Spooled(
            id=random_id(),
            path=path,
            size=size,
            sha256=sha256,
            chunk_size=chunk_size or self.options.chunk_size,
            session=session,
            room=room,
            owned=owned,
            expires_ms=self._now() + int(self.options.spool_ttl * 1000),
        )
        self._spool[entry.id] = entry
        if owned:
            self._spool_bytes += size
        return entry

    def _announce(
        self, entry: _Spooled, name: str | None, meta: Any, sender: str | None
    ) -> Deferred[str]:
        data: dict[str, Any] = {
            "transfer": entry.id,
            "size": entry.size,
            "sha256": entry.sha256,
            "chunk_size": entry.chunk_size,
        }
        if name is not None:
            data["name"] = name
        if meta is not None:
            data["meta"] = meta
        if sender is not None:
            data["from"] = sender
        stored: Deferred[Any]
        if entry.room is not None:
            data["room"] = entry.room
            stored = self.hub.publish(entry.room, wire.ANNOUNCE_EVENT, data)
        else:
            assert entry.session is not None
            stored = self.hub.send(entry.session, wire.ANNOUNCE_EVENT, data)
        stored.addCallback(lambda _: entry.id)
        return stored

    def _pull(self, conn: ConnId, session: Session, ctx: Context, op: wire.Op) -> None:
        entry = self._spool.get(op.transfer)
        allowed = entry is not None and (
            entry.session == session.id or (entry.room is not None and entry.room in session.rooms)
        )
        if entry is None or not allowed:
            self._cancel(conn, op.transfer, ErrorCode.TRANSFER_UNKNOWN, "no such transfer")
            return
        reader = self._readers.get((conn, op.transfer))
        if reader is None and len(self._by_conn.get(conn, ())) >= self.options.max_transfers:
            self._cancel(
                conn,
                op.transfer,
                ErrorCode.TRANSFER_BUSY,
                f"at most {self.options.max_transfers} downloads at once",
            )
            return
        if reader is None:
            reader = _Reader(entry, conn, open(entry.path, "rb"))  # noqa: SIM115 (closed with the reader)
            self._readers[(conn, op.transfer)] = reader
            self._by_conn.setdefault(conn, set()).add(op.transfer)
        count = wire.chunk_count(entry.size, entry.chunk_size)
        start = min(op.number("next"), count)
        reader.acked = reader.sent = start
        reader.limit = min(op.number("limit"), start + self.options.window, count)
        self._pump(conn)

    def _credit_op(self, conn: ConnId, session: Session, ctx: Context, op: wire.Op) -> None:
        reader = self._readers.get((conn, op.transfer))
        if reader is None:
            return  # the upload side never receives credits; a stale one is harmless
        count = wire.chunk_count(reader.entry.size, reader.entry.chunk_size)
        acked = min(op.number("next"), reader.sent)
        if acked > reader.acked:
            reader.acked, reader.resends = acked, 0
        reader.limit = max(
            reader.limit, min(op.number("limit"), reader.acked + self.options.window, count)
        )
        self._pump(conn)

    def _nack_op(self, conn: ConnId, session: Session, ctx: Context, op: wire.Op) -> None:
        reader = self._readers.get((conn, op.transfer))
        if reader is None:
            return
        seq = op.number("seq")
        if reader.acked <= seq < reader.sent:
            reader.resends += 1
            if reader.resends > wire.MAX_RESENDS:
                self._drop_reader(reader)
                self._cancel(conn, op.transfer, ErrorCode.TRANSFER_CORRUPT, "too many resends")
                return
            reader.sent = seq  # go back: everything from seq is sent again
        self._pump(conn)

    def _done_op(self, conn: ConnId, session: Session, ctx: Context, op: wire.Op) -> None:
        reader = self._readers.get((conn, op.transfer))
        if reader is not None:
            self._drop_reader(reader)

    def _pump(self, conn: ConnId) -> None:
        """Send what the credits allow, at most one window in flight per
        connection (so its outbound buffer stays bounded, whatever it pulls)."""
        names = self._by_conn.get(conn)
        if not names:
            return
        if conn not in self._core.connections:
            for name in list(names):
                reader = self._readers.get((conn, name))
                if reader is not None:
                    self._drop_reader(reader)
            return
        readers = [self._readers[(conn, name)] for name in sorted(names)]
        in_flight = sum(reader.sent - reader.acked for reader in readers)
        progressed = True
        while progressed and in_flight < self.options.window:
            progressed = False
            for reader in readers:
                if reader.sent < reader.limit and in_flight < self.options.window:
                    self._send_chunk(reader)
                    in_flight += 1
                    progressed = True

    def _send_chunk(self, reader: _Reader) -> None:
        entry = reader.entry
        seq = reader.sent
        reader.file.seek(seq * entry.chunk_size)
        data = reader.file.read(wire.chunk_length(seq, entry.size, entry.chunk_size))
        reader.sent += 1
        self._tell(reader.conn, wire.chunk_data(entry.id, seq, data))

    def _drop_reader(self, reader: _Reader) -> None:
        self._readers.pop((reader.conn, reader.entry.id), None)
        names = self._by_conn.get(reader.conn)
        if names is not None:
            names.discard(reader.entry.id)
            if not names:
                del self._by_conn[reader.conn]
        reader.file.close()

    def _expire(self, entry: _Spooled) -> None:
        self._spool.pop(entry.id, None)
        for reader in [r for r in self._readers.values() if r.entry is entry]:
            self._drop_reader(reader)
        if entry.owned:
            self._spool_bytes -= entry.size
            _remove(entry.path)

    # ------------------------------------------------------------ timers

    def _schedule_sweep(self) -> None:
        self._sweeper = self.hub.clock.callLater(1.0, self._sweep)

    def _sweep(self) -> None:
        now = self._now()
        idle_ms = int(self.options.idle_timeout * 1000)
        for key, upload in list(self._uploads.items()):
            if now - upload.last_ms >= idle_ms:
                self._abort_upload(key, ErrorCode.TRANSFER_CANCELLED, "abandoned", tell=False)
        for entry in list(self._spool.values()):
            if now >= entry.expires_ms:
                self._expire(entry)
        for conn in list(self._by_conn):
            if conn not in self._core.connections:
                self._pump(conn)  # drops the readers of a closed connection
        self._schedule_sweep()

    # ------------------------------------------------------------ helpers

    def _now(self) -> int:
        now: int = self.hub.now_ms()
        return now

    def _tell(self, conn: ConnId, data: dict[str, Any], code: int | None = None) -> None:
        self._send(conn, wire.envelope(self._core.new_id(), self._now(), data, code))

    def _send(self, conn: ConnId, envelope: Envelope) -> None:
        self._run([Send(conn, envelope)])

    def _cancel(self, conn: ConnId, transfer: str, code: ErrorCode | int, message: str) -> None:
        self._tell(conn, wire.cancel_data(transfer, code, message), int(code))

    def _error(self, code: ErrorCode, message: str, ref: str) -> Envelope:
        return error_envelope(self._core.new_id(), self._now(), code, message, ref)


def _target(op: wire.Op) -> tuple[str, str] | None:
    to, room = op.data.get("to"), op.data.get("room")
    if isinstance(to, str):
        return ("to", to)
    if isinstance(room, str):
        return ("room", room)
    return None


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


_Handler = Callable[[TransferServer, ConnId, Session, Context, wire.Op], None]
_HANDLERS: Mapping[str, _Handler] = {
    "offer": TransferServer._offer,
    "chunk": TransferServer._chunk,
    "end": TransferServer._end,
    "cancel": TransferServer._cancel_op,
    "pull": TransferServer._pull,
    "credit": TransferServer._credit_op,
    "nack": TransferServer._nack_op,
    "done": TransferServer._done_op,
}

__all__ = ["IncomingTransfer", "Sink", "TransferOptions", "TransferServer"]
