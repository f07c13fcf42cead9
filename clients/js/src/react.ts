/**
 * React bindings (`warpsocket/react`; `react` 18+ is a peer dependency):
 *
 *     const client = useWarpSocket("wss://example.com/ws", { token });
 *     <WarpSocketProvider client={client}> ... </WarpSocketProvider>
 *     const state = useConnectionState();              // re-renders on every transition
 *     const { joined, messages } = useRoom("lobby");   // joined while mounted
 *     useEvent("said", (message) => ...);               // the latest handler, no re-subscribe
 *
 * Every hook takes the client as its last argument too, instead of the provider.
 */
import { createContext, createElement, useCallback, useContext, useEffect, useMemo, useRef, useState, useSyncExternalStore } from "react";
import type { ReactNode } from "react";
import { WarpSocketClient, type ClientOptions, type ClientState, type Handler, type Message } from "./client.js";
import { joinShared } from "./rooms.js";

const ClientContext = createContext<WarpSocketClient | null>(null);

/** Makes `client` the one the hooks below use in this subtree. */
export function WarpSocketProvider(props: { client: WarpSocketClient; children?: ReactNode }): ReactNode {
  return createElement(ClientContext.Provider, { value: props.client }, props.children);
}

/**
 * A client for the component's lifetime: connecting once mounted, closed
 * when unmounted or when `url` changes (a new client then). `options` are
 * read when the client is made.
 */
export function useWarpSocket(url: string, options?: ClientOptions): WarpSocketClient {
  const latest = useRef(options);
  latest.current = options;
  const client = useMemo(() => new WarpSocketClient(url, latest.current), [url]);
  useEffect(() => {
    client.connect().catch(() => undefined); // failures show in the state; connect keeps retrying
    return () => void client.close();
  }, [client]);
  return client;
}

/** The client given, else the provider's. */
export function useWarpSocketClient(client?: WarpSocketClient): WarpSocketClient {
  const provided = useContext(ClientContext);
  const chosen = client ?? provided;
  if (chosen === null) throw new Error("no WarpSocket client: pass one, or render a <WarpSocketProvider>");
  return chosen;
}

/** The connection state, re-rendering on every transition. */
export function useConnectionState(client?: WarpSocketClient): ClientState {
  const chosen = useWarpSocketClient(client);
  const subscribe = useCallback(
    (notify: () => void) => {
      const off = chosen.onState(() => notify());
      return () => void off();
    },
    [chosen],
  );
  return useSyncExternalStore(subscribe, () => chosen.state, () => chosen.state);
}

/** Call `handler` for every stream event named `event` (`"*"`: all); the latest handler is used. */
export function useEvent(event: string, handler: Handler, client?: WarpSocketClient): void {
  const chosen = useWarpSocketClient(client);
  const latest = useRef(handler);
  latest.current = handler;
  useEffect(() => chosen.on(event, (message) => latest.current(message)), [chosen, event]);
}

export interface RoomState {
  /** The server confirmed the membership. */
  joined: boolean;
  /** The join was refused (a `DeliveryError` with the code). */
  error: Error | null;
  /** The room's messages since mounting, the newest last (at most `limit`). */
  messages: Message[];
}

/** Be in room `name` while mounted; its messages (the last `limit`, default 100). */
export function useRoom(name: string, options: { limit?: number } = {}, client?: WarpSocketClient): RoomState {
  const chosen = useWarpSocketClient(client);
  const limit = options.limit ?? 100;
  const [state, setState] = useState<RoomState>({ joined: false, error: null, messages: [] });
  useEffect(() => {
    let active = true;
    setState({ joined: false, error: null, messages: [] });
    const handler: Handler = (message) => {
      if (active) setState((s) => ({ ...s, messages: [...s.messages, message].slice(-limit) }));
    };
    const membership = joinShared(chosen, name, handler);
    membership.joined.then(
      () => active && setState((s) => ({ ...s, joined: true, error: null })),
      (error: unknown) => active && setState((s) => ({ ...s, error: error instanceof Error ? error : new Error(String(error)) })),
    );
    return () => {
      active = false;
      membership.leave();
    };
  }, [chosen, name, limit]);
  return state;
}
