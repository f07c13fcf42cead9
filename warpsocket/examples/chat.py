"""A small chat with rooms.

Via twistd:   twistd -n warpsocket --app warpsocket.examples.chat:setup
Embedded:     python -m warpsocket.examples.chat  (listens on tcp:8080)
"""

from __future__ import annotations

import sys
from typing import Any

from warpsocket.protocol.codes import ErrorCode
from warpsocket.server.context import Context
from warpsocket.server.hub import Hub
from warpsocket.server.middleware import Reject


def setup(hub: Hub) -> None:
    """Register the chat's handlers on a hub (the ``--app`` entry point)."""

    @hub.on("join")
    async def join(ctx: Context, data: Any) -> dict[str, Any]:
        room = _room(data)
        await ctx.join(room)
        await hub.publish(room, "joined", {"session": ctx.session})
        return {"room": room, "members": len(await hub.presence(room))}

    @hub.on("say")
    async def say(ctx: Context, data: Any) -> None:
        room = _room(data)
        if ctx.session not in hub.room_members(room):  # this session's node knows
            raise Reject(ErrorCode.FORBIDDEN, f"join {room!r} first")
        text = data.get("text")
        if not isinstance(text, str) or not 0 < len(text) <= 2000:
            raise Reject(ErrorCode.BAD_ENVELOPE, "text must be 1-2000 characters")
        await hub.publish(room, "said", {"from": ctx.session, "text": text})

    @hub.on("who")
    async def who(ctx: Context, data: Any) -> list[str]:
        return sorted(await hub.presence(_room(data)))  # every node's members


def _room(data: Any) -> str:
    room = data.get("room") if isinstance(data, dict) else None
    if not isinstance(room, str) or not 0 < len(room) <= 64:
        raise Reject(ErrorCode.BAD_ENVELOPE, "data.room must be a room name")
    return room


def main() -> None:
    from twisted.internet import reactor
    from twisted.python import log

    from warpsocket.server.service import WarpSocketService

    log.startLogging(sys.stdout)
    hub = Hub()
    setup(hub)
    service = WarpSocketService(hub, ["tcp:8080"])
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()


if __name__ == "__main__":
    main()
