/**
 * Replay protection for signed envelopes (protocol.md "Extension:
 * signatures"): a timestamp window and the (key id, id, timestamp) seen in
 * it, in bounded memory. Past `maxEntries` the oldest is dropped and the
 * window's lower edge moves over it: what is forgotten is stale, never
 * accepted again.
 */
import { ErrorCode } from "./codes.js";

export const DEFAULT_WINDOW_MS = 300_000;
export const DEFAULT_MAX_ENTRIES = 100_000;

export class ReplayGuard {
  private readonly seen = new Map<string, number>(); // entry -> timestamp
  private floor = -1;

  constructor(
    readonly windowMs: number = DEFAULT_WINDOW_MS,
    readonly maxEntries: number = DEFAULT_MAX_ENTRIES,
  ) {
    if (!(windowMs > 0) || !(maxEntries >= 1)) throw new RangeError("windowMs and maxEntries must be positive");
  }

  get size(): number {
    return this.seen.size;
  }

  /** null (and remember it), or the code to refuse it with (4602 replayed, 4604 stale). */
  check(kid: string, id: string, timestamp: number, nowMs: number): number | null {
    this.expire(nowMs);
    if (Math.abs(timestamp - nowMs) > this.windowMs || timestamp <= this.floor) return ErrorCode.STALE;
    const entry = JSON.stringify([kid, id, timestamp]);
    if (this.seen.has(entry)) return ErrorCode.REPLAYED;
    this.seen.set(entry, timestamp);
    while (this.seen.size > this.maxEntries) this.dropOldest();
    return null;
  }

  private dropOldest(): void {
    // A client sees few envelopes outside streams: a scan is cheap enough.
    let oldest: string | null = null;
    let at = Infinity;
    for (const [entry, timestamp] of this.seen) {
      if (timestamp < at) [oldest, at] = [entry, timestamp];
    }
    if (oldest === null) return;
    this.seen.delete(oldest);
    this.floor = Math.max(this.floor, at);
  }

  private expire(nowMs: number): void {
    const edge = nowMs - this.windowMs;
    for (const [entry, timestamp] of this.seen) if (timestamp < edge) this.seen.delete(entry);
  }
}
