// The back/forward cache in headless Chromium (playwright turns it off; the
// launch here keeps it): navigate away from a page with an open client and
// come back. The page is restored from the cache (`pageshow` with
// `persisted`, the same JavaScript heap), and the client resumes its session
// with the messages published meanwhile, once and in order.
import { after, afterEach, before, test } from "node:test";
import assert from "node:assert/strict";
import { client, closeClients, freePort, Server, sleep, waitFor } from "../helpers.mjs";
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

test("back/forward cache: away and back, restored (pageshow persisted), the client resumes with every message once", async () => {
  browser = await launch({ bfcache: true });
  const { page, context } = browser;
  const cdp = await context.newCDPSession(page);
  await cdp.send("Page.enable");
  const notCached = [];
  cdp.on("Page.backForwardCacheNotUsed", (event) => notCached.push(event));

  // Any page without `Cache-Control: no-store` (Chromium keeps a page that
  // used a WebSocket under no-store, such as /healthz, out of the cache).
  await startPageClient(page, origin, server.url, { backoff: { initial: 100, max: 200 }, livenessTimeout: 2000 }, { path: "/warpsocket.js.map" });
  await page.evaluate(() => {
    window.marker = "same heap";
    window.pageshows = [];
    addEventListener("pageshow", (event) => window.pageshows.push(event.persisted));
  });
  const publisher = client(server.url);
  await publisher.connect();
  await publisher.publish("feed", "tick", { n: 1 }, { ack: true });
  await waitFor(() => page.evaluate(() => window.seen.length === 1), { what: "the first message" });
  const session = await page.evaluate(() => window.client.session);

  await page.goto(`${origin}/metrics`);
  for (const n of [2, 3, 4]) await publisher.publish("feed", "tick", { n }, { ack: true });
  await sleep(300);
  await page.goBack({ waitUntil: "commit" }); // a restored page fires no `load`

  await waitFor(() => page.evaluate(() => window.pageshows?.length > 0).catch(() => false), {
    what: "a pageshow of the restored page",
    timeout: 5000,
  }).catch(async (error) => {
    const why = await page.evaluate(() => JSON.stringify(performance.getEntriesByType("navigation")[0]?.notRestoredReasons));
    throw new Error(`${error.message}; not restored from the back/forward cache: ${why} ${JSON.stringify(notCached)}`);
  });
  assert.deepEqual(notCached, [], "restored from the back/forward cache");
  assert.deepEqual(await page.evaluate(() => [window.marker, window.pageshows]), ["same heap", [true]]);

  await waitFor(() => page.evaluate(() => window.seen.length >= 4), { what: "the messages published while away" });
  await publisher.publish("feed", "tick", { n: 5 }, { ack: true });
  await waitFor(() => page.evaluate(() => window.seen.length >= 5), { what: "a live message after the return" });
  await sleep(200);
  const seen = await page.evaluate(() => window.seen);
  assert.deepEqual(seen.map(([, n]) => n), [1, 2, 3, 4, 5]);
  const offsets = seen.map(([offset]) => offset);
  assert.deepEqual(offsets, offsets.map((_, i) => offsets[0] + i));
  assert.equal(await page.evaluate(() => window.client.session), session, "the same session, resumed");
  assert.equal(await page.evaluate(() => window.resumed), true);
  assert.equal(await page.evaluate(() => window.client.stats.streamsLost), 0);
  // Chromium closed the socket as the page entered the cache: the restored
  // page sees that close (1006) and reconnects at once.
  assert.deepEqual(await page.evaluate(() => window.closes.map(([, code]) => code)), [1006]);
  assert.deepEqual(browser.errors, []);
});
