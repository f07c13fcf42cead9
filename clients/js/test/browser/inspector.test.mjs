// The live inspector in headless Chromium: the login form (the key never in
// a URL), the connections and rooms tables, one connection's envelopes with
// secrets masked. WARPSOCKET_UPDATE_SCREENSHOT=1 rewrites docs/img/inspector.png.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { client, closeClients, freePort, REPO, Server, waitFor } from "../helpers.mjs";
import { launch } from "./chromium.mjs";

const KEY = "inspector-key-for-the-browser-test";
let server;
let origin;
let browser;
before(async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "warpsocket-inspect-"));
  const keyFile = path.join(dir, "key");
  writeFileSync(keyFile, `${KEY}\n`);
  const port = await freePort();
  origin = `http://127.0.0.1:${port}`;
  server = await Server.start(["--inspect-key-file", keyFile], port);
});
after(async () => {
  await browser?.close();
  await closeClients();
  await server?.stop();
});

test("the inspector shows connections, rooms and a connection's envelopes", async () => {
  const alice = client(server.url, { clientInfo: { name: "alice", version: "1" } });
  const bob = client(server.url);
  await alice.connect();
  await bob.connect();
  await alice.subscribe("lobby");
  await bob.subscribe("lobby");
  await alice.publish("lobby", "say", { text: "hello" }, { ack: true });

  browser = await launch();
  const { page, errors } = browser;
  const requested = [];
  page.on("request", (request) => requested.push(request.url()));
  await page.setViewportSize({ width: 1100, height: 700 });
  const answer = await page.goto(`${origin}/inspect`);
  assert.equal(answer.status(), 401);
  await page.fill("input[name=key]", "wrong key, surely");
  await page.click("button[type=submit]");
  assert.equal(await page.textContent("#error"), "Wrong key.");
  await page.fill("input[name=key]", KEY);
  await page.click("button[type=submit]");
  await page.waitForURL(`${origin}/inspect`);
  await waitFor(() => page.evaluate(() => document.querySelectorAll("#connections tbody tr").length === 2), {
    what: "two connections in the table",
  });
  assert.equal(await page.textContent("#health"), "ok");
  const rooms = await page.textContent("#rooms tbody");
  assert.match(rooms, /lobby/);
  assert.match(rooms, new RegExp(alice.session));

  // Choose alice's connection: its envelopes are recorded from now on.
  await page.click(`#connections tbody tr:has-text("${alice.session}")`);
  await waitFor(() => page.evaluate(() => document.getElementById("chosen").textContent.startsWith("of connection")), {
    what: "the chosen connection",
  });
  await alice.publish("lobby", "say", { text: "seen by the inspector", token: "s3cret-token" }, { ack: true });
  await waitFor(() => page.evaluate(() => document.getElementById("envelopes").textContent.includes("seen by the inspector")), {
    what: "the envelope in the page",
  });
  const envelopes = await page.textContent("#envelopes");
  assert.match(envelopes, /^(in|out) /m);
  assert.ok(!envelopes.includes("s3cret-token"), envelopes);
  assert.match(envelopes, /\[redacted\]/);
  assert.ok(requested.every((url) => !url.includes(KEY)), "the key is never in a URL");
  assert.deepEqual(errors, []);

  const shot = await page.screenshot({ fullPage: true });
  assert.equal(shot.subarray(1, 4).toString(), "PNG");
  const target =
    process.env.WARPSOCKET_UPDATE_SCREENSHOT === "1"
      ? path.join(REPO, "docs/img/inspector.png")
      : path.join(mkdtempSync(path.join(os.tmpdir(), "warpsocket-shot-")), "inspector.png");
  writeFileSync(target, shot);
  assert.ok(readFileSync(target).length > 1000);
});
