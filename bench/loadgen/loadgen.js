'use strict';
// Load generator for bench/run.py. One process, one core (run.py pins it with
// taskset). It opens N connections speaking the server's protocol, waits until
// every one is ready, then starts the scenario and measures. The result is one
// line on stdout: "RESULT <json>".
//
//   node loadgen.js --server warpsocket|autobahn|websockets|socketio
//                   --scenario fanout|rtt|connect --port P [options]
//
// Two nodes (the cluster fan-out and round trips): --port2 Q puts every odd-numbered client on
// the second node (port Q), the even ones and the control client on the first;
// --server-pid2 and --redis-pid add that node's and Redis's CPU time to the
// measurement (server CPU = both nodes).
//
// Readiness: warpsocket = `welcome` received (hello with rooms ["bench"], in
// the upgrade request's URL unless --hello frame);
// autobahn / websockets = WebSocket open; socketio = socket.io `connect`
// (the server's connect handler has put the socket in the room by then).

const fs = require('fs');
const WebSocket = require('ws');
const { io } = require('socket.io-client');

const DEFAULTS = {
  host: '127.0.0.1',
  port: 0,
  port2: 0, // a second node: odd-numbered clients connect here (the control client never does)
  ports: '', // any number of nodes, comma-separated: client i on node i mod n (overrides port2)
  server: 'warpsocket',
  scenario: 'fanout',
  clients: 1000,
  count: 200, // fanout: broadcasts
  pace: 'burst', // fanout: burst (all in one server turn) | turn (one broadcast per event-loop turn)
  size: 100, // payload bytes (compact JSON of the data)
  duration: 5, // rtt: measured seconds
  warmup: 1, // rtt: seconds before measuring
  mode: 'ack', // rtt on warpsocket: ack (acked event) | call (RPC)
  hello: 'url', // warpsocket: url (in the upgrade request, protocol.md 4.5) | frame (first message)
  concurrency: 50, // handshakes in flight while opening connections
  settle: 2, // connect: seconds idle before reading the server's RSS
  stall: 15, // fanout: give up after this many seconds without a delivery
  'server-pid': 0,
  'server-pid2': 0, // the second node, whose CPU time counts as server CPU too
  'redis-pid': 0, // reported apart (redis_cpu_seconds)
  gate: 0, // 1: before measuring, print GATE on stderr and wait for SIGUSR1 (profiling)
  samples: '', // rtt: write every measured round trip here, one "client t0 t1" line (ms)
  rate: 0, // rtt: 0 = closed loop (one request in flight per client); R = open loop, R requests/s in all
  'max-in-flight': 64, // rtt --rate: a client with this many unanswered requests skips its next
};

function parseArgs(argv) {
  const opts = { ...DEFAULTS };
  for (let i = 0; i < argv.length; i += 1) {
    const key = argv[i].replace(/^--/, '');
    if (!(key in DEFAULTS)) throw new Error(`unknown option --${key}`);
    const value = argv[i + 1];
    i += 1;
    opts[key] = typeof DEFAULTS[key] === 'number' ? Number(value) : value;
  }
  return opts;
}

const opts = parseArgs(process.argv.slice(2));
const now = () => performance.timeOrigin + performance.now(); // wall clock, ms
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const WS_OPTIONS = { perMessageDeflate: false, handshakeTimeout: 60000 };

function padTo(size, base) {
  const skeleton = JSON.stringify({ ...base, pad: '' }).length;
  return { ...base, pad: 'x'.repeat(Math.max(0, size - skeleton)) };
}

// ------------------------------------------------------------ /proc readers

const CLK_TCK = 100;

function readRssKb(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const match = /VmRSS:\s+(\d+) kB/.exec(status);
  return match ? Number(match[1]) : null;
}

