/**
 * Envelope signatures, HMAC-SHA256 and Ed25519 with WebCrypto (protocol.md
 * "Extension: signatures"). `sig` is `{"alg", "kid", "value"}`; the signature
 * covers "warpsocket.sig.v1\n" and the canonical JSON (RFC 8785) of the
 * envelope without `sig.value` (null fields and `ack: false` left out).
 *
 * Ed25519 needs a WebCrypto with Ed25519 (Node.js 20, Chromium 137+,
 * Firefox 129+, Safari 17+): elsewhere creating such a key throws, loudly.
 */
import { b64url, b64urlDecode, CanonicalError, canonicalJson, own, subtle, utf8 } from "./canonical.js";
import { ErrorCode } from "./codes.js";
import type { ReplayGuard } from "./replay.js";

export const SIGN_EXTENSION = "sign";
export const HMAC_SHA256 = "hmac-sha256";
export const ED25519 = "ed25519";
const PREFIX = "warpsocket.sig.v1\n";

/** An envelope refused: 4601 bad signature, 4602 replayed, 4603 unknown key, 4604 stale. */
export class SignatureError extends Error {
  override readonly name = "SignatureError";
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

export interface SignatureKey {
  readonly kid: string;
  readonly alg: string;
  readonly canSign: boolean;
  sign(message: Uint8Array): Promise<Uint8Array>;
  verify(message: Uint8Array, signature: Uint8Array): Promise<boolean>;
}

function checkKid(kid: string): void {
  if (typeof kid !== "string" || kid.length === 0 || kid.length > 64) throw new TypeError("key ids are 1-64 characters");
}

/** A shared secret (at least 32 bytes) under a key id: signs and verifies. */
export class HmacKey implements SignatureKey {
  readonly alg = HMAC_SHA256;
  readonly canSign = true;
  private readonly key: Promise<CryptoKey>;

  constructor(
    readonly kid: string,
    secret: Uint8Array,
  ) {
    checkKid(kid);
    if (secret.length < 32) throw new TypeError("HMAC-SHA256 secrets must be at least 32 bytes");
    this.key = subtle().importKey("raw", own(secret), { name: "HMAC", hash: "SHA-256" }, false, ["sign", "verify"]);
    this.key.catch(() => undefined);
  }

  async sign(message: Uint8Array): Promise<Uint8Array> {
    return new Uint8Array(await subtle().sign("HMAC", await this.key, own(message)));
  }

  async verify(message: Uint8Array, signature: Uint8Array): Promise<boolean> {
    return subtle().verify("HMAC", await this.key, own(signature), own(message));
  }
}

// PKCS #8 wrapping of a raw Ed25519 seed (RFC 8410): WebCrypto imports private keys only so.
const PKCS8_ED25519 = Uint8Array.from([0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20]);

/** An Ed25519 key under a key id: the public half verifies; with the seed it signs too. */
export class Ed25519Key implements SignatureKey {
  readonly alg = ED25519;

  private constructor(
    readonly kid: string,
    private readonly publicKey: CryptoKey,
    private readonly privateKey: CryptoKey | null,
  ) {}

  get canSign(): boolean {
    return this.privateKey !== null;
  }

  /** From the raw 32-byte public key; throws if this runtime's WebCrypto has no Ed25519. */
  static async fromPublic(kid: string, publicKey: Uint8Array): Promise<Ed25519Key> {
    checkKid(kid);
    return new Ed25519Key(kid, await importEd25519("raw", publicKey, ["verify"]), null);
  }

  /** From the raw 32-byte seed (the private key); throws if this runtime's WebCrypto has no Ed25519. */
  static async fromSeed(kid: string, seed: Uint8Array): Promise<Ed25519Key> {
    checkKid(kid);
    if (seed.length !== 32) throw new TypeError("Ed25519 seeds are 32 bytes");
    const pkcs8 = new Uint8Array(48);
    pkcs8.set(PKCS8_ED25519);
    pkcs8.set(seed, 16);
    const privateKey = await importEd25519("pkcs8", pkcs8, ["sign"], true);
    // The public half, through its JWK (WebCrypto derives it from the seed).
    const jwk = await subtle().exportKey("jwk", privateKey);
    const publicKey = await subtle().importKey("jwk", { kty: "OKP", crv: "Ed25519", x: jwk.x }, { name: "Ed25519" }, true, [
      "verify",
    ]);
    return new Ed25519Key(kid, publicKey, privateKey);
  }

