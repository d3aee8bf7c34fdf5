// The world map in headless Chromium against a real stack: the page shows
// every cell and worker and the world's entity count, pushed to it (one
// /api/events stream, no polling), a handover flashes the moment it
// happens, a split cell is drawn as its four children, the viewer joins, sees the players near it, moves with the arrow
// keys and sees its own entity move. A screenshot goes to
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

it('shows cells, workers and entities; the viewer joins and moves with the arrow keys', async () => {
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

  // a handover shows as it happens, pushed: the page asked for the feed once
  const w = await stack.world(0);
  const w1cell = w.workers.find((x) => x.id === 'w1').cells[0].key;
  const out = await stack.ctl(['handover', w1cell, 'w2']);
  assert.match(out, /^ok/m);
  await until(`handover of ${w1cell} noted`, async () => ((await text(page, '#events')) ?? '').includes(`handover: cell ${w1cell} w1 → w2`), 10000);
  // a split shows its four children (depth 1) in place of the parent
  const far = '0.1.1.0.0'; // holds the far player at (150, 150)
  assert.match(await stack.ctl(['split', far]), /^ok/m);
  await until('legend: 19 live cells after the split', async () => (await text(page, '#legend-cells')) === '19', 15000);
  const depth1 = await page.evaluate(() => window.tessera.world.cells.filter((c) => c.depth === 1 && c.state === 'active').length);
  assert.equal(depth1, 4);
  assert.ok(((await text(page, '#events')) ?? '').includes(`cell ${far} split`));

  // one whole world, then changes only: registry changes and heartbeats
  // (a worker's heartbeat is pushed when it changes: wait for a second one)
  await until('a second workers event', async () => (await page.evaluate(() => window.tessera.feed.workers)) >= 2, 10000);
  const feed = await page.evaluate(() => ({ ...window.tessera.feed }));
  assert.equal(feed.worlds, 1);
  assert.ok(feed.cells >= 1 && feed.workers >= 2, JSON.stringify(feed));
  assert.equal(requests.filter((r) => r === '/api/world').length, 0);

  await page.click('#join');
  await until('viewer joined', () => page.evaluate(() => !!window.tessera.client?.entity), 10000);
  await until('legend: 4 entities', async () => (await text(page, '#legend-entities')) === '4', 15000);
  // the viewer sees itself and the two players near it, not the far one
  await until('three dots near the viewer', () => page.evaluate(() => window.tessera.client.entities.size === 3), 10000);

  const start = await page.evaluate(() => ({ ...window.tessera.client.me }));
  await page.keyboard.down('ArrowRight');
  await until('own entity moving right', () => page.evaluate((x0) => window.tessera.client.me.x > x0 + 20, start.x), 10000);
  await page.keyboard.up('ArrowRight');
  await until('own entity stopped', () => page.evaluate(() => window.tessera.client.me.vx === 0), 10000);
  const end = await page.evaluate(() => ({ ...window.tessera.client.me }));
  assert.ok(end.x > start.x + 20, `moved from ${start.x} to ${end.x}`);
  assert.equal(end.y, start.y);
  await page.keyboard.down('ArrowUp');
  await until('own entity moving up', () => page.evaluate((y0) => window.tessera.client.me.y > y0 + 10, end.y), 10000);
  await page.keyboard.up('ArrowUp');

  mkdirSync(artifacts, { recursive: true });
  await page.screenshot({ path: join(artifacts, 'browser-map.png') });
  assert.deepEqual(logs.filter((l) => /error/i.test(l)), []);
  ok = true;
});
