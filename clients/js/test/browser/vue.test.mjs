// The Vue composables in Chromium against a real server: state, room, events,
// shared room membership and cleanup on unmount.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import * as esbuild from "esbuild";
import { client, closeClients, freePort, HERE, Server, waitFor } from "../helpers.mjs";
import { launch } from "./chromium.mjs";

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
  await closeClients();
  await server?.stop();
});

async function bundleApp() {
  const result = await esbuild.build({
    entryPoints: [path.join(HERE, "browser/vue-app.mjs")],
    bundle: true,
    format: "esm",
    platform: "browser",
    write: false,
    external: ["ws", "@msgpack/msgpack"],
    define: {
      "process.env.NODE_ENV": '"development"',
      __VUE_OPTIONS_API__: "true",
      __VUE_PROD_DEVTOOLS__: "false",
      __VUE_PROD_HYDRATION_MISMATCH_DETAILS__: "false",
    },
    logLevel: "silent",
  });
  return result.outputFiles[0].text;
}

test("Vue composables: connection state, a room shared by two components, events, cleanup on unmount", async () => {
  browser = await launch();
  const { page } = browser;
  await page.goto(`${origin}/healthz`);
  await page.addScriptTag({ type: "module", content: await bundleApp() });
  await page.waitForFunction(() => typeof window.startApp === "function"); // an inline module runs deferred
  await page.evaluate((url) => window.startApp(url), server.url);
  const text = (selector) => page.locator(selector).first().textContent();
  await waitFor(async () => (await text("#state")) === "open", { what: "useConnectionState to show open" });
  await waitFor(async () => (await page.locator("#room-feed[data-joined=true]").count()) === 2, { what: "both room components joined" });

  const publisher = client(server.url);
  await publisher.connect();
  for (const n of [1, 2, 3]) await publisher.publish("feed", "tick", { n }, { ack: true });
  await waitFor(async () => (await text("#ticks")) === "3", { what: "useEvent to count 3 ticks" });
  const items = async (selector) => page.locator(`${selector} li`).allTextContents();
  await waitFor(async () => (await items("#room-feed")).length === 6, { what: "the room's messages in both components" });
  assert.deepEqual(await items("body > div > #room-feed"), ["1", "2", "3"]);
  assert.deepEqual(await items("#second #room-feed"), ["1", "2", "3"]);

  // One of the two unmounts: still in the room for the other.
  await page.evaluate(() => window.setRooms(1));
  await publisher.publish("feed", "tick", { n: 4 }, { ack: true });
  await waitFor(async () => (await items("#room-feed")).length === 4, { what: "the remaining component's 4th message" });
  assert.deepEqual(await page.evaluate(() => window.vueClient.rooms), ["feed"]);
  // The last one unmounts: the client leaves the room.
  await page.evaluate(() => window.setRooms(0));
  await waitFor(() => page.evaluate(() => window.vueClient.rooms.length === 0), { what: "the client to leave the room" });
  await publisher.publish("feed", "tick", { n: 5 }, { ack: true });
  await page.evaluate(() => window.vueClient.call("echo", 1)); // a round trip: any tick would have come first
  assert.equal(await text("#ticks"), "4", "no room events after leaving");

  await page.evaluate(() => window.unmountApp());
  await waitFor(() => page.evaluate(() => window.vueClient.state === "closed"), { what: "unmounting to close the client" });
  assert.deepEqual(browser.errors, []);
});
