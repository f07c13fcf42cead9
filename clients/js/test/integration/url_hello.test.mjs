// The hello in the upgrade request (protocol.md 4.5) against a real
// `twistd warpsocket`: the client's URL hello is welcomed with nothing sent
// first; every `decode` vector of tests/vectors/url_hello.json is welcomed
// as the connection's first message and every `invalid` one is refused with
// 400 "4001 bad_envelope", both over raw HTTP upgrades that put the vector's
// query on the wire byte for byte (the `ws` package would normalise some);
// a resume goes as a frame; a server that never sees the parameter
// (a proxy strips it, as a server without 4.5 ignores it) closes with 4205
// and the client falls back to frames.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import * as msgpack from "@msgpack/msgpack";
import WebSocket from "ws";
import { jsonCodec, loadProtobuf, msgpackCodec, protobufCodec } from "../../dist/index.js";
import { client, closeClients, jwt, secretFile, Server, waitFor } from "../helpers.mjs";

/** A broken handshake hangs rather than throws: fail in time instead. */
const LIMIT = { timeout: 30000 };
const VECTORS = JSON.parse(readFileSync(new URL("../../../../tests/vectors/url_hello.json", import.meta.url), "utf8"));

const servers = [];
let server;
before(async () => {
  server = await Server.start();
  servers.push(server);
});
after(async () => {
  await closeClients();
  for (const s of servers) await s.stop();
});

/** A `ws` WebSocket that records the URLs it dials and the frames it sends. */
function recording() {
  const log = { urls: [], sent: [] };
  class RecordingWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      log.urls.push(url);
    }
    send(data, ...rest) {
      log.sent.push(data);
      return super.send(data, ...rest);
    }
  }
  return { WebSocket: RecordingWebSocket, log };
}

/** The decoded `hello` parameter of a URL, or null. */
function helloOf(url) {
  const values = new URL(url).searchParams.getAll("hello");
  assert.ok(values.length <= 1, `one hello parameter at most: ${url}`);
  if (values.length === 0) return null;
  assert.match(values[0], /^[A-Za-z0-9_-]+$/, "base64url, no padding");
  return JSON.parse(Buffer.from(values[0], "base64url").toString("utf8"));
}

/**
 * An upgrade request to `/ws?<query>`, written as is. Resolves with the
 * response to a refusal, or with the 101's socket and the WebSocket messages
 * the server sends (nothing is ever written to it).
 */
function upgrade(port, query) {
  return new Promise((resolve, reject) => {
    const request = http.request({
      host: "127.0.0.1",
      port,
      path: `/ws?${query}`,
      headers: {
        Connection: "Upgrade",
        Upgrade: "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": randomBytes(16).toString("base64"),
        "Sec-WebSocket-Protocol": "warpsocket.v1.json",
      },
    });
    request.on("upgrade", (response, socket, head) => resolve({ status: response.statusCode, socket, messages: readMessages(socket, head) }));
    request.on("response", (response) => {
      response.resume();
      resolve({ status: response.statusCode, statusMessage: response.statusMessage });
    });
    request.on("error", reject);
    request.end();
  });
}

/** The server's (unmasked, unfragmented) text messages on `socket`, as parsed JSON, in order. */
function readMessages(socket, head) {
  const messages = [];
  let buffer = Buffer.from(head);
  const parse = () => {
    for (;;) {
      if (buffer.length < 2) return;
      const opcode = buffer[0] & 0x0f;
      let length = buffer[1] & 0x7f;
      let offset = 2;
      if (length === 126) {
        if (buffer.length < 4) return;
        length = buffer.readUInt16BE(2);
        offset = 4;
      } else if (length === 127) {
        if (buffer.length < 10) return;
        length = Number(buffer.readBigUInt64BE(2));
        offset = 10;
      }
      if (buffer.length < offset + length) return;
      const payload = buffer.subarray(offset, offset + length);
      buffer = buffer.subarray(offset + length);
      if (opcode === 1) messages.push(JSON.parse(payload.toString("utf8")));
      else if (opcode === 8) messages.push({ close: payload.length >= 2 ? payload.readUInt16BE(0) : null });
    }
  };
  parse();
  socket.on("data", (chunk) => {
    buffer = Buffer.concat([buffer, chunk]);
    parse();
  });
  socket.on("error", () => undefined);
  return messages;
}

