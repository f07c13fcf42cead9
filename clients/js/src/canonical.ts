/**
 * The canonical JSON form of values (RFC 8785, JCS) and base64url, for
 * signatures and the associated data of ciphertexts (protocol.md, the
 * extension sections). JavaScript's own number and string serialisation is
 * JCS's; object members are sorted by UTF-16 code units, JavaScript's order.
 */

/** Thrown for a value outside the data model (a function, a NaN, a bigint ...). */
export class CanonicalError extends Error {
  override readonly name = "CanonicalError";
}

export function canonicalJson(value: unknown): string {
  if (value === null || value === undefined) return "null";
  switch (typeof value) {
    case "boolean":
      return value ? "true" : "false";
    case "string":
      return JSON.stringify(value);
    case "number":
      if (!Number.isFinite(value)) throw new CanonicalError("NaN and infinities are outside the data model");
      return Object.is(value, -0) ? "0" : String(value);
    case "object": {
      if (Array.isArray(value)) return `[${value.map((item: unknown) => canonicalJson(item)).join(",")}]`;
      if (Object.getPrototypeOf(value) !== Object.prototype && Object.getPrototypeOf(value) !== null) {
        throw new CanonicalError(`${Object.prototype.toString.call(value)} is outside the data model`);
      }
      const record = value as Record<string, unknown>;
      const members = Object.keys(record)
        .filter((key) => record[key] !== undefined)
        .sort()
        .map((key) => `${JSON.stringify(key)}:${canonicalJson(record[key])}`);
      return `{${members.join(",")}}`;
    }
    default:
      throw new CanonicalError(`${typeof value} is outside the data model`);
  }
}

const encoder = new TextEncoder();

export function utf8(text: string): Uint8Array<ArrayBuffer> {
  return encoder.encode(text);
}

/** A copy on a plain ArrayBuffer, as WebCrypto's typings want. */
export function own(bytes: Uint8Array): Uint8Array<ArrayBuffer> {
  return new Uint8Array(bytes);
}

/** base64url without padding (RFC 4648 section 5). */
export function b64url(bytes: Uint8Array): string {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

const B64URL = /^[A-Za-z0-9_-]*$/;

/** Strict base64url without padding; null for anything else (hostile input). */
export function b64urlDecode(text: unknown): Uint8Array | null {
  if (typeof text !== "string" || text.length % 4 === 1 || !B64URL.test(text)) return null;
  const padded = text.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (text.length % 4)) % 4);
  let binary: string;
  try {
    binary = atob(padded);
  } catch {
    return null;
  }
  const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  // Non-canonical trailing bits would give two texts for one value.
  return b64url(bytes) === text ? bytes : null;
}

/** WebCrypto, or a loud error: never a silent fallback to sending in clear. */
export function subtle(): SubtleCrypto {
  const crypto = (globalThis as { crypto?: Crypto }).crypto;
  if (crypto?.subtle === undefined) {
    throw new Error("WebCrypto (globalThis.crypto.subtle) is unavailable: encryption and signatures cannot work here");
  }
  return crypto.subtle;
}

export function hexBytes(hex: string): Uint8Array {
  if (!/^(?:[0-9a-fA-F]{2})*$/.test(hex)) throw new TypeError("not a hex string");
  return Uint8Array.from(hex.match(/../g) ?? [], (pair) => parseInt(pair, 16));
}
