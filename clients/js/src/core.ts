/**
 * The client's reliability core, sans-I/O (the TypeScript twin of the Python
 * `ClientCore`).
 *
 * It owns what must survive a reconnect: the session and its resume token,
 * the position on every stream, the rooms, the offline queue and the messages
 * awaiting an answer. The I/O shell feeds it connection events, envelopes and
 * the time, and performs the actions it returns. It never reads a clock,
 * opens a socket or sets a timer, so every rule is testable without them.
 */
import { ErrorCode } from "./codes.js";
import { checkValue, DataModelError, DEFAULT_LIMITS, type DataLimits } from "./datamodel.js";
import { expired, fromWire, MAX_NAME_LENGTH, toWire, type Envelope, type TraceContext } from "./envelope.js";
import { urlHelloText } from "./urlhello.js";

export interface Position {
  offset: number;
  epoch: string;
}

export type QueuePolicy = "reject-new" | "drop-oldest";

/**
 * What a page reload must not lose (a durable store keeps it): the session
 * and its resume token, the stream positions, the rooms, and every message
 * not yet confirmed, with its priority and deadlines. Plain JSON values.
 */
export interface DurableState {
  version: 1;
  session: string | null;
  resumeToken: string | null;
  positions: Record<string, Position>;
  rooms: string[];
  outgoing: DurableMessage[];
}

export interface DurableMessage {
  /** The envelope in its wire form (`toWire`), validated again on restore. */
  envelope: Record<string, unknown>;
  priority: number;
  tracked: boolean;
  deadlineMs: number | null;
  expiresMs: number | null;
}

export interface CoreOptions {
  /** Messages the offline queue holds (default 10000). */
  maxQueue: number;
  /** What `send` does when the queue is full (default "reject-new"). */
  queuePolicy: QueuePolicy;
  /** Default deadline for an answer to an acked send or a call (default 60000 ms). */
  ackDeadlineMs: number;
  /** First retry of an unanswered message on an open connection (default 5000 ms). */
  retryInitialMs: number;
  /** Cap of that retry backoff (default 30000 ms). */
  retryMaxMs: number;
  /** How long acknowledgements of server events are batched (default 50 ms). */
  ackBatchMs: number;
  /** Bytes an envelope would take on the wire, to refuse oversized sends locally. */
  encodedSize?: ((envelope: Envelope) => number) | undefined;
  /** Optional protocol extensions to ask the server for in every hello (protocol.md 4.4). */
  extensions?: readonly string[] | undefined;
}

export const DEFAULT_CORE_OPTIONS: CoreOptions = {
  maxQueue: 10000,
  queuePolicy: "reject-new",
  ackDeadlineMs: 60000,
  retryInitialMs: 5000,
  retryMaxMs: 30000,
  ackBatchMs: 50,
};

export type Status = "sent" | "acked" | "result" | "rejected" | "expired";

export type Action =
  | { kind: "transmit"; envelope: Envelope }
  | { kind: "deliver"; envelope: Envelope }
  | { kind: "outcome"; id: string; status: Status; data?: unknown; code?: number; message?: string }
  | { kind: "lost"; stream: string; reason: string }
  | { kind: "welcomed"; session: string; resumed: boolean; data: Record<string, unknown> }
  | { kind: "room"; room: string; joined: boolean; code?: number }
  | { kind: "reconnect"; code: number; reason: string };

export interface Outgoing {
  envelope: Envelope;
  priority: number;
  seq: number;
  /** Expects an answer (ack requested, or a call). */
  tracked: boolean;
  deadlineMs: number | null;
  /**
   * When no copy may be handled any more (client clock): the earlier of the
   * deadline and the end of the ttl. Every copy carries it as its `deadline`,
   * so a copy held up in the network is refused by the server (4302) rather
   * than handled after the outcome was reported (protocol.md 6).
   */
  expiresMs: number | null;
  attempts: number;
  nextRetryMs: number | null;
}

export interface SendOptions {
  ack?: boolean;
  room?: string;
  ttl?: number;
  priority?: number;
  /** Deadline for the answer, ms after submission (default `ackDeadlineMs`). */
  timeoutMs?: number;
  /** W3C trace context sent in the envelope's `trace` (protocol.md section 14). */
  trace?: TraceContext;
}

/** The connection's limits from `welcome.data.limits`. */
export interface Limits extends DataLimits {
  maxMessageSize: number;
}