function readCpuSeconds(pid) {
  // Fields 14 and 15 of /proc/PID/stat (utime, stime), after the "(comm)".
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

// Busy and total jiffies of each core, from /proc/stat ("cpu0 user nice system
// idle iowait irq softirq steal ...").
function readCores() {
  const cores = {};
  for (const line of fs.readFileSync('/proc/stat', 'utf8').split('\n')) {
    const match = /^cpu(\d+)\s+(.*)$/.exec(line);
    if (!match) continue;
    const v = match[2].trim().split(/\s+/).map(Number);
    const total = v.slice(0, 8).reduce((a, b) => a + b, 0);
    cores[match[1]] = { busy: total - v[3] - v[4], total };
  }
  return cores;
}

// Server and load-generator CPU use over a measurement window, and how busy
// each core was (anything above the server's share on core 0 is someone else:
// kernel softirq work for the loopback traffic, or other processes).
function cpuWindow(pid, pid2 = 0, redisPid = 0) {
  const wall0 = now();
  const server0 = pid ? readCpuSeconds(pid) : 0;
  const second0 = pid2 ? readCpuSeconds(pid2) : 0;
  const redis0 = redisPid ? readCpuSeconds(redisPid) : 0;
  const self0 = process.cpuUsage();
  const cores0 = readCores();
  return () => {
    const wall = (now() - wall0) / 1000;
    const self = process.cpuUsage(self0);
    const cores1 = readCores();
    const busy = (core) => {
      const a = cores0[core];
      const b = cores1[core];
      return a && b && b.total > a.total ? (b.busy - a.busy) / (b.total - a.total) : null;
    };
    const firstSeconds = pid ? readCpuSeconds(pid) - server0 : null;
    const secondSeconds = pid2 ? readCpuSeconds(pid2) - second0 : null;
    const serverSeconds = pid ? firstSeconds + (secondSeconds || 0) : null;
    const usage = {
      server_cpu_seconds: serverSeconds,
      server_cpu: pid ? serverSeconds / wall : null,
      loadgen_cpu: (self.user + self.system) / 1e6 / wall,
      core0_busy: busy('0'),
      core1_busy: busy('1'),
      loadavg1: Number(fs.readFileSync('/proc/loadavg', 'utf8').split(' ')[0]),
    };
    if (pid2) {
      usage.node_a_cpu_seconds = firstSeconds;
      usage.node_b_cpu_seconds = secondSeconds;
    }
    if (redisPid) {
      usage.redis_cpu_seconds = readCpuSeconds(redisPid) - redis0;
      usage.redis_cpu = usage.redis_cpu_seconds / wall;
    }
    return usage;
  };
}

// Which node a client talks to: the control client and the even-numbered
// clients to the first (--port), the odd-numbered ones to the second (--port2).
const PORTS = opts.ports ? String(opts.ports).split(',').map(Number) : [];

function portFor(index, control) {
  if (PORTS.length && !control) return PORTS[index % PORTS.length];
  if (control || !opts.port2) return opts.port;
  return index % 2 === 0 ? opts.port : opts.port2;
}

// ------------------------------------------------------------ protocol adapters

// WarpSocket: JSON codec, hello first (in the URL, or as the first frame), answers heartbeats.
class WarpClient {
  constructor(index, { control = false, onTick = null, onLost = null, mode = 'ack' } = {}) {
    this.index = index;
    this.control = control;
    this.port = portFor(index, control);
    this.onTick = onTick;
    this.onLost = onLost;
    this.mode = mode;
    this.seq = 0;
    this.pending = null;
    this.inflight = new Map(); // open loop (rtt --rate): id -> done(ok)
    this.ws = null;
  }

  nextId() {
    this.seq += 1;
    return `${this.index}.${this.seq}`;
  }

  open() {
    return new Promise((resolve, reject) => {
      const rooms = this.control ? [] : ['bench'];
      const hello = JSON.stringify({ type: 'hello', id: 'h1', timestamp: Date.now(), data: { rooms } });
      const inUrl = opts.hello === 'url';
      const query = inUrl ? `?hello=${Buffer.from(hello).toString('base64url')}` : '';
      const ws = new WebSocket(`ws://${opts.host}:${this.port}/ws${query}`, ['warpsocket.v1.json'], WS_OPTIONS);
      this.ws = ws;
      let ready = false;
      ws.on('open', () => {
        if (!inUrl) ws.send(hello);
      });
      ws.on('message', (raw) => {
        const msg = JSON.parse(raw);
        switch (msg.type) {
          case 'event':
            if (this.onTick !== null && msg.stream === 'room:bench') this.onTick(msg.data, this);
            break;
          case 'welcome':
            ready = true;
            resolve(this);
            break;
          case 'ack':
          case 'result':
          case 'error':
            this.settle(msg);
            break;
          case 'heartbeat':
            if (msg.ref == null) {
              ws.send(JSON.stringify({ type: 'heartbeat', id: this.nextId(), timestamp: Date.now(), ref: msg.id }));
            }
            break;
          default:
            break;
        }
      });
      ws.on('error', (err) => { if (!ready) reject(err); });
      ws.on('close', (code) => {
        if (!ready) reject(new Error(`closed ${code} before welcome`));
        else if (this.onLost !== null) this.onLost(this, `closed ${code}`);
      });
    });
  }

  settle(msg) {
    const pending = this.pending;
    if (pending === null || pending.id !== msg.ref) {
      const done = this.inflight.get(msg.ref);
      if (done !== undefined) {
        this.inflight.delete(msg.ref);
        done(msg.type !== 'error');
      }
      return;
    }
    this.pending = null;
    if (msg.type === 'error') pending.reject(new Error(`error ${msg.code}: ${JSON.stringify(msg.data)}`));
    else pending.resolve(msg.data);
  }

  send(envelope) {
    return new Promise((resolve, reject) => {
      this.pending = { id: envelope.id, resolve, reject };
      this.ws.send(JSON.stringify(envelope));
    });
  }

  envelope(data) {
    const id = this.nextId();
    if (this.mode === 'call') return { type: 'call', id, timestamp: Date.now(), event: 'echo', data };
    return { type: 'event', id, timestamp: Date.now(), event: 'echo', data, ack: true };
  }

  request(data) {
    return this.send(this.envelope(data));
  }

  // Open loop: another request while earlier ones are in flight.
  fire(data, done) {
    const envelope = this.envelope(data);
    this.inflight.set(envelope.id, done);
    this.ws.send(JSON.stringify(envelope));
  }

  get inFlight() { return this.inflight.size + (this.pending === null ? 0 : 1); }

  fanout(count, size) {
    return this.send({ type: 'call', id: this.nextId(), timestamp: Date.now(), event: 'fanout', data: { count, size, burst: opts.pace === 'burst' } });
  }

  close() {
    this.onLost = null;
    if (this.ws) this.ws.terminate();
  }
}

// Autobahn and websockets servers: plain WebSocket, JSON text messages, echo.
class PlainClient {
  constructor(index, { control = false, onTick = null, onLost = null } = {}) {
    this.index = index;
    this.control = control;
    this.port = portFor(index, control);
    this.onTick = onTick;
    this.onLost = onLost;
    this.pending = null;
    this.inflight = []; // open loop (rtt --rate): done(ok) callbacks, answered in order
    this.ws = null;
  }

  open() {
    return new Promise((resolve, reject) => {
      const path = this.control ? '/control' : '/ws';
      const ws = new WebSocket(`ws://${opts.host}:${this.port}${path}`, WS_OPTIONS);
      this.ws = ws;
      let ready = false;
      ws.on('open', () => { ready = true; resolve(this); });
      ws.on('message', (raw) => {
        const msg = JSON.parse(raw);
        const pending = this.pending;
        if (pending !== null) {
          this.pending = null;
          pending.resolve(msg);
        } else if (this.inflight.length) {
          this.inflight.shift()(true);
        } else if (this.onTick !== null) {
          this.onTick(msg, this);
        }
      });
      ws.on('error', (err) => { if (!ready) reject(err); });
      ws.on('close', (code) => {
        if (!ready) reject(new Error(`closed ${code} before open`));
        else if (this.onLost !== null) this.onLost(this, `closed ${code}`);
      });
    });
  }

  send(message) {
    return new Promise((resolve, reject) => {
      this.pending = { resolve, reject };
      this.ws.send(JSON.stringify(message));
    });
  }

  request(data) { return this.send(data); }

  fire(data, done) {
    this.inflight.push(done);
    this.ws.send(JSON.stringify(data));
  }

  get inFlight() { return this.inflight.length + (this.pending === null ? 0 : 1); }

  fanout(count, size) { return this.send({ cmd: 'fanout', count, size, burst: opts.pace === 'burst' }); }

  close() {
    this.onLost = null;
    if (this.ws) this.ws.terminate();
  }
}

// python-socketio: socket.io-client over the WebSocket transport only.
class SioClient {
  constructor(index, { control = false, onTick = null, onLost = null } = {}) {
    this.index = index;
    this.control = control;
    this.port = portFor(index, control);
    this.onTick = onTick;
    this.onLost = onLost;
    this.socket = null;
  }

  open() {
    return new Promise((resolve, reject) => {
      const socket = io(`http://${opts.host}:${this.port}`, {
        transports: ['websocket'],
        forceNew: true,
        reconnection: false,
        perMessageDeflate: false,
        timeout: 60000,
        auth: this.control ? { control: true } : {},
      });
      this.socket = socket;
      socket.once('connect', () => {
        resolve(this);
        socket.once('disconnect', (reason) => { if (this.onLost !== null) this.onLost(this, reason); });
      });
      socket.once('connect_error', (err) => reject(err));
      if (this.onTick !== null) socket.on('tick', (data) => this.onTick(data, this));
    });
  }

  request(data) {
    return new Promise((resolve) => this.socket.emit('echo', data, resolve));
  }

  fire(data, done) {
    this.waiting = (this.waiting || 0) + 1;
    this.socket.emit('echo', data, () => { this.waiting -= 1; done(true); });
  }

  get inFlight() { return this.waiting || 0; }

  fanout(count, size) {
    return new Promise((resolve) => this.socket.emit('fanout', { count, size, burst: opts.pace === 'burst' }, resolve));
  }

  close() {
    this.onLost = null;
    if (this.socket) {
      this.socket.io.opts.reconnection = false;
      this.socket.disconnect();
    }
  }
}

const ADAPTERS = {
  warpsocket: WarpClient,
  autobahn: PlainClient,
  websockets: PlainClient,
  socketio: SioClient,
};

function makeClient(index, extra = {}) {
  const Adapter = ADAPTERS[opts.server];
  if (!Adapter) throw new Error(`unknown server ${opts.server}`);
  return new Adapter(index, { mode: opts.mode, ...extra });
}

// Opens n clients with at most `concurrency` handshakes in flight (so that the
// servers' listen backlogs, 50 for Twisted's default, are never overrun and
// the rate measured is the server's, not SYN retransmission timers').
async function openAll(n, extra = {}) {
  const clients = new Array(n);
  let next = 0;
  let failures = 0;
  let lastError = null;
  async function worker() {
    while (next < n) {
      const index = next;
      next += 1;
      for (let attempt = 0; ; attempt += 1) {
        const client = makeClient(index, extra);
        try {
          // eslint-disable-next-line no-await-in-loop
          clients[index] = await client.open();
          break;
        } catch (err) {
          failures += 1;
          lastError = String(err && err.message ? err.message : err);
          client.close();
          if (attempt >= 5) throw new Error(`client ${index}: ${lastError}`);
          // eslint-disable-next-line no-await-in-loop
          await sleep(200);
        }
      }
    }
  }
  const workers = [];
  for (let i = 0; i < Math.min(opts.concurrency, n); i += 1) workers.push(worker());
  await Promise.all(workers);
  return { clients, failures, lastError };
}

// run.py --profile attaches py-spy to the server here, so that the profile
// covers the measured phase only (not the connection set-up before it).
// It stops the profiler at the second gate ("DONE"), when the measurement ends.
async function gate(word = 'GATE') {
  if (!opts.gate) return;
  const released = new Promise((resolve) => process.once('SIGUSR1', resolve));
  const alive = setInterval(() => {}, 1000); // a signal listener alone keeps no loop alive
  process.stderr.write(`${word}\n`);
  await released;
  clearInterval(alive);
}

function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank];
}