/** Write one masked text frame (a client's) to `socket`. */
function sendText(socket, text) {
  const payload = Buffer.from(text, "utf8");
  assert.ok(payload.length < 65536);
  const header = payload.length < 126 ? Buffer.from([0x81, 0x80 | payload.length]) : Buffer.from([0x81, 0x80 | 126, payload.length >> 8, payload.length & 0xff]);
  const mask = randomBytes(4);
  const masked = Buffer.from(payload.map((byte, i) => byte ^ mask[i % 4]));
  socket.write(Buffer.concat([header, mask, masked]));
}

const helloQuery = (envelope) => `hello=${Buffer.from(JSON.stringify(envelope), "utf8").toString("base64url")}`;

// ------------------------------------------------------------------ the client

for (const codec of ["json", "msgpack", "protobuf"]) {
  test(`${codec}: the client's hello goes in the URL, nothing is sent before the welcome, and no hello frame after`, LIMIT, async () => {
    const decoder = codec === "json" ? jsonCodec : codec === "msgpack" ? msgpackCodec(msgpack) : protobufCodec(await loadProtobuf());
    const { WebSocket: Recording, log } = recording();
    const c = client(server.url, { WebSocket: Recording, codec, rooms: ["lobby"], clientInfo: { name: "url-hello-test", version: "1" } });
    let sentBeforeWelcome = null;
    c.onOpen(() => (sentBeforeWelcome = log.sent.length));
    await c.connect();
    assert.equal(log.urls.length, 1);
    const hello = helloOf(log.urls[0]);
    assert.equal(hello.type, "hello");
    assert.equal(hello.data.session, null);
    assert.equal("token" in hello.data, false);
    assert.equal("resume_token" in hello.data, false);
    assert.deepEqual(hello.data.rooms, ["lobby"]);
    assert.deepEqual(hello.data.client, { name: "url-hello-test", version: "1" });
    assert.equal(sentBeforeWelcome, 0, "the welcome came with nothing sent");
    assert.equal(c.stats.urlHellos, 1);
    assert.match(c.session, /.+/);
    assert.deepEqual(c.rooms, ["lobby"]);
    // The connection works, and its hello never went as a frame.
    assert.equal(await c.call("add", [1, 2]), 3);
    const types = log.sent.map((frame) => decoder.decode(typeof frame === "string" ? frame : new Uint8Array(frame)).type);
    assert.ok(!types.includes("hello"), `frames sent: ${types}`);
    assert.ok(types.includes("call"));
    await c.close();
  });
}

test("a subscribe right after connect() (the URL has left without it) joins after the welcome", LIMIT, async () => {
  const { WebSocket: Recording, log } = recording();
  const c = client(server.url, { WebSocket: Recording });
  const opened = c.connect();
  const got = [];
  const joined = c.subscribe("late-room", (message) => got.push(message.data));
  await opened;
  await joined;
  assert.equal(helloOf(log.urls[0]).type, "hello");
  assert.deepEqual(c.rooms, ["late-room"]);
  await c.publish("late-room", "say", { n: 1 }, { ack: true });
  await waitFor(() => got.length === 1, { what: "the room event" });
  await c.close();
});

test("a reconnect after a drop resumes with a frame hello: no hello, session or resume token in its URL", LIMIT, async () => {
  const { WebSocket: Recording, log } = recording();
  const c = client(server.url, { WebSocket: Recording });
  const opens = [];
  c.onOpen((info) => opens.push(info));
  await c.connect();
  const session = c.session;
  assert.notEqual(helloOf(log.urls[0]), null);
  const framesBefore = log.sent.length;
  c.dropConnection();
  await waitFor(() => opens.length === 2, { what: "the resume" });
  assert.equal(opens[1].resumed, true);
  assert.equal(c.session, session);
  assert.equal(log.urls.length, 2);
  assert.equal(log.urls[1], server.url, "the reconnect dials the plain URL");
  assert.ok(!/resume_token|session/.test(decodeURIComponent(log.urls[1])));
  const hellos = log.sent.slice(framesBefore).map((frame) => JSON.parse(frame)).filter((e) => e.type === "hello");
  assert.equal(hellos.length, 1, "the resume went as one frame");
  assert.equal(hellos[0].data.session, session);
  assert.match(hellos[0].data.resume_token, /^[A-Za-z0-9_-]{43}$/);
  await c.close();
});

