"""The OpenAPI 3.1 document of the HTTP server API, served at ``/api/openapi.json``.

Kept next to ``http_api.py`` by hand; ``tests/test_http_api.py`` checks that
it names exactly the routes the resource serves, with their methods.
"""

from __future__ import annotations

from typing import Any

from warpsocket.protocol.envelope import MAX_NAME_LENGTH

_NAME = {"type": "string", "minLength": 1, "maxLength": MAX_NAME_LENGTH}
_SECONDS = {"type": "number", "exclusiveMinimum": 0}
_DATA = {"description": "Any JSON value inside the data model (protocol.md 2.1)."}
_IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "A retry with the same key and body gets the first answer (docs/http-api.md).",
    "schema": {"type": "string", "minLength": 1, "maxLength": 128},
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _errors(*statuses: int) -> dict[str, Any]:
    error = {"content": {"application/json": {"schema": _ref("Error")}}}
    answers: dict[str, Any] = {
        "400": {"description": "Bad JSON, fields or data (`bad_frame`, `bad_envelope`).", **error},
        "401": {"description": "No or a wrong key (`unauthorized`).", **error},
        "413": {"description": "Body too large (`message_too_large`).", **error},
        "429": {
            "description": "Over the key's rate limit (`rate_limited`, 4200; wait Retry-After "
            "seconds), or a session's queue is full (`queue_full`).",
            "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}},
            **error,
        },
    }
    for status in statuses:
        answers[str(status)] = {"description": "See docs/http-api.md, Errors.", **error}
    answers["409"] = {"description": "Idempotency-Key reused (`bad_state`).", **error}
    return answers


def _post(summary: str, body: str, answer: str, *statuses: int) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "parameters": [_IDEMPOTENCY],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref(body)}},
            },
            "responses": {
                "200": {
                    "description": "Done.",
                    "content": {"application/json": {"schema": _ref(answer)}},
                },
                **_errors(503, *statuses),
            },
        }
    }


def _get(
    summary: str, answer: str, parameters: list[dict[str, Any]], *statuses: int
) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "parameters": parameters,
            "responses": {
                "200": {
                    "description": "Done.",
                    "content": {"application/json": {"schema": _ref(answer)}},
                },
                **_errors(*statuses),
            },
        }
    }


def _query(name: str, description: str, **bounds: int) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "integer", **bounds},
    }


def _object(required: list[str], **properties: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": False,
    }


