"""A tiny application for ``twistd warpsocket --app tests.example_app:setup``."""

from __future__ import annotations

from typing import Any

from warpsocket.server.context import Context
from warpsocket.server.hub import Hub

not_callable = 42


def add(ctx: Context, data: Any) -> int:
    return int(sum(data))


def setup(hub: Hub) -> None:
    """Register the handlers: ``add`` (RPC) and ``whoami``."""
    hub.on("add", add)
    hub.on("whoami", lambda ctx, data: ctx.session)
