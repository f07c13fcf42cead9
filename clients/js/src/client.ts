/**
 * `WarpSocketClient`: a WebSocket that comes back, and loses nothing on the way.
 *
 * Everything that must survive a reconnect lives in the sans-I/O `ClientCore`;
 * this module connects it to a WebSocket, timers and the application.
 */
import { Backoff, type BackoffOptions } from "./backoff.js";
import { ErrorCode, NO_RECONNECT_CODES, ProtocolError } from "./codes.js";
import { jsonCodec, loadMsgpack, msgpackCodec, type Codec, type MsgpackModule, type Payload } from "./codec.js";
import { BATCH_EXTENSION, expandBatch, grantedBounds, OutgoingBatch } from "./batch.js";
import { ClientCore, type Action, type CoreOptions, type Outgoing, type QueuePolicy } from "./core.js";
import { parseTrace, toWire, type Envelope, type TraceContext } from "./envelope.js";
import { DebugReporter, type DebugPending, type DebugStatus } from "./debug.js";
import { ClientClosedError, ConnectError, DeliveryError } from "./errors.js";
import { loadProtobuf, protobufCodec, type ProtobufWire } from "./protobuf.js";
import { randomId } from "./ids.js";
import { tokenExpiry } from "./jwt.js";
import { browserLifecycle, type Lifecycle, type LifecycleEvent } from "./lifecycle.js";
import type { StateStore } from "./store.js";
import {
  ANNOUNCE_EVENT,
  TRANSFER_EXTENSION,
  Transfers,
  type OutgoingTransfer,
  type TransferHandler,
} from "./transfer.js";
import { resolveWebSocket, type WebSocketConstructor, type WebSocketLike } from "./transport.js";
import type { KeyProvider } from "./e2e.js";
import { ReplayGuard } from "./replay.js";
import { askedExtensions, ClientCrypto, nackFor, type CryptoFailure } from "./secure.js";
import type { SignatureKeys } from "./signing.js";
import { hasHelloParam, utf8Length, withUrlHello } from "./urlhello.js";

export type ClientState = "disconnected" | "connecting" | "open" | "reconnecting" | "closed";

/** Every transition the client makes (the Python client's state machine). */
const ALLOWED: Record<ClientState, readonly ClientState[]> = {
  disconnected: ["connecting", "reconnecting", "closed"],
  connecting: ["open", "disconnected", "closed"],
  open: ["disconnected", "closed"],
  reconnecting: ["connecting", "closed"],
  closed: ["connecting"],
};

export type TokenProvider = () => string | null | undefined | Promise<string | null | undefined>;

export interface ClientOptions {
  /**
   * `"json"` (default), `"msgpack"` (imports `@msgpack/msgpack`, or uses
   * `msgpack`) or `"protobuf"` (imports `@bufbuild/protobuf/wire`, or uses `protobuf`).
   */
  codec?: "json" | "msgpack" | "protobuf";
  /** The `@msgpack/msgpack` module, for environments without a module resolver. */
  msgpack?: MsgpackModule;
  /** The `@bufbuild/protobuf/wire` module, for environments without a module resolver. */
  protobuf?: ProtobufWire;
  /** A token, or a function called on every connect and refresh. */
  token?: string | TokenProvider;
  /** Rooms to join on connect (same as calling `subscribe` for each). */
  rooms?: readonly string[];
  /** Reconnect delays (default 1 s doubling to 30 s, 50 % jitter). */
  backoff?: BackoffOptions;
  /** Custom delay in ms before reconnect attempt `attempt` (0-based); null: give up. */
  retryStrategy?: (attempt: number, closeCode: number | null) => number | null;
  /** Give up (state `closed`) after exactly this many attempts without a welcome (default: never). */
  maxAttempts?: number | null;
  /** Whether to reconnect after a close with this code (default: not after 4100/4102/4103/4104/4400/4004). */
  shouldReconnect?: (closeCode: number | null) => boolean;
  /** Acknowledge `ack: true` server events once every handler finished (default true). */
  autoAck?: boolean;
  /** Batch window of acknowledgements, ms (default 50). */
  ackBatchMs?: number;
  /**
   * Batches (protocol.md "Extension: batches"): envelopes written within this
   * many ms of the first leave in one frame. 0 (default): those of the same
   * task, flushed in a microtask, no added delay; null: off (not asked for).
   */
  batchWindowMs?: number | null;
  /** Optional protocol extensions to ask for (protocol.md 4.4); `client.extensions` shows what was granted. */
  extensions?: readonly string[];
  /** Offline queue bound (default 10000) and what happens when it is full. */
  maxQueue?: number;
  queuePolicy?: QueuePolicy;
  /** Default deadline of acked sends, ms (default 60000). Keep it below the server's dedup age. */
  ackTimeout?: number;
  /** Default deadline of calls, ms (default 30000). */
  callTimeout?: number;
  /** First retry of an unanswered message on an open connection, ms (default 5000), and its cap (30000). */
  retryInitial?: number;
  retryMax?: number;
  /** Refresh a JWT from the token provider this long before its `exp`, ms (default 30000). */
  refreshBefore?: number;
  /** Silence after which the server counts as dead, ms, until the welcome tells (default 60000). */
  heartbeatTimeout?: number;
  /** Time allowed from dialling to the welcome, ms (default 15000). */
  connectTimeout?: number;
  /**
   * Deadline of a liveness probe, ms (default 3000): a heartbeat sent when the
   * page returns (visible, back/forward cache, resumed), the network changes,
   * or the client's own timers ran late; unanswered in time, the connection
   * is replaced.
   */
  livenessTimeout?: number;
  /**
   * Network and page events (default: the browser's `window`/`document`/
   * `navigator`, none in Node.js); null to ignore them.
   */
  lifecycle?: Lifecycle | null;
  /**
   * Keep the session, stream positions, rooms and unconfirmed messages here
   * (e.g. `indexedDbStore(url)`), so a page reload resumes with nothing lost.
   * Loaded by the first `connect()`, saved after every change; `close()`
   * forgets it. Messages restored from it settle without a promise: failures
   * go to `onError`.
   */
  store?: StateStore;
  /**
   * Carry the hello in the WebSocket URL's query parameter `hello`
   * (protocol.md 4.5, base64url JSON) when it has no credentials: a new
   * session (nothing to resume), no `token` option, at most 2,048 bytes of
   * JSON. The server then sends the welcome with the upgrade's response: one
   * round trip less per connection. Any other hello goes as a frame, as does
   * every hello to a server that left such a hello unanswered (closed with
   * 4205, or open until `connectTimeout`: it predates 4.5). Default true;
   * false: always a frame.
   */
  urlHello?: boolean;
  /** A WebSocket implementation (default: the global one, else the `ws` package). */
  WebSocket?: WebSocketConstructor;
  /** `hello.data.client`, informational. */
  clientInfo?: { name: string; version: string };
  /** Random source for jitter (tests). */
  random?: () => number;
  /**
   * Milliseconds after which an acked send or a call still unanswered fires
   * the `onSlow` listeners (once per message). Default: never.
   */
  slowAckMs?: number;
  /**
   * Called on each send and call: the W3C trace context to send in the
   * envelope's `trace` (protocol.md section 14), e.g. from OpenTelemetry's
   * propagator; a `traceparent` string or `{traceparent, tracestate}`.
   * An invalid value is not sent.
   */
  trace?: () => TraceContext | string | null | undefined;
  /**
   * Report to the DevTools hook (`globalThis.__WARPSOCKET_DEVTOOLS_HOOK__`,
   * read by the WarpSocket DevTools extension): state changes, envelopes in
   * and out (tokens redacted), streams and unconfirmed messages. Default false.
   */
  debug?: boolean;
  /** End-to-end encryption of event data (protocol.md "Extension: end-to-end encryption"): keys per scope. */
  e2e?: KeyProvider;
  /** Envelope signatures (protocol.md "Extension: signatures"): keys to verify the server, and `signer`. */
  signing?: SignatureKeys;
  /** Replay window for signed envelopes from the server, ms (default 300000). */
  replayWindowMs?: number;
}

