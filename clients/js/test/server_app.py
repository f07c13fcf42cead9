"""The server side of the TypeScript client's node tests.

``twistd warpsocket --app server_app:setup`` with this directory on
PYTHONPATH. Handlers:

- ``echo`` (call): returns its data; ``add`` (call): the sum of a list;
- ``incr`` (call): waits ``data["delay"]`` seconds, then counts one run under
  ``data["key"]`` and returns the count (a retried call must run once);
- ``runs`` (call): the run count under ``data``;
- ``record`` (event): remembers ``data["seq"]`` per session; ``records``
  (call): what the caller's session recorded, in handling order;
- ``feed`` (call): publishes ``data["count"]`` messages into room
  ``data["room"]``, one every ``data["interval"]`` seconds, numbered from 1;
- ``direct`` (call): sends ``data["count"]`` acked messages to the caller's
  session, one every ``data["interval"]`` seconds; ``direct_status`` (call):
  how many of them were acknowledged and how many failed.
- chunked transfers (the ``chunks`` extension): ``share`` (call) writes
  ``data["size"]`` random bytes to a file and shares it with the caller's
  session (or ``data["room"]``), returning its SHA-256; uploads to the
  application are hashed, and ``uploads`` (call) returns the caller's
  finished ones as ``{name: sha256}``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import Counter, defaultdict
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from warpsocket.server.context import Context
from warpsocket.server.hub import Hub
from warpsocket.transfer.server import IncomingTransfer, TransferOptions, TransferServer

_runs: Counter[str] = Counter()
_records: defaultdict[str, list[Any]] = defaultdict(list)
_direct: defaultdict[str, Counter[str]] = defaultdict(Counter)
_uploads: defaultdict[str, dict[str, str]] = defaultdict(dict)


def setup(hub: Hub) -> None:
    hub.on("echo", lambda ctx, data: data)
    hub.on("add", lambda ctx, data: sum(data))
    hub.on("whoami", lambda ctx, data: {"session": ctx.session, "user": ctx.user})

    def incr(ctx: Context, data: Any) -> Deferred[int]:
        def run() -> int:
            _runs[data["key"]] += 1
            return _runs[data["key"]]

        return deferLater(reactor, float(data.get("delay", 0)), run)

    hub.on("incr", incr)
    hub.on("runs", lambda ctx, data: _runs[data])

    def record(ctx: Context, data: Any) -> None:
        _records[ctx.session].append(data["seq"])

    hub.on("record", record)
    hub.on("records", lambda ctx, data: _records[ctx.session])

    def feed(ctx: Context, data: Any) -> str:
        room, count, interval = data["room"], int(data["count"]), float(data["interval"])

        def publish(n: int) -> None:
            hub.publish(room, "tick", {"n": n})
            if n < count:
                reactor.callLater(interval, publish, n + 1)

        reactor.callLater(0, publish, 1)
        return "started"

    hub.on("feed", feed)

    def direct(ctx: Context, data: Any) -> str:
        session, count, interval = ctx.session, int(data["count"]), float(data["interval"])
        status = _direct[session]

        def send(n: int) -> None:
            sent = hub.send(session, "direct", {"n": n}, ack=True, timeout=60)
            sent.addCallbacks(
                lambda _: status.update(["acked"]), lambda _: status.update(["failed"])
            )
            if n < count:
                reactor.callLater(interval, send, n + 1)

        reactor.callLater(0, send, 1)
        return "started"

    hub.on("direct", direct)
    hub.on("direct_status", lambda ctx, data: dict(_direct[ctx.session]))

    transfers = TransferServer(
        hub, TransferOptions(chunk_size=16384, window=4, can_relay=lambda ctx, target: True)
    )

    class HashingSink:
        def __init__(self) -> None:
            self.hasher = hashlib.sha256()

        def write(self, data: bytes) -> None:
            self.hasher.update(data)

    def upload(ctx: Context, incoming: IncomingTransfer) -> HashingSink:
        sink = HashingSink()
        name = incoming.name or incoming.id
        incoming.done.addCallback(lambda digest: _uploads[ctx.session].update({name: digest}))
        incoming.done.addErrback(lambda failure: None)
        return sink

    transfers.on_transfer(upload)
    hub.on("uploads", lambda ctx, data: _uploads[ctx.session])

    def share(ctx: Context, data: Any) -> Deferred[str]:
        content = os.urandom(int(data["size"]))
        fd, path = tempfile.mkstemp(prefix="share-")
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        room = data.get("room")
        session = None if room else ctx.session
        shared = transfers.share(path, session=session, room=room, name=data.get("name"))
        return shared.addCallback(lambda _: hashlib.sha256(content).hexdigest())

    hub.on("share", share)
