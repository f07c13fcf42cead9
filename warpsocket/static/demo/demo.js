// The live demo (`twistd warpsocket --demo`): a chat with rooms on the
// client bundle the server serves, and an indicator of what the client is
// doing, so that a visitor sees a recovery happen. Chat lines are room
// publishes with an acknowledgement (`--demo` opens the rooms); everything
// from the network is shown with textContent, never parsed as HTML.
import { WarpSocketClient, browserLifecycle } from "/warpsocket.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const wsPath = /^\/[\w\-/.]*$/.test(params.get("ws") ?? "") ? params.get("ws") : "/ws";
const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${wsPath}`;

// "Go offline" without touching the machine: the page's own online/offline
// events, plus a switch that the client sees exactly as it sees the browser's.
const browser = browserLifecycle();
const lifecycleListeners = new Set();
let simulatedOffline = false;
const lifecycle = {
  isOnline: () => !simulatedOffline && (browser?.isOnline() ?? true),
  listen(listener) {
    lifecycleListeners.add(listener);
    const stop = browser?.listen(listener);
    return () => {
      lifecycleListeners.delete(listener);
      stop?.();
    };
  },
};

const client = new WarpSocketClient(url, {
  debug: true,
  lifecycle,
  backoff: { initial: 1500, max: 10000, jitter: 0.3 },
  livenessTimeout: 2000,
});

// ------------------------------------------------------------ chat

const me = sessionStorage.getItem("warpsocket-demo-name") ?? `guest-${Math.floor(1000 + Math.random() * 9000)}`;
sessionStorage.setItem("warpsocket-demo-name", me);
$("name").value = me;

const rooms = new Map(); // room -> { lines: Element[], unread }
const mine = new Map(); // nonce -> line element, until it comes back on the room's stream
let current = null;

function line(className, parts) {
  const item = document.createElement("li");
  item.className = className;
  for (const [cls, text] of parts) {
    const span = document.createElement("span");
    span.className = cls;
    span.textContent = text;
    item.append(span);
  }
  return item;
}

function addLine(room, item) {
  const entry = rooms.get(room);
  if (entry === undefined) return;
  entry.lines.push(item);
  if (entry.lines.length > 300) entry.lines.shift().remove();
  if (room === current) {
    $("log").append(item);
    item.scrollIntoView({ block: "end" });
  } else {
    entry.unread++;
    renderRooms();
  }
}

/** Move a line to its place in the room's stream: by offset, before lines still pending. */
function place(room, item, offset) {
  const entry = rooms.get(room);
  if (entry === undefined) return;
  item.dataset.offset = String(offset);
  item.querySelector(".status").textContent = `#${offset}`;
  const at = entry.lines.indexOf(item);
  if (at >= 0) entry.lines.splice(at, 1);
  const next = entry.lines.findIndex((other) => other.classList.contains("pending") || Number(other.dataset.offset) > offset);
  if (next < 0) {
    entry.lines.push(item);
    if (room === current) $("log").append(item);
  } else {
    if (room === current) entry.lines[next].before(item);
    entry.lines.splice(next, 0, item);
  }
}

function received(message) {
  const data = message.data;
  if (message.event !== "said" || typeof data !== "object" || data === null) return;
  const from = typeof data.from === "string" ? data.from.slice(0, 32) : "?";
  const text = typeof data.text === "string" ? data.text.slice(0, 500) : "";
  const nonce = typeof data.nonce === "string" ? data.nonce : "";
  const pending = mine.get(nonce);
  if (pending !== undefined) {
    mine.delete(nonce);
    pending.classList.remove("pending");
    place(message.room, pending, message.offset);
    return;
  }
  const item = line("", [["from", from], ["text", text], ["status", ""]]);
  addLine(message.room, item);
  place(message.room, item, message.offset);
}

async function join(room) {
  if (!rooms.has(room)) {
    rooms.set(room, { lines: [], unread: 0 });
    show(room);
    try {
      await client.subscribe(room, received);
      addLine(room, line("note", [["text", `joined ${room}`]]));
    } catch (error) {
      addLine(room, line("note", [["text", `cannot join ${room}: ${error.message}`]]));
    }
  } else {
    show(room);
  }
}

function show(room) {
  current = room;
  const entry = rooms.get(room);
  entry.unread = 0;
  $("log").replaceChildren(...entry.lines);
  renderRooms();
}

function renderRooms() {
  $("rooms").replaceChildren(
    ...[...rooms].map(([room, entry]) => {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = `# ${room}`;
      button.setAttribute("aria-current", String(room === current));
      if (entry.unread > 0) button.append(Object.assign(document.createElement("span"), { className: "count", textContent: entry.unread }));
      button.addEventListener("click", () => show(room));
      return button;
    }),
  );
}

