/** The error and close codes of docs/protocol.md section 10. */
export const ErrorCode = {
  BAD_FRAME: 4000,
  BAD_ENVELOPE: 4001,
  UNKNOWN_TYPE: 4002,
  HELLO_REQUIRED: 4003,
  UNSUPPORTED_CODEC: 4004,
  MESSAGE_TOO_LARGE: 4005,
  BAD_STATE: 4006,
  UNAUTHORIZED: 4100,
  TOKEN_EXPIRED: 4101,
  FORBIDDEN: 4102,
  ORIGIN_REJECTED: 4103,
  ADDRESS_REJECTED: 4104,
  RATE_LIMITED: 4200,
  SLOW_CONSUMER: 4201,
  TOO_MANY_CONNECTIONS: 4202,
  IDLE_TIMEOUT: 4203,
  HEARTBEAT_TIMEOUT: 4204,
  HANDSHAKE_TIMEOUT: 4205,
  QUEUE_FULL: 4206,
  HANDLER_ERROR: 4300,
  NO_HANDLER: 4301,
  EXPIRED: 4302,
  TIMEOUT: 4303,
  UNAVAILABLE: 4304,
  SESSION_REPLACED: 4400,
  STREAM_GAP: 4401,
  GOING_AWAY: 4500,
  INTERNAL_ERROR: 4501,
  DECRYPT_FAILED: 4600,
  BAD_SIGNATURE: 4601,
  REPLAYED: 4602,
  UNKNOWN_KEY: 4603,
  STALE: 4604,
  TRANSFER_CORRUPT: 4620,
  TRANSFER_CANCELLED: 4621,
  TRANSFER_UNKNOWN: 4622,
  TRANSFER_TOO_LARGE: 4623,
  TRANSFER_BUSY: 4624,
  TRANSFER_FLOW: 4625,
  BAD_BATCH: 4640,
} as const;

export type ErrorCodeName = keyof typeof ErrorCode;

const NAMES: Map<number, string> = new Map(
  Object.entries(ErrorCode).map(([name, code]) => [code, name.toLowerCase()]),
);

/** `bad_envelope` for 4001, or undefined for a code this client does not know. */
export function codeName(code: number): string | undefined {
  return NAMES.get(code);
}

/**
 * Close codes after which reconnecting cannot help without the application's
 * consent (protocol.md section 10, "retry: no" codes of the close range).
 */
export const NO_RECONNECT_CODES: ReadonlySet<number> = new Set([
  ErrorCode.UNAUTHORIZED,
  ErrorCode.FORBIDDEN,
  ErrorCode.ORIGIN_REJECTED,
  ErrorCode.ADDRESS_REJECTED,
  ErrorCode.SESSION_REPLACED,
  ErrorCode.UNSUPPORTED_CODEC,
]);

/** A frame or envelope the protocol refuses: `code` and the offending id. */
export class ProtocolError extends Error {
  override readonly name = "ProtocolError";
  constructor(
    readonly code: number,
    message: string,
    readonly ref: string | null = null,
  ) {
    super(message);
  }
}