export class ClientCore {
  readonly options: CoreOptions;
  session: string | null = null;
  /** The bearer secret that lets this client (and only it) resume `session`. */
  resumeToken: string | null = null;
  /** Extensions the last welcome granted: name -> the server's parameters (protocol.md 4.4). */
  extensions: Map<string, Record<string, unknown>> = new Map();
  readonly positions = new Map<string, Position>();
  rooms = new Set<string>();
  open = false;
  /** Rooms the server confirmed (so a welcome reports only what changed). */
  private confirmed = new Set<string>();
  limits: Limits = { ...DEFAULT_LIMITS, maxMessageSize: 1048576 };

  private seq = 0;
  private readonly queued = new Map<string, Outgoing>();
  private readonly inflight = new Map<string, Outgoing>();
  private readonly subscribing = new Map<string, string>(); // subscribe id -> room
  private helloId: string | null = null;
  /** The rooms the outstanding hello asked for (a room changed after it was built is settled after the welcome). */
  private helloRooms = new Set<string>();
  /** A lower bound of (server clock - client clock) in ms on this connection, from what it stamped. */
  clockOffsetMs: number | null = null;
  // Acknowledgements of `ack: true` events on `direct` (protocol.md 5.5).
  private readonly unacked = new Map<number, string>(); // offset -> id, awaiting the app
  private readonly acked = new Map<number, string>(); // offset -> id, acked above the watermark
  private ackResend = false; // a duplicate came: say the watermark again
  private ackDue: number | null = null;
  private readonly refAcks: string[] = []; // ids to acknowledge individually

  constructor(
    options: Partial<CoreOptions> = {},
    private readonly newId: () => string,
  ) {
    this.options = { ...DEFAULT_CORE_OPTIONS, ...options };
    const o = this.options;
    if (!(o.maxQueue >= 1) || !(o.ackDeadlineMs > 0) || !(o.retryInitialMs > 0) || !(o.ackBatchMs >= 0)) {
      throw new RangeError("queue size, deadline, retry interval must be positive");
    }
    if (o.retryMaxMs < o.retryInitialMs) throw new RangeError("retryMaxMs must be >= retryInitialMs");
  }

  get queueLength(): number {
    return this.queued.size;
  }

  get inflightCount(): number {
    return this.inflight.size;
  }

  /** What awaits an answer and what waits for a connection (the DevTools panel). */
  inspect(): { pending: Outgoing[]; queued: Outgoing[]; unackedIn: number } {
    const bySeq = (a: Outgoing, b: Outgoing) => a.seq - b.seq;
    return {
      pending: [...this.inflight.values()].sort(bySeq),
      queued: [...this.queued.values()].sort(bySeq),
      unackedIn: this.unacked.size,
    };
  }

  // ------------------------------------------------------------ durable state

  /** The state a reload must keep (see `DurableState`). */
  snapshot(): DurableState {
    const positions: Record<string, Position> = {};
    for (const [name, p] of this.positions) positions[name] = { offset: p.offset, epoch: p.epoch };
    const outgoing = [...this.inflight.values(), ...this.queued.values()]
      .sort((a, b) => a.seq - b.seq)
      .map((o) => ({
        envelope: toWire(o.envelope),
        priority: o.priority,
        tracked: o.tracked,
        deadlineMs: o.deadlineMs,
        expiresMs: o.expiresMs,
      }));
    return { version: 1, session: this.session, resumeToken: this.resumeToken, positions, rooms: [...this.rooms].sort(), outgoing };
  }

