#!/usr/bin/env node
// Formats scripts/bench-peers.sh results: the JSON lines load.js printed,
// kept as DIR/<N>-<system>-{probe,bulk}.json.
//
//   node report.js header
//   node report.js row DIR N      one table row and the verdict for N
//   node report.js details DIR N...
//
// Server CPU of Tessera is gateway + workers + nats-server: the first four of
// the probe's cpu_pids (the orchestrator and redis-server follow, shown in
// the details only). Colyseus's is its one node process.
"use strict";

const fs = require("fs");
const path = require("path");

const TESSERA_TARGET_PIDS = 4;

function read(dir, n, system, role) {
  try {
    return JSON.parse(fs.readFileSync(path.join(dir, `${n}-${system}-${role}.json`), "utf8").trim().split("\n").pop());
  } catch {
    return null;
  }
}

// Column k of the bulk's cumulative samples [wall ms, bytes, Deltas, late
// Moves] at wall time t, interpolated linearly (clamped to the samples).
function at(samples, t, k) {
  if (samples.length === 0) return 0;
  if (t <= samples[0][0]) return samples[0][k];
  for (let i = 1; i < samples.length; i++) {
    const [t1] = samples[i];
    if (t <= t1) {
      const [t0] = samples[i - 1];
      const f = t1 > t0 ? (t - t0) / (t1 - t0) : 1;
      return samples[i - 1][k] + f * (samples[i][k] - samples[i - 1][k]);
    }
  }
  return samples[samples.length - 1][k];
}

function run(dir, n, system) {
  const probe = read(dir, n, system, "probe");
  if (probe === null) return null;
  const bulk = read(dir, n, system, "bulk");
  const clients = probe.clients + (bulk ? bulk.clients : 0);
  const t0 = probe.window_start_wall_ms;
  const t1 = probe.window_end_wall_ms;
  const inWindow = (k) => (bulk ? at(bulk.samples, t1, k) - at(bulk.samples, t0, k) : 0);
  const bytes = (probe.bytes + inWindow(1)) / ((t1 - t0) / 1000);
  const cores = probe.cpu_cores;
  const serverCpu = (system === "tessera" ? cores.slice(0, TESSERA_TARGET_PIDS) : cores).reduce((a, b) => a + b, 0);
  return {
    probe,
    bulk,
    clients,
    bytesPerClient: bytes / clients,
    serverCpu,
    otherCpu: system === "tessera" ? cores.slice(TESSERA_TARGET_PIDS).reduce((a, b) => a + b, 0) : 0,
    errors: probe.errors + (bulk ? bulk.errors : 0),
    closed: probe.closed + (bulk ? bulk.closed : 0),
    late: probe.late_moves + Math.round(inWindow(3)),
    clientCpu: probe.client_cpu_cores.reduce((a, b) => a + b, 0),
    retries: (probe.join_retries || 0) + (bulk ? bulk.join_retries || 0 : 0),
  };
}

// A run without a result, or whose probes saw none of their Moves applied.
function lat(r) {
  if (r === null) return "failed";
  if (r.probe.p99_ms === null) return "none seen";
  return `${Math.round(r.probe.p50_ms)}/${Math.round(r.probe.p99_ms)} ms`;
}

const pad = (s, w) => String(s).padStart(w);

function header() {
  console.log(`${pad("N", 5)}  ${pad("tessera p50/p99", 16)}  ${pad("colyseus p50/p99", 17)}  ${pad("cpu ratio", 9)}  ${pad("bytes ratio", 11)}  verdict`);
}

function row(dir, n) {
  const t = run(dir, n, "tessera");
  const c = run(dir, n, "colyseus");
  let cpu = "-";
  let bytes = "-";
  let verdict = "MISSED";
  if (t !== null && c !== null && t.probe.p99_ms !== null && c.probe.p99_ms !== null) {
    const cpuRatio = c.serverCpu > 0 ? t.serverCpu / c.serverCpu : Infinity;
    cpu = cpuRatio.toFixed(2);
    bytes = (t.bytesPerClient / c.bytesPerClient).toFixed(3);
    const complete = t.probe.missing === 0 && t.errors === 0 && t.closed === 0;
    if (complete && t.probe.p99_ms <= c.probe.p99_ms && cpuRatio <= 0.5) verdict = "ok";
  }
  console.log(`${pad(n, 5)}  ${pad(lat(t), 16)}  ${pad(lat(c), 17)}  ${pad(cpu, 9)}  ${pad(bytes, 11)}  ${verdict}`);
}

function details(dir, ns) {
  for (const n of ns) {
    for (const system of ["tessera", "colyseus"]) {
      const r = run(dir, n, system);
      if (r === null) {
        console.log(`  N=${n} ${system}: no result`);
        continue;
      }
      const p = r.probe;
      const other = system === "tessera" ? ` (+ orch/redis ${r.otherCpu.toFixed(2)})` : "";
      const rest = p.box_cpu_cores - r.serverCpu - r.otherCpu - r.clientCpu;
      const lag = `${p.loop_lag_p99_ms}/${r.bulk ? r.bulk.loop_lag_p99_ms : "-"}`;
      console.log(
        `  N=${n} ${system}: p50/p99/p999 ${p.p50_ms}/${p.p99_ms}/${p.p999_ms} ms, probe moves ${p.sent} sent ${p.acked} seen ${p.missing} missing; ` +
          `server CPU ${r.serverCpu.toFixed(2)} cores${other} [${p.cpu_cores.join(" ")}]; ` +
          `load client CPU ${p.client_cpu_cores.join("+")} cores, event-loop lag p99 ${lag} ms, ` +
          `${r.late} Moves skipped late; everything else on the box ${rest.toFixed(2)} cores; ` +
          `${Math.round(r.bytesPerClient)} B/s per client; ` +
          `join retries ${r.retries}, errors ${r.errors}${r.errors ? ` (${p.error_text || (r.bulk && r.bulk.error_text)})` : ""}, closed ${r.closed}`,
      );
    }
  }
}

const [cmd, dir, ...rest] = process.argv.slice(2);
if (cmd === "header") header();
else if (cmd === "row" && dir && rest.length === 1) row(dir, rest[0]);
else if (cmd === "details" && dir) details(dir, rest);
else {
  console.error("usage: report.js header | row DIR N | details DIR N...");
  process.exit(2);
}
