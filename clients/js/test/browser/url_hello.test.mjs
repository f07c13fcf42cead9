// The hello in the upgrade request (protocol.md 4.5) in Chromium: a page's
// client, on the browser's own WebSocket, is welcomed with its hello in the
// URL (nothing sent before the welcome, no hello frame), and its resume
// after a drop goes as a frame, never in a URL. The page loads the bundle the
// server serves (/warpsocket.js); unit/bundle.test.mjs checks it is the
// sources' build.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { freePort, Server, waitFor } from "../helpers.mjs";
import { launch, startPageClient } from "./chromium.mjs";

/** A broken handshake hangs rather than throws: fail in time instead. */
const LIMIT = { timeout: 60000 };

let server;
let origin;
let browser;
before(async () => {
  const port = await freePort();
  origin = `http://127.0.0.1:${port}`;
  server = await Server.start(["--allow-origin", origin], port);
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

const helloOf = (url) => {
  const value = new URL(url).searchParams.get("hello");
  return value === null ? null : JSON.parse(Buffer.from(value, "base64url").toString("utf8"));
};

test("a page's client is welcomed with its hello in the URL; its resume goes as a frame", LIMIT, async () => {
  browser = await launch();
  const { page } = browser;
  const sockets = [];
  page.on("websocket", (ws) => {
    const socket = { url: ws.url(), sent: [], received: [] };
    ws.on("framesent", (frame) => socket.sent.push(JSON.parse(frame.payload)));
    ws.on("framereceived", (frame) => socket.received.push(JSON.parse(frame.payload)));
    sockets.push(socket);
  });
  await startPageClient(page, origin, server.url, { backoff: { initial: 100, max: 200 }, clientInfo: { name: "page", version: "1" } });
  assert.equal(await page.evaluate(() => window.client.state), "open");

  assert.equal(sockets.length, 1);
  const [first] = sockets;
  const hello = helloOf(first.url);
  assert.ok(hello !== null, `the hello in the URL: ${first.url}`);
  assert.equal(hello.type, "hello");
  assert.equal(hello.data.session, null);
  assert.deepEqual(hello.data.rooms, ["feed"]);
  assert.deepEqual(hello.data.client, { name: "page", version: "1" });
  assert.equal("token" in hello.data || "resume_token" in hello.data, false);
  await waitFor(() => first.received.length > 0, { what: "the welcome in the frame log" });
  assert.equal(first.received[0].type, "welcome", "the first message is the welcome");
  assert.equal(first.received[0].ref, hello.id);
  assert.equal(first.received[0].data.session, await page.evaluate(() => window.client.session));
  assert.ok(!first.sent.some((e) => e.type === "hello"), "no hello frame");
  assert.deepEqual(await page.evaluate(() => window.client.call("add", [2, 3])), 5);

  // A drop: the page resumes, its hello (session + resume token) as a frame.
  const session = await page.evaluate(() => window.client.session);
  await page.evaluate(() => window.client.dropConnection());
  await waitFor(() => page.evaluate(() => window.client.state === "open" && window.client.stats.reconnects === 1), {
    what: "the resume",
  });
  assert.equal(await page.evaluate(() => window.resumed), true);
  assert.equal(await page.evaluate(() => window.client.session), session);
  assert.equal(sockets.length, 2);
  assert.equal(sockets[1].url, server.url, "the resume dials the plain URL");
  const resumes = sockets[1].sent.filter((e) => e.type === "hello");
  assert.equal(resumes.length, 1);
  assert.equal(resumes[0].data.session, session);
  assert.match(resumes[0].data.resume_token, /^[A-Za-z0-9_-]{43}$/);
  assert.deepEqual(browser.errors, []);
  await page.evaluate(() => window.client.close());
});
