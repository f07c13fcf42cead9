// The browser bundle: one minified ES module with its source map, written to
// the Python package (warpsocket/static/) so that the server serves it at
// /warpsocket.js with nothing but `pip install`. `ws` (Node only) and
// `@msgpack/msgpack` and `@bufbuild/protobuf` (imported only when that codec is
// chosen) stay external.
import * as esbuild from "esbuild";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
export const STATIC_DIR = path.resolve(here, "../../warpsocket/static");

/** Build the bundle; `write: false` returns the files instead (the freshness test). */
export async function buildBundle({ write = true } = {}) {
  const result = await esbuild.build({
    entryPoints: [path.join(here, "src/index.ts")],
    outfile: path.join(STATIC_DIR, "warpsocket.js"),
    bundle: true,
    format: "esm",
    platform: "browser",
    target: ["es2020"],
    minify: true,
    sourcemap: "linked",
    sourcesContent: true,
    legalComments: "none",
    external: ["ws", "@msgpack/msgpack", "@bufbuild/protobuf", "@bufbuild/protobuf/wire"],
    banner: { js: "/* warpsocket client, MIT license. Source: clients/js in the WarpSocket repository. */" },
    write,
    logLevel: write ? "info" : "silent",
  });
  return result.outputFiles ?? [];
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  await buildBundle();
}
