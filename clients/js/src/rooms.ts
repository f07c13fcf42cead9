/**
 * Room membership shared by UI components (the React and Vue bindings): the
 * client leaves a room only when the last component using it lets go.
 */
import type { Handler, WarpSocketClient } from "./client.js";

const members = new WeakMap<WarpSocketClient, Map<string, number>>();

/** Join `name` for one component, with its handler; `leave()` undoes exactly that. */
export function joinShared(client: WarpSocketClient, name: string, handler: Handler): { joined: Promise<void>; leave: () => void } {
  const counts = members.get(client) ?? new Map<string, number>();
  members.set(client, counts);
  counts.set(name, (counts.get(name) ?? 0) + 1);
  const joined = client.subscribe(name, handler);
  let left = false;
  return {
    joined,
    leave() {
      if (left) return;
      left = true;
      const remaining = (counts.get(name) ?? 1) - 1;
      if (remaining > 0) {
        counts.set(name, remaining);
        client.offRoom(name, handler);
      } else {
        counts.delete(name);
        if (client.state !== "closed") client.unsubscribe(name);
      }
    },
  };
}
