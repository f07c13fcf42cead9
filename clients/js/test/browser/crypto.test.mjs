// Encryption and signatures in a real browser (Debian's headless Chromium),
// from the bundle the server serves: the shared vectors through Chromium's
// WebCrypto (AES-256-GCM, HMAC-SHA256 and Ed25519, which Chromium has had
// since 137; missing, this test fails), then a sealed, signed room message
// from a Node client to the page through `twistd warpsocket --sign-key-file`.
import { after, afterEach, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { closeClients, freePort, Server, waitFor } from "../helpers.mjs";
import { HmacKey, KeyRing, SignatureKeys, WarpSocketClient } from "../../dist/index.js";
import { launch } from "./chromium.mjs";

const VECTORS = readFileSync(new URL("../../../../tests/vectors/crypto.json", import.meta.url), "utf8");
const hex = (text) => Uint8Array.from(text.match(/../g), (pair) => parseInt(pair, 16));
const SECRET = JSON.parse(VECTORS).keys.hmac.secret;
const ROOM_KEY = "5a".repeat(32);

let server;
let origin;
let browser;
const clients = [];
before(async () => {
  const port = await freePort();
  origin = `http://127.0.0.1:${port}`;
  const file = path.join(mkdtempSync(path.join(os.tmpdir(), "warpsocket-keys-")), "keys.json");
  writeFileSync(file, JSON.stringify({ signer: "shared", keys: [{ kid: "shared", alg: "hmac-sha256", secret: SECRET }] }));
  server = await Server.start(["--allow-origin", origin, "--sign-key-file", file, "--sign-required"], port);
});
afterEach(async () => {
  await browser?.close();
  browser = null;
  for (const c of clients.splice(0)) await c.close();
  await closeClients();
});
after(async () => {
  await server?.stop();
});

test("the crypto vectors hold in Chromium's WebCrypto, Ed25519 included", async () => {
  browser = await launch();
  const { page } = browser;
  await page.goto(`${origin}/healthz`);
  const failures = await page.evaluate(async (text) => {
    const w = await import("/warpsocket.js");
    const V = JSON.parse(text);
    const hex = (t) => Uint8Array.from(t.match(/../g) ?? [], (p) => parseInt(p, 16));
    const same = (a, b) => w.canonicalJson(a) === w.canonicalJson(b); // key order aside
    const out = [];
    for (const c of V.canonical) if (w.canonicalJson(c.value) !== c.canonical) out.push(`canonical ${c.name}`);
    for (const c of V.encrypt) {
      const sealed = await w.seal(c.plaintext, c.kid, hex(c.key), c.event, c.scope, hex(c.nonce));
      if (!same(sealed, c.sealed)) out.push(`seal ${c.name}`);
      const ring = new w.KeyRing({ [c.kid]: hex(c.key) });
      if (!same(await w.openSealed(c.sealed, ring, c.event, c.scope), c.plaintext)) out.push(`open ${c.name}`);
    }
    const { hmac, ed25519 } = V.keys;
    const ed = await w.Ed25519Key.fromSeed(ed25519.kid, hex(ed25519.seed));
    const keys = new w.SignatureKeys([new w.HmacKey(hmac.kid, hex(hmac.secret)), ed]);
    for (const c of V.sign) {
      const signed = await w.signWire(c.envelope, keys.keys.get(c.kid));
      if (!same(signed.sig, c.sig)) out.push(`sign ${c.name}`);
      if ((await keys.verify({ ...c.envelope, sig: c.sig })) !== c.kid) out.push(`verify ${c.name}`);
    }
    for (const c of V.verify_fail) {
      try {
        await keys.verify(c.envelope);
        out.push(`verify_fail ${c.name} verified`);
      } catch (error) {
        if (error.code !== c.code) out.push(`verify_fail ${c.name}: ${error.code}`);
      }
    }
    return out;
  }, VECTORS);
  assert.deepEqual(failures, []);
});

test("a sealed, signed room message reaches the page, opened", async () => {
  browser = await launch();
  const { page } = browser;
  await page.goto(`${origin}/healthz`);
  await page.evaluate(
    async ({ url, secret, roomKey }) => {
      const w = await import("/warpsocket.js");
      const hex = (t) => Uint8Array.from(t.match(/../g), (p) => parseInt(p, 16));
      const client = new w.WarpSocketClient(url, {
        e2e: new w.KeyRing({ r: hex(roomKey) }, "r"),
        signing: new w.SignatureKeys([new w.HmacKey("shared", hex(secret))], "shared"),
      });
      window.client = client;
      window.seen = [];
      window.refused = [];
      client.onCryptoError((failure) => window.refused.push(failure.code));
      const joined = client.subscribe("secret", (m) => window.seen.push(m.data));
      await client.connect();
      await joined;
    },
    { url: server.url, secret: SECRET, roomKey: ROOM_KEY },
  );
  const node = new WarpSocketClient(server.url, {
    e2e: new KeyRing({ r: hex(ROOM_KEY) }, "r"),
    signing: new SignatureKeys([new HmacKey("shared", hex(SECRET))], "shared"),
    lifecycle: null,
  });
  clients.push(node);
  await node.connect();
  await node.publish("secret", "msg", { text: "für dich" }, { ack: true });
  await waitFor(() => page.evaluate(() => window.seen.length === 1), { what: "the page to receive it" });
  assert.deepEqual(await page.evaluate(() => [window.seen, window.refused, [...window.client.extensions.keys()].sort()]), [
    [{ text: "für dich" }],
    [],
    ["e2e.aes-gcm", "sign"],
  ]);
  assert.deepEqual(browser.errors, []);
});