def openapi_document() -> dict[str, Any]:
    session_room = _object(["session", "room"], session=_NAME, room=_NAME)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "WarpSocket HTTP server API",
            "version": "1",
            "description": "Publish, broadcast and send to WebSocket clients, manage "
            "their sessions, read stream history (docs/http-api.md). Errors carry a code "
            "of the WarpSocket registry.",
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/publish": _post("Publish into a room.", "Publish", "Stored"),
            "/api/broadcast": _post("Publish to every connection.", "Broadcast", "Stored"),
            "/api/send": _post(
                "Send to a session (optionally acknowledged) or to a user.",
                "Send",
                "Sent",
                404,
                429,
                504,
            ),
            "/api/join": _post("Put a session in a room.", "SessionRoom", "Joined", 404, 429),
            "/api/leave": _post("Take a session out of a room.", "SessionRoom", "Left", 404),
            "/api/presence/{room}": _get(
                "Sessions in a room, on every node.",
                "Presence",
                [{"name": "room", "in": "path", "required": True, "schema": _NAME}],
            ),
            "/api/history/{stream}": _get(
                "A stream's kept events after an offset (410 `stream_gap` when gone).",
                "History",
                [
                    {
                        "name": "stream",
                        "in": "path",
                        "required": True,
                        "description": "room:<name>, broadcast or direct:<session>",
                        "schema": {"type": "string"},
                    },
                    _query("after", "Events after this offset (default 0).", minimum=0),
                    _query("limit", "At most this many (default 100).", minimum=1, maximum=1000),
                    {
                        "name": "epoch",
                        "in": "query",
                        "required": False,
                        "description": "The epoch `after` belongs to: another one is 410.",
                        "schema": {"type": "string"},
                    },
                ],
                410,
                503,
            ),
            "/api/disconnect": _post(
                "Close a session's (or a user's) connections; `forget` ends resumption.",
                "Disconnect",
                "Disconnected",
                404,
            ),
            "/api/info": _get("This node's health and counts.", "Info", []),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Publish": _object(
                    ["room", "event"], room=_NAME, event=_NAME, data=_DATA, ttl=_SECONDS
                ),
                "Broadcast": _object(["event"], event=_NAME, data=_DATA, ttl=_SECONDS),
                "Send": _object(
                    ["event"],
                    event=_NAME,
                    session=_NAME,
                    user=_NAME,
                    data=_DATA,
                    ttl=_SECONDS,
                    ack={"type": "boolean"},
                    timeout={**_SECONDS, "maximum": 300},
                ),
                "SessionRoom": session_room,
                "Stored": _object(
                    ["id", "offset", "epoch"],
                    id={"type": "string"},
                    offset={"type": "integer", "minimum": 1},
                    epoch={"type": "string"},
                ),
                "Sent": {
                    "oneOf": [
                        _object(["delivered"], delivered={"enum": ["stored", "acked"]}),
                        _object(["sessions"], sessions={"type": "integer", "minimum": 0}),
                    ]
                },
                "Disconnect": _object(
                    [],
                    session=_NAME,
                    user=_NAME,
                    code={
                        "type": "integer",
                        "description": "1000 or 3000-4999 (default 4500 going_away)",
                    },
                    reason={"type": "string", "description": "At most 123 bytes of UTF-8."},
                    forget={"type": "boolean"},
                ),
                "Disconnected": {
                    "oneOf": [
                        _object(
                            ["session", "connected", "forgotten"],
                            session=_NAME,
                            connected={"type": "boolean"},
                            forgotten={"type": "boolean"},
                        ),
                        _object(["sessions"], sessions={"type": "integer", "minimum": 0}),
                    ]
                },
                "History": _object(
                    ["stream", "epoch", "last", "events", "more"],
                    stream={"type": "string"},
                    epoch={"type": "string"},
                    last={"type": "integer", "minimum": 0},
                    more={"type": "boolean"},
                    events={"type": "array", "items": _ref("HistoryEvent")},
                ),
                "HistoryEvent": _object(
                    ["offset", "id", "timestamp"],
                    offset={"type": "integer", "minimum": 1},
                    id={"type": "string"},
                    timestamp={"type": "integer"},
                    event=_NAME,
                    data=_DATA,
                    ttl=_SECONDS,
                    ack={"type": "boolean"},
                    placeholder={
                        "type": "string",
                        "description": "Instead of event and data: `expired` (or another "
                        "code name) for a message kept as its offset only.",
                    },
                    code={"type": "integer"},
                ),
                "Joined": _object(["joined"], joined=_NAME),
                "Left": _object(["left"], left=_NAME),
                "Presence": _object(
                    ["room", "count", "sessions"],
                    room=_NAME,
                    count={"type": "integer", "minimum": 0},
                    sessions={"type": "array", "items": {"type": "string"}},
                ),
                "Info": _object(
                    ["node", "health", "connections", "sessions", "rooms", "max_message_size"],
                    node={"type": "string"},
                    health={"type": "string"},
                    connections={"type": "integer"},
                    sessions={"type": "integer"},
                    rooms={"type": "integer"},
                    max_message_size={"type": "integer"},
                ),
                "Error": _object(
                    ["error"],
                    error=_object(
                        ["code", "name", "message"],
                        code={"type": "integer"},
                        name={"type": "string"},
                        message={"type": "string"},
                        path={"type": "string"},
                    ),
                ),
            },
        },
    }
