#!/usr/bin/env node
// Load client for scripts/bench-peers.sh: drives a Tessera gateway or the
// Colyseus peer room with the same shape, Moves at --rate Hz from seeded
// positions (walk.js).
//
//   node load.js --system tessera|colyseus --addr HOST:PORT --role bulk|probe
//                --first I --count K [options]
//
// bulk: joins K players (first I), moves them, writes its pid to
//   --ready-file once all have joined, samples the bytes received every
//   200 ms; on SIGUSR2 prints one JSON line with the samples and exits (by
//   itself after --max-seconds at most).
// probe: joins K players, moves them, waits --warmup s, then for --seconds s
//   measures input->own-state latency (time from sending Move seq s to the
//   arrival of the first state whose own entity shows last_input_seq >= s),
//   bytes received, the CPU of --cpu-pids and of itself and --bulk-pid (from
//   /proc/<pid>/stat) and of the whole box (/proc/stat); waits --tail s for
//   late states, prints one JSON line (with the window's wall-clock start and
//   end, to read the bulk's samples with) and exits.
"use strict";

const fs = require("fs");
const path = require("path");
const { monitorEventLoopDelay } = require("perf_hooks");
const { Walker } = require("./walk");

const OPTS = {
  system: "",
  addr: "",
  role: "",
  first: 0,
  count: 0,
  seed: 1,
  rate: 10,
  speed: 20,
  "world-min": -800,
  "world-max": 800,
  warmup: 5,
  seconds: 15,
  tail: 1,
  concurrency: 32,
  "join-timeout": 20,
  "max-seconds": 300,
  "ready-file": "",
  "bulk-pid": 0,
  "cpu-pids": "",
  "clk-tck": 100,
  schemas: path.resolve(__dirname, "..", "..", "..", "schemas"),
};
const NUMERIC = new Set([
  "first", "count", "seed", "rate", "speed", "world-min", "world-max", "warmup", "seconds", "tail", "concurrency",
  "join-timeout", "max-seconds", "bulk-pid", "clk-tck",
]);

function die(msg) {
  process.stderr.write(`load: ${msg}\n`);
  process.exit(1);
}

function usage() {
  const head = fs.readFileSync(__filename, "utf8").split("\n").slice(1);
  const doc = head.slice(0, head.findIndex((l) => !l.startsWith("//"))).map((l) => l.replace(/^\/\/ ?/, ""));
  const defaults = Object.entries(OPTS).map(([k, v]) => `  --${k} (default ${JSON.stringify(v)})`);
  process.stdout.write(`${doc.join("\n")}\n\noptions:\n${defaults.join("\n")}\n`);
}

function parseArgs(argv) {
  if (argv.includes("--help") || argv.includes("-h")) {
    usage();
    process.exit(0);
  }
  const o = Object.assign({}, OPTS);
  for (let i = 0; i < argv.length; i++) {
    let a = argv[i];
    if (!a.startsWith("--")) die(`unexpected argument '${a}'`);
    a = a.slice(2);
    let v;
    const eq = a.indexOf("=");
    if (eq >= 0) {
      v = a.slice(eq + 1);
      a = a.slice(0, eq);
    } else {
      if (i + 1 >= argv.length) die(`--${a} needs a value`);
      v = argv[++i];
    }
    if (!(a in OPTS)) die(`unknown option --${a}`);
    if (NUMERIC.has(a)) {
      const n = Number(v);
      const signed = a === "world-min" || a === "world-max";
      if (!Number.isFinite(n) || (n < 0 && !signed)) die(`--${a} wants a number${signed ? "" : " >= 0"}, got '${v}'`);
      o[a] = n;
    } else {
      o[a] = v;
    }
  }
  if (o.system !== "tessera" && o.system !== "colyseus") die("--system must be tessera or colyseus");
  if (o.role !== "bulk" && o.role !== "probe") die("--role must be bulk or probe");
  const m = /^([^:]+):(\d+)$/.exec(o.addr);
  if (m === null) die("--addr wants HOST:PORT");
  o.host = m[1];
  o.port = Number(m[2]);
  if (o.count < 1 || o.count > 100000) die("--count must be 1..100000");
  if (o.rate <= 0 || o.rate > 1000) die("--rate must be in (0, 1000]");
  if (o["world-min"] >= o["world-max"]) die("--world-min must be below --world-max");
  return o;
}

