"""The HTTP API's calls on a session, wherever the session is held.

``join``, ``leave`` and ``disconnect`` act on the node that holds the
session: this one if it does, else (clustered) the question goes to every
node through ``NodeRequests`` (backends/redis/api.py) and the one holding
it acts and answers. Unknown everywhere: ``UnknownSessionError``.
``disconnect_user`` asks every node and adds up their counts.
"""

from __future__ import annotations

import secrets
from typing import Any

from twisted.internet.defer import Deferred, succeed

from warpsocket.core.server import UnknownSessionError
from warpsocket.protocol.codes import ErrorCode
from warpsocket.server.hub import Hub

REMOTE_TIMEOUT = 5.0  # seconds every node has to answer

Answer = dict[str, Any]


class RemoteError(Exception):
    """Another node refused or failed: its HTTP status, code and message."""

    def __init__(self, status: int, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class SessionCalls:
    def __init__(self, hub: Hub, requests: Any = None, timeout: float = REMOTE_TIMEOUT) -> None:
        self.hub = hub
        self.requests = requests  # a NodeRequests when clustered over Redis
        self.timeout = timeout
        if requests is not None:
            requests.handler = self._asked

    # ------------------------------------------------------------ the calls

    def join(self, session: str, room: str) -> Deferred[Answer]:
        return self._call({"op": "join", "session": session, "room": room})

    def leave(self, session: str, room: str) -> Deferred[Answer]:
        return self._call({"op": "leave", "session": session, "room": room})

    def disconnect(self, session: str, code: int, reason: str, forget: bool) -> Deferred[Answer]:
        args = {"code": code, "reason": reason, "forget": forget}
        return self._call({"op": "disconnect", "session": session, **args})

    def disconnect_user(self, user: str, code: int, reason: str, forget: bool) -> Deferred[Answer]:
        ask = {"op": "disconnect_user", "user": user, "code": code, "reason": reason}
        ask["forget"] = forget
        if self.requests is None:
            counted = self._local(ask)
            assert isinstance(counted, dict)
            return succeed(counted)

        def total(answers: list[Answer]) -> Answer:
            return {"sessions": sum(int(a.get("result", {}).get("sessions", 0)) for a in answers)}

        asked: Deferred[list[Answer]] = self.requests.request(ask, self.timeout)
        return asked.addCallback(total)

    def exists(self, session: str) -> Deferred[bool]:
        """Held here, or recorded in the cluster (so a send reaches it on resume)."""
        if session in self.hub.core.sessions:
            return succeed(True)
        if not self.hub.backend.clustered:
            return succeed(False)
        return self.hub.backend.load_session(session).addCallback(lambda r: r is not None)

    # ------------------------------------------------------------ plumbing

    def _call(self, ask: Answer) -> Deferred[Answer]:
        local = self._local(ask)
        if local is not None:
            return local if isinstance(local, Deferred) else succeed(local)
        if self.requests is None:
            raise UnknownSessionError(ask["session"])
        asked: Deferred[list[Answer]] = self.requests.request(ask, self.timeout)
        return asked.addCallback(_first, ask["session"])

    def _asked(self, ask: Answer) -> Deferred[Answer | None] | Answer | None:
        """Another node's question (or our own, heard back): act if we hold it."""
        try:
            result = self._local(ask)
        except (TypeError, ValueError, KeyError):
            return None  # malformed: not ours to answer
        if isinstance(result, Deferred):
            return result.addCallbacks(lambda r: {"result": r}, _as_error)
        return None if result is None else {"result": result}

    def _local(self, ask: Answer) -> Deferred[Answer] | Answer | None:
        """Do it here if this node holds the session; None if it does not."""
        hub, core = self.hub, self.hub.core
        op = ask["op"]
        if op == "disconnect_user":
            user = _string(ask["user"])
            held = sorted(core.sessions_of_user(user))
            for session in held:
                self._disconnect(session, ask)
            return {"sessions": len(held)}
        session = _string(ask["session"])
        if session not in core.sessions:
            return None
        if op == "join":
            room = _string(ask["room"])
            return hub.join(session, room).addCallback(lambda _: {"joined": room})
        if op == "leave":
            room = _string(ask["room"])
            hub.leave(session, room)
            return {"left": room}
        if op == "disconnect":
            return self._disconnect(session, ask)
        raise ValueError(f"unknown op {op!r}")

    def _disconnect(self, session_id: str, ask: Answer) -> Answer:
        hub = self.hub
        session = hub.core.sessions[session_id]
        code, reason, forget = ask["code"], ask["reason"], ask["forget"]
        if not (isinstance(code, int) and isinstance(reason, str) and isinstance(forget, bool)):
            raise TypeError("code, reason and forget")
        if forget:
            # No resume token matches any more: the client's next hello
            # starts a new session (``recovered: false``), here or elsewhere.
            session.resume_hash = _unmatchable()
            hub._cluster.session_changed(session_id)
        connection = None if session.conn is None else hub._connections.get(session.conn)
        if connection is not None:
            connection.close(code, reason or "disconnected")
        return {"session": session_id, "connected": connection is not None, "forgotten": forget}


def _unmatchable() -> str:
    # Not a SHA-256 hex digest: compare_digest never matches it.
    return "forgotten:" + secrets.token_hex(8)


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _first(answers: list[Answer], session: str) -> Answer:
    for answer in answers:
        error = answer.get("error")
        if isinstance(error, list) and len(error) == 3:
            status, code, message = error
            try:
                registry = ErrorCode(code)
            except ValueError:
                registry = ErrorCode.INTERNAL_ERROR
            raise RemoteError(int(status), registry, str(message))
        result = answer.get("result")
        if isinstance(result, dict):
            return result
    raise UnknownSessionError(session)


def _as_error(failure: Any) -> Answer:
    from warpsocket.backends.base import BackendUnavailableError

    if failure.check(BackendUnavailableError):
        return {"error": [503, int(ErrorCode.UNAVAILABLE), str(failure.value)]}
    return {"error": [500, int(ErrorCode.INTERNAL_ERROR), "internal error"]}


__all__ = ["RemoteError", "SessionCalls"]
