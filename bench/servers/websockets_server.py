"""The ``websockets`` library (asyncio implementation).

Clients connect to ``/ws``, join one set and get every message echoed. A
control connection on ``/control`` sends ``{"cmd": "fanout", "count": N,
"size": B}``: the server sends each message to every client with
``websockets.asyncio.server.broadcast`` (encoded and framed once), all N in
one event-loop turn (``"burst": true``) or one per turn, then answers
``{"sent": N}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from _common import make_payload, parse_args, raise_nofile, ready, trace_memory_on_signal

args = parse_args(__doc__ or "")
raise_nofile()
trace_memory_on_signal()

from websockets.asyncio.server import ServerConnection, broadcast, serve  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

clients: set[ServerConnection] = set()


async def control(ws: ServerConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        await _control(ws)


async def _control(ws: ServerConnection) -> None:
    async for message in ws:
        command = json.loads(message)
        if command.get("cmd") == "fanout":
            count, size = int(command["count"]), int(command["size"])
            for seq in range(count):
                broadcast(clients, json.dumps(make_payload(seq, size), separators=(",", ":")))
                if not command.get("burst"):
                    await asyncio.sleep(0)
            await ws.send(json.dumps({"sent": count, "members": len(clients)}))


async def handler(ws: ServerConnection) -> None:
    if ws.request is not None and ws.request.path == "/control":
        await control(ws)
        return
    clients.add(ws)
    try:
        async for message in ws:
            await ws.send(message)  # echo
    except ConnectionClosed:
        pass
    finally:
        clients.discard(ws)


async def main() -> None:
    # No compression (as for every server here), no size limit beyond the default.
    async with serve(handler, args.host, args.port, compression=None):
        ready("websockets", args.port)
        await asyncio.Future()


asyncio.run(main())
