// The WarpSocket DevTools extension (clients/devtools), loaded unpacked in
// headless Chromium: a page's `debug: true` client reaches the panel through
// hook.js (page world) -> relay.js (content script) -> background.js
// (service worker) -> panel.js. The panel page is opened as an extension
// page (chrome-extension://ID/panel.html?tabId=N) with the same wiring as in
// DevTools; the DevTools window itself (devtools.js creating the panel)
// cannot be opened by automation and is not covered.
import { after, afterEach, before, test } from "node:test";
import assert from "node:assert/strict";
import { client, closeClients, freePort, Server, sleep, waitFor } from "../helpers.mjs";
import { DEVTOOLS_EXTENSION, launch, startPageClient } from "./chromium.mjs";

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

async function extension(context) {
  const worker = context.serviceWorkers()[0] ?? (await context.waitForEvent("serviceworker", { timeout: 10000 }));
  assert.match(worker.url(), /^chrome-extension:\/\/[a-p]{32}\/background\.js$/);
  return { worker, id: new URL(worker.url()).host };
}

/** The selected client as the panel holds it (plain data). */
const panelClient = (panel) =>
  panel.evaluate(() => {
    const found = globalThis.panelModel.clients.get(globalThis.panelModel.selected);
    return found === undefined ? null : JSON.parse(JSON.stringify(found));
  });

test("the panel shows the page's client: states, streams with positions, queue and pending acks, envelopes, no token", async () => {
  browser = await launch({ extension: DEVTOOLS_EXTENSION });
  const { context, page } = browser;
  const { worker, id } = await extension(context);
  await startPageClient(page, origin, server.url, { debug: true, backoff: { initial: 100, max: 200 }, livenessTimeout: 1000 });
  const publisher = client(server.url);
  await publisher.connect();
  await publisher.publish("feed", "tick", { n: 1 }, { ack: true });
  await waitFor(() => page.evaluate(() => window.seen.length === 1), { what: "the first message in the page" });

  // The relay connected when the page's client appeared: the service worker knows the tab.
  const [tabId] = await waitFor(async () => {
    const ids = await worker.evaluate(() => [...globalThis.pages.keys()]);
    return ids.length === 1 ? ids : null;
  }, { what: "the page's relay to connect" });
  const panel = await context.newPage();
  await panel.goto(`chrome-extension://${id}/panel.html?tabId=${tabId}`);

  // The snapshot of what happened before the panel opened.
  let seen = await waitFor(async () => {
    const found = await panelClient(panel);
    return found?.status?.streams?.["room:feed"]?.offset === 1 ? found : null;
  }, { what: "the snapshot in the panel" });
  assert.equal(seen.url, server.url);
  assert.deepEqual(seen.states.map((s) => s.state), ["connecting", "open"]);
  const types = seen.envelopes.map(({ direction, envelope }) => `${direction} ${envelope.type}`);
  for (const expected of ["out hello", "in welcome", "in event"]) assert.ok(types.includes(expected), `${expected} in ${types}`);
  const welcome = seen.envelopes.find(({ envelope }) => envelope.type === "welcome").envelope;
  assert.equal(welcome.data.resume_token, "[redacted]");
  assert.equal(seen.status.rooms.join(), "feed");

  // Live: a new event, then a publish queued while offline, then drained.
  await publisher.publish("feed", "tick", { n: 2 }, { ack: true });
  await waitFor(async () => (await panelClient(panel))?.status?.streams?.["room:feed"]?.offset === 2, { what: "the live position" });
  await context.setOffline(true);
  await waitFor(() => page.evaluate(() => window.client.state === "reconnecting"), { what: "the page client to lose its connection" });
  await page.evaluate(() => {
    window.sent = window.client.publish("feed", "note", { n: 99 }, { ack: true });
  });
  await waitFor(() => panel.evaluate(() => document.querySelector('#pending tr[data-where="queued"]')?.textContent.includes("note")), {
    what: "the queued publish in the panel's table",
  });
  seen = await panelClient(panel);
  assert.equal(seen.status.state, "reconnecting");
  assert.equal(seen.status.offline, true);
  assert.deepEqual(seen.status.queued.map((q) => [q.type, q.event, q.room]), [["event", "note", "feed"]]);

  await context.setOffline(false);
  await page.evaluate(() => window.sent);
  seen = await waitFor(async () => {
    const found = await panelClient(panel);
    return found?.status?.state === "open" && found.status.queued.length === 0 && found.status.pending.length === 0 ? found : null;
  }, { what: "the queue drained in the panel" });
  const states = seen.states.map((s) => s.state);
  assert.deepEqual(states.slice(-4), ["disconnected", "reconnecting", "connecting", "open"]);
  const resumeHello = seen.envelopes.filter(({ envelope }) => envelope.type === "hello").at(-1).envelope;
  assert.equal(resumeHello.data.resume_token, "[redacted]", "the resume token never reaches the panel");
  const token = await page.evaluate(() => window.client.core.resumeToken);
  assert.ok(token.length > 8);
  assert.ok(!(await panel.evaluate(() => JSON.stringify([...globalThis.panelModel.clients.values()]))).includes(token));

  // What the panel renders.
  assert.equal(await panel.locator("#clients li").count(), 1);
  // Its own publish comes back on the room's stream, at offset 3.
  await waitFor(async () => (await panelClient(panel))?.status?.streams?.["room:feed"]?.offset === 3, { what: "offset 3" });
  await waitFor(async () => (await panel.textContent('#streams tr[data-stream="room:feed"] td:nth-child(2)')) === "3", {
    what: "the rendered position",
  });
  assert.ok((await panel.locator("#envelopes tr[data-type=welcome]").count()) >= 2);
  assert.ok((await panel.locator("#states tbody tr").count()) >= 6);
  assert.deepEqual(browser.errors, []);
});

test("without debug, nothing leaves the page: no relay connects, the hook stays empty", async () => {
  browser = await launch({ extension: DEVTOOLS_EXTENSION });
  const { context, page } = browser;
  const { worker } = await extension(context);
  await startPageClient(page, origin, server.url, {});
  await sleep(500);
  assert.deepEqual(await page.evaluate(() => globalThis.__WARPSOCKET_DEVTOOLS_HOOK__.clients.length), 0);
  assert.deepEqual(await worker.evaluate(() => [...globalThis.pages.keys()]), []);
});
