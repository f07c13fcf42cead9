// Chunked transfers against the real server (test/server_app.py): the server
// shares a file, the client pulls it with credits and checks every chunk and
// the whole; a cut in the middle resumes; the client sends bytes too.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { TransferError } from "../../dist/index.js";
import { client, closeClients, CutProxy, Server, waitFor } from "../helpers.mjs";

let server;
let proxy;
before(async () => {
  server = await Server.start();
  proxy = await CutProxy.start(server.port);
});
after(async () => {
  await closeClients();
  await proxy?.close();
  await server?.stop();
});

function receiver(url, codec) {
  const c = client(url, { codec, extensions: ["chunks"] });
  const got = [];
  c.onTransfer((transfer) => {
    const entry = { transfer, parts: [], progress: [] };
    transfer.onProgress = (received, size) => entry.progress.push([received, size]);
    got.push(entry);
    return { write: (bytes) => entry.parts.push(Buffer.from(bytes)) };
  });
  return { c, got };
}

for (const codec of ["json", "msgpack"]) {
  test(`${codec}: a shared file arrives whole, verified, with progress`, async () => {
    const { c, got } = receiver(server.url, codec);
    await c.connect();
    assert.ok(c.extensions.has("chunks"));
    const sha256 = await c.call("share", { size: 200000, name: "blob.bin" });
    await waitFor(() => got.length === 1, { what: "the announcement" });
    const [{ transfer, parts, progress }] = got;
    assert.equal(await transfer.done, sha256);
    const whole = Buffer.concat(parts);
    assert.equal(whole.length, 200000);
    assert.equal(createHash("sha256").update(whole).digest("hex"), sha256);
    assert.equal(transfer.name, "blob.bin");
    assert.deepEqual(progress.at(-1), [200000, 200000]);
    assert.ok(Math.max(...parts.map((part) => part.length)) <= 16384);
  });
}

test("a cut in the middle of a download resumes from the written chunks", async () => {
  const { c, got } = receiver(proxy.url, "json");
  await c.connect();
  const sha256 = await c.call("share", { size: 4 * 1024 * 1024 });
  await waitFor(() => got.length === 1 && got[0].transfer.received >= 512 * 1024, { what: "a part of it" });
  proxy.cutAll();
  const [{ transfer, parts }] = got;
  assert.equal(await transfer.done, sha256);
  const whole = Buffer.concat(parts);
  assert.equal(whole.length, 4 * 1024 * 1024);
  assert.equal(createHash("sha256").update(whole).digest("hex"), sha256);
  assert.ok(c.stats.reconnects >= 1);
});

test("sendBytes: to the application, and through a room to another client", async () => {
  const sender = client(server.url, { extensions: ["chunks"] });
  sender.transfers; // eslint-disable-line no-unused-expressions
  await sender.connect();
  const data = new Uint8Array(randomBytes(100000));
  const expected = createHash("sha256").update(data).digest("hex");
  const sent = [];
  const handle = sender.sendBytes(data, { name: "up.bin", onProgress: (n) => sent.push(n) });
  assert.equal(await handle.result, expected);
  assert.deepEqual(await sender.call("uploads"), { "up.bin": expected });
  assert.equal(sent.at(-1), 100000);

  const { c: member, got } = receiver(server.url, "msgpack");
  await member.connect();
  await member.subscribe("files");
  await sender.subscribe("files");
  assert.equal(await sender.sendBytes(data, { room: "files" }).result, expected);
  await waitFor(() => got.length === 1, { what: "the room announcement" });
  assert.equal(await got[0].transfer.done, expected);
  assert.equal(got[0].transfer.sender, sender.session);

  const refused = sender.sendBytes(data, { room: "not-joined" });
  await assert.rejects(refused.result, (error) => error instanceof TransferError && error.code === 4102);
});

test("transfers first used after connect fail at once", async () => {
  const c = client(server.url);
  await c.connect();
  const handle = c.sendBytes(new Uint8Array(10));
  await assert.rejects(handle.result, (error) => error instanceof TransferError && error.code === 4002);
});
