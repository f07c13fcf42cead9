// The hello in the upgrade request (protocol.md 4.5): every `encode` vector
// of tests/vectors/url_hello.json (base64url of the JSON text, no padding)
// through this client's encoder, and the
// client's decision (URL or frame), against a WebSocket the test plays the
// server of. The whole vector list is read, so vectors added later run here.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import {
  ClientCore,
  URL_HELLO_MAX_BYTES,
  WarpSocketClient,
  urlHelloQuery,
  urlHelloText,
  withUrlHello,
} from "../../dist/index.js";

/** A broken handshake hangs rather than throws: fail in time instead. */
const LIMIT = { timeout: 10000 };
const fromBase64url = (text) => Buffer.from(text, "base64url").toString("utf8");
const VECTORS = JSON.parse(readFileSync(new URL("../../../../tests/vectors/url_hello.json", import.meta.url), "utf8"));

// ------------------------------------------------------------------ encode vectors

test("the vector file has encode vectors", LIMIT, () => {
  assert.ok(VECTORS.encode.length >= 6, `${VECTORS.encode.length} encode vectors`);
});

for (const vector of VECTORS.encode) {
  test(`encode vector ${vector.name}: the query is exactly the vector's`, LIMIT, () => {
    assert.equal(urlHelloQuery(vector.json), vector.query);
    // Appended to a URL: after "?" with nothing else, after "&" behind the parameters already there.
    assert.equal(withUrlHello("ws://h:8080/ws", vector.json), `ws://h:8080/ws?${vector.query}`);
    assert.equal(withUrlHello("ws://h:8080/ws?v=2", vector.json), `ws://h:8080/ws?v=2&${vector.query}`);
    // Only the base64url alphabet, no padding, and it decodes back to the same text (what a server does).
    assert.match(vector.query, /^hello=[A-Za-z0-9_-]+$/);
    assert.equal(fromBase64url(vector.query.slice("hello=".length)), vector.json);
  });
}

// ------------------------------------------------------------------ URLs and texts

test("the hello joins the URL's own query with &, before a fragment, and leaves the rest alone", LIMIT, () => {
  const json = '{"type":"hello","id":"h1","timestamp":1,"data":{}}';
  const q = urlHelloQuery(json);
  assert.equal(withUrlHello("ws://h/ws", json), `ws://h/ws?${q}`);
  assert.equal(withUrlHello("ws://h/ws?", json), `ws://h/ws?${q}`);
  assert.equal(withUrlHello("ws://h/ws?token=a%2Bb&x", json), `ws://h/ws?token=a%2Bb&x&${q}`);
  assert.equal(withUrlHello("ws://h/ws?token=abc&", json), `ws://h/ws?token=abc&${q}`);
  assert.equal(withUrlHello("wss://h/ws#frag", json), `wss://h/ws?${q}#frag`);
  assert.equal(withUrlHello("wss://h/ws?a=1#frag?x", json), `wss://h/ws?a=1&${q}#frag?x`);
  assert.equal(new URL(withUrlHello("ws://h/ws?token=abc", json)).searchParams.get("token"), "abc");
  assert.equal(fromBase64url(new URL(withUrlHello("ws://h/ws?token=abc", json)).searchParams.get("hello")), json);
  // The URL parsers of browsers and Node leave base64url as it is: the server gets exactly this query.
  assert.equal(new URL(withUrlHello("ws://h/ws?a=1", json)).search, `?a=1&${q}`);
});

