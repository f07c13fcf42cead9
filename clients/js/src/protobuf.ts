/**
 * The Protobuf codec (protocol.md section 2.2): subprotocol
 * `warpsocket.v1.protobuf`, one `warpsocket.v1.Envelope` message per binary
 * frame. The wire format is read and written with
 * `@bufbuild/protobuf/wire` (an optional peer dependency, imported only when
 * this codec is chosen); the schema is warpsocket/protocol/proto/warpsocket.proto.
 * Values travel as columns: a shape list and one list per scalar kind.
 */
import type { BinaryReader, BinaryWriter } from "@bufbuild/protobuf/wire";
import type { Codec, Payload } from "./codec.js";
import { ErrorCode, ProtocolError } from "./codes.js";
import { DEFAULT_LIMITS, type DataLimits } from "./datamodel.js";
import { batchLimits, fromWire, toWire, type Envelope } from "./envelope.js";
import { UnsafeInteger } from "./json.js";

export const PROTOBUF_SUBPROTOCOL = "warpsocket.v1.protobuf";

/** The part of `@bufbuild/protobuf/wire` this codec uses. */
export interface ProtobufWire {
  BinaryReader: new (buf: Uint8Array) => BinaryReader;
  BinaryWriter: new () => BinaryWriter;
}

// Wire types (protobuf encoding): varint, 64-bit, length-delimited.
const VARINT = 0;
const BIT64 = 1;
const DELIMITED = 2;

const STRING_FIELDS: ReadonlyArray<[number, string]> = [
  [1, "type"],
  [2, "id"],
  [5, "event"],
  [6, "room"],
  [7, "stream"],
  [9, "epoch"],
  [11, "ref"],
];
const UINT_FIELDS: ReadonlyArray<[number, string]> = [
  [3, "timestamp"],
  [8, "offset"],
  [12, "ttl"],
  [13, "code"],
  [14, "deadline"],
];
const NAMED = new Set(["type", "id", "timestamp", "data", "ack", ...STRING_FIELDS.map((f) => f[1]), ...UINT_FIELDS.map((f) => f[1])]);
const BY_NUMBER = new Map<number, [string, "string" | "uint"]>([
  ...STRING_FIELDS.map(([n, name]): [number, [string, "string"]] => [n, [name, "string"]]),
  ...UINT_FIELDS.map(([n, name]): [number, [string, "uint"]] => [n, [name, "uint"]]),
]);

/** One `Value` message's columns (protocol.md 2.2). */
interface Columns {
  shape: number[];
  ints: Array<number | UnsafeInteger>;
  floats: number[];
  strings: string[];
}

// Value kinds, in the low 3 bits of a shape entry.
const NULL = 0;
const FALSE = 1;
const TRUE = 2;
const INT = 3;
const FLOAT = 4;
const STRING = 5;
const ARRAY = 6;
const OBJECT = 7;

class Key {
  constructor(readonly name: string) {}
}

function bytes(payload: ArrayBuffer | ArrayBufferView): Uint8Array {
  if (payload instanceof ArrayBuffer) return new Uint8Array(payload);
  return new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength);
}

/** A 64-bit integer as a number when it is safe, otherwise as `UnsafeInteger` (refused by the data model). */
function safe(value: bigint | string): number | UnsafeInteger {
  const big = typeof value === "bigint" ? value : BigInt(value);
  const number = Number(big);
  return Number.isSafeInteger(number) && BigInt(number) === big ? number : new UnsafeInteger(big.toString());
}

