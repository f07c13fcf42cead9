// The page of react.test.mjs (bundled by esbuild with React): components
// using every hook, under StrictMode (effects run, clean up and run again).
// (node --test also imports every file under test/: at import it does nothing.)
import { createElement as h, StrictMode, useState } from "react";
import { createRoot } from "react-dom/client";
import { useConnectionState, useEvent, useRoom, useWarpSocket, WarpSocketProvider } from "../../dist/react.js";

function State() {
  return h("p", { id: "state" }, useConnectionState());
}

function Room({ name }) {
  const { joined, messages } = useRoom(name);
  return h("ul", { id: `room-${name}`, "data-joined": String(joined) }, messages.map((m) => h("li", { key: m.id }, String(m.data.n))));
}

function Ticks() {
  const [count, setCount] = useState(0);
  useEvent("tick", () => setCount((c) => c + 1));
  return h("p", { id: "ticks" }, String(count));
}

function App({ url }) {
  const client = useWarpSocket(url, { backoff: { initial: 100, max: 200 } });
  globalThis.reactClient = client;
  const [rooms, setRooms] = useState(2); // two components in room "feed"
  globalThis.setRooms = setRooms;
  return h(
    WarpSocketProvider,
    { client },
    h(State),
    rooms >= 1 ? h(Room, { name: "feed" }) : null,
    rooms >= 2 ? h("div", { id: "second" }, h(Room, { name: "feed" })) : null,
    h(Ticks),
  );
}

globalThis.startApp = (url) => {
  const root = createRoot(document.body.appendChild(document.createElement("div")));
  root.render(h(StrictMode, null, h(App, { url })));
  globalThis.unmountApp = () => root.unmount();
};