// ------------------------------------------------------------ scenarios

async function fanout() {
  const expected = opts.clients * opts.count;
  const latencies = new Float64Array(expected);
  let delivered = 0;
  const byNode = [0, 0]; // deliveries to clients of the first / second node
  let firstSend = Infinity;
  let firstDelivery = 0;
  let lastDelivery = 0;
  let finish = null;
  let outcomeSet = null;
  const finished = new Promise((resolve) => { finish = resolve; });
  const end = (outcome) => { if (outcomeSet === null) { outcomeSet = outcome; finish(outcome); } };
  const onTick = (data, client) => {
    const t = now();
    if (delivered < expected) latencies[delivered] = t - data.t;
    if (delivered === 0) firstDelivery = t;
    delivered += 1;
    byNode[client.port === opts.port ? 0 : 1] += 1;
    lastDelivery = t;
    if (data.seq === 0 && data.t < firstSend) firstSend = data.t;
    if (delivered === expected) end('complete');
  };
  // A node that dies closes its clients' connections: stop at once, and say so.
  const onLost = (client, why) => {
    end(`failed: ${client.control ? 'the control client' : `client ${client.index}`} `
      + `lost its connection to port ${client.port} (${why})`);
  };
  const opened = await openAll(opts.clients, { onTick, onLost });
  const control = await makeClient(-1, { control: true, onLost }).open();
  await sleep(500); // let the last welcomes' bookkeeping settle
  await gate();

  const cpu = cpuWindow(opts['server-pid'], opts['server-pid2'], opts['redis-pid']);
  const requested = now();
  let serverDone = null;
  let serverError = null;
  // The server answers once every broadcast was handed over (stored, for a
  // cluster); an error answer (e.g. Redis refused a publish) ends the run.
  const answered = control.fanout(opts.count, opts.size).then(
    (reply) => {
      serverDone = now();
      if (reply && reply.error) {
        serverError = String(reply.error);
        end(`failed: the server could not broadcast: ${serverError}`);
      }
    },
    (err) => {
      serverError = String(err && err.message ? err.message : err);
      end(`failed: the fanout command failed: ${serverError}`);
    },
  );
  // Stall watch, per node: with two nodes, the clients of one may get nothing
  // (its Redis subscription is dead) while the other's still trickle in.
  const nodes = opts.port2 ? [0, 1] : [0];
  const expectedByNode = opts.port2
    ? [Math.ceil(opts.clients / 2) * opts.count, Math.floor(opts.clients / 2) * opts.count]
    : [expected];
  const seen = [-1, -1];
  const quietSince = [now(), now()];
  const watchdog = setInterval(() => {
    for (const n of nodes) {
      if (byNode[n] !== seen[n] || byNode[n] >= expectedByNode[n]) {
        seen[n] = byNode[n];
        quietSince[n] = now();
      } else if (now() - quietSince[n] > opts.stall * 1000) {
        if (!opts.port2) { end('stalled'); return; }
        end(`failed: the clients of node ${n === 0 ? 'A' : 'B'} got no delivery for ${opts.stall} s `
          + `(${byNode[n]} of ${expectedByNode[n]}; node A ${byNode[0]}, node B ${byNode[1]})`);
        return;
      }
    }
  }, 250);
  const outcome = await finished;
  clearInterval(watchdog);
  for (const client of [...opened.clients, control]) if (client) client.onLost = null;
  const usage = cpu();
  await gate('DONE');
  await Promise.race([answered, sleep(5000)]); // the server's "sent" answer, for server_send_seconds
  const start = Number.isFinite(firstSend) ? firstSend : requested;
  const seconds = (lastDelivery - start) / 1000;
  const sorted = latencies.slice(0, Math.min(delivered, expected)).sort();
  return {
    outcome,
    clients: opts.clients,
    broadcasts: opts.count,
    payload_bytes: opts.size,
    expected,
    delivered,
    seconds,
    deliveries_per_s: delivered / seconds,
    server_send_seconds: serverDone === null ? null : (serverDone - start) / 1000,
    first_delivery_ms: delivered ? firstDelivery - start : null, // first send -> first delivery
    delivery_latency_ms_p50: percentile(sorted, 50),
    delivery_latency_ms_p99: percentile(sorted, 99),
    connect_failures: opened.failures,
    ...(opts.port2 ? { delivered_node_a: byNode[0], delivered_node_b: byNode[1] } : {}),
    server_error: serverError,
    ...usage,
  };
}

