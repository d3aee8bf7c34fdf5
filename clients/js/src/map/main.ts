// The live world map served by the gateway at `/`: the live cells at any
// depth colored by owner, the world's entities as dots (joined or not),
// handovers and recoveries flashing as they happen, a legend with workers,
// entities, dots and inputs/s. "Join" spawns the viewer as a player; arrow
// keys move it (its own dot, and those near it, follow the SDK's view).
//
// Play mode ("Play" button, or the page opened as /#play) joins the game a
// module runs: arrow keys or WASD move, space sends Command 1 (tag's TAG).
// When entities carry tag's state bytes (team, tags made, times tagged:
// examples/tag/README.md), they are drawn in their team's colour, and the
// side panel shows each team's score (world counters 0 and 1: the whole
// world's, from the gateway's WorldCounters), your own, and the game's
// events.
//
// The feed is pushed: /api/events (server-sent events) sends the world once
// (`world`: the gateway's registry view and the workers' heartbeats), then
// the registry changes (`cells`) and heartbeats (`workers`) as they come,
// so the page does work for what changes, never a poll of the world; and
// `dots` (the positions of the world's entities, at most the gateway's
// gateway.map_max_dots of them, with the total) a few times a second while
// they move, and `counters` (the world counters) when they change.
import { TesseraClient } from '../index.js';
import { EntityFlags, type EntityState, type GameEvent } from '../proto.js';

interface WorldCell {
  key: string;
  cx: number;
  cy: number;
  depth: number;
  sub: number;
  epoch: number;
  state: string;
  owner?: string;
  version?: number;
}
interface WorkerCell {
  key: string;
  epoch: number;
  entities: number;
}
interface Worker {
  id: string;
  entities: number;
  inputs_applied: number;
  draining: boolean;
  cells: WorkerCell[];
}
interface World {
  world: { id: number; cell_size: number; x0: number; y0: number; width: number; height: number };
  gateway: string;
  hb_ttl_ms?: number;
  max_dots?: number;
  /** The world counters (as many as the last non-zero one). */
  counters?: number[];
  cells: WorldCell[];
  workers: Worker[];
}
interface Flash {
  until: number;
  kind: 'handover' | 'recovery';
}
/** The `dots` event: the world's entities, [id, x, y] each. */
interface Dots {
  dots: [string, number, number][];
  total: number;
  max: number;
}
/** A dot as the last frame drew it (screen coordinates, CSS pixels). */
interface Drawn {
  id: string;
  x: number;
  y: number;
  sx: number;
  sy: number;
  r: number;
  color: string;
  me: boolean;
}

const SPEED = 40;
const FLASH_MS = 1500;
const LIVE = new Set(['active', 'handover']);

const canvas = document.getElementById('map') as HTMLCanvasElement;
const ctx = canvas.getContext('2d')!;
const legend = document.getElementById('legend')!;
const events = document.getElementById('events')!;
const joinButton = document.getElementById('join') as HTMLButtonElement;
const playButton = document.getElementById('play') as HTMLButtonElement;
const gamePanel = document.getElementById('game')!;

let world: World | null = null;
const cells = new Map<string, WorldCell>(); // every cell the registry has, by key
const workers = new Map<string, Worker>();
const owners = new Map<string, { owner: string; epoch: number; entities: number }>(); // from heartbeats
const flashes = new Map<string, Flash>();
/** Every flash as it started (for tests and the console), the last 50. */
const flashLog: { key: string; kind: Flash['kind']; from: string; to: string; at: number }[] = [];
const heard = new Map<string, number>(); // worker id -> performance.now() of its latest heartbeat
let dots: Dots = { dots: [], total: 0, max: 0 };
let drawn: Drawn[] = [];
let inputsPerS = 0;
let lastInputs: { t: number; n: number } | null = null;
let client: TesseraClient | null = null;
const keys = new Set<string>();
const feed = { worlds: 0, cells: 0, workers: 0, dots: 0, counters: 0 }; // events received, by kind
/** The world counters from the feed (`world`, then `counters` events). */
let feedCounters: number[] = [];
let playing = false;

// ---- the tag game (examples/tag), read from entity state bytes ------------
const TEAM_RED = 1;
const TEAM_BLUE = 2;
const CMD_TAG = 1;
const TEAM_NAME = ['', 'red', 'blue'];
const TEAM_COLOR = ['', '#ff5a5a', '#4f9dff'];

interface TagState {
  team: number;
  bot: boolean;
  tags: number;
  tagged: number;
}
/** What the page shows of the game (for tests and the console). */
const game = { red: 0, blue: 0, me: null as TagState | null, events: [] as GameEvent[], commands: 0 };

