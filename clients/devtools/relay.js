// The content script (isolated world): passes the hook's messages to the
// extension's service worker, and its attach/detach back to the hook.
(() => {
  const FROM_HOOK = "warpsocket-devtools-hook";
  const TO_HOOK = "warpsocket-devtools-relay";
  let port = null;

  const connect = () => {
    port = chrome.runtime.connect({ name: "page" });
    port.onMessage.addListener((message) => {
      if (message?.kind === "attach" || message?.kind === "detach") {
        window.postMessage({ source: TO_HOOK, kind: message.kind }, "*");
      }
    });
    port.onDisconnect.addListener(() => {
      port = null;
      // The service worker went away (idle): come back, the panel asks anew.
      setTimeout(connect, 500);
    });
  };

  window.addEventListener("message", (message) => {
    if (message.source !== window || message.data?.source !== FROM_HOOK) return;
    const { kind } = message.data;
    if (kind === "present") {
      if (port === null) connect();
      return;
    }
    if (kind !== "event" && kind !== "snapshot") return;
    try {
      port?.postMessage(message.data);
    } catch {
      port = null;
    }
  });
})();
