/**
 * The envelope (protocol.md sections 2 and 3): validation of what arrives,
 * and the wire form of what leaves. Strict about known fields, blind to
 * unknown ones (forward compatibility).
 */
import { ErrorCode, ProtocolError } from "./codes.js";
import { checkValue, DataModelError, DEFAULT_LIMITS, type DataLimits } from "./datamodel.js";
import { FloatLiteral } from "./json.js";

export const MESSAGE_TYPES = [
  "hello",
  "welcome",
  "event",
  "ack",
  "call",
  "result",
  "error",
  "heartbeat",
  "subscribe",
  "unsubscribe",
  "auth",
  "transfer", // the chunks extension (protocol.md "Extension: chunked transfers")
  "batch", // the batch extension (protocol.md "Extension: batches")
] as const;

export type MessageType = (typeof MESSAGE_TYPES)[number];

const TYPES: ReadonlySet<string> = new Set(MESSAGE_TYPES);

export const MAX_ID_LENGTH = 128;
export const MAX_NAME_LENGTH = 256;
export const MAX_EPOCH_LENGTH = 64;

/** One protocol message; absent optional fields are `undefined`. */
export interface Envelope {
  type: MessageType;
  id: string;
  timestamp: number;
  data?: unknown;
  event?: string;
  room?: string;
  stream?: string;
  offset?: number;
  epoch?: string;
  ack?: boolean;
  ref?: string;
  ttl?: number;
  /** Client to server: ms after `timestamp` after which the server must not handle it. */
  deadline?: number;
  code?: number;
  /** W3C trace context (protocol.md "Trace context"); an invalid one is dropped on decode. */
  trace?: TraceContext;
}

/** The `trace` field: a W3C `traceparent` and optional `tracestate`. */
export interface TraceContext {
  traceparent: string;
  tracestate?: string;
}

const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$/;
export const MAX_TRACESTATE_LENGTH = 512;
const TRACESTATE = /^[\x20-\x7e]{1,512}$/;

/** True for a version-00 `traceparent` whose trace and parent ids are not all zeros. */
export function validTraceparent(value: unknown): value is string {
  if (typeof value !== "string") return false;
  const match = TRACEPARENT.exec(value);
  return match !== null && !/^0+$/.test(match[1] as string) && !/^0+$/.test(match[2] as string);
}

/** The `trace` of a received envelope, or undefined when invalid (ignored, never an error). */
export function parseTrace(raw: unknown): TraceContext | undefined {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) return undefined;
  const fields = raw as Record<string, unknown>;
  const parent = plain(get(fields, "traceparent"));
  if (!validTraceparent(parent)) return undefined;
  const trace: TraceContext = { traceparent: parent };
  const state = plain(get(fields, "tracestate"));
  if (typeof state === "string" && TRACESTATE.test(state)) trace.tracestate = state;
  return trace;
}

const STRING_FIELDS = [
  ["event", MAX_NAME_LENGTH],
  ["room", MAX_NAME_LENGTH],
  ["stream", MAX_NAME_LENGTH],
  ["epoch", MAX_EPOCH_LENGTH],
  ["ref", MAX_ID_LENGTH],
] as const;

const KNOWN = new Set([
  "type",
  "id",
  "timestamp",
  "data",
  "ack",
  "offset",
  "ttl",
  "deadline",
  "code",
  ...STRING_FIELDS.map(([name]) => name),
]);

/** Length in characters (code points), as protocol.md counts. */
function length(text: string): number {
  let count = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < text.length) {
      const d = text.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) i++;
    }
    count++;
  }
  return count;
}

function validString(value: unknown, limit: number): value is string {
  if (typeof value !== "string" || value.length === 0) return false;
  // A UTF-16 length within the limit is within it in code points too.
  return value.length <= limit || length(value) <= limit;
}

function validUint(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}

function plain(value: unknown): unknown {
  return value instanceof FloatLiteral ? value.value : value;
}

/**
 * Validate a decoded frame; throw `ProtocolError` with the code and `ref`
 * protocol.md's validation order prescribes.
 */
