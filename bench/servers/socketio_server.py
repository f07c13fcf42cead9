"""python-socketio on aiohttp (asyncio).

Clients connect with socket.io-client and are put in room ``bench`` by the
``connect`` handler; ``echo`` returns its data through the client's ack
callback. A control client (``auth={"control": true}``, not in the room)
emits ``fanout`` with ``{"count": N, "size": B}`` and an ack: the server
emits N messages to the room (``AsyncServer.emit(..., room=...)``, which
encodes each once) and acks ``{"sent": N}``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from _common import ROOM, make_payload, parse_args, raise_nofile, ready, trace_memory_on_signal

args = parse_args(__doc__ or "")
raise_nofile()
trace_memory_on_signal()

import socketio  # noqa: E402
from aiohttp import web  # noqa: E402

sio = socketio.AsyncServer(async_mode="aiohttp", logger=False, engineio_logger=False)


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


async def main() -> None:
    app = web.Application()
    sio.attach(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    ready("socketio", args.port)
    await asyncio.Future()


asyncio.run(main())