test("urlHelloText: credentials (even null) and a session keep a hello out of URLs; 2,048 bytes at most", LIMIT, () => {
  const hello = (data) => ({ type: "hello", id: "h1", timestamp: 1, data });
  assert.equal(urlHelloText(hello({ rooms: [] })), '{"type":"hello","id":"h1","timestamp":1,"data":{"rooms":[]}}');
  assert.notEqual(urlHelloText(hello({ session: null, rooms: [] })), null);
  assert.equal(urlHelloText(hello({ session: "s1", rooms: [] })), null);
  assert.equal(urlHelloText(hello({ token: "secret" })), null);
  assert.equal(urlHelloText(hello({ token: null })), null);
  assert.equal(urlHelloText(hello({ resume_token: "R".repeat(43) })), null);
  assert.equal(urlHelloText(hello({ resume_token: null })), null);
  assert.equal(urlHelloText({ type: "event", id: "e", timestamp: 1, event: "x", data: {} }), null);
  // The limit counts UTF-8 bytes of the JSON text, not characters.
  const base = urlHelloText(hello({ client: { name: "" } })).length;
  const ascii = (n) => hello({ client: { name: "x".repeat(n) } });
  assert.equal(urlHelloText(ascii(URL_HELLO_MAX_BYTES - base)).length, URL_HELLO_MAX_BYTES);
  assert.equal(urlHelloText(ascii(URL_HELLO_MAX_BYTES - base + 1)), null);
  const twoByte = (n) => hello({ client: { name: "é".repeat(n) } }); // 2 bytes each
  assert.notEqual(urlHelloText(twoByte((URL_HELLO_MAX_BYTES - base) / 2)), null);
  assert.equal(urlHelloText(twoByte((URL_HELLO_MAX_BYTES - base) / 2 + 1)), null);
  const astral = (n) => hello({ client: { name: "😀".repeat(n) } }); // 4 bytes, 2 UTF-16 units each
  assert.notEqual(urlHelloText(astral((URL_HELLO_MAX_BYTES - base) / 4)), null);
  assert.equal(urlHelloText(astral((URL_HELLO_MAX_BYTES - base) / 4 + 1)), null);
});

// ------------------------------------------------------------------ the core's decision

function makeCore(options = {}) {
  let n = 0;
  return new ClientCore(options, () => `c${++n}`);
}

test("core: a fresh session's hello goes in the URL and its welcome completes the handshake", LIMIT, () => {
  const core = makeCore({ extensions: ["batch"] });
  core.subscribe("chat", 0);
  const carried = core.urlHello(1000, { name: "t", version: "1" });
  assert.ok(carried !== null);
  assert.deepEqual(carried.envelope, {
    type: "hello",
    id: "c1",
    timestamp: 1000,
    data: { session: null, streams: {}, rooms: ["chat"], client: { name: "t", version: "1" }, extensions: ["batch"] },
  });
  assert.equal(carried.json, JSON.stringify(carried.envelope));
  // A welcome answering another hello is not this connection's.
  assert.deepEqual(core.receive({ type: "welcome", id: "w0", timestamp: 1, ref: "other", data: { session: "sX" } }, 1001), []);
  assert.equal(core.open, false);
  const actions = core.receive(
    { type: "welcome", id: "w", timestamp: 5000, ref: "c1", data: { session: "s1", resume_token: "R".repeat(43), resumed: false, streams: {}, rooms: ["chat"] } },
    1010,
  );
  assert.deepEqual(actions.filter((a) => a.kind === "welcomed").map((a) => a.session), ["s1"]);
  assert.equal(core.open, true);
  assert.equal(core.clockOffsetMs, 5000 - 1010 - 1);
  assert.deepEqual(actions.filter((a) => a.kind === "transmit"), [], "no hello (nor anything else) to transmit");
});

test("core: a session to resume, or a hello over 2,048 bytes, goes as a frame", LIMIT, () => {
  const core = makeCore();
  core.urlHello(0);
  core.receive({ type: "welcome", id: "w", timestamp: 0, ref: "c1", data: { session: "s1", resume_token: "R".repeat(43) } }, 0);
  core.disconnected(1);
  assert.equal(core.urlHello(2), null, "a resume: never in a URL");
  const [resume] = core.connected(2).map((a) => a.envelope);
  assert.equal(resume.data.session, "s1");
  assert.equal(resume.data.resume_token, "R".repeat(43));

  const restored = makeCore();
  restored.restore({ version: 1, session: "s9", resumeToken: "T".repeat(43), positions: {}, rooms: [], outgoing: [] });
  assert.equal(restored.urlHello(0), null, "a restored session: a frame");

  const many = makeCore();
  for (let i = 0; i < 200; i++) many.subscribe(`room-${i}`, 0);
  assert.equal(many.urlHello(0), null, "too long for a URL");
  assert.equal(many.connected(0)[0].envelope.data.rooms.length, 200);
});