/** What `onSlow` listeners get: an acked send or call still unanswered. */
export interface SlowAck {
  id: string;
  event: string;
  /** Milliseconds since it was submitted. */
  ms: number;
  thresholdMs: number;
}

/** A stream event as the application sees it. */
export class Message {
  constructor(
    readonly envelope: Envelope,
    private readonly client: WarpSocketClient,
  ) {}
  get id(): string {
    return this.envelope.id;
  }
  get event(): string {
    return this.envelope.event ?? "message";
  }
  get data(): unknown {
    return this.envelope.data ?? null;
  }
  get stream(): string {
    return this.envelope.stream ?? "";
  }
  /** The room for `room:<name>` streams, else null. */
  get room(): string | null {
    return this.stream.startsWith("room:") ? this.stream.slice(5) : null;
  }
  get offset(): number {
    return this.envelope.offset ?? 0;
  }
  get epoch(): string {
    return this.envelope.epoch ?? "";
  }
  get timestamp(): number {
    return this.envelope.timestamp;
  }
  /** The server asked for an acknowledgement. */
  get needsAck(): boolean {
    return this.envelope.ack === true;
  }
  /** The event's W3C trace context (protocol.md section 14), if it carries one. */
  get trace(): TraceContext | undefined {
    return this.envelope.trace;
  }
  /** Acknowledge (with `autoAck: false`); harmless when no ack was asked for. */
  ack(): void {
    this.client._acknowledge(this.envelope);
  }
}

export type Handler = (message: Message) => unknown;

export interface SendOptions {
  /** Ask the server to confirm; the promise settles with its answer. */
  ack?: boolean;
  /** Publish into this room (protocol.md 8). */
  room?: string;
  /** Ms after which the message must not be delivered. */
  ttl?: number;
  /** Higher goes first when the offline queue is flushed (default 0). */
  priority?: number;
  /** Deadline for the server's answer, ms (acked sends and calls). */
  timeout?: number;
}

export interface SendResult {
  id: string;
  /** `sent`: written to the socket (fire-and-forget); `acked`: the server confirmed. */
  status: "sent" | "acked";
  data?: unknown;
}

export interface ClientStats {
  /** Connection attempts (each dial). */
  attempts: number;
  /** Attempts that reached the welcome. */
  connections: number;
  /** Welcomes after a lost connection. */
  reconnects: number;
  /** `connections / attempts`. */
  successRate: number;
  /** Ms from losing an open connection to the next welcome (last one, and the last 100). */
  lastReconnectMs: number | null;
  reconnectTimes: number[];
  /** Round-trip time of the last client heartbeat, ms. */
  rttMs: number | null;
  messagesIn: number;
  messagesOut: number;
  /** Batch frames sent (the batch extension). */
  batchFrames: number;
  /** Hellos carried in the upgrade request's URL (protocol.md 4.5); not in `messagesOut`. */
  urlHellos: number;
  streamsLost: number;
}

type Waiter = { resolve: (value: never) => void; reject: (error: Error) => void; call: boolean };

interface Listeners {
  state: Set<(state: ClientState, previous: ClientState) => void>;
  open: Set<(info: { session: string; resumed: boolean; data: Record<string, unknown> }) => void>;
  lost: Set<(stream: string, reason: string) => void>;
  error: Set<(error: Error) => void>;
  room: Set<(room: string, joined: boolean, code?: number) => void>;
  close: Set<(code: number | null, reason: string) => void>;
  slow: Set<(slow: SlowAck) => void>;
  crypto: Set<(failure: CryptoFailure) => void>;
}

