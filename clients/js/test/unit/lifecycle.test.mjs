// Browser recovery driven by fake page events and fake timers: no futile
// attempts while offline, a dial at once when the network returns, a
// liveness probe when the page returns, and no dead-server verdict from
// timers that a hidden or frozen tab ran late.
import { afterEach, beforeEach, mock, test } from "node:test";
import assert from "node:assert/strict";
import { browserLifecycle, WarpSocketClient } from "../../dist/index.js";

/** A WebSocket the test plays the server of. */
class FakeSocket {
  static made = [];
  constructor(url, protocols) {
    this.url = url;
    this.protocol = protocols[0];
    this.readyState = 0;
    this.binaryType = "blob";
    this.sent = [];
    this.closedWith = null;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    // A new session's hello travels in the URL (protocol.md 4.5), a resume as a frame.
    const hello = new URL(url).searchParams.get("hello");
    this.urlHello = hello === null ? null : JSON.parse(Buffer.from(hello, "base64url").toString("utf8"));
    FakeSocket.made.push(this);
  }
  send(data) {
    this.sent.push(JSON.parse(data));
  }
  close(code = 1005, reason = "") {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.closedWith = code;
    queueMicrotask(() => this.onclose?.({ code, reason })); // the close event comes later, as in a browser
  }
  accept() {
    this.readyState = 1;
    this.onopen?.({});
  }
  receive(envelope) {
    this.onmessage?.({ data: JSON.stringify({ id: `s${++FakeSocket.ids}`, timestamp: now, ...envelope }) });
  }
  /** The network died under it: a close without a code. */
  drop() {
    this.readyState = 3;
    this.onclose?.({ code: 1006, reason: "" });
  }
  ofType(type) {
    return this.sent.filter((e) => e.type === type);
  }
}
FakeSocket.ids = 0;

