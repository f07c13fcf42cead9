"""What the HTTP API (warpsocket/server/http_api.py) shares through Redis.

- ``NodeRequests``: a question from one node's API to every node (itself
  included) on one channel, each answering on the asker's own channel; the
  asker knows how many to wait for from what PUBLISH returns (the number of
  subscribers that got it), so "nobody holds that session" is answered as
  soon as every node said so, not after a timeout.
- ``SharedIdempotency``: ``Idempotency-Key`` records, claimed with
  ``SET NX`` so that a retry on any node is answered, not done again.

Every message on the channels is hostile until parsed.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from warpsocket.backends.base import BackendUnavailableError
from warpsocket.backends.redis.connection import RedisLink, reply_text
from warpsocket.core.ids import random_id

Answer = dict[str, Any]
RequestHandler = Callable[[Answer], "Deferred[Answer | None] | Answer | None"]


@dataclass
class _Waiting:
    done: Deferred[list[Answer]]
    timer: Any
    heard: int = 0
    expected: int | None = None  # known once PUBLISH answers
    answers: list[Answer] = field(default_factory=list)


class NodeRequests:
    """Ask every node; gather the answers of those that have one."""

    log = Logger()

    def __init__(self, connections: RedisLink, prefix: str, node: str, reactor: Any) -> None:
        self.connections = connections
        self.reactor = reactor
        self.channel = f"{prefix}api:requests"
        self.replies = f"{prefix}api:replies:{node}"
        self.handler: RequestHandler | None = None
        self._waiting: dict[str, _Waiting] = {}

    def request(self, body: Answer, timeout: float) -> Deferred[list[Answer]]:
        """Every answer that is not None, once all nodes answered or ``timeout`` passed."""
        cmd = self.connections.cmd
        if cmd is None:
            return fail(BackendUnavailableError("redis unavailable"))
        ident = random_id()
        done: Deferred[list[Answer]] = Deferred()
        timer = self.reactor.callLater(timeout, self._settle, ident)
        waiting = self._waiting[ident] = _Waiting(done, timer)
        message = json.dumps({"id": ident, "reply": self.replies, "body": body})
        published: Deferred[Any] = cmd.publish(self.channel, message)

        def counted(receivers: Any) -> None:
            waiting.expected = int(receivers)
            self._check(ident)

        def failed(failure: Failure) -> None:
            found = self._waiting.pop(ident, None)
            if found is not None:
                found.timer.cancel()
                found.done.errback(BackendUnavailableError(str(failure.value)))

        published.addCallbacks(counted, failed)
        return done

    def _check(self, ident: str) -> None:
        waiting = self._waiting.get(ident)
        expected = None if waiting is None else waiting.expected
        if waiting is not None and expected is not None and waiting.heard >= expected:
            self._settle(ident)

    def _settle(self, ident: str) -> None:
        waiting = self._waiting.pop(ident, None)
        if waiting is None:
            return
        if waiting.timer.active():
            waiting.timer.cancel()
        waiting.done.callback(waiting.answers)

    def on_request(self, message: str) -> None:
        try:
            raw = json.loads(message)
            ident, reply, body = raw["id"], raw["reply"], raw["body"]
            if not (isinstance(ident, str) and isinstance(reply, str) and isinstance(body, dict)):
                raise TypeError("bad field types")
        except (ValueError, TypeError, KeyError):
            self.log.warn("bad API request on {channel}", channel=self.channel)
            return
        handler = self.handler
        answered: Deferred[Any] = (
            maybeDeferred(handler, body) if handler is not None else succeed(None)
        )

        def send(answer: Any) -> None:
            cmd = self.connections.cmd
            if cmd is None:
                return  # the asker's timeout answers for us
            body = answer if isinstance(answer, dict) else None
            reply_to: Deferred[Any] = cmd.publish(reply, json.dumps({"id": ident, "answer": body}))
            reply_to.addErrback(lambda _: None)

        def failed(failure: Failure) -> None:
            self.log.failure("API request failed", failure)
            send({"error": [500, 4501, "internal error on another node"]})

        answered.addCallbacks(send, failed)

    def on_reply(self, message: str) -> None:
        try:
            raw = json.loads(message)
            ident, answer = raw["id"], raw.get("answer")
            if not isinstance(ident, str) or not (answer is None or isinstance(answer, dict)):
                raise TypeError("bad field types")
        except (ValueError, TypeError, KeyError):
            self.log.warn("bad API reply on {channel}", channel=self.replies)
            return
        waiting = self._waiting.get(ident)
        if waiting is None:
            return  # too late: its request was settled
        waiting.heard += 1
        if answer is not None:
            waiting.answers.append(answer)
        self._check(ident)


@dataclass
class SharedEntry:
    """What ``begin`` found: the first request's answer."""

    status: int
    body: bytes


