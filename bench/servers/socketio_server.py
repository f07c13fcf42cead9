"""python-socketio on aiohttp (asyncio).

Clients connect with socket.io-client and are put in room ``bench`` by the
``connect`` handler; ``echo`` returns its data through the client's ack
callback. A control client (``auth={"control": true}``, not in the room)
emits ``fanout`` with ``{"count": N, "size": B}`` and an ack: the server
emits N messages to the room (``AsyncServer.emit(..., room=...)``, which
encodes each once) and acks ``{"sent": N}``.

``--redis HOST:PORT`` (the cluster fan-out) makes this process one node of a
cluster through ``socketio.AsyncRedisManager``: an emit is delivered to this
node's members at once and published on Redis for the other nodes. READY is
printed once Redis answers and this node's pub/sub listener is subscribed; a
Redis that cannot be reached ends the process with an error instead.
"""

from __future__ import annotations

import asyncio
import sys
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

args = parse_args(__doc__ or "", cluster=True)
raise_nofile()
trace_memory_on_signal()

import socketio  # noqa: E402
from aiohttp import web  # noqa: E402

CHANNEL = "bench-socketio"
redis_url = None
manager = None
if args.redis:
    host, port = redis_address(args.redis)
    redis_url = f"redis://{host}:{port}/0"
    manager = socketio.AsyncRedisManager(redis_url, channel=CHANNEL)
sio = socketio.AsyncServer(
    async_mode="aiohttp", client_manager=manager, logger=False, engineio_logger=False
)


@sio.event
async def connect(sid: str, environ: Any, auth: Any = None) -> None:
    if not (isinstance(auth, dict) and auth.get("control")):
        await sio.enter_room(sid, ROOM)


@sio.on("echo")
async def echo(sid: str, data: Any) -> Any:
    return data


@sio.on("fanout")
async def fanout(sid: str, data: Any) -> dict[str, int]:
    count, size = int(data["count"]), int(data["size"])
    for seq in range(count):
        await sio.emit("tick", make_payload(seq, size), room=ROOM)
        if not data.get("burst"):
            await asyncio.sleep(0)
    return {"sent": count}


async def join_cluster(url: str) -> None:
    """Check Redis, start this node's pub/sub listener now (python-socketio
    would start it on the first connection) and wait until it is subscribed."""
    from redis import asyncio as aioredis

    probe = aioredis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        ((_, before),) = await probe.pubsub_numsub(CHANNEL)
        sio.manager_initialized = True
        sio.manager.initialize()
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            ((_, now),) = await probe.pubsub_numsub(CHANNEL)
            if now > before:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"pub/sub listener not subscribed to {CHANNEL!r} after 10 s")
            await asyncio.sleep(0.05)
    finally:
        await probe.aclose()


async def main() -> None:
    if redis_url is not None:
        try:
            await join_cluster(redis_url)
        except Exception as error:
            print(f"ERROR: Redis {args.redis}: {error}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
    app = web.Application()
    sio.attach(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    ready("socketio", args.port)
    await asyncio.Future()


asyncio.run(main())
