// The DevTools page: adds the "WarpSocket" panel for the inspected tab.
if (globalThis.chrome?.devtools?.panels !== undefined) {
  chrome.devtools.panels.create("WarpSocket", "", "panel.html");
}
