/**
 * Durable client state: where `DurableState` (session, resume token, stream
 * positions, rooms, unconfirmed messages) lives between page loads, so a
 * reload resumes the session with nothing lost.
 */
import type { DurableState } from "./core.js";

export interface StateStore {
  /** The saved state, or null; what comes back is validated before use. */
  load(): Promise<unknown>;
  save(state: DurableState): Promise<void>;
  /** Forget it (the client closed for good). */
  clear(): Promise<void>;
}

/** Kept in memory only: for tests, and to share one state between clients in a process. */
export function memoryStore(): StateStore & { state: DurableState | null } {
  const store = {
    state: null as DurableState | null,
    load: () => Promise.resolve(store.state === null ? null : structuredClone(store.state)),
    save: (state: DurableState) => {
      store.state = structuredClone(state);
      return Promise.resolve();
    },
    clear: () => {
      store.state = null;
      return Promise.resolve();
    },
  };
  return store;
}

/**
 * IndexedDB, one record per `key` (use one key per client in a page, e.g.
 * the URL) in the object store "state" of database `database`
 * (default "warpsocket").
 */
export function indexedDbStore(key: string, options: { database?: string; indexedDB?: IDBFactory } = {}): StateStore {
  const factory = options.indexedDB ?? (globalThis as { indexedDB?: IDBFactory }).indexedDB;
  if (factory === undefined) throw new Error("indexedDbStore: no IndexedDB here");
  const name = options.database ?? "warpsocket";
  let db: Promise<IDBDatabase> | null = null;
  const open = (): Promise<IDBDatabase> =>
    (db ??= new Promise<IDBDatabase>((resolve, reject) => {
      const request = factory.open(name, 1);
      request.onupgradeneeded = () => request.result.createObjectStore("state");
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => {
        db = null;
        reject(request.error ?? new Error("IndexedDB open failed"));
      };
    }));
  const run = async (mode: IDBTransactionMode, act: (store: IDBObjectStore) => IDBRequest): Promise<unknown> => {
    const database = await open();
    return new Promise((resolve, reject) => {
      const tx = database.transaction("state", mode);
      const request = act(tx.objectStore("state"));
      // Resolved on commit, not on the request: a save counts once it is durable.
      tx.oncomplete = () => resolve(request.result);
      tx.onerror = tx.onabort = () => reject(tx.error ?? new Error("IndexedDB transaction failed"));
    });
  };
  return {
    load: () => run("readonly", (store) => store.get(key)).then((value) => value ?? null),
    save: (state) => run("readwrite", (store) => store.put(state, key)).then(() => undefined),
    clear: () => run("readwrite", (store) => store.delete(key)).then(() => undefined),
  };
}