function u32(b: Uint8Array, off: number): number {
  return (b[off] | (b[off + 1] << 8) | (b[off + 2] << 16) | (b[off + 3] << 24)) >>> 0;
}

/** tag's state bytes of an entity, or null when it has none. */
function tagState(e: EntityState | null | undefined): TagState | null {
  const st = e?.state;
  if (st === undefined || st.length < 12 || (st[0] !== TEAM_RED && st[0] !== TEAM_BLUE)) return null;
  return { team: st[0], bot: (st[1] & 1) === 1 || (e!.flags & EntityFlags.NPC) !== 0, tags: u32(st, 4), tagged: u32(st, 8) };
}

/** [id u64 LE, team, name...] of tag's "you tagged" / "tagged by" events. */
function eventWho(p: Uint8Array): { id: string; team: number; name: string } {
  let id = 0n;
  for (let i = 7; i >= 0; i--) id = (id << 8n) | BigInt(p[i] ?? 0);
  return { id: id.toString(), team: p[8] ?? 0, name: new TextDecoder().decode(p.subarray(9)) };
}

function onGameEvent(ev: GameEvent): void {
  game.events.push(ev);
  if (game.events.length > 50) game.events.shift();
  const p = ev.payload ?? new Uint8Array(0);
  if (ev.type === 1 && p.length >= 9) {
    const who = eventWho(p);
    note(`you tagged ${who.name || who.id}: +1`);
  } else if (ev.type === 2 && p.length >= 9) {
    const who = eventWho(p);
    note(`tagged by ${who.name || who.id}: you are ${TEAM_NAME[who.team] ?? '?'} now`);
  } else if (ev.type === 3) {
    note(`tag at ${Math.round(ev.x)},${Math.round(ev.y)}`);
  } else if (ev.type === 4) {
    note('no enemy in range');
  } else {
    note(`event ${ev.type} (${p.length} bytes)`);
  }
  renderGame();
}

/** Team scores (the world counters), and the player's own state. */
function renderGame(): void {
  if (!playing || client === null) return;
  let any = client.counters.length > 0;
  for (const e of client.entities.values()) if (!any && tagState(e) !== null) any = true;
  const red = client.counters[0] ?? 0;
  const blue = client.counters[1] ?? 0;
  game.red = red;
  game.blue = blue;
  game.me = client.me ? tagState(client.me) : null;
  const me = game.me;
  gamePanel.innerHTML = any
    ? `<div>score: <b style="color:${TEAM_COLOR[TEAM_RED]}">red <span id="score-red">${red}</span></b>` +
      ` · <b style="color:${TEAM_COLOR[TEAM_BLUE]}">blue <span id="score-blue">${blue}</span></b></div>` +
      (me
        ? `<div>you: <b id="team-me" style="color:${TEAM_COLOR[me.team]}">${TEAM_NAME[me.team]}</b>, ` +
          `<b id="score-me">${me.tags}</b> tags, tagged <b id="tagged-me">${me.tagged}</b> times</div>`
        : '') +
      '<div class="key">arrows or WASD move, space tags the nearest enemy in range</div>'
    : '<div class="key">arrows or WASD move, space sends the game command 1</div>';
}

function hue(id: string): number {
  let h = 2166136261;
  for (let i = 0; i < id.length; i++) h = Math.imul(h ^ id.charCodeAt(i), 16777619);
  return (h >>> 0) % 360;
}
const color = (id: string, a = 1) => `hsla(${hue(id)}, 65%, 55%, ${a})`;
const DOT_COLOR = '#7fd3ff';
const ME_COLOR = '#ffd400';
const FAR_COLOR = '#8a8a8a';

function note(text: string): void {
  const li = document.createElement('li');
  li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  events.prepend(li);
  while (events.children.length > 8) events.lastChild!.remove();
}

/** Owners and entity counts as the workers' heartbeats report them. */
function heartbeatOwners(): void {
  owners.clear();
  for (const wk of workers.values())
    for (const c of wk.cells) {
      const cur = owners.get(c.key);
      if (cur === undefined || c.epoch > cur.epoch) owners.set(c.key, { owner: wk.id, epoch: c.epoch, entities: c.entities });
    }
}

function inputsRate(): void {
  const t = performance.now();
  let n = 0;
  for (const w of workers.values()) n += w.inputs_applied;
  if (lastInputs !== null && t - lastInputs.t >= 900) {
    inputsPerS = Math.max(0, ((n - lastInputs.n) * 1000) / (t - lastInputs.t));
    lastInputs = { t, n };
  } else if (lastInputs === null) lastInputs = { t, n };
}

