// The mock server (`twistd warpsocket --mock`, docs/mock.md) seen by the
// TypeScript client: templated events and RPC answers, then every fault of
// tests/mock_scenarios/every_fault.yaml and what the client recovers from it.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { client, closeClients, REPO, Server, sleep, waitFor } from "../helpers.mjs";

const SCENARIO = path.join(REPO, "tests/mock_scenarios/every_fault.yaml");

let server;
before(async () => {
  server = await Server.start(["--mock", SCENARIO]);
});
after(async () => {
  await closeClients();
  await server?.stop();
});

/** A client of alice with its events, opens, closes and lost streams recorded. */
async function alice({ rooms = [] } = {}) {
  const c = client(server.url, { token: "tok-alice" });
  const seen = [];
  const opens = [];
  const closes = [];
  const lost = [];
  c.on("*", (message) => seen.push(message));
  c.onOpen((info) => opens.push(info));
  c.onClose((code, reason) => closes.push([code, reason, Date.now()]));
  c.onLost((stream) => lost.push(stream));
  await c.connect();
  for (const room of rooms) await c.subscribe(room);
  const events = (name) => seen.filter((m) => m.event === name);
  return { c, seen, opens, closes, lost, events };
}

async function control(kind, body, contentType = "application/json") {
  const response = await fetch(`http://127.0.0.1:${server.port}/mock/${kind}`, {
    method: "POST",
    headers: { "content-type": contentType },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  return [response.status, await response.json()];
}

test("templated events and RPC answers", async () => {
  const { c, events } = await alice({ rooms: ["feed"] });
  await waitFor(() => events("item").length === 3 && events("note").length === 1, { what: "note and items" });
  assert.deepEqual(events("note")[0].data, { session: c.session, user: "alice", text: "hello alice" });
  assert.equal(events("note")[0].stream, "direct");
  // {{seq}} counts the rule's firings over the server's life: consecutive numbers.
  const first = events("item")[0].data.n;
  assert.deepEqual(events("item").map((m) => [m.stream, m.data.n]), [0, 1, 2].map((i) => ["room:feed", first + i]));
  c.emit("echo", { text: "hi" });
  await waitFor(() => events("echoed").length === 1, { what: "the echo" });
  assert.deepEqual(events("echoed")[0].data, { text: "hi", seq: 1 });
  assert.deepEqual(await c.call("add", { a: 4 }), { sum: 4, by: "alice" });
  await assert.rejects(c.call("broken", { why: "test" }), (error) => error.code === 4350 && /broken: test/.test(error.message));
  await c.close();
});

test("cut and close: the client resumes with everything recovered", async () => {
  const { c, opens, closes, lost } = await alice({ rooms: ["feed"] });
  const session = c.session;
  c.emit("cut");
  await waitFor(() => opens.length === 2 && c.state === "open", { what: "the resume after the cut" });
  assert.equal(opens[1].resumed, true);
  c.emit("close");
  await waitFor(() => opens.length === 3 && c.state === "open", { what: "the resume after the close" });
  assert.equal(closes.at(-1)[0], 4999);
  assert.equal(closes.at(-1)[1], "mock close");
  assert.equal(opens[2].resumed, true);
  assert.equal(c.session, session);
  assert.deepEqual(lost, []);
  await c.close();
});

test("delay and stall hold the server's frames; nothing is lost", async () => {
  const { c, opens } = await alice();
  await sleep(300); // past the timeline's delay of the first connection
  c.emit("stall");
  await sleep(50);
  let started = Date.now();
  assert.deepEqual(await c.call("add", { a: 1 }), { sum: 1, by: "alice" });
  assert.ok(Date.now() - started >= 400, `stalled only ${Date.now() - started} ms`);
  c.emit("delay");
  await sleep(50);
  started = Date.now();
  await c.call("add", { a: 2 });
  assert.ok(Date.now() - started >= 490, `delayed only ${Date.now() - started} ms`);
  c.emit("clear");
  await sleep(600);
  started = Date.now();
  await c.call("add", { a: 3 });
  assert.ok(Date.now() - started < 400, `still slow: ${Date.now() - started} ms`);
  assert.equal(opens.length, 1);
  await c.close();
});

test("restart: a new epoch, recovered false (onLost) for every stream, then live again", async () => {
  const { c, opens, lost, events } = await alice({ rooms: ["feed"] });
  await waitFor(() => events("item").length === 3, { what: "the feed" });
  const before = c.session;
  c.emit("restart");
  await waitFor(() => opens.length === 2 && c.state === "open", { what: "the welcome after the restart" });
  assert.equal(opens[1].resumed, false);
  assert.notEqual(c.session, before);
  assert.deepEqual(lost.sort(), ["broadcast", "direct", "room:feed"]);
  // The new server plays the scenario again: a new feed, in a new epoch, from offset 1.
  await waitFor(() => events("item").length === 6, { what: "the new feed" });
  const items = events("item");
  const n = items[3].data.n;
  assert.deepEqual(items.slice(3).map((m) => [m.offset, m.data.n]), [[1, n], [2, n + 1], [3, n + 2]]);
  assert.notEqual(items[3].epoch, items[0].epoch);
  await c.close();
});

test("go_away: 4500 with the hint, then a resume after it", async () => {
  const { c, opens, closes } = await alice();
  c.emit("go_away");
  await waitFor(() => opens.length === 2 && c.state === "open", { what: "the resume after going away" });
  assert.equal(closes[0][0], 4500);
  assert.deepEqual(JSON.parse(closes[0][1]), { retry_after_ms: 300 });
  assert.equal(opens[1].resumed, true);
  await c.close();
});

test("refuse_tokens: one hello refused with 4101, the next one resumes", async () => {
  const { c, opens, closes } = await alice();
  c.emit("refuse");
  await sleep(100);
  c.emit("cut");
  await waitFor(() => opens.length === 2 && c.state === "open", { what: "the resume after the refusal" });
  assert.ok(closes.some(([code]) => code === 4101), JSON.stringify(closes));
  assert.equal(opens[1].resumed, true);
  await c.close();
});

test("the control endpoint: a fault on command, and bad requests refused with 4xx", async () => {
  const { c, opens } = await alice();
  assert.deepEqual((await control("fault", { fault: "explode" }))[0], 400);
  assert.deepEqual((await control("fault", "{nope"))[0], 400);
  assert.deepEqual((await control("fault", { fault: "cut" }, "text/plain"))[0], 415);
  assert.deepEqual((await control("fault", { fault: "cut", session: "nobody" }))[0], 404);
  assert.equal(opens.length, 1); // none of that touched anyone
  const [status, body] = await control("fault", { fault: "cut", session: c.session });
  assert.deepEqual([status, body], [200, { ok: true, fault: "cut", affected: 1 }]);
  await waitFor(() => opens.length === 2 && c.state === "open", { what: "the resume" });
  assert.equal(opens[1].resumed, true);
  await c.close();
});
