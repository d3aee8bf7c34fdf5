// TesseraClient: one player's connection to a Tessera gateway over
// WebSocket (browsers: the global WebSocket; Node: the `ws` package).
//
// Every WebSocket message is one ClientFrame / ServerFrame protobuf. The
// client numbers its frames (seq strictly increasing), keeps the world it
// sees (entities, own state, acks), and, when the connection drops, resumes
// its entity with the Welcome's resume token (on the same URL or the next
// of `urls`), with exponential backoff. Inputs the server has not
// acknowledged are sent again with their original seq after a resume; the
// worker applies each (entity, seq) at most once, so none is lost or
// doubled. Game commands (command()) are inputs like moves: numbered by
// seq, acknowledged by last_input_seq, sent again after a resume until
// acknowledged; the game module's events arrive as 'event', its world
// counters (summed over the world by the gateway) as 'counters'.
import { InterpolationBuffer, now } from './interp.js';
import {
  type CellChanged,
  type CellId,
  type ClientPayload,
  type Delta,
  type EntityState,
  ErrorCode,
  type GameEvent,
  PAYLOAD_MAX,
  type Pong,
  type ServerError,
  type ServerFrame,
  type Snapshot,
  type Welcome,
  decodeServerFrame,
  encodeClientFrame,
} from './proto.js';
import { Predictor } from './predict.js';

/** A Command sent and not acknowledged yet (sent again after a resume). */
export interface PendingCommand {
  seq: number;
  type: number;
  payload: Uint8Array;
}

export interface JoinOptions {
  /** Join.name (default: the client's name). */
  name?: string;
  /** Join.payload for the game module's on_join: bytes, or a string sent as UTF-8 (at most 256 bytes). */
  payload?: Uint8Array | string;
  timeoutMs?: number;
}

const utf8 = new TextEncoder();

function payloadBytes(p: Uint8Array | string | undefined): Uint8Array {
  const b = p === undefined ? new Uint8Array(0) : typeof p === 'string' ? utf8.encode(p) : p;
  if (b.length > PAYLOAD_MAX) throw new RangeError(`payload is ${b.length} bytes, the limit is ${PAYLOAD_MAX}`);
  return b;
}

export interface Backoff {
  initialMs: number;
  maxMs: number;
  maxAttempts: number;
}

export interface ClientOptions {
  /** ws://host:port/ws (or wss:// behind a TLS terminator). */
  url: string;
  /** More gateways to resume on, tried in turn after `url`. */
  urls?: string[];
  /** Hello.client_name and the default Join name. */
  name?: string;
  /** A JWT for gateways with gateway.auth.required. */
  token?: string;
  /** Resume after an unexpected close (default true). */
  autoResume?: boolean;
  backoff?: Partial<Backoff>;
  /** A Ping this often keeps an idle connection open (default 5000; 0: off). */
  pingIntervalMs?: number;
  /** Render delay of remote entities (default 100 ms). */
  interpolationDelayMs?: number;
  /** A WebSocket constructor (default: globalThis.WebSocket, else `ws`). */
  WebSocket?: any;
  /** Node only: the Origin header to send. */
  origin?: string;
}

type Handler<T> = (v: T) => void;
interface EventMap {
  welcome: Welcome;
  snapshot: Snapshot;
  delta: Delta;
  cell_changed: CellChanged;
  pong: Pong;
  error: ServerError;
  /** The game module's events (ServerFrame.event). */
  event: GameEvent;
  /** The world counters changed (ServerFrame.world_counters): the new `counters`. */
  counters: number[];
  frame: ServerFrame;
  open: void;
  close: { code: number; reason: string; willResume: boolean };
  reconnecting: { attempt: number; delayMs: number; url: string };
  resumed: Welcome;
}

/** Errors after which resuming makes no sense. */
const FINAL_ERRORS = new Set<number>([
  ErrorCode.MALFORMED,
  ErrorCode.OVERSIZED,
  ErrorCode.UNAUTHENTICATED,
  ErrorCode.RESUME_REFUSED,
  ErrorCode.RATE_LIMIT,
]);

async function defaultWebSocket(): Promise<any> {
  if (typeof (globalThis as any).WebSocket === 'function') return (globalThis as any).WebSocket;
  const mod: any = await import('ws');
  return mod.WebSocket ?? mod.default;
}