export function fromWire(raw: unknown, limits: DataLimits = DEFAULT_LIMITS): Envelope {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new ProtocolError(ErrorCode.BAD_ENVELOPE, "envelope must be an object");
  }
  const wire = raw as Record<string, unknown>;
  const ident = get(wire, "id");
  const ref = validString(ident, MAX_ID_LENGTH) ? ident : null;
  const kind = get(wire, "type");
  if (typeof kind !== "string") {
    throw new ProtocolError(ErrorCode.BAD_ENVELOPE, "`type` must be a string", ref);
  }
  if (!TYPES.has(kind)) {
    throw new ProtocolError(ErrorCode.UNKNOWN_TYPE, `unknown type ${JSON.stringify(kind.slice(0, 64))}`, ref);
  }
  if (ref === null) {
    throw new ProtocolError(ErrorCode.BAD_ENVELOPE, `\`id\` must be a string of 1-${MAX_ID_LENGTH} characters`);
  }
  const bad = (message: string): never => {
    throw new ProtocolError(ErrorCode.BAD_ENVELOPE, message, ref);
  };
  const timestamp = get(wire, "timestamp");
  if (!validUint(timestamp)) bad("`timestamp` must be a non-negative integer");
  const envelope: Envelope = { type: kind as MessageType, id: ref, timestamp: timestamp as number };
  for (const [name, limit] of STRING_FIELDS) {
    const value = plain(get(wire, name));
    if (value === null || value === undefined) continue;
    if (!validString(value, limit)) bad(`\`${name}\` must be a string of 1-${limit} characters`);
    envelope[name] = value as string;
  }
  const offset = get(wire, "offset");
  if (offset !== null && offset !== undefined) {
    if (!validUint(offset)) bad("`offset` must be a non-negative integer");
    envelope.offset = offset as number;
  }
  const ttl = get(wire, "ttl");
  if (ttl !== null && ttl !== undefined) {
    if (!validUint(ttl) || ttl === 0) bad("`ttl` must be a positive integer");
    envelope.ttl = ttl as number;
  }
  const deadline = get(wire, "deadline");
  if (deadline !== null && deadline !== undefined) {
    if (!validUint(deadline) || deadline === 0) bad("`deadline` must be a positive integer");
    envelope.deadline = deadline as number;
  }
  const code = get(wire, "code");
  if (code !== null && code !== undefined) {
    if (!validUint(code) || code < 1000 || code > 4999) bad("`code` must be an integer in 1000-4999");
    envelope.code = code as number;
  }
  const ack = plain(get(wire, "ack"));
  if (ack !== null && ack !== undefined) {
    if (typeof ack !== "boolean") bad("`ack` must be a boolean");
    if (ack) envelope.ack = true;
  }
  const data = plain(get(wire, "data"));
  // `trace` is not in KNOWN: checkValues holds it to the data model first.
  // A batch's inner envelopes sit two levels down: depth counts from each (protocol.md 18).
  checkValues(wire, data, kind === "batch" ? batchLimits(limits) : limits, ref);
  const trace = parseTrace(get(wire, "trace"));
  if (trace !== undefined) envelope.trace = trace;
  if (data !== null && data !== undefined) envelope.data = data;
  checkTypeRules(envelope);
  return envelope;
}

/** The data model's bounds for a `batch` frame: two levels more, the same value budget. */
export function batchLimits(limits: DataLimits): DataLimits {
  return { maxDepth: limits.maxDepth + 2, maxValues: limits.maxValues };
}

function get(wire: Record<string, unknown>, key: string): unknown {
  return Object.prototype.hasOwnProperty.call(wire, key) ? wire[key] : undefined;
}