test("core: rooms joined or left after the hello was built are settled after the welcome, not refused", LIMIT, () => {
  const core = makeCore();
  core.subscribe("early", 0);
  core.subscribe("gone", 0);
  const carried = core.urlHello(0);
  assert.deepEqual(carried.envelope.data.rooms, ["early", "gone"]);
  core.subscribe("late", 1); // the application subscribed after connect(): the URL has left
  core.unsubscribe("gone", 1);
  const actions = core.receive(
    { type: "welcome", id: "w", timestamp: 2, ref: carried.envelope.id, data: {
      session: "s1", resumed: false, rooms: ["early", "gone"], denied: {},
      streams: { "room:early": { offset: 0, epoch: "e", recovered: true }, "room:gone": { offset: 0, epoch: "g", recovered: true } },
    } },
    2,
  );
  const rooms = actions.filter((a) => a.kind === "room");
  assert.deepEqual(rooms, [{ kind: "room", room: "early", joined: true }], "neither late refused nor gone joined");
  const sent = actions.filter((a) => a.kind === "transmit").map((a) => [a.envelope.type, a.envelope.room]);
  assert.deepEqual(sent, [["subscribe", "late"], ["unsubscribe", "gone"]]);
  assert.deepEqual([...core.rooms].sort(), ["early", "late"]);
  assert.equal(core.positions.has("room:gone"), false);
  const subscribe = actions.find((a) => a.kind === "transmit" && a.envelope.type === "subscribe").envelope;
  const joined = core.receive({ type: "ack", id: "a", timestamp: 3, ref: subscribe.id, data: { offset: 4, epoch: "l", recovered: true } }, 3);
  assert.deepEqual(joined.filter((a) => a.kind === "room"), [{ kind: "room", room: "late", joined: true }]);
});

// ------------------------------------------------------------------ the client's decision

