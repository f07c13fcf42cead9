// The shared, language-neutral vectors (tests/vectors/envelopes.json), every
// one of them, through this client's decoders. The whole file is read, so
// vectors added later run here without a change.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import * as msgpack from "@msgpack/msgpack";
import { jsonCodec, msgpackCodec, toWire, ProtocolError, parseJson } from "../../dist/index.js";

const VECTORS = JSON.parse(
  readFileSync(process.env.WARPSOCKET_VECTORS ?? new URL("../../../../tests/vectors/envelopes.json", import.meta.url), "utf8"),
);
const MSGPACK = msgpackCodec(msgpack);
const pack = (value) => msgpack.encode(value, { maxDepth: 2000, useBigInt64: true });

function decodeError(decode) {
  try {
    return { accepted: decode() };
  } catch (error) {
    if (!(error instanceof ProtocolError)) throw error;
    return { code: error.code, ref: error.ref, message: error.message };
  }
}

/**
 * The frame as a value MessagePack can carry with the same meaning, or null.
 * Parsed with the client's own parser, which keeps what JSON.parse loses:
 * an integer literal beyond 2^53 is packed as a 64-bit integer (a bigint),
 * one beyond 64 bits cannot be packed (JSON-only, as the README says), and a
 * top-level `1.0` would be packed as the integer 1 (for parsers that keep floats).
 */
function replayable(text) {
  let parsed;
  try {
    parsed = parseJson(text);
  } catch {
    return null;
  }
  let ok = true;
  const convert = (value, top) => {
    if (value === null || typeof value !== "object") return value;
    const kind = value.constructor?.name;
    if (kind === "FloatLiteral") {
      if (Number.isInteger(value.value)) ok = false;
      return value.value;
    }
    if (kind === "UnsafeInteger") {
      const big = BigInt(value.text);
      if (big > 2n ** 64n - 1n || big < -(2n ** 63n)) ok = false;
      return big;
    }
    if (Array.isArray(value)) return value.map((item) => convert(item, false));
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, convert(v, false)]));
  };
  const converted = convert(parsed, true);
  return ok ? converted : null;
}

// Every list in the file: vectors with `expected` decode to it, vectors with
// `code` are refused with it (so lists added later run without a change here).
const VALID = [];
const INVALID = [];
for (const [key, list] of Object.entries(VECTORS)) {
  if (!Array.isArray(list)) continue;
  for (const vector of list) {
    if ("expected" in vector) VALID.push(vector);
    else if ("code" in vector) INVALID.push(vector);
    else throw new Error(`vector ${vector.name} in ${key} has neither expected nor code`);
  }
}

test("the vector file has both lists", () => {
  assert.ok(Array.isArray(VECTORS.valid) && VECTORS.valid.length >= 30);
  assert.ok(Array.isArray(VECTORS.invalid) && VECTORS.invalid.length >= 45);
});

for (const vector of VALID) {
  test(`valid json ${vector.name}`, () => {
    const envelope = jsonCodec.decode(vector.json);
    assert.deepEqual(toWire(envelope), vector.expected);
    // Encode and decode again: the same envelope.
    const again = jsonCodec.decode(jsonCodec.encode(envelope));
    assert.deepEqual(toWire(again), vector.expected);
  });
  test(`valid msgpack ${vector.name}`, () => {
    const envelope = MSGPACK.decode(pack(vector.expected));
    assert.deepEqual(toWire(envelope), vector.expected);
    const asSent = replayable(vector.json);
    if (asSent !== null) assert.deepEqual(toWire(MSGPACK.decode(pack(asSent))), vector.expected);
    assert.deepEqual(toWire(MSGPACK.decode(MSGPACK.encode(envelope))), vector.expected);
  });
}

for (const vector of INVALID) {
  test(`invalid json ${vector.name}`, () => {
    const outcome = decodeError(() => jsonCodec.decode(vector.json));
    assert.ok(!("accepted" in outcome), `accepted: ${JSON.stringify(outcome.accepted)}`);
    assert.deepEqual({ code: outcome.code, ref: outcome.ref }, { code: vector.code, ref: vector.ref }, outcome.message);
  });
  const parsed = vector.code === 4000 ? null : replayable(vector.json);
  if (parsed !== null) {
    test(`invalid msgpack ${vector.name}`, () => {
      const outcome = decodeError(() => MSGPACK.decode(pack(parsed)));
      assert.ok(!("accepted" in outcome), `accepted: ${JSON.stringify(outcome.accepted)}`);
      assert.deepEqual({ code: outcome.code, ref: outcome.ref }, { code: vector.code, ref: vector.ref }, outcome.message);
    });
  }
}

test("text frames on msgpack and binary frames on json are bad frames", () => {
  assert.equal(decodeError(() => MSGPACK.decode("{}")).code, 4000);
  assert.equal(decodeError(() => jsonCodec.decode(new Uint8Array([0x80]))).code, 4000);
});

test("the parser keeps what JSON.parse loses", () => {
  assert.equal(decodeError(() => jsonCodec.decode('{"type":"event","id":"a","timestamp":1,"data":[9007199254740993]}')).code, 4001);
  assert.equal(decodeError(() => jsonCodec.decode('{"type":"event","id":"a","timestamp":1,"data":1e400}')).code, 4001);
  assert.equal(decodeError(() => jsonCodec.decode('{"type":"event","id":"a","timestamp":1,"data":"\\ud800"}')).code, 4000);
  assert.deepEqual(jsonCodec.decode('{"type":"event","id":"a","timestamp":1,"data":1e300}').data, 1e300);
  assert.deepEqual(parseJson('{"__proto__":{"x":1}}'), JSON.parse('{"__proto__":{"x":1}}'));
  let deep = "1";
  for (let i = 0; i < 64; i++) deep = `[${deep}]`;
  const refused = decodeError(() => jsonCodec.decode(`{"type":"event","id":"a","timestamp":1,"data":${deep}}`));
  assert.deepEqual([refused.code, refused.ref], [4001, "a"]);
  const far = "[".repeat(5000) + "]".repeat(5000);
  assert.deepEqual(decodeError(() => jsonCodec.decode(far)).code, 4001);
});
