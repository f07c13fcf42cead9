// End-to-end encryption and signatures across languages: a Python client and
// this client exchange sealed, signed room messages through a real server
// (`twistd warpsocket --sign-key-file`), which routes them without the room
// key; a wrong key, an unknown signing key and tampering each get their code.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { closeClients, HERE, PYTHON, REPO, Server, waitFor } from "../helpers.mjs";
import { DeliveryError, Ed25519Key, ErrorCode, HmacKey, KeyRing, SignatureKeys, WarpSocketClient } from "../../dist/index.js";

const hex = (text) => Uint8Array.from(text.match(/../g), (pair) => parseInt(pair, 16));
const ROOM_KEY = "00".repeat(16) + "11".repeat(16);
const SECRET = "77617270736f636b65742d746573742d686d61632d7365637265742d30303031";
const SERVER_SEED = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
const SERVER_PUBLIC = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
const TS_SEED = "22".repeat(32);

let server;
let tsPublic;
const clients = [];
before(async () => {
  tsPublic = await (await Ed25519Key.fromSeed("ts", hex(TS_SEED))).publicBytes();
  const dir = mkdtempSync(path.join(os.tmpdir(), "warpsocket-keys-"));
  const file = path.join(dir, "keys.json");
  const keys = [
    { kid: "shared", alg: "hmac-sha256", secret: SECRET },
    { kid: "server", alg: "ed25519", seed: SERVER_SEED },
    { kid: "ts", alg: "ed25519", public: Buffer.from(tsPublic).toString("hex") },
  ];
  writeFileSync(file, JSON.stringify({ signer: "server", keys }));
  server = await Server.start(["--sign-key-file", file, "--sign-required"]);
});
after(async () => {
  for (const c of clients) await c.close();
  await closeClients();
  await server?.stop();
});

async function tsClient({ roomKey = ROOM_KEY, kid = "room-1", signer = "ts", seed = TS_SEED } = {}) {
  const signing = new SignatureKeys(
    [await Ed25519Key.fromSeed(signer, hex(seed)), await Ed25519Key.fromPublic("server", hex(SERVER_PUBLIC))],
    signer,
  );
  const c = new WarpSocketClient(server.url, { e2e: new KeyRing({ [kid]: hex(roomKey) }, kid), signing, lifecycle: null });
  clients.push(c);
  const refused = [];
  const lost = [];
  c.onCryptoError((failure) => refused.push(failure.code));
  c.onLost((stream) => lost.push(stream));
  return { c, refused, lost };
}

test("Python and TypeScript clients exchange sealed, signed room messages", async () => {
  const room = "secret-room";
  const count = 5;
  const peer = spawn(PYTHON, [path.join(HERE, "py_crypto_peer.py"), server.url, room, String(count), ROOM_KEY, SECRET, SERVER_PUBLIC], {
    env: { ...process.env, PYTHONPATH: REPO },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const lines = [];
  createInterface({ input: peer.stdout }).on("line", (line) => lines.push(line));
  const exited = new Promise((resolve) => peer.once("exit", resolve));
  try {
    await waitFor(() => lines.length >= 1, { what: "the Python client" });
    assert.equal(lines[0], 'ready ["e2e.aes-gcm", "sign"]');
    const { c, refused } = await tsClient();
    const seen = [];
    const joined = c.subscribe(room, (m) => seen.push([m.offset, m.event, m.data]));
    await c.connect();
    await joined;
    assert.deepEqual([...c.extensions.keys()].sort(), ["e2e.aes-gcm", "sign"]);
    assert.equal(c.extensions.get("sign").kid, "server");
    await c.publish(room, "go", null, { ack: true });
    await Promise.all(Array.from({ length: count }, (_, i) => c.publish(room, "msg", { from: "ts", i }, { ack: true })));
    await waitFor(() => seen.filter(([, event]) => event === "msg").length >= 2 * count, { what: "every message" });
    await waitFor(() => lines.length >= 2, { what: "the Python client's history" });
    assert.equal(await exited, 0);
    assert.deepEqual(JSON.parse(lines[1]), seen);
    assert.deepEqual(refused, []);
  } finally {
    peer.kill();
  }
});

test("a wrong room key is reported with 4600, an unknown one with 4603, nothing else lost", async () => {
  const room = "keys-room";
  const { c: sender } = await tsClient();
  const wrong = await tsClient({ roomKey: "33".repeat(32) });
  const unknown = await tsClient({ kid: "room-9" });
  const seen = { wrong: [], unknown: [], sender: [] };
  const joins = [
    wrong.c.subscribe(room, (m) => seen.wrong.push(m.data)),
    unknown.c.subscribe(room, (m) => seen.unknown.push(m.data)),
    sender.subscribe(room, (m) => seen.sender.push(m.data)),
  ];
  await Promise.all([wrong.c.connect(), unknown.c.connect(), sender.connect(), ...joins]);
  await sender.publish(room, "msg", { n: 1 }, { ack: true });
  await sender.publish(room, "msg", { n: 2 }, { ack: true });
  await waitFor(() => wrong.refused.length === 2 && unknown.refused.length === 2 && seen.sender.length === 2, {
    what: "the refusals",
  });
  assert.deepEqual(wrong.refused, [ErrorCode.DECRYPT_FAILED, ErrorCode.DECRYPT_FAILED]);
  assert.deepEqual(unknown.refused, [ErrorCode.UNKNOWN_KEY, ErrorCode.UNKNOWN_KEY]);
  assert.deepEqual(wrong.lost, [`room:${room}`, `room:${room}`]);
  assert.deepEqual(seen, { wrong: [], unknown: [], sender: [{ n: 1 }, { n: 2 }] });
  // The refused clients' streams went on: their positions moved past both.
  assert.equal(wrong.c.core.positions.get(`room:${room}`).offset, unknown.c.core.positions.get(`room:${room}`).offset);
});

test("the server refuses an unknown signing key (4603) and unsigned clients (4601)", async () => {
  const { c } = await tsClient({ signer: "mallory", seed: "44".repeat(32) });
  // The welcome verifies (the server's key is known); what the client signs does not.
  await c.connect();
  await assert.rejects(c.send("say", 1, { ack: true }), (error) => error instanceof DeliveryError && error.code === ErrorCode.UNKNOWN_KEY);
  const plain = new WarpSocketClient(server.url, { lifecycle: null });
  clients.push(plain);
  await plain.connect();
  await assert.rejects(plain.send("say", 1, { ack: true }), (error) => error instanceof DeliveryError && error.code === ErrorCode.BAD_SIGNATURE);
});