/** A WebSocket the test plays the server of. */
class FakeSocket {
  static made = [];
  constructor(url, protocols) {
    this.url = url;
    this.protocol = protocols[0];
    this.readyState = 0;
    this.binaryType = "blob";
    this.sent = [];
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    const query = new URL(url).searchParams.getAll("hello").filter((value) => value !== ""); // empty: absent (4.5)
    assert.ok(query.length <= 1, "at most one hello parameter");
    this.urlHello = query.length === 0 || query[0] === "mine" ? null : JSON.parse(fromBase64url(query[0]));
    FakeSocket.made.push(this);
  }
  send(data) {
    this.sent.push(JSON.parse(data));
  }
  close(code = 1005, reason = "") {
    if (this.readyState === 3) return;
    this.readyState = 3;
    queueMicrotask(() => this.onclose?.({ code, reason }));
  }
  accept() {
    this.readyState = 1;
    this.onopen?.({});
  }
  receive(envelope) {
    this.onmessage?.({ data: JSON.stringify({ id: `s${Math.random()}`, timestamp: Date.now(), ...envelope }) });
  }
  /** The server closes the connection. */
  closeFromServer(code, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  ofType(type) {
    return this.sent.filter((e) => e.type === type);
  }
}

const flush = async () => {
  for (let i = 0; i < 10; i++) await Promise.resolve();
};
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const made = [];
// A failed test leaves its client waiting: closed here, so the file still ends.
after(() => Promise.all(made.map((client) => client.close())));

function makeClient(url = "ws://test/ws", options = {}) {
  return remember(new WarpSocketClient(url, {
    WebSocket: FakeSocket,
    lifecycle: null,
    backoff: { initial: 1, max: 2, jitter: 0 },
    connectTimeout: 600000,
    ...options,
  }));
}

function remember(client) {
  made.push(client);
  return client;
}

const welcomeData = (session = "s1", extra = {}) => ({ session, resume_token: "R".repeat(43), resumed: false, streams: {}, rooms: [], ...extra });

test("client: a fresh token-less hello goes in the URL, is not sent again, and its welcome opens", LIMIT, async () => {
  FakeSocket.made = [];
  const client = makeClient("ws://test/ws?token=abc", { clientInfo: { name: "t", version: "1" }, rooms: ["chat"] });
  const opened = client.connect();
  await flush();
  const socket = FakeSocket.made.at(-1);
  assert.match(socket.url, /^ws:\/\/test\/ws\?token=abc&hello=eyJ[A-Za-z0-9_-]+$/); // base64url of {"
  assert.equal(new URL(socket.url).searchParams.get("token"), "abc", "the URL's own parameters stay");
  const hello = socket.urlHello;
  assert.equal(hello.type, "hello");
  assert.deepEqual(hello.data, { session: null, streams: {}, rooms: ["chat"], client: { name: "t", version: "1" }, extensions: ["batch"] });
  socket.accept();
  await flush();
  assert.deepEqual(socket.sent, [], "nothing sent before the answer: the hello is not sent again");
  socket.receive({ type: "welcome", ref: hello.id, data: welcomeData("s1", { rooms: ["chat"] }) });
  await opened;
  assert.equal(client.state, "open");
  assert.equal(client.session, "s1");
  await client.send("x", 1);
  await flush();
  assert.deepEqual(socket.ofType("hello"), [], "still no hello frame after the welcome");
  assert.equal(socket.ofType("event").length, 1);
  await client.close();
});

test("client: a subscribe right after connect() (the URL has gone) is asked for after the welcome", LIMIT, async () => {
  FakeSocket.made = [];
  const client = makeClient();
  const opened = client.connect();
  const joined = client.subscribe("late");
  const socket = FakeSocket.made.at(-1);
  assert.deepEqual(socket.urlHello.data.rooms, []);
  socket.accept();
  await flush();
  socket.receive({ type: "welcome", ref: socket.urlHello.id, data: welcomeData() });
  await opened;
  await flush();
  const [subscribe] = socket.ofType("subscribe");
  assert.equal(subscribe?.room, "late");
  socket.receive({ type: "ack", ref: subscribe.id, data: { offset: 0, epoch: "e", recovered: true } });
  await joined;
  assert.deepEqual(client.rooms, ["late"]);
  await client.close();
});

test("client: the reconnect resumes with a frame hello; the URL carries no hello, session or resume token", LIMIT, async () => {
  FakeSocket.made = [];
  const client = makeClient();
  const opened = client.connect();
  let socket = FakeSocket.made.at(-1);
  socket.accept();
  socket.receive({ type: "welcome", ref: socket.urlHello.id, data: welcomeData() });
  await opened;
  socket.closeFromServer(1006);
  await sleep(20);
  socket = FakeSocket.made.at(-1);
  assert.equal(FakeSocket.made.length, 2);
  assert.equal(socket.url, "ws://test/ws");
  assert.equal(socket.urlHello, null);
  socket.accept();
  await flush();
  const [resume] = socket.ofType("hello");
  assert.equal(resume.data.session, "s1");
  assert.equal(resume.data.resume_token, "R".repeat(43));
  await client.close();
});

test("client: a token, urlHello: false, or a hello parameter already in the URL: the hello is a frame", LIMIT, async () => {
  for (const [url, options] of [
    ["ws://test/ws", { token: "secret" }],
    ["ws://test/ws", { token: () => "secret" }],
    ["ws://test/ws", { urlHello: false }],
    ["ws://test/ws?hello=mine", {}],
  ]) {
    FakeSocket.made = [];
    const client = makeClient(url, options);
    const opened = client.connect();
    await flush();
    const socket = FakeSocket.made.at(-1);
    assert.equal(socket.url, url, JSON.stringify(Object.keys(options)));
    socket.accept();
    await flush();
    const hellos = socket.ofType("hello");
    assert.equal(hellos.length, 1, `one hello frame with ${url} ${JSON.stringify(Object.keys(options))}`);
    if (options.token !== undefined) assert.equal(hellos[0].data.token, "secret");
    socket.receive({ type: "welcome", ref: hellos[0].id, data: welcomeData() });
    await opened;
    await client.close();
  }
});

test("client: an empty hello parameter of the URL counts as absent: the hello joins it", LIMIT, async () => {
  FakeSocket.made = [];
  const client = makeClient("ws://test/ws?hello=");
  const opened = client.connect();
  const socket = FakeSocket.made.at(-1);
  assert.match(socket.url, /^ws:\/\/test\/ws\?hello=&hello=[A-Za-z0-9_-]+$/);
  socket.accept();
  socket.receive({ type: "welcome", ref: socket.urlHello.id, data: welcomeData() });
  await opened;
  assert.equal(client.stats.urlHellos, 1);
  assert.equal(client.stats.messagesOut, 0, "a URL hello is not a frame sent");
  await client.close();
});

test("client: a hello over 2,048 bytes is a frame", LIMIT, async () => {
  FakeSocket.made = [];
  const client = makeClient("ws://test/ws", { clientInfo: { name: "x".repeat(2048), version: "1" } });
  const opened = client.connect();
  const socket = FakeSocket.made.at(-1);
  assert.equal(socket.url, "ws://test/ws");
  socket.accept();
  await flush();
  const [hello] = socket.ofType("hello");
  assert.equal(hello.data.client.name.length, 2048);
  socket.receive({ type: "welcome", ref: hello.id, data: welcomeData() });
  await opened;
  await client.close();
});

test("client: closed with 4205 before a welcome (a server without 4.5): frames from then on", LIMIT, async () => {
  FakeSocket.made = [];
  const client = makeClient();
  const opened = client.connect();
  let socket = FakeSocket.made.at(-1);
  assert.notEqual(socket.urlHello, null);
  socket.accept();
  await flush();
  assert.deepEqual(socket.sent, []);
  socket.closeFromServer(4205, "handshake_timeout");
  await sleep(20);
  socket = FakeSocket.made.at(-1);
  assert.equal(FakeSocket.made.length, 2);
  assert.equal(socket.url, "ws://test/ws", "no hello in the URL after the 4205");
  socket.accept();
  await flush();
  const [hello] = socket.ofType("hello");
  assert.equal(hello.data.session, null);
  socket.receive({ type: "welcome", ref: hello.id, data: welcomeData() });
  await opened;
  // Still frames on a later fresh connection of this client (say, after the session expired).
  socket.closeFromServer(1006);
  client.core.session = null;
  await sleep(20);
  assert.equal(FakeSocket.made.at(-1).url, "ws://test/ws");
  await client.close();
});

test("client: a 4205 after the welcome, or a close before the transport opened, does not give up on URL hellos", LIMIT, async () => {
  FakeSocket.made = [];
  const client = makeClient();
  const opened = client.connect();
  let socket = FakeSocket.made.at(-1);
  socket.closeFromServer(1006); // refused before the upgrade (say, the network)
  await sleep(20);
  socket = FakeSocket.made.at(-1);
  assert.equal(FakeSocket.made.length, 2);
  assert.notEqual(socket.urlHello, null, "still in the URL");
  socket.accept();
  socket.receive({ type: "welcome", ref: socket.urlHello.id, data: welcomeData() });
  await opened;
  socket.closeFromServer(4205); // not a handshake's: this connection was welcomed
  client.core.session = null; // the next connection is a new session again
  await sleep(20);
  assert.notEqual(FakeSocket.made.at(-1).urlHello, null, "a welcomed connection proves the server takes URL hellos");
  await client.close();
});

test("client: the URL hello unanswered until the connect timeout: frames from then on", LIMIT, async () => {
  FakeSocket.made = [];
  const client = makeClient("ws://test/ws", { connectTimeout: 50 });
  const opened = client.connect();
  let socket = FakeSocket.made.at(-1);
  socket.accept();
  await sleep(120);
  assert.ok(FakeSocket.made.length >= 2);
  socket = FakeSocket.made.at(-1);
  assert.equal(socket.url, "ws://test/ws");
  socket.accept();
  await flush();
  const [hello] = socket.ofType("hello");
  socket.receive({ type: "welcome", ref: hello.id, data: welcomeData() });
  await opened;
  await client.close();
});

test("client: an error answering the URL hello: the hello goes as a frame, once, and its welcome opens", LIMIT, async () => {
  FakeSocket.made = [];
  const client = makeClient();
  const opened = client.connect();
  const socket = FakeSocket.made.at(-1);
  const carried = socket.urlHello;
  socket.accept();
  await flush();
  socket.receive({ type: "error", ref: carried.id, code: 4300, data: { name: "rate_limited", message: "slow down" } });
  await flush();
  const hellos = socket.ofType("hello");
  assert.equal(hellos.length, 1, "the hello as a frame");
  assert.notEqual(hellos[0].id, carried.id);
  assert.deepEqual(hellos[0].data, carried.data);
  // A stale welcome of the URL hello is no longer this connection's.
  socket.receive({ type: "welcome", ref: carried.id, data: welcomeData("stale") });
  await flush();
  assert.equal(client.state, "connecting");
  socket.receive({ type: "welcome", ref: hellos[0].id, data: welcomeData("s2") });
  await opened;
  assert.equal(client.session, "s2");
  assert.equal(socket.ofType("hello").length, 1);
  await client.close();
});
