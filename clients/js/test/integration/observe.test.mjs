// Observability in the TypeScript client against a real server: the `trace`
// field (supplied by the `trace` option, kept on received events) and the
// `slow` event of an acked send or call whose answer is late.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { client, closeClients, Server, waitFor } from "../helpers.mjs";

const TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

let server;
before(async () => {
  server = await Server.start();
});
after(async () => {
  await closeClients();
  await server?.stop();
});

for (const codec of ["json", "msgpack"]) {
  test(`${codec}: a supplied trace reaches the room's members`, async () => {
    const sender = client(server.url, { codec, trace: () => ({ traceparent: TRACEPARENT, tracestate: "k=v" }) });
    const receiver = client(server.url, { codec });
    await sender.connect();
    await receiver.connect();
    const got = [];
    await receiver.subscribe("traced", (message) => got.push(message));
    await sender.publish("traced", "note", 1, { ack: true });
    await waitFor(() => got.length === 1, { what: "the room event" });
    // The server does not trace here: the sender's context passes unchanged.
    assert.deepEqual(got[0].trace, { traceparent: TRACEPARENT, tracestate: "k=v" });
    assert.deepEqual(got[0].envelope.trace, got[0].trace);
  });
}

test("an invalid supplied trace is not sent", async () => {
  const sender = client(server.url, { trace: () => "00-BAD" });
  const receiver = client(server.url);
  await sender.connect();
  await receiver.connect();
  const got = [];
  await receiver.subscribe("untraced", (message) => got.push(message));
  await sender.publish("untraced", "note", 1, { ack: true });
  await waitFor(() => got.length === 1, { what: "the room event" });
  assert.equal(got[0].trace, undefined);
});

test("slow: an acked call answered later than slowAckMs fires once; a quick one never", async () => {
  const c = client(server.url, { slowAckMs: 150 });
  const slow = [];
  c.onSlow((event) => slow.push(event));
  await c.connect();
  await c.call("incr", { key: "quick", delay: 0 });
  await c.send("record", { seq: 1 }, { ack: true });
  await c.call("incr", { key: "late", delay: 0.5 });
  assert.equal(slow.length, 1);
  assert.equal(slow[0].event, "incr");
  assert.equal(slow[0].thresholdMs, 150);
  assert.ok(slow[0].ms >= 150, `${slow[0].ms}`);
  await new Promise((resolve) => setTimeout(resolve, 300));
  assert.equal(slow.length, 1);
});