test("the URL's own parameters stay: a ?token= of the upgrade request applies to the URL hello", LIMIT, async () => {
  const secret = "url-hello-secret-0123456789abcdef";
  const authed = await Server.start(["--jwt-secret", secretFile(secret), "--allow-query-token"]);
  servers.push(authed);
  const token = jwt(secret, { sub: "carol", exp: Math.floor(Date.now() / 1000) + 600 });
  const { WebSocket: Recording, log } = recording();
  const c = client(`${authed.url}?token=${token}`, { WebSocket: Recording });
  await c.connect();
  const url = new URL(log.urls[0]);
  assert.equal(url.searchParams.get("token"), token);
  assert.equal(helloOf(log.urls[0]).type, "hello");
  assert.ok(log.urls[0].startsWith(`${authed.url}?token=${token}&hello=`));
  assert.deepEqual(await c.call("whoami"), { session: c.session, user: "carol" });
  assert.ok(!log.sent.some((frame) => JSON.parse(frame).type === "hello"));
  await c.close();
});

// ------------------------------------------------------------------ the vectors, on the wire

test("the vector file has decode and invalid vectors", LIMIT, () => {
  assert.ok(VECTORS.decode.length >= 7 && VECTORS.invalid.length >= 13);
});

for (const vector of VECTORS.decode) {
  test(`decode vector ${vector.name}: welcomed, ref ${vector.expected.id}, as the first message, with nothing sent`, LIMIT, async () => {
    const answer = await upgrade(server.port, vector.query);
    assert.equal(answer.status, 101, `refused: ${answer.status} ${answer.statusMessage}`);
    try {
      await waitFor(() => answer.messages.length > 0, { timeout: 5000, what: "the first message" });
      const [first] = answer.messages;
      assert.equal(first.type, "welcome", JSON.stringify(first));
      assert.equal(first.ref, vector.expected.id);
      if (vector.expected.data?.rooms !== undefined) assert.deepEqual(first.data.rooms, vector.expected.data.rooms);
      assert.equal(first.data.resumed, false);
    } finally {
      answer.socket.destroy();
    }
  });
}

for (const vector of VECTORS.invalid) {
  test(`invalid vector ${vector.name}: refused with ${vector.status} "${vector.code} bad_envelope"`, LIMIT, async () => {
    const answer = await upgrade(server.port, vector.query);
    answer.socket?.destroy();
    assert.equal(answer.status, vector.status);
    assert.match(answer.statusMessage, new RegExp(`^${vector.code} bad_envelope`));
  });
}

test("an error answering the URL hello: the connection still waits for a hello, which a frame brings", LIMIT, async () => {
  // Valid as an envelope (so past the upgrade), but not as hello.data (an empty room name).
  const query = helloQuery({ type: "hello", id: "h-bad", timestamp: Date.now(), data: { rooms: [""] } });
  const answer = await upgrade(server.port, query);
  assert.equal(answer.status, 101);
  try {
    await waitFor(() => answer.messages.length > 0, { timeout: 5000, what: "the answer to the URL hello" });
    assert.equal(answer.messages[0].type, "error");
    assert.equal(answer.messages[0].ref, "h-bad");
    assert.equal(answer.messages[0].code, 4001);
    sendText(answer.socket, JSON.stringify({ type: "hello", id: "h-frame", timestamp: Date.now(), data: { rooms: ["chat"] } }));
    await waitFor(() => answer.messages.length > 1, { timeout: 5000, what: "the welcome of the hello frame" });
    assert.equal(answer.messages[1].type, "welcome");
    assert.equal(answer.messages[1].ref, "h-frame");
    assert.deepEqual(answer.messages[1].data.rooms, ["chat"]);
  } finally {
    answer.socket.destroy();
  }
});

