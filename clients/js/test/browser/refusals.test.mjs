// What a page sees when the server refuses it before the WebSocket opens:
// a refused Origin (HTTP 403 "4103 origin_rejected") and a certificate the
// browser does not trust. Browsers hide both causes: the page gets close
// 1006 with no reason, a ConnectError per attempt, and the client retries
// with backoff (docs/browser.md). A Node client shows the actual cause.
import { after, afterEach, before, test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import WebSocket from "ws";
import { readFileSync } from "node:fs";
import { client, closeClients, freePort, REPO, Server, waitFor } from "../helpers.mjs";
import { launch } from "./chromium.mjs";

let browser;
const servers = [];
afterEach(async () => {
  await browser?.close();
  browser = null;
  await closeClients();
});
after(async () => {
  for (const server of servers) await server.stop();
});

async function start(args, port) {
  const server = await Server.start(args, port);
  servers.push(server);
  return server;
}

/** A page of `origin` whose client dials `wsUrl`; what it saw after `attempts` attempts. */
async function refusedInPage(page, origin, wsUrl, attempts = 3) {
  await page.goto(`${origin}/healthz`);
  return page.evaluate(
    async ({ wsUrl, attempts }) => {
      const { WarpSocketClient, ConnectError } = await import("/warpsocket.js");
      const client = new WarpSocketClient(wsUrl, { backoff: { initial: 100, max: 200, jitter: 0 } });
      const seen = { closes: [], errors: [], states: [] };
      client.onClose((code, reason) => seen.closes.push([code, reason]));
      client.onError((error) =>
        seen.errors.push({ name: error.name, code: error.code, isConnectError: error instanceof ConnectError, message: error.message }),
      );
      client.onState((state) => seen.states.push(state));
      void client.connect().catch(() => undefined);
      await new Promise((resolve) => {
        const timer = setInterval(() => {
          if (client.stats.attempts > attempts) {
            clearInterval(timer);
            resolve();
          }
        }, 20);
      });
      seen.connections = client.stats.connections;
      seen.state = client.state;
      await client.close();
      return seen;
    },
    { wsUrl, attempts },
  );
}

function assertRefused(seen, attempts) {
  assert.equal(seen.connections, 0, "never welcomed");
  assert.ok(seen.closes.length >= attempts, `closes: ${JSON.stringify(seen.closes)}`);
  for (const close of seen.closes.slice(0, attempts)) assert.deepEqual(close, [1006, ""]);
  assert.ok(seen.errors.length >= attempts);
  for (const error of seen.errors.slice(0, attempts)) {
    assert.equal(error.name, "ConnectError");
    assert.equal(error.isConnectError, true);
    assert.equal(error.code, 1006);
  }
  // Retried with backoff, as after any 1006: never "open".
  assert.ok(!seen.states.includes("open"));
  assert.deepEqual(seen.states.slice(0, 4), ["connecting", "disconnected", "reconnecting", "connecting"]);
}

test("a refused Origin: the server says 403 4103 origin_rejected; the page sees 1006 and a ConnectError per attempt", async () => {
  const port = await freePort();
  const origin = `http://127.0.0.1:${port}`;
  const server = await start(["--allow-origin", "https://app.example"], port);

  // What the server answers (visible outside a browser).
  const status = await new Promise((resolve, reject) => {
    const socket = new WebSocket(server.url, ["warpsocket.v1.json"], { origin });
    socket.on("unexpected-response", (_request, response) => {
      resolve([response.statusCode, response.statusMessage]);
      socket.terminate();
    });
    socket.on("open", () => reject(new Error("opened")));
    socket.on("error", () => undefined);
  });
  assert.deepEqual(status, [403, "4103 origin_rejected"]);

  browser = await launch();
  assertRefused(await refusedInPage(browser.page, origin, server.url), 3);
  assert.deepEqual(browser.errors, []);
});

test("a certificate the browser does not trust: the page sees 1006 and a ConnectError per attempt; a client trusting the CA connects", async () => {
  const port = await freePort();
  const tlsPort = await freePort();
  const origin = `http://127.0.0.1:${port}`;
  const certs = path.join(REPO, "certs");
  const tls = `ssl:${tlsPort}:interface=127.0.0.1:privateKey=${certs}/server.key:certKey=${certs}/server.pem`;
  await start(["--allow-origin", origin, "--endpoint", tls], port);
  const wssUrl = `wss://localhost:${tlsPort}/ws`;

  // The endpoint works for a client that trusts the development CA.
  const ca = readFileSync(path.join(certs, "ca.pem"));
  class Trusting extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { ca });
    }
  }
  const trusting = client(wssUrl, { WebSocket: Trusting });
  await trusting.connect();
  assert.equal(trusting.state, "open");

  browser = await launch();
  assertRefused(await refusedInPage(browser.page, origin, wssUrl), 3);
  assert.deepEqual(browser.errors, []);
});
