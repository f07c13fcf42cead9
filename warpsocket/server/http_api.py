"""The HTTP server API under ``/api/`` (docs/http-api.md): publish, broadcast,
send, join, leave and disconnect from any backend, presence, history and node
info, with a bearer key; its OpenAPI document (openapi.py) at
``/api/openapi.json``. Calls on a session work on any node of a cluster
(api_sessions.py); ``Idempotency-Key`` records are shared there too.

Off unless keys are configured (``--api-key-file``). Every request is hostile
until validated: the key is compared in constant time, each key has its own
token bucket (``rate``/``burst``: 429 with ``Retry-After``), the body is bounded
while it arrives (``LimitedRequest``), the JSON is parsed strictly, every
field checked, and ``data`` must lie in the data model (protocol.md 2.1).
Errors answer with a JSON body naming a code of the one registry (codes.py).
"""

from __future__ import annotations

import hmac
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from warpsocket.backends.base import BackendUnavailableError
from warpsocket.backends.redis.api import SharedIdempotencyError
from warpsocket.core.server import QueueFullError, UnknownSessionError
from warpsocket.protocol.codes import ErrorCode
from warpsocket.protocol.datamodel import DataModelError, check_value
from warpsocket.protocol.envelope import MAX_NAME_LENGTH, Envelope
from warpsocket.server.api_history import DEFAULT_LIMIT, MAX_LIMIT, HistoryError, read_history
from warpsocket.server.api_sessions import RemoteError, SessionCalls
from warpsocket.server.hub import AckTimeoutError, Hub
from warpsocket.server.idempotency import (
    MAX_KEY_LENGTH,
    IdempotencyCache,
    IdempotencyError,
    cluster_parts,
)
from warpsocket.server.openapi import openapi_document
from warpsocket.server.security.ratelimit import TokenBucket

MIN_KEY_LENGTH = 16
MAX_ACK_TIMEOUT = 300.0  # seconds a request may wait for an acknowledgement
MAX_TTL = 86_400.0 * 365
MAX_CLOSE_REASON = 123  # bytes: what a WebSocket close frame carries


class ApiError(Exception):
    """A refusal: HTTP ``status``, a registry ``code``, and what was wrong."""

    def __init__(
        self,
        status: int,
        code: ErrorCode,
        message: str,
        path: str | None = None,
        *,
        stored: bool = False,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.stored = stored  # the message was stored all the same (an ack timeout)
        self.retry_after = retry_after  # seconds, for a 429
        self.status = status
        self.code = code
        self.message = message
        self.path = path

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "code": int(self.code),
            "name": self.code.wire_name,
            "message": self.message,
        }
        if self.path is not None:
            error["path"] = self.path
        return {"error": error}


@dataclass(frozen=True)
class Replay:
    """The remembered answer to a retried ``Idempotency-Key``."""

    status: int
    body: bytes


@dataclass(frozen=True)
class Ticket:
    """A first request with an ``Idempotency-Key``: its answer is kept."""

    route: bytes
    key: bytes


def load_api_keys(path: str) -> tuple[bytes, ...]:
    """The keys in ``path``: one per line (several allow a rotation); blank
    lines and ``#`` comments are skipped. Raises ValueError if none or weak."""
    try:
        with open(path, "rb") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise ValueError(f"--api-key-file: cannot read {path!r}: {exc.strerror}") from None
    keys = tuple(s for s in (line.strip() for line in lines) if s and not s.startswith(b"#"))
    if not keys:
        raise ValueError(f"--api-key-file: no key in {path!r}")
    for key in keys:
        if len(key) < MIN_KEY_LENGTH or not all(0x21 <= byte <= 0x7E for byte in key):
            raise ValueError(
                f"--api-key-file: keys need at least {MIN_KEY_LENGTH} printable ASCII "
                "characters without spaces"
            )
    return keys


class LimitedRequest(Request):
    """A Request that keeps at most ``max_body`` bytes of a body in memory
    (Twisted's own buffers any size, spilling to a temporary file). The rest
    is read and dropped; ``too_large`` tells the resource to answer 413."""

    max_body = 1_048_576
    too_large = False
    _received = 0

    def gotLength(self, length: int | None) -> None:
        self.too_large = length is not None and length > self.max_body
        self._buffer = BytesIO()
        self.content = self._buffer

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > self.max_body:
            self.too_large = True
        if not self.too_large:
            self._buffer.write(data)


