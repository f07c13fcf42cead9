/**
 * The client's side of encryption and signatures (protocol.md, the two
 * extension sections): seal outgoing event data, sign what it writes,
 * verify and open what it receives. WebCrypto is asynchronous: the client
 * runs these in order through promise chains (client.ts).
 */
import type { Codec } from "./codec.js";
import { codeName } from "./codes.js";
import { DEFAULT_LIMITS, type DataLimits } from "./datamodel.js";
import { E2E_EXTENSION, E2EError, isSealed, openSealed, Sealer, scopeOf, type KeyProvider } from "./e2e.js";
import { toWire, type Envelope } from "./envelope.js";
import { ReplayGuard } from "./replay.js";
import { checkReplay, SIGN_EXTENSION, SignatureError, signWire, type SignatureKeys } from "./signing.js";

/** A received envelope refused (not delivered): code 4600-4604; `envelope` as it arrived. */
export interface CryptoFailure {
  code: number;
  message: string;
  envelope: Envelope;
}

export function askedExtensions(base: readonly string[], provider: KeyProvider | null, keys: SignatureKeys | null): string[] {
  const wanted = [...base];
  if (provider !== null && !wanted.includes(E2E_EXTENSION)) wanted.push(E2E_EXTENSION);
  if (keys !== null && !wanted.includes(SIGN_EXTENSION)) wanted.push(SIGN_EXTENSION);
  return wanted;
}

export class ClientCrypto {
  /** This connection agreed to `sign` (set by its welcome); the server signs on it. */
  signed = false;
  verifying = false;
  limits: DataLimits = DEFAULT_LIMITS;

  constructor(
    readonly provider: KeyProvider | null,
    readonly keys: SignatureKeys | null,
    readonly guard: ReplayGuard = new ReplayGuard(),
  ) {}

  /** Outgoing event data, sealed when the provider has a key for its scope. */
  async seal(event: string, data: unknown, room: string | undefined): Promise<unknown> {
    if (this.provider === null) return data;
    return new Sealer(this.provider, this.limits).seal(data, event, scopeOf(room));
  }

  /** The frame for `envelope`: signed (and stamped now, when no ttl/deadline counts from the stamp). */
  async encode(codec: Codec, envelope: Envelope, serverNowMs: number): Promise<string | Uint8Array> {
    const key = this.keys?.signingKey ?? null;
    if (!this.signed || key === null) return codec.encode(envelope);
    if (codec.encodeRaw === undefined) throw new Error(`codec ${codec.subprotocol} cannot carry signatures`);
    const stamped =
      envelope.ttl === undefined && envelope.deadline === undefined ? { ...envelope, timestamp: Math.max(0, serverNowMs) } : envelope;
    return codec.encodeRaw(await signWire(toWire(stamped), key));
  }

  /**
   * What the core gets instead of `envelope` (null: nothing), and what to
   * report. A stream event that fails becomes a placeholder with the code
   * (protocol.md 5.2): skipped, reported, never delivered.
   */
  async receive(
    envelope: Envelope,
    raw: Record<string, unknown> | null,
    nowMs: number,
  ): Promise<[Envelope | null, CryptoFailure | null]> {
    if (envelope.type === "welcome") {
      const granted = (envelope.data as Record<string, unknown> | undefined)?.extensions as Record<string, unknown> | undefined;
      const params = typeof granted === "object" && granted !== null ? granted[SIGN_EXTENSION] : undefined;
      this.signed = this.keys !== null && typeof params === "object" && params !== null;
      // The server signs only when its parameters name its key.
      this.verifying = this.signed && "kid" in (params as object);
    }
    try {
      if (this.verifying) await this.verify(envelope, raw, nowMs);
      if (envelope.type === "event" && this.provider !== null && envelope.stream !== undefined && isSealed(envelope.data)) {
        const plain = await openSealed(envelope.data, this.provider, envelope.event ?? "message", envelope.stream, this.limits);
        return [{ ...envelope, data: plain }, null];
      }
    } catch (error) {
      if (!(error instanceof SignatureError || error instanceof E2EError)) throw error;
      const failure: CryptoFailure = { code: error.code, message: error.message, envelope };
      if (envelope.type === "event" && envelope.offset !== undefined) {
        const placeholder: Envelope = { ...envelope, code: error.code };
        delete placeholder.data;
        return [placeholder, failure];
      }
      if (envelope.type === "welcome") this.signed = this.verifying = false;
      return [null, failure];
    }
    return [envelope, null];
  }

  private async verify(envelope: Envelope, raw: Record<string, unknown> | null, nowMs: number): Promise<void> {
    const keys = this.keys as SignatureKeys;
    const wire = raw ?? {};
    const kid = await keys.verify(wire);
    // A stream event may be a replay from history, legitimately old: its
    // offset protects it (protocol.md 5.2). Everything else: the window.
    if (envelope.type !== "event" || envelope.stream === undefined) checkReplay(this.guard, kid, wire, nowMs);
  }
}

/** The `error` answer to an acked server event the client refused, so the server's send fails with the code. */
export function nackFor(failure: CryptoFailure, id: string, nowMs: number): Envelope | null {
  const event = failure.envelope;
  if (event.type !== "event" || event.ack !== true) return null;
  return {
    type: "error",
    id,
    timestamp: nowMs,
    ref: event.id,
    code: failure.code,
    data: { name: codeName(failure.code) ?? "error", message: failure.message.slice(0, 200) },
  };
}