function publish(): void {
  if (world === null) return;
  world = { ...world, cells: [...cells.values()], workers: [...workers.values()] };
  renderLegend();
}

/** When each worker's heartbeat last reached the gateway, on this page's clock. */
function hear(ws: (Worker & { age_ms?: number })[]): void {
  const t = performance.now();
  for (const w of ws) heard.set(w.id, t - (w.age_ms ?? 0));
}

/** The whole world (first event, and after a burst of changes). */
function applyWorld(w: World): void {
  cells.clear();
  for (const c of w.cells) cells.set(c.key, c);
  workers.clear();
  for (const wk of w.workers) workers.set(wk.id, wk);
  hear(w.workers);
  world = w;
  heartbeatOwners();
  inputsRate();
  publish();
}

/** Whether worker `id` was silent long enough to be declared dead: the
 * orchestrator moves a dead worker's cells once its liveness key expired
 * (orch.hb_ttl_ms after its last refresh), a live one's are handed over
 * while it heartbeats (every worker.hb_ms, 250 ms by default). */
function silent(id: string, t: number): boolean {
  const last = heard.get(id);
  const ttl = world?.hb_ttl_ms ?? 1500;
  return last === undefined || t - last > (ttl * 2) / 3;
}

/** Registry changes, in order: a new owner flashes (handover when the old
 * owner still heartbeats, recovery when it went silent: it is dead). */
function applyCells(changes: WorldCell[]): void {
  const t = performance.now();
  for (const c of changes) {
    const before = cells.get(c.key);
    const was = before?.owner ?? owners.get(c.key)?.owner;
    if (c.state === 'handover') flashes.set(c.key, { until: t + FLASH_MS, kind: 'handover' });
    if (was !== undefined && was !== '' && c.owner !== undefined && c.owner !== was && LIVE.has(c.state)) {
      const kind = workers.has(was) && !silent(was, t) ? 'handover' : 'recovery';
      flashes.set(c.key, { until: t + FLASH_MS, kind });
      flashLog.push({ key: c.key, kind, from: was, to: c.owner, at: Date.now() });
      if (flashLog.length > 50) flashLog.shift();
      note(`${kind}: cell ${c.key} ${was} → ${c.owner} (epoch ${c.epoch})`);
    }
    if (before !== undefined && before.state !== c.state && (c.state === 'split' || c.state === 'retired'))
      note(`cell ${c.key} ${c.state === 'split' ? 'split' : 'merged'}`);
    cells.set(c.key, c);
  }
  publish();
}

function applyWorkers(ev: { workers: Worker[]; gone: string[] }): void {
  for (const w of ev.workers) workers.set(w.id, w);
  hear(ev.workers);
  for (const id of ev.gone) {
    workers.delete(id);
    heard.delete(id);
    note(`worker ${id} gone`);
  }
  heartbeatOwners();
  inputsRate();
  publish();
}

function listen(): void {
  const es = new EventSource('/api/events');
  es.addEventListener('world', (e) => {
    feed.worlds++;
    const w = JSON.parse((e as MessageEvent).data) as World;
    feedCounters = w.counters ?? [];
    applyWorld(w);
  });
  es.addEventListener('counters', (e) => {
    feed.counters++;
    feedCounters = (JSON.parse((e as MessageEvent).data) as { values: number[] }).values;
  });
  es.addEventListener('cells', (e) => {
    feed.cells++;
    applyCells(JSON.parse((e as MessageEvent).data) as WorldCell[]);
  });
  es.addEventListener('workers', (e) => {
    feed.workers++;
    applyWorkers(JSON.parse((e as MessageEvent).data));
  });
  es.addEventListener('dots', (e) => {
    feed.dots++;
    dots = JSON.parse((e as MessageEvent).data) as Dots;
    renderLegend();
  });
  // EventSource reconnects by itself (the gateway restarts): the first
  // event is a whole world again
}

