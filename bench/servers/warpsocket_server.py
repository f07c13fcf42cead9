"""WarpSocket under test: Hub + WarpSocketService, room "bench", an "echo" handler.

Production defaults except the per-address connection and message limits
(see ``bench_options``).

Clients say hello with ``rooms: ["bench"]`` (open rooms). A control client
(hello without rooms) calls ``fanout`` with ``{"count", "size"}``: the server
then publishes ``count`` messages into the room with ``Hub.publish``, all in
one reactor turn (``burst``) or one per reactor turn, and answers when the
last one has been handed to the transports.
"""

from __future__ import annotations

from typing import Any

from _common import ROOM, make_payload, parse_args, raise_nofile, ready, trace_memory_on_signal
from _twisted_log import start_logging

args = parse_args(__doc__ or "")
raise_nofile()
trace_memory_on_signal()
start_logging()

from twisted.internet import reactor  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402

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


hub = Hub(bench_options())


@hub.on("echo")
def echo(ctx: Any, data: Any) -> Any:
    return data


@hub.on("fanout")
def fanout(ctx: Any, data: Any) -> Deferred[dict[str, int]]:
    count, size, burst = int(data["count"]), int(data["size"]), bool(data.get("burst"))
    done: Deferred[dict[str, int]] = Deferred()

    def step(seq: int) -> None:
        if seq == count:
            done.callback({"sent": count, "members": len(hub.room_members(ROOM))})
            return
        hub.publish(ROOM, "tick", make_payload(seq, size))
        if burst:
            step(seq + 1)
        else:
            reactor.callLater(0, step, seq + 1)

    step(0)
    return done


service = WarpSocketService(hub, [f"tcp:{args.port}:interface={args.host}"])
service.startService()
reactor.callWhenRunning(ready, "warpsocket", args.port)
reactor.run()