test("after the URL hello's welcome, a hello frame is a second hello (4006 bad_state)", LIMIT, async () => {
  const answer = await upgrade(server.port, helloQuery({ type: "hello", id: "h-url", timestamp: Date.now(), data: {} }));
  assert.equal(answer.status, 101);
  try {
    await waitFor(() => answer.messages.length > 0, { timeout: 5000, what: "the welcome" });
    assert.equal(answer.messages[0].type, "welcome");
    assert.equal(answer.messages[0].ref, "h-url");
    sendText(answer.socket, JSON.stringify({ type: "hello", id: "h-again", timestamp: Date.now(), data: {} }));
    await waitFor(() => answer.messages.some((m) => m.ref === "h-again"), { timeout: 5000, what: "the answer to the second hello" });
    const second = answer.messages.find((m) => m.ref === "h-again");
    assert.equal(second.type, "error");
    assert.equal(second.code, 4006);
  } finally {
    answer.socket.destroy();
  }
});

// ------------------------------------------------------------------ a server that never sees it

/**
 * A TCP proxy that removes the `hello` parameter from each upgrade request
 * (the server then behaves as one without 4.5, which ignores it) and
 * records the request targets it saw.
 */
async function stripHelloProxy(targetPort) {
  const targets = [];
  const sockets = new Set();
  const proxy = net.createServer((client) => {
    const backend = net.connect(targetPort, "127.0.0.1");
    sockets.add(client).add(backend);
    let buffered = Buffer.alloc(0);
    const onData = (chunk) => {
      buffered = Buffer.concat([buffered, chunk]);
      const end = buffered.indexOf("\r\n");
      if (end === -1) return;
      client.off("data", onData);
      const [method, target, version] = buffered.subarray(0, end).toString("latin1").split(" ");
      targets.push(target);
      const [path, query = ""] = target.split("?");
      const kept = query.split("&").filter((pair) => pair !== "" && !pair.startsWith("hello="));
      const line = `${method} ${path}${kept.length > 0 ? "?" + kept.join("&") : ""} ${version}`;
      backend.write(Buffer.concat([Buffer.from(line, "latin1"), buffered.subarray(end)]));
      client.pipe(backend);
    };
    client.on("data", onData);
    backend.pipe(client);
    const end = () => {
      client.destroy();
      backend.destroy();
    };
    client.on("error", end).on("close", end);
    backend.on("error", end).on("close", end);
  });
  await new Promise((resolve) => proxy.listen(0, "127.0.0.1", resolve));
  return {
    url: `ws://127.0.0.1:${proxy.address().port}/ws`,
    targets,
    close: () => {
      for (const socket of sockets) socket.destroy();
      return new Promise((resolve) => proxy.close(resolve));
    },
  };
}

test("a server that ignores the parameter closes with 4205; the client sends its hellos as frames from then on", LIMIT, async () => {
  const slow = await Server.start(["--handshake-timeout", "1"]);
  servers.push(slow);
  const proxy = await stripHelloProxy(slow.port);
  try {
    const { WebSocket: Recording, log } = recording();
    const c = client(proxy.url, { WebSocket: Recording });
    const closes = [];
    c.onClose((code) => closes.push(code));
    await c.connect();
    assert.deepEqual(closes, [4205], "the first connection waited for a hello frame in vain");
    assert.equal(log.urls.length, 2);
    assert.notEqual(helloOf(log.urls[0]), null, "the first hello went in the URL");
    assert.equal(helloOf(log.urls[1]), null, "the second did not");
    assert.match(proxy.targets[0], /[?&]hello=/);
    assert.doesNotMatch(proxy.targets[1], /hello=/);
    const hellos = log.sent.map((frame) => JSON.parse(frame)).filter((e) => e.type === "hello");
    assert.equal(hellos.length, 1);
    assert.equal(hellos[0].data.session, null);
    // A later new session with this client: still a frame.
    c.core.session = null;
    c.dropConnection();
    await waitFor(() => c.stats.connections === 2, { what: "the next connection" });
    assert.equal(log.urls.length, 3);
    assert.equal(helloOf(log.urls[2]), null);
    assert.deepEqual(closes, [4205, 1006]);
    await c.close();
  } finally {
    await proxy.close();
  }
});