class SharedIdempotencyError(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class SharedIdempotency:
    """``Idempotency-Key`` records in Redis, for every node of the cluster."""

    def __init__(
        self, connections: RedisLink, prefix: str, max_age: float, running_ttl: float
    ) -> None:
        self.connections = connections
        self.prefix = prefix
        self.max_age_ms = int(max_age * 1000)
        # A record whose request never finished (its node died) frees the key then.
        self.running_ttl_ms = int(running_ttl * 1000)

    def _key(self, route: bytes, key: bytes) -> str:
        return f"{self.prefix}idem:{hashlib.sha256(route + b' ' + key).hexdigest()}"

    def begin(self, route: bytes, key: bytes, body: bytes) -> Deferred[SharedEntry | None]:
        """None: this request is the first (it runs, then ``finish``); else
        the remembered answer. Fails with ``SharedIdempotencyError`` for
        another body or a request still running, ``BackendUnavailableError``
        without Redis."""
        cmd = self.connections.cmd
        if cmd is None:
            return fail(BackendUnavailableError("redis unavailable: cannot check Idempotency-Key"))
        fingerprint = hashlib.sha256(body).hexdigest()
        name = self._key(route, key)
        claimed: Deferred[Any] = cmd.execute_command(
            "SET", name, json.dumps({"f": fingerprint}), "NX", "PX", self.running_ttl_ms
        )

        def decide(reply: Any) -> Any:
            if reply is not None and reply_text(reply) == "OK":
                return None
            found: Deferred[Any] = cmd.get(name)
            return found.addCallback(lambda raw: _found(raw, fingerprint))

        def unavailable(failure: Failure) -> Failure:
            if failure.check(SharedIdempotencyError):
                return failure
            return Failure(BackendUnavailableError(f"redis: {failure.getErrorMessage()}"))

        result: Deferred[SharedEntry | None] = claimed.addCallback(decide).addErrback(unavailable)
        return result

    def finish(self, route: bytes, key: bytes, status: int, body: bytes, stored: bool) -> None:
        cmd = self.connections.cmd
        if cmd is None:
            return  # the running record expires: a retry then runs again
        name = self._key(route, key)
        if stored:
            raw = cmd.get(name)

            def keep(found: Any) -> Any:
                if found is None:
                    return None
                record = json.loads(reply_text(found))
                record |= {"s": status, "b": base64.b64encode(body).decode("ascii")}
                return cmd.execute_command(
                    "SET", name, json.dumps(record), "PX", self.max_age_ms, "XX"
                )

            raw.addCallback(keep).addErrback(lambda _: None)
        else:
            cmd.delete(name).addErrback(lambda _: None)


def _found(raw: Any, fingerprint: str) -> SharedEntry:
    if raw is None:
        raise SharedIdempotencyError("a request with this key just finished: retry")
    try:
        record = json.loads(reply_text(raw))
        same = record["f"] == fingerprint
        status, body = record.get("s"), record.get("b")
    except (ValueError, TypeError, KeyError):
        raise SharedIdempotencyError("the key's record is unreadable") from None
    if not same:
        raise SharedIdempotencyError("the key was used with another body")
    if not isinstance(status, int) or not isinstance(body, str):
        raise SharedIdempotencyError("a request with this key is still running")
    return SharedEntry(status, base64.b64decode(body))
