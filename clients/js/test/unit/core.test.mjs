// The sans-I/O core: every rule without a socket or a clock.
import { test } from "node:test";
import assert from "node:assert/strict";
import { ClientCore, checkValue, DataModelError } from "../../dist/index.js";

function makeCore(options = {}) {
  let n = 0;
  return new ClientCore(options, () => `c${++n}`);
}

const of = (actions, kind) => actions.filter((a) => a.kind === kind);
const sent = (actions) => of(actions, "transmit").map((a) => a.envelope);

function welcome(core, data, now = 1000) {
  const [hello] = sent(core.connected(now));
  return core.receive(
    {
      type: "welcome",
      id: "w",
      timestamp: now,
      ref: hello.id,
      data: { session: "s1", resumed: false, streams: {}, rooms: [], ...data },
    },
    now,
  );
}

function event(stream, offset, extra = {}) {
  return { type: "event", id: `${stream}-${offset}`, timestamp: 1, stream, offset, epoch: "e1", event: "x", data: offset, ...extra };
}

test("hello presents positions, rooms, and the resume token once the welcome gave one", () => {
  const core = makeCore();
  core.subscribe("chat", 0);
  let [hello] = sent(core.connected(0, "tok"));
  assert.deepEqual(hello.data, { session: null, streams: {}, rooms: ["chat"], token: "tok" });
  core.receive({ type: "welcome", id: "w", timestamp: 0, ref: hello.id, data: {
    session: "s1", resume_token: "R".repeat(43), resumed: false, rooms: ["chat"],
    streams: { direct: { offset: 0, epoch: "d", recovered: true }, "room:chat": { offset: 4, epoch: "r", recovered: true } },
  } }, 0);
  core.disconnected(1);
  [hello] = sent(core.connected(2));
  assert.deepEqual(hello.data, {
    session: "s1", resume_token: "R".repeat(43), rooms: ["chat"],
    streams: { direct: { offset: 0, epoch: "d" }, "room:chat": { offset: 4, epoch: "r" } },
  });
});

test("a server without resume tokens: no resume_token in hello; a new session forgets the old token", () => {
  const core = makeCore();
  welcome(core, {});
  core.disconnected(0);
  assert.equal(sent(core.connected(0))[0].data.resume_token, undefined);
  const other = makeCore();
  welcome(other, { resume_token: "A".repeat(43) });
  other.disconnected(0);
  const [hello] = sent(other.connected(0));
  other.receive({ type: "welcome", id: "w2", timestamp: 0, ref: hello.id, data: { session: "s2", resumed: false } }, 0);
  assert.equal(other.resumeToken, null);
});

test("events: in order delivered, duplicates dropped, a gap reconnects, placeholders skipped", () => {
  const core = makeCore();
  welcome(core, { streams: { "room:a": { offset: 0, epoch: "e1", recovered: true } } });
  assert.equal(of(core.receive(event("room:a", 1), 0), "deliver").length, 1);
  assert.equal(of(core.receive(event("room:a", 1), 0), "deliver").length, 0);
  const placeholder = { type: "event", id: "p", timestamp: 1, stream: "room:a", offset: 2, epoch: "e1", code: 4302 };
  assert.deepEqual(core.receive(placeholder, 0), []);
  const gap = core.receive(event("room:a", 4), 0);
  assert.equal(of(gap, "reconnect")[0].code, 4401);
  assert.equal(of(gap, "deliver").length, 0);
  assert.deepEqual(core.positions.get("room:a"), { offset: 2, epoch: "e1" });
});

test("an epoch change reports the stream lost and continues in the new epoch", () => {
  const core = makeCore();
  welcome(core, { streams: { broadcast: { offset: 5, epoch: "e0", recovered: true } } });
  const actions = core.receive(event("broadcast", 1), 0);
  assert.equal(of(actions, "lost")[0].stream, "broadcast");
  assert.equal(of(actions, "deliver").length, 1);
});

