// Resume across cut TCP connections (through a proxy that resets them, as the
// chaos harness does): every offset once, in order; acked sends both ways
// under random cuts; RPC retried after a cut runs once.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { client, closeClients, CutProxy, Server, sleep, waitFor } from "../helpers.mjs";

let server;
let proxy;
before(async () => {
  server = await Server.start();
  proxy = await CutProxy.start(server.port);
});
after(async () => {
  await closeClients();
  await proxy?.close();
  await server?.stop();
});

/** Cut every proxied connection at random intervals until `stop()`. */
function cutter(minMs, maxMs) {
  let running = true;
  const done = (async () => {
    while (running) {
      await sleep(minMs + Math.random() * (maxMs - minMs));
      if (running) proxy.cutAll();
    }
  })();
  return async () => {
    running = false;
    await done;
  };
}

test("a room stream cut mid-way resumes with every offset once, in order", async () => {
  const before = proxy.cuts;
  const reader = client(proxy.url);
  const lost = [];
  reader.onLost((stream) => lost.push(stream));
  const seen = [];
  await reader.connect();
  await reader.subscribe("feed", (message) => seen.push([message.offset, message.data.n]));
  const publisher = client(server.url); // straight to the server: never cut
  await publisher.connect();
  const count = 400;
  await publisher.call("feed", { room: "feed", count, interval: 0.004 });
  const stop = cutter(60, 160);
  await waitFor(() => seen.length >= count, { timeout: 60000, what: `${count} room events (have ${seen.length})` });
  await stop();
  await sleep(100);
  assert.ok(proxy.cuts - before >= 5, `only ${proxy.cuts - before} cuts`);
  assert.ok(reader.stats.reconnects >= 5);
  const offsets = seen.map(([offset]) => offset);
  const start = offsets[0];
  assert.deepEqual(offsets, Array.from({ length: count }, (_, i) => start + i));
  assert.deepEqual(seen.map(([, n]) => n), Array.from({ length: count }, (_, i) => i + 1));
  assert.deepEqual(lost, []);
  await reader.close();
  await publisher.close();
});

test("acked sends both ways under random cuts: 300 each, nothing lost or duplicated", async () => {
  const c = client(proxy.url, { ackTimeout: 60000 });
  const lost = [];
  c.onLost((stream) => lost.push(stream));
  const received = [];
  c.on("direct", (message) => {
    assert.equal(message.stream, "direct");
    received.push(message.data.n);
  });
  await c.connect();
  const stop = cutter(80, 250);
  const count = 300;
  // Server to client: acknowledged by the client after the handler returned.
  const started = c.call("direct", { count, interval: 0.01 });
  // Client to server: each retried with its id until acknowledged.
  const outcomes = [];
  for (let seq = 1; seq <= count; seq++) {
    outcomes.push(c.send("record", { seq }, { ack: true }));
    if (seq % 10 === 0) await sleep(10);
  }
  const results = await Promise.all(outcomes);
  assert.ok(results.every((r) => r.status === "acked"));
  assert.equal(await started, "started");
  await waitFor(() => received.length >= count, { timeout: 60000, what: `direct messages (have ${received.length})` });
  await stop();
  assert.ok(c.stats.reconnects >= 3, `only ${c.stats.reconnects} reconnects`);
  const status = await waitFor(
    async () => {
      const s = await c.call("direct_status");
      return (s.acked ?? 0) + (s.failed ?? 0) >= count ? s : null;
    },
    { timeout: 30000, what: "the server's ack outcomes" },
  );
  assert.deepEqual(status, { acked: count });
  assert.deepEqual(received, Array.from({ length: count }, (_, i) => i + 1));
  const records = await c.call("records");
  assert.deepEqual(records, Array.from({ length: count }, (_, i) => i + 1));
  assert.deepEqual(lost, []);
  await c.close();
});

test("a call whose connection is cut while it runs is retried and runs once", async () => {
  const c = client(proxy.url);
  await c.connect();
  const key = `k-${Date.now()}`;
  const answer = c.call("incr", { key, delay: 0.4 });
  await sleep(100); // the server is running it now
  proxy.cutAll();
  assert.equal(await answer, 1);
  assert.equal(c.stats.reconnects, 1);
  assert.equal(await c.call("runs", key), 1);
  await c.close();
});