def limited_request(max_body: int) -> type[LimitedRequest]:
    return type("LimitedRequest", (LimitedRequest,), {"max_body": max_body})


class ApiResource(Resource):
    """``/api/``: routes to the endpoints after the key and the method are checked."""

    isLeaf = True
    log = Logger()

    def __init__(
        self,
        hub: Hub,
        keys: Sequence[bytes],
        max_body: int,
        *,
        rate: float | None = None,
        burst: int | None = None,
    ) -> None:
        super().__init__()
        if not keys:
            raise ValueError("the HTTP API needs at least one key")
        if rate is not None and (rate <= 0 or (burst is not None and burst < 1)):
            raise ValueError("the API rate limit needs rate > 0 and burst >= 1")
        self.hub = hub
        self.keys = tuple(keys)
        self.max_body = max_body
        self.rate = rate
        self.burst = burst if burst is not None else max(1, math.ceil(rate or 1))
        self._buckets: dict[bytes, TokenBucket] = {}  # one per configured key
        self.posts: dict[bytes, Callable[[dict[str, Any]], Any]] = {
            b"publish": self._publish,
            b"broadcast": self._broadcast,
            b"send": self._send,
            b"join": self._join,
            b"leave": self._leave,
            b"disconnect": self._disconnect,
        }
        self.openapi = _dump(openapi_document())
        requests, shared = cluster_parts(hub)
        # Clustered over Redis: the records live there, for every node.
        self.idempotency: Any = shared if shared is not None else IdempotencyCache(hub.clock)
        self.sessions = SessionCalls(hub, requests)

    # ------------------------------------------------------------ plumbing

    def render(self, request: Request) -> Any:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        if request.postpath == [b"openapi.json"] and request.method == b"GET":
            return self.openapi  # describes the API, grants nothing: no key needed
        ticket: list[tuple[bytes, bytes]] = []

        def settle(status: int, body: bytes, stored: bool) -> bytes:
            if ticket:
                self.idempotency.finish(*ticket[0], status, body, stored)
            return body

        try:
            self._limit(request, self._authorize(request))
            begun = self._idempotent(request)
        except ApiError as error:
            return self._refuse(request, error)
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def write(body: bytes) -> None:
            if not gone:
                request.write(body)
                request.finish()

        def run(found: Replay | Ticket | None) -> Deferred[bytes] | bytes:
            if isinstance(found, Replay):
                request.setResponseCode(found.status)
                request.setHeader(b"idempotent-replayed", b"true")
                return found.body
            if found is not None:
                ticket.append((found.route, found.key))
            answer = self._route(request)
            # Remembered even when the caller has gone: its retry gets it.
            return answer.addCallback(lambda result: settle(200, _dump(result), True))

        def fail(failure: Failure) -> bytes:
            error = self._explain(failure)
            return settle(error.status, self._refuse(request, error), error.stored)

        answered: Deferred[Any] = begun.addCallback(run)
        answered.addErrback(fail).addCallback(write)
        return NOT_DONE_YET

    def _refuse(self, request: Request, error: ApiError) -> bytes:
        request.setResponseCode(error.status)
        if error.status == 401:
            request.setHeader(b"www-authenticate", b'Bearer realm="warpsocket"')
        if error.retry_after is not None:
            request.setHeader(b"retry-after", str(error.retry_after).encode())
        return _dump(error.body())

    def _limit(self, request: Request, key: bytes) -> None:
        """Each key's own token bucket: a busy caller cannot starve the others."""
        if self.rate is None:
            return
        now = self.hub.clock.seconds()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        if not bucket.take(now):
            wait = max(1, math.ceil((1 - bucket.tokens) / self.rate))
            raise ApiError(
                429,
                ErrorCode.RATE_LIMITED,
                f"more than {self.rate:g} requests/s (burst {self.burst}) with this key",
                retry_after=wait,
            )

    def _idempotent(self, request: Request) -> Deferred[Replay | Ticket | None]:
        """Fires with the answer to replay, the ticket of a first request
        (settled with its answer), or None without the header."""
        key = request.getHeader(b"idempotency-key")
        if key is None or request.method != b"POST":
            return succeed(None)
        if not IdempotencyCache.valid_key(key):
            raise ApiError(
                400,
                ErrorCode.BAD_ENVELOPE,
                f"Idempotency-Key: 1-{MAX_KEY_LENGTH} printable ASCII characters",
            )
        route = request.path
        content = request.content
        raw = b""
        if content is not None:
            raw = content.read()
            content.seek(0)

        def found(entry: Any) -> Replay | Ticket:
            if entry is None:
                return Ticket(route, key)
            return Replay(int(entry.status), bytes(entry.body))

        return maybeDeferred(self.idempotency.begin, route, key, raw).addCallback(found)

    def _authorize(self, request: Request) -> bytes:
        """The key the request presented, once it matched one."""
        header = request.getHeader(b"authorization")
        scheme, _, given = (header or b"").partition(b" ")
        candidate = given.strip()
        if scheme.lower() != b"bearer" or not candidate:
            raise ApiError(401, ErrorCode.UNAUTHORIZED, "send Authorization: Bearer <key>")
        # Compare against every key, in constant time each: neither the
        # timing nor the number of comparisons tells which bytes matched.
        matched: bytes | None = None
        for key in self.keys:
            if hmac.compare_digest(candidate, key):
                matched = key
        if matched is None:
            raise ApiError(401, ErrorCode.UNAUTHORIZED, "wrong API key")
        return matched

    def _route(self, request: Request) -> Deferred[dict[str, Any]]:
        segments = list(request.postpath or [])
        if len(segments) == 1 and segments[0] in self.posts:
            self._allow(request, b"POST")
            body = self._body(request)
            return maybeDeferred(self.posts[segments[0]], body)
        if len(segments) == 2 and segments[0] == b"presence" and segments[1]:
            self._allow(request, b"GET")
            room = _text(unquote_to_bytes(segments[1]), "room")
            return maybeDeferred(self._presence, room)
        if len(segments) == 2 and segments[0] == b"history" and segments[1]:
            self._allow(request, b"GET")
            stream = _text(unquote_to_bytes(segments[1]), "stream")
            after, limit, epoch = _history_query(request)
            return maybeDeferred(read_history, self.hub, stream, after, limit, epoch)
        if segments == [b"info"]:
            self._allow(request, b"GET")
            return maybeDeferred(self._info)
        raise ApiError(404, ErrorCode.UNKNOWN_TYPE, "no such endpoint (docs/http-api.md)")

    @staticmethod
    def _allow(request: Request, method: bytes) -> None:
        if request.method != method:
            request.setHeader(b"allow", method)
            raise ApiError(405, ErrorCode.UNKNOWN_TYPE, f"use {method.decode()}")

    def _body(self, request: Request) -> dict[str, Any]:
        if getattr(request, "too_large", False):
            raise ApiError(
                413, ErrorCode.MESSAGE_TOO_LARGE, f"the body exceeds {self.max_body} bytes"
            )
        raw = request.content.read() if request.content is not None else b""
        if len(raw) > self.max_body:  # a Request that does not bound bodies
            raise ApiError(
                413, ErrorCode.MESSAGE_TOO_LARGE, f"the body exceeds {self.max_body} bytes"
            )
        try:
            body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:
            # UnicodeDecodeError and JSONDecodeError are ValueErrors; so is an
            # integer with too many digits.
            raise ApiError(400, ErrorCode.BAD_FRAME, f"the body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, ErrorCode.BAD_ENVELOPE, "the body must be a JSON object")
        return body

    def _explain(self, failure: Failure) -> ApiError:
        """The refusal for a failed call into the hub."""
        error = failure.value
        if isinstance(error, ApiError):
            return error
        if isinstance(error, DataModelError):
            return ApiError(400, ErrorCode.BAD_ENVELOPE, str(error), path=error.path)
        if isinstance(error, HistoryError | RemoteError):
            return ApiError(error.status, error.code, error.message)
        if isinstance(error, IdempotencyError | SharedIdempotencyError):
            return ApiError(409, ErrorCode.BAD_STATE, error.why)
        if isinstance(error, UnknownSessionError):
            return ApiError(404, ErrorCode.BAD_STATE, f"no session {error.args[0]!r}")
        if isinstance(error, QueueFullError):
            return ApiError(429, ErrorCode.QUEUE_FULL, str(error))
        if isinstance(error, AckTimeoutError):
            status = 504 if error.code is ErrorCode.TIMEOUT else 503
            message = f"stored at offset {error.offset}: {error}"
            return ApiError(status, error.code, message, stored=True)
        if isinstance(error, BackendUnavailableError):
            return ApiError(503, ErrorCode.UNAVAILABLE, str(error))
        self.log.failure("HTTP API call failed", failure)
        return ApiError(500, ErrorCode.INTERNAL_ERROR, "internal error")

    # ------------------------------------------------------------ endpoints

    def _publish(self, body: dict[str, Any]) -> Deferred[dict[str, Any]]:
        fields = _fields(body, required=("room", "event"), optional=("data", "ttl"))
        room = _text(fields["room"], "room")
        event = _text(fields["event"], "event")
        data, ttl = self._data(fields), _ttl(fields)
        return self.hub.publish(room, event, data, ttl=ttl).addCallback(_stored)

    def _broadcast(self, body: dict[str, Any]) -> Deferred[dict[str, Any]]:
        fields = _fields(body, required=("event",), optional=("data", "ttl"))
        event = _text(fields["event"], "event")
        data, ttl = self._data(fields), _ttl(fields)
        return self.hub.broadcast(event, data, ttl=ttl).addCallback(_stored)

    def _send(self, body: dict[str, Any]) -> Deferred[dict[str, Any]]:
        fields = _fields(
            body, required=("event",), optional=("session", "user", "data", "ttl", "ack", "timeout")
        )
        event = _text(fields["event"], "event")
        data, ttl = self._data(fields), _ttl(fields)
        if ("session" in fields) == ("user" in fields):
            raise ApiError(400, ErrorCode.BAD_ENVELOPE, "give `session` or `user`, not both")
        ack = fields.get("ack", False)
        if not isinstance(ack, bool):
            raise ApiError(400, ErrorCode.BAD_ENVELOPE, "`ack` must be true or false")
        timeout = fields.get("timeout")
        if timeout is not None:
            if not ack:
                raise ApiError(400, ErrorCode.BAD_ENVELOPE, "`timeout` needs `ack: true`")
            timeout = _seconds(timeout, "timeout", MAX_ACK_TIMEOUT)
        if "user" in fields:
            if ack:
                raise ApiError(400, ErrorCode.BAD_ENVELOPE, "`ack` is for a `session` only")
            user = _text(fields["user"], "user")
            return self.hub.send_user(user, event, data, ttl=ttl).addCallback(
                lambda count: {"sessions": count}
            )
        session = _text(fields["session"], "session")
        outcome = "acked" if ack else "stored"

        def send(known: bool) -> Deferred[dict[str, Any]]:
            if not known:
                raise UnknownSessionError(session)
            sent = self.hub.send(session, event, data, ack=ack, ttl=ttl, timeout=timeout)
            return sent.addCallback(lambda _: {"delivered": outcome})

        return self.sessions.exists(session).addCallback(send)

    def _join(self, body: dict[str, Any]) -> Deferred[dict[str, Any]]:
        fields = _fields(body, required=("session", "room"), optional=())
        session, room = _text(fields["session"], "session"), _text(fields["room"], "room")
        return self.sessions.join(session, room)

    def _leave(self, body: dict[str, Any]) -> Deferred[dict[str, Any]]:
        fields = _fields(body, required=("session", "room"), optional=())
        session, room = _text(fields["session"], "session"), _text(fields["room"], "room")
        return self.sessions.leave(session, room)

    def _disconnect(self, body: dict[str, Any]) -> Deferred[dict[str, Any]]:
        fields = _fields(
            body, required=(), optional=("session", "user", "code", "reason", "forget")
        )
        if ("session" in fields) == ("user" in fields):
            raise ApiError(400, ErrorCode.BAD_ENVELOPE, "give `session` or `user`, not both")
        code = fields.get("code", int(ErrorCode.GOING_AWAY))
        valid_code = isinstance(code, int) and not isinstance(code, bool)
        if not valid_code or not (code == 1000 or 3000 <= code <= 4999):
            raise ApiError(
                400, ErrorCode.BAD_ENVELOPE, "`code` must be 1000 or a close code in 3000-4999"
            )
        reason = fields.get("reason", "")
        if not isinstance(reason, str) or len(reason.encode("utf-8", "replace")) > MAX_CLOSE_REASON:
            raise ApiError(
                400,
                ErrorCode.BAD_ENVELOPE,
                f"`reason` must be text of at most {MAX_CLOSE_REASON} bytes",
            )
        if reason:
            _text(reason, "reason")  # valid Unicode
        forget = fields.get("forget", False)
        if not isinstance(forget, bool):
            raise ApiError(400, ErrorCode.BAD_ENVELOPE, "`forget` must be true or false")
        if "user" in fields:
            user = _text(fields["user"], "user")
            return self.sessions.disconnect_user(user, code, reason, forget)
        session = _text(fields["session"], "session")
        return self.sessions.disconnect(session, code, reason, forget)

    def _presence(self, room: str) -> Deferred[dict[str, Any]]:
        def listed(sessions: set[str]) -> dict[str, Any]:
            return {"room": room, "count": len(sessions), "sessions": sorted(sessions)}

        return self.hub.presence(room).addCallback(listed)

    def _info(self) -> dict[str, Any]:
        hub = self.hub
        return {
            "node": hub.core.options.node,
            "health": hub.health or "ok",
            "connections": hub.connection_count,
            "sessions": hub.session_count,
            "rooms": len(hub.rooms()),
            "max_message_size": hub.core.options.max_message_size,
        }

    def _data(self, fields: dict[str, Any]) -> Any:
        data = fields.get("data")
        if data is not None:
            try:
                check_value(data, self.hub.core.options.data_limits)
            except DataModelError as exc:
                raise ApiError(400, ErrorCode.BAD_ENVELOPE, str(exc), path=exc.path) from None
        return data


def _fields(
    body: dict[str, Any], *, required: Sequence[str], optional: Sequence[str]
) -> dict[str, Any]:
    unknown = sorted(set(body) - set(required) - set(optional))
    if unknown:
        raise ApiError(400, ErrorCode.BAD_ENVELOPE, f"unknown field `{unknown[0]}`")
    for name in required:
        if name not in body:
            raise ApiError(400, ErrorCode.BAD_ENVELOPE, f"`{name}` is required")
    return body


def _text(value: Any, name: str) -> str:
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, ErrorCode.BAD_ENVELOPE, f"`{name}` is not UTF-8") from None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_LENGTH:
        raise ApiError(
            400, ErrorCode.BAD_ENVELOPE, f"`{name}` must be a string of 1-{MAX_NAME_LENGTH} chars"
        )
    try:
        value.encode("utf-8")  # a lone surrogate (a "\ud800" escape) cannot be sent on
    except UnicodeEncodeError:
        raise ApiError(400, ErrorCode.BAD_ENVELOPE, f"`{name}` is not valid Unicode") from None
    return value


