// The world map in headless Chromium against a real stack: the page shows
// every cell and worker and the world's entity count, pushed to it (one
// /api/events stream, no polling); before joining it draws every entity of
// the world as a dot (read back from the canvas, not only from the legend),
// and a player moving moves its dot (a gateway with gateway.map_max_dots
// below the count draws that many and says the dots are capped); a handover flashes the moment it
// happens, a split cell is drawn as its four children, the legend's inputs/s
// is above zero while players move; the viewer joins, moves with the arrow
// keys and sees its own dot move; a worker killed with SIGKILL flashes its
// cells as recovered, and the dots come back. A screenshot goes to
// $TESSERA_ARTIFACT_DIR (CI keeps it).
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, it } from 'node:test';
import puppeteer from 'puppeteer-core';
import { TesseraClient } from '../dist/index.js';
import { Stack, until } from './stack.mjs';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const artifacts = process.env.TESSERA_ARTIFACT_DIR ?? join(process.cwd(), '..', '..', 'build');
// the map's dot colours (src/map/main.ts): other entities, the viewer's own
const DOT_RGB = [0x7f, 0xd3, 0xff];
const ME_RGB = [0xff, 0xd4, 0x00];
const stack = new Stack();
const players = [];
let browser = null;
let profile = null;
let ok = false;

before(async () => {
  await stack.start({ gateways: 1 });
  profile = mkdtempSync(join(tmpdir(), 'tessera-chromium-'));
  browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    userDataDir: profile,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
});

after(async () => {
  for (const p of players) p.close();
  if (browser !== null) await browser.close();
  if (profile !== null) rmSync(profile, { recursive: true, force: true });
  stack.failed = !ok;
  assert.deepEqual(await stack.stop(), []);
});

const text = (page, sel) => page.$eval(sel, (e) => e.textContent).catch(() => null);

/** The dots the last frame drew, each with the colour of the canvas pixel at
 * its centre: read in one evaluation, so the pixels are that frame's. */
const drawnDots = (page) =>
  page.evaluate(() => {
    const canvas = document.getElementById('map');
    const g = canvas.getContext('2d');
    const dpr = window.devicePixelRatio || 1;
    return window.tessera.drawn.map((d) => {
      const px = g.getImageData(Math.floor(d.sx * dpr), Math.floor(d.sy * dpr), 1, 1).data;
      return { id: d.id, x: d.x, y: d.y, sx: d.sx, sy: d.sy, me: d.me, rgb: [px[0], px[1], px[2]] };
    });
  });

/** The drawn dots if they are exactly the entities `ids`, each painted in
 * its colour (the viewer's own in yellow), else null. */
async function dotsOf(page, ids, me = null) {
  const dots = await drawnDots(page);
  const got = dots.map((d) => d.id).sort();
  if (JSON.stringify(got) !== JSON.stringify([...ids].sort())) return null;
  for (const d of dots) {
    if (d.me !== (d.id === me)) return null;
    if (JSON.stringify(d.rgb) !== JSON.stringify(d.me ? ME_RGB : DOT_RGB)) return null;
  }
  return new Map(dots.map((d) => [d.id, d]));
}

