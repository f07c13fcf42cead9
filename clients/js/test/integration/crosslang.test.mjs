// A Python client and a TypeScript client in one room see the same messages
// in the same order (both publishing, interleaved by the server).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import path from "node:path";
import { client, closeClients, HERE, PYTHON, REPO, Server, waitFor } from "../helpers.mjs";

let server;
before(async () => {
  server = await Server.start();
});
after(async () => {
  await closeClients();
  await server?.stop();
});

// The Python client speaks JSON, except with Protobuf, which both ends speak.
const PYTHON_CODEC = { json: "json", msgpack: "json", protobuf: "protobuf" };

for (const codec of ["json", "msgpack", "protobuf"]) {
  test(`Python (${PYTHON_CODEC[codec]}) and TypeScript (${codec}) clients agree on a room's history`, async () => {
    const room = `mixed-${codec}`;
    const count = 50;
    const args = [path.join(HERE, "py_peer.py"), server.url, room, String(count), `warpsocket.v1.${PYTHON_CODEC[codec]}`];
    const peer = spawn(PYTHON, args, {
      env: { ...process.env, PYTHONPATH: REPO },
      stdio: ["ignore", "pipe", "inherit"],
    });
    const lines = [];
    createInterface({ input: peer.stdout }).on("line", (line) => lines.push(line));
    const exited = new Promise((resolve) => peer.once("exit", resolve));
    try {
      await waitFor(() => lines.includes("ready"), { what: "the Python client" });
      const c = client(server.url, { codec });
      const seen = [];
      const joined = c.subscribe(room, (m) => seen.push([m.offset, m.event, m.data])); // joins with the hello
      await c.connect();
      await joined;
      await c.publish(room, "go", null, { ack: true });
      await Promise.all(
        Array.from({ length: count }, (_, i) => c.publish(room, "msg", { from: "ts", i }, { ack: true })),
      );
      await waitFor(() => seen.filter(([, event]) => event === "msg").length >= 2 * count, { what: "every message" });
      await waitFor(() => lines.length >= 2, { what: "the Python client's history" });
      assert.equal(await exited, 0);
      const theirs = JSON.parse(lines[1]);
      assert.deepEqual(theirs, seen);
      // Each side's own messages in the order it sent them.
      for (const from of ["py", "ts"]) {
        const mine = seen.filter(([, e, d]) => e === "msg" && d.from === from).map(([, , d]) => d.i);
        assert.deepEqual(mine, Array.from({ length: count }, (_, i) => i));
      }
      await c.close();
    } finally {
      peer.kill();
    }
  });
}
