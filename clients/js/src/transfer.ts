/**
 * Chunked transfers (protocol.md "Extension: chunked transfers"), the
 * receiving side and a send side for byte arrays.
 *
 *     const client = new WarpSocketClient(url, { extensions: ["chunks"] });
 *     client.onTransfer((transfer) => ({ write: (bytes) => parts.push(bytes) }));
 *
 * Relayed transfers are announced by a `warpsocket.transfer` stream event;
 * the handler returns a sink (or null to decline) and the client pulls the
 * chunks with credits, checks each one's SHA-256 (a bad or missing chunk is
 * re-requested), writes it to the sink, and checks the whole at the end.
 * Across a reconnect it pulls again from the chunks it has written.
 */
import { ErrorCode } from "./codes.js";
import type { Envelope } from "./envelope.js";
import { Sha256, sha256Hex } from "./sha256.js";

export const TRANSFER_EXTENSION = "chunks";
export const ANNOUNCE_EVENT = "warpsocket.transfer";
export const MIN_CHUNK_SIZE = 1024;
export const MAX_CHUNK_SIZE = 512 * 1024;
export const MAX_RESENDS = 8;
const DEFAULT_WINDOW = 8;
const NOT_NEGOTIATED =
  "the connection has no chunks extension (the server does not offer it, or transfers were first used after connect)";
const ID = /^[A-Za-z0-9_.:-]{1,128}$/;
const HEX64 = /^[0-9a-f]{64}$/;

/** Where received bytes go: `write` is called once per verified chunk, in order. */
export interface TransferSink {
  write(bytes: Uint8Array): void;
}

/** A transfer failed: `code` is 4620-4625 or another code of protocol.md section 10. */
export class TransferError extends Error {
  override readonly name = "TransferError";
  constructor(
    readonly transfer: string,
    readonly code: number,
    message: string,
  ) {
    super(`${code}: ${message}`);
  }
}

// ------------------------------------------------------------------ base64url

const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const LOOKUP = new Int16Array(128).fill(-1);
for (let i = 0; i < ALPHABET.length; i++) LOOKUP[ALPHABET.charCodeAt(i)] = i;

/** base64url without padding (RFC 4648 section 5). */
export function encodeBase64url(bytes: Uint8Array): string {
  let out = "";
  let i = 0;
  for (; i + 3 <= bytes.length; i += 3) {
    const n = ((bytes[i] as number) << 16) | ((bytes[i + 1] as number) << 8) | (bytes[i + 2] as number);
    out += ALPHABET.charAt(n >>> 18) + ALPHABET.charAt((n >>> 12) & 63) + ALPHABET.charAt((n >>> 6) & 63) + ALPHABET.charAt(n & 63);
  }
  const rest = bytes.length - i;
  if (rest === 1) {
    const n = (bytes[i] as number) << 16;
    out += ALPHABET.charAt(n >>> 18) + ALPHABET.charAt((n >>> 12) & 63);
  } else if (rest === 2) {
    const n = ((bytes[i] as number) << 16) | ((bytes[i + 1] as number) << 8);
    out += ALPHABET.charAt(n >>> 18) + ALPHABET.charAt((n >>> 12) & 63) + ALPHABET.charAt((n >>> 6) & 63);
  }
  return out;
}

/** Strict base64url decoding (no padding, only the alphabet); null if invalid. */
export function decodeBase64url(text: string): Uint8Array | null {
  if (text.length % 4 === 1) return null;
  const out = new Uint8Array(Math.floor((text.length * 3) / 4));
  let bits = 0;
  let value = 0;
  let at = 0;
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    const digit = code < 128 ? (LOOKUP[code] as number) : -1;
    if (digit < 0) return null;
    value = ((value << 6) | digit) & 0xffffff;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[at++] = (value >>> bits) & 0xff;
    }
  }
  return out;
}

// ------------------------------------------------------------------ chunks

export function chunkCount(size: number, chunkSize: number): number {
  return Math.ceil(size / chunkSize);
}