export class WarpSocketClient {
  readonly url: string;
  readonly core: ClientCore;
  readonly stats: ClientStats = {
    attempts: 0,
    connections: 0,
    reconnects: 0,
    successRate: 0,
    lastReconnectMs: null,
    reconnectTimes: [],
    rttMs: null,
    messagesIn: 0,
    messagesOut: 0,
    batchFrames: 0,
    urlHellos: 0,
    streamsLost: 0,
  };
  private stateValue: ClientState = "disconnected";
  private readonly options: ClientOptions;
  private readonly backoff: Backoff;
  private readonly random: () => number;
  private codec: Codec | null = null;
  private socket: WebSocketLike | null = null;
  private transfersValue: Transfers | null = null;
  private readonly handlers = new Map<string, Set<Handler>>();
  private readonly roomHandlers = new Map<string, Set<Handler>>();
  private readonly listeners: Listeners = {
    state: new Set(),
    open: new Set(),
    lost: new Set(),
    error: new Set(),
    room: new Set(),
    close: new Set(),
    slow: new Set(),
    crypto: new Set(),
  };
  // Slow-ack timers of acked sends and calls, by message id (`slowAckMs`).
  private readonly slowTimers = new Map<string, ReturnType<typeof setTimeout>>();
  // Encryption and signatures (secure.ts); null when neither is configured.
  private readonly secure: ClientCrypto | null;
  // WebCrypto is asynchronous: seals, reads and signed writes each run in order on a chain.
  private sealChain: Promise<unknown> = Promise.resolve();
  private readChain: Promise<void> = Promise.resolve();
  private writeChain: Promise<void> = Promise.resolve();
  private readonly waiters = new Map<string, Waiter>();
  private readonly roomWaiters = new Map<string, Array<{ resolve: () => void; reject: (e: Error) => void }>>();
  private openWaiters: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];
  private readonly authIds = new Set<string>();
  private readonly pings = new Map<string, number>();
  private readonly encoded = new WeakMap<Envelope, string | Uint8Array>();
  /** The batch extension on a connection that agreed to it (batch.ts). */
  private batcher: OutgoingBatch | null = null;
  private attempt = 0; // reconnects scheduled since the last welcome (the backoff's index)
  private dialsSinceOpen = 0; // for maxAttempts: exactly that many attempts
  private lastCloseCode: number | null = null;
  private hintDelay: number | null = null;
  private disconnectedAt: number | null = null;
  private lastRx = 0;
  private heartbeatTimeout: number;
  private heartbeatInterval = 25000;
  private token: string | null = null;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private connectTimer: ReturnType<typeof setTimeout> | null = null;
  private wakeTimer: ReturnType<typeof setTimeout> | null = null;
  private wakeAt = Infinity;
  private watchdog: ReturnType<typeof setInterval> | null = null;
  private refreshTimer: ReturnType<typeof setTimeout> | null = null;
  private lastPing = 0;
  private lastCheck = 0; // when the watchdog last ran: a late run means throttled or frozen timers
  private probeSentAt: number | null = null;
  private probeId: string | null = null;
  private probeTimer: ReturnType<typeof setTimeout> | null = null;
  private waitingForNetwork = false;
  private readonly lifecycle: Lifecycle | null;
  private removeLifecycle: (() => void) | null = null;
  private storeState: "unloaded" | "loading" | "loaded" | "forgotten" = "unloaded";
  private saving: Promise<void> | null = null;
  private dirty = false;
  private savedJson = "";
  private nextAttempt: number | null = null;
  private transportOpen = false; // the current socket fired `open`
  /** The hello the current socket's URL carried, until a welcome or an error answers it (protocol.md 4.5). */
  private urlHello: Envelope | null = null;
  /** The server does not take hellos in the URL (it closed one such connection with 4205): frames only. */
  private urlHelloOff = false;
  private readonly debugger: DebugReporter | null;

  constructor(url: string, options: ClientOptions = {}) {
    this.url = url;
    this.options = options;
    this.random = options.random ?? Math.random;
    this.backoff = new Backoff(options.backoff, this.random);
    this.heartbeatTimeout = options.heartbeatTimeout ?? 60000;
    this.lifecycle = options.lifecycle === undefined ? browserLifecycle() : options.lifecycle;
    const core: Partial<CoreOptions> = {
      encodedSize: (envelope) => this.size(envelope),
    };
    if (options.maxQueue !== undefined) core.maxQueue = options.maxQueue;
    if (options.queuePolicy !== undefined) core.queuePolicy = options.queuePolicy;
    if (options.ackTimeout !== undefined) core.ackDeadlineMs = options.ackTimeout;
    if (options.retryInitial !== undefined) core.retryInitialMs = options.retryInitial;
    if (options.retryMax !== undefined) core.retryMaxMs = options.retryMax;
    if (options.ackBatchMs !== undefined) core.ackBatchMs = options.ackBatchMs;
    if (options.extensions !== undefined) core.extensions = options.extensions;
    const provider = options.e2e ?? null;
    const keys = options.signing ?? null;
    this.secure = provider !== null || keys !== null ? new ClientCrypto(provider, keys, new ReplayGuard(options.replayWindowMs)) : null;
    if (this.secure !== null) core.extensions = askedExtensions(options.extensions ?? [], provider, keys);
    // Batches unless turned off; signatures cover single envelopes, so not with them.
    const asked = core.extensions ?? [];
    if (options.batchWindowMs !== null && keys === null && !asked.includes(BATCH_EXTENSION)) {
      core.extensions = [...asked, BATCH_EXTENSION];
    }
    this.core = new ClientCore(core, randomId);
    if (options.codec === undefined || options.codec === "json") this.codec = jsonCodec;
    else if (options.codec === "protobuf") {
      if (options.protobuf !== undefined) this.codec = protobufCodec(options.protobuf);
    } else if (options.codec !== "msgpack") throw new TypeError(`unknown codec ${String(options.codec)}`);
    else if (options.msgpack !== undefined) this.codec = msgpackCodec(options.msgpack);
    for (const room of options.rooms ?? []) this.core.subscribe(room, Date.now());
    this.debugger = options.debug === true ? new DebugReporter(url, () => this.debugStatus()) : null;
  }

  /** The chosen binary codec's module, imported on first use. */
  private loadCodec(): Promise<Codec> {
    if (this.options.codec === "protobuf") return loadProtobuf().then((wire) => (this.codec = protobufCodec(wire)));
    return loadMsgpack().then((module) => (this.codec = msgpackCodec(module)));
  }

  // ------------------------------------------------------------ public API

  get state(): ClientState {
    return this.stateValue;
  }

  /** The session id (shown to users at will; the resume token never is). */
  get session(): string | null {
    return this.core.session;
  }

  get rooms(): string[] {
    return [...this.core.rooms];
  }

  /** Extensions the last welcome granted: name -> the server's parameters (protocol.md 4.4). */
  get extensions(): ReadonlyMap<string, Record<string, unknown>> {
    return this.core.extensions;
  }

  get queueLength(): number {
    return this.core.queueLength;
  }

  /**
   * Chunked transfers (the `chunks` extension, protocol.md): made on first
   * use, which asks for the extension in every later hello, so use it (or
   * `onTransfer`) before `connect`.
   */
  get transfers(): Transfers {
    if (this.transfersValue === null) {
      const options = this.core.options;
      if (!(options.extensions ?? []).includes(TRANSFER_EXTENSION)) {
        options.extensions = [...(options.extensions ?? []), TRANSFER_EXTENSION];
      }
      this.transfersValue = new Transfers({
        send: (data, code) => {
          const envelope: Envelope = { type: "transfer", id: randomId(), timestamp: Date.now(), data };
          if (code !== undefined) envelope.code = code;
          this.write(envelope);
        },
        params: () => this.core.extensions.get(TRANSFER_EXTENSION),
        isOpen: () => this.stateValue === "open",
        report: (error) => this.report(error),
      });
    }
    return this.transfersValue;
  }

  /** `handler(transfer) -> sink | null` for each transfer the server relays to this client. */
  onTransfer(handler: TransferHandler): void {
    this.transfers.onTransfer(handler);
  }

  /** Send bytes in chunks: to the server application, or `to` a session, or a `room`. */
  sendBytes(bytes: Uint8Array, options: Parameters<Transfers["sendBytes"]>[1] = {}): OutgoingTransfer {
    return this.transfers.sendBytes(bytes, options);
  }

  /** Reconnecting, but waiting for the network to come back (no attempts meanwhile). */
  get offline(): boolean {
    return this.waitingForNetwork;
  }

  /** When the next reconnect attempt is due (`Date.now()` ms) while `reconnecting`; null otherwise. */
  get nextAttemptAt(): number | null {
    return this.stateValue === "reconnecting" && !this.waitingForNetwork ? this.nextAttempt : null;
  }

  /** Handle stream events named `event` (`"*"`: every event). Returns a function that removes it. */
  on(event: string, handler: Handler): () => void {
    let set = this.handlers.get(event);
    if (set === undefined) this.handlers.set(event, (set = new Set()));
    set.add(handler);
    return () => this.off(event, handler);
  }

  /** Like `on`, for the next such event only. */
  once(event: string, handler: Handler): () => void {
    const off = this.on(event, (message) => {
      off();
      return handler(message);
    });
    return off;
  }

  off(event: string, handler?: Handler): void {
    if (handler === undefined) this.handlers.delete(event);
    else this.handlers.get(event)?.delete(handler);
  }

  /** `listener(state, previous)` on every state transition. */
  onState(listener: (state: ClientState, previous: ClientState) => void): () => void {
    return this.listen("state", listener);
  }

  /** After every welcome (the first connection and each reconnection). */
  onOpen(listener: (info: { session: string; resumed: boolean; data: Record<string, unknown> }) => void): () => void {
    return this.listen("open", listener);
  }

  /** A stream could not be recovered (`recovered: false`): re-sync the state it carries. */
  onLost(listener: (stream: string, reason: string) => void): () => void {
    return this.listen("lost", listener);
  }

  /** Every connection close, with its code (null when the socket was dropped without one). */
  onClose(listener: (code: number | null, reason: string) => void): () => void {
    return this.listen("close", listener);
  }

  /** A room was joined or left (by you or by the server), or a join was refused (`code`). */
  onRoom(listener: (room: string, joined: boolean, code?: number) => void): () => void {
    return this.listen("room", listener);
  }

  /** An acked send or call is still unanswered `slowAckMs` after it was submitted. */
  onSlow(listener: (slow: SlowAck) => void): () => void {
    return this.listen("slow", listener);
  }

  /**
   * A received envelope refused by encryption or signatures (code 4600-4604):
   * it was not delivered (a stream event is skipped and reported to `onLost` too).
   */
  onCryptoError(listener: (failure: CryptoFailure) => void): () => void {
    return this.listen("crypto", listener);
  }

  /** Problems nobody awaits: bad frames from the server, failed handlers, failed fire-and-forget sends. */
  onError(listener: (error: Error) => void): () => void {
    return this.listen("error", listener);
  }

  /** Start connecting (and reconnecting); resolves at the first welcome. */
  connect(): Promise<void> {
    if (this.stateValue === "open") return Promise.resolve();
    const opened = handled(new Promise<void>((resolve, reject) => this.openWaiters.push({ resolve, reject })));
    if (this.stateValue === "disconnected" || this.stateValue === "closed") {
      this.attempt = 0;
      this.dialsSinceOpen = 0;
      this.startTimers();
      if (this.options.store !== undefined && this.storeState === "unloaded") this.loadThenDial(this.options.store);
      else if (this.storeState !== "loading") this.dial();
    }
    return opened;
  }

  /** Drop the current connection (if any) and resume on a new one at once. */
  reconnect(): void {
    if (this.stateValue === "closed") {
      void this.connect().catch(() => undefined);
      return;
    }
    this.hintDelay = 0;
    if (this.stateValue === "reconnecting") {
      this.clearTimer("reconnectTimer");
      this.waitingForNetwork = false;
      this.dial();
    } else if (this.socket !== null) {
      this.dropSocket(null, "reconnect requested");
    }
  }

  /**
   * Abandon the connection abruptly, as a network failure would (no closing
   * handshake waited for, close code 1006 to `onClose`), and recover as from
   * one: backoff, resume, replay. For demos and tests of the recovery.
   */
  dropConnection(): void {
    if (this.socket === null) return;
    this.dropSocket(1006, "connection dropped (dropConnection)");
  }

  /** Resolves once the state so far is in the `store` (at once without one). */
  persisted(): Promise<void> {
    return this.saving ?? Promise.resolve();
  }

  /** Close for good: no reconnect; what awaits an outcome fails with ClientClosedError; the `store` is cleared. */
  close(): Promise<void> {
    const store = this.options.store;
    if (store !== undefined && this.storeState === "loaded") {
      this.storeState = "forgotten";
      void this.persisted()
        .then(() => store.clear())
        .catch((error: unknown) => this.report(error));
    }
    if (this.stateValue === "closed") return Promise.resolve();
    const socket = this.socket;
    this.batcher?.flush(); // what was sent before close() leaves before the close frame
    this.shutDown("client closed");
    if (socket === null) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const done = setTimeout(resolve, 1000);
      socket.onclose = () => {
        clearTimeout(done);
        resolve();
      };
      try {
        socket.close(1000);
      } catch {
        resolve();
      }
    });
  }

  /**
   * Send an event. Queued while offline and sent in order (priority first)
   * on reconnect. Settles with exactly one outcome: `{status: "sent"}` when
   * written (fire-and-forget), `{status: "acked"}` when the server confirmed
   * (`ack: true`, retried with the same id until then), or a `DeliveryError`
   * (refused with a code, or expired).
   */
  send(event: string, data?: unknown, options: SendOptions = {}): Promise<SendResult> {
    const trace = this.traceContext();
    const secure = this.secure;
    if (secure?.provider != null) {
      // Sealed in order, then queued in order (WebCrypto is asynchronous).
      const sealed = this.sealChain.then(() => secure.seal(event, data, options.room));
      this.sealChain = sealed.catch(() => undefined);
      return handled(sealed.then((value) => this.submitSend(event, value, options, trace)));
    }
    return this.submitSend(event, data, options, trace);
  }

  private submitSend(
    event: string,
    data: unknown,
    options: SendOptions,
    trace: TraceContext | undefined,
  ): Promise<SendResult> {
    return this.submit<SendResult>(
      false,
      (now) =>
        this.core.send(event, data, now, {
          ...(options.ack !== undefined ? { ack: options.ack } : {}),
          ...(options.room !== undefined ? { room: options.room } : {}),
          ...(options.ttl !== undefined ? { ttl: Math.max(1, Math.round(options.ttl)) } : {}),
          ...(options.priority !== undefined ? { priority: options.priority } : {}),
          ...(options.timeout !== undefined ? { timeoutMs: options.timeout } : {}),
          ...(trace !== undefined ? { trace } : {}),
        }),
      options.ack === true ? event : null,
    );
  }

  /** The `trace` option's value for one send, validated (protocol.md section 14). */
  private traceContext(): TraceContext | undefined {
    const supply = this.options.trace;
    if (supply === undefined) return undefined;
    const value = supply();
    if (value === null || value === undefined) return undefined;
    return parseTrace(typeof value === "string" ? { traceparent: value } : value);
  }

  /** Fire and forget, Socket.IO style; failures go to `onError`. */
  emit(event: string, data?: unknown, options: Omit<SendOptions, "ack"> = {}): void {
    this.send(event, data, options).catch((error: unknown) => this.report(error));
  }

  /** `send` with `ack: true`, resolving with the server's ack data (Socket.IO's `emitWithAck`). */
  async emitWithAck(event: string, data?: unknown, options: Omit<SendOptions, "ack"> = {}): Promise<unknown> {
    const result = await this.send(event, data, { ...options, ack: true });
    return result.data ?? null;
  }

  /** Publish into a room (the server's room policy decides). */
  publish(room: string, event: string, data?: unknown, options: Omit<SendOptions, "room"> = {}): Promise<SendResult> {
    return this.send(event, data, { ...options, room });
  }

  /** Remote procedure call: resolves with the result, rejects with a `DeliveryError`. Runs once, even when retried. */
  call<T = unknown>(method: string, data?: unknown, options: { timeout?: number; priority?: number } = {}): Promise<T> {
    const trace = this.traceContext();
    return this.submit<T>(
      true,
      (now) =>
        this.core.call(method, data, now, {
          timeoutMs: options.timeout ?? this.options.callTimeout ?? 30000,
          ...(options.priority !== undefined ? { priority: options.priority } : {}),
          ...(trace !== undefined ? { trace } : {}),
        }),
      method,
    );
  }

  /** Join `room` (now, or at the next connection); resolves when joined, rejects when refused. */
  subscribe(room: string, handler?: Handler): Promise<void> {
    if (handler !== undefined) {
      let set = this.roomHandlers.get(room);
      if (set === undefined) this.roomHandlers.set(room, (set = new Set()));
      set.add(handler);
    }
    const joined = handled(
      new Promise<void>((resolve, reject) => {
        const list = this.roomWaiters.get(room) ?? [];
        list.push({ resolve, reject });
        this.roomWaiters.set(room, list);
      }),
    );
    this.run(this.core.subscribe(room, Date.now()));
    return joined;
  }

  /** Remove one handler given to `subscribe(room, handler)`, staying in the room. */
  offRoom(room: string, handler: Handler): void {
    this.roomHandlers.get(room)?.delete(handler);
  }

  /** Leave `room` and forget its handlers and position. */
  unsubscribe(room: string): void {
    this.roomHandlers.delete(room);
    this.run(this.core.unsubscribe(room, Date.now()));
  }

  /** Send a heartbeat now; its answer updates `stats.rttMs`. */
  ping(): void {
    this.sendPing();
  }

  private sendPing(): string | null {
    if (this.stateValue !== "open") return null;
    const envelope: Envelope = { type: "heartbeat", id: randomId(), timestamp: Date.now() };
    this.pings.set(envelope.id, performanceNow());
    this.lastPing = Date.now();
    this.write(envelope);
    return envelope.id;
  }

  /** Ask the token provider for a new token and send it in band (`auth`). */
  async refreshToken(): Promise<void> {
    const provider = this.options.token;
    if (typeof provider !== "function") return;
    const token = await provider();
    if (typeof token !== "string" || this.stateValue !== "open") return;
    this.token = token;
    const envelope: Envelope = { type: "auth", id: randomId(), timestamp: Date.now(), data: { token } };
    this.authIds.add(envelope.id);
    this.write(envelope);
    this.scheduleRefresh();
  }

  // ------------------------------------------------------------ plumbing for Message

  /** @internal */
  _acknowledge(envelope: Envelope): void {
    this.run(this.core.acknowledge(envelope, Date.now()));
  }

  // ------------------------------------------------------------ state

  private listen<K extends keyof Listeners>(kind: K, listener: Listeners[K] extends Set<infer L> ? L : never): () => void {
    const set = this.listeners[kind] as Set<typeof listener>;
    set.add(listener);
    return () => set.delete(listener);
  }

  private emitTo<K extends keyof Listeners>(kind: K, ...args: unknown[]): void {
    for (const listener of [...this.listeners[kind]]) {
      try {
        (listener as (...a: unknown[]) => void)(...args);
      } catch (error) {
        if (kind !== "error") this.report(error);
      }
    }
  }

  private report(error: unknown): void {
    const wrapped = error instanceof Error ? error : new Error(String(error));
    if (this.listeners.error.size === 0) return;
    this.emitTo("error", wrapped);
  }

  private setState(next: ClientState): void {
    const previous = this.stateValue;
    if (previous === next) return;
    if (!ALLOWED[previous].includes(next)) throw new Error(`invalid transition ${previous} -> ${next}`);
    this.stateValue = next;
    this.debugger?.state(next, previous, this.debugDetail(next));
    this.emitTo("state", next, previous);
  }

  private submit<T>(call: boolean, start: (now: number) => [string, Action[]], tracked: string | null = null): Promise<T> {
    if (this.stateValue === "closed") return handled(Promise.reject(new ClientClosedError("the client is closed")));
    const started = Date.now();
    const [id, actions] = start(started);
    const promise = handled(
      new Promise<T>((resolve, reject) => {
        this.waiters.set(id, { resolve: resolve as (value: never) => void, reject, call });
      }),
    );
    const threshold = this.options.slowAckMs;
    if (tracked !== null && threshold !== undefined && threshold > 0) {
      const timer = setTimeout(() => {
        this.slowTimers.delete(id);
        // The timer measured at least the threshold; Date.now() can read a
        // millisecond less (whole milliseconds on another clock).
        const ms = Math.max(threshold, Date.now() - started);
        this.emitTo("slow", { id, event: tracked, ms, thresholdMs: threshold });
      }, threshold);
      this.slowTimers.set(id, timer);
    }
    this.run(actions);
    return promise;
  }

  // ------------------------------------------------------------ connection

  private dial(): void {
    this.waitingForNetwork = false;
    this.stats.attempts++;
    this.dialsSinceOpen++;
    this.updateRate();
    this.setState("connecting");
    const ctor = resolveWebSocket(this.options.WebSocket);
    const codec = this.codec ?? this.loadCodec();
    if (ctor instanceof Promise || codec instanceof Promise) {
      Promise.all([ctor, codec]).then(
        ([resolved]) => {
          if (this.stateValue === "connecting" && this.socket === null) this.open(resolved);
        },
        (error: unknown) => {
          this.report(error);
          this.shutDown(`cannot connect: ${String(error)}`);
        },
      );
    } else {
      this.open(ctor);
    }
  }

  private open(ctor: WebSocketConstructor): void {
    const codec = this.codec as Codec;
    let socket: WebSocketLike;
    try {
      socket = new ctor(this.dialUrl(), [codec.subprotocol]);
    } catch (error) {
      this.urlHello = null;
      this.report(error);
      this.shutDown(`cannot connect: ${String(error)}`);
      return;
    }
    this.socket = socket;
    this.transportOpen = false;
    if (this.secure !== null) this.secure.signed = this.secure.verifying = false; // until this connection's welcome says
    socket.binaryType = "arraybuffer";
    socket.onopen = () => this.opened(socket);
    socket.onmessage = (event) => this.frame(socket, event.data as Payload);
    socket.onclose = (event) => this.closed(socket, event.code, event.reason);
    socket.onerror = () => undefined; // a close event follows
    this.watchRefusal(socket);
    this.lastRx = Date.now();
    const timeout = this.options.connectTimeout ?? 15000;
    this.connectTimer = setTimeout(() => {
      this.connectTimer = null;
      if (this.socket !== socket || this.stateValue !== "connecting") return;
      // Open, but the hello of the URL unanswered: a server without 4.5 whose
      // handshake timeout (4205) is longer than ours. Frames from now on.
      if (this.transportOpen && this.urlHello !== null) this.urlHelloOff = true;
      this.dropSocket(null, "connect timeout");
    }, timeout);
  }

  /**
   * The URL to dial: the client's own, with the hello in its query when this
   * connection's hello may go there (protocol.md 4.5; then it is this
   * connection's hello, and `opened` sends none).
   */
  private dialUrl(): string {
    this.urlHello = null;
    const options = this.options;
    if (options.urlHello === false || this.urlHelloOff || options.token !== undefined || hasHelloParam(this.url)) {
      return this.url;
    }
    const carried = this.core.urlHello(Date.now(), options.clientInfo as Record<string, unknown> | undefined);
    if (carried === null) return this.url;
    this.urlHello = carried.envelope;
    return withUrlHello(this.url, carried.json);
  }

  /**
   * A draining server refuses the upgrade with 503 and `Retry-After`, to be
   * treated like a 4500 hint (protocol.md 10). Browsers hide the response;
   * `ws` shows it.
   */
  private watchRefusal(socket: WebSocketLike): void {
    const emitter = socket as unknown as { on?: (event: string, listener: (...args: never[]) => void) => void };
    if (typeof emitter.on !== "function" || typeof socket.terminate !== "function") return;
    emitter.on("unexpected-response", (_request: unknown, response: { statusCode?: number; headers?: Record<string, unknown> }) => {
      if (socket !== this.socket) return;
      const seconds = Number(response.headers?.["retry-after"]);
      if (response.statusCode === 503 && Number.isInteger(seconds) && seconds >= 0 && seconds <= 3600) {
        this.hintDelay = seconds * 1000 * (1 + this.random());
      }
      socket.terminate?.(); // closes with 1006; the reconnect uses the hint
    });
  }

  private opened(socket: WebSocketLike): void {
    if (socket !== this.socket) return;
    this.transportOpen = true;
    const codec = this.codec as Codec;
    if (socket.protocol !== "" && socket.protocol !== codec.subprotocol) {
      this.dropSocket(ErrorCode.UNSUPPORTED_CODEC, `server chose ${socket.protocol}`);
      return;
    }
    this.lastRx = Date.now();
    if (this.urlHello !== null) {
      // The hello went with the upgrade request: nothing to send until its answer.
      this.stats.urlHellos++;
      this.debugger?.envelope("out", toWire(this.urlHello));
      return;
    }
    this.sayHello(socket);
  }

  /** Send this connection's hello as a frame (with the token, if any). */
  private sayHello(socket: WebSocketLike): void {
    const provider = this.options.token;
    const token = typeof provider === "function" ? provider : () => provider;
    let pending: ReturnType<TokenProvider>;
    try {
      pending = token();
    } catch (error) {
      pending = Promise.reject(error);
    }
    Promise.resolve(pending).then(
      (value) => {
        if (socket !== this.socket) return;
        this.token = typeof value === "string" ? value : null;
        this.run(this.core.connected(Date.now(), this.token, this.options.clientInfo as Record<string, unknown> | undefined));
      },
      (error: unknown) => {
        this.report(new Error(`token provider failed: ${String(error)}`));
        if (socket === this.socket) this.dropSocket(null, "token provider failed");
      },
    );
  }

  private frame(socket: WebSocketLike, payload: Payload): void {
    if (socket !== this.socket) return;
    this.lastRx = Date.now();
    this.stats.messagesIn++;
    let envelope: Envelope;
    const codec = this.codec as Codec;
    try {
      envelope = codec.decode(payload, this.core.limits);
    } catch (error) {
      if (error instanceof ProtocolError) {
        this.report(new ProtocolError(error.code, `bad frame from the server: ${error.message}`, error.ref));
        return;
      }
      throw error;
    }
    this.debugger?.envelope("in", toWire(envelope));
    const secure = this.secure;
    if (secure === null) {
      this.take(envelope);
      return;
    }
    // Verified and opened in arrival order, then taken as usual.
    const raw = secure.keys !== null && codec.decodeRaw !== undefined ? codec.decodeRaw(payload) : null;
    this.readChain = this.readChain
      .then(async () => {
        // The replay window is judged on the server's clock, as far as known.
        const [checked, failure] = await secure.receive(envelope, raw, Date.now() + (this.core.clockOffsetMs ?? 0));
        if (socket !== this.socket) return;
        if (failure !== null) this.cryptoFailed(failure);
        if (checked !== null) this.take(checked);
      })
      .catch((error: unknown) => this.report(error));
  }

  private cryptoFailed(failure: CryptoFailure): void {
    const nack = nackFor(failure, randomId(), Date.now());
    if (nack !== null) this.write(nack);
    this.emitTo("crypto", failure);
  }

  private take(envelope: Envelope): void {
    if (envelope.type === "batch") {
      // The server's answers to one of our batches: each as if it had come alone.
      if (!this.core.extensions.has(BATCH_EXTENSION)) return;
      const socket = this.socket;
      const envelopes = expandBatch(envelope, this.core.limits);
      this.stats.messagesIn += envelopes.length - 1; // envelopes, not frames
      for (const inner of envelopes) {
        if (this.socket !== socket) return;
        this.take(inner);
      }
      return;
    }
    if (envelope.type === "transfer") {
      this.transfersValue?.received(envelope); // the chunks extension
      return;
    }
    if (envelope.ref !== undefined) {
      if (envelope.type === "error" && envelope.ref === this.urlHello?.id) {
        // The hello of the URL refused after the upgrade (protocol.md 4.5):
        // the server still waits for a hello, which now goes as a frame.
        this.urlHello = null;
        if (this.socket !== null) this.sayHello(this.socket);
        return;
      }
      if (envelope.type === "heartbeat" && this.pings.has(envelope.ref)) {
        // Only its answer settles a probe: frames queued before the connection
        // died (delivered late by a frozen page) prove nothing.
        if (envelope.ref === this.probeId) this.endProbe();
        this.stats.rttMs = performanceNow() - (this.pings.get(envelope.ref) as number);
        this.pings.delete(envelope.ref);
        return;
      }
      if (this.authIds.delete(envelope.ref)) {
        if (envelope.type === "error") {
          this.report(new DeliveryError(envelope.ref, "rejected", envelope.code ?? 0, "token refresh refused", envelope.data));
        }
        return;
      }
    }
    this.run(this.core.receive(envelope, Date.now()));
  }

  private closed(socket: WebSocketLike, code: number | null, reason: string): void {
    if (socket !== this.socket) return;
    detach(socket);
    this.socket = null;
    this.clearTimer("connectTimer");
    this.clearTimer("refreshTimer");
    this.endProbe();
    this.pings.clear();
    this.authIds.clear();
    this.batcher?.drop();
    this.batcher = null;
    this.lastCloseCode = code;
    // A server without 4.5 ignored the hello of the URL and timed out waiting for one.
    if (code === ErrorCode.HANDSHAKE_TIMEOUT && this.urlHello !== null) this.urlHelloOff = true;
    this.urlHello = null;
    if (code === ErrorCode.GOING_AWAY) {
      const hint = retryHint(reason);
      if (hint !== null) this.hintDelay = hint * (1 + this.random());
    }
    const wasOpen = this.stateValue === "open";
    if (wasOpen) this.disconnectedAt = Date.now();
    this.emitTo("close", code, reason);
    if (!this.transportOpen) this.report(new ConnectError(code, this.url, reason));
    this.run(this.core.disconnected(Date.now()));
    if (this.stateValue === "closed") return;
    this.setState("disconnected");
    this.scheduleReconnect();
  }

  /** Abandon the socket at once (dead server, gap, reconnect): no closing handshake to wait for. */
  private dropSocket(code: number | null, reason: string): void {
    const socket = this.socket;
    if (socket === null) return;
    detach(socket);
    try {
      if (code !== null && code >= 4000 && socket.readyState === 1) socket.close(code, reason.slice(0, 100));
      if (socket.terminate !== undefined) socket.terminate();
      else if (code === null || code < 4000 || socket.readyState !== 1) socket.close();
    } catch {
      // already closing
    }
    this.closed(socket, code, reason);
  }

  private scheduleReconnect(): void {
    const code = this.lastCloseCode;
    const should = this.options.shouldReconnect ?? ((c: number | null) => c === null || !NO_RECONNECT_CODES.has(c));
    if (!should(code)) {
      this.giveUp(`not reconnecting after close code ${code}`);
      return;
    }
    const maxAttempts = this.options.maxAttempts;
    if (maxAttempts !== undefined && maxAttempts !== null && this.dialsSinceOpen >= maxAttempts) {
      this.giveUp(`gave up after ${this.dialsSinceOpen} attempts`);
      return;
    }
    let delay: number | null;
    if (this.hintDelay !== null) {
      delay = this.hintDelay;
      this.hintDelay = null;
    } else if (this.options.retryStrategy !== undefined) {
      delay = this.options.retryStrategy(this.attempt, code);
    } else {
      delay = this.backoff.delay(this.attempt);
    }
    if (delay === null || !(delay >= 0)) {
      this.giveUp("the retry strategy gave up");
      return;
    }
    this.setState("reconnecting");
    if (this.lifecycle !== null && !this.lifecycle.isOnline()) {
      // No futile attempts while offline: the `online` event dials at once.
      this.waitingForNetwork = true;
      return;
    }
    this.attempt++;
    this.nextAttempt = Date.now() + delay;
    this.debugger?.changed();
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      if (this.stateValue !== "reconnecting") return;
      if (this.lifecycle !== null && !this.lifecycle.isOnline()) this.waitingForNetwork = true;
      else this.dial();
    }, delay);
  }

  private giveUp(why: string): void {
    this.shutDown(why);
  }

  private shutDown(why: string): void {
    const socket = this.socket;
    if (socket !== null) {
      socket.onopen = null;
      socket.onmessage = null;
      socket.onerror = () => undefined;
      this.socket = null;
      try {
        socket.close(1000);
      } catch {
        // closing anyway
      }
    }
    this.stopTimers();
    this.core.disconnected(Date.now());
    if (this.stateValue !== "closed") this.setState("closed");
    const error = new ClientClosedError(why);
    this.run(this.core.abandon(0, why), error);
    for (const [id, waiter] of this.waiters) {
      this.waiters.delete(id);
      waiter.reject(error);
    }
    for (const waiter of this.openWaiters.splice(0)) waiter.reject(error);
    for (const [room, list] of this.roomWaiters) {
      this.roomWaiters.delete(room);
      for (const waiter of list) waiter.reject(error);
    }
  }

  // ------------------------------------------------------------ actions

  private loadThenDial(store: StateStore): void {
    this.storeState = "loading";
    store
      .load()
      .then(
        (state) => {
          this.core.restore(state);
        },
        (error: unknown) => this.report(new Error(`cannot load the stored state: ${String(error)}`)),
      )
      .finally(() => {
        if (this.storeState !== "loading") return;
        this.storeState = "loaded";
        this.persistSoon();
        if (this.stateValue === "disconnected" && this.watchdog !== null) this.dial();
      });
  }

  /** Save the state after this turn's changes (one save at a time, the latest state last). */
  private persistSoon(): void {
    const store = this.options.store;
    if (store === undefined || this.storeState !== "loaded") return;
    this.dirty = true;
    if (this.saving !== null) return;
    this.saving = (async () => {
      while (this.dirty) {
        this.dirty = false;
        await Promise.resolve(); // one save for the actions of a turn
        if (this.storeState !== "loaded") break;
        const state = this.core.snapshot();
        const json = JSON.stringify(state);
        if (json === this.savedJson) continue; // the watchdog's ticks mostly change nothing
        try {
          await store.save(state);
          this.savedJson = json;
        } catch (error) {
          this.report(new Error(`cannot save the state: ${String(error)}`));
        }
      }
      this.saving = null;
    })();
  }

  private debugDetail(state: ClientState): string | null {
    if (state === "disconnected") return `close ${this.lastCloseCode ?? "-"}`;
    if (state === "connecting") return `attempt ${this.dialsSinceOpen}`;
    return null;
  }

  private debugStatus(): DebugStatus {
    const streams: Record<string, { offset: number; epoch: string }> = {};
    for (const [name, p] of this.core.positions) streams[name] = { offset: p.offset, epoch: p.epoch };
    const held = this.core.inspect();
    const describe = (o: Outgoing): DebugPending => ({
      id: o.envelope.id,
      type: o.envelope.type,
      event: o.envelope.event ?? null,
      room: o.envelope.room ?? null,
      attempts: o.attempts,
      deadline: o.expiresMs,
    });
    return {
      state: this.stateValue,
      session: this.core.session,
      rooms: this.rooms,
      streams,
      pending: held.pending.slice(0, 100).map(describe),
      queued: held.queued.slice(0, 100).map(describe),
      unackedIn: held.unackedIn,
      nextAttemptAt: this.nextAttemptAt,
      offline: this.offline,
      stats: { ...this.stats, reconnectTimes: this.stats.reconnectTimes.slice(-10) },
    };
  }

  private run(actions: Action[], closing?: Error): void {
    for (const action of actions) {
      switch (action.kind) {
        case "transmit":
          this.write(action.envelope);
          break;
        case "deliver":
          this.deliver(action.envelope);
          break;
        case "outcome":
          this.outcome(action, closing);
          break;
        case "welcomed":
          this.welcomed(action);
          break;
        case "lost":
          this.stats.streamsLost++;
          this.emitTo("lost", action.stream, action.reason);
          break;
        case "room":
          this.roomChanged(action.room, action.joined, action.code);
          break;
        case "reconnect":
          this.hintDelay = 0;
          this.dropSocket(action.code, action.reason);
          break;
      }
    }
    this.armWake();
    this.persistSoon();
    if (actions.length > 0) this.debugger?.changed();
  }

  private size(envelope: Envelope): number {
    const codec = this.codec;
    if (codec === null) return 0;
    const payload = codec.encode(envelope);
    this.encoded.set(envelope, payload);
    return typeof payload === "string" ? utf8Length(payload) : payload.byteLength;
  }

  private write(envelope: Envelope): void {
    const socket = this.socket;
    if (socket === null || socket.readyState !== 1 || this.codec === null) return; // requeued on disconnect
    const secure = this.secure;
    if (secure?.signed === true) {
      // Signed in order on a chain; a frame whose socket went meanwhile is not sent.
      const codec = this.codec;
      const serverNow = Date.now() + (this.core.clockOffsetMs ?? 0);
      this.writeChain = this.writeChain
        .then(async () => {
          const payload = await secure.encode(codec, envelope, serverNow);
          if (this.socket !== socket || socket.readyState !== 1) return;
          socket.send(payload);
          this.stats.messagesOut++;
        })
        .catch((error: unknown) => this.report(error));
      return;
    }
    if (this.batcher !== null && this.batcher.add(envelope)) {
      this.stats.messagesOut++; // leaves with its batch
      this.debugger?.envelope("out", toWire(envelope));
      return;
    }
    this.writeNow(socket, envelope);
  }

  private writeNow(socket: WebSocketLike, envelope: Envelope, count = true): void {
    if (this.socket !== socket || socket.readyState !== 1 || this.codec === null) return;
    const payload = this.encoded.get(envelope) ?? this.codec.encode(envelope);
    try {
      socket.send(payload);
      if (count) this.stats.messagesOut++;
      this.debugger?.envelope("out", toWire(envelope));
    } catch (error) {
      this.report(error);
    }
  }

  private startBatching(): void {
    const window = this.options.batchWindowMs === undefined ? 0 : this.options.batchWindowMs;
    const bounds = grantedBounds(this.core.extensions.get(BATCH_EXTENSION));
    const socket = this.socket;
    if (window === null || bounds === null || socket === null || this.codec === null || this.secure?.signed === true) {
      return;
    }
    this.batcher = new OutgoingBatch(
      window,
      bounds,
      this.codec,
      (envelope) => this.writeNow(socket, envelope, false),
      (payload) => {
        if (this.socket !== socket || socket.readyState !== 1) return;
        try {
          socket.send(payload);
          this.stats.batchFrames++;
        } catch (error) {
          this.report(error);
        }
      },
      randomId,
    );
  }

  private welcomed(action: Extract<Action, { kind: "welcomed" }>): void {
    this.clearTimer("connectTimer");
    this.urlHello = null;
    this.startBatching();
    if (this.secure !== null) this.secure.limits = this.core.limits;
    const heartbeat = action.data.heartbeat as { interval?: unknown; timeout?: unknown } | undefined;
    if (typeof heartbeat?.timeout === "number" && heartbeat.timeout > 0) this.heartbeatTimeout = heartbeat.timeout;
    if (typeof heartbeat?.interval === "number" && heartbeat.interval > 0) this.heartbeatInterval = heartbeat.interval;
    this.attempt = 0;
    this.dialsSinceOpen = 0;
    this.hintDelay = null;
    this.stats.connections++;
    this.updateRate();
    if (this.disconnectedAt !== null) {
      const elapsed = Date.now() - this.disconnectedAt;
      this.stats.reconnects++;
      this.stats.lastReconnectMs = elapsed;
      this.stats.reconnectTimes = [...this.stats.reconnectTimes.slice(-99), elapsed];
      this.disconnectedAt = null;
    }
    this.lastPing = Date.now();
    this.setState("open");
    this.scheduleRefresh();
    this.transfersValue?.opened();
    this.emitTo("open", { session: action.session, resumed: action.resumed, data: action.data });
    for (const waiter of this.openWaiters.splice(0)) waiter.resolve();
  }

  private updateRate(): void {
    this.stats.successRate = this.stats.attempts > 0 ? this.stats.connections / this.stats.attempts : 0;
  }

  private roomChanged(room: string, joined: boolean, code?: number): void {
    const list = this.roomWaiters.get(room);
    if (list !== undefined) {
      this.roomWaiters.delete(room);
      for (const waiter of list) {
        if (joined) waiter.resolve();
        else waiter.reject(new DeliveryError(room, "rejected", code ?? ErrorCode.FORBIDDEN, `room ${room} refused`));
      }
    }
    this.emitTo("room", room, joined, code);
  }

  private outcome(action: Extract<Action, { kind: "outcome" }>, closing?: Error): void {
    const slow = this.slowTimers.get(action.id);
    if (slow !== undefined) {
      clearTimeout(slow);
      this.slowTimers.delete(action.id);
    }
    const waiter = this.waiters.get(action.id);
    const failed = action.status === "rejected" || action.status === "expired";
    const error = failed
      ? (closing ??
        new DeliveryError(action.id, action.status as "rejected" | "expired", action.code ?? 0, action.message ?? "", action.data))
      : null;
    if (waiter === undefined) {
      if (error !== null && closing === undefined) this.report(error);
      return;
    }
    this.waiters.delete(action.id);
    if (error !== null) waiter.reject(error);
    else if (waiter.call) (waiter.resolve as (value: unknown) => void)(action.data ?? null);
    else {
      const result: SendResult = { id: action.id, status: action.status === "sent" ? "sent" : "acked" };
      if (action.data !== undefined) result.data = action.data;
      (waiter.resolve as (value: SendResult) => void)(result);
    }
  }

  private deliver(envelope: Envelope): void {
    if (this.transfersValue !== null && envelope.event === ANNOUNCE_EVENT && this.transfersValue.announced(envelope)) {
      return; // a transfer announcement, taken by onTransfer
    }
    const message = new Message(envelope, this);
    const handlers = [
      ...(message.room !== null ? (this.roomHandlers.get(message.room) ?? []) : []),
      ...(this.handlers.get(message.event) ?? []),
      ...(this.handlers.get("*") ?? []),
    ];
    const pending: Promise<unknown>[] = [];
    let failed = false;
    for (const handler of handlers) {
      try {
        const result = handler(message);
        if (isThenable(result)) pending.push(Promise.resolve(result));
      } catch (error) {
        failed = true;
        this.report(error);
      }
    }
    if (envelope.ack !== true || this.options.autoAck === false || failed) return;
    if (pending.length === 0) {
      this._acknowledge(envelope);
      return;
    }
    // Not acknowledged when a handler fails: the server application learns
    // of it when its ack timeout passes.
    Promise.all(pending).then(
      () => this._acknowledge(envelope),
      (error: unknown) => this.report(error),
    );
  }

  // ------------------------------------------------------------ timers

  private armWake(): void {
    const next = this.core.nextWakeup();
    if (next === null || next >= this.wakeAt) return;
    this.clearTimer("wakeTimer");
    this.wakeAt = next;
    this.wakeTimer = setTimeout(() => {
      this.wakeTimer = null;
      this.wakeAt = Infinity;
      this.run(this.core.tick(Date.now()));
    }, Math.max(0, next - Date.now()));
  }

  private startTimers(): void {
    this.lastCheck = Date.now();
    if (this.watchdog === null) this.watchdog = setInterval(() => this.check(), WATCHDOG_MS);
    if (this.removeLifecycle === null && this.lifecycle !== null) {
      this.removeLifecycle = this.lifecycle.listen((event) => this.lifecycleEvent(event));
    }
  }

  private lifecycleEvent(event: LifecycleEvent): void {
    switch (event) {
      case "hidden":
        return;
      case "offline":
        // Browsers may keep a dead socket "open" for minutes: ask it.
        if (this.stateValue === "open") this.probe();
        else if (this.stateValue === "reconnecting") {
          this.clearTimer("reconnectTimer");
          this.waitingForNetwork = true;
        }
        return;
      case "online":
        // The network is back: no backoff step to wait out.
        this.attempt = 0;
        this.hintDelay = null;
        break;
      default:
        break;
    }
    if (this.stateValue === "open") this.probe();
    else if (this.stateValue === "reconnecting" && (this.lifecycle?.isOnline() ?? true)) {
      this.clearTimer("reconnectTimer");
      this.dial();
    }
  }

  /**
   * Check liveness now: a heartbeat the server answers at once. Its answer
   * before the deadline settles it; none, and the connection is replaced.
   */
  private probe(): void {
    if (this.stateValue !== "open" || this.probeSentAt !== null) return;
    const socket = this.socket;
    this.probeSentAt = Date.now();
    this.probeId = this.sendPing();
    const deadline = this.options.livenessTimeout ?? 3000;
    this.probeTimer = setTimeout(() => {
      this.probeTimer = null;
      if (socket !== this.socket || this.probeSentAt === null) return;
      // Fired far too late (the tab froze again): the verdict would be unfair; ask anew.
      const late = Date.now() - this.probeSentAt > deadline + LATE_MS;
      this.probeSentAt = null;
      if (late) this.probe();
      else this.dropSocket(ErrorCode.HEARTBEAT_TIMEOUT, "liveness probe unanswered");
    }, deadline);
  }

  private endProbe(): void {
    this.probeSentAt = null;
    this.probeId = null;
    if (this.probeTimer !== null) clearTimeout(this.probeTimer);
    this.probeTimer = null;
  }

  /** Dead-server detection and our own heartbeats, once a second. */
  private check(): void {
    const now = Date.now();
    const late = now - this.lastCheck > WATCHDOG_MS + LATE_MS;
    this.lastCheck = now;
    if (late) {
      // Our timers were throttled (hidden tab) or frozen: silence measured by the
      // wall clock proves nothing, as the server's frames may still be queued
      // behind this timer. Ask (a probe) instead of declaring the server dead.
      if (this.stateValue === "open") this.probe();
    } else if (this.socket !== null && this.probeSentAt === null && now - this.lastRx > this.heartbeatTimeout) {
      this.dropSocket(ErrorCode.HEARTBEAT_TIMEOUT, "no frame from the server in time");
      return;
    }
    if (this.stateValue === "open" && now - this.lastPing >= this.heartbeatInterval) this.ping();
    this.run(this.core.tick(now));
  }

  private stopTimers(): void {
    for (const name of ["reconnectTimer", "connectTimer", "wakeTimer", "refreshTimer"] as const) this.clearTimer(name);
    this.wakeAt = Infinity;
    if (this.watchdog !== null) clearInterval(this.watchdog);
    this.watchdog = null;
    this.endProbe();
    this.waitingForNetwork = false;
    this.removeLifecycle?.();
    this.removeLifecycle = null;
  }

  private clearTimer(name: "reconnectTimer" | "connectTimer" | "wakeTimer" | "refreshTimer"): void {
    const timer = this[name];
    if (timer !== null) clearTimeout(timer);
    this[name] = null;
    if (name === "wakeTimer") this.wakeAt = Infinity;
  }

  private scheduleRefresh(): void {
    this.clearTimer("refreshTimer");
    const expires = tokenExpiry(this.token);
    if (expires === null || typeof this.options.token !== "function") return;
    const left = expires - Date.now();
    // Before `refreshBefore`, or at half the lifetime for tokens shorter than that.
    const wait = Math.max(left - (this.options.refreshBefore ?? 30000), left / 2, 0);
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = null;
      this.refreshToken().catch((error: unknown) => this.report(error));
    }, wait);
  }
}

/** The watchdog's period, and how late a timer may fire before we count it throttled or frozen. */
const WATCHDOG_MS = 1000;
const LATE_MS = 4000;

/**
 * Mark a promise as handled: awaiting it still throws, but one the
 * application ignores (a subscribe, a send) does not crash Node with an
 * unhandled rejection when the client closes.
 */
function handled<T>(promise: Promise<T>): Promise<T> {
  promise.catch(() => undefined);
  return promise;
}

function retryHint(reason: string): number | null {
  try {
    const hint: unknown = (JSON.parse(reason) as { retry_after_ms?: unknown }).retry_after_ms;
    if (typeof hint === "number" && Number.isInteger(hint) && hint >= 0 && hint <= 3600000) return hint;
  } catch {
    // not a hint
  }
  return null;
}

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return typeof value === "object" && value !== null && typeof (value as { then?: unknown }).then === "function";
}

/** Stop listening to a socket we abandon (a noop error listener: `ws` throws without one). */
function detach(socket: WebSocketLike): void {
  socket.onopen = null;
  socket.onmessage = null;
  socket.onclose = null;
  socket.onerror = () => undefined;
}

function performanceNow(): number {
  return typeof performance !== "undefined" ? performance.now() : Date.now();
}
