// The chunked-transfer vectors (tests/vectors/chunks.json) and the SHA-256
// the client computes, against node:crypto.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import {
  Sha256,
  chunkCount,
  chunkData,
  decodeBase64url,
  encodeBase64url,
  sha256Hex,
  verifiedChunk,
} from "../../dist/index.js";

const VECTORS = JSON.parse(readFileSync(new URL("../../../../tests/vectors/chunks.json", import.meta.url), "utf8"));
const fromHex = (hex) => Uint8Array.from(Buffer.from(hex, "hex"));

test("base64url vectors, both ways", () => {
  for (const vector of VECTORS.base64url) {
    assert.equal(encodeBase64url(fromHex(vector.hex)), vector.base64url, vector.name);
    assert.deepEqual(decodeBase64url(vector.base64url), fromHex(vector.hex), vector.name);
  }
  for (const vector of VECTORS.base64url_invalid) assert.equal(decodeBase64url(vector.base64url), null, vector.name);
});

test("a whole transfer splits into the vector's chunks and hash", () => {
  const { content_hex: contentHex, size, chunk_size: chunkSize, chunks, sha256 } = VECTORS.transfer;
  const content = fromHex(contentHex);
  assert.equal(chunkCount(size, chunkSize), chunks.length);
  const hasher = new Sha256();
  chunks.forEach((expected, seq) => {
    const part = content.subarray(seq * chunkSize, (seq + 1) * chunkSize);
    assert.deepEqual(chunkData("u-1", seq, part), expected);
    const checked = verifiedChunk(expected, size, chunkSize);
    assert.deepEqual(checked, part);
    hasher.update(checked);
  });
  assert.equal(hasher.hex(), sha256);
});

test("corrupt chunks fail their checks", () => {
  for (const vector of VECTORS.corrupt_chunks) {
    assert.equal(verifiedChunk(vector.data, vector.size, vector.chunk_size), null, vector.name);
  }
});

test("SHA-256 matches node:crypto, in one piece and incrementally", () => {
  for (const size of [0, 1, 55, 56, 63, 64, 65, 119, 120, 1000, 70000]) {
    const data = new Uint8Array(randomBytes(size));
    const expected = createHash("sha256").update(data).digest("hex");
    assert.equal(sha256Hex(data), expected, `size ${size}`);
    const hasher = new Sha256();
    for (let at = 0; at < size; ) {
      const step = 1 + ((at * 7919) % 97);
      hasher.update(data.subarray(at, at + step));
      at += step;
    }
    assert.equal(hasher.hex(), expected, `size ${size}, in pieces`);
  }
});