/** Flatten one value into columns, in prefix order. */
function columnsOf(value: unknown): Columns {
  const columns: Columns = { shape: [], ints: [], floats: [], strings: [] };
  const pending: unknown[] = [value];
  while (pending.length > 0) {
    const item = pending.pop();
    if (item instanceof Key) columns.strings.push(item.name); // a member's name: no shape entry
    else if (item === null || item === undefined) columns.shape.push(NULL);
    else if (typeof item === "boolean") columns.shape.push(item ? TRUE : FALSE);
    else if (typeof item === "number") {
      // JavaScript cannot tell 3 from 3.0: every safe integral number is an integer.
      if (Number.isSafeInteger(item)) {
        columns.shape.push(INT);
        columns.ints.push(item);
      } else {
        columns.shape.push(FLOAT);
        columns.floats.push(item);
      }
    } else if (typeof item === "string") {
      columns.shape.push(STRING);
      columns.strings.push(item);
    } else if (Array.isArray(item)) {
      columns.shape.push(item.length * 8 + ARRAY);
      for (let i = item.length - 1; i >= 0; i--) pending.push(item[i]);
    } else if (typeof item === "object") {
      const entries = Object.entries(item as Record<string, unknown>);
      columns.shape.push(entries.length * 8 + OBJECT);
      for (let i = entries.length - 1; i >= 0; i--) {
        const [key, member] = entries[i] as [string, unknown];
        pending.push(member, new Key(key));
      }
    } else throw new TypeError(`${typeof item} is outside the data model`);
  }
  return columns;
}

function writeValue(w: BinaryWriter, field: number, value: unknown): void {
  const columns = columnsOf(value);
  w.tag(field, DELIMITED).fork();
  // Packed columns, empty ones left out (protocol.md 2.2, exact bytes).
  if (columns.shape.length > 0) {
    w.tag(1, DELIMITED).fork();
    for (const entry of columns.shape) w.uint64(entry);
    w.join();
  }
  if (columns.ints.length > 0) {
    w.tag(2, DELIMITED).fork();
    for (const int of columns.ints) w.sint64(int as number);
    w.join();
  }
  if (columns.floats.length > 0) {
    w.tag(3, DELIMITED).fork();
    for (const float of columns.floats) w.double(float);
    w.join();
  }
  for (const string of columns.strings) w.tag(4, DELIMITED).string(string);
  w.join();
}

/** Read a `Value` message ending at `end`; packed and unpacked columns alike. */
function readColumns(r: BinaryReader, end: number, into: Columns): void {
  while (r.pos < end) {
    const [no, wireType] = r.tag();
    if ((no === 1 || no === 2 || no === 3) && wireType === DELIMITED) {
      const stop = r.uint32() + r.pos;
      if (stop > end) throw new Error("packed column overruns its value");
      while (r.pos < stop) readScalar(r, no, into);
      if (r.pos !== stop) throw new Error("packed column overruns its length");
    } else if ((no === 1 || no === 2) && wireType === VARINT) readScalar(r, no, into);
    else if (no === 3 && wireType === BIT64) readScalar(r, no, into);
    else if (no === 4 && wireType === DELIMITED) into.strings.push(r.string(true));
    else if (no >= 1 && no <= 4) throw new Error(`column ${no} has wire type ${wireType}`);
    else r.skip(wireType, no);
  }
  if (r.pos !== end) throw new Error("value overruns its length");
}

function readScalar(r: BinaryReader, no: number, into: Columns): void {
  if (no === 1) {
    const entry = safe(r.uint64());
    // A shape beyond 2^53 cannot describe a frame that fits in memory.
    into.shape.push(typeof entry === "number" ? entry : Number.MAX_SAFE_INTEGER);
  } else if (no === 2) into.ints.push(safe(r.sint64()));
  else into.floats.push(r.double());
}

function setMember(object: Record<string, unknown>, key: string, value: unknown): void {
  // An own data property even for "__proto__", as JSON.parse makes it.
  if (key === "__proto__") Object.defineProperty(object, key, { value, enumerable: true, writable: true, configurable: true });
  else object[key] = value;
}

/**
 * Rebuild the one value a `Value` holds; a malformed one is 4001 with the
 * envelope's id. `level`: its parent's depth (1, the envelope, for `data`;
 * 0 for `extra`, whose object stands for the envelope itself).
 */