  /**
   * Take over a snapshot before the first connection (after a reload).
   * Storage is not trusted more than the network: anything malformed is
   * skipped. Returns the ids of the messages restored to the queue, which the
   * server deduplicates if a copy reached it before the reload.
   */
  restore(state: unknown): string[] {
    if (!isRecord(state) || state.version !== 1) return [];
    if (typeof state.session === "string" && state.session.length > 0 && state.session.length <= 128) {
      this.session = state.session;
      this.resumeToken = typeof state.resumeToken === "string" && state.resumeToken.length <= 1024 ? state.resumeToken : null;
    }
    if (isRecord(state.positions)) {
      for (const [name, p] of Object.entries(state.positions)) {
        if (name.length > 0 && name.length <= MAX_NAME_LENGTH + 5 && isPositionInfo(p) && !this.positions.has(name)) {
          this.positions.set(name, { offset: p.offset, epoch: p.epoch });
        }
      }
    }
    if (Array.isArray(state.rooms)) {
      for (const room of state.rooms) if (typeof room === "string" && room.length > 0 && room.length <= MAX_NAME_LENGTH) this.rooms.add(room);
    }
    const restored: string[] = [];
    // Restored messages go before anything sent since this client was made.
    let seq = -(Array.isArray(state.outgoing) ? state.outgoing.length : 0);
    for (const item of Array.isArray(state.outgoing) ? state.outgoing : []) {
      if (this.queued.size >= this.options.maxQueue) break;
      if (!isRecord(item)) continue;
      let envelope: Envelope;
      try {
        envelope = fromWire(item.envelope, this.limits);
      } catch {
        continue;
      }
      if ((envelope.type !== "event" && envelope.type !== "call") || this.queued.has(envelope.id) || this.inflight.has(envelope.id)) continue;
      const time = (value: unknown): number | null => (typeof value === "number" && Number.isFinite(value) ? value : null);
      this.queued.set(envelope.id, {
        envelope,
        priority: typeof item.priority === "number" && Number.isFinite(item.priority) ? item.priority : 0,
        seq: seq++,
        tracked: item.tracked === true || envelope.type === "call",
        deadlineMs: time(item.deadlineMs),
        expiresMs: time(item.expiresMs),
        attempts: 0,
        nextRetryMs: null,
      });
      restored.push(envelope.id);
    }
    return restored;
  }

  // ------------------------------------------------------------ connection

  /** The WebSocket is open: say hello. */
  connected(nowMs: number, token?: string | null, client?: Record<string, unknown>): Action[] {
    return [{ kind: "transmit", envelope: this.startHello(this.buildHello(nowMs, token, client)) }];
  }

  /**
   * Before the WebSocket is opened: the hello to carry in the upgrade
   * request's URL (protocol.md 4.5), with its JSON text, or null when this
   * connection's hello must go as a frame (a session to resume, a token, or
   * longer than 2,048 bytes). Returned, it is this connection's hello: its
   * welcome completes the handshake as after `connected`, and nothing is
   * to be transmitted on open.
   */
  urlHello(nowMs: number, client?: Record<string, unknown>): { envelope: Envelope; json: string } | null {
    if (this.session !== null) return null; // a resume (4.3): its resume token never goes in a URL
    const hello = this.buildHello(nowMs, null, client);
    const json = urlHelloText(hello);
    if (json === null) return null;
    this.startHello(hello);
    return { envelope: hello, json };
  }

  private buildHello(nowMs: number, token?: string | null, client?: Record<string, unknown>): Envelope {
    const streams: Record<string, Position> = {};
    for (const [name, p] of this.positions) streams[name] = { offset: p.offset, epoch: p.epoch };
    const data: Record<string, unknown> = {
      session: this.session,
      streams,
      rooms: [...this.rooms].sort(),
    };
    if (this.session !== null && this.resumeToken !== null) data.resume_token = this.resumeToken;
    if (token !== undefined && token !== null) data.token = token;
    if (client !== undefined) data.client = client;
    const asked = this.options.extensions ?? [];
    if (asked.length > 0) data.extensions = [...asked];
    return { type: "hello", id: this.newId(), timestamp: nowMs, data };
  }

  /** This connection's hello from now on (the welcome must answer it). */
  private startHello(hello: Envelope): Envelope {
    this.open = false;
    this.helloId = hello.id;
    this.helloRooms = new Set((hello.data as { rooms: string[] }).rooms);
    this.clockOffsetMs = null; // maybe another node, another clock
    return hello;
  }

  /** The connection is gone: whatever awaited an answer goes back in the queue. */
  disconnected(nowMs: number): Action[] {
    this.open = false;
    this.helloId = null;
    this.subscribing.clear();
    for (const outgoing of this.inflight.values()) {
      outgoing.nextRetryMs = null;
      this.queued.set(outgoing.envelope.id, outgoing);
    }
    this.inflight.clear();
    return this.tick(nowMs);
  }

  // ------------------------------------------------------------ sending

