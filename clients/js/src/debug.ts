/**
 * The DevTools hook: with `debug: true`, a client registers itself on
 * `globalThis.__WARPSOCKET_DEVTOOLS_HOOK__` and reports its state changes,
 * the envelopes it decodes and sends, and a summary of its streams and
 * unconfirmed messages. The WarpSocket DevTools extension
 * (clients/devtools/) reads it; so can a test or a console.
 *
 * The hook is a plain object any party may create first (the extension's
 * page script usually does, before the page's own scripts run):
 *
 *     { version: 1, clients: DebugRecord[], listeners: Set<(event) => void> }
 *
 * Memory is bounded (ring buffers per client), and secrets never reach it:
 * every `token`/`resume_token`-like field is replaced by "[redacted]".
 */
import { FloatLiteral, UnsafeInteger } from "./json.js";

export const HOOK_NAME = "__WARPSOCKET_DEVTOOLS_HOOK__";

/** Kept per client: the latest state changes and envelopes. */
export const MAX_STATES = 100;
export const MAX_ENVELOPES = 200;

export type DebugEvent =
  | { type: "client"; client: number; url: string; at: number }
  | { type: "state"; client: number; at: number; state: string; previous: string; detail: string | null }
  | { type: "envelope"; client: number; at: number; direction: "in" | "out"; envelope: Record<string, unknown> }
  | { type: "status"; client: number; at: number; status: DebugStatus };

/** What a client is holding right now. */
export interface DebugStatus {
  state: string;
  session: string | null;
  rooms: string[];
  /** Stream -> last delivered position (what a resume presents). */
  streams: Record<string, { offset: number; epoch: string }>;
  /** Sent and awaiting the server's answer (ack or result). */
  pending: DebugPending[];
  /** Waiting for a connection. */
  queued: DebugPending[];
  /** Server `ack: true` events delivered but not yet acknowledged. */
  unackedIn: number;
  nextAttemptAt: number | null;
  offline: boolean;
  stats: Record<string, unknown>;
}

export interface DebugPending {
  id: string;
  type: string;
  event: string | null;
  room: string | null;
  attempts: number;
  deadline: number | null;
}

/** One client as the hook holds it. */
export interface DebugRecord {
  id: number;
  url: string;
  createdAt: number;
  states: Array<{ at: number; state: string; previous: string; detail: string | null }>;
  envelopes: Array<{ at: number; direction: "in" | "out"; envelope: Record<string, unknown> }>;
  status(): DebugStatus;
}

export interface DevtoolsHook {
  version: 1;
  clients: DebugRecord[];
  listeners: Set<(event: DebugEvent) => void>;
}

/** The page's hook, created if nobody did yet. */
export function devtoolsHook(): DevtoolsHook {
  const scope = globalThis as unknown as Record<string, unknown>;
  const found = scope[HOOK_NAME] as DevtoolsHook | undefined;
  if (found !== undefined && found !== null && found.version === 1) return found;
  const hook: DevtoolsHook = { version: 1, clients: [], listeners: new Set() };
  scope[HOOK_NAME] = hook;
  return hook;
}

let nextId = 1;

/** A client's side of the hook: it records and announces what the client does. */
export class DebugReporter {
  readonly record: DebugRecord;
  private readonly hook: DevtoolsHook;
  private statusTimer: ReturnType<typeof setTimeout> | null = null;

  constructor(url: string, status: () => DebugStatus) {
    this.hook = devtoolsHook();
    this.record = { id: nextId++, url, createdAt: Date.now(), states: [], envelopes: [], status };
    this.hook.clients.push(this.record);
    // The hook lives as long as the page: keep only the latest clients.
    if (this.hook.clients.length > 50) this.hook.clients.splice(0, this.hook.clients.length - 50);
    this.emit({ type: "client", client: this.record.id, url, at: this.record.createdAt });
  }

  state(state: string, previous: string, detail: string | null): void {
    const entry = { at: Date.now(), state, previous, detail };
    push(this.record.states, entry, MAX_STATES);
    this.emit({ type: "state", client: this.record.id, ...entry });
    this.changed();
  }

  envelope(direction: "in" | "out", envelope: object): void {
    const entry = { at: Date.now(), direction, envelope: redact(envelope, 0) as Record<string, unknown> };
    push(this.record.envelopes, entry, MAX_ENVELOPES);
    this.emit({ type: "envelope", client: this.record.id, ...entry });
    this.changed();
  }

  /** A status event after a burst of changes (at most one per 250 ms). */
  changed(): void {
    if (this.statusTimer !== null) return;
    this.statusTimer = setTimeout(() => {
      this.statusTimer = null;
      this.emit({ type: "status", client: this.record.id, at: Date.now(), status: this.record.status() });
    }, 250);
  }

  private emit(event: DebugEvent): void {
    for (const listener of [...this.hook.listeners]) {
      try {
        listener(event);
      } catch {
        // a broken listener must not break the client
      }
    }
  }
}

function push<T>(ring: T[], entry: T, max: number): void {
  ring.push(entry);
  if (ring.length > max) ring.splice(0, ring.length - max);
}

const SECRET = /token|secret|password|authorization/i;

/**
 * A copy safe to keep and to post across worlds: secrets redacted, numbers
 * parsed from JSON as they are, depth and size bounded.
 */
export function redact(value: unknown, depth: number): unknown {
  if (value instanceof FloatLiteral) return value.value;
  if (value instanceof UnsafeInteger) return value.text;
  if (value === null || typeof value !== "object") return value;
  if (depth > 16) return "[too deep]";
  if (value instanceof Uint8Array) return `[${value.byteLength} bytes]`;
  if (Array.isArray(value)) {
    const items = value.slice(0, 100).map((item) => redact(item, depth + 1));
    if (value.length > 100) items.push(`[${value.length - 100} more]`);
    return items;
  }
  const copy: Record<string, unknown> = {};
  for (const [key, item] of Object.entries(value as Record<string, unknown>)) {
    if (item === undefined) continue;
    copy[key] = SECRET.test(key) && item !== null ? "[redacted]" : redact(item, depth + 1);
  }
  return copy;
}