function valueOf(columns: Columns, limits: DataLimits, ref: string | undefined, where: string, level: number): unknown {
  const bad = (problem: string) => new ProtocolError(ErrorCode.BAD_ENVELOPE, `${where}: ${problem}`, ref);
  if (columns.shape.length > limits.maxValues) throw bad(`more than ${limits.maxValues} values`);
  let ii = 0;
  let fi = 0;
  let si = 0;
  const take = <T>(column: T[], index: number): T => {
    if (index >= column.length) throw bad("a column ends before the shape does");
    return column[index] as T;
  };
  const root: unknown[] = [];
  type Open = { container: unknown[] | Record<string, unknown>; left: number; depth: number };
  const stack: Open[] = [{ container: root, left: 1, depth: level }];
  for (const entry of columns.shape) {
    const top = stack[stack.length - 1];
    if (top === undefined) throw bad("shape entries after the end of the value");
    const kind = entry % 8;
    const count = Math.floor(entry / 8);
    if (count > 0 && kind < ARRAY) throw bad(`a count on a scalar shape entry (${entry})`);
    // An object member's name comes just before its value.
    const key = Array.isArray(top.container) ? null : take(columns.strings, si++);
    let value: unknown;
    let opened: Open | null = null;
    if (kind === INT) value = take(columns.ints, ii++);
    else if (kind === STRING) value = take(columns.strings, si++);
    else if (kind === FLOAT) value = take(columns.floats, fi++);
    else if (kind === OBJECT) {
      value = {};
      if (count > 0) opened = { container: value as Record<string, unknown>, left: count, depth: top.depth + 1 };
    } else if (kind === ARRAY) {
      value = [];
      if (count > 0) opened = { container: value as unknown[], left: count, depth: top.depth + 1 };
    } else value = kind === NULL ? null : kind === TRUE;
    if (key === null) (top.container as unknown[]).push(value);
    else {
      const object = top.container as Record<string, unknown>;
      if (Object.prototype.hasOwnProperty.call(object, key)) throw bad(`duplicate key ${JSON.stringify(key.slice(0, 64))}`);
      setMember(object, key, value);
    }
    top.left -= 1;
    if (top.left === 0) stack.pop(); // complete (its parent counted it when it opened)
    if (opened !== null) {
      // Its members sit one level deeper than it (protocol.md 2.1).
      if (opened.depth >= limits.maxDepth) throw bad(`nested deeper than ${limits.maxDepth} levels`);
      stack.push(opened);
    }
  }
  if (stack.length > 0) throw bad("the value ends early");
  if (ii < columns.ints.length) throw bad("values left over in ints");
  if (fi < columns.floats.length) throw bad("values left over in floats");
  if (si < columns.strings.length) throw bad("values left over in strings");
  return root[0];
}