  send(event: string, data: unknown, nowMs: number, options: SendOptions = {}): [string, Action[]] {
    const envelope: Envelope = { type: "event", id: this.newId(), timestamp: nowMs, event };
    if (data !== undefined && data !== null) envelope.data = data;
    if (options.room !== undefined) envelope.room = options.room;
    if (options.ttl !== undefined) envelope.ttl = options.ttl;
    if (options.ack === true) envelope.ack = true;
    if (options.trace !== undefined) envelope.trace = options.trace;
    return [envelope.id, this.submit(envelope, options.ack === true, options, nowMs)];
  }

  call(method: string, data: unknown, nowMs: number, options: SendOptions = {}): [string, Action[]] {
    const envelope: Envelope = { type: "call", id: this.newId(), timestamp: nowMs, event: method };
    if (data !== undefined && data !== null) envelope.data = data;
    if (options.trace !== undefined) envelope.trace = options.trace;
    return [envelope.id, this.submit(envelope, true, options, nowMs)];
  }

  /** Why the protocol would refuse this envelope, or null (checked before queueing). */
  private refusal(envelope: Envelope): string | null {
    const name = envelope.event ?? "";
    if (name.length === 0 || name.length > MAX_NAME_LENGTH) return `event name must be 1-${MAX_NAME_LENGTH} characters`;
    if (envelope.room !== undefined && (envelope.room.length === 0 || envelope.room.length > MAX_NAME_LENGTH)) {
      return `room name must be 1-${MAX_NAME_LENGTH} characters`;
    }
    if (envelope.ttl !== undefined && !(Number.isSafeInteger(envelope.ttl) && envelope.ttl > 0)) {
      return "ttl must be a positive integer of milliseconds";
    }
    if (envelope.data !== undefined) {
      try {
        checkValue(envelope.data, this.limits);
      } catch (error) {
        if (error instanceof DataModelError) return error.message;
        throw error;
      }
    }
    return null;
  }

  private submit(envelope: Envelope, tracked: boolean, options: SendOptions, nowMs: number): Action[] {
    const deadlineMs = tracked ? nowMs + (options.timeoutMs ?? this.options.ackDeadlineMs) : null;
    const ends = [deadlineMs, envelope.ttl !== undefined ? envelope.timestamp + envelope.ttl : null].filter(
      (end): end is number => end !== null,
    );
    const outgoing: Outgoing = {
      envelope,
      priority: options.priority ?? 0,
      seq: this.seq++,
      tracked,
      deadlineMs,
      expiresMs: ends.length > 0 ? Math.min(...ends) : null,
      attempts: 0,
      nextRetryMs: null,
    };
    const refused = this.refusal(envelope);
    if (refused !== null) return [this.failed(outgoing, ErrorCode.BAD_ENVELOPE, refused)];
    const size = this.options.encodedSize?.(envelope);
    if (size !== undefined && size > this.limits.maxMessageSize) {
      return [
        this.failed(outgoing, ErrorCode.MESSAGE_TOO_LARGE, `${size} bytes exceed the limit of ${this.limits.maxMessageSize}`),
      ];
    }
    const actions: Action[] = [];
    if (this.queued.size >= this.options.maxQueue) {
      if (this.options.queuePolicy === "reject-new") {
        return [this.failed(outgoing, ErrorCode.QUEUE_FULL, "offline queue is full")];
      }
      // The oldest by submission order, whatever its priority.
      const oldest = this.queued.values().next().value as Outgoing;
      this.queued.delete(oldest.envelope.id);
      actions.push(this.failed(oldest, ErrorCode.QUEUE_FULL, "dropped: queue full"));
    }
    this.queued.set(envelope.id, outgoing);
    if (this.open) actions.push(...this.flush(nowMs));
    return actions;
  }

  /** Send the queue: higher priority first, then in submission order. */
  private flush(nowMs: number): Action[] {
    const waiting = [...this.queued.values()].sort((a, b) => b.priority - a.priority || a.seq - b.seq);
    this.queued.clear();
    const actions: Action[] = [];
    for (const outgoing of waiting) {
      // The deadline too, not only the TTL: a reconnect can come before the
      // tick that expires it, and nothing is (re)sent past its deadline
      // (protocol.md 6: no retry later than the dedup age).
      const failure = this.expiry(outgoing, nowMs);
      if (failure !== null) actions.push(failure);
      else actions.push(...this.transmit(outgoing, nowMs));
    }
    return actions;
  }

