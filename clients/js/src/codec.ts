/**
 * Codecs (protocol.md section 1): `warpsocket.v1.json` in text frames, the
 * default, and `warpsocket.v1.msgpack` in binary frames. MessagePack needs
 * `@msgpack/msgpack`, imported only when that codec is chosen.
 */
import { ErrorCode, ProtocolError } from "./codes.js";
import { DEFAULT_LIMITS, type DataLimits } from "./datamodel.js";
import { fromWire, toWire, type Envelope } from "./envelope.js";
import { FloatLiteral, parseJson, UnsafeInteger } from "./json.js";

export const JSON_SUBPROTOCOL = "warpsocket.v1.json";
export const MSGPACK_SUBPROTOCOL = "warpsocket.v1.msgpack";

/** What arrives in a WebSocket message event: text, or bytes. */
export type Payload = string | ArrayBuffer | ArrayBufferView;

export interface Codec {
  readonly subprotocol: string;
  /** True: binary frames; false: text frames. */
  readonly binary: boolean;
  encode(envelope: Envelope): string | Uint8Array;
  /** Decode and validate; throws `ProtocolError` (4000, 4001, 4002). */
  decode(payload: Payload, limits?: DataLimits): Envelope;
  /** The decoded mapping with every field, unknown ones too (`sig`): call after `decode` accepted it. */
  decodeRaw?(payload: Payload): Record<string, unknown>;
  /** A wire mapping with extension fields (`sig`) as a payload. */
  encodeRaw?(wire: Record<string, unknown>): string | Uint8Array;
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

export const jsonCodec: Codec = {
  subprotocol: JSON_SUBPROTOCOL,
  binary: false,
  encode(envelope: Envelope): string {
    return JSON.stringify(toWire(envelope));
  },
  decode(payload: Payload, limits: DataLimits = DEFAULT_LIMITS): Envelope {
    if (typeof payload !== "string") {
      throw new ProtocolError(ErrorCode.BAD_FRAME, `${JSON_SUBPROTOCOL} uses text frames`);
    }
    return fromWire(parseJson(payload), limits);
  },
  decodeRaw(payload: Payload): Record<string, unknown> {
    const raw = parseJson(payload as string) as Record<string, unknown>;
    for (const [key, value] of Object.entries(raw)) if (value instanceof FloatLiteral) raw[key] = value.value;
    return raw;
  },
  encodeRaw(wire: Record<string, unknown>): string {
    return JSON.stringify(wire);
  },
};

/** The two functions of `@msgpack/msgpack` this client uses. */
export interface MsgpackModule {
  encode(value: unknown, options?: { ignoreUndefined?: boolean }): Uint8Array;
  decode(buffer: ArrayLike<number> | ArrayBufferView | ArrayBuffer, options?: object): unknown;
}

function bytes(payload: ArrayBuffer | ArrayBufferView): Uint8Array {
  if (payload instanceof ArrayBuffer) return new Uint8Array(payload);
  return new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength);
}

/**
 * 64-bit MessagePack integers arrive as `bigint` (so that a float64 `1e300`,
 * a number, is never mistaken for a rounded integer): safe ones become
 * numbers, the others `UnsafeInteger`, which the data model refuses with the
 * envelope's id.
 */
function plainIntegers(value: unknown, depth: number): unknown {
  if (typeof value === "bigint") {
    const number = Number(value);
    return Number.isSafeInteger(number) && BigInt(number) === value ? number : new UnsafeInteger(value.toString());
  }
  if (depth > 70 || typeof value !== "object" || value === null) return value;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const item: unknown = value[i];
      if (typeof item === "object" || typeof item === "bigint") value[i] = plainIntegers(item, depth + 1);
    }
  } else if (Object.getPrototypeOf(value) === Object.prototype) {
    const object = value as Record<string, unknown>;
    for (const key of Object.keys(object)) {
      const item = object[key];
      if (typeof item === "object" || typeof item === "bigint") object[key] = plainIntegers(item, depth + 1);
    }
  }
  return value;
}

function stringKey(key: unknown): string {
  if (typeof key !== "string") throw new ProtocolError(ErrorCode.BAD_FRAME, "map keys must be strings");
  if (key === "__proto__") throw new ProtocolError(ErrorCode.BAD_FRAME, "map key __proto__ is refused");
  return key;
}

export function msgpackCodec(msgpack: MsgpackModule): Codec {
  const decodeOptions = { mapKeyConverter: stringKey, useBigInt64: true };
  return {
    subprotocol: MSGPACK_SUBPROTOCOL,
    binary: true,
    encode(envelope: Envelope): Uint8Array {
      return msgpack.encode(toWire(envelope), { ignoreUndefined: true });
    },
    decode(payload: Payload, limits: DataLimits = DEFAULT_LIMITS): Envelope {
      if (typeof payload === "string") {
        throw new ProtocolError(ErrorCode.BAD_FRAME, `${MSGPACK_SUBPROTOCOL} uses binary frames`);
      }
      let raw: unknown;
      try {
        raw = msgpack.decode(bytes(payload), decodeOptions);
      } catch (error) {
        if (error instanceof ProtocolError) throw error;
        throw new ProtocolError(ErrorCode.BAD_FRAME, `not valid msgpack: ${String(error)}`);
      }
      return fromWire(plainIntegers(raw, 0), limits);
    },
    decodeRaw(payload: Payload): Record<string, unknown> {
      return plainIntegers(msgpack.decode(bytes(payload as ArrayBuffer), decodeOptions), 0) as Record<string, unknown>;
    },
    encodeRaw(wire: Record<string, unknown>): Uint8Array {
      return msgpack.encode(wire, { ignoreUndefined: true });
    },
  };
}

/** Import `@msgpack/msgpack` (only called when the msgpack codec is chosen). */
export async function loadMsgpack(): Promise<MsgpackModule> {
  const module = (await import("@msgpack/msgpack")) as unknown as MsgpackModule;
  return module;
}