function renderLegend(): void {
  if (world === null) return;
  const entities = world.workers.reduce((s, x) => s + x.entities, 0);
  const live = world.cells.filter((c) => LIVE.has(c.state)).length;
  const rows = world.workers
    .map(
      (w) =>
        `<li><span class="chip" style="background:${color(w.id)}"></span>${w.id}: ${w.cells.length} cells, ${w.entities} entities${w.draining ? ' (draining)' : ''}</li>`,
    )
    .join('');
  legend.innerHTML =
    `<div>gateway <b>${world.gateway}</b></div>` +
    `<div>cells <b id="legend-cells">${live}</b> · workers <b id="legend-workers">${world.workers.length}</b>` +
    ` · entities <b id="legend-entities">${entities}</b> · inputs/s <b id="legend-inputs">${inputsPerS.toFixed(0)}</b></div>` +
    `<div>dots <b id="legend-dots">${dots.dots.length}</b>` +
    (dots.total > dots.dots.length
      ? ` <span id="legend-capped">(capped: ${dots.dots.length} of ${dots.total}, gateway.map_max_dots)</span>`
      : '') +
    (world.max_dots === 0 ? ' (off: gateway.map_max_dots is 0)' : '') +
    '</div>' +
    `<ul class="workers">${rows}</ul>` +
    (client?.entity ? `<div>you: <b id="legend-me">${client.entity}</b></div>` : '');
}

/** A cell's bounds in world units (quadtree path: two bits per level, SW SE NW NE). */
function bounds(c: WorldCell, size: number): [number, number, number] {
  let x = c.cx * size;
  let y = c.cy * size;
  let s = size;
  for (let l = 0; l < c.depth; l++) {
    const q = Number((BigInt(c.sub) >> BigInt(2 * (c.depth - 1 - l))) & 3n);
    s /= 2;
    if (q & 1) x += s;
    if (q & 2) y += s;
  }
  return [x, y, s];
}

function draw(): void {
  requestAnimationFrame(draw);
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth;
  const h = canvas.clientHeight;
  if (canvas.width !== w * dpr || canvas.height !== h * dpr) {
    canvas.width = w * dpr;
    canvas.height = h * dpr;
  }
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.fillStyle = '#111';
  ctx.fillRect(0, 0, w, h);
  if (world === null) return;
  const ws = world.world;
  const size = ws.cell_size;
  const wx0 = ws.x0 * size;
  const wy0 = ws.y0 * size;
  const ww = ws.width * size;
  const wh = ws.height * size;
  const scale = Math.min((w - 20) / ww, (h - 20) / wh);
  const ox = (w - ww * scale) / 2;
  const oy = (h - wh * scale) / 2;
  const sx = (x: number) => ox + (x - wx0) * scale;
  const sy = (y: number) => oy + (wy0 + wh - y) * scale; // y grows upwards
  const t = performance.now();
  for (const c of world.cells) {
    if (!LIVE.has(c.state)) continue; // split parents and retired children: their live cells cover them
    const [x, y, s] = bounds(c, size);
    const own = owners.get(c.key);
    const owner = c.owner || own?.owner;
    ctx.fillStyle = owner ? color(owner, 0.35) : '#333';
    ctx.fillRect(sx(x), sy(y + s), s * scale, s * scale);
    const f = flashes.get(c.key);
    if (f !== undefined && f.until > t) {
      const a = (f.until - t) / FLASH_MS;
      ctx.fillStyle = f.kind === 'handover' ? `rgba(255,255,255,${0.6 * a})` : `rgba(255,80,80,${0.7 * a})`;
      ctx.fillRect(sx(x), sy(y + s), s * scale, s * scale);
    } else if (f !== undefined) flashes.delete(c.key);
    ctx.strokeStyle = '#000';
    ctx.strokeRect(sx(x), sy(y + s), s * scale, s * scale);
    if (own && own.entities > 0) {
      ctx.fillStyle = '#ddd';
      ctx.font = '11px sans-serif';
      ctx.fillText(String(own.entities), sx(x) + 4, sy(y + s) + 13);
    }
  }
  // the world's entities from the feed; those in the joined viewer's own
  // view from the SDK instead (interpolated, its own one predicted)
  const frame: Drawn[] = [];
  const dot = (id: string, x: number, y: number, r: number, fill: string, me: boolean, ring: boolean) => {
    const px = sx(x);
    const py = sy(y);
    ctx.beginPath();
    ctx.arc(px, py, r, 0, Math.PI * 2);
    ctx.fillStyle = fill;
    ctx.fill();
    if (ring) {
      ctx.lineWidth = 2;
      ctx.strokeStyle = ME_COLOR;
      ctx.stroke();
    }
    frame.push({ id, x, y, sx: px, sy: py, r, color: fill, me });
  };
  // (in Play mode the feed's dots have no team: grey until in view)
  const far = playing ? FAR_COLOR : DOT_COLOR;
  for (const [id, x, y] of dots.dots) if (client === null || !client.entities.has(id)) dot(id, x, y, 4, far, false, false);
  if (client !== null) {
    for (const id of client.entities.keys()) {
      if (id === client.entity) continue; // drawn last, on top
      const p = client.renderPosition(id, t);
      if (p === undefined) continue;
      const tag = tagState(client.entities.get(id));
      dot(id, p.x, p.y, tag?.bot ? 3 : 4, tag !== null ? TEAM_COLOR[tag.team] : DOT_COLOR, false, false);
    }
    const id = client.entity;
    const p = id !== null && client.entities.has(id) ? client.renderPosition(id, t) : undefined;
    if (id !== null && p !== undefined) {
      const tag = tagState(client.entities.get(id));
      dot(id, p.x, p.y, 6, tag !== null ? TEAM_COLOR[tag.team] : ME_COLOR, true, tag !== null);
    }
  }
  drawn = frame;
}

