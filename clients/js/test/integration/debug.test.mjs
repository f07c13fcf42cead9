// The debug hook (`debug: true`), dropConnection(), nextAttemptAt and
// ConnectError, against a real server under Node.
import { after, afterEach, before, test } from "node:test";
import assert from "node:assert/strict";
import { ConnectError, devtoolsHook, HOOK_NAME, MAX_ENVELOPES, MAX_STATES } from "../../dist/index.js";
import { client, closeClients, freePort, Server, sleep, waitFor } from "../helpers.mjs";

let server;
before(async () => {
  server = await Server.start();
});
afterEach(async () => {
  await closeClients();
  delete globalThis[HOOK_NAME];
});
after(async () => {
  await server?.stop();
});

test("debug: true registers on the hook and reports states, envelopes both ways and a status, tokens redacted", async () => {
  const events = [];
  devtoolsHook().listeners.add((event) => events.push(event));
  const quiet = client(server.url);
  const c = client(server.url, { debug: true, rooms: ["feed"], token: "secret-token-value" });
  await c.connect();
  await c.publish("feed", "tick", { n: 1, nested: { password: "hunter2", api_token: "t" } }, { ack: true });
  await waitFor(() => events.some((e) => e.type === "status" && e.status.streams["room:feed"]?.offset === 1), { what: "a status" });

  const hook = globalThis[HOOK_NAME];
  assert.equal(hook.clients.length, 1, "only the debug client");
  const [record] = hook.clients;
  assert.equal(record.url, server.url);
  assert.deepEqual(record.states.map((s) => s.state), ["connecting", "open"]);
  const kinds = record.envelopes.map(({ direction, envelope }) => `${direction} ${envelope.type}`);
  for (const expected of ["out hello", "in welcome", "out event", "in ack", "in event"]) assert.ok(kinds.includes(expected), kinds.join());
  const hello = record.envelopes.find(({ envelope }) => envelope.type === "hello").envelope;
  assert.equal(hello.data.token, "[redacted]");
  const welcome = record.envelopes.find(({ envelope }) => envelope.type === "welcome").envelope;
  assert.equal(welcome.data.resume_token, "[redacted]");
  const sent = record.envelopes.find(({ envelope }) => envelope.type === "event" && envelope.ack === true).envelope;
  assert.deepEqual(sent.data, { n: 1, nested: { password: "[redacted]", api_token: "[redacted]" } });
  const everything = JSON.stringify(hook.clients.map((r) => ({ ...r, status: r.status() })));
  for (const secret of ["secret-token-value", "hunter2", c.core.resumeToken]) assert.ok(!everything.includes(secret), secret);

  const status = record.status();
  assert.equal(status.state, "open");
  assert.equal(status.session, c.session);
  assert.deepEqual(status.rooms, ["feed"]);
  assert.deepEqual(status.pending, []);
  assert.deepEqual(events[0], { type: "client", client: record.id, url: server.url, at: record.createdAt });
  await quiet.close();
});

test("the hook's buffers are bounded", async () => {
  const c = client(server.url, { debug: true });
  await c.connect();
  for (let i = 0; i < MAX_ENVELOPES; i++) c.ping();
  await waitFor(() => globalThis[HOOK_NAME].clients[0].envelopes.length === MAX_ENVELOPES, { what: "a full ring" });
  for (let i = 0; i < 60; i++) {
    c.reconnect(); // four states each: disconnected, reconnecting, connecting, open
    await waitFor(() => c.state === "open", { what: "reopened" });
  }
  await sleep(50);
  const [record] = globalThis[HOOK_NAME].clients;
  assert.equal(record.envelopes.length, MAX_ENVELOPES);
  assert.ok(record.states.length <= MAX_STATES);
  assert.ok(record.states.length >= MAX_STATES - 3, `${record.states.length} states kept`);
});

test("dropConnection(): 1006, reconnecting with nextAttemptAt, then resumed", async () => {
  const c = client(server.url, { backoff: { initial: 300, max: 300, jitter: 0 } });
  const closes = [];
  c.onClose((code) => closes.push(code));
  await c.connect();
  const session = c.session;
  assert.equal(c.nextAttemptAt, null);
  const before = Date.now();
  c.dropConnection();
  assert.equal(c.state, "reconnecting");
  assert.deepEqual(closes, [1006]);
  assert.ok(c.nextAttemptAt >= before + 300 && c.nextAttemptAt <= Date.now() + 300, `${c.nextAttemptAt - before}`);
  const resumed = new Promise((resolve) => c.onOpen((info) => resolve(info.resumed)));
  assert.equal(await resumed, true);
  assert.equal(c.session, session);
  assert.equal(c.nextAttemptAt, null);
});

test("an attempt that never opens is a ConnectError (code 1006) to onError, and retried", async () => {
  const port = await freePort(); // nothing listens
  const c = client(`ws://127.0.0.1:${port}/ws`, { backoff: { initial: 20, max: 20, jitter: 0 } });
  const errors = [];
  c.onError((error) => errors.push(error));
  void c.connect().catch(() => undefined);
  await waitFor(() => errors.length >= 2, { what: "two failed attempts" });
  assert.ok(errors.every((error) => error instanceof ConnectError && error.code === 1006), errors.map(String).join());
  assert.match(errors[0].message, /did not open/);
  assert.equal(c.stats.connections, 0);
});