it('draws the world and its entities; the viewer joins, moves, and sees a recovery', async () => {
  // two players next to where the viewer spawns (-50, -50), one far away
  for (const [x, y] of [
    [-40, -40],
    [-60, -30],
    [150, 150],
  ]) {
    const c = new TesseraClient({ url: stack.gateways[0].url, name: 'npc' });
    await c.connect();
    await c.join(x, y);
    players.push(c);
  }
  const ids = players.map((p) => p.entity);
  const page = await browser.newPage();
  await page.setViewport({ width: 1100, height: 700 });
  const logs = [];
  page.on('console', (m) => logs.push(m.text()));
  page.on('pageerror', (e) => logs.push(String(e)));
  const requests = [];
  page.on('request', (r) => requests.push(new URL(r.url()).pathname));
  await page.goto(stack.gateways[0].http + '/', { waitUntil: 'load' });

  await until('legend: 16 cells, 2 workers, 3 entities', async () =>
    (await text(page, '#legend-cells')) === '16' &&
    (await text(page, '#legend-workers')) === '2' &&
    (await text(page, '#legend-entities')) === '3', 20000);

  // before joining, every entity of the world is a dot on the canvas
  await until('the three players drawn as dots', () => dotsOf(page, ids), 15000);
  assert.equal(await text(page, '#legend-dots'), '3');
  assert.equal(await page.$('#legend-capped'), null);
  // a player that moves moves its dot (the far one, right)
  const far0 = (await dotsOf(page, ids)).get(ids[2]);
  players[2].move(30, 0);
  await until('the far player\'s dot moving right', async () => {
    const d = (await dotsOf(page, ids))?.get(ids[2]);
    return d !== undefined && d.sx > far0.sx + 20 && d.x > far0.x + 10;
  }, 15000);
  players[2].move(0, 0);
  // a gateway with gateway.map_max_dots=2 draws two of them and says so
  const capped = await stack.addGateway(2, ['--gateway.map_max_dots=2']);
  const page2 = await browser.newPage();
  await page2.setViewport({ width: 1100, height: 700 });
  page2.on('pageerror', (e) => logs.push(String(e)));
  await page2.goto(capped.http + '/', { waitUntil: 'load' });
  await until('capped legend: 2 of 3 dots', async () => ((await text(page2, '#legend-capped')) ?? '').includes('2 of 3'), 15000);
  assert.equal(await text(page2, '#legend-dots'), '2');
  const two = await drawnDots(page2);
  assert.equal(two.length, 2);
  for (const d of two) {
    assert.ok(ids.includes(d.id));
    assert.deepEqual(d.rgb, DOT_RGB);
  }
  await page2.close();

  // a handover shows as it happens, pushed: the page asked for the feed once
  const w = await stack.world(0);
  const w1cell = w.workers.find((x) => x.id === 'w1').cells[0].key;
  const out = await stack.ctl(['handover', w1cell, 'w2']);
  assert.match(out, /^ok/m);
  await until(`handover of ${w1cell} noted`, async () => ((await text(page, '#events')) ?? '').includes(`handover: cell ${w1cell} w1 → w2`), 10000);
  const flashed = await page.evaluate(() => window.tessera.flashes.map((f) => [f.key, f.kind, f.from, f.to]));
  assert.deepEqual(flashed, [[w1cell, 'handover', 'w1', 'w2']], JSON.stringify(flashed));
  // a split shows its four children (depth 1) in place of the parent
  const far = '0.1.1.0.0'; // holds the far player at (150, 150)
  assert.match(await stack.ctl(['split', far]), /^ok/m);
  await until('legend: 19 live cells after the split', async () => (await text(page, '#legend-cells')) === '19', 15000);
  const depth1 = await page.evaluate(() => window.tessera.world.cells.filter((c) => c.depth === 1 && c.state === 'active').length);
  assert.equal(depth1, 4);
  assert.ok(((await text(page, '#events')) ?? '').includes(`cell ${far} split`));
  // the far player's dot is still drawn, now from its child cell
  await until('three dots after the split', () => dotsOf(page, ids), 15000);

  // one whole world, then changes only: registry changes, heartbeats, dots
  // (a worker's heartbeat is pushed when it changes: wait for a second one)
  await until('a second workers event', async () => (await page.evaluate(() => window.tessera.feed.workers)) >= 2, 10000);
  const feed = await page.evaluate(() => ({ ...window.tessera.feed }));
  assert.equal(feed.worlds, 1, JSON.stringify(feed));
  assert.ok(feed.cells >= 1 && feed.workers >= 2 && feed.dots >= 1, JSON.stringify(feed));
  assert.equal(requests.filter((r) => r === '/api/world').length, 0);

  // inputs/s counts the inputs the workers apply while players move
  await until('legend: inputs/s 0 while nobody moves', async () => (await text(page, '#legend-inputs')) === '0', 10000);
  let dir = 1;
  const jitter = setInterval(() => {
    dir = -dir;
    for (const p of players.slice(0, 2)) p.move(5 * dir, 0);
  }, 50);
  try {
    await until('legend: inputs/s above 0', async () => Number(await text(page, '#legend-inputs')) > 0, 10000);
  } finally {
    clearInterval(jitter);
    for (const p of players.slice(0, 2)) p.move(0, 0);
  }

  await page.click('#join');
  await until('viewer joined', () => page.evaluate(() => !!window.tessera.client?.entity), 10000);
  const me = await page.evaluate(() => window.tessera.client.entity);
  const all = [...ids, me];
  await until('legend: 4 entities', async () => (await text(page, '#legend-entities')) === '4', 15000);
  // the viewer sees itself and the two players near it in its own view, and
  // still every entity of the world on the map, its own dot in yellow
  await until('three entities near the viewer', () => page.evaluate(() => window.tessera.client.entities.size === 3), 10000);
  await until('four dots, the own one yellow', () => dotsOf(page, all, me), 10000);

  // the own dot moves on the canvas, and the entity with it (its
  // authoritative state, as the worker applied the inputs)
  const start = await page.evaluate(() => ({ ...window.tessera.client.me }));
  const startDot = (await dotsOf(page, all, me)).get(me);
  await page.keyboard.down('ArrowRight');
  await until('own dot moving right', async () => {
    const d = (await dotsOf(page, all, me))?.get(me);
    return d !== undefined && d.sx > startDot.sx + 25 && (await page.evaluate(() => window.tessera.client.me.x)) > start.x + 20;
  }, 10000);
  await page.keyboard.up('ArrowRight');
  await until('own entity stopped', () => page.evaluate(() => window.tessera.client.me.vx === 0), 10000);
  const end = await page.evaluate(() => ({ ...window.tessera.client.me }));
  assert.ok(end.x > start.x + 20, `moved from ${start.x} to ${end.x}`);
  assert.equal(end.y, start.y, `y ${start.y} -> ${end.y}`);
  const right = (await dotsOf(page, all, me)).get(me);
  await page.keyboard.down('ArrowUp');
  await until('own dot moving up', async () => {
    const d = (await dotsOf(page, all, me))?.get(me);
    return d !== undefined && d.y > right.y + 10 && d.sy < right.sy - 10; // screen y grows downwards
  }, 10000);
  await page.keyboard.up('ArrowUp');

  // a crash: w1 is killed, its cells go to w2 and flash as recovered; the
  // entities come back from w1's checkpoints and input streams
  const w1cells = (await stack.world(0)).workers.find((x) => x.id === 'w1').cells.map((c) => c.key);
  assert.ok(w1cells.length > 0);
  await stack.kill('w1');
  await until('recovery of w1\'s cells flashed', () => page.evaluate((n) =>
    window.tessera.flashes.filter((f) => f.kind === 'recovery' && f.from === 'w1' && f.to === 'w2').length === n, w1cells.length), 20000);
  const recovered = await page.evaluate(() => window.tessera.flashes.filter((f) => f.kind === 'recovery').map((f) => f.key));
  assert.deepEqual(recovered.sort(), [...w1cells].sort());
  assert.ok(((await text(page, '#events')) ?? '').includes('recovery: cell '));
  await until('legend: 1 worker, 4 entities', async () =>
    (await text(page, '#legend-workers')) === '1' && (await text(page, '#legend-entities')) === '4', 20000);
  await until('four dots after the recovery', () => dotsOf(page, all, me), 15000);

  mkdirSync(artifacts, { recursive: true });
  await page.screenshot({ path: join(artifacts, 'browser-map.png') });
  const errors = logs.filter((l) => /error/i.test(l));
  assert.deepEqual(errors, [], JSON.stringify(errors));
  ok = true;
});
