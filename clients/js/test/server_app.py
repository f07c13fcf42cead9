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
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from warpsocket.server.context import Context
from warpsocket.server.hub import Hub

_runs: Counter[str] = Counter()
_records: defaultdict[str, list[Any]] = defaultdict(list)
_direct: defaultdict[str, Counter[str]] = defaultdict(Counter)


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
