// The batch vectors (tests/vectors/batch.json): what the client validates of
// a batch, and how it takes the server's batches apart; the window.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import * as msgpack from "@msgpack/msgpack";
import * as wire from "@bufbuild/protobuf/wire";
import {
  DEFAULT_LIMITS,
  OutgoingBatch,
  ProtocolError,
  expandBatch,
  fromWire,
  jsonCodec,
  msgpackCodec,
  protobufCodec,
} from "../../dist/index.js";

const VECTORS = JSON.parse(readFileSync(new URL("../../../../tests/vectors/batch.json", import.meta.url), "utf8"));

function outcome(item) {
  try {
    const inner = fromWire(item, DEFAULT_LIMITS);
    if (inner.type === "batch" || inner.type === "hello") return { code: 4640, ref: inner.id };
    return { valid: true };
  } catch (error) {
    if (!(error instanceof ProtocolError)) throw error;
    return { code: error.code, ref: error.ref ?? null };
  }
}

// Each codec with the frame of a raw mapping, as a hostile or foreign peer could send it.
const PROTOBUF = protobufCodec(wire);
const CODECS = [
  ["json", jsonCodec, (raw) => JSON.stringify(raw)],
  ["msgpack", msgpackCodec(msgpack), (raw) => msgpack.encode(raw)],
  ["protobuf", PROTOBUF, (raw) => PROTOBUF.encodeRaw(raw)],
];
const sizeOf = (payload) => (typeof payload === "string" ? new TextEncoder().encode(payload).byteLength : payload.byteLength);

test("inner envelopes are judged as if alone, in every codec", () => {
  for (const vector of VECTORS.inner) {
    for (const [name, codec, encode] of CODECS) {
      const batch = codec.decode(encode(vector.batch), DEFAULT_LIMITS);
      assert.equal(batch.type, "batch", `${vector.name} (${name})`);
      assert.deepEqual(batch.data.map(outcome), vector.outcomes, `${vector.name} (${name})`);
    }
  }
});

test("whole-batch refusals", () => {
  const { max_envelopes: maxEnvelopes, max_bytes: maxBytes } = VECTORS.params;
  for (const vector of VECTORS.whole) {
    const payload = JSON.stringify(vector.batch);
    let code = 0;
    try {
      const batch = jsonCodec.decode(payload, DEFAULT_LIMITS);
      const size = sizeOf(payload);
      if (batch.data.length === 0 || batch.data.length > maxEnvelopes || size > maxBytes) code = 4640;
    } catch (error) {
      assert.equal(error.ref, vector.batch.id, vector.name);
      code = error.code;
    }
    assert.equal(code, vector.code, vector.name);
  }
});

test("the server's batches are taken apart in order, in every codec", () => {
  for (const vector of VECTORS.server) {
    for (const [name, codec, encode] of CODECS) {
      const batch = codec.decode(encode(vector.batch), DEFAULT_LIMITS);
      const got = expandBatch(batch, DEFAULT_LIMITS).map((e) => JSON.parse(jsonCodec.encode(e)));
      assert.deepEqual(got, vector.envelopes, `${vector.name} (${name})`);
    }
  }
});

function batcher(windowMs, bounds = { maxEnvelopes: 4, maxBytes: 1024 }) {
  const sent = [];
  const batch = new OutgoingBatch(
    windowMs,
    bounds,
    jsonCodec,
    (envelope) => sent.push(["one", envelope.id]),
    (payload) => sent.push(["batch", JSON.parse(payload).data.map((e) => e.id)]),
    () => "b",
  );
  return { batch, sent };
}
const event = (id, data = null) => ({ type: "event", id, timestamp: 1, ...(data === null ? {} : { data }) });

test("window 0: what is written in one task leaves in one frame, at the end of it", async () => {
  const { batch, sent } = batcher(0);
  for (const id of ["a", "b", "c"]) assert.ok(batch.add(event(id)));
  assert.deepEqual(sent, []);
  await Promise.resolve();
  assert.deepEqual(sent, [["batch", ["a", "b", "c"]]]);
  assert.ok(batch.add(event("d")));
  await Promise.resolve();
  assert.deepEqual(sent.at(-1), ["one", "d"]); // one alone is itself
});

test("bounds: full at max_envelopes, split when over max_bytes; hello goes alone, after", async () => {
  const { batch, sent } = batcher(5);
  for (const id of ["a", "b", "c", "d"]) batch.add(event(id));
  assert.deepEqual(sent, [["batch", ["a", "b", "c", "d"]]]);
  batch.add(event("e", "x".repeat(600)));
  batch.add(event("f", "y".repeat(600)));
  batch.flush();
  assert.deepEqual(sent.slice(1), [["one", "e"], ["one", "f"]]);
  batch.add(event("g"));
  assert.equal(batch.add({ type: "hello", id: "h", timestamp: 1, data: {} }), false);
  assert.deepEqual(sent.at(-1), ["one", "g"]);
  batch.add(event("i"));
  batch.drop();
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.deepEqual(sent.at(-1), ["one", "g"]); // dropped: never sent
});
