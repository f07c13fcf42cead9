// The client in a real browser (headless Chromium) against a real
// `twistd warpsocket`: the network goes away and comes back, a frozen page
// resumes over a connection that died silently meanwhile. Every message once,
// in order, and the recovery starts from the page's events, not from a
// backoff step or the heartbeat timeout.
import { after, afterEach, before, test } from "node:test";
import assert from "node:assert/strict";
import { client, closeClients, CutProxy, freePort, Server, sleep, waitFor } from "../helpers.mjs";
import { launch, startPageClient } from "./chromium.mjs";

let server;
let origin;
let browser;
before(async () => {
  const port = await freePort();
  origin = `http://127.0.0.1:${port}`;
  server = await Server.start(["--allow-origin", origin], port);
});
afterEach(async () => {
  await browser?.close();
  browser = null;
  await closeClients();
});
after(async () => {
  await server?.stop();
});

/** Publish `ns` into room "feed" from Node (never offline), each confirmed. */
async function publish(publisher, ns) {
  for (const n of ns) await publisher.publish("feed", "tick", { n }, { ack: true });
}

function assertOnceInOrder(seen, count) {
  assert.deepEqual(seen.map(([, n]) => n), Array.from({ length: count }, (_, i) => i + 1));
  const offsets = seen.map(([offset]) => offset);
  assert.deepEqual(offsets, Array.from({ length: count }, (_, i) => offsets[0] + i));
}

test("offline in the page: no attempts meanwhile, back online: a dial within a second, every message once in order", async () => {
  browser = await launch();
  const { page, context } = browser;
  // A 20 s backoff: only the `online` event can explain a prompt reconnect.
  await startPageClient(page, origin, server.url, { backoff: { initial: 20000, max: 20000, jitter: 0 }, livenessTimeout: 1500 });
  const publisher = client(server.url);
  await publisher.connect();
  await publish(publisher, [1, 2, 3]);
  await waitFor(() => page.evaluate(() => window.seen.length === 3), { what: "the first messages in the page" });

  await context.setOffline(true);
  // Chromium keeps the socket "open": the offline event's probe finds it dead.
  await waitFor(() => page.evaluate(() => window.client.state === "reconnecting"), { what: "the probe to give up the socket" });
  assert.deepEqual(await page.evaluate(() => [navigator.onLine, window.client.offline]), [false, true]);
  const attempts = await page.evaluate(() => window.client.stats.attempts);
  await publish(publisher, [4, 5, 6, 7, 8]);
  await sleep(1500);
  assert.equal(await page.evaluate(() => window.client.stats.attempts), attempts, "no futile attempts while offline");

  const back = Date.now();
  await context.setOffline(false);
  await waitFor(() => page.evaluate(() => window.client.state === "open"), { what: "the page client to reopen" });
  const dialled = await page.evaluate((back) => window.states.find(([at, state]) => at >= back - 50 && state === "connecting"), back);
  assert.ok(dialled, "a connection attempt after going online");
  assert.ok(dialled[0] - back < 1000, `the reconnect started ${dialled[0] - back} ms after going online`);

  await publish(publisher, [9, 10]);
  await waitFor(() => page.evaluate(() => window.seen.length >= 10), { what: "all 10 messages in the page" });
  await sleep(200);
  const seen = await page.evaluate(() => window.seen);
  assertOnceInOrder(seen, 10);
  assert.deepEqual(await page.evaluate(() => window.client.stats.streamsLost), 0);
  assert.deepEqual(browser.errors, []);
});

test("offline with a short backoff: still no attempts until the network returns", async () => {
  browser = await launch();
  const { page, context } = browser;
  await startPageClient(page, origin, server.url, { backoff: { initial: 100, max: 200 }, livenessTimeout: 1000 });
  await context.setOffline(true);
  await waitFor(() => page.evaluate(() => window.client.state === "reconnecting"), { what: "the probe to give up the socket" });
  const attempts = await page.evaluate(() => window.client.stats.attempts);
  await sleep(2000); // ten backoff steps
  assert.equal(await page.evaluate(() => window.client.stats.attempts), attempts);
  await context.setOffline(false);
  await waitFor(() => page.evaluate(() => window.client.state === "open"), { what: "the page client to reopen" });
  assert.equal(await page.evaluate(() => window.client.stats.attempts), attempts + 1, "one attempt, and it worked");
});

/**
 * Stall every connection through the proxy: no byte forwarded, none closed,
 * as a NAT that forgot the flow or a laptop that slept does to a socket.
 */
function stall(proxy) {
  for (const { client: c, backend } of proxy.pairs) {
    c.unpipe(backend);
    backend.unpipe(c);
    c.pause();
    backend.pause();
  }
}

// Headless Chromium keeps every page visible and ignores Page.setWebLifecycleState
// "frozen" for a visible page, so a freeze is the debugger holding the page's
// event loop: no timer and no socket event runs until it lets go, as in a
// frozen tab. Nothing tells the client it was frozen: its late watchdog must.
for (const [name, leave, come_back] of [
  [
    "a frozen page",
    async (cdp) => {
      await cdp.send("Debugger.enable");
      await cdp.send("Debugger.pause");
      await sleep(6000); // longer than the watchdog's lateness bound (5 s)
    },
    (cdp) => cdp.send("Debugger.resume"),
  ],
  [
    "a hidden tab",
    (cdp, page) => page.evaluate(() => document.dispatchEvent(new Event("visibilitychange"))).then(() => undefined),
    (cdp, page) => page.evaluate(() => document.dispatchEvent(new Event("visibilitychange"))),
  ],
]) {
  test(`${name} whose connection died silently recovers on return, within the liveness deadline`, async () => {
    const proxy = await CutProxy.start(server.port);
    try {
      browser = await launch();
      const { page, context } = browser;
      const cdp = await context.newCDPSession(page);
      // Default heartbeat timeout (60 s): only the return's probe explains a prompt recovery.
      await startPageClient(page, origin, proxy.url, { backoff: { initial: 100, max: 200 }, livenessTimeout: 2000 });
      const publisher = client(server.url);
      await publisher.connect();
      await publish(publisher, [1, 2]);
      await waitFor(() => page.evaluate(() => window.seen.length === 2), { what: "the first messages in the page" });

      await leave(cdp, page);
      stall(proxy);
      await publish(publisher, [3, 4, 5, 6]);
      await sleep(500);
      const returned = Date.now();
      await come_back(cdp, page);
      await waitFor(() => page.evaluate(() => window.seen.length >= 6), { timeout: 15000, what: "the messages sent while away" });
      const took = Date.now() - returned;
      assert.ok(took < 2000 + 3000, `recovered ${took} ms after the return (the liveness deadline is 2 s)`);
      const closes = await page.evaluate(() => window.closes.map(([, code]) => code));
      assert.deepEqual(closes, [4204], "the probe, unanswered, replaced the connection");
      await publish(publisher, [7]);
      await waitFor(() => page.evaluate(() => window.seen.length >= 7), { what: "a message after the recovery" });
      assertOnceInOrder(await page.evaluate(() => window.seen), 7);
      assert.deepEqual(browser.errors, []);
    } finally {
      await proxy.close();
    }
  });
}
