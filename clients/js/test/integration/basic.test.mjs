// The client against a real server: connect, calls, acked sends, rooms, states, codecs.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import * as msgpack from "@msgpack/msgpack";
import { DeliveryError, ErrorCode } from "../../dist/index.js";
import { client, closeClients, Server, waitFor } from "../helpers.mjs";

let server;
before(async () => {
  server = await Server.start();
});
after(async () => {
  await closeClients();
  await server?.stop();
});

for (const codec of ["json", "msgpack", "protobuf"]) {
  test(`${codec}: connect, call, acked send, room publish and receive, close`, async () => {
    const states = [];
    const c = client(server.url, { codec, ...(codec === "msgpack" ? {} : {}) });
    c.onState((state, previous) => states.push(`${previous}->${state}`));
    await c.connect();
    assert.equal(c.state, "open");
    assert.match(c.session, /.+/);
    assert.equal(await c.call("add", [1, 2, 3]), 6);
    assert.deepEqual(await c.call("echo", { a: [1, 1.5, "é😀", null, true] }), { a: [1, 1.5, "é😀", null, true] });
    const result = await c.send("record", { seq: 1 }, { ack: true });
    assert.equal(result.status, "acked");
    assert.deepEqual(await c.call("records"), [1]);
    const got = [];
    await c.subscribe("lobby", (message) => got.push([message.event, message.data, message.room]));
    await c.publish("lobby", "say", { text: "hi" }, { ack: true });
    await waitFor(() => got.length === 1, { what: "the room event" });
    assert.deepEqual(got, [["say", { text: "hi" }, "lobby"]]);
    await assert.rejects(c.call("nope"), (error) => error instanceof DeliveryError && error.code === ErrorCode.NO_HANDLER);
    await assert.rejects(c.send("x", { bad: NaN }, { ack: true }), (error) => error.code === ErrorCode.BAD_ENVELOPE);
    assert.ok(c.stats.messagesIn > 0 && c.stats.messagesOut > 0);
    await c.close();
    assert.deepEqual(states, ["disconnected->connecting", "connecting->open", "open->closed"]);
    await assert.rejects(c.send("x", 1), /closed/);
  });
}

test("msgpack can be given as a module (the browser bundle without a module resolver)", async () => {
  const c = client(server.url, { codec: "msgpack", msgpack });
  await c.connect();
  assert.equal(await c.call("add", [2, 2]), 4);
  await c.close();
});

test("emitWithAck resolves with the ack; fire-and-forget resolves when written", async () => {
  const c = client(server.url);
  const queued = c.send("record", { seq: 7 }); // offline: queued, sent on connect
  assert.equal(c.queueLength, 1);
  await c.connect();
  assert.equal((await queued).status, "sent");
  assert.equal(await c.emitWithAck("record", { seq: 8 }), null);
  await waitFor(async () => (await c.call("records")).length === 2, { what: "both records" });
  assert.deepEqual(await c.call("records"), [7, 8]);
  await c.close();
});

test("heartbeats: ping measures the round trip", async () => {
  const c = client(server.url);
  await c.connect();
  c.ping();
  await waitFor(() => c.stats.rttMs !== null, { what: "rtt" });
  assert.ok(c.stats.rttMs >= 0);
  await c.close();
});

test("a refused room rejects subscribe; states report every transition on reconnect", async () => {
  const c = client(server.url);
  const states = [];
  c.onState((state) => states.push(state));
  await c.connect();
  await assert.rejects(c.subscribe("x".repeat(300)), (error) => error.code === ErrorCode.BAD_ENVELOPE || error.code === ErrorCode.FORBIDDEN);
  c.reconnect();
  await waitFor(() => states.filter((s) => s === "open").length === 2, { what: "the reconnect" });
  assert.deepEqual(states, ["connecting", "open", "disconnected", "reconnecting", "connecting", "open"]);
  assert.equal(c.stats.reconnects, 1);
  assert.equal(c.stats.attempts, 2);
  await c.close();
});

test("maxAttempts: exactly that many attempts, then closed; a retry strategy decides the delays", async () => {
  const { freePort } = await import("../helpers.mjs");
  const port = await freePort(); // nothing listens there
  const delays = [];
  const c = client(`ws://127.0.0.1:${port}/ws`, {
    maxAttempts: 3,
    retryStrategy: (attempt, code) => {
      delays.push([attempt, code]);
      return 10;
    },
  });
  const pending = c.send("x", 1, { ack: true });
  await assert.rejects(c.connect(), /gave up after 3 attempts/);
  await assert.rejects(pending, /gave up/);
  assert.equal(c.stats.attempts, 3);
  assert.equal(c.state, "closed");
  assert.deepEqual(delays, [[0, 1006], [1, 1006]]);
});

test("manual acks, out of order: by ref ahead of a pending one, cumulative once it is done", async () => {
  const c = client(server.url, { autoAck: false });
  const messages = [];
  c.on("direct", (message) => messages.push(message));
  await c.connect();
  await c.call("direct", { count: 5, interval: 0.001 });
  await waitFor(() => messages.length === 5, { what: "five direct messages" });
  assert.ok(messages.every((m) => m.needsAck));
  for (const message of messages.slice(1)) message.ack();
  await waitFor(async () => (await c.call("direct_status")).acked === 4, { what: "four acks by ref" });
  messages[0].ack();
  await waitFor(async () => (await c.call("direct_status")).acked === 5, { what: "the fifth ack" });
  await c.close();
});
