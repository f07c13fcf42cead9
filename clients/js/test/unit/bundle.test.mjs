// The browser bundle committed under warpsocket/static/ is what the sources
// build to today (the server serves those files; a stale one would ship old code).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { buildBundle, STATIC_DIR } from "../../build.mjs";

test("the committed bundle and source map equal a fresh build", async () => {
  const files = await buildBundle({ write: false });
  assert.deepEqual(files.map((f) => path.basename(f.path)).sort(), ["warpsocket.js", "warpsocket.js.map"]);
  for (const file of files) {
    const committed = readFileSync(path.join(STATIC_DIR, path.basename(file.path)));
    assert.ok(
      Buffer.from(file.contents).equals(committed),
      `${path.basename(file.path)} is stale: run "npm run build" in clients/js and commit warpsocket/static/`,
    );
  }
});

test("the bundle is self-contained apart from the lazy imports of ws, @msgpack/msgpack and @bufbuild/protobuf/wire", () => {
  const bundle = readFileSync(path.join(STATIC_DIR, "warpsocket.js"), "utf8");
  const imports = [...bundle.matchAll(/import\(\s*["']([^"']+)["']\s*\)/g)].map((m) => m[1]).sort();
  assert.deepEqual(imports, ["@bufbuild/protobuf/wire", "@msgpack/msgpack", "ws"]);
  assert.doesNotMatch(bundle, /^import\s|[;}]import\s*[{*\w]/m); // no static imports
  assert.match(bundle, /export\{/);
});
