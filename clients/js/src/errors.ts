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
