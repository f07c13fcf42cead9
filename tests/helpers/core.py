"""Shared by the sans-I/O core test modules: a server core and envelope builders."""

from __future__ import annotations

from typing import Any

from warpsocket.core.ids import SequentialIds
from warpsocket.core.server import CoreOptions, ServerCore, Session
from warpsocket.core.store import MemoryStreamStore
from warpsocket.protocol import Envelope, MessageType

T0 = 1_764_300_000_000


def can_join(session: Session, room: str) -> bool:
    return not room.startswith("secret")


def can_publish(session: Session, room: str, envelope: Envelope) -> bool:
    return room != "readonly"


# Every session of make_server's cores gets this resume token.
TOKEN = "rt-secret"


def make_server(**options: Any) -> ServerCore:
    core_options = CoreOptions(node="n1", **options)
    store = MemoryStreamStore(core_options.history, SequentialIds("ep"))
    return ServerCore(
        store,
        core_options,
        SequentialIds("n1"),
        SequentialIds("sess"),
        can_join=can_join,
        can_publish=can_publish,
        new_resume_token=lambda: TOKEN,
    )


def hello(
    ident: str = "h1",
    session: str | None = None,
    streams: dict[str, dict[str, Any]] | None = None,
    rooms: list[str] | None = None,
    resume_token: str = "rt-secret",
) -> Envelope:
    data: dict[str, Any] = {"session": session, "streams": streams or {}, "rooms": rooms or []}
    if session is not None:
        data["resume_token"] = resume_token
    return Envelope(type=MessageType.HELLO, id=ident, timestamp=T0, data=data)


def event(ident: str, **fields: Any) -> Envelope:
    return Envelope(type=MessageType.EVENT, id=ident, timestamp=T0, **fields)
