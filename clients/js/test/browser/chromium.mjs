// Headless Chromium for the end-to-end tests: Debian's `chromium` package
// driven by playwright-core (no downloaded browser). Missing, the tests FAIL.
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const CHROMIUM = process.env.WARPSOCKET_CHROMIUM ?? "/usr/bin/chromium";

export const ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** The WarpSocket DevTools extension (clients/devtools), loaded unpacked. */
export const DEVTOOLS_EXTENSION = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../devtools");

/**
 * A fresh browser (its own user-data-dir) and one page; `close()` removes both.
 * `extension`: a directory loaded unpacked (Chromium's new headless mode runs
 * extensions); `bfcache`: keep the back/forward cache (playwright disables it).
 */
export async function launch({ extension = null, bfcache = false } = {}) {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing: apt-get install -y chromium (or set WARPSOCKET_CHROMIUM)`);
  }
  const userDataDir = mkdtempSync(path.join(os.tmpdir(), "warpsocket-chromium-"));
  const args = [...ARGS];
  const ignoreDefaultArgs = [];
  if (extension !== null) {
    args.push(`--disable-extensions-except=${extension}`, `--load-extension=${extension}`);
    ignoreDefaultArgs.push("--disable-extensions");
  }
  if (bfcache) ignoreDefaultArgs.push("--disable-back-forward-cache");
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args,
    ignoreDefaultArgs,
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const errors = [];
  page.on("pageerror", (error) => errors.push(error));
  return {
    context,
    page,
    errors,
    async close() {
      await context.close();
      rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

/**
 * Load a page of the server's origin and start a client in it, from the
 * bundle the server serves (/warpsocket.js). In the page: `window.client`,
 * `window.seen` (room "feed" payloads with offsets), `window.states`
 * ([Date.now(), state]), `window.closes` and `window.resumed`. `durable`: an
 * IndexedDB store; `reload`: reload the page first instead of loading it;
 * `path`: the page to load (/healthz is `no-store`, which keeps a page with
 * a WebSocket out of the back/forward cache).
 */
export async function startPageClient(page, origin, wsUrl, options = {}, { durable = false, reload = false, path = "/healthz" } = {}) {
  if (reload) await page.reload();
  else await page.goto(`${origin}${path}`);
  await page.evaluate(
    async ({ wsUrl, options, durable }) => {
      const { WarpSocketClient, indexedDbStore } = await import("/warpsocket.js");
      if (durable) options.store = indexedDbStore(wsUrl);
      const client = new WarpSocketClient(wsUrl, options);
      window.client = client;
      window.seen = [];
      window.states = [];
      window.closes = [];
      client.onState((state) => window.states.push([Date.now(), state]));
      client.onClose((code) => window.closes.push([Date.now(), code]));
      client.onOpen((info) => (window.resumed = info.resumed));
      // The handler before the connection: a resumed session replays at once.
      const joined = client.subscribe("feed", (message) => window.seen.push([message.offset, message.data.n]));
      await client.connect();
      await joined;
    },
    { wsUrl, options, durable },
  );
}
