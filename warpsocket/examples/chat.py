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
    """Register the chat's handlers on a hub (the ``--app`` entry point).

    Members are shown by name, never by session id: a session id is a
    bearer secret's neighbour (protocol.md 4.3), not something to publish.
    """
    names: dict[str, str] = {}  # session -> display name, while connected

    @hub.on("join")
    async def join(ctx: Context, data: Any) -> dict[str, Any]:
        room = _room(data)
        name = ctx.user or _name(data)
        await ctx.join(room)
        names[ctx.session] = name
        await hub.publish(room, "joined", {"name": name})
        return {"room": room, "members": len(await hub.presence(room))}

    @hub.on("say")
    async def say(ctx: Context, data: Any) -> None:
        room = _member_of(hub, ctx, data)
        text = data.get("text")
        if not isinstance(text, str) or not 0 < len(text) <= 2000:
            raise Reject(ErrorCode.BAD_ENVELOPE, "text must be 1-2000 characters")
        name = names.get(ctx.session, ctx.user or "guest")
        await hub.publish(room, "said", {"from": name, "text": text})

    @hub.on("who")
    async def who(ctx: Context, data: Any) -> dict[str, Any]:
        room = _member_of(hub, ctx, data)
        return {"room": room, "members": len(await hub.presence(room))}  # every node's

    @hub.on_close
    def gone(ctx: Context, code: int | None) -> None:
        names.pop(ctx.session, None)


def _member_of(hub: Hub, ctx: Context, data: Any) -> str:
    room = _room(data)
    if ctx.session not in hub.room_members(room):  # this session's node knows
        raise Reject(ErrorCode.FORBIDDEN, f"join {room!r} first")
    return room


def _room(data: Any) -> str:
    room = data.get("room") if isinstance(data, dict) else None
    if not isinstance(room, str) or not 0 < len(room) <= 64:
        raise Reject(ErrorCode.BAD_ENVELOPE, "data.room must be a room name")
    return room


def _name(data: Any) -> str:
    name = data.get("name", "guest") if isinstance(data, dict) else "guest"
    if not isinstance(name, str) or not 0 < len(name) <= 32:
        raise Reject(ErrorCode.BAD_ENVELOPE, "data.name must be 1-32 characters")
    return name


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
