// A page reload with the IndexedDB store: the new page resumes the session,
// the messages sent before the reload and never confirmed reach the server
// once, in order, and the room events published meanwhile arrive once.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { client, closeClients, CutProxy, freePort, Server, waitFor } from "../helpers.mjs";
import { launch, startPageClient } from "./chromium.mjs";

let server;
let origin;
let browser;
let proxy;
before(async () => {
  const port = await freePort();
  origin = `http://127.0.0.1:${port}`;
  server = await Server.start(["--allow-origin", origin], port);
  proxy = await CutProxy.start(server.port);
});
after(async () => {
  await browser?.close();
  await closeClients();
  await proxy?.close();
  await server?.stop();
});

test("a reload with the IndexedDB store resumes the session with nothing lost", async () => {
  browser = await launch();
  const { page } = browser;
  const options = { backoff: { initial: 100, max: 200 } };
  await startPageClient(page, origin, proxy.url, options, { durable: true });
  const publisher = client(server.url);
  await publisher.connect();
  for (const n of [1, 2, 3]) await publisher.publish("feed", "tick", { n }, { ack: true });
  await waitFor(() => page.evaluate(() => window.seen.length === 3), { what: "the first messages in the page" });
  const session = await page.evaluate(() => window.client.session);

  // The page loses the server (new connections refused), sends, and is reloaded.
  const accept = proxy.accept;
  proxy.accept = (socket) => socket.destroy();
  proxy.cutAll();
  await waitFor(() => page.evaluate(() => window.client.state !== "open"), { what: "the page client to lose its connection" });
  await page.evaluate(async () => {
    for (let seq = 1; seq <= 5; seq++) window.client.send("record", { seq }, { ack: true }).catch(() => undefined);
    await window.client.persisted();
  });
  for (const n of [4, 5, 6]) await publisher.publish("feed", "tick", { n }, { ack: true });
  proxy.accept = accept;
  await startPageClient(page, origin, proxy.url, options, { durable: true, reload: true });

  assert.equal(await page.evaluate(() => window.client.session), session, "the same session");
  assert.equal(await page.evaluate(() => window.resumed), true);
  await waitFor(() => page.evaluate(() => window.seen.length >= 3), { what: "the events published during the reload" });
  const records = await waitFor(
    async () => {
      const got = await page.evaluate(() => window.client.call("records"));
      return got.length >= 5 ? got : null;
    },
    { what: "the server to record the sends from before the reload" },
  );
  assert.deepEqual(records, [1, 2, 3, 4, 5], "each once, in order");
  await publisher.publish("feed", "tick", { n: 7 }, { ack: true });
  await waitFor(() => page.evaluate(() => window.seen.length >= 4), { what: "an event after the reload" });
  const seen = await page.evaluate(() => window.seen);
  assert.deepEqual(seen.map(([, n]) => n), [4, 5, 6, 7], "only what the first page had not seen, once, in order");
  assert.deepEqual(await page.evaluate(() => window.client.stats.streamsLost), 0);
  assert.deepEqual(browser.errors, []);
});
