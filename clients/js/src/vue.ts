/**
 * Vue 3 composables (`warpsocket/vue`; `vue` 3.3+ is a peer dependency), the
 * React hooks' twins. Call them in `setup()`; they clean up with the scope.
 *
 *     const client = useWarpSocket("wss://example.com/ws");  // provided to descendants
 *     const state = useConnectionState();                     // Ref<ClientState>
 *     const { joined, messages } = useRoom("lobby");
 *     useEvent("said", (message) => ...);
 */
import { getCurrentInstance, inject, onScopeDispose, provide, readonly, ref, shallowRef } from "vue";
import type { InjectionKey, Ref, ShallowRef } from "vue";
import { WarpSocketClient, type ClientOptions, type ClientState, type Handler, type Message } from "./client.js";
import { joinShared } from "./rooms.js";

export const WarpSocketKey: InjectionKey<WarpSocketClient> = Symbol("warpsocket");

/** Make `client` the one the composables of descendant components use. */
export function provideWarpSocket(client: WarpSocketClient): void {
  provide(WarpSocketKey, client);
}

/** A client for this scope's lifetime, connecting now, closed with the scope, and provided to descendants. */
export function useWarpSocket(url: string, options?: ClientOptions): WarpSocketClient {
  const client = new WarpSocketClient(url, options);
  if (getCurrentInstance() !== null) provideWarpSocket(client);
  client.connect().catch(() => undefined); // failures show in the state; connect keeps retrying
  onScopeDispose(() => void client.close());
  return client;
}

/** The client given, else the provided one. */
export function useWarpSocketClient(client?: WarpSocketClient): WarpSocketClient {
  const chosen = client ?? (getCurrentInstance() !== null ? inject(WarpSocketKey, null) : null);
  if (chosen === null) throw new Error("no WarpSocket client: pass one, or call useWarpSocket/provideWarpSocket in an ancestor");
  return chosen;
}

/** The connection state as a read-only ref, updated on every transition. */
export function useConnectionState(client?: WarpSocketClient): Readonly<Ref<ClientState>> {
  const chosen = useWarpSocketClient(client);
  const state = ref<ClientState>(chosen.state);
  const off = chosen.onState((next) => (state.value = next));
  onScopeDispose(() => void off());
  return readonly(state);
}

/** Call `handler` for every stream event named `event` (`"*"`: all) while the scope lives. */
export function useEvent(event: string, handler: Handler, client?: WarpSocketClient): void {
  const off = useWarpSocketClient(client).on(event, handler);
  onScopeDispose(off);
}

export interface RoomRefs {
  joined: Readonly<Ref<boolean>>;
  error: Readonly<ShallowRef<Error | null>>;
  /** The room's messages since joining, the newest last (at most `limit`). */
  messages: Readonly<ShallowRef<readonly Message[]>>;
}

/** Be in room `name` while the scope lives (shared with other components); its messages. */
export function useRoom(name: string, options: { limit?: number } = {}, client?: WarpSocketClient): RoomRefs {
  const chosen = useWarpSocketClient(client);
  const limit = options.limit ?? 100;
  const joined = ref(false);
  const error = shallowRef<Error | null>(null);
  const messages = shallowRef<readonly Message[]>([]);
  let active = true;
  const membership = joinShared(chosen, name, (message) => {
    if (active) messages.value = [...messages.value, message].slice(-limit);
  });
  membership.joined.then(
    () => {
      if (active) joined.value = true;
    },
    (reason: unknown) => {
      if (active) error.value = reason instanceof Error ? reason : new Error(String(reason));
    },
  );
  onScopeDispose(() => {
    active = false;
    membership.leave();
  });
  return { joined: readonly(joined), error, messages };
}