async function rtt() {
  const opened = await openAll(opts.clients);
  await sleep(500);
  await gate();
  if (opts.rate > 0) return rttOpenLoop(opened);
  const begin = now() + opts.warmup * 1000;
  const end = begin + opts.duration * 1000;
  const samples = [];
  const raw = opts.samples ? [] : null;
  let errors = 0;
  let cpu = null;
  setTimeout(() => {
    cpu = cpuWindow(opts['server-pid'], opts['server-pid2'], opts['redis-pid']);
  }, Math.max(0, begin - now()));
  let usage = null;
  setTimeout(() => { usage = cpu ? cpu() : null; }, Math.max(0, end - now()));

  async function loop(client) {
    const data = padTo(opts.size, { seq: client.index, t: 0 });
    for (;;) {
      const t0 = now();
      try {
        // eslint-disable-next-line no-await-in-loop
        await client.request(data);
      } catch (err) {
        errors += 1;
      }
      const t1 = now();
      if (t1 >= end) return;
      if (t0 >= begin) {
        samples.push(t1 - t0);
        if (raw !== null) raw.push(`${client.index} ${t0.toFixed(3)} ${t1.toFixed(3)}`);
      }
    }
  }
  await Promise.all(opened.clients.map(loop));
  while (usage === null) await sleep(10); // eslint-disable-line no-await-in-loop
  await gate('DONE');
  return rttResult(samples, raw, errors, opened, usage);
}

