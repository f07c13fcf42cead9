// The bundle as a browser gets it: fetched from the server's /warpsocket.js,
// imported as an ES module, and used against that same server.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";
import WebSocket from "ws";
import { Server } from "../helpers.mjs";

let server;
before(async () => {
  server = await Server.start();
});
after(async () => {
  await server?.stop();
});

test("the served /warpsocket.js works as a module", async () => {
  const base = `http://127.0.0.1:${server.port}`;
  const response = await fetch(`${base}/warpsocket.js`);
  assert.equal(response.status, 200);
  assert.equal(response.headers.get("content-type"), "text/javascript; charset=utf-8");
  const code = await response.text();
  const map = await fetch(`${base}/warpsocket.js.map`);
  assert.equal(map.status, 200);
  assert.ok(Array.isArray((await map.json()).sources));
  const dir = mkdtempSync(path.join(os.tmpdir(), "warpsocket-bundle-"));
  writeFileSync(path.join(dir, "warpsocket.mjs"), code);
  const { WarpSocketClient } = await import(pathToFileURL(path.join(dir, "warpsocket.mjs")).href);
  // What a page does (a browser has a global WebSocket; here it is `ws`).
  const client = new WarpSocketClient(server.url, { WebSocket });
  const got = [];
  client.on("hello", (message) => got.push(message.data));
  await client.connect();
  await client.subscribe("page");
  await client.publish("page", "hello", { text: "from the bundle" }, { ack: true });
  assert.equal(await client.call("add", [20, 22]), 42);
  await new Promise((resolve) => setTimeout(resolve, 100));
  assert.deepEqual(got, [{ text: "from the bundle" }]);
  await client.close();
});
