// A real Tessera stack for the SDK and browser tests: nats-server -js,
// redis-server, tessera-orch, workers w1 and w2 and N gateways (TCP and
// WebSocket), each on a free loopback port, logs in a temp dir. stop()
// terminates and reaps every process; a process exit kills whatever is
// left. Binaries come from $TESSERA_BIN_DIR (ctest sets it).
import { spawn } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync, rmSync, existsSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const binDir = process.env.TESSERA_BIN_DIR ?? resolve(here, '..', '..', '..', 'build');
const live = new Set();
process.on('exit', () => {
  for (const p of live) {
    try {
      p.kill('SIGKILL');
    } catch {
      /* gone */
    }
  }
});

export function freePort() {
  return new Promise((res, rej) => {
    const s = net.createServer();
    s.unref();
    s.on('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

function canConnect(port) {
  return new Promise((res) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      res(true);
    });
    s.once('error', () => res(false));
  });
}

/** A game module the build made for tests (tests/modules/<name>.c), e.g. echo. */
export function testModule(name) {
  const path = join(binDir, 'tests', `libts_game_${name}.so`);
  if (!existsSync(path)) throw new Error(`${path} is not built`);
  return path;
}

export async function until(what, fn, timeoutMs = 30000, everyMs = 100) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

export class Stack {
  constructor() {
    this.dir = mkdtempSync(join(tmpdir(), 'tessera-js-'));
    this.procs = [];
    this.gateways = [];
    this.failed = false;
  }

  spawn(name, bin, args, env = {}) {
    const log = join(this.dir, `${name}.log`);
    const fd = openSync(log, 'w');
    const path = bin.startsWith('/') ? bin : join(binDir, bin);
    const p = spawn(path, args, {
      stdio: ['ignore', fd, fd],
      // cells change only as a test says: no load-driven split or merge
      env: { TESSERA_SPLIT_AUTO: '0', ...process.env, TESSERA_NATS_URL: this.natsUrl, TESSERA_REDIS_URL: this.redisUrl, ...env },
    });
    p.exited = new Promise((r) => p.once('exit', (code, sig) => r(code ?? 128)));
    p.logPath = log;
    p.procName = name;
    live.add(p);
    p.once('exit', () => live.delete(p));
    this.procs.push(p);
    return p;
  }

  async startServers() {
    const natsPort = await freePort();
    const redisPort = await freePort();
    this.natsUrl = `nats://127.0.0.1:${natsPort}`;
    this.redisUrl = `redis://127.0.0.1:${redisPort}`;
    const nats = existsSync('/usr/sbin/nats-server') ? '/usr/sbin/nats-server' : '/usr/bin/nats-server';
    this.spawn('nats', nats, ['-js', '-a', '127.0.0.1', '-p', String(natsPort), '-sd', join(this.dir, 'js')]);
    this.spawn('redis', '/usr/bin/redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', this.dir]);
    await until('nats-server', () => canConnect(natsPort), 15000);
    await until('redis-server', () => canConnect(redisPort), 15000);
  }

  /** Starts orch, w1, w2 and `gateways` gateways with WebSocket listeners. */
  async start({ gateways = 1, gatewayArgs = [], workerArgs = [] } = {}) {
    await this.startServers();
    this.spawn('orch', 'tessera-orch', []);
    this.spawn('w1', 'tessera-worker', ['--worker.id=w1', ...workerArgs]);
    this.spawn('w2', 'tessera-worker', ['--worker.id=w2', ...workerArgs]);
    for (let i = 0; i < gateways; i++) await this.addGateway(i + 1, gatewayArgs);
    await this.waitReady();
  }

  async addGateway(id, extra = []) {
    const tcp = await freePort();
    const ws = await freePort();
    const p = this.spawn(`gateway${id}`, 'tessera-gateway', [
      `--gateway.listen=127.0.0.1:${tcp}`,
      `--gateway.ws_listen=127.0.0.1:${ws}`,
      `--gateway.id=${id}`,
      '--log.level=debug',
      // one secret for every gateway, so a player resumes on any of them
      '--gateway.resume_secret=tessera-js-test',
      ...extra,
    ]);
    const gw = { id, tcpPort: tcp, wsPort: ws, proc: p, http: `http://127.0.0.1:${ws}`, url: `ws://127.0.0.1:${ws}/ws` };
    this.gateways.push(gw);
    await until(`gateway ${id} listening`, () => canConnect(ws), 30000);
    return gw;
  }

  /** The /api/world feed of gateway i. */
  async world(i = 0) {
    const r = await fetch(`${this.gateways[i].http}/api/world`);
    if (!r.ok) throw new Error(`/api/world: ${r.status}`);
    return r.json();
  }

  /** Every cell of the world owned and both workers heartbeating. */
  async waitReady(timeoutMs = 60000) {
    await until(
      'world ready',
      async () => {
        try {
          const w = await this.world(0);
          const owned = new Set(w.workers.flatMap((x) => x.cells.map((c) => c.key)));
          return w.cells.length === w.world.width * w.world.height && w.workers.length === 2 && w.cells.every((c) => owned.has(c.key));
        } catch {
          return false;
        }
      },
      timeoutMs,
      200,
    );
  }

  /** Runs tessera-ctl against this stack; resolves its output (rejects on failure). */
  ctl(args) {
    return new Promise((res, rej) => {
      const p = spawn(join(binDir, 'tessera-ctl'), args, {
        env: { ...process.env, TESSERA_NATS_URL: this.natsUrl, TESSERA_REDIS_URL: this.redisUrl },
      });
      let out = '';
      p.stdout.on('data', (d) => (out += d));
      p.stderr.on('data', (d) => (out += d));
      p.once('exit', (code) => (code === 0 ? res(out) : rej(new Error(`tessera-ctl ${args.join(' ')}: ${code}: ${out}`))));
    });
  }

  /** SIGKILLs process `name` (a crash); stop() does not count its exit as unclean. */
  kill(name) {
    const p = this.procs.find((x) => x.procName === name);
    if (!p) throw new Error(`no process ${name}`);
    p.killedOnPurpose = true;
    p.kill('SIGKILL');
    return p.exited;
  }

  log(name) {
    const p = this.procs.find((x) => x.procName === name);
    return p ? readFileSync(p.logPath, 'utf8') : '';
  }

  async stop() {
    for (const p of [...this.procs].reverse()) {
      if (p.exitCode === null && p.signalCode === null) p.kill('SIGTERM');
    }
    const unclean = [];
    for (const p of this.procs) {
      const t = setTimeout(() => p.kill('SIGKILL'), 5000);
      const code = await p.exited;
      clearTimeout(t);
      // Tessera services exit 0 on SIGTERM (a sanitizer report makes it 1)
      if (code !== 0 && p.procName !== 'nats' && p.procName !== 'redis' && !p.killedOnPurpose) {
        unclean.push(`${p.procName} exited with ${code}`);
        this.failed = true;
      }
    }
    if (this.failed) {
      for (const p of this.procs) {
        const text = readFileSync(p.logPath, 'utf8').split('\n').slice(-30).join('\n');
        console.error(`----- ${p.procName} (${p.logPath}) -----\n${text}`);
      }
    } else {
      rmSync(this.dir, { recursive: true, force: true });
    }
    return unclean;
  }
}
