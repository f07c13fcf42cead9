/**
 * The WebSocket the client uses: the runtime's own (browsers, Deno, Bun,
 * Node 22+), else the `ws` package (Node 20), imported only then.
 */

/** The part of the WHATWG WebSocket interface the client needs (`ws` has it too). */
export interface WebSocketLike {
  readonly readyState: number;
  readonly protocol: string;
  binaryType: string;
  send(data: string | ArrayBuffer | ArrayBufferView): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string; wasClean?: boolean }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  /** `ws` only: drop the TCP connection at once, without a closing handshake. */
  terminate?: () => void;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

let nodeWebSocket: Promise<WebSocketConstructor> | null = null;

export function resolveWebSocket(given?: WebSocketConstructor): WebSocketConstructor | Promise<WebSocketConstructor> {
  if (given !== undefined) return given;
  const native = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (native !== undefined) return native;
  nodeWebSocket ??= import("ws").then(
    (module) => ((module as { WebSocket?: unknown }).WebSocket ?? (module as { default: unknown }).default) as WebSocketConstructor,
    (error: unknown) => {
      nodeWebSocket = null;
      throw new Error(`no global WebSocket and the "ws" package cannot be loaded: ${String(error)}`);
    },
  );
  return nodeWebSocket;
}