  private transmit(outgoing: Outgoing, nowMs: number): Action[] {
    outgoing.attempts++;
    const actions: Action[] = [{ kind: "transmit", envelope: this.copy(outgoing, nowMs) }];
    if (outgoing.tracked) {
      this.inflight.set(outgoing.envelope.id, outgoing);
      outgoing.nextRetryMs = nowMs + this.retryDelay(outgoing.attempts);
    } else {
      actions.push({ kind: "outcome", id: outgoing.envelope.id, status: "sent" });
    }
    return actions;
  }

  /**
   * The envelope as sent now. The server tests `timestamp + deadline` on its
   * own clock, so the timestamp is this moment on a lower bound of the
   * server's clock and the deadline what is left: whatever the clocks'
   * difference, no copy is handled after the client reported the message
   * expired. The application's ttl keeps its end, measured from the new stamp.
   */
  private copy(outgoing: Outgoing, nowMs: number): Envelope {
    const envelope = outgoing.envelope;
    if (outgoing.expiresMs === null) return envelope;
    const copy: Envelope = {
      ...envelope,
      timestamp: Math.max(0, nowMs + (this.clockOffsetMs ?? 0)),
      deadline: Math.max(1, outgoing.expiresMs - nowMs),
    };
    if (envelope.ttl !== undefined) copy.ttl = Math.max(1, envelope.timestamp + envelope.ttl - nowMs);
    return copy;
  }

  /** Tighten the lower bound of the server's clock from an envelope the connected node stamped. */
  private observeClock(envelope: Envelope, nowMs: number): void {
    const bound = envelope.timestamp - nowMs - 1; // both sides round down to ms
    if (this.clockOffsetMs === null || bound > this.clockOffsetMs) this.clockOffsetMs = bound;
  }

  private retryDelay(attempts: number): number {
    const delay = this.options.retryInitialMs * 2 ** Math.min(attempts - 1, 16);
    return Math.min(delay, this.options.retryMaxMs);
  }

  private failed(outgoing: Outgoing, code: number, message: string): Action {
    const status: Status = code === ErrorCode.EXPIRED || code === ErrorCode.TIMEOUT ? "expired" : "rejected";
    return { kind: "outcome", id: outgoing.envelope.id, status, code, message };
  }

  // ------------------------------------------------------------ rooms

  subscribe(room: string, nowMs: number): Action[] {
    this.rooms.add(room);
    if (!this.open) return []; // the next hello asks for it
    const envelope: Envelope = { type: "subscribe", id: this.newId(), timestamp: nowMs, room };
    const position = this.positions.get("room:" + room);
    if (position !== undefined) {
      envelope.offset = position.offset;
      envelope.epoch = position.epoch;
    }
    this.subscribing.set(envelope.id, room);
    return [{ kind: "transmit", envelope }];
  }

  unsubscribe(room: string, nowMs: number): Action[] {
    this.rooms.delete(room);
    this.confirmed.delete(room);
    this.positions.delete("room:" + room);
    if (!this.open) return [];
    return [{ kind: "transmit", envelope: { type: "unsubscribe", id: this.newId(), timestamp: nowMs, room } }];
  }

  // ------------------------------------------------------------ acknowledging server events

  /**
   * The application processed an `ack: true` event. Acknowledgements are
   * batched for `ackBatchMs`: cumulative (`stream` + `offset`) for the
   * `direct` prefix the application has finished, by `ref` for the events
   * it finished ahead of an earlier one still in progress.
   */
  acknowledge(event: Envelope, nowMs: number): Action[] {
    if (event.ack !== true) return [];
    const direct = this.positions.get("direct");
    if (event.stream === "direct" && direct !== undefined && event.epoch === direct.epoch) {
      const offset = event.offset as number;
      if (this.unacked.get(offset) !== event.id) return []; // already acknowledged
      this.unacked.delete(offset);
      this.acked.set(offset, event.id);
    } else {
      this.refAcks.push(event.id); // not a direct event of the current epoch: by id
    }
    this.ackDue ??= nowMs + this.options.ackBatchMs;
    return this.ackDue <= nowMs ? this.flushAcks(nowMs) : [];
  }

  /** Everything on `direct` up to here needs no more acknowledging. */
  private watermark(): number {
    const direct = this.positions.get("direct");
    if (direct === undefined) return 0;
    let low = direct.offset;
    for (const offset of this.unacked.keys()) low = Math.min(low, offset - 1);
    return low;
  }

