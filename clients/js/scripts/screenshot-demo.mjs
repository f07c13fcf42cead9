// `npm run screenshot:demo`: real screenshots in headless Chromium of the
// live demo, for the README (docs/img/demo.png), and of the DevTools panel
// showing that page's client (docs/img/devtools.png). Two visitors chat, one
// cuts its connection, keeps typing, and its page is captured once recovered.
import path from "node:path";
import { REPO, freePort, Server, sleep, waitFor } from "../test/helpers.mjs";
import { DEVTOOLS_EXTENSION, launch } from "../test/browser/chromium.mjs";

const out = process.argv[2] ?? path.join(REPO, "docs/img/demo.png");
const panelOut = process.argv[3] ?? path.join(REPO, "docs/img/devtools.png");
const port = await freePort();
const origin = `http://127.0.0.1:${port}`;
const server = await Server.start(["--demo"], port, { defaults: false });
const browser = await launch({ extension: DEVTOOLS_EXTENSION });
try {
  const ada = browser.page;
  const bob = await browser.context.newPage();
  for (const [page, name] of [[ada, "ada"], [bob, "bob"]]) {
    await page.setViewportSize({ width: 1280, height: 760 });
    await page.goto(`${origin}/demo`);
    await waitFor(() => page.evaluate(() => document.getElementById("indicator").dataset.state === "open"), { what: "open" });
    await page.fill("#name", name);
  }
  const say = async (page, text) => {
    await page.fill("#text", text);
    await page.click("#send");
    await sleep(150);
  };
  await say(ada, "hi bob, watch my connection indicator");
  await say(bob, "hi ada! cut it, I'll keep talking");
  await ada.click("#cut");
  await say(bob, "this one is sent while you are disconnected");
  await say(ada, "typed while cut: queued, sent on resume");
  await say(bob, "and this one too");
  await waitFor(() => ada.evaluate(() => document.getElementById("indicator").dataset.state === "recovered"), { what: "recovered" });
  await waitFor(() => ada.evaluate(() => [...document.querySelectorAll("#log .status")].every((s) => s.textContent.startsWith("#"))), {
    what: "every line confirmed",
  });
  await sleep(3800); // the indicator's ring animation settles
  await ada.screenshot({ path: out });
  console.log(`wrote ${out}`);

  // The panel, as an extension page wired to ada's tab (docs/browser.md).
  const worker = browser.context.serviceWorkers()[0] ?? (await browser.context.waitForEvent("serviceworker"));
  await bob.close(); // ada's tab is then the only one with a client
  const tabs = await waitFor(async () => {
    const ids = await worker.evaluate(() => [...globalThis.pages.keys()]);
    return ids.length === 1 ? ids : null;
  }, { what: "ada's tab alone" });
  const panel = await browser.context.newPage();
  await panel.setViewportSize({ width: 1280, height: 760 });
  await panel.goto(`chrome-extension://${new URL(worker.url()).host}/panel.html?tabId=${tabs[0]}`);
  await waitFor(() => panel.evaluate(() => globalThis.panelModel.clients.size > 0), { what: "the panel's snapshot" });
  await sleep(300);
  await panel.screenshot({ path: panelOut });
  console.log(`wrote ${panelOut}`);
} finally {
  await browser.close();
  await server.stop();
}
