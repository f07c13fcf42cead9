// Test harness: a real `twistd warpsocket` on a free port, a TCP proxy that
// cuts connections, and small waiting helpers. No mocks of the server.
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync, mkdtempSync, writeFileSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";
import { WarpSocketClient } from "../dist/index.js";

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, "../../..");
const VENV = process.env.WARPSOCKET_VENV ?? path.join(REPO, ".venv");
export const PYTHON = path.join(VENV, "bin/python");
const TWISTD = path.join(VENV, "bin/twistd");

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Poll `predicate` until true (fails the test after `timeout` ms). */
export async function waitFor(predicate, { timeout = 20000, interval = 20, what = "condition" } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(interval);
  }
}

// Servers still running when node exits (a failed or killed run) go with it.
const running = new Set();
process.on("exit", () => {
  for (const proc of running) proc.kill("SIGKILL");
});

/** A `twistd -n warpsocket` process; `stop()` sends SIGTERM (a graceful stop: 4500). */
export class Server {
  constructor(port, args = [], proc = null, defaults = true) {
    this.port = port;
    this.args = args;
    this.defaults = defaults;
    this.proc = proc;
    this.output = "";
  }

  get url() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  /** `defaults: false`: without the tests' `--open-rooms --app server_app:setup`. */
  static async start(args = [], port = null, { defaults = true } = {}) {
    if (!existsSync(TWISTD)) {
      throw new Error(`${TWISTD} is missing: create the venv (pip install -e '.[test]') or set WARPSOCKET_VENV`);
    }
    const server = new Server(port ?? (await freePort()), args, null, defaults);
    await server.launch();
    return server;
  }

  async launch() {
    const argv = [
      "-n", "--pidfile=", "warpsocket",
      "--endpoint", `tcp:${this.port}:interface=127.0.0.1`,
      ...(this.defaults ? ["--open-rooms", "--app", "server_app:setup"] : []),
      ...this.args,
    ];
    const env = { ...process.env, PYTHONPATH: [HERE, process.env.PYTHONPATH].filter(Boolean).join(path.delimiter) };
    const cwd = mkdtempSync(path.join(os.tmpdir(), "warpsocket-node-"));
    this.proc = spawn(TWISTD, argv, { cwd, env, stdio: ["ignore", "pipe", "pipe"] });
    const proc = this.proc;
    running.add(proc);
    this.exited = new Promise((resolve) =>
      proc.once("exit", (code, signal) => {
        running.delete(proc);
        resolve({ code, signal });
      }),
    );
    const keep = (chunk) => {
      this.output = (this.output + chunk.toString()).slice(-20000);
    };
    this.proc.stdout.on("data", keep);
    this.proc.stderr.on("data", keep);
    let exited = false;
    this.exited.then(() => (exited = true));
    await waitFor(
      async () => {
        if (exited) throw new Error(`twistd exited:\n${this.output}`);
        try {
          const response = await fetch(`http://127.0.0.1:${this.port}/healthz`);
          return response.status === 200;
        } catch {
          return false;
        }
      },
      { timeout: 30000, interval: 100, what: "twistd to serve /healthz" },
    );
  }

  /** SIGTERM: the server closes every client with 4500 and a retry hint. */
  async stop() {
    if (this.proc === null) return;
    const proc = this.proc;
    this.proc = null;
    if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGTERM");
    const timer = setTimeout(() => proc.kill("SIGKILL"), 15000);
    await this.exited;
    clearTimeout(timer);
  }

  /** Stop and start again on the same port: in-memory history is gone. */
  async restart() {
    await this.stop();
    await this.launch();
  }
}

/** A TCP proxy in front of a server that can cut (reset) every connection through it. */
export class CutProxy {
  constructor(targetPort) {
    this.targetPort = targetPort;
    this.pairs = new Set();
    this.cuts = 0;
    this.server = net.createServer((client) => this.accept(client));
  }

  static async start(targetPort) {
    const proxy = new CutProxy(targetPort);
    await new Promise((resolve) => proxy.server.listen(0, "127.0.0.1", resolve));
    proxy.port = proxy.server.address().port;
    return proxy;
  }

  get url() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  accept(client) {
    const backend = net.connect(this.targetPort, "127.0.0.1");
    const pair = { client, backend };
    this.pairs.add(pair);
    client.pipe(backend);
    backend.pipe(client);
    const end = () => {
      this.pairs.delete(pair);
      client.destroy();
      backend.destroy();
    };
    client.on("error", end).on("close", end);
    backend.on("error", end).on("close", end);
  }

  /** Reset (RST) every proxied connection, as a network failure would. */
  cutAll() {
    for (const pair of [...this.pairs]) {
      this.pairs.delete(pair);
      this.cuts++;
      pair.client.resetAndDestroy();
      pair.backend.resetAndDestroy();
    }
  }

  async close() {
    this.cutAll();
    await new Promise((resolve) => this.server.close(resolve));
  }
}

const clients = new Set();

/** Close every client the tests made (a failed test must not keep node alive). */
export async function closeClients() {
  await Promise.all([...clients].map((c) => c.close()));
  clients.clear();
}

/** A client for the tests: Node's `ws`, fast reconnects unless told otherwise. */
export function client(url, options = {}) {
  const made = new WarpSocketClient(url, {
    WebSocket,
    backoff: { initial: 20, max: 200, jitter: 0.5 },
    retryInitial: 500,
    ...options,
  });
  clients.add(made);
  return made;
}

/** An HS256 JWT (the server's --jwt-secret). */
export function jwt(secret, claims) {
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const body = `${encode({ alg: "HS256", typ: "JWT" })}.${encode(claims)}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

export function secretFile(secret) {
  const dir = mkdtempSync(path.join(os.tmpdir(), "warpsocket-jwt-"));
  const file = path.join(dir, "secret");
  writeFileSync(file, secret);
  return file;
}