  private flushAcks(nowMs: number): Action[] {
    if (!this.open) return []; // kept for the next connection
    this.ackDue = null;
    const actions: Action[] = [];
    const through = this.watermark();
    let cumulative = this.ackResend;
    for (const [offset, id] of this.acked) {
      if (offset <= through) cumulative = true;
      else this.refAcks.push(id);
    }
    this.acked.clear();
    this.ackResend = false;
    if (cumulative && through > 0) {
      actions.push({
        kind: "transmit",
        envelope: { type: "ack", id: this.newId(), timestamp: nowMs, stream: "direct", offset: through },
      });
    }
    for (const ref of this.refAcks.splice(0)) {
      actions.push({ kind: "transmit", envelope: { type: "ack", id: this.newId(), timestamp: nowMs, ref } });
    }
    return actions;
  }

  /** A duplicate of an event already acknowledged: acknowledge it again (5.2 rule 2). */
  private reacknowledge(event: Envelope, nowMs: number): void {
    const offset = event.offset as number;
    if (event.stream === "direct" && (this.unacked.has(offset) || this.acked.has(offset))) {
      return; // the application's own acknowledgement is still to come
    }
    if (event.stream === "direct" && offset <= this.watermark()) this.ackResend = true;
    else this.refAcks.push(event.id);
    this.ackDue ??= nowMs + this.options.ackBatchMs;
  }

  // ------------------------------------------------------------ receiving

  receive(envelope: Envelope, nowMs: number): Action[] {
    switch (envelope.type) {
      case "event":
        return this.event(envelope, nowMs);
      case "welcome":
        return this.welcome(envelope, nowMs);
      case "ack":
      case "result":
      case "error":
        return this.answer(envelope);
      case "heartbeat":
        this.observeClock(envelope, nowMs);
        if (envelope.ref === undefined) {
          return [{ kind: "transmit", envelope: { type: "heartbeat", id: this.newId(), timestamp: nowMs, ref: envelope.id } }];
        }
        return [];
      case "subscribe": {
        const room = envelope.room as string;
        const key = "room:" + room;
        if (envelope.offset !== undefined && envelope.epoch !== undefined && !this.positions.has(key)) {
          this.positions.set(key, { offset: envelope.offset, epoch: envelope.epoch });
        }
        this.rooms.add(room);
        this.confirmed.add(room);
        return [{ kind: "room", room, joined: true }];
      }
      case "unsubscribe": {
        const room = envelope.room as string;
        this.rooms.delete(room);
        this.confirmed.delete(room);
        this.positions.delete("room:" + room);
        return [{ kind: "room", room, joined: false }];
      }
      default:
        return [];
    }
  }

  private welcome(welcome: Envelope, nowMs: number): Action[] {
    if (welcome.ref === undefined || welcome.ref !== this.helloId) return [];
    // A hello is answered once: a repeated (or stale) welcome must not reset
    // the positions that events have advanced since.
    this.helloId = null;
    this.observeClock(welcome, nowMs);
    const data = welcome.data as Record<string, unknown>;
    const session = typeof data.session === "string" ? data.session : null;
    if (session === null) return [{ kind: "reconnect", code: ErrorCode.BAD_ENVELOPE, reason: "welcome without session" }];
    const actions: Action[] = [];
    if (session !== this.session) this.resumeToken = null;
    this.session = session;
    if (typeof data.resume_token === "string" && data.resume_token.length > 0) this.resumeToken = data.resume_token;
    this.readLimits(data.limits);
    this.readExtensions(data.extensions);
    const streams = isRecord(data.streams) ? data.streams : {};
    for (const [name, info] of Object.entries(streams)) {
      if (!isPositionInfo(info)) continue;
      if (info.recovered === false) actions.push({ kind: "lost", stream: name, reason: "not recovered on resume" });
      this.adopt(name, info);
    }
    const joined = new Set(Array.isArray(data.rooms) ? data.rooms.filter((r): r is string => typeof r === "string") : []);
    const denied = isRecord(data.denied) ? data.denied : {};
    // Rooms joined or left after the hello was built (a hello in the URL
    // leaves before the application's first subscribe, protocol.md 4.5): the
    // welcome could not know; they are asked for now.
    const asked = this.helloRooms;
    const late = [...this.rooms].filter((room) => !asked.has(room) && !joined.has(room));
    const left = [...asked].filter((room) => !this.rooms.has(room) && joined.has(room));
    for (const room of left) {
      joined.delete(room);
      this.positions.delete("room:" + room);
    }
    for (const room of this.rooms) {
      if (joined.has(room) || late.includes(room)) continue;
      this.positions.delete("room:" + room);
      const code = denied[room];
      actions.push({ kind: "room", room, joined: false, ...(typeof code === "number" ? { code } : {}) });
    }
    for (const room of joined) if (!this.confirmed.has(room)) actions.push({ kind: "room", room, joined: true });
    this.rooms = joined;
    this.confirmed = new Set(joined);
    this.open = true;
    actions.push({ kind: "welcomed", session, resumed: data.resumed === true, data });
    for (const room of late) actions.push(...this.subscribe(room, nowMs));
    for (const room of left) {
      actions.push({ kind: "transmit", envelope: { type: "unsubscribe", id: this.newId(), timestamp: nowMs, room } });
    }
    actions.push(...this.flush(nowMs));
    if (this.acked.size > 0 || this.refAcks.length > 0 || this.ackResend) {
      this.ackDue ??= nowMs + this.options.ackBatchMs;
    }
    return actions;
  }

