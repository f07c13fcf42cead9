// The durable state a page reload must not lose: the core's snapshot and
// restore (validated like network input), and the client saving to and
// resuming from a store.
import { test } from "node:test";
import assert from "node:assert/strict";
import { ClientCore, memoryStore, WarpSocketClient } from "../../dist/index.js";

function makeCore(prefix = "c") {
  let n = 0;
  return new ClientCore({}, () => `${prefix}${++n}`);
}
const sent = (actions) => actions.filter((a) => a.kind === "transmit").map((a) => a.envelope);

function welcome(core, data, now = 1000) {
  const [hello] = sent(core.connected(now));
  const actions = core.receive(
    { type: "welcome", id: "w", timestamp: now, ref: hello.id, data: { session: "s1", resumed: false, streams: {}, rooms: [], ...data } },
    now,
  );
  return { hello, actions };
}

test("snapshot and restore keep the session, positions, rooms and every unconfirmed message, in order", () => {
  const core = makeCore("a");
  core.subscribe("chat", 0);
  welcome(core, { resume_token: "R".repeat(43), rooms: ["chat"], streams: { direct: { offset: 3, epoch: "d", recovered: true }, "room:chat": { offset: 7, epoch: "r", recovered: true } } });
  core.receive({ type: "event", id: "e8", timestamp: 1, stream: "room:chat", offset: 8, epoch: "r", event: "x" }, 1000);
  core.disconnected(1100);
  const [m1] = core.send("say", { text: "one" }, 1200, { ack: true });
  const [m2] = core.call("add", [1, 2], 1200, { timeoutMs: 50000 });
  const [m3] = core.send("say", { text: "three" }, 1200, { ack: true, priority: 5 });
  const state = JSON.parse(JSON.stringify(core.snapshot())); // what a store gives back
  assert.equal(state.outgoing.length, 3);

  const fresh = makeCore("b");
  const [later] = fresh.send("say", { text: "made after the reload" }, 1300, { ack: true });
  assert.deepEqual(fresh.restore(state), [m1, m2, m3]);
  const { hello, actions } = welcome(fresh, { resumed: true }, 1400);
  assert.equal(hello.data.session, "s1");
  assert.equal(hello.data.resume_token, "R".repeat(43));
  assert.deepEqual(hello.data.streams, { direct: { offset: 3, epoch: "d" }, "room:chat": { offset: 8, epoch: "r" } });
  assert.deepEqual(hello.data.rooms, ["chat"]);
  // Priority first, then the restored ones before what came after the reload.
  assert.deepEqual(sent(actions).map((e) => e.id), [m3, m1, m2, later]);
  const call = sent(actions).find((e) => e.id === m2);
  assert.equal(call.type, "call");
  assert.ok(call.deadline > 0 && call.deadline <= 50000 - 200, "the deadline still counts from the first submission");
});

test("restore skips what is malformed: storage is not trusted more than the network", () => {
  const core = makeCore();
  const good = { envelope: { type: "event", id: "ok1", timestamp: 1, event: "say" }, priority: 0, tracked: true, deadlineMs: null, expiresMs: null };
  const ids = core.restore({
    version: 1,
    session: 42,
    resumeToken: "x",
    positions: { direct: { offset: -1, epoch: "e" }, broadcast: { offset: 2, epoch: "e0" }, bad: "no" },
    rooms: ["a", 7, ""],
    outgoing: [
      good,
      { envelope: { type: "welcome", id: "w", timestamp: 1, data: {} } },
      { envelope: { type: "event", id: "", timestamp: 1, event: "x" } },
      { envelope: { type: "event", id: "n", timestamp: 1, event: "x", data: NaN } },
      "junk",
      { ...good },
    ],
  });
  assert.deepEqual(ids, ["ok1"]);
  assert.equal(core.session, null);
  assert.equal(core.resumeToken, null);
  assert.deepEqual([...core.positions], [["broadcast", { offset: 2, epoch: "e0" }]]);
  assert.deepEqual([...core.rooms], ["a"]);
  assert.deepEqual(makeCore().restore({ version: 2, outgoing: [good] }), []);
  assert.deepEqual(makeCore().restore(null), []);
});

