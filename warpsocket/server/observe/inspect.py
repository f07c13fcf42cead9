# ruff: noqa: E501 - the page below is HTML and JavaScript, not Python
"""The live inspector at ``/inspect`` (docs/observability.md): off by default.

Behind a key (``--inspect-key-file``), compared in constant time, given in
the ``X-Inspect-Key`` header or once through the login form, which sets a
cookie holding a random session token (never the key, and never in a URL).
``GET /inspect`` is a plain HTML page that polls ``/inspect/state`` (JSON:
node and backend health, connections, rooms) and, for a chosen connection,
``/inspect/connection/<id>`` (its last envelopes, secrets masked and
payloads cut; recording starts when first asked for). Without the key:
401; with a wrong one: 403, and nothing else is told.
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections import OrderedDict
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request

from warpsocket.server.observe.slow import outbound_bytes

COOKIE = b"warpsocket_inspect"
# Inspector sessions (cookies) kept; the oldest goes first.
MAX_SESSIONS = 64
MIN_KEY_LENGTH = 16


def load_inspect_key(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            key = handle.read().strip()
    except OSError as exc:
        raise ValueError(f"--inspect-key-file: cannot read {path!r}: {exc.strerror}") from None
    if len(key) < MIN_KEY_LENGTH:
        raise ValueError(f"--inspect-key-file: the key needs at least {MIN_KEY_LENGTH} characters")
    return key


def snapshot(hub: Any) -> dict[str, Any]:
    """What the page shows, as JSON-ready data (reactor thread)."""
    core = hub.core
    connections = []
    for conn_id, connection in sorted(hub.port.connections.items()):
        state = core.connections.get(conn_id)
        session = state.session if state is not None else None
        handshake = connection.handshake
        connections.append(
            {
                "id": conn_id,
                "state": (
                    "closing"
                    if not connection.can_send
                    else "open"
                    if session is not None
                    else "handshake"
                ),
                "address": handshake.peer if handshake is not None else "",
                "user": state.user if state is not None else None,
                "session": session.id if session is not None else None,
                "rooms": sorted(session.rooms) if session is not None else [],
                "outbound_bytes": outbound_bytes(connection),
                "pending_acks": len(session.pending) if session is not None else 0,
            }
        )
    rooms = []
    for room, members in sorted(core.room_sessions.items()):
        position = hub.store.position(f"room:{room}")
        rooms.append(
            {
                "room": room,
                "members": sorted(members),
                "offset": position.offset,
                "epoch": position.epoch,
            }
        )
    return {
        "node": hub.options.core.node,
        "health": hub.health or "ok",
        "backend": {
            "kind": type(hub.backend).__name__,
            "clustered": hub.backend.clustered,
            "health": hub.backend.health or "ok",
        },
        "sessions": hub.session_count,
        "connections": connections,
        "rooms": rooms,
    }


class InspectResource(Resource):
    """``/inspect`` and its JSON endpoints (see the module docstring)."""

    def __init__(self, hub: Any, key: bytes) -> None:
        super().__init__()
        self.hub = hub
        self.key = key
        self._sessions: OrderedDict[bytes, None] = OrderedDict()

    def getChild(self, path: bytes, request: Request) -> Resource:
        return _Leaf(self, path)

    def render(self, request: Request) -> bytes:
        return _Leaf(self, b"").render(request)

    # ------------------------------------------------------------ the key

    def authorized(self, request: Request) -> int:
        """200 with a good key or cookie, 401 with neither, 403 with a wrong one."""
        given = request.getHeader(b"x-inspect-key")
        if given is not None:
            return 200 if hmac.compare_digest(given, self.key) else 403
        cookie = request.getCookie(COOKIE)
        if cookie is not None:
            known = any(hmac.compare_digest(cookie, token) for token in self._sessions)
            return 200 if known else 403
        return 401

    def login(self, request: Request) -> bool:
        given = (request.args or {}).get(b"key", [b""])[0]
        if not hmac.compare_digest(given.strip(), self.key):
            return False
        token = secrets.token_urlsafe(32).encode("ascii")
        self._sessions[token] = None
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        request.addCookie(
            COOKIE,
            token,
            path=b"/inspect",
            httpOnly=True,
            sameSite="strict",
            secure=request.isSecure(),
        )
        return True


class _Leaf(Resource):
    isLeaf = True

    def __init__(self, root: InspectResource, path: bytes) -> None:
        super().__init__()
        self.root = root
        self.path = path

    def render(self, request: Request) -> bytes:
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        root = self.root
        if self.path == b"login" and request.method == b"POST":
            if root.login(request):
                request.setResponseCode(303)
                request.setHeader(b"location", b"/inspect")
                return b""
            return self._page(request, 403, _LOGIN.replace("{error}", "Wrong key."))
        status = root.authorized(request)
        if self.path == b"":
            if status != 200:
                error = "Wrong key." if status == 403 else ""
                return self._page(request, status, _LOGIN.replace("{error}", error))
            return self._page(request, 200, _PAGE)
        if status != 200:
            request.setResponseCode(status)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"forbidden\n" if status == 403 else b"inspector key required\n"
        if self.path == b"state":
            return self._json(request, snapshot(root.hub))
        if self.path == b"connection" and request.postpath:
            return self._connection(request, request.postpath[0])
        request.setResponseCode(404)
        return b"not found\n"

    def _connection(self, request: Request, raw: bytes) -> bytes:
        tap = root_tap(self.root.hub)
        try:
            conn_id = int(raw)
        except ValueError:
            conn_id = -1
        if tap is None or conn_id not in self.root.hub.port.connections:
            request.setResponseCode(404)
            return self._json(request, {"error": "no such connection"})
        return self._json(request, {"id": conn_id, "envelopes": tap.watch(conn_id)})

    def _json(self, request: Request, value: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(value, ensure_ascii=False, default=repr).encode("utf-8")

    def _page(self, request: Request, status: int, html: str) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(
            b"content-security-policy",
            b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
            b"connect-src 'self'; form-action 'self'",
        )
        return html.encode("utf-8")


def root_tap(hub: Any) -> Any:
    observe = getattr(hub, "observe", None)
    return observe.tap if observe is not None else None


_LOGIN = """<!doctype html><html><head><meta charset="utf-8"><title>WarpSocket inspector</title>
<style>body{font:14px system-ui,sans-serif;margin:3em}</style></head><body>
<h1>WarpSocket inspector</h1><form method="post" action="/inspect/login">
<label>Key <input type="password" name="key" autocomplete="current-password"></label>
<button type="submit">Open</button></form><p id="error">{error}</p></body></html>
"""

_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>WarpSocket inspector</title>
<style>
body{font:13px system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.5em}
table{border-collapse:collapse;width:100%}th,td{border:1px solid #ccc;padding:3px 6px;text-align:left}
th{background:#f0f0f0}tr.chosen{background:#fff3c4}tr[data-id]{cursor:pointer}
.ok{color:#0a0}.bad{color:#c00}pre{background:#f7f7f7;padding:6px;white-space:pre-wrap;overflow-wrap:anywhere;margin:0 0 4px}
</style></head><body>
<h1>WarpSocket inspector <small id="node"></small></h1>
<p>Health: <b id="health"></b> &middot; backend <span id="backend"></span> &middot;
sessions <span id="sessions"></span></p>
<h2>Connections</h2><table id="connections"><thead><tr><th>id</th><th>state</th>
<th>address</th><th>user</th><th>session</th><th>rooms</th><th>outbound bytes</th>
<th>pending acks</th></tr></thead><tbody></tbody></table>
<h2>Rooms</h2><table id="rooms"><thead><tr><th>room</th><th>members</th><th>offset</th>
<th>epoch</th></tr></thead><tbody></tbody></table>
<h2>Envelopes <span id="chosen">(click a connection)</span></h2><div id="envelopes"></div>
<script>
"use strict";
let chosen = null;
function cell(row, text) { const td = document.createElement("td"); td.textContent = text; row.appendChild(td); }
function fill(id, rows) { const body = document.querySelector("#" + id + " tbody"); body.replaceChildren(...rows); }
async function poll() {
  const answer = await fetch("/inspect/state", {credentials: "same-origin"});
  if (!answer.ok) { document.getElementById("health").textContent = "HTTP " + answer.status; return; }
  const state = await answer.json();
  document.getElementById("node").textContent = state.node;
  const health = document.getElementById("health");
  health.textContent = state.health; health.className = state.health === "ok" ? "ok" : "bad";
  document.getElementById("backend").textContent = state.backend.kind + " (" + state.backend.health + ")";
  document.getElementById("sessions").textContent = state.sessions;
  fill("connections", state.connections.map(c => {
    const row = document.createElement("tr"); row.dataset.id = c.id;
    if (c.id === chosen) row.className = "chosen";
    for (const v of [c.id, c.state, c.address, c.user ?? "", c.session ?? "", c.rooms.join(", "),
                     c.outbound_bytes ?? "n/a", c.pending_acks]) cell(row, String(v));
    row.onclick = () => { chosen = c.id; poll(); };
    return row;
  }));
  fill("rooms", state.rooms.map(r => {
    const row = document.createElement("tr");
    for (const v of [r.room, r.members.join(", "), r.offset, r.epoch]) cell(row, String(v));
    return row;
  }));
  if (chosen !== null) {
    const got = await fetch("/inspect/connection/" + chosen, {credentials: "same-origin"});
    const box = document.getElementById("envelopes");
    document.getElementById("chosen").textContent = "of connection " + chosen;
    if (!got.ok) { box.textContent = "gone"; return; }
    const recent = (await got.json()).envelopes;
    box.replaceChildren(...recent.slice().reverse().map(e => {
      const pre = document.createElement("pre");
      pre.textContent = e.dir + " " + JSON.stringify(e.envelope);
      return pre;
    }));
  }
}
poll(); setInterval(poll, 1000);
</script></body></html>
"""

__all__ = ["COOKIE", "InspectResource", "load_inspect_key", "snapshot"]