const opts = parseArgs(process.argv.slice(2));
const probe = opts.role === "probe";
const periodMs = 1000 / opts.rate;
const ClientClass =
  opts.system === "tessera" ? require("./tessera").TesseraClient : require("./colyseus-room").ColyseusClient;

const players = [];
for (let k = 0; k < opts.count; k++) {
  const index = opts.first + k;
  players.push({
    index,
    walker: new Walker(index, opts.seed, { min: opts["world-min"], max: opts["world-max"] }, opts.speed, periodMs),
    client: null,
    nextMs: 0,
    pending: new Map(), // seq -> send time, moves sent inside the window
  });
}

// Bounded no matter what.
setTimeout(() => die(`still running after --max-seconds ${opts["max-seconds"]}`), opts["max-seconds"] * 1000).unref();

// Joins every player, JOIN_TRIES attempts each (a refused or dropped
// connection on a busy box is retried after a pause, as a game client would).
const JOIN_TRIES = 3;
let joinRetries = 0;

async function joinAll() {
  let next = 0;
  let failed = null;
  const worker = async () => {
    while (next < players.length && failed === null) {
      const p = players[next++];
      for (let attempt = 1; p.client === null; attempt++) {
        const c = new ClientClass({ probe, schemasDir: opts.schemas });
        try {
          await c.connect(opts.host, opts.port, p.walker.x, p.walker.y, `p${p.index}`, opts["join-timeout"] * 1000);
          p.client = c;
        } catch (e) {
          if (attempt >= JOIN_TRIES) {
            failed = `player ${p.index}: ${e.message} (${attempt} tries)`;
            return;
          }
          joinRetries++;
          await sleep(500 * attempt);
        }
      }
    }
  };
  const workers = [];
  for (let i = 0; i < Math.min(opts.concurrency || 1, players.length); i++) workers.push(worker());
  await Promise.all(workers);
  if (failed !== null) throw new Error(failed);
}

// ---- moves ------------------------------------------------------------------

let measuring = false; // inside the measured window
let latencies = [];
let sent = 0;
let lateMoves = 0;

function startMoving() {
  const t0 = performance.now();
  for (const p of players) {
    p.nextMs = t0 + p.walker.phaseMs;
    if (probe) {
      p.client.onOwnSeq = (seq, recvMs) => {
        for (const [s, t] of p.pending) {
          if (s > seq) break;
          latencies.push(recvMs - t);
          p.pending.delete(s);
        }
      };
    }
  }
  const tick = () => {
    const now = performance.now();
    for (const p of players) {
      if (now < p.nextMs || p.client.closed) continue;
      const [dx, dy] = p.walker.step(now);
      const t = performance.now();
      const seq = p.client.move(dx, dy);
      if (seq !== 0 && probe && measuring) {
        p.pending.set(seq, t);
        sent++;
      }
      p.nextMs += periodMs;
      if (p.nextMs < now) {
        // fell more than a period behind: skip, do not burst
        if (measuring) lateMoves++;
        p.nextMs = now + periodMs;
      }
    }
  };
  return setInterval(tick, 2);
}

// ---- CPU ----------------------------------------------------------------------

function cpuTicks(pid) {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
    return Number(f[11]) + Number(f[12]); // utime + stime (fields 14, 15)
  } catch {
    return NaN;
  }
}

function cpuPids() {
  return opts["cpu-pids"] === "" ? [] : opts["cpu-pids"].split(",").map(Number);
}

function sumTicks(pids) {
  return pids.map(cpuTicks);
}

function bytesNow() {
  let b = 0;
  for (const p of players) b += p.client.bytes;
  return b;
}

function deltasNow() {
  let d = 0;
  for (const p of players) d += p.client.deltas;
  return d;
}

function errorsNow() {
  let e = 0;
  let text = "";
  for (const p of players) {
    e += p.client.errors;
    if (p.client.errorText) text = p.client.errorText;
  }
  return [e, text];
}