function chunkLength(seq: number, size: number, chunkSize: number): number {
  return Math.min(chunkSize, size - seq * chunkSize);
}

/** The `data` of a `chunk` op for these bytes. */
export function chunkData(transfer: string, seq: number, bytes: Uint8Array): Record<string, unknown> {
  return { op: "chunk", transfer, seq, hash: sha256Hex(bytes), bytes: encodeBase64url(bytes) };
}

/** The chunk's bytes when they decode, have their length and match their hash; else null. */
export function verifiedChunk(data: Record<string, unknown>, size: number, chunkSize: number): Uint8Array | null {
  const { seq, hash, bytes } = data;
  if (typeof seq !== "number" || !Number.isSafeInteger(seq) || seq < 0) return null;
  if (typeof hash !== "string" || !HEX64.test(hash) || typeof bytes !== "string") return null;
  const raw = decodeBase64url(bytes);
  if (raw === null || raw.length !== chunkLength(seq, size, chunkSize)) return null;
  return sha256Hex(raw) === hash ? raw : null;
}

// ------------------------------------------------------------------ receiving

/** A transfer the server offers this client (an `onTransfer` handler's argument). */
export class IncomingTransfer {
  received = 0;
  /** Called with (bytes received, size) after each chunk. */
  onProgress: ((received: number, size: number) => void) | null = null;
  /** Resolves with the SHA-256 once the sink has every byte and the whole matched. */
  readonly done: Promise<string>;
  /** @internal */ resolve!: (sha256: string) => void;
  /** @internal */ reject!: (error: TransferError) => void;
  /** @internal */ next = 0;
  /** @internal */ nacked: number | null = null;
  /** @internal */ resends = 0;
  /** @internal */ readonly hasher = new Sha256();
  /** @internal */ sink: TransferSink | null = null;