/** The page's events, fired by hand. */
class FakeLifecycle {
  constructor() {
    this.online = true;
    this.listeners = new Set();
  }
  isOnline() {
    return this.online;
  }
  listen(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
  fire(event) {
    if (event === "online") this.online = true;
    if (event === "offline") this.online = false;
    for (const listener of [...this.listeners]) listener(event);
  }
}

let now = 0;
/** Time passes and timers run on time. */
function advance(ms) {
  for (let i = 0; i < ms; i += 100) {
    now += Math.min(100, ms - i);
    mock.timers.tick(Math.min(100, ms - i));
  }
}
/** Time passes but no timer runs (a frozen page, a heavily throttled tab). */
function freeze(ms) {
  now += ms;
}
const flush = async () => {
  for (let i = 0; i < 5; i++) await Promise.resolve();
};

beforeEach(() => {
  now = 1_700_000_000_000;
  FakeSocket.made = [];
  mock.method(Date, "now", () => now);
  mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
});
afterEach(() => {
  mock.timers.reset();
  mock.restoreAll();
});

function makeClient(lifecycle, options = {}) {
  return new WarpSocketClient("ws://test/ws", {
    WebSocket: FakeSocket,
    lifecycle,
    backoff: { initial: 1000, max: 8000, jitter: 0 },
    ...options,
  });
}

/** Open the newest socket and welcome it. */
async function welcome(heartbeat = { interval: 25000, timeout: 60000 }) {
  const socket = FakeSocket.made.at(-1);
  socket.accept();
  await flush();
  const hello = socket.urlHello ?? socket.ofType("hello")[0];
  assert.ok(hello, "the client said hello");
  socket.receive({ type: "welcome", ref: hello.id, data: { session: "s1", resumed: false, streams: {}, rooms: [], heartbeat } });
  return socket;
}

test("offline: no attempts while the network is away, a dial at once when it returns", async () => {
  const page = new FakeLifecycle();
  const client = makeClient(page);
  const opened = client.connect();
  await welcome();
  await opened;
  page.fire("offline");
  FakeSocket.made[0].drop();
  assert.equal(client.state, "reconnecting");
  assert.equal(client.offline, true);
  advance(120000); // far beyond every backoff step
  assert.equal(FakeSocket.made.length, 1, "no futile attempts while offline");
  page.fire("online");
  assert.equal(FakeSocket.made.length, 2, "dialled at once, no backoff step waited out");
  assert.equal(client.state, "connecting");
  assert.equal(client.offline, false);
  await welcome();
  assert.equal(client.state, "open");
  assert.equal(client.stats.reconnects, 1);
  await client.close();
});

test("offline while a reconnect is scheduled cancels it; online dials without waiting", async () => {
  const page = new FakeLifecycle();
  const client = makeClient(page, { backoff: { initial: 5000, max: 5000, jitter: 0 } });
  const opened = client.connect();
  await welcome();
  await opened;
  FakeSocket.made[0].drop(); // still online: a 5 s backoff step is scheduled
  advance(1000);
  page.fire("offline");
  advance(10000);
  assert.equal(FakeSocket.made.length, 1, "the scheduled attempt was cancelled");
  page.fire("online");
  assert.equal(FakeSocket.made.length, 2);
  await client.close();
});

test("the page comes back: a probe with a short deadline replaces a dead connection", async () => {
  const page = new FakeLifecycle();
  const client = makeClient(page, { livenessTimeout: 2000 });
  const opened = client.connect();
  const socket = await welcome();
  await opened;
  const before = socket.ofType("heartbeat").length;
  page.fire("visible");
  const probes = socket.ofType("heartbeat");
  assert.equal(probes.length, before + 1, "a heartbeat went out at once");
  advance(1900);
  assert.equal(client.state, "open");
  advance(200);
  assert.equal(socket.closedWith, 4204, "unanswered probe: the connection is replaced");
  assert.equal(client.state, "reconnecting");
  await client.close();
});

test("an answered probe keeps the connection; pageshow, resume and a network change probe too", async () => {
  const page = new FakeLifecycle();
  const client = makeClient(page, { livenessTimeout: 2000 });
  const opened = client.connect();
  const socket = await welcome();
  await opened;
  for (const event of ["pageshow", "resume", "network-change", "online"]) {
    const count = socket.ofType("heartbeat").length;
    page.fire(event);
    const probe = socket.ofType("heartbeat").at(-1);
    assert.equal(socket.ofType("heartbeat").length, count + 1, `${event} sent a probe`);
    advance(500);
    socket.receive({ type: "heartbeat", ref: probe.id });
    advance(5000);
    assert.equal(client.state, "open", `${event}: answered, kept`);
    assert.equal(socket.closedWith, null);
  }
  const count = socket.ofType("heartbeat").length;
  page.fire("hidden");
  assert.equal(socket.ofType("heartbeat").length, count, "hiding sends nothing");
  await client.close();
});

test("frozen timers give no false dead-server verdict: they probe instead", async () => {
  const page = new FakeLifecycle();
  const client = makeClient(page, { livenessTimeout: 2000 });
  const opened = client.connect();
  const socket = await welcome({ interval: 25000, timeout: 60000 });
  await opened;
  freeze(120000); // twice the heartbeat timeout passes with no timer run
  const count = socket.ofType("heartbeat").length;
  advance(1000); // the watchdog runs, very late
  assert.equal(client.state, "open", "a late timer is no verdict");
  assert.equal(socket.closedWith, null);
  const probe = socket.ofType("heartbeat").at(-1);
  assert.equal(socket.ofType("heartbeat").length, count + 1, "it asked instead");
  socket.receive({ type: "heartbeat" }); // a frame queued before the freeze: no answer to the probe
  socket.receive({ type: "heartbeat", ref: probe.id });
  advance(5000);
  assert.equal(client.state, "open");
  await client.close();
});

test("only the probe's answer settles it: frames queued before the connection died do not", async () => {
  const page = new FakeLifecycle();
  const client = makeClient(page, { livenessTimeout: 2000 });
  const opened = client.connect();
  const socket = await welcome();
  await opened;
  page.fire("resume");
  socket.receive({ type: "heartbeat" });
  socket.receive({ type: "event", stream: "broadcast", offset: 1, epoch: "e", event: "x" });
  advance(2100);
  assert.equal(socket.closedWith, 4204);
  await client.close();
});

test("silence with timers on time is a verdict; frozen then silent is one after the probe", async () => {
  const page = new FakeLifecycle();
  const client = makeClient(page, { livenessTimeout: 2000 });
  const opened = client.connect();
  const socket = await welcome({ interval: 25000, timeout: 10000 });
  await opened;
  advance(9000);
  assert.equal(client.state, "open");
  advance(2000);
  assert.equal(socket.closedWith, 4204, "10 s of silence, timers on time: dead");
  advance(2000);
  const second = await welcome({ interval: 25000, timeout: 10000 });
  freeze(30000);
  advance(1000);
  assert.equal(second.closedWith, null, "late watchdog: no verdict yet");
  advance(2100);
  assert.equal(second.closedWith, 4204, "the probe went unanswered");
  await client.close();
});

test("a late probe timer asks again rather than judging", async () => {
  const page = new FakeLifecycle();
  const client = makeClient(page, { livenessTimeout: 2000 });
  const opened = client.connect();
  const socket = await welcome();
  await opened;
  page.fire("visible");
  const count = socket.ofType("heartbeat").length;
  freeze(60000); // hidden again right away, frozen
  advance(2000);
  assert.equal(socket.closedWith, null, "no verdict from a timer that fired a minute late");
  assert.ok(socket.ofType("heartbeat").length > count, "asked anew");
  advance(2100);
  assert.equal(socket.closedWith, 4204, "the fresh probe, judged on time, went unanswered");
  await client.close();
});

test("lifecycle: null ignores the page; Node.js has none by default", async () => {
  assert.equal(browserLifecycle(globalThis), null);
  const client = makeClient(null);
  const opened = client.connect();
  await welcome();
  await opened;
  FakeSocket.made[0].drop();
  advance(1000);
  assert.equal(FakeSocket.made.length, 2, "reconnects on its backoff");
  await client.close();
});

test("browserLifecycle maps window, document and navigator events, and stops listening", () => {
  const target = () => {
    const map = new Map();
    return {
      map,
      addEventListener: (name, fn) => map.set(name, [...(map.get(name) ?? []), fn]),
      removeEventListener: (name, fn) => map.set(name, (map.get(name) ?? []).filter((f) => f !== fn)),
      fire(name, event = {}) {
        for (const fn of map.get(name) ?? []) fn(event);
      },
    };
  };
  const window = target();
  const document = Object.assign(target(), { visibilityState: "visible" });
  const connection = target();
  const navigator = { onLine: true, connection };
  const lifecycle = browserLifecycle({ window, document, navigator });
  const seen = [];
  const stop = lifecycle.listen((event) => seen.push(event));
  window.fire("offline");
  navigator.onLine = false;
  assert.equal(lifecycle.isOnline(), false);
  window.fire("online");
  document.visibilityState = "hidden";
  document.fire("visibilitychange");
  document.visibilityState = "visible";
  document.fire("visibilitychange");
  window.fire("pageshow", { persisted: false }); // a normal load: nothing to check
  window.fire("pageshow", { persisted: true });
  document.fire("resume");
  connection.fire("change");
  assert.deepEqual(seen, ["offline", "online", "hidden", "visible", "pageshow", "resume", "network-change"]);
  stop();
  window.fire("online");
  document.fire("resume");
  assert.equal(seen.length, 7);
  for (const t of [window, document, connection]) for (const list of t.map.values()) assert.equal(list.length, 0);
});