/** WASD as arrows. */
const KEY_ALIAS: Record<string, string> = { w: 'ArrowUp', a: 'ArrowLeft', s: 'ArrowDown', d: 'ArrowRight' };

/** Command 1 (tag's TAG: the nearest enemy in range). */
function tag(): void {
  if (client === null || client.entity === null || !client.connected) return;
  client.command(CMD_TAG, new Uint8Array(0));
  game.commands++;
}

function steer(): void {
  if (client === null || client.entity === null || !client.connected) return;
  const dx = (keys.has('ArrowRight') ? SPEED : 0) - (keys.has('ArrowLeft') ? SPEED : 0);
  const dy = (keys.has('ArrowUp') ? SPEED : 0) - (keys.has('ArrowDown') ? SPEED : 0);
  client.move(dx, dy);
}

async function join(): Promise<void> {
  if (client !== null || world === null) return;
  joinButton.disabled = true;
  playButton.disabled = true;
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const c = new TesseraClient({ url: `${proto}//${location.host}/ws`, name: 'map-viewer' });
  await c.connect();
  const ws = world.world;
  const x = (ws.x0 + ws.width / 2) * ws.cell_size - ws.cell_size / 2;
  const y = (ws.y0 + ws.height / 2) * ws.cell_size - ws.cell_size / 2;
  await c.join(x, y, 'map-viewer');
  c.on('close', (e) => note(e.willResume ? 'connection lost: resuming' : 'connection closed'));
  c.on('resumed', () => note('resumed'));
  c.on('cell_changed', (cc) => note(`you crossed into cell ${cc.to?.cx},${cc.to?.cy}`));
  c.on('event', onGameEvent);
  c.on('counters', () => renderGame());
  c.on('delta', () => renderGame());
  client = c;
  joinButton.textContent = 'Joined: arrow keys move';
  renderLegend();
}

/** Play mode: join, then WASD and space too, and the game panel. */
async function play(): Promise<void> {
  if (playing) return;
  playing = true;
  gamePanel.hidden = false;
  await join();
  joinButton.hidden = true;
  playButton.textContent = 'Playing';
  renderGame();
}

window.addEventListener('keydown', (e) => {
  if (playing && e.key === ' ') {
    e.preventDefault();
    if (!e.repeat) tag();
    return;
  }
  const key = playing ? (KEY_ALIAS[e.key.toLowerCase()] ?? e.key) : e.key;
  if (!key.startsWith('Arrow')) return;
  e.preventDefault();
  if (keys.has(key)) return;
  keys.add(key);
  steer();
});
window.addEventListener('keyup', (e) => {
  const key = playing ? (KEY_ALIAS[e.key.toLowerCase()] ?? e.key) : e.key;
  if (!keys.delete(key)) return;
  steer();
});
playButton.addEventListener('click', () => {
  play().catch((e) => {
    note(`play failed: ${e.message}`);
    playing = false;
    joinButton.disabled = false;
    playButton.disabled = false;
  });
});
joinButton.addEventListener('click', () => {
  join().catch((e) => {
    note(`join failed: ${e.message}`);
    joinButton.disabled = false;
  });
});

// for tests and the console
(window as any).tessera = {
  get client() {
    return client;
  },
  get world() {
    return world;
  },
  /** The dots the last frame drew, in drawing order. */
  get drawn() {
    return drawn;
  },
  get dots() {
    return dots;
  },
  /** The world counters the feed carries. */
  get counters() {
    return feedCounters;
  },
  flashes: flashLog,
  feed,
  join,
  play,
  tag,
  game,
  tagState,
};

listen();
requestAnimationFrame(draw);
// /#play: straight into play mode once the world is known
if (location.hash === '#play') {
  const start = setInterval(() => {
    if (world === null) return;
    clearInterval(start);
    playButton.click();
  }, 100);
}