/** `data` and the unknown fields stay in the data model (protocol.md 2). */
function checkValues(wire: Record<string, unknown>, data: unknown, limits: DataLimits, ref: string): void {
  try {
    let budget = limits.maxValues;
    if (data !== null && data !== undefined) budget -= checkValue(data, limits, { fromWire: true });
    for (const key of Object.keys(wire)) {
      if (KNOWN.has(key)) continue;
      budget -= checkValue(plain(wire[key]), limits, {
        root: key.slice(0, 32),
        budget,
        fromWire: true,
      });
    }
  } catch (error) {
    if (error instanceof DataModelError) throw new ProtocolError(ErrorCode.BAD_ENVELOPE, error.message, ref);
    throw error;
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function checkTypeRules(envelope: Envelope): void {
  const require = (condition: boolean, message: string): void => {
    if (!condition) throw new ProtocolError(ErrorCode.BAD_ENVELOPE, message, envelope.id);
  };
  const hasOffset = envelope.offset !== undefined;
  const hasEpoch = envelope.epoch !== undefined;
  switch (envelope.type) {
    case "hello":
    case "welcome":
      require(isObject(envelope.data), `\`${envelope.type}\` needs object \`data\``);
      if (envelope.type === "welcome") require(envelope.ref !== undefined, "`welcome` needs `ref`");
      return;
    case "event":
      require(
        (envelope.stream !== undefined) === hasOffset && hasOffset === hasEpoch,
        "`stream`, `offset` and `epoch` go together",
      );
      require(!hasOffset || (envelope.offset as number) >= 1, "stream offsets start at 1");
      return;
    case "ack":
      require(
        envelope.ref !== undefined || (envelope.stream !== undefined && hasOffset),
        "`ack` needs `ref`, or `stream` and `offset`",
      );
      return;
    case "call":
      require(envelope.event !== undefined, "`call` needs `event` (the method)");
      return;
    case "result":
      require(envelope.ref !== undefined, "`result` needs `ref`");
      return;
    case "error":
      require(envelope.code !== undefined, "`error` needs `code`");
      return;
    case "subscribe":
      require(envelope.room !== undefined, "`subscribe` needs `room`");
      require(hasOffset === hasEpoch, "`offset` and `epoch` go together");
      return;
    case "unsubscribe":
      require(envelope.room !== undefined, "`unsubscribe` needs `room`");
      return;
    case "batch":
      require(Array.isArray(envelope.data), "`batch` needs array `data`");
      return;
    case "transfer":
      require(isObject(envelope.data) && typeof envelope.data.op === "string", "`transfer` needs `data.op`");
      return;
    case "auth": {
      const data = envelope.data;
      require(isObject(data) && typeof data.token === "string" && data.token.length > 0, "`auth` needs `data.token`");
      return;
    }
    case "heartbeat":
      return;
  }
}

/** The object a codec serialises: present fields only, in a fixed order. */
export function toWire(envelope: Envelope): Record<string, unknown> {
  const wire: Record<string, unknown> = {
    type: envelope.type,
    id: envelope.id,
    timestamp: envelope.timestamp,
  };
  if (envelope.data !== undefined && envelope.data !== null) wire.data = envelope.data;
  if (envelope.event !== undefined) wire.event = envelope.event;
  if (envelope.room !== undefined) wire.room = envelope.room;
  if (envelope.stream !== undefined) wire.stream = envelope.stream;
  if (envelope.offset !== undefined) wire.offset = envelope.offset;
  if (envelope.epoch !== undefined) wire.epoch = envelope.epoch;
  if (envelope.ack === true) wire.ack = true;
  if (envelope.ref !== undefined) wire.ref = envelope.ref;
  if (envelope.ttl !== undefined) wire.ttl = envelope.ttl;
  if (envelope.deadline !== undefined) wire.deadline = envelope.deadline;
  if (envelope.code !== undefined) wire.code = envelope.code;
  if (envelope.trace !== undefined) {
    const trace: Record<string, string> = { traceparent: envelope.trace.traceparent };
    if (envelope.trace.tracestate !== undefined) trace.tracestate = envelope.trace.tracestate;
    wire.trace = trace;
  }
  return wire;
}

/** True when the envelope carries a TTL that has elapsed at `nowMs`. */
export function expired(envelope: Envelope, nowMs: number): boolean {
  return envelope.ttl !== undefined && nowMs >= envelope.timestamp + envelope.ttl;
}
