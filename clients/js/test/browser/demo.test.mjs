// The live demo (`twistd warpsocket --demo`, no --app) in headless Chromium:
// two pages chat, one cuts its connection or goes offline, and its indicator
// goes through reconnecting (with a countdown) or offline back to
// "Recovered", with every line delivered once.
import { after, afterEach, before, test } from "node:test";
import assert from "node:assert/strict";
import { freePort, Server, waitFor } from "../helpers.mjs";
import { launch } from "./chromium.mjs";

let server;
let origin;
let browser;
before(async () => {
  const port = await freePort();
  origin = `http://127.0.0.1:${port}`;
  // No --allow-origin: --demo allows the page's loopback origins itself.
  server = await Server.start(["--demo"], port, { defaults: false });
});
afterEach(async () => {
  await browser?.close();
  browser = null;
});
after(async () => {
  await server?.stop();
});

/** Open /demo; record every state the indicator shows (and its details). */
async function openDemo(page) {
  await page.goto(`${origin}/demo`);
  await page.evaluate(() => {
    const indicator = document.getElementById("indicator");
    window.shown = [[indicator.dataset.state, ""]];
    new MutationObserver(() => {
      const detail = document.getElementById("state-detail").textContent;
      const last = window.shown[window.shown.length - 1];
      if (last[0] !== indicator.dataset.state || last[1] !== detail) window.shown.push([indicator.dataset.state, detail]);
    }).observe(indicator, { attributes: true, subtree: true, childList: true, characterData: true });
  });
  await waitFor(() => page.evaluate(() => document.getElementById("indicator").dataset.state === "open"), {
    what: "the demo to connect",
  });
  await waitFor(() => page.evaluate(() => window.demo.client.rooms.includes("lobby")), { what: "the lobby joined" });
}

async function say(page, text) {
  await page.fill("#text", text);
  await page.click("#send");
}

const lines = (page) => page.$$eval("#log li:not(.note) .text", (items) => items.map((item) => item.textContent));

test("/demo: a line from one page reaches the other; cut connection: reconnecting with a countdown, then recovered", async () => {
  browser = await launch();
  const a = browser.page;
  const b = await browser.context.newPage();
  await openDemo(a);
  await openDemo(b);

  await say(a, "hello from a");
  await waitFor(async () => (await lines(b)).includes("hello from a"), { what: "a's line in b" });
  await waitFor(() => a.evaluate(() => document.querySelector("#log li.mine .status").textContent.startsWith("#")), {
    what: "a's own line confirmed by its offset",
  });

  await a.click("#cut");
  await waitFor(() => a.evaluate(() => window.demo.client.state !== "open"), { what: "the cut" });
  await say(b, "said while a was cut");
  await say(a, "queued while cut");
  await waitFor(() => a.evaluate(() => document.getElementById("indicator").dataset.state === "recovered"), {
    what: "a's indicator to say recovered",
  });
  const shown = await a.evaluate(() => window.shown);
  const states = shown.map(([state]) => state);
  assert.ok(states.includes("reconnecting"), `shown: ${JSON.stringify(states)}`);
  assert.ok(
    shown.some(([state, detail]) => state === "reconnecting" && /^next attempt in \d+\.\d s$/.test(detail)),
    `a countdown: ${JSON.stringify(shown)}`,
  );
  assert.match(await a.textContent("#state-label"), /Recovered/);
  assert.match(await a.textContent("#state-detail"), /nothing lost/);

  await waitFor(async () => (await lines(a)).includes("said while a was cut"), { what: "b's line replayed in a" });
  await waitFor(async () => (await lines(b)).includes("queued while cut"), { what: "a's queued line in b" });
  // Each line once on each page, at the same offset of the room's stream on both.
  const offsets = (page) =>
    page.$$eval("#log li:not(.note)", (items) => items.map((item) => [item.querySelector(".text").textContent, item.querySelector(".status").textContent]));
  await waitFor(async () => (await offsets(a)).concat(await offsets(b)).every(([, status]) => status.startsWith("#")), {
    what: "every line confirmed by its offset",
  });
  const [inA, inB] = [await offsets(a), await offsets(b)];
  assert.equal(inA.length, 3);
  assert.deepEqual(new Map(inA), new Map(inB));
  assert.equal(new Set(inA.map(([, offset]) => offset)).size, 3);
  assert.deepEqual(browser.errors, []);
});

test("/demo: go offline, both keep chatting, go online: recovered with every line", async () => {
  browser = await launch();
  const a = browser.page;
  const b = await browser.context.newPage();
  await openDemo(a);
  await openDemo(b);

  await a.click("#offline");
  await waitFor(() => a.evaluate(() => document.getElementById("indicator").dataset.state === "offline"), {
    what: "a's indicator to say offline",
  });
  assert.match(await a.textContent("#state-label"), /Offline/);
  const attempts = await a.evaluate(() => window.demo.client.stats.attempts);
  await say(b, "while a was offline");
  await say(a, "written offline");
  await waitFor(() => a.evaluate(() => document.querySelector("#log li.mine .status").textContent === "queued"), {
    what: "a's line queued",
  });
  assert.equal(await a.evaluate(() => window.demo.client.stats.attempts), attempts, "no attempts while offline");

  await a.click("#offline"); // back online: a dial at once
  await waitFor(() => a.evaluate(() => document.getElementById("indicator").dataset.state === "recovered"), {
    what: "a's indicator to say recovered",
  });
  await waitFor(async () => (await lines(a)).includes("while a was offline"), { what: "b's line in a" });
  await waitFor(async () => (await lines(b)).includes("written offline"), { what: "a's line in b" });
  assert.equal(await a.evaluate(() => window.demo.client.stats.attempts), attempts + 1);
  assert.deepEqual(browser.errors, []);
});
