// `npm run screenshot:demo`: a real screenshot of the live demo in headless
// Chromium, for the README (docs/img/demo.png). Two visitors chat, one cuts
// its connection, keeps typing, and its page is captured once recovered.
import path from "node:path";
import { REPO, freePort, Server, sleep, waitFor } from "../test/helpers.mjs";
import { launch } from "../test/browser/chromium.mjs";

const out = process.argv[2] ?? path.join(REPO, "docs/img/demo.png");
const port = await freePort();
const origin = `http://127.0.0.1:${port}`;
const server = await Server.start(["--demo"], port, { defaults: false });
const browser = await launch();
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
} finally {
  await browser.close();
  await server.stop();
}