  constructor(
    readonly id: string,
    readonly size: number,
    readonly sha256: string,
    readonly chunkSize: number,
    readonly name: string | null,
    readonly meta: unknown,
    readonly room: string | null,
    readonly sender: string | null,
    private readonly owner: Transfers,
  ) {
    this.done = new Promise<string>((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
    this.done.catch(() => undefined); // a failure is the caller's to see, not unhandled
  }

  /** Stop receiving; the server drops its reader (`done` rejects with 4621). */
  cancel(message = "cancelled by the receiver"): void {
    this.owner.fail(this, ErrorCode.TRANSFER_CANCELLED, message, true);
  }
}

export type TransferHandler = (transfer: IncomingTransfer) => TransferSink | null | undefined;

/** The hooks a client gives its transfers. */
export interface TransferPort {
  /** Send a `transfer` envelope's data now (dropped when not connected). */
  send(data: Record<string, unknown>, code?: number): void;
  /** The `chunks` parameters the last welcome granted, or undefined. */
  params(): Record<string, unknown> | undefined;
  /** Welcomed now (a transfer made then cannot wait for the next welcome). */
  isOpen(): boolean;
  report(error: unknown): void;
}

/** The `chunks` extension on one client: receiving, and sending byte arrays. */
export class Transfers {
  private handler: TransferHandler | null = null;
  private readonly incoming = new Map<string, IncomingTransfer>();
  private readonly outgoing = new Map<string, OutgoingTransfer>();

  constructor(private readonly port: TransferPort) {}

  onTransfer(handler: TransferHandler): void {
    this.handler = handler;
  }

  get receiving(): IncomingTransfer[] {
    return [...this.incoming.values()];
  }

  get sending(): OutgoingTransfer[] {
    return [...this.outgoing.values()];
  }

  private window(): number {
    const value = this.port.params()?.window;
    return typeof value === "number" && Number.isSafeInteger(value) && value >= 1 ? Math.min(value, 64) : DEFAULT_WINDOW;
  }

  /** A welcome: resume every transfer (pull again / offer again). */
  opened(): void {
    const params = this.port.params();
    for (const transfer of this.outgoing.values()) {
      if (params === undefined) this.failOutgoing(transfer, ErrorCode.UNKNOWN_TYPE, NOT_NEGOTIATED);
      else this.offer(transfer);
    }
    for (const transfer of this.incoming.values()) this.pull(transfer);
  }

  /** A `warpsocket.transfer` event: true when taken here. */
  announced(envelope: Envelope): boolean {
    if (this.handler === null) return false;
    const data = envelope.data;
    if (!isRecord(data)) return true;
    const { transfer, size, sha256, chunk_size: chunkSize } = data;
    if (
      typeof transfer !== "string" ||
      !ID.test(transfer) ||
      typeof size !== "number" ||
      !Number.isSafeInteger(size) ||
      size < 0 ||
      typeof sha256 !== "string" ||
      !HEX64.test(sha256) ||
      typeof chunkSize !== "number" ||
      !Number.isSafeInteger(chunkSize) ||
      chunkSize < MIN_CHUNK_SIZE ||
      chunkSize > MAX_CHUNK_SIZE
    ) {
      return true; // hostile or broken: not delivered, not pulled
    }
    if (this.incoming.has(transfer)) return true;
    const text = (value: unknown): string | null => (typeof value === "string" ? value : null);
    const incoming = new IncomingTransfer(
      transfer,
      size,
      sha256,
      chunkSize,
      text(data.name),
      data.meta,
      text(data.room),
      text(data.from),
      this,
    );
    let sink: TransferSink | null | undefined;
    try {
      sink = this.handler(incoming);
    } catch (error) {
      this.port.report(error);
      return true;
    }
    if (sink === null || sink === undefined) return true;
    incoming.sink = sink;
    this.incoming.set(transfer, incoming);
    if (size === 0) this.complete(incoming);
    else this.pull(incoming);
    return true;
  }

  private pull(incoming: IncomingTransfer): void {
    incoming.nacked = null;
    this.port.send({ op: "pull", transfer: incoming.id, next: incoming.next, limit: incoming.next + this.window() });
  }

  private chunk(incoming: IncomingTransfer, data: Record<string, unknown>): void {
    const seq = data.seq;
    if (typeof seq !== "number" || seq < incoming.next) return;
    if (seq > incoming.next) {
      if (incoming.nacked !== incoming.next) {
        incoming.nacked = incoming.next;
        this.port.send({ op: "nack", transfer: incoming.id, seq: incoming.next });
      }
      return;
    }
    const bytes = verifiedChunk(data, incoming.size, incoming.chunkSize);
    if (bytes === null) {
      incoming.resends++;
      if (incoming.resends > MAX_RESENDS) {
        this.fail(incoming, ErrorCode.TRANSFER_CORRUPT, "a chunk failed too often", true);
        return;
      }
      incoming.nacked = incoming.next;
      this.port.send({ op: "nack", transfer: incoming.id, seq: incoming.next });
      return;
    }
    try {
      (incoming.sink as TransferSink).write(bytes);
    } catch (error) {
      this.fail(incoming, ErrorCode.HANDLER_ERROR, `sink: ${String(error)}`, true);
      return;
    }
    incoming.hasher.update(bytes);
    incoming.next++;
    incoming.resends = 0;
    incoming.nacked = null;
    incoming.received += bytes.length;
    try {
      incoming.onProgress?.(incoming.received, incoming.size);
    } catch (error) {
      this.port.report(error);
    }
    if (incoming.received === incoming.size) {
      this.complete(incoming);
      return;
    }
    this.port.send({ op: "credit", transfer: incoming.id, next: incoming.next, limit: incoming.next + this.window() });
  }

  private complete(incoming: IncomingTransfer): void {
    const digest = incoming.hasher.hex();
    if (digest !== incoming.sha256) {
      this.fail(incoming, ErrorCode.TRANSFER_CORRUPT, "SHA-256 mismatch", true);
      return;
    }
    this.incoming.delete(incoming.id);
    if (incoming.size > 0) this.port.send({ op: "done", transfer: incoming.id, sha256: digest });
    incoming.resolve(digest);
  }

  /** @internal */
  fail(incoming: IncomingTransfer, code: number, message: string, tell: boolean): void {
    if (!this.incoming.delete(incoming.id)) return;
    if (tell) this.port.send(cancelData(incoming.id, code, message), code);
    incoming.reject(new TransferError(incoming.id, code, message));
  }

  // ------------------------------------------------------------------ sending

  /** Send bytes to the server application, a session (`to`) or a room. */
  sendBytes(
    bytes: Uint8Array,
    options: { to?: string; room?: string; name?: string; meta?: unknown; onProgress?: (sent: number, size: number) => void } = {},
  ): OutgoingTransfer {
    if (options.to !== undefined && options.room !== undefined) throw new TypeError("send to a session or a room, not both");
    const transfer = new OutgoingTransfer(randomTransferId(), bytes, options, this);
    this.outgoing.set(transfer.id, transfer);
    if (this.port.params() !== undefined) this.offer(transfer);
    else if (this.port.isOpen()) this.failOutgoing(transfer, ErrorCode.UNKNOWN_TYPE, NOT_NEGOTIATED);
    return transfer;
  }

  private offer(transfer: OutgoingTransfer): void {
    const params = this.port.params() ?? {};
    if (transfer.chunkSize === 0) {
      const maxSize = params.max_size;
      if (typeof maxSize === "number" && maxSize > 0 && transfer.size > maxSize) {
        this.failOutgoing(transfer, ErrorCode.TRANSFER_TOO_LARGE, "over the server's limit");
        return;
      }
      const chunkSize = params.chunk_size;
      transfer.chunkSize =
        typeof chunkSize === "number" && chunkSize >= MIN_CHUNK_SIZE && chunkSize <= MAX_CHUNK_SIZE ? chunkSize : 262144;
      transfer.count = chunkCount(transfer.size, transfer.chunkSize);
    }
    const data: Record<string, unknown> = { op: "offer", transfer: transfer.id, size: transfer.size, chunk_size: transfer.chunkSize };
    const { to, room, name, meta } = transfer.options;
    if (to !== undefined) data.to = to;
    if (room !== undefined) data.room = room;
    if (name !== undefined) data.name = name;
    if (meta !== undefined) data.meta = meta;
    transfer.offered = true;
    transfer.ended = false; // a resume may have lost our `end`: send it again
    this.port.send(data);
  }

  private credit(transfer: OutgoingTransfer, data: Record<string, unknown>): void {
    const next = data.next as number;
    const limit = data.limit as number;
    if (transfer.offered) {
      transfer.offered = false;
      transfer.sent = transfer.acked = next;
      transfer.limit = limit;
    } else {
      transfer.acked = Math.max(transfer.acked, Math.min(next, transfer.sent));
      transfer.limit = Math.max(transfer.limit, limit);
    }
    const acknowledged = Math.min(transfer.size, transfer.acked * transfer.chunkSize);
    if (acknowledged !== transfer.acknowledged) {
      transfer.acknowledged = acknowledged;
      try {
        transfer.options.onProgress?.(acknowledged, transfer.size);
      } catch (error) {
        this.port.report(error);
      }
    }
    this.pump(transfer);
  }

  private pump(transfer: OutgoingTransfer): void {
    const end = Math.min(transfer.limit, transfer.count);
    while (transfer.sent < end) {
      const seq = transfer.sent;
      const bytes = transfer.bytes.subarray(seq * transfer.chunkSize, Math.min(transfer.size, (seq + 1) * transfer.chunkSize));
      if (seq === transfer.hashed) {
        transfer.hasher.update(bytes);
        transfer.hashed++;
      }
      transfer.sent++;
      this.port.send(chunkData(transfer.id, seq, bytes));
    }
    if (transfer.acked === transfer.count && !transfer.ended) {
      transfer.ended = true;
      transfer.digest = transfer.hasher.hex();
      this.port.send({ op: "end", transfer: transfer.id, sha256: transfer.digest });
    }
  }

  /** @internal */
  failOutgoing(transfer: OutgoingTransfer, code: number, message: string, tell = false): void {
    if (!this.outgoing.delete(transfer.id)) return;
    if (tell) this.port.send(cancelData(transfer.id, code, message), code);
    transfer.reject(new TransferError(transfer.id, code, message));
  }

  // ------------------------------------------------------------------ inbound

  /** A `transfer` envelope from the server (hostile until checked). */
  received(envelope: Envelope): void {
    const data = envelope.data;
    if (!isRecord(data) || typeof data.transfer !== "string" || typeof data.op !== "string") return;
    const incoming = this.incoming.get(data.transfer);
    const outgoing = this.outgoing.get(data.transfer);
    switch (data.op) {
      case "chunk":
        if (incoming !== undefined) this.chunk(incoming, data);
        return;
      case "cancel": {
        const code = envelope.code ?? ErrorCode.TRANSFER_CANCELLED;
        const message = typeof data.message === "string" ? data.message : "cancelled";
        if (incoming !== undefined) this.fail(incoming, code, message, false);
        if (outgoing !== undefined) this.failOutgoing(outgoing, code, message);
        return;
      }
      case "credit":
        if (outgoing !== undefined && isCount(data.next) && isCount(data.limit)) this.credit(outgoing, data);
        return;
      case "nack":
        if (outgoing !== undefined && isCount(data.seq)) {
          if (outgoing.acked <= data.seq && data.seq < outgoing.sent) outgoing.sent = data.seq;
          this.pump(outgoing);
        }
        return;
      case "done":
        if (outgoing !== undefined) {
          const whole = outgoing.hashed === outgoing.count ? outgoing.hasher.hex() : sha256Hex(outgoing.bytes);
          this.outgoing.delete(outgoing.id);
          if (data.sha256 === whole) {
            outgoing.acknowledged = outgoing.size;
            outgoing.resolve(whole);
          } else {
            outgoing.reject(new TransferError(outgoing.id, ErrorCode.TRANSFER_CORRUPT, "SHA-256 mismatch"));
          }
        }
        return;
    }
  }
}

/** A transfer this client sends (`client.sendBytes`). */
export class OutgoingTransfer {
  readonly size: number;
  /** Bytes the server has confirmed. */
  acknowledged = 0;
  /** Resolves with the SHA-256 once the server has every byte and verified the whole. */
  readonly result: Promise<string>;
  /** @internal */ resolve!: (sha256: string) => void;
  /** @internal */ reject!: (error: TransferError) => void;
  /** @internal */ chunkSize = 0;
  /** @internal */ count = 0;
  /** @internal */ acked = 0;
  /** @internal */ sent = 0;
  /** @internal */ limit = 0;
  /** @internal */ hashed = 0;
  /** @internal */ offered = false;
  /** @internal */ ended = false;
  /** @internal */ digest = "";
  /** @internal */ readonly hasher = new Sha256();

  constructor(
    readonly id: string,
    /** @internal */ readonly bytes: Uint8Array,
    /** @internal */ readonly options: { to?: string; room?: string; name?: string; meta?: unknown; onProgress?: (sent: number, size: number) => void },
    private readonly owner: Transfers,
  ) {
    this.size = bytes.length;
    this.result = new Promise<string>((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
    this.result.catch(() => undefined);
  }

  cancel(message = "cancelled by the sender"): void {
    this.owner.failOutgoing(this, ErrorCode.TRANSFER_CANCELLED, message, true);
  }
}

function cancelData(transfer: string, code: number, message: string): Record<string, unknown> {
  const name = Object.entries(ErrorCode).find(([, value]) => value === code)?.[0]?.toLowerCase() ?? "error";
  return { op: "cancel", transfer, name, message };
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isCount(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}

function randomTransferId(): string {
  const bytes = new Uint8Array(16);
  globalThis.crypto.getRandomValues(bytes);
  return encodeBase64url(bytes);
}