export class TesseraClient {
  readonly opts: ClientOptions;
  /** Last seq used. */
  seq = 0;
  entity: string | null = null;
  cell: CellId | null = null;
  epoch = 0;
  resumeToken = '';
  /** Entities in the area of interest, latest states. */
  readonly entities = new Map<string, EntityState>();
  readonly interp: InterpolationBuffer;
  readonly predictor = new Predictor();
  /** Inputs (Join, Move and Command) sent, ever, on all connections. */
  inputsSent = 0;
  /** Commands sent and not acknowledged yet, oldest first. */
  readonly pendingCommands: PendingCommand[] = [];
  /** Connections opened (1 + resumes). */
  connections = 0;
  lastError: ServerError | null = null;
  connected = false;
  /**
   * The game module's world counters, summed over the whole world by the
   * gateway (tag: [red's score, blue's score]): counter i is counters[i],
   * 0 when missing. Updated by every WorldCounters frame ('counters' event).
   */
  counters: number[] = [];

  private ws: any = null;
  private handlers = new Map<keyof EventMap, Set<Handler<any>>>();
  private closedByUser = false;
  private noResume = false;
  private pingTimer: any = null;
  private pings = new Map<number, (rtt: number) => void>();
  private reconnecting = false;
  private urlIndex = 0;

  constructor(opts: ClientOptions) {
    this.opts = opts;
    this.interp = new InterpolationBuffer(opts.interpolationDelayMs ?? 100);
  }

  on<K extends keyof EventMap>(ev: K, fn: Handler<EventMap[K]>): () => void {
    let s = this.handlers.get(ev);
    if (s === undefined) {
      s = new Set();
      this.handlers.set(ev, s);
    }
    s.add(fn);
    return () => s!.delete(fn);
  }

