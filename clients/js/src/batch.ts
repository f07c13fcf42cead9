/**
 * The `batch` extension (protocol.md "Extension: batches"): envelopes written
 * within the batch window leave in one `batch` frame, and a `batch` the server
 * sends is taken apart into its envelopes.
 *
 * The window starts with the first envelope held: 0 gathers what is written
 * in the same task (a loop of sends) and flushes in a microtask, so nothing
 * waits for a timer; a positive window waits that long for more.
 */

import type { Codec } from "./codec.js";
import type { DataLimits } from "./datamodel.js";
import { fromWire, toWire, type Envelope } from "./envelope.js";

export const BATCH_EXTENSION = "batch";

/** Never inside a batch. */
const ALONE: ReadonlySet<string> = new Set(["hello", "batch"]);

export interface BatchBounds {
  readonly maxEnvelopes: number;
  readonly maxBytes: number;
}

/** `welcome.data.extensions.batch`, hostile until checked; null: not usable. */
export function grantedBounds(params: unknown): BatchBounds | null {
  if (typeof params !== "object" || params === null) return null;
  const { max_envelopes: envelopes, max_bytes: bytes } = params as Record<string, unknown>;
  if (!Number.isInteger(envelopes) || !Number.isInteger(bytes)) return null;
  if ((envelopes as number) < 2 || (bytes as number) < 64) return null;
  return { maxEnvelopes: envelopes as number, maxBytes: bytes as number };
}

/** The envelopes of a server's `batch`, in order; invalid ones are left out. */
export function expandBatch(batch: Envelope, limits: DataLimits): Envelope[] {
  const found: Envelope[] = [];
  const items = Array.isArray(batch.data) ? batch.data : [];
  for (const item of items) {
    try {
      const inner = fromWire(item, limits);
      if (!ALONE.has(inner.type)) found.push(inner);
    } catch {
      // the server never sends one; nothing to answer
    }
  }
  return found;
}

function byteLength(payload: string | Uint8Array): number {
  return typeof payload === "string" ? new TextEncoder().encode(payload).byteLength : payload.byteLength;
}

/** Envelopes waiting for the end of the window, for one connection. */
export class OutgoingBatch {
  private pending: Envelope[] = [];
  private timer: ReturnType<typeof setTimeout> | null = null;
  private scheduled = false;
  private generation = 0;
  /** Batch frames sent. */
  frames = 0;

  constructor(
    private readonly windowMs: number,
    private readonly bounds: BatchBounds,
    private readonly codec: Codec,
    private readonly sendOne: (envelope: Envelope) => void,
    private readonly sendPayload: (payload: string | Uint8Array) => void,
    private readonly newId: () => string,
  ) {}

  /** Hold the envelope for the batch (true), or not (false: send it now). */
  add(envelope: Envelope): boolean {
    if (ALONE.has(envelope.type)) {
      this.flush(); // what was held goes first
      return false;
    }
    this.pending.push(envelope);
    if (this.pending.length >= this.bounds.maxEnvelopes) this.flush();
    else if (!this.scheduled) {
      this.scheduled = true;
      const generation = this.generation;
      const due = (): void => {
        if (generation === this.generation) this.flush();
      };
      if (this.windowMs > 0) this.timer = setTimeout(due, this.windowMs);
      else queueMicrotask(due);
    }
    return true;
  }

  /** Send what is held now. */
  flush(): void {
    this.cancel();
    const pending = this.pending;
    this.pending = [];
    if (pending.length > 0) this.send(pending);
  }

  /** The connection is gone: what is held is not sent (tracked messages are requeued). */
  drop(): void {
    this.cancel();
    this.pending = [];
  }

  private cancel(): void {
    this.generation++;
    this.scheduled = false;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }

  private send(envelopes: Envelope[]): void {
    if (envelopes.length === 1) {
      this.sendOne(envelopes[0] as Envelope);
      return;
    }
    const batch: Envelope = {
      type: "batch",
      id: this.newId(),
      timestamp: Date.now(),
      data: envelopes.map((envelope) => toWire(envelope)),
    };
    const payload = this.codec.encode(batch);
    if (byteLength(payload) > this.bounds.maxBytes) {
      // Too large for one frame: in halves, down to single envelopes.
      const half = Math.floor(envelopes.length / 2);
      this.send(envelopes.slice(0, half));
      this.send(envelopes.slice(half));
      return;
    }
    this.frames++;
    this.sendPayload(payload);
  }
}