$("say").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("text").value.trim().slice(0, 500);
  const from = $("name").value.trim().slice(0, 32) || me;
  if (text === "" || current === null) return;
  $("text").value = "";
  const room = current;
  const nonce = crypto.randomUUID();
  const item = line("mine pending", [["from", from], ["text", text], ["status", client.state === "open" ? "sending" : "queued"]]);
  mine.set(nonce, item);
  addLine(room, item);
  client.publish(room, "said", { from, text, nonce }, { ack: true }).then(
    () => {
      if (mine.has(nonce)) item.querySelector(".status").textContent = "acked";
    },
    (error) => {
      mine.delete(nonce);
      item.querySelector(".status").textContent = `failed: ${error.message}`;
    },
  );
});

$("join").addEventListener("submit", (event) => {
  event.preventDefault();
  const room = $("room").value.trim().toLowerCase().replace(/[^a-z0-9_-]/g, "").slice(0, 32);
  $("room").value = "";
  if (room !== "") void join(room);
});

// ------------------------------------------------------------ breaking it

$("cut").addEventListener("click", () => {
  note("connection cut (dropConnection)");
  client.dropConnection();
});

function setOffline(offline) {
  simulatedOffline = offline;
  $("offline").setAttribute("aria-pressed", String(offline));
  $("offline").textContent = offline ? "Go online" : "Go offline";
  note(offline ? "network off (simulated)" : "network back (simulated)");
  for (const listener of [...lifecycleListeners]) listener(offline ? "offline" : "online");
  // A real outage also kills the socket; the client then waits for the network.
  if (offline) client.dropConnection();
}
$("offline").addEventListener("click", () => setOffline(!simulatedOffline));

// ------------------------------------------------------------ the indicator

let dropped = false; // lost an open connection, not yet back
let lostStreams = [];
let recovery = null; // { recovered, detail } for the current connection

client.onClose((code) => {
  if (client.state === "open" || !dropped) {
    dropped = true;
    lostStreams = [];
  }
  recovery = null;
  note(`closed ${code ?? "-"}`);
});
client.onLost((stream, reason) => {
  lostStreams.push(stream);
  note(`missed messages on ${stream} (${reason})`);
  const room = stream.startsWith("room:") ? stream.slice(5) : stream;
  addLine(room, line("note", [["text", `some messages in ${room} could not be replayed (${reason})`]]));
});
client.onOpen((info) => {
  if (dropped) {
    const ms = client.stats.lastReconnectMs;
    const took = ms === null ? "" : `after ${(ms / 1000).toFixed(1)} s`;
    if (info.resumed && lostStreams.length === 0) recovery = { recovered: true, detail: `resumed ${took}, nothing lost` };
    else if (info.resumed) recovery = { recovered: false, detail: `resumed ${took}; missed messages in ${lostStreams.join(", ")}` };
    else recovery = { recovered: false, detail: `new session ${took}: the old one expired` };
    note(recovery.recovered ? "recovered" : "not recovered");
  }
  dropped = false;
  client.ping(); // the round trip shown on the right
});
client.onState((state) => note(state));

const LABELS = {
  connecting: "Connecting",
  open: "Open",
  reconnecting: "Reconnecting",
  offline: "Offline",
  recovered: "Recovered",
  "not-recovered": "Not recovered",
  closed: "Closed",
  disconnected: "Disconnected",
};

function indicator() {
  let view = client.state;
  let detail = "";
  if (view === "reconnecting" && client.offline) {
    view = "offline";
    detail = "waiting for the network";
  } else if (view === "reconnecting") {
    const at = client.nextAttemptAt;
    detail = at === null ? "" : `next attempt in ${Math.max(0, (at - Date.now()) / 1000).toFixed(1)} s`;
  } else if (view === "connecting" && dropped) {
    detail = `attempt ${client.stats.attempts}`;
  } else if (view === "open" && recovery !== null) {
    view = recovery.recovered ? "recovered" : "not-recovered";
    detail = recovery.detail;
  } else if (view === "open") {
    detail = `session ${client.session?.slice(0, 8) ?? ""}`;
  }
  const element = $("indicator");
  if (element.dataset.state !== view) element.dataset.state = view;
  $("state-label").textContent = LABELS[view] ?? view;
  $("state-detail").textContent = detail;
}

function stats() {
  const status = client.stats;
  $("session").textContent = client.session === null ? "-" : `${client.session.slice(0, 12)}…`;
  $("attempts").textContent = String(status.attempts);
  $("reconnects").textContent = String(status.reconnects);
  $("recovery").textContent = status.lastReconnectMs === null ? "-" : `${status.lastReconnectMs} ms`;
  $("queued").textContent = `${client.queueLength} / ${client.core.inflightCount}`;
  $("rtt").textContent = status.rttMs === null ? "-" : `${status.rttMs.toFixed(1)} ms`;
}

function note(text) {
  const item = document.createElement("li");
  const time = document.createElement("time");
  time.textContent = new Date().toISOString().slice(11, 23);
  item.append(time, document.createTextNode(text));
  $("timeline").prepend(item);
  while ($("timeline").children.length > 60) $("timeline").lastChild.remove();
}

setInterval(() => {
  indicator();
  stats();
}, 100);
indicator();

window.demo = { client, join, setOffline }; // for the console and the tests

void join("lobby"); // confirmed once connected
client.connect().catch((error) => note(`cannot connect: ${error.message}`));
