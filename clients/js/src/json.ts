/**
 * A strict JSON parser for the `warpsocket.v1.json` codec.
 *
 * `JSON.parse` cannot tell `1.0` or `1e3` from `1`, but protocol.md section 2
 * makes them invalid where an integer is required, and it rounds integer
 * literals beyond 2^53 silently. This parser keeps what the envelope check
 * needs to see: a number member of the envelope object written with a
 * fraction or exponent becomes a `FloatLiteral`, an integer literal outside
 * +-(2^53-1) anywhere becomes an `UnsafeInteger`. Everything else is the
 * plain value `JSON.parse` would give.
 */
import { ErrorCode, ProtocolError } from "./codes.js";

/** A number member of the envelope object that had a fraction or exponent. */
export class FloatLiteral {
  constructor(readonly value: number) {}
}

/** An integer literal outside +-(2^53-1): kept as text, refused by the data model. */
export class UnsafeInteger {
  constructor(readonly text: string) {}
}

/** Far past the data model's depth (64): refused before the stack is at risk. */
export const PARSE_DEPTH_LIMIT = 900;

const NUMBER = /-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/y;
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function fail(message: string): never {
  throw new ProtocolError(ErrorCode.BAD_FRAME, `not valid JSON: ${message}`);
}

export function hasLoneSurrogate(text: string): boolean {
  return LONE_SURROGATE.test(text);
}

export function parseJson(text: string): unknown {
  let i = 0;
  const n = text.length;

  function skipSpace(): void {
    while (i < n) {
      const c = text.charCodeAt(i);
      if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) i++;
      else break;
    }
  }

  function parseString(): string {
    // text[i] is the opening quote.
    const start = i;
    i++;
    let escaped = false;
    for (;;) {
      if (i >= n) fail("unterminated string");
      const c = text.charCodeAt(i);
      if (c === 0x22) break;
      if (c === 0x5c) {
        escaped = true;
        i += 2;
        continue;
      }
      if (c < 0x20) fail("control character in string");
      i++;
    }
    i++;
    if (!escaped) {
      const plain = text.slice(start + 1, i - 1);
      if (hasLoneSurrogate(plain)) fail("lone UTF-16 surrogate");
      return plain;
    }
    let value: string;
    try {
      value = JSON.parse(text.slice(start, i)) as string;
    } catch {
      fail("bad escape in string");
    }
    if (hasLoneSurrogate(value)) fail("lone UTF-16 surrogate");
    return value;
  }

  function parseNumber(topMember: boolean): unknown {
    NUMBER.lastIndex = i;
    const match = NUMBER.exec(text);
    if (match === null) fail(`unexpected character at ${i}`);
    const literal = match[0];
    i += literal.length;
    const value = Number(literal);
    if (match[1] === undefined && match[2] === undefined) {
      if (!Number.isSafeInteger(value)) return new UnsafeInteger(literal);
      return value;
    }
    return topMember ? new FloatLiteral(value) : value;
  }

  function parseValue(depth: number): unknown {
    skipSpace();
    if (i >= n) fail("unexpected end");
    const c = text.charCodeAt(i);
    if (c === 0x7b) return parseObject(depth + 1);
    if (c === 0x5b) return parseArray(depth + 1);
    if (c === 0x22) return parseString();
    if (c === 0x74) return literal("true", true);
    if (c === 0x66) return literal("false", false);
    if (c === 0x6e) return literal("null", null);
    return parseNumber(depth === 1);
  }

  function literal<T>(word: string, value: T): T {
    if (text.startsWith(word, i)) {
      i += word.length;
      return value;
    }
    return fail(`unexpected character at ${i}`);
  }

  function parseObject(depth: number): Record<string, unknown> {
    if (depth > PARSE_DEPTH_LIMIT) {
      throw new ProtocolError(ErrorCode.BAD_ENVELOPE, "nested far too deep");
    }
    i++;
    const object: Record<string, unknown> = {};
    skipSpace();
    if (text.charCodeAt(i) === 0x7d) {
      i++;
      return object;
    }
    for (;;) {
      skipSpace();
      if (text.charCodeAt(i) !== 0x22) fail(`expected a key at ${i}`);
      const key = parseString();
      skipSpace();
      if (text.charCodeAt(i) !== 0x3a) fail(`expected ':' at ${i}`);
      i++;
      // Own data property even for "__proto__" (JSON.parse does the same).
      Object.defineProperty(object, key, {
        value: parseValue(depth),
        enumerable: true,
        writable: true,
        configurable: true,
      });
      skipSpace();
      const c = text.charCodeAt(i);
      i++;
      if (c === 0x2c) continue;
      if (c === 0x7d) return object;
      fail(`expected ',' or '}' at ${i - 1}`);
    }
  }

  function parseArray(depth: number): unknown[] {
    if (depth > PARSE_DEPTH_LIMIT) {
      throw new ProtocolError(ErrorCode.BAD_ENVELOPE, "nested far too deep");
    }
    i++;
    const array: unknown[] = [];
    skipSpace();
    if (text.charCodeAt(i) === 0x5d) {
      i++;
      return array;
    }
    for (;;) {
      array.push(parseValue(depth));
      skipSpace();
      const c = text.charCodeAt(i);
      i++;
      if (c === 0x2c) continue;
      if (c === 0x5d) return array;
      fail(`expected ',' or ']' at ${i - 1}`);
    }
  }

  const value = parseValue(0);
  skipSpace();
  if (i !== n) fail(`trailing characters at ${i}`);
  return value;
}
