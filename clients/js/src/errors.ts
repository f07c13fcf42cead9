import { codeName } from "./codes.js";
import type { Status } from "./core.js";

/** A message's final outcome was a rejection or an expiry (it has a protocol code). */
export class DeliveryError extends Error {
  override readonly name = "DeliveryError";
  /** `bad_envelope`, `handler_error`, ... (undefined for a code this client does not know). */
  readonly codeName: string | undefined;
  constructor(
    /** The id of the message. */
    readonly id: string,
    readonly status: Exclude<Status, "sent" | "acked" | "result">,
    readonly code: number,
    message: string,
    /** The `error` envelope's data, when the server answered. */
    readonly data?: unknown,
  ) {
    super(`${status} (${code}${codeName(code) ? " " + codeName(code) : ""}): ${message}`);
    this.codeName = codeName(code);
  }
}

/** The client was closed (or gave up reconnecting) before the outcome was known. */
export class ClientClosedError extends Error {
  override readonly name = "ClientClosedError";
}

/**
 * A connection attempt ended before the WebSocket opened (to `onError`, once
 * per attempt; the client retries as after any `1006`). In a browser the
 * cause is hidden from the page: an HTTP refusal of the upgrade (403 for a
 * refused Origin or address, 429, 503 while draining), a TLS failure (an
 * untrusted certificate), or no server at all all look the same, `1006`
 * with no reason. The server's log and metrics say which.
 */
export class ConnectError extends Error {
  override readonly name = "ConnectError";
  constructor(
    /** The close code the transport reported (1006 in browsers), null for the client's own connect timeout. */
    readonly code: number | null,
    readonly url: string,
    reason: string,
  ) {
    super(`the WebSocket to ${url} did not open (${code ?? "timeout"}${reason ? ": " + reason : ""})`);
  }
}