function closedNow() {
  return players.filter((p) => p.client.closed).length;
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

function pct(sorted, q) {
  if (sorted.length === 0) return null;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return Math.round(sorted[i] * 10) / 10;
}

function closeAll() {
  for (const p of players) if (p.client) p.client.close();
}

// ---- roles ----------------------------------------------------------------------

// Every SAMPLE_MS: [wall ms, bytes, Deltas, late Moves] so far, so the
// bytes of the probes' window can be read off afterwards however late this
// process's event loop runs.
const SAMPLE_MS = 200;

async function runBulk() {
  await joinAll();
  const timer = startMoving();
  const lag = monitorEventLoopDelay({ resolution: 10 });
  lag.enable();
  const samples = [];
  const maxSamples = Math.ceil((opts["max-seconds"] * 1000) / SAMPLE_MS) + 10;
  const sample = () => {
    if (samples.length < maxSamples) samples.push([Date.now(), bytesNow(), deltasNow(), lateMoves]);
  };
  sample();
  const sampler = setInterval(sample, SAMPLE_MS);
  const done = new Promise((resolve) => process.on("SIGUSR2", resolve));
  if (opts["ready-file"]) fs.writeFileSync(opts["ready-file"], `${process.pid}\n`);
  await done;
  sample();
  clearInterval(sampler);
  clearInterval(timer);
  lag.disable();
  const [errors, errorText] = errorsNow();
  const out = {
    role: "bulk",
    system: opts.system,
    clients: players.length,
    samples,
    loop_lag_p99_ms: Math.round(lag.percentile(99) / 1e5) / 10,
    loop_lag_max_ms: Math.round(lag.max / 1e5) / 10,
    closed: closedNow(),
    join_retries: joinRetries,
    errors,
    error_text: errorText,
  };
  process.stdout.write(JSON.stringify(out) + "\n");
  closeAll();
  setTimeout(() => process.exit(0), 200);
}

// Busy ticks of the whole box (all CPUs) from /proc/stat.
function boxTicks() {
  try {
    const f = fs.readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1).map(Number);
    const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
    return total - f[3] - f[4]; // minus idle and iowait
  } catch {
    return NaN;
  }
}

async function runProbe() {
  await joinAll();
  const timer = startMoving();
  await sleep(opts.warmup * 1000);
  const pids = cpuPids();
  const selfPids = [process.pid].concat(opts["bulk-pid"] > 0 ? [opts["bulk-pid"]] : []);
  const lag = monitorEventLoopDelay({ resolution: 10 });
  lag.enable();
  const cpu0 = sumTicks(pids);
  const self0 = sumTicks(selfPids);
  const box0 = boxTicks();
  const start = { ms: performance.now(), wall: Date.now(), bytes: bytesNow(), deltas: deltasNow() };
  measuring = true;
  await sleep(opts.seconds * 1000);
  measuring = false;
  const end = { ms: performance.now(), wall: Date.now(), bytes: bytesNow(), deltas: deltasNow() };
  const cpu1 = sumTicks(pids);
  const self1 = sumTicks(selfPids);
  const box1 = boxTicks();
  lag.disable();
  await sleep(opts.tail * 1000);
  clearInterval(timer);
  let missing = 0;
  for (const p of players) missing += p.pending.size;
  const sorted = latencies.slice().sort((a, b) => a - b);
  const windowS = (end.ms - start.ms) / 1000;
  const hz = opts["clk-tck"];
  const cores = (a, b) => a.map((v, i) => Math.round(((b[i] - v) / hz / windowS) * 1000) / 1000);
  const [errors, errorText] = errorsNow();
  const out = {
    role: "probe",
    system: opts.system,
    clients: players.length,
    window_s: windowS,
    window_start_wall_ms: start.wall,
    window_end_wall_ms: end.wall,
    sent,
    acked: latencies.length,
    missing,
    p50_ms: pct(sorted, 0.5),
    p99_ms: pct(sorted, 0.99),
    p999_ms: pct(sorted, 0.999),
    max_ms: sorted.length ? Math.round(sorted[sorted.length - 1] * 10) / 10 : null,
    bytes: end.bytes - start.bytes,
    deltas: end.deltas - start.deltas,
    cpu_pids: pids,
    cpu_cores: cores(cpu0, cpu1),
    client_cpu_cores: cores(self0, self1),
    box_cpu_cores: cores([box0], [box1])[0],
    loop_lag_p99_ms: Math.round(lag.percentile(99) / 1e5) / 10,
    loop_lag_max_ms: Math.round(lag.max / 1e5) / 10,
    closed: closedNow(),
    join_retries: joinRetries,
    errors,
    error_text: errorText,
    late_moves: lateMoves,
  };
  process.stdout.write(JSON.stringify(out) + "\n");
  closeAll();
  setTimeout(() => process.exit(0), 200);
}

(probe ? runProbe() : runBulk()).catch((e) => die(e.message));