// The rtt scenario's result, closed or open loop (``extra``: the open loop's own
// figures); every measured round trip goes to --samples first, if asked for.
function rttResult(samples, raw, errors, opened, usage, extra = {}) {
  if (raw !== null) fs.writeFileSync(opts.samples, `${raw.join('\n')}\n`);
  const sorted = Float64Array.from(samples).sort();
  return {
    clients: opts.clients,
    mode: opts.server === 'warpsocket' ? opts.mode : (opts.server === 'socketio' ? 'emit+ack' : 'echo'),
    seconds: opts.duration,
    round_trips: samples.length,
    round_trips_per_s: samples.length / opts.duration,
    latency_ms_p50: percentile(sorted, 50),
    latency_ms_p99: percentile(sorted, 99),
    latency_ms_max: sorted.length ? sorted[sorted.length - 1] : null,
    ...extra,
    errors,
    connect_failures: opened.failures,
    ...usage,
  };
}

// Open loop (--rate R): requests leave on a fixed schedule, R a second in all,
// whether or not the earlier ones were answered; client i sends every
// clients / R seconds, the clients' schedules evenly staggered. Unlike the
// closed loop, the load offered is the same for every server, so latencies
// compare at equal load (a faster server has more idle time, not more
// requests). Each round trip is timed from when its request was written; how
// late the load generator wrote it against the schedule is reported apart
// (send_lag_ms_p99: if it grows, the load generator, not the server, fell
// behind). The schedule is kept by polling the clock between I/O callbacks
// (setImmediate), so the load generator's core always reads busy here.
async function rttOpenLoop(opened) {
  const clients = opened.clients;
  const start = now();
  const begin = start + opts.warmup * 1000;
  const end = begin + opts.duration * 1000;
  const interval = (1000 * clients.length) / opts.rate; // ms between one client's requests
  const due = clients.map((_, i) => start + (interval * i) / clients.length);
  const data = clients.map((client) => padTo(opts.size, { seq: client.index, t: 0 }));
  const samples = [];
  const lags = [];
  const raw = opts.samples ? [] : null;
  let errors = 0;
  let skipped = 0;
  let outstanding = 0;
  let cpu = null;
  let usage = null;
  function send(index, when) {
    const client = clients[index];
    if (client.inFlight >= opts['max-in-flight']) {
      if (when >= begin) skipped += 1;
      return;
    }
    const t0 = now();
    const measured = when >= begin;
    if (measured) lags.push(t0 - when);
    outstanding += 1;
    client.fire(data[index], (ok) => {
      const t1 = now();
      outstanding -= 1;
      if (!measured) return;
      if (!ok) { errors += 1; return; }
      samples.push(t1 - t0);
      if (raw !== null) raw.push(`${client.index} ${t0.toFixed(3)} ${t1.toFixed(3)}`);
    });
  }
  await new Promise((resolve) => {
    function tick() {
      const t = now();
      if (cpu === null && t >= begin) cpu = cpuWindow(opts['server-pid'], opts['server-pid2'], opts['redis-pid']);
      if (t >= end) {
        usage = cpu ? cpu() : null;
        resolve();
        return;
      }
      for (let i = 0; i < clients.length; i += 1) {
        while (due[i] <= t && due[i] < end) {
          const when = due[i];
          due[i] += interval;
          send(i, when);
        }
      }
      setImmediate(tick);
    }
    tick();
  });
  // The answers still on their way (sent before the end): up to 5 s.
  const drained = now() + 5000;
  while (outstanding > 0 && now() < drained) await sleep(5); // eslint-disable-line no-await-in-loop
  await gate('DONE');
  return rttResult(samples, raw, errors, opened, usage, {
    loop: 'open',
    offered_per_s: opts.rate,
    send_lag_ms_p99: percentile(Float64Array.from(lags).sort(), 99),
    skipped,
    unanswered: outstanding,
  });
}

