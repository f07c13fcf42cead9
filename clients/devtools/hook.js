// In the page's own JavaScript world (MAIN), before its scripts: the hook the
// WarpSocket client reports to when created with `debug: true`
// (clients/js/src/debug.ts), and a bridge to relay.js by window messages.
// Nothing leaves the page until a WarpSocket panel is open for this tab.
(() => {
  const NAME = "__WARPSOCKET_DEVTOOLS_HOOK__";
  const FROM_HOOK = "warpsocket-devtools-hook";
  const TO_HOOK = "warpsocket-devtools-relay";
  let hook = globalThis[NAME];
  if (hook === undefined || hook === null || hook.version !== 1) {
    hook = { version: 1, clients: [], listeners: new Set() };
    Object.defineProperty(globalThis, NAME, { value: hook, configurable: true, writable: true });
  }
  let attached = false;
  let announced = false;
  const post = (message) => window.postMessage({ source: FROM_HOOK, ...message }, "*");
  const snapshot = () =>
    hook.clients.map((record) => {
      let status = null;
      try {
        status = record.status();
      } catch {
        // a client from an older bundle
      }
      return { id: record.id, url: record.url, createdAt: record.createdAt, states: record.states, envelopes: record.envelopes, status };
    });
  const announce = () => {
    if (announced) return;
    announced = true;
    post({ kind: "present" });
  };
  hook.listeners.add((event) => {
    announce();
    if (attached) post({ kind: "event", event });
  });
  if (hook.clients.length > 0) announce();
  window.addEventListener("message", (message) => {
    if (message.source !== window || message.data?.source !== TO_HOOK) return;
    if (message.data.kind === "attach") {
      attached = true;
      post({ kind: "snapshot", clients: snapshot() });
    } else if (message.data.kind === "detach") {
      attached = false;
    }
  });
})();