  /** Resolves with the next event `ev` that `pred` accepts, or rejects after timeoutMs. */
  waitFor<K extends keyof EventMap>(ev: K, pred: (v: EventMap[K]) => boolean = () => true, timeoutMs = 10000): Promise<EventMap[K]> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        off();
        reject(new Error(`timed out waiting for ${String(ev)}`));
      }, timeoutMs);
      const off = this.on(ev, (v) => {
        if (!pred(v)) return;
        clearTimeout(timer);
        off();
        resolve(v);
      });
    });
  }

  private emit<K extends keyof EventMap>(ev: K, v: EventMap[K]): void {
    const s = this.handlers.get(ev);
    if (s === undefined) return;
    for (const fn of [...s]) fn(v);
  }

  /** The own entity's latest authoritative state. */
  get me(): EntityState | null {
    return this.entity === null ? null : (this.entities.get(this.entity) ?? null);
  }

  /** Highest own input seq the server acknowledged. */
  get ackedSeq(): number {
    return this.predictor.ackedSeq;
  }

  /** Opens the connection and sends Hello. */
  async connect(): Promise<void> {
    this.closedByUser = false;
    this.noResume = false;
    await this.open(this.opts.url, false);
  }

  private urlList(): string[] {
    return [this.opts.url, ...(this.opts.urls ?? [])];
  }

  private async open(url: string, resume: boolean): Promise<void> {
    const WS = this.opts.WebSocket ?? (await defaultWebSocket());
    const isNodeWs = typeof (globalThis as any).WebSocket !== 'function' || WS !== (globalThis as any).WebSocket;
    const ws = isNodeWs && this.opts.origin ? new WS(url, { origin: this.opts.origin }) : new WS(url);
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    await new Promise<void>((resolve, reject) => {
      ws.onopen = () => resolve();
      ws.onerror = () => reject(new Error(`cannot connect to ${url}`));
      ws.onclose = (ev: any) => reject(new Error(`connection to ${url} closed (${ev?.code ?? ''})`));
    });
    this.connections++;
    this.connected = true;
    ws.onmessage = (ev: any) => this.onMessage(ev.data);
    ws.onerror = () => {};
    ws.onclose = (ev: any) => this.onClose(ws, ev?.code ?? 1006, ev?.reason ?? '');
    // moves and commands not acknowledged, in seq order
    const pending: { seq: number; payload: ClientPayload }[] = [
      ...this.predictor.unacked().map((p) => ({ seq: p.seq, payload: { move: { dx: p.dx, dy: p.dy } } as ClientPayload })),
      ...this.pendingCommands.map((c) => ({ seq: c.seq, payload: { command: { type: c.type, payload: c.payload } } as ClientPayload })),
    ].sort((a, b) => a.seq - b.seq);
    if (resume && this.resumeToken) {
      // the Hello's seq sits just below the first input to send again
      const helloSeq = pending.length > 0 ? pending[0].seq - 1 : ++this.seq;
      this.sendRaw(helloSeq, {
        hello: { protocol_version: 1, client_name: this.opts.name ?? 'js', resume_token: this.resumeToken, token: this.opts.token },
      });
      for (const p of pending) this.sendRaw(p.seq, p.payload);
    } else {
      this.sendRaw(++this.seq, { hello: { protocol_version: 1, client_name: this.opts.name ?? 'js', token: this.opts.token } });
    }
    const every = this.opts.pingIntervalMs ?? 5000;
    if (every > 0 && this.pingTimer === null) {
      this.pingTimer = setInterval(() => {
        if (this.connected) this.ping().catch(() => {});
      }, every);
      this.pingTimer.unref?.();
    }
    this.emit('open', undefined);
  }

  private sendRaw(seq: number, payload: ClientPayload): void {
    if (this.ws === null || !this.connected) throw new Error('not connected');
    this.ws.send(encodeClientFrame(seq, payload, this.cell, this.epoch));
  }

  /** Sends one frame with the next seq; returns the seq. */
  send(payload: ClientPayload): number {
    const seq = ++this.seq;
    this.sendRaw(seq, payload);
    return seq;
  }

  /**
   * Spawns the player's entity; resolves with the Snapshot. The third
   * argument is the Join's name, or options with a payload for the game
   * module's on_join.
   */
  async join(x: number, y: number, nameOrOpts: string | JoinOptions = {}, timeoutMs = 10000): Promise<Snapshot> {
    const o: JoinOptions = typeof nameOrOpts === 'string' ? { name: nameOrOpts } : nameOrOpts;
    const name = o.name ?? this.opts.name ?? 'js';
    const payload = payloadBytes(o.payload);
    const wait = o.timeoutMs ?? timeoutMs;
    const snap = this.waitFor('snapshot', () => true, wait);
    const err = this.waitFor(
      'error',
      (e) => e.code === ErrorCode.UNKNOWN_CELL || e.code === ErrorCode.PROTOCOL || e.code === ErrorCode.MALFORMED || e.fatal,
      wait,
    );
    snap.catch(() => {});
    this.send({ join: { x, y, name, payload } });
    this.inputsSent++;
    const r = await Promise.race([snap, err.then((e) => Promise.reject(new Error(`join refused: ${e.message}`)))]);
    err.catch(() => {});
    return r as Snapshot;
  }

  /** Sets the entity's velocity (units/s); returns the input's seq. */
  move(dx: number, dy: number): number {
    const seq = this.send({ move: { dx, dy } });
    this.inputsSent++;
    this.predictor.input(seq, dx, dy, now());
    return seq;
  }

  /**
   * Sends a game Command (type, payload: bytes or a UTF-8 string of at most
   * 256 bytes) for the module's on_command; returns its seq. It is applied
   * exactly once; `ackedSeq >= seq` says it was. Until then it is sent
   * again with the same seq after a resume.
   */
  command(type: number, payload?: Uint8Array | string): number {
    if (!Number.isInteger(type) || type < 0 || type > 0xffffffff) throw new RangeError(`command type ${type}`);
    const bytes = payloadBytes(payload);
    const seq = this.send({ command: { type, payload: bytes } });
    this.inputsSent++;
    this.pendingCommands.push({ seq, type, payload: bytes });
    return seq;
  }

  /** Round trip in milliseconds. */
  ping(timeoutMs = 5000): Promise<number> {
    const t = Math.floor(Date.now() * 1000);
    const started = now();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pings.delete(t);
        reject(new Error('ping timed out'));
      }, timeoutMs);
      (timer as any).unref?.();
      this.pings.set(t, () => {
        clearTimeout(timer);
        resolve(now() - started);
      });
      try {
        this.send({ ping: { client_time_us: t } });
      } catch (e) {
        clearTimeout(timer);
        this.pings.delete(t);
        reject(e);
      }
    });
  }

  /** Despawns the entity; the connection stays open. */
  leave(): void {
    this.send({ leave: {} });
    this.entity = null;
    this.resumeToken = '';
    this.predictor.reset();
    this.pendingCommands.length = 0;
  }

  /** Closes for good (no resume). */
  close(): void {
    this.closedByUser = true;
    if (this.pingTimer !== null) clearInterval(this.pingTimer);
    this.pingTimer = null;
    this.connected = false;
    try {
      this.ws?.close(1000);
    } catch {
      /* already closed */
    }
  }

  /** Drops the connection as a network failure would (tests). */
  drop(): void {
    try {
      if (typeof this.ws?.terminate === 'function') this.ws.terminate();
      else this.ws?.close(4000, 'dropped');
    } catch {
      /* already closed */
    }
  }

  /** Position to draw entity `id` at: predicted for the own entity, interpolated for others. */
  renderPosition(id: string, t: number = now()): { x: number; y: number } | undefined {
    if (id === this.entity) {
      const p = this.predictor.predict(t);
      if (p !== null) return p;
    }
    return this.interp.sample(id, t);
  }

  private onMessage(data: any): void {
    let bytes: Uint8Array;
    if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
    else if (ArrayBuffer.isView(data)) bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    else return;
    let f: ServerFrame;
    try {
      f = decodeServerFrame(bytes);
    } catch {
      return;
    }
    if (f.cell !== null) {
      this.cell = f.cell;
      this.epoch = f.epoch;
    }
    const t = now();
    if (f.welcome) {
      const w = f.welcome;
      if (w.entity !== '0') this.entity = w.entity;
      if (w.resume_token) this.resumeToken = w.resume_token;
      if (w.resumed) {
        this.ackInputs(w.last_input_seq);
        // a login that took its entity over (a Join answered as a resume):
        // the player's inputs go on above the ones already applied
        if (w.last_input_seq > this.seq) this.seq = w.last_input_seq;
      }
      this.emit('welcome', w);
      if (w.resumed) this.emit('resumed', w);
    } else if (f.snapshot) {
      const s = f.snapshot;
      this.entity = s.entity;
      this.entities.clear();
      for (const e of s.entities) this.applyState(e, s.last_input_seq, t);
      this.ackInputs(s.last_input_seq);
      this.emit('snapshot', s);
    } else if (f.delta) {
      const d = f.delta;
      for (const e of d.entities) this.applyState(e, d.last_input_seq, t);
      for (const id of d.removed) {
        this.entities.delete(id);
        this.interp.remove(id);
      }
      this.ackInputs(d.last_input_seq);
      this.emit('delta', d);
    } else if (f.cell_changed) {
      if (f.cell_changed.resume_token) this.resumeToken = f.cell_changed.resume_token;
      this.emit('cell_changed', f.cell_changed);
    } else if (f.pong) {
      const cb = this.pings.get(f.pong.client_time_us);
      if (cb !== undefined) {
        this.pings.delete(f.pong.client_time_us);
        cb(0);
      }
      this.emit('pong', f.pong);
    } else if (f.event) {
      this.emit('event', f.event);
    } else if (f.world_counters) {
      this.counters = f.world_counters.values.slice();
      this.emit('counters', this.counters);
    } else if (f.error) {
      this.lastError = f.error;
      // Commands the gateway reports not stored are not pending any more
      if (f.error.code === ErrorCode.INPUT_NOT_STORED) this.dropCommands(f.error.first_seq, f.error.last_seq);
      if (f.error.fatal && FINAL_ERRORS.has(f.error.code)) this.noResume = true;
      this.emit('error', f.error);
    }
    this.emit('frame', f);
  }

  private ackInputs(seq: number): void {
    this.predictor.ack(seq);
    let n = 0;
    while (n < this.pendingCommands.length && this.pendingCommands[n].seq <= seq) n++;
    if (n > 0) this.pendingCommands.splice(0, n);
  }

  private dropCommands(first: number, last: number): void {
    for (let i = this.pendingCommands.length - 1; i >= 0; i--) {
      const s = this.pendingCommands[i].seq;
      if (s >= first && s <= last) this.pendingCommands.splice(i, 1);
    }
  }

  private applyState(e: EntityState, ack: number, t: number): void {
    this.entities.set(e.id, e);
    this.interp.push(e, t);
    if (e.id === this.entity) this.predictor.reconcile(e, Math.max(ack, e.last_input_seq), t);
  }

  private onClose(ws: any, code: number, reason: string): void {
    if (ws !== this.ws) return;
    this.connected = false;
    const willResume =
      !this.closedByUser && !this.noResume && (this.opts.autoResume ?? true) && this.resumeToken !== '' && this.entity !== null;
    this.emit('close', { code, reason, willResume });
    if (willResume) void this.resumeLoop();
    else if (this.pingTimer !== null) {
      clearInterval(this.pingTimer);
      this.pingTimer = null;
    }
  }

  private async resumeLoop(): Promise<void> {
    if (this.reconnecting) return;
    this.reconnecting = true;
    const b: Backoff = { initialMs: 100, maxMs: 5000, maxAttempts: 20, ...this.opts.backoff };
    const urls = this.urlList();
    try {
      for (let attempt = 1; attempt <= b.maxAttempts && !this.closedByUser; attempt++) {
        const delayMs = Math.min(b.maxMs, b.initialMs * 2 ** (attempt - 1));
        const url = urls[this.urlIndex % urls.length];
        this.emit('reconnecting', { attempt, delayMs, url });
        await new Promise((r) => setTimeout(r, delayMs));
        if (this.closedByUser) return;
        try {
          await this.open(url, true);
          return;
        } catch {
          this.urlIndex++;
        }
      }
    } finally {
      this.reconnecting = false;
    }
  }
}
