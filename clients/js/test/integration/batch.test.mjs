// Batches against the real server (test/server_app.py): many acked sends in
// one task leave in one frame and are all acknowledged (the server's answer
// is one batch too); with batchWindowMs: null nothing is batched.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { client, closeClients, Server } from "../helpers.mjs";

let server;
before(async () => {
  server = await Server.start();
});
after(async () => {
  await closeClients();
  await server?.stop();
});

/** The server's batch frames in and out so far (its /metrics). */
async function serverBatches() {
  const text = await (await fetch(`http://127.0.0.1:${server.port}/metrics`)).text();
  const count = (name) => Number(text.match(new RegExp(`^${name}\\{type="batch"\\} (\\S+)$`, "m"))?.[1] ?? 0);
  return { in: count("warpsocket_messages_in_total"), out: count("warpsocket_messages_out_total") };
}

for (const codec of ["json", "msgpack", "protobuf"]) {
  test(`${codec}: 20 acked sends in one task leave in one batch and are all acked`, async () => {
    const c = client(server.url, { codec });
    await c.connect();
    assert.deepEqual(c.extensions.get("batch"), { max_envelopes: 64, max_bytes: 65536 });
    const frames = c.stats.batchFrames;
    const before = await serverBatches();
    const sends = [];
    for (let seq = 0; seq < 20; seq++) sends.push(c.send("record", { seq }, { ack: true }));
    const results = await Promise.all(sends);
    assert.equal(results.length, 20);
    assert.equal(c.stats.batchFrames - frames, 1);
    const afterwards = await serverBatches();
    assert.deepEqual({ in: afterwards.in - before.in, out: afterwards.out - before.out }, { in: 1, out: 1 });
    assert.deepEqual(await c.call("records"), Array.from({ length: 20 }, (_, i) => i));
  });
}

test("a positive window gathers sends across tasks", async () => {
  const c = client(server.url, { batchWindowMs: 50 });
  await c.connect();
  const frames = c.stats.batchFrames;
  const first = c.send("record", { seq: 0 }, { ack: true });
  await new Promise((resolve) => setTimeout(resolve, 5));
  const second = c.send("record", { seq: 1 }, { ack: true });
  await Promise.all([first, second]);
  assert.equal(c.stats.batchFrames - frames, 1);
});

test("batchWindowMs: null asks for no batch and sends each alone", async () => {
  const c = client(server.url, { batchWindowMs: null });
  await c.connect();
  assert.equal(c.extensions.has("batch"), false);
  await Promise.all([c.send("record", { seq: 0 }, { ack: true }), c.send("record", { seq: 1 }, { ack: true })]);
  assert.equal(c.stats.batchFrames, 0);
});