def _seconds(value: Any, name: str, limit: float) -> float:
    number_type = isinstance(value, int | float) and not isinstance(value, bool)
    if not number_type or not math.isfinite(value) or not 0 < value <= limit:
        raise ApiError(
            400, ErrorCode.BAD_ENVELOPE, f"`{name}` must be a number of seconds in (0, {limit:g}]"
        )
    return float(value)


def _ttl(fields: dict[str, Any]) -> float | None:
    ttl = fields.get("ttl")
    return None if ttl is None else _seconds(ttl, "ttl", MAX_TTL)


def _stored(envelope: Envelope) -> dict[str, Any]:
    return {"id": envelope.id, "offset": envelope.offset, "epoch": envelope.epoch}


def _history_query(request: Request) -> tuple[int, int, str | None]:
    """``after`` (default 0), ``limit`` (default 100, at most 1000), ``epoch``."""
    args: dict[bytes, list[bytes]] = request.args or {}
    unknown = sorted(set(args) - {b"after", b"limit", b"epoch"})
    if unknown:
        raise ApiError(
            400,
            ErrorCode.BAD_ENVELOPE,
            f"unknown parameter `{unknown[0].decode('utf-8', 'replace')}`",
        )
    for name, values in args.items():
        if len(values) != 1:
            raise ApiError(400, ErrorCode.BAD_ENVELOPE, f"give `{name.decode()}` once")

    def number(name: bytes, default: int, low: int, high: int) -> int:
        raw = args.get(name, [b""])[0]
        if not raw:
            return default
        if not raw.isdigit() or len(raw) > 18 or not low <= int(raw) <= high:
            raise ApiError(
                400, ErrorCode.BAD_ENVELOPE, f"`{name.decode()}` must be an integer in {low}-{high}"
            )
        return int(raw)

    after = number(b"after", 0, 0, 2**53)
    limit = number(b"limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    epoch = None
    if b"epoch" in args:
        epoch = _text(args[b"epoch"][0], "epoch")
    return after, limit, epoch


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _dump(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