class FakeSocket {
  static made = [];
  constructor(url, protocols) {
    this.protocol = protocols[0];
    this.readyState = 0;
    this.sent = [];
    // A new session's hello travels in the URL (protocol.md 4.5); a resume never does.
    const hello = new URL(url).searchParams.get("hello");
    this.urlHello = hello === null ? null : JSON.parse(Buffer.from(hello, "base64url").toString("utf8"));
    FakeSocket.made.push(this);
  }
  send(data) {
    this.sent.push(JSON.parse(data));
  }
  close() {
    this.readyState = 3;
    queueMicrotask(() => this.onclose?.({ code: 1000, reason: "" }));
  }
  accept() {
    this.readyState = 1;
    this.onopen?.({});
  }
  receive(envelope) {
    this.onmessage?.({ data: JSON.stringify({ id: `s${Math.random()}`, timestamp: Date.now(), ...envelope }) });
  }
}
const flush = async () => {
  for (let i = 0; i < 10; i++) await Promise.resolve();
};

test("a client saves to its store, and a new one (the reloaded page) resends the same messages", async () => {
  const store = memoryStore();
  const first = new WarpSocketClient("ws://test/ws", { WebSocket: FakeSocket, lifecycle: null, store, connectTimeout: 600000 });
  const opened = first.connect();
  await flush();
  let socket = FakeSocket.made.at(-1);
  socket.accept();
  await flush();
  const hello = socket.urlHello;
  assert.equal(hello.data.session, null);
  assert.deepEqual(socket.sent, [], "the hello of the URL is not sent again");
  socket.receive({ type: "welcome", ref: hello.id, data: { session: "s9", resume_token: "T".repeat(43), resumed: false, streams: { broadcast: { offset: 4, epoch: "b", recovered: true } }, rooms: [] } });
  await opened;
  socket.readyState = 3; // the network is gone: sends go out into nothing
  for (let i = 1; i <= 3; i++) first.send("record", { seq: i }, { ack: true }).catch(() => undefined);
  await first.persisted();
  assert.equal(store.state.session, "s9");
  assert.deepEqual(store.state.outgoing.map((m) => m.envelope.data.seq), [1, 2, 3]);
  const stored = store.state.outgoing.map((m) => m.envelope.id);

  // The page reloads: the first client is simply gone, a new one starts.
  const second = new WarpSocketClient("ws://test/ws", { WebSocket: FakeSocket, lifecycle: null, store, connectTimeout: 600000 });
  const errors = [];
  second.onError((error) => errors.push(error));
  const reopened = second.connect();
  await flush();
  socket = FakeSocket.made.at(-1);
  socket.accept();
  await flush();
  assert.equal(socket.urlHello, null, "a resume is never in the URL");
  const resume = socket.sent[0];
  assert.equal(resume.data.session, "s9");
  assert.equal(resume.data.resume_token, "T".repeat(43));
  assert.deepEqual(resume.data.streams, { broadcast: { offset: 4, epoch: "b" } });
  socket.receive({ type: "welcome", ref: resume.id, data: { session: "s9", resumed: true, streams: {}, rooms: [] } });
  await reopened;
  const resent = socket.sent.filter((e) => e.type === "event");
  assert.deepEqual(resent.map((e) => e.id), stored, "the same ids: the server deduplicates a copy it already had");
  for (const e of resent) socket.receive({ type: "ack", ref: e.id });
  await second.persisted();
  assert.deepEqual(store.state.outgoing, [], "confirmed: nothing left to resend");
  assert.deepEqual(errors, []);
  await second.close();
  await flush();
  await second.persisted();
  await flush();
  assert.equal(store.state, null, "close() forgets the session");
  await first.close();
});
