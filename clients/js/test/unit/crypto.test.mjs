// The shared crypto vectors (tests/vectors/crypto.json) through this client's
// WebCrypto code: canonical form, AES-256-GCM sealing and opening, HMAC and
// Ed25519 signatures, and the replay guard. Ed25519 must work in Node.js 20:
// a runtime without it fails here, loudly.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import {
  associatedData,
  b64urlDecode,
  canonicalJson,
  E2EError,
  Ed25519Key,
  ErrorCode,
  HmacKey,
  KeyRing,
  openSealed,
  ReplayGuard,
  seal,
  SignatureError,
  SignatureKeys,
  signingInput,
  signWire,
} from "../../dist/index.js";

const VECTORS = JSON.parse(readFileSync(new URL("../../../../tests/vectors/crypto.json", import.meta.url), "utf8"));
const hex = (text) => Uint8Array.from(text.match(/../g) ?? [], (pair) => parseInt(pair, 16));
const text = (bytes) => new TextDecoder().decode(bytes);
const provider = (keys) => ({
  sendingKey: () => null,
  receivingKey: (_scope, kid) => (kid in keys ? hex(keys[kid]) : null),
});

test("canonical form vectors", () => {
  for (const { name, value, canonical } of VECTORS.canonical) assert.equal(canonicalJson(value), canonical, name);
});

test("sealing gives the expected ciphertext, and opens", async () => {
  for (const c of VECTORS.encrypt) {
    assert.equal(text(associatedData(c.kid, c.event, c.scope)), c.aad, c.name);
    assert.equal(canonicalJson(c.plaintext), c.plaintext_bytes, c.name);
    const sealed = await seal(c.plaintext, c.kid, hex(c.key), c.event, c.scope, hex(c.nonce));
    assert.deepEqual(sealed, c.sealed, c.name);
    assert.deepEqual(await openSealed(c.sealed, provider({ [c.kid]: c.key }), c.event, c.scope), c.plaintext, c.name);
  }
});

test("what does not open has its code", async () => {
  for (const c of VECTORS.decrypt_fail) {
    await assert.rejects(openSealed(c.sealed, provider(c.keys), c.event, c.scope), (error) => {
      assert.ok(error instanceof E2EError, c.name);
      assert.equal(error.code, c.code, c.name);
      return true;
    });
  }
});

test("key rotation: seal with the new key, open both", async () => {
  const ring = new KeyRing({ k1: new Uint8Array(32) }, "k1");
  const old = await seal(1, "k1", new Uint8Array(32), "e", "direct");
  ring.add("k2", hex("01".repeat(32)));
  ring.use("k2");
  assert.equal(ring.sendingKey()[0], "k2");
  assert.equal(await openSealed(old, ring, "e", "direct"), 1);
  ring.remove("k1");
  await assert.rejects(openSealed(old, ring, "e", "direct"), (e) => e.code === ErrorCode.UNKNOWN_KEY);
});

async function vectorKeys(withSeed) {
  const { hmac, ed25519 } = VECTORS.keys;
  const ed = withSeed ? await Ed25519Key.fromSeed(ed25519.kid, hex(ed25519.seed)) : await Ed25519Key.fromPublic(ed25519.kid, hex(ed25519.public));
  return new SignatureKeys([new HmacKey(hmac.kid, hex(hmac.secret)), ed]);
}

test("Ed25519 is available in this runtime's WebCrypto, and derives the RFC 8032 public key", async () => {
  const key = await Ed25519Key.fromSeed("ed", hex(VECTORS.keys.ed25519.seed));
  assert.deepEqual(await key.publicBytes(), hex(VECTORS.keys.ed25519.public));
});

test("signature vectors: signing input, signature, verification", async () => {
  const signing = await vectorKeys(true);
  const verifying = await vectorKeys(false);
  for (const c of VECTORS.sign) {
    assert.equal(text(signingInput(c.envelope, c.alg, c.kid)), c.signing_input, c.name);
    const signed = await signWire(c.envelope, signing.keys.get(c.kid));
    assert.deepEqual(signed.sig, c.sig, c.name);
    assert.equal(await verifying.verify({ ...c.envelope, sig: c.sig }), c.kid, c.name);
  }
});

test("signatures that fail have their codes", async () => {
  const keys = await vectorKeys(false);
  for (const c of VECTORS.verify_fail) {
    await assert.rejects(keys.verify(c.envelope), (error) => {
      assert.ok(error instanceof SignatureError, c.name);
      assert.equal(error.code, c.code, c.name);
      return true;
    });
  }
});

test("the replay guard: window, repeats, bounded memory", () => {
  const guard = new ReplayGuard(1000, 2);
  assert.equal(guard.check("k", "a", 5000, 5000), null);
  assert.equal(guard.check("k", "a", 5000, 5001), ErrorCode.REPLAYED);
  assert.equal(guard.check("k", "a", 5001, 5001), null); // a retry, re-stamped
  assert.equal(guard.check("k", "b", 3999, 5000), ErrorCode.STALE);
  assert.equal(guard.check("k", "c", 5002, 5002), null); // "a"@5000 is dropped: the floor moves
  assert.equal(guard.size, 2);
  assert.equal(guard.check("k", "a", 5000, 5002), ErrorCode.STALE);
});

test("base64url is strict", () => {
  assert.equal(b64urlDecode("AB"), null);
  assert.equal(b64urlDecode("AB=="), null);
  assert.deepEqual(b64urlDecode("AAE"), Uint8Array.from([0, 1]));
});
