/**
 * What the page tells about the network and its own life: online/offline,
 * shown/hidden, restored from the back/forward cache, resumed after a
 * freeze, a changed network type. The client reacts to these instead of
 * waiting out a backoff step or a heartbeat timeout.
 *
 * A `Lifecycle` is injectable (`ClientOptions.lifecycle`), so tests and
 * other runtimes (React Native, Electron) can drive it with their own events.
 */

export type LifecycleEvent =
  /** The network came back (`online`). */
  | "online"
  /** The network went away (`offline`). */
  | "offline"
  /** The page became visible again (`visibilitychange`). */
  | "visible"
  /** The page was hidden: its timers may now be throttled. */
  | "hidden"
  /** The page came back from the back/forward cache (`pageshow` with `persisted`). */
  | "pageshow"
  /** The page was frozen and runs again (`resume`). */
  | "resume"
  /** The network type changed (`navigator.connection` `change`: Wi-Fi to cellular). */
  | "network-change";

export interface Lifecycle {
  /** False only when the platform knows there is no network (`navigator.onLine === false`). */
  isOnline(): boolean;
  /** Call `listener` on every event; returns a function that stops it. */
  listen(listener: (event: LifecycleEvent) => void): () => void;
}

interface EventTargetLike {
  addEventListener(name: string, listener: (event: unknown) => void): void;
  removeEventListener(name: string, listener: (event: unknown) => void): void;
}

interface Scope {
  window?: EventTargetLike;
  document?: EventTargetLike & { visibilityState?: string };
  navigator?: { onLine?: boolean; connection?: Partial<EventTargetLike> };
}

/**
 * The browser's lifecycle from `window`, `document` and `navigator`, or null
 * where there is no page (Node.js, workers without a document still get
 * online/offline through `self` when it is an event target).
 */
export function browserLifecycle(scope: unknown = globalThis): Lifecycle | null {
  const s = scope as Scope & Partial<EventTargetLike>;
  const win = s.window ?? (typeof s.addEventListener === "function" && s.navigator !== undefined ? (s as EventTargetLike) : undefined);
  if (win === undefined || typeof win.addEventListener !== "function") return null;
  const doc = s.document;
  const connection = s.navigator?.connection;
  return {
    isOnline: () => s.navigator?.onLine !== false,
    listen(listener) {
      const added: Array<[EventTargetLike, string, (event: unknown) => void]> = [];
      const on = (target: EventTargetLike | undefined, name: string, fn: (event: unknown) => void): void => {
        if (target === undefined || typeof target.addEventListener !== "function") return;
        target.addEventListener(name, fn);
        added.push([target, name, fn]);
      };
      on(win, "online", () => listener("online"));
      on(win, "offline", () => listener("offline"));
      on(win, "pageshow", (event) => {
        if ((event as { persisted?: boolean }).persisted === true) listener("pageshow");
      });
      on(doc, "visibilitychange", () => listener(doc?.visibilityState === "hidden" ? "hidden" : "visible"));
      on(doc, "resume", () => listener("resume"));
      on(connection as EventTargetLike | undefined, "change", () => listener("network-change"));
      return () => {
        for (const [target, name, fn] of added.splice(0)) target.removeEventListener(name, fn);
      };
    },
  };
}
