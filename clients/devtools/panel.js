// The "WarpSocket" panel: what the inspected page's debug clients report
// (clients/js/src/debug.ts), through hook.js -> relay.js -> background.js.
// Everything from the page is shown with textContent: the page is not trusted.
const MAX_ENVELOPES = 500;
const MAX_STATES = 200;
const params = new URLSearchParams(location.search);
// In DevTools, the inspected tab; opened as a page (tests), ?tabId=N.
const tabId = globalThis.chrome?.devtools?.inspectedWindow?.tabId ?? Number(params.get("tabId"));

const model = { clients: new Map(), selected: null, paused: false, page: "waiting", received: 0 };
globalThis.panelModel = model; // for the end-to-end test and the curious

const $ = (id) => document.getElementById(id);
const time = (ms) => new Date(ms).toISOString().slice(11, 23);

function client(id, url = "", createdAt = Date.now()) {
  let found = model.clients.get(id);
  if (found === undefined) {
    found = { id, url, createdAt, states: [], envelopes: [], status: null };
    model.clients.set(id, found);
    if (model.selected === null) model.selected = id;
  }
  return found;
}

function bounded(list, max) {
  if (list.length > max) list.splice(0, list.length - max);
}

function receive(message) {
  model.received++;
  switch (message?.kind) {
    case "snapshot":
      model.clients.clear();
      model.selected = null;
      for (const record of message.clients ?? []) {
        const target = client(record.id, record.url, record.createdAt);
        target.states = [...(record.states ?? [])];
        target.envelopes = [...(record.envelopes ?? [])];
        target.status = record.status ?? null;
      }
      break;
    case "event": {
      if (model.paused) return;
      const event = message.event ?? {};
      const target = client(event.client, event.url, event.at);
      if (event.type === "state") {
        target.states.push({ at: event.at, state: event.state, previous: event.previous, detail: event.detail });
        bounded(target.states, MAX_STATES);
      } else if (event.type === "envelope") {
        target.envelopes.push({ at: event.at, direction: event.direction, envelope: event.envelope });
        bounded(target.envelopes, MAX_ENVELOPES);
      } else if (event.type === "status") {
        target.status = event.status;
      }
      break;
    }
    case "page-found":
      model.page = "connected";
      break;
    case "page-gone":
      model.page = "page gone (navigated or closed)";
      break;
    default:
      return;
  }
  schedule();
}

let port = null;
function connect() {
  if (!Number.isInteger(tabId)) {
    model.page = "no tab to inspect";
    schedule();
    return;
  }
  port = chrome.runtime.connect({ name: "panel" });
  port.onMessage.addListener(receive);
  port.onDisconnect.addListener(() => {
    port = null;
    setTimeout(connect, 500); // the service worker restarted
  });
  port.postMessage({ kind: "init", tabId });
}

// ------------------------------------------------------------ rendering

let pending = null;
function schedule() {
  if (pending === null) pending = setTimeout(render, 50);
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text === undefined || text === null ? "" : String(text);
  if (className) td.className = className;
  return td;
}

function fill(table, rows, build) {
  const body = table.tBodies[0];
  body.replaceChildren();
  for (const item of rows) build(body.insertRow(), item);
}