export function protobufCodec(wire: ProtobufWire): Codec {
  /** A wire mapping (with extension fields such as `sig`, if any) as a frame. */
  function encodeFields(fields: Record<string, unknown>): Uint8Array {
    const w = new wire.BinaryWriter();
    const string = (no: number, name: string) => {
      const value = fields[name];
      if (typeof value === "string") w.tag(no, DELIMITED).string(value);
    };
    const uint = (no: number, name: string) => {
      const value = fields[name];
      if (typeof value === "number") w.tag(no, VARINT).uint64(value);
    };
    // Field-number order (protocol.md 2.2, "Encoding rules for exact bytes").
    string(1, "type");
    string(2, "id");
    uint(3, "timestamp");
    if (fields.data !== undefined && fields.data !== null) writeValue(w, 4, fields.data);
    string(5, "event");
    string(6, "room");
    string(7, "stream");
    uint(8, "offset");
    string(9, "epoch");
    if (fields.ack === true) w.tag(10, VARINT).bool(true);
    string(11, "ref");
    uint(12, "ttl");
    uint(13, "code");
    uint(14, "deadline");
    const extra: Record<string, unknown> = {};
    let anyExtra = false;
    for (const [name, value] of Object.entries(fields)) {
      if (NAMED.has(name) || value === undefined || value === null) continue;
      setMember(extra, name, value);
      anyExtra = true;
    }
    if (anyExtra) writeValue(w, 15, extra);
    return w.finish();
  }

  /** A frame as its wire mapping, every field (unknown ones too), before validation. */
  function rawOf(payload: Payload, limits: DataLimits): Record<string, unknown> {
    if (typeof payload === "string") {
      throw new ProtocolError(ErrorCode.BAD_FRAME, `${PROTOBUF_SUBPROTOCOL} uses binary frames`);
    }
    const raw: Record<string, unknown> = {};
    let data: Columns | null = null;
    let extra: Columns | null = null;
    try {
      const r = new wire.BinaryReader(bytes(payload));
      while (r.pos < r.len) {
        const [no, wireType] = r.tag();
        const named = BY_NUMBER.get(no);
        if (named !== undefined) {
          const [name, kind] = named;
          if (kind === "string" && wireType === DELIMITED) raw[name] = r.string(true);
          else if (kind === "uint" && wireType === VARINT) raw[name] = safe(r.uint64());
          else throw new Error(`field ${no} has wire type ${wireType}`);
        } else if ((no === 4 || no === 15) && wireType === DELIMITED) {
          const end = r.uint32() + r.pos;
          if (end > r.len) throw new Error("value overruns the frame");
          // A message field given twice is merged: its columns append.
          const columns: Columns = (no === 4 ? data : extra) ?? { shape: [], ints: [], floats: [], strings: [] };
          if (no === 4) data = columns;
          else extra = columns;
          readColumns(r, end, columns);
        } else if (no === 10 && wireType === VARINT) raw.ack = r.bool();
        else if (no >= 1 && no <= 15) throw new Error(`field ${no} has wire type ${wireType}`);
        else r.skip(wireType, no);
      }
    } catch (error) {
      throw new ProtocolError(ErrorCode.BAD_FRAME, `not a valid Envelope: ${String(error)}`);
    }
    const ident = raw.id;
    const ref = typeof ident === "string" && ident.length > 0 && ident.length <= 128 ? ident : undefined;
    if (data !== null) raw.data = valueOf(data, raw.type === "batch" ? batchLimits(limits) : limits, ref, "data", 1);
    if (extra !== null) {
      const more = valueOf(extra, limits, ref, "extra", 0);
      if (typeof more !== "object" || more === null || Array.isArray(more)) {
        throw new ProtocolError(ErrorCode.BAD_ENVELOPE, "extra must be one object", ref);
      }
      for (const [name, value] of Object.entries(more)) {
        if (NAMED.has(name)) throw new ProtocolError(ErrorCode.BAD_ENVELOPE, `extra repeats field ${JSON.stringify(name)}`, ref);
        setMember(raw, name, value);
      }
    }
    return raw;
  }

  return {
    subprotocol: PROTOBUF_SUBPROTOCOL,
    binary: true,
    encode(envelope: Envelope): Uint8Array {
      return encodeFields(toWire(envelope) as Record<string, unknown>);
    },
    decode(payload: Payload, limits: DataLimits = DEFAULT_LIMITS): Envelope {
      return fromWire(rawOf(payload, limits), limits);
    },
    decodeRaw(payload: Payload): Record<string, unknown> {
      return rawOf(payload, DEFAULT_LIMITS);
    },
    encodeRaw(fields: Record<string, unknown>): Uint8Array {
      return encodeFields(fields);
    },
  };
}

/** Import `@bufbuild/protobuf/wire` (only called when the protobuf codec is chosen). */
export async function loadProtobuf(): Promise<ProtobufWire> {
  const module = (await import("@bufbuild/protobuf/wire")) as unknown as ProtobufWire;
  return module;
}
