// The page of vue.test.mjs (bundled by esbuild with Vue): components using
// every composable, rendered with h() (no template compiler needed).
// (node --test also imports every file under test/: at import it does nothing.)
import { createApp, defineComponent, h, ref } from "vue";
import { useConnectionState, useEvent, useRoom, useWarpSocket } from "../../dist/vue.js";

const State = defineComponent({
  setup() {
    const state = useConnectionState();
    return () => h("p", { id: "state" }, state.value);
  },
});

const Room = defineComponent({
  props: { name: { type: String, required: true } },
  setup(props) {
    const { joined, messages } = useRoom(props.name);
    return () =>
      h("ul", { id: `room-${props.name}`, "data-joined": String(joined.value) }, messages.value.map((m) => h("li", { key: m.id }, String(m.data.n))));
  },
});

const Ticks = defineComponent({
  setup() {
    const count = ref(0);
    useEvent("tick", () => count.value++);
    return () => h("p", { id: "ticks" }, String(count.value));
  },
});

const App = defineComponent({
  props: { url: { type: String, required: true } },
  setup(props) {
    const client = useWarpSocket(props.url, { backoff: { initial: 100, max: 200 } });
    globalThis.vueClient = client;
    const rooms = ref(2); // two components in room "feed"
    globalThis.setRooms = (n) => (rooms.value = n);
    return () => [
      h(State),
      rooms.value >= 1 ? h(Room, { name: "feed" }) : null,
      rooms.value >= 2 ? h("div", { id: "second" }, [h(Room, { name: "feed" })]) : null,
      h(Ticks),
    ];
  },
});

globalThis.startApp = (url) => {
  const app = createApp(App, { url });
  app.mount(document.body.appendChild(document.createElement("div")));
  globalThis.unmountApp = () => app.unmount();
};