  /** The raw 32-byte public key. */
  async publicBytes(): Promise<Uint8Array> {
    return new Uint8Array(await subtle().exportKey("raw", this.publicKey));
  }

  async sign(message: Uint8Array): Promise<Uint8Array> {
    if (this.privateKey === null) throw new Error(`key ${this.kid} has no private key`);
    return new Uint8Array(await subtle().sign("Ed25519", this.privateKey, own(message)));
  }

  async verify(message: Uint8Array, signature: Uint8Array): Promise<boolean> {
    return subtle().verify("Ed25519", this.publicKey, own(signature), own(message));
  }
}

async function importEd25519(
  format: "raw" | "pkcs8",
  data: Uint8Array,
  usages: KeyUsage[],
  extractable = false,
): Promise<CryptoKey> {
  try {
    return await subtle().importKey(format, own(data), { name: "Ed25519" }, extractable, usages);
  } catch (error) {
    if (error instanceof Error && error.name === "NotSupportedError") {
      throw new Error("Ed25519 is not supported by this runtime's WebCrypto: use HMAC-SHA256 keys here");
    }
    throw error;
  }
}

/** The bytes a signature covers, for an envelope's wire mapping. */
export function signingInput(wire: Record<string, unknown>, alg: string, kid: string): Uint8Array {
  const signed: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(wire)) {
    if (value === null || value === undefined || name === "sig" || (name === "ack" && value === false)) continue;
    signed[name] = value;
  }
  signed.sig = { alg, kid };
  return utf8(PREFIX + canonicalJson(signed));
}

/** `wire` with its `sig` added (a new mapping). */
export async function signWire(wire: Record<string, unknown>, key: SignatureKey): Promise<Record<string, unknown>> {
  const value = await key.sign(signingInput(wire, key.alg, key.kid));
  return { ...wire, sig: { alg: key.alg, kid: key.kid, value: b64url(value) } };
}

/** The keys one side uses: `keys` verify by key id; `signer` (a key id) signs what this side sends. */
export class SignatureKeys {
  readonly keys: ReadonlyMap<string, SignatureKey>;

  constructor(
    keys: Iterable<SignatureKey>,
    readonly signer: string | null = null,
  ) {
    this.keys = new Map([...keys].map((key) => [key.kid, key]));
    if (signer !== null && this.keys.get(signer)?.canSign !== true) {
      throw new TypeError(`signer ${signer} is not a key that can sign`);
    }
  }

  get signingKey(): SignatureKey | null {
    return this.signer === null ? null : (this.keys.get(this.signer) ?? null);
  }

  /** The key id that signed `wire`; throws `SignatureError`. */
  async verify(wire: Record<string, unknown>): Promise<string> {
    const sig = wire.sig;
    if (typeof sig !== "object" || sig === null || Array.isArray(sig)) {
      throw new SignatureError(ErrorCode.BAD_SIGNATURE, "missing `sig`");
    }
    const { alg, kid } = sig as Record<string, unknown>;
    const value = b64urlDecode((sig as Record<string, unknown>).value);
    if (typeof alg !== "string" || typeof kid !== "string" || value === null) {
      throw new SignatureError(ErrorCode.BAD_SIGNATURE, "malformed `sig`");
    }
    const key = this.keys.get(kid);
    if (key === undefined) throw new SignatureError(ErrorCode.UNKNOWN_KEY, `unknown signing key ${kid.slice(0, 64)}`);
    if (key.alg !== alg) throw new SignatureError(ErrorCode.BAD_SIGNATURE, `key ${kid} is not ${alg.slice(0, 32)}`);
    let message: Uint8Array;
    try {
      message = signingInput(wire, alg, kid);
    } catch (error) {
      if (error instanceof CanonicalError) throw new SignatureError(ErrorCode.BAD_SIGNATURE, error.message);
      throw error;
    }
    if (!(await key.verify(message, value))) throw new SignatureError(ErrorCode.BAD_SIGNATURE, "signature does not verify");
    return kid;
  }
}

/** Throw `SignatureError` for a stale or replayed envelope (after its signature verified). */
export function checkReplay(guard: ReplayGuard, kid: string, wire: Record<string, unknown>, nowMs: number): void {
  const code = guard.check(kid, String(wire.id), Number(wire.timestamp), nowMs);
  if (code === ErrorCode.STALE) throw new SignatureError(code, `timestamp outside +-${guard.windowMs} ms`);
  if (code !== null) throw new SignatureError(code, "envelope already received");
}