test("resume: recovered keeps our position, not recovered reports and adopts the welcome's", () => {
  const core = makeCore();
  welcome(core, { streams: { direct: { offset: 0, epoch: "d1", recovered: true }, broadcast: { offset: 0, epoch: "b1", recovered: true } } });
  core.receive(event("direct", 1, { epoch: "d1" }), 0);
  core.disconnected(0);
  const [hello] = sent(core.connected(0));
  const actions = core.receive({ type: "welcome", id: "w", timestamp: 0, ref: hello.id, data: {
    session: "s1", resumed: true,
    streams: { direct: { offset: 9, epoch: "d1", recovered: true }, broadcast: { offset: 0, epoch: "b2", recovered: false } },
  } }, 0);
  assert.deepEqual(of(actions, "lost").map((a) => a.stream), ["broadcast"]);
  assert.deepEqual(core.positions.get("direct"), { offset: 1, epoch: "d1" });
  assert.deepEqual(core.positions.get("broadcast"), { offset: 0, epoch: "b2" });
});

test("the offline queue flushes by priority then order; acked sends retry with the same id", () => {
  const core = makeCore({ retryInitialMs: 100 });
  const [a] = core.send("a", 1, 0, { ack: true });
  const [b] = core.send("b", 2, 0, { priority: 5 });
  const [c] = core.send("c", 3, 0, { ack: true });
  assert.equal(core.queueLength, 3);
  const flushed = sent(welcome(core, {}, 10)).map((e) => e.id);
  assert.deepEqual(flushed, [b, a, c]);
  assert.deepEqual(sent(core.tick(50)), []);
  assert.deepEqual(sent(core.tick(111)).map((e) => e.id), [a, c]);
  const done = core.receive({ type: "ack", id: "k", timestamp: 0, ref: a }, 120);
  assert.deepEqual(of(done, "outcome")[0], { kind: "outcome", id: a, status: "acked", data: undefined });
  assert.deepEqual(core.receive({ type: "ack", id: "k2", timestamp: 0, ref: a }, 121), []); // one outcome only
  // Disconnected: in flight goes back to the queue and is re-sent with its id.
  core.disconnected(130);
  assert.deepEqual(sent(welcome(core, {}, 140)).map((e) => e.id), [c]);
});

test("deadline and ttl expire queued messages with exactly one outcome", () => {
  const core = makeCore();
  const [a] = core.send("a", null, 0, { ack: true, timeoutMs: 100 });
  const [b] = core.send("b", null, 0, { ttl: 50 });
  const out = of(core.tick(100), "outcome");
  assert.deepEqual(out.map((o) => [o.id, o.status, o.code]), [[a, "expired", 4303], [b, "expired", 4302]]);
  assert.equal(core.queueLength, 0);
  assert.equal(core.nextWakeup(), null);
});

test("errors are final outcomes; results answer calls", () => {
  const core = makeCore();
  welcome(core, {});
  const [id] = core.call("add", [1, 2], 0);
  assert.deepEqual(of(core.receive({ type: "result", id: "r", timestamp: 0, ref: id, data: 3 }, 0), "outcome")[0].data, 3);
  const [bad] = core.send("x", null, 0, { ack: true });
  const [o] = of(core.receive({ type: "error", id: "e", timestamp: 0, ref: bad, code: 4301, data: { name: "no_handler", message: "none" } }, 0), "outcome");
  assert.deepEqual([o.status, o.code, o.message], ["rejected", 4301, "none"]);
});

test("outgoing data outside the data model is refused locally, not sent", () => {
  const core = makeCore();
  welcome(core, {});
  for (const data of [NaN, Infinity, 2 ** 53, -(2 ** 60), 1e300, 10n, new Date(0), () => 1, [undefined], "\ud800", { k: new Map() }]) {
    const [, actions] = core.send("x", data, 0, { ack: true });
    assert.equal(sent(actions).length, 0, String(data));
    assert.equal(of(actions, "outcome")[0].code, 4001, String(data));
  }
  const [, ok] = core.send("x", { a: undefined, b: [1.5, -0, 2 ** 53 - 1, null, "é😀"], c: Object.create(null) }, 0);
  assert.equal(sent(ok).length, 1);
  let deep = 1;
  for (let i = 0; i < 62; i++) deep = [deep];
  assert.equal(checkValue(deep), 63); // innermost value at level 64
  assert.throws(() => checkValue([deep]), DataModelError);
  assert.throws(() => checkValue(new Array(10).fill(0), { maxDepth: 64, maxValues: 10 }), /too many values/);
  const limited = makeCore({ encodedSize: () => 2_000_000 });
  const [, big] = limited.send("x", "y", 0);
  assert.equal(of(big, "outcome")[0].code, 4005);
});