  /** `welcome.data.extensions`, hostile until checked: only what this client asked for. */
  private readExtensions(raw: unknown): void {
    const asked = new Set(this.options.extensions ?? []);
    this.extensions = new Map();
    if (!isRecord(raw)) return;
    for (const [name, params] of Object.entries(raw)) {
      if (asked.has(name) && isRecord(params)) this.extensions.set(name, params);
    }
  }

  private readLimits(limits: unknown): void {
    if (!isRecord(limits)) return;
    const positive = (value: unknown, fallback: number): number =>
      typeof value === "number" && Number.isSafeInteger(value) && value > 0 ? value : fallback;
    this.limits = {
      maxMessageSize: positive(limits.max_message_size, this.limits.maxMessageSize),
      maxDepth: positive(limits.max_depth, this.limits.maxDepth),
      maxValues: positive(limits.max_values, this.limits.maxValues),
    };
  }

  private event(event: Envelope, nowMs: number): Action[] {
    const { stream, offset, epoch } = event;
    if (stream === undefined || offset === undefined || epoch === undefined) return []; // servers never send these
    const actions: Action[] = [];
    let known = this.positions.get(stream);
    if (known === undefined) {
      known = { offset: offset - 1, epoch };
    } else if (known.epoch !== epoch) {
      actions.push({ kind: "lost", stream, reason: "epoch changed" });
      known = { offset: offset - 1, epoch };
      if (stream === "direct") this.resetAcks();
    }
    if (offset <= known.offset) {
      if (event.ack === true) this.reacknowledge(event, nowMs);
      return actions;
    }
    if (offset > known.offset + 1) {
      this.positions.set(stream, known);
      actions.push({ kind: "reconnect", code: ErrorCode.STREAM_GAP, reason: `${stream}: expected ${known.offset + 1}, got ${offset}` });
      return actions;
    }
    this.positions.set(stream, { offset, epoch });
    if (event.code !== undefined && event.data === undefined) {
      // A placeholder (5.2): expired (4302) is the message's own fate; any
      // other code (4501: not encodable for this connection) is a loss to report.
      if (event.code !== ErrorCode.EXPIRED) {
        actions.push({ kind: "lost", stream, reason: `message at offset ${offset} could not be delivered (${event.code})` });
      }
      return actions;
    }
    if (event.ack === true && stream === "direct") this.unacked.set(offset, event.id);
    actions.push({ kind: "deliver", envelope: event });
    return actions;
  }

  /** The `direct` history was lost: old offsets mean nothing any more. */
  private resetAcks(): void {
    this.unacked.clear();
    this.acked.clear();
    this.ackResend = false;
  }

  private answer(answer: Envelope): Action[] {
    const ref = answer.ref;
    if (ref === undefined) return [];
    const room = this.subscribing.get(ref);
    if (room !== undefined) {
      this.subscribing.delete(ref);
      return this.subscribeAnswer(room, answer);
    }
    const outgoing = this.inflight.get(ref);
    if (outgoing === undefined) return []; // a late duplicate answer: the outcome was given
    this.inflight.delete(ref);
    if (answer.type === "error") {
      const data = answer.data;
      const message = isRecord(data) && typeof data.message === "string" ? data.message : "";
      const code = answer.code ?? ErrorCode.INTERNAL_ERROR;
      const status: Status = code === ErrorCode.EXPIRED ? "expired" : "rejected";
      return [{ kind: "outcome", id: ref, status, data, code, message }];
    }
    const status: Status = answer.type === "result" ? "result" : "acked";
    return [{ kind: "outcome", id: ref, status, data: answer.data }];
  }

