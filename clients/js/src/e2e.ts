/**
 * End-to-end payload encryption, AES-256-GCM with WebCrypto (protocol.md
 * "Extension: end-to-end encryption"). An encrypted `data` is
 * `{"$enc": {"alg": "A256GCM", "kid", "nonce", "ct"}}`, bound by its
 * associated data to its key id, event name and scope (`room:<name>`,
 * `direct`, `broadcast`). Keys come from a `KeyProvider`; distributing them
 * is the application's job.
 */
import { b64url, b64urlDecode, canonicalJson, own, subtle, utf8 } from "./canonical.js";
import { ErrorCode } from "./codes.js";
import { checkValue, DEFAULT_LIMITS, type DataLimits } from "./datamodel.js";

export const E2E_EXTENSION = "e2e.aes-gcm";
export const E2E_ALGORITHM = "A256GCM";
export const E2E_MARKER = "$enc";
const AAD_PREFIX = "warpsocket.e2e.v1\n";
const MAX_KID = 64;

/** A payload that cannot be opened: 4600 (decrypt_failed) or 4603 (unknown_key). */
export class E2EError extends Error {
  override readonly name = "E2EError";
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

/** Where keys come from, per scope: the current key to seal with, any known key to open. */
export interface KeyProvider {
  /** [key id, 32-byte key] to encrypt for `scope`; null: send in clear. */
  sendingKey(scope: string): readonly [string, Uint8Array] | null;
  /** The key `kid` for `scope`, or null when it is not known. */
  receivingKey(scope: string, kid: string): Uint8Array | null;
}

function checkKey(kid: string, key: Uint8Array): void {
  if (typeof kid !== "string" || kid.length === 0 || kid.length > MAX_KID) {
    throw new TypeError(`key ids are strings of 1-${MAX_KID} characters`);
  }
  if (!(key instanceof Uint8Array) || key.length !== 32) throw new TypeError("AES-256-GCM keys are 32 bytes");
}

/** Keys by id and the current one: rotate with `add` then `use`; old keys still open. */
export class KeyRing implements KeyProvider {
  readonly keys = new Map<string, Uint8Array>();
  current: string | null = null;

  constructor(keys: Record<string, Uint8Array> = {}, current: string | null = null) {
    for (const [kid, key] of Object.entries(keys)) this.add(kid, key);
    if (current !== null) this.use(current);
  }

  add(kid: string, key: Uint8Array): void {
    checkKey(kid, key);
    this.keys.set(kid, key);
  }

  use(kid: string): void {
    if (!this.keys.has(kid)) throw new RangeError(`no key ${kid}`);
    this.current = kid;
  }

  remove(kid: string): void {
    this.keys.delete(kid);
    if (this.current === kid) this.current = null;
  }

  sendingKey(): readonly [string, Uint8Array] | null {
    return this.current === null ? null : [this.current, this.keys.get(this.current) as Uint8Array];
  }

  receivingKey(_scope: string, kid: string): Uint8Array | null {
    return this.keys.get(kid) ?? null;
  }
}

/** A `KeyRing` per scope (`"room:chat"`), and `fallback` for the others. */
export class ScopedKeys implements KeyProvider {
  constructor(
    readonly rings: Map<string, KeyRing> = new Map(),
    readonly fallback: KeyRing | null = null,
  ) {}

  private ring(scope: string): KeyRing | null {
    return this.rings.get(scope) ?? this.fallback;
  }

  sendingKey(scope: string): readonly [string, Uint8Array] | null {
    return this.ring(scope)?.sendingKey() ?? null;
  }