test("welcome limits tighten the local check", () => {
  const core = makeCore();
  welcome(core, { limits: { max_message_size: 100, max_pending: 10, max_depth: 3, max_values: 5 } });
  assert.equal(of(core.send("x", [[1]], 0)[1], "outcome")[0].code, 4001);
  assert.equal(of(core.send("x", [1, 2, 3, 4, 5], 0)[1], "outcome")[0].code, 4001);
  assert.equal(sent(core.send("x", [1, 2, 3], 0)[1]).length, 1);
});

test("acks of direct events: batched, cumulative for the finished prefix, by ref beyond it", () => {
  const core = makeCore({ ackBatchMs: 50 });
  welcome(core, { streams: { direct: { offset: 0, epoch: "e1", recovered: true } } });
  const e = [1, 2, 3, 4].map((n) => event("direct", n, { ack: true }));
  for (const ev of e) core.receive(ev, 0);
  assert.deepEqual(core.acknowledge(e[0], 0), []);
  core.acknowledge(e[1], 10);
  core.acknowledge(e[3], 20); // e[2] is still being handled
  assert.equal(core.nextWakeup(), 50);
  const acks = sent(core.tick(50));
  assert.deepEqual(acks.map((a) => [a.stream, a.offset, a.ref]), [["direct", 2, undefined], [undefined, undefined, "direct-4"]]);
  core.acknowledge(e[2], 60);
  assert.deepEqual(sent(core.tick(110)).map((a) => [a.stream, a.offset]), [["direct", 4]]);
  // A re-sent duplicate of an acknowledged event is acknowledged again.
  core.receive(e[1], 120);
  assert.deepEqual(sent(core.tick(170)).map((a) => [a.stream, a.offset]), [["direct", 4]]);
});

test("acks made while offline go out after the next welcome", () => {
  const core = makeCore({ ackBatchMs: 0 });
  welcome(core, { streams: { direct: { offset: 0, epoch: "e1", recovered: true } } });
  const ev = event("direct", 1, { ack: true });
  core.receive(ev, 0);
  core.disconnected(1);
  assert.deepEqual(core.acknowledge(ev, 2), []);
  const [hello] = sent(core.connected(3));
  const actions = core.receive({ type: "welcome", id: "w", timestamp: 3, ref: hello.id, data: {
    session: "s1", resumed: true, streams: { direct: { offset: 1, epoch: "e1", recovered: true } } } }, 3);
  assert.deepEqual(sent([...actions, ...core.tick(3)]).map((a) => [a.type, a.offset]), [["ack", 1]]);
});

test("subscribe answers adopt the position; refusals and server notices change rooms", () => {
  const core = makeCore();
  welcome(core, {});
  const [sub] = sent(core.subscribe("r", 0));
  const joined = core.receive({ type: "ack", id: "a", timestamp: 0, ref: sub.id, data: { stream: "room:r", offset: 7, epoch: "x", recovered: true } }, 0);
  assert.deepEqual(of(joined, "room")[0], { kind: "room", room: "r", joined: true });
  assert.deepEqual(core.positions.get("room:r"), { offset: 7, epoch: "x" });
  const [sub2] = sent(core.subscribe("no", 0));
  const refused = core.receive({ type: "error", id: "b", timestamp: 0, ref: sub2.id, code: 4102 }, 0);
  assert.deepEqual(of(refused, "room")[0], { kind: "room", room: "no", joined: false, code: 4102 });
  core.receive({ type: "unsubscribe", id: "n", timestamp: 0, room: "r" }, 0);
  assert.deepEqual(core.rooms, new Set());
  assert.equal(core.positions.has("room:r"), false);
});

test("the queue bound: reject-new or drop-oldest", () => {
  const reject = makeCore({ maxQueue: 1 });
  reject.send("a", null, 0);
  assert.equal(of(reject.send("b", null, 0)[1], "outcome")[0].code, 4206);
  const drop = makeCore({ maxQueue: 1, queuePolicy: "drop-oldest" });
  const [first] = drop.send("a", null, 0);
  const [, actions] = drop.send("b", null, 0);
  assert.deepEqual(of(actions, "outcome").map((o) => [o.id, o.code]), [[first, 4206]]);
});