  private subscribeAnswer(room: string, answer: Envelope): Action[] {
    const key = "room:" + room;
    if (answer.type === "error") {
      this.rooms.delete(room);
      this.confirmed.delete(room);
      this.positions.delete(key);
      return [{ kind: "room", room, joined: false, ...(answer.code !== undefined ? { code: answer.code } : {}) }];
    }
    const actions: Action[] = [];
    const info = answer.data;
    if (isPositionInfo(info)) {
      if (info.recovered === false) actions.push({ kind: "lost", stream: key, reason: "not recovered on subscribe" });
      this.adopt(key, info);
    }
    this.confirmed.add(room);
    actions.push({ kind: "room", room, joined: true });
    return actions;
  }

  /**
   * Take the position of a welcome or subscribe answer (protocol.md 5.3).
   * `recovered: true` for a position we presented: keep our own (the replay
   * brings us to the server's). Otherwise start at the answer's.
   */
  private adopt(name: string, info: { offset: number; epoch: string; recovered?: unknown }): void {
    const own = this.positions.get(name);
    if (info.recovered !== false && own !== undefined && own.epoch === info.epoch) return;
    if (name === "direct" && own !== undefined) this.resetAcks();
    this.positions.set(name, { offset: info.offset, epoch: info.epoch });
  }

  // ------------------------------------------------------------ time

  /** Expire what is past its deadline or TTL; retry unanswered messages; send due acks. */
  tick(nowMs: number): Action[] {
    const actions: Action[] = [];
    for (const [id, outgoing] of this.queued) {
      const failure = this.expiry(outgoing, nowMs);
      if (failure !== null) {
        this.queued.delete(id);
        actions.push(failure);
      }
    }
    for (const [id, outgoing] of this.inflight) {
      const failure = this.expiry(outgoing, nowMs);
      if (failure !== null) {
        this.inflight.delete(id);
        actions.push(failure);
      } else if (this.open && outgoing.nextRetryMs !== null && nowMs >= outgoing.nextRetryMs) {
        actions.push(...this.transmit(outgoing, nowMs));
      }
    }
    if (this.ackDue !== null && nowMs >= this.ackDue) actions.push(...this.flushAcks(nowMs));
    return actions;
  }

  private expiry(outgoing: Outgoing, nowMs: number): Action | null {
    if (outgoing.deadlineMs !== null && nowMs >= outgoing.deadlineMs) {
      return this.failed(outgoing, ErrorCode.TIMEOUT, "no answer before the deadline");
    }
    if (expired(outgoing.envelope, nowMs)) return this.failed(outgoing, ErrorCode.EXPIRED, "ttl elapsed");
    return null;
  }

  /** When `tick` next has something to do, or null. */
  nextWakeup(): number | null {
    let next = Infinity;
    for (const o of this.queued.values()) {
      if (o.deadlineMs !== null) next = Math.min(next, o.deadlineMs);
      if (o.envelope.ttl !== undefined) next = Math.min(next, o.envelope.timestamp + o.envelope.ttl);
    }
    for (const o of this.inflight.values()) {
      if (o.deadlineMs !== null) next = Math.min(next, o.deadlineMs);
      if (o.nextRetryMs !== null) next = Math.min(next, o.nextRetryMs);
    }
    if (this.ackDue !== null && this.open) next = Math.min(next, this.ackDue);
    return next === Infinity ? null : next;
  }

  /** Every queued or in-flight message fails with `code` (the client is closing). */
  abandon(code: number, message: string): Action[] {
    const actions: Action[] = [];
    for (const outgoing of [...this.queued.values(), ...this.inflight.values()]) {
      actions.push({ kind: "outcome", id: outgoing.envelope.id, status: "rejected", code, message });
    }
    this.queued.clear();
    this.inflight.clear();
    return actions;
  }
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isPositionInfo(value: unknown): value is { offset: number; epoch: string; recovered?: unknown } {
  return (
    isRecord(value) &&
    typeof value.offset === "number" &&
    Number.isSafeInteger(value.offset) &&
    value.offset >= 0 &&
    typeof value.epoch === "string" &&
    value.epoch.length > 0
  );
}