function render() {
  pending = null;
  $("page").textContent = `tab ${Number.isInteger(tabId) ? tabId : "?"}: ${model.page}`;
  const clients = [...model.clients.values()];
  $("empty").hidden = clients.length > 0;
  $("clients").replaceChildren(
    ...clients.map((c) => {
      const li = document.createElement("li");
      li.dataset.client = String(c.id);
      li.setAttribute("aria-selected", String(c.id === model.selected));
      const state = c.status?.state ?? c.states.at(-1)?.state ?? "?";
      const badge = Object.assign(document.createElement("span"), { className: `state state-${state}`, textContent: state });
      li.append(`#${c.id} `, badge, document.createElement("br"), c.url);
      li.addEventListener("click", () => {
        model.selected = c.id;
        schedule();
      });
      return li;
    }),
  );
  const selected = model.clients.get(model.selected);
  $("detail").hidden = selected === undefined;
  if (selected === undefined) return;

  const status = selected.status;
  const facts = status === null ? [["state", selected.states.at(-1)?.state ?? "?"]] : [
    ["state", status.state + (status.offline ? " (offline)" : "")],
    ["session", status.session ?? "-"],
    ["rooms", status.rooms.join(", ") || "-"],
    ["next attempt", status.nextAttemptAt === null ? "-" : time(status.nextAttemptAt)],
    ["unacked in", status.unackedIn],
    ["attempts / reconnects", `${status.stats.attempts} / ${status.stats.reconnects}`],
    ["messages in / out", `${status.stats.messagesIn} / ${status.stats.messagesOut}`],
    ["rtt", status.stats.rttMs === null ? "-" : `${Number(status.stats.rttMs).toFixed(1)} ms`],
  ];
  $("status").replaceChildren(
    ...facts.flatMap(([name, value]) => [
      Object.assign(document.createElement("dt"), { textContent: name }),
      Object.assign(document.createElement("dd"), { textContent: String(value) }),
    ]),
  );
  fill($("states"), [...selected.states].reverse(), (row, s) => {
    cell(row, time(s.at));
    cell(row, s.state, `state state-${s.state}`);
    cell(row, s.previous);
    cell(row, s.detail);
  });
  fill($("streams"), Object.entries(status?.streams ?? {}), (row, [name, p]) => {
    row.dataset.stream = name;
    cell(row, name);
    cell(row, p.offset);
    cell(row, p.epoch);
  });
  const held = [...(status?.pending ?? []).map((p) => ["pending", p]), ...(status?.queued ?? []).map((p) => ["queued", p])];
  fill($("pending"), held, (row, [where, p]) => {
    row.dataset.where = where;
    cell(row, where);
    cell(row, p.id);
    cell(row, p.type);
    cell(row, p.event);
    cell(row, p.room);
    cell(row, p.attempts);
  });

  const filter = $("filter").value.trim().toLowerCase();
  const showBeats = $("heartbeats").checked;
  const shown = selected.envelopes.filter(({ envelope }) => {
    if (!showBeats && envelope.type === "heartbeat") return false;
    return filter === "" || JSON.stringify(envelope).toLowerCase().includes(filter);
  });
  $("count").textContent = `${shown.length} of ${selected.envelopes.length}`;
  fill($("envelopes"), shown.slice(-300).reverse(), (row, { at, direction, envelope }) => {
    row.className = direction;
    row.dataset.type = envelope.type;
    cell(row, time(at));
    cell(row, direction === "in" ? "\u2193 in" : "\u2191 out");
    cell(row, envelope.type);
    cell(row, envelope.event ?? (envelope.ref !== undefined ? `ref ${envelope.ref}` : ""));
    cell(row, envelope.stream !== undefined ? `${envelope.stream} @ ${envelope.offset}` : (envelope.room ?? ""));
    const data = cell(row, JSON.stringify(envelope), "data");
    data.title = "click to expand";
    data.addEventListener("click", () => {
      data.classList.toggle("open");
      data.textContent = data.classList.contains("open") ? JSON.stringify(envelope, null, 2) : JSON.stringify(envelope);
    });
  });
}

$("filter").addEventListener("input", schedule);
$("heartbeats").addEventListener("change", schedule);
$("clear").addEventListener("click", () => {
  for (const c of model.clients.values()) {
    c.envelopes = [];
    c.states = [];
  }
  schedule();
});
$("pause").addEventListener("click", () => {
  model.paused = !model.paused;
  $("pause").setAttribute("aria-pressed", String(model.paused));
  $("pause").textContent = model.paused ? "Resume" : "Pause";
});

connect();
render();
