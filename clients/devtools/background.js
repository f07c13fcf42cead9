// The service worker: routes each tab's page port to the panels open for it.
const pages = new Map(); // tabId -> port (relay.js)
const panels = new Map(); // tabId -> Set<port> (panel.js)
globalThis.pages = pages; // for the end-to-end test
globalThis.panels = panels;

chrome.runtime.onConnect.addListener((port) => {
  if (port.name === "page") {
    const tabId = port.sender?.tab?.id;
    if (tabId === undefined) return port.disconnect();
    pages.set(tabId, port);
    port.onMessage.addListener((message) => {
      for (const panel of panels.get(tabId) ?? []) panel.postMessage(message);
    });
    port.onDisconnect.addListener(() => {
      if (pages.get(tabId) === port) pages.delete(tabId);
      for (const panel of panels.get(tabId) ?? []) panel.postMessage({ kind: "page-gone" });
    });
    if ((panels.get(tabId)?.size ?? 0) > 0) port.postMessage({ kind: "attach" });
    for (const panel of panels.get(tabId) ?? []) panel.postMessage({ kind: "page-found" });
    return;
  }
  if (port.name !== "panel") return;
  let tabId = null;
  port.onMessage.addListener((message) => {
    if (message?.kind !== "init" || !Number.isInteger(message.tabId) || tabId !== null) return;
    tabId = message.tabId;
    if (!panels.has(tabId)) panels.set(tabId, new Set());
    panels.get(tabId).add(port);
    const page = pages.get(tabId);
    port.postMessage({ kind: page === undefined ? "page-gone" : "page-found" });
    page?.postMessage({ kind: "attach" });
  });
  port.onDisconnect.addListener(() => {
    if (tabId === null) return;
    const open = panels.get(tabId);
    open?.delete(port);
    if (open?.size === 0) {
      panels.delete(tabId);
      pages.get(tabId)?.postMessage({ kind: "detach" });
    }
  });
});
