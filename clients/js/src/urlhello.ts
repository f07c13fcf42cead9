/**
 * The hello in the upgrade request (protocol.md 4.5): a hello without
 * credentials may travel in the WebSocket URL's query parameter `hello`, as
 * the JSON text a `warpsocket.v1.json` frame would carry (whatever the
 * connection's codec): its UTF-8 bytes in base64url without padding, which
 * needs no percent-encoding. The server then writes the 101 and the welcome
 * together: one round trip less.
 *
 * Never with credentials: proxies, load balancers and servers log URLs, so a
 * hello with `data.token`, `data.resume_token` or a `data.session` to resume
 * always goes as a frame.
 */
import { jsonCodec } from "./codec.js";
import type { Envelope } from "./envelope.js";
import { encodeBase64url } from "./transfer.js";

/** The query parameter that carries the hello. */
export const URL_HELLO_PARAM = "hello";

/** The longest hello JSON text (UTF-8 bytes, before percent-encoding) a URL may carry. */
export const URL_HELLO_MAX_BYTES = 2048;

const utf8 = new TextEncoder();

/** The query a client writes for a hello's JSON text: `hello=<base64url of its UTF-8 bytes, no padding>`. */
export function urlHelloQuery(json: string): string {
  return `${URL_HELLO_PARAM}=${encodeBase64url(utf8.encode(json))}`;
}

/**
 * The hello's JSON text when it may travel in a URL, else null: a `hello`
 * whose data has no `token` and no `resume_token` key (not even null), whose
 * `session` is absent or null, and whose text is at most 2,048 bytes.
 */
export function urlHelloText(hello: Envelope): string | null {
  if (hello.type !== "hello") return null;
  const data = hello.data;
  if (typeof data !== "object" || data === null || Array.isArray(data)) return null;
  const fields = data as Record<string, unknown>;
  if ("token" in fields || "resume_token" in fields) return null;
  if (fields.session !== undefined && fields.session !== null) return null;
  const json = jsonCodec.encode(hello) as string;
  return utf8Length(json) <= URL_HELLO_MAX_BYTES ? json : null;
}

/**
 * Whether the URL's query already has a non-empty `hello` parameter (the
 * application's own): then none is added. (An empty one counts as absent.)
 */
export function hasHelloParam(url: string): boolean {
  const query = splitUrl(url).query;
  if (query === null) return false;
  return query.split("&").some((pair) => {
    const [name, value] = pair.split("=", 2) as [string, string | undefined];
    if (value === undefined || value === "") return false;
    try {
      return decodeURIComponent(name.replace(/\+/g, " ")) === URL_HELLO_PARAM;
    } catch {
      return name === URL_HELLO_PARAM;
    }
  });
}

/**
 * `url` with `hello=<base64url json>` appended to its query: after `?`, or
 * after the parameters already there with `&` (they stay as they are), and
 * before any `#fragment`.
 */
export function withUrlHello(url: string, json: string): string {
  const { base, query, fragment } = splitUrl(url);
  const param = urlHelloQuery(json);
  let search: string;
  if (query === null || query === "") search = param;
  else if (query.endsWith("&")) search = query + param;
  else search = `${query}&${param}`;
  return `${base}?${search}${fragment}`;
}

function splitUrl(url: string): { base: string; query: string | null; fragment: string } {
  const hash = url.indexOf("#");
  const fragment = hash === -1 ? "" : url.slice(hash);
  const rest = hash === -1 ? url : url.slice(0, hash);
  const mark = rest.indexOf("?");
  if (mark === -1) return { base: rest, query: null, fragment };
  return { base: rest.slice(0, mark), query: rest.slice(mark + 1), fragment };
}

/** UTF-8 length of a string, counting each surrogate pair as 4 bytes. */
export function utf8Length(text: string): number {
  let bytes = text.length;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) continue;
    if (c < 0x800) bytes += 1;
    else if (c >= 0xd800 && c <= 0xdbff) {
      bytes += 2; // a pair: 2 UTF-16 units, 4 bytes
      i++;
    } else bytes += 2;
  }
  return bytes;
}