  receivingKey(scope: string, kid: string): Uint8Array | null {
    return this.ring(scope)?.receivingKey(scope, kid) ?? null;
  }
}

/** The scope of a message: its room's stream, else its stream, else `direct`. */
export function scopeOf(room?: string, stream?: string): string {
  if (room !== undefined) return `room:${room}`;
  return stream ?? "direct";
}

export function associatedData(kid: string, event: string, scope: string): Uint8Array<ArrayBuffer> {
  return utf8(AAD_PREFIX + canonicalJson({ alg: E2E_ALGORITHM, kid, event, scope }));
}

export function isSealed(data: unknown): boolean {
  return (
    typeof data === "object" &&
    data !== null &&
    !Array.isArray(data) &&
    Object.keys(data).length === 1 &&
    E2E_MARKER in data
  );
}

async function aesKey(key: Uint8Array, usage: "encrypt" | "decrypt"): Promise<CryptoKey> {
  return subtle().importKey("raw", own(key), "AES-GCM", false, [usage]);
}

/**
 * `data` encrypted: the `{"$enc": ...}` value to send in its place. `nonce`
 * is for test vectors only: a fresh random nonce per message keeps GCM safe.
 */
export async function seal(
  data: unknown,
  kid: string,
  key: Uint8Array,
  event: string,
  scope: string,
  nonce?: Uint8Array,
): Promise<Record<string, unknown>> {
  checkKey(kid, key);
  const iv = own(nonce ?? globalThis.crypto.getRandomValues(new Uint8Array(12)));
  if (iv.length !== 12) throw new TypeError("AES-GCM nonces are 12 bytes");
  const sealed = await subtle().encrypt(
    { name: "AES-GCM", iv, additionalData: associatedData(kid, event, scope), tagLength: 128 },
    await aesKey(key, "encrypt"),
    utf8(canonicalJson(data)),
  );
  return { [E2E_MARKER]: { alg: E2E_ALGORITHM, kid, nonce: b64url(iv), ct: b64url(new Uint8Array(sealed)) } };
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/** The plaintext of a sealed `data`; throws `E2EError` for anything that does not open into a value. */
export async function openSealed(
  data: unknown,
  provider: KeyProvider,
  event: string,
  scope: string,
  limits: DataLimits = DEFAULT_LIMITS,
): Promise<unknown> {
  const enc = isSealed(data) ? (data as Record<string, unknown>)[E2E_MARKER] : null;
  if (typeof enc !== "object" || enc === null || Array.isArray(enc)) {
    throw new E2EError(ErrorCode.DECRYPT_FAILED, "not an encrypted payload");
  }
  const fields = enc as Record<string, unknown>;
  const { kid, alg } = fields;
  const nonce = b64urlDecode(fields.nonce);
  const sealed = b64urlDecode(fields.ct);
  if (alg !== E2E_ALGORITHM || typeof kid !== "string" || kid.length === 0 || kid.length > MAX_KID) {
    throw new E2EError(ErrorCode.DECRYPT_FAILED, "bad `alg` or `kid`");
  }
  if (nonce === null || nonce.length !== 12 || sealed === null || sealed.length < 16) {
    throw new E2EError(ErrorCode.DECRYPT_FAILED, "bad `nonce` or `ct`");
  }
  const key = provider.receivingKey(scope, kid);
  if (key === null) throw new E2EError(ErrorCode.UNKNOWN_KEY, `no key ${kid} for ${scope}`);
  let plain: ArrayBuffer;
  try {
    plain = await subtle().decrypt(
      { name: "AES-GCM", iv: own(nonce), additionalData: associatedData(kid, event, scope), tagLength: 128 },
      await aesKey(key, "decrypt"),
      own(sealed),
    );
  } catch {
    throw new E2EError(ErrorCode.DECRYPT_FAILED, "authentication failed");
  }
  try {
    const value: unknown = JSON.parse(strictUtf8.decode(plain));
    checkValue(value, limits);
    return value;
  } catch (error) {
    throw new E2EError(ErrorCode.DECRYPT_FAILED, `plaintext is not a value: ${String(error)}`);
  }
}

/** Seal and open with a provider's keys. */
export class Sealer {
  constructor(
    readonly provider: KeyProvider,
    public limits: DataLimits = DEFAULT_LIMITS,
  ) {}

  /** `data` sealed with the scope's current key; as it is when there is none. */
  async seal(data: unknown, event: string, scope: string): Promise<unknown> {
    const found = this.provider.sendingKey(scope);
    if (found === null) return data;
    checkValue(data ?? null, this.limits);
    return seal(data ?? null, found[0], found[1], event, scope);
  }

  /** The plaintext of a sealed `data` (E2EError if it does not open); other data as it is. */
  async open(data: unknown, event: string, scope: string): Promise<unknown> {
    if (!isSealed(data)) return data;
    return openSealed(data, this.provider, event, scope, this.limits);
  }
}