test("server heartbeats are answered", () => {
  const core = makeCore();
  welcome(core, {});
  assert.deepEqual(sent(core.receive({ type: "heartbeat", id: "h", timestamp: 0 }, 0)).map((e) => e.ref), ["h"]);
  assert.deepEqual(core.receive({ type: "heartbeat", id: "h2", timestamp: 0, ref: "x" }, 0), []);
});

test("welcomes report room changes, not every room each time", () => {
  const core = makeCore();
  core.subscribe("a", 0);
  const first = welcome(core, { rooms: ["a"] });
  assert.deepEqual(of(first, "room"), [{ kind: "room", room: "a", joined: true }]);
  core.disconnected(1);
  const [hello] = sent(core.connected(2));
  const again = core.receive({ type: "welcome", id: "w2", timestamp: 2, ref: hello.id, data: { session: "s1", resumed: true, rooms: ["a", "b"], denied: {} } }, 2);
  assert.deepEqual(of(again, "room"), [{ kind: "room", room: "b", joined: true }]);
});

test("copies carry a deadline and a timestamp on the server's clock (protocol.md 6)", () => {
  const core = makeCore();
  const [hello] = sent(core.connected(1000));
  core.receive({ type: "welcome", id: "w", timestamp: 5000, ref: hello.id, data: { session: "s1", resumed: false } }, 1000);
  assert.equal(core.clockOffsetMs, 3999);
  const [, acked] = core.send("a", 1, 1000, { ack: true, timeoutMs: 100 });
  assert.deepEqual([sent(acked)[0].timestamp, sent(acked)[0].deadline], [4999, 100]);
  const [, timed] = core.send("b", 1, 1010, { ttl: 50 });
  assert.deepEqual([sent(timed)[0].timestamp, sent(timed)[0].deadline, sent(timed)[0].ttl], [5009, 50, 50]);
  const [, plain] = core.send("c", 1, 1020);
  assert.deepEqual([sent(plain)[0].timestamp, sent(plain)[0].deadline], [1020, undefined]);
  // A retry later: what is left of the deadline, on the same server-clock end.
  const [id, first] = core.call("m", null, 1000, { timeoutMs: 10000 });
  const [retry] = sent(core.tick(6000)).filter((e) => e.id === id);
  assert.deepEqual([retry.timestamp, retry.deadline], [9999, 5000]);
  assert.equal(sent(first)[0].timestamp + sent(first)[0].deadline, retry.timestamp + retry.deadline);
});

test("a placeholder with another code (4501: not encodable here) advances and reports a loss", () => {
  const core = makeCore();
  welcome(core, { streams: { "room:a": { offset: 0, epoch: "e1", recovered: true } } });
  const actions = core.receive({ type: "event", id: "p", timestamp: 1, stream: "room:a", offset: 1, epoch: "e1", code: 4501 }, 0);
  assert.deepEqual(actions.map((a) => a.kind), ["lost"]);
  assert.equal(of(core.receive(event("room:a", 2), 0), "deliver").length, 1);
});

test("extensions: asked for in every hello, only granted ones asked for are kept (protocol.md 4.4)", () => {
  const core = makeCore({ extensions: ["sign", "chunks"] });
  let [hello] = sent(core.connected(0));
  assert.deepEqual(hello.data.extensions, ["sign", "chunks"]);
  core.receive({ type: "welcome", id: "w", timestamp: 0, ref: hello.id, data: {
    session: "s1", streams: {}, rooms: [], extensions: { sign: { alg: "hmac" }, other: {}, chunks: 5 },
  } }, 0);
  assert.deepEqual([...core.extensions], [["sign", { alg: "hmac" }]]);
  core.disconnected(1);
  [hello] = sent(core.connected(2));
  core.receive({ type: "welcome", id: "w2", timestamp: 2, ref: hello.id, data: { session: "s1", streams: {}, rooms: [] } }, 2);
  assert.equal(core.extensions.size, 0, "a welcome without extensions grants none");
  const plain = makeCore();
  [hello] = sent(plain.connected(0));
  assert.equal("extensions" in hello.data, false);
});
