// Server restarts, graceful stops and tokens: what the client does when the
// server goes away or its credentials age.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { client, closeClients, jwt, secretFile, Server, sleep, waitFor } from "../helpers.mjs";

const servers = [];
async function start(args = []) {
  const server = await Server.start(args);
  servers.push(server);
  return server;
}
after(async () => {
  await closeClients();
  await Promise.all(servers.map((s) => s.stop()));
});

test("a graceful stop closes with 4500; the client waits the hint (N to 2N) and resumes", async () => {
  const server = await start(["--reconnect-hint", "0.4"]);
  const c = client(server.url);
  const closes = [];
  c.onClose((code, reason) => closes.push([code, reason, Date.now()]));
  const attempts = [];
  c.onState((state) => state === "connecting" && attempts.push(Date.now()));
  await c.connect();
  await server.restart();
  await waitFor(() => c.state === "open" && c.stats.reconnects === 1, { what: "the reconnect" });
  assert.equal(closes[0][0], 4500);
  assert.deepEqual(JSON.parse(closes[0][1]), { retry_after_ms: 400 });
  // The first attempt after the close waited the hint, not the 20 ms backoff.
  const waited = attempts[1] - closes[0][2];
  assert.ok(waited >= 390 && waited < 1200, `waited ${waited} ms`);
  await c.close();
});

test("a restart with in-memory history: recovered false (onLost) for every stream, then live again", async () => {
  const server = await start(["--reconnect-hint", "0.05"]);
  const c = client(server.url);
  const lost = [];
  c.onLost((stream, reason) => lost.push(stream));
  const seen = [];
  await c.connect();
  await c.subscribe("news", (message) => seen.push([message.epoch, message.offset, message.data.n]));
  await c.call("feed", { room: "news", count: 3, interval: 0.001 });
  await waitFor(() => seen.length === 3, { what: "the first feed" });
  const before = c.session;
  const opens = [];
  c.onOpen((info) => opens.push(info)); // before the restart: the client may be back before it returns
  await server.restart();
  const [info] = await waitFor(() => opens.length > 0 && opens, { what: "the welcome after the restart" });
  assert.equal(info.resumed, false); // the session died with the process
  assert.notEqual(c.session, before);
  assert.deepEqual(lost.sort(), ["broadcast", "direct", "room:news"]);
  assert.equal(c.stats.streamsLost, 3);
  await c.call("feed", { room: "news", count: 2, interval: 0.001 });
  await waitFor(() => seen.length === 5, { what: "the second feed" });
  assert.deepEqual(seen.slice(3).map(([, offset, n]) => [offset, n]), [[1, 1], [2, 2]]);
  assert.notEqual(seen[3][0], seen[0][0]); // a new epoch
  await c.close();
});

test("tokens: the provider is called on every connect and before exp; auth refreshes in band", async () => {
  const secret = "s3cret-for-tests-only-0123456789";
  const server = await start(["--jwt-secret", secretFile(secret)]);
  const issued = [];
  const provider = async () => {
    const exp = Math.floor(Date.now() / 1000) + 3;
    issued.push(exp);
    return jwt(secret, { sub: "alice", exp });
  };
  const c = client(server.url, { token: provider, refreshBefore: 1500 });
  const closes = [];
  const errors = [];
  c.onClose((code) => closes.push(code));
  c.onError((error) => errors.push(error));
  await c.connect();
  assert.deepEqual(await c.call("whoami"), { session: c.session, user: "alice" });
  // The first token expires 3 s after issue; stay connected across several.
  await sleep(5500);
  assert.deepEqual(closes, []);
  assert.deepEqual(errors, []);
  assert.ok(issued.length >= 3, `only ${issued.length} tokens`);
  assert.equal((await c.call("whoami")).user, "alice");
  const before = issued.length;
  c.reconnect();
  await waitFor(() => c.stats.reconnects === 1 && c.state === "open", { what: "the reconnect" });
  assert.equal(issued.length, before + 1);
  await c.close();
});

test("without a token the server refuses with 4100 and the client stops (no reconnect loop)", async () => {
  const server = await start(["--jwt-secret", secretFile("another-secret-0123456789abcdef-0123456789")]);
  const c = client(server.url);
  const closes = [];
  c.onClose((code) => closes.push(code));
  await assert.rejects(c.connect(), /not reconnecting after close code 4100/);
  assert.equal(c.state, "closed");
  assert.deepEqual(closes, [4100]);
});

test("an upgrade refused with 503 and Retry-After (a draining node) waits S to 2S seconds", async () => {
  const { createServer } = await import("node:http");
  const refusals = [];
  const http = createServer((request, response) => {
    refusals.push(Date.now());
    response.writeHead(503, { "retry-after": "1", "content-type": "text/plain" });
    response.end("draining\n");
  });
  await new Promise((resolve) => http.listen(0, "127.0.0.1", resolve));
  try {
    const c = client(`ws://127.0.0.1:${http.address().port}/ws`);
    c.connect().catch(() => undefined);
    await waitFor(() => refusals.length >= 2, { timeout: 5000, what: "the second attempt" });
    const waited = refusals[1] - refusals[0];
    assert.ok(waited >= 1000 && waited < 2300, `waited ${waited} ms`);
    await c.close();
  } finally {
    http.closeAllConnections();
    await new Promise((resolve) => http.close(resolve));
  }
});