async function connect() {
  const pid = opts['server-pid'];
  const rssBefore = pid ? readRssKb(pid) : null;
  await gate();
  const cpu = cpuWindow(pid);
  const t0 = now();
  const opened = await openAll(opts.clients);
  const t1 = now();
  const usage = cpu();
  await gate('DONE');
  await sleep(opts.settle * 1000);
  const rssAfter = pid ? readRssKb(pid) : null;
  const seconds = (t1 - t0) / 1000;
  return {
    connections: opts.clients,
    concurrency: opts.concurrency,
    seconds,
    connections_per_s: opts.clients / seconds,
    rss_before_kb: rssBefore,
    rss_after_kb: rssAfter,
    rss_per_connection_kb: rssBefore === null ? null : (rssAfter - rssBefore) / opts.clients,
    connect_failures: opened.failures,
    last_connect_error: opened.lastError,
    ...usage,
  };
}

const SCENARIOS = { fanout, rtt, connect };

async function main() {
  const scenario = SCENARIOS[opts.scenario];
  if (!scenario) throw new Error(`unknown scenario ${opts.scenario}`);
  const result = await scenario();
  process.stdout.write(`RESULT ${JSON.stringify({ server: opts.server, scenario: opts.scenario, ...result })}\n`);
  // Exiting closes every socket at once; the server is stopped next.
  process.exit(0);
}

main().catch((err) => {
  process.stderr.write(`loadgen failed: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
