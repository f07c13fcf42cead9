"""WarpSocket under test: Hub + WarpSocketService, room "bench", an "echo" handler.

Production defaults except the per-address connection and message limits
(see ``bench_options``).

Clients say hello with ``rooms: ["bench"]`` (open rooms). A control client
(hello without rooms) calls ``fanout`` with ``{"count", "size"}``: the server
then publishes ``count`` messages into the room with ``Hub.publish``, all in
one reactor turn (``burst``) or one per reactor turn, and answers when every
one has been stored and handed over (at once, in memory; with ``--redis``,
when Redis has appended them all), or with ``{"error": ...}`` if one failed.

``--redis HOST:PORT`` (the cluster fan-out) makes this process one node of a
cluster sharing that Redis (``--redis-cluster HOST:PORT``, repeated: of a
Redis Cluster, bench/scale.py), built as docs/cluster.md shows (``RedisBackend``
with ``RedisOptions``); ``--node`` names it. READY is printed only once the
backend is healthy (its canary came back through Redis pub/sub); a Redis that
cannot be reached ends the process with an error instead.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from typing import Any

from _common import (
    ROOM,
    make_payload,
    parse_args,
    raise_nofile,
    ready,
    redis_address,
    trace_memory_on_signal,
)
from _twisted_log import start_logging

args = parse_args(__doc__ or "", cluster=True)
raise_nofile()
trace_memory_on_signal()
start_logging()

from twisted.internet import reactor  # noqa: E402
from twisted.internet.defer import Deferred, gatherResults  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402

from warpsocket import Hub, HubOptions, WarpSocketService  # noqa: E402


def bench_options() -> HubOptions:
    """Production defaults, except the per-address limits: every benchmark
    connection comes from 127.0.0.1, up to 10,000 at up to a few thousand per
    second, and a fan-out client receives 200 messages in a burst. The
    security checks themselves stay on; only their thresholds are raised."""
    try:
        from dataclasses import fields, replace

        from warpsocket.server.security import SecurityOptions
    except ImportError:  # a tree without the security layer
        return HubOptions(open_rooms=True)
    raised = {
        "max_connections": 1_000_000,
        "max_connections_per_ip": 1_000_000,
        "connection_rate": 1_000_000.0,
        "message_rate": 1_000_000.0,
    }
    known = {f.name for f in fields(SecurityOptions)}
    security = replace(SecurityOptions(), **{k: v for k, v in raised.items() if k in known})
    return HubOptions(open_rooms=True, security=security)


def make_hub() -> Hub:
    options = bench_options()
    if not args.redis and not args.redis_cluster:
        return Hub(options)
    from warpsocket.backends.redis import RedisBackend, RedisOptions

    node = args.node or f"bench-{args.port}"
    options = replace(options, core=replace(options.core, node=node))
    if args.redis_cluster:
        redis = RedisOptions(url=None, cluster=tuple(args.redis_cluster), prefix="bench:")
    else:
        host, port = redis_address(args.redis)
        redis = RedisOptions(url=f"redis://{host}:{port}/0", prefix="bench:")
    backend = RedisBackend(redis, options.core.history, node=node)
    return Hub(options, backend=backend)


hub = make_hub()


@hub.on("echo")
def echo(ctx: Any, data: Any) -> Any:
    return data


@hub.on("fanout")
def fanout(ctx: Any, data: Any) -> Deferred[dict[str, Any]]:
    count, size, burst = int(data["count"]), int(data["size"]), bool(data.get("burst"))
    published: list[Deferred[Any]] = []

    def answer(_: object) -> Deferred[dict[str, Any]]:
        stored = gatherResults(published, consumeErrors=True)
        return stored.addCallbacks(
            lambda _: {"sent": count, "members": len(hub.room_members(ROOM))},
            lambda failure: {"error": _reason(failure)},
        )

    if burst:
        for seq in range(count):
            published.append(hub.publish(ROOM, "tick", make_payload(seq, size)))
        return answer(None)

    done: Deferred[None] = Deferred()

    def step(seq: int) -> None:
        if seq == count:
            done.callback(None)
            return
        published.append(hub.publish(ROOM, "tick", make_payload(seq, size)))
        reactor.callLater(0, step, seq + 1)

    step(0)
    return done.addCallback(answer)


def _reason(failure: Failure) -> str:
    error = getattr(failure.value, "subFailure", None)  # FirstError of gatherResults
    return (error or failure).getErrorMessage()


def announce(deadline: float) -> None:
    """READY once the hub can serve: at once in memory; in a cluster, once the
    Redis backend reports healthy (or an error and exit when it never does)."""
    reason = hub.health
    if reason is None:
        ready("warpsocket", args.port)
        return
    if time.monotonic() < deadline:
        reactor.callLater(0.05, announce, deadline)
        return
    print(f"ERROR: node {hub.options.core.node}: {reason} (Redis {args.redis})", file=sys.stderr)
    failed.append(2)
    reactor.stop()


failed: list[int] = []
service = WarpSocketService(hub, [f"tcp:{args.port}:interface={args.host}"])
service.startService()
reactor.callWhenRunning(announce, time.monotonic() + 10.0)
reactor.run()
sys.exit(failed[0] if failed else 0)
