// The Protobuf codec (protocol.md 2.2) against the shared vectors: the exact
// bytes of tests/vectors/protobuf.json, every valid envelope vector, and
// frames a hostile peer could send.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import * as wire from "@bufbuild/protobuf/wire";
import { protobufCodec, parseJson, toWire, ProtocolError, PROTOBUF_SUBPROTOCOL } from "../../dist/index.js";

const CODEC = protobufCodec(wire);
const read = (name) => JSON.parse(readFileSync(new URL(`../../../../tests/vectors/${name}`, import.meta.url), "utf8"));
const hex = (bytes) => Buffer.from(bytes).toString("hex");
const unhex = (text) => new Uint8Array(Buffer.from(text, "hex"));

function refusal(payload) {
  try {
    return { accepted: CODEC.decode(payload) };
  } catch (error) {
    if (!(error instanceof ProtocolError)) throw error;
    return { code: error.code, ref: error.ref ?? null, message: error.message };
  }
}

/** An Envelope frame from raw parts: strings/uints by field number, `Value` columns for fields 4 and 15. */
function frame({ strings = {}, uints = {}, data = null, extra = null }) {
  const w = new wire.BinaryWriter();
  for (const [no, value] of Object.entries(strings)) w.tag(Number(no), 2).string(value);
  for (const [no, value] of Object.entries(uints)) w.tag(Number(no), 0).uint64(value);
  for (const [field, columns] of [[4, data], [15, extra]]) {
    if (columns === null) continue;
    w.tag(field, 2).fork();
    for (const entry of columns.shape ?? []) w.tag(1, 0).uint64(entry); // unpacked: decoders take both
    if (columns.ints?.length) {
      w.tag(2, 2).fork();
      for (const int of columns.ints) w.sint64(int);
      w.join();
    }
    for (const float of columns.floats ?? []) w.tag(3, 1).double(float);
    for (const string of columns.strings ?? []) w.tag(4, 2).string(string);
    w.join();
  }
  return w.finish();
}
const HEAD = { strings: { 1: "event", 2: "m-1", 5: "x" }, uints: { 3: 5 } };

test("subprotocol name", () => {
  assert.equal(CODEC.subprotocol, PROTOBUF_SUBPROTOCOL);
  assert.equal(CODEC.binary, true);
});

test("tests/vectors/protobuf.json: exact bytes both ways", () => {
  const { vectors } = read("protobuf.json");
  assert.ok(vectors.length >= 5);
  for (const vector of vectors) {
    const envelope = CODEC.decode(unhex(vector.hex));
    assert.deepEqual(toWire(envelope), vector.envelope, vector.name);
    assert.equal(hex(CODEC.encode(envelope)), vector.hex, vector.name);
  }
});

test("every valid envelope vector round-trips", () => {
  for (const vector of read("envelopes.json").valid) {
    const envelope = CODEC.decode(CODEC.encode(toWire(parseEnvelope(vector.json))));
    assert.deepEqual(toWire(envelope), normalise(vector.expected), vector.name);
  }
});

// The JSON vector through the JSON decoder gives the envelope to encode.
import { jsonCodec } from "../../dist/index.js";
function parseEnvelope(text) {
  return jsonCodec.decode(text);
}
function normalise(expected) {
  return toWire(jsonCodec.decode(JSON.stringify(expected)));
}

test("hostile frames get the codes of protocol.md 2.2", () => {
  assert.equal(refusal("text").code, 4000);
  assert.equal(refusal(new Uint8Array([0xff, 0xff, 0xff])).code, 4000);
  // A surrogate half is not UTF-8.
  const bad = new Uint8Array([...frame(HEAD), 0x2a, 0x03, 0xed, 0xa0, 0x80]);
  assert.equal(refusal(bad).code, 4000);
  assert.deepEqual(
    [refusal(frame({ strings: { 2: "m-1" }, uints: { 3: 5 } }))].map((r) => [r.code, r.ref]),
    [[4001, "m-1"]],
  );
  assert.deepEqual([refusal(frame({ strings: { 1: "nope", 2: "m-1" }, uints: { 3: 5 } }))].map((r) => [r.code, r.ref]), [[4002, "m-1"]]);
  const cases = {
    "ends early": { shape: [2 * 8 + 6, 3], ints: [1] },
    "after the end": { shape: [3, 3], ints: [1, 2] },
    "column ends": { shape: [5] },
    "left over in ints": { shape: [0], ints: [1] },
    "left over in strings": { shape: [5], strings: ["a", "b"] },
    "a count on a scalar": { shape: [8 + 3], ints: [1] },
    "duplicate key": { shape: [2 * 8 + 7, 0, 0], strings: ["a", "a"] },
    "outside": { shape: [3], ints: [2n ** 53n] },
  };
  for (const [problem, data] of Object.entries(cases)) {
    const result = refusal(frame({ ...HEAD, data }));
    assert.deepEqual([result.code, result.ref], [4001, "m-1"], problem);
    assert.match(result.message, new RegExp(problem), problem);
  }
  assert.equal(refusal(frame({ ...HEAD, data: { shape: [4000000000 * 8 + 6] } })).code, 4001);
  const clash = refusal(frame({ ...HEAD, extra: { shape: [8 + 7, 5], strings: ["room", "r"] } }));
  assert.match(clash.message, /repeats/);
  const future = CODEC.decode(frame({ ...HEAD, extra: { shape: [8 + 7, 5], strings: ["future", "yes"] } }));
  assert.equal(future.type, "event");
  // Unpacked shape entries decode like packed ones.
  assert.deepEqual(CODEC.decode(frame({ ...HEAD, data: { shape: [2 * 8 + 6, 3, 5], ints: [7], strings: ["s"] } })).data, [7, "s"]);
});

test("integral numbers are int tokens, others float; nesting to the model's depth", () => {
  const envelope = { type: "event", id: "m", timestamp: 1, event: "x", data: [3, 3.5, -0.25, 1e300, { k: [[], {}] }] };
  const back = CODEC.decode(CODEC.encode(envelope));
  assert.deepEqual(back.data, envelope.data);
  let deep = [];
  for (let i = 0; i < 62; i++) deep = [deep];
  assert.deepEqual(CODEC.decode(CODEC.encode({ ...envelope, data: deep })).data, deep);
  assert.equal(refusal(CODEC.encode({ ...envelope, data: [deep] })).code, 4001);
});
