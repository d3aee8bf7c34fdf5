// The example game in the browser: a real stack whose workers load
// examples/tag (build/libtag.so, 32 bots), the world map opened as /#play
// in headless Chromium. The page joins the game, the test walks the player
// to the nearest bot of the other team with the arrow keys (the bots are on
// the map), presses space, and sees the player's score go from 0 to 1 in
// the side panel, with the "you tagged" event, and its team's score (the
// world counter the gateway sums over the world) go up by 1. A screenshot goes to
// $TESSERA_ARTIFACT_DIR (CI keeps it).
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, it } from 'node:test';
import puppeteer from 'puppeteer-core';
import { Stack, until } from './stack.mjs';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const here = dirname(fileURLToPath(import.meta.url));
const binDir = process.env.TESSERA_BIN_DIR ?? resolve(here, '..', '..', '..', 'build');
const artifacts = process.env.TESSERA_ARTIFACT_DIR ?? join(process.cwd(), '..', '..', 'build');
const TAG_RANGE = 12;

/** The usual stack, with both workers playing tag. */
class TagStack extends Stack {
  async start() {
    await this.startServers();
    this.spawn('orch', 'tessera-orch', []);
    const game = [
      `--worker.game=${join(binDir, 'libtag.so')}`,
      '--worker.game_config=bots=32',
      // neighbours see each other's entities as far as a tag reaches
      `--ghost.margin=${TAG_RANGE}`,
    ];
    this.spawn('w1', 'tessera-worker', ['--worker.id=w1', ...game]);
    this.spawn('w2', 'tessera-worker', ['--worker.id=w2', ...game]);
    await this.addGateway(1);
    await this.waitReady();
  }
}

const stack = new TagStack();
let browser = null;
let profile = null;
let ok = false;

before(async () => {
  assert.ok(existsSync(join(binDir, 'libtag.so')), `${binDir}/libtag.so is not built`);
  await stack.start();
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
  if (browser !== null) await browser.close();
  if (profile !== null) rmSync(profile, { recursive: true, force: true });
  stack.failed = !ok;
  assert.deepEqual(await stack.stop(), []);
});

const text = (page, sel) => page.$eval(sel, (e) => e.textContent).catch(() => null);

/** The player and the nearest bot of the other team in view, from the page. */
const situation = (page) =>
  page.evaluate(() => {
    const t = window.tessera;
    const c = t.client;
    const me = c?.me;
    const mine = me ? t.tagState(me) : null;
    if (!me || !mine) return null;
    let best = null;
    for (const e of c.entities.values()) {
      const s = t.tagState(e);
      if (e.id === me.id || s === null || !s.bot || s.team === mine.team) continue;
      const d = Math.hypot(e.x - me.x, e.y - me.y);
      if (best === null || d < best.d) best = { id: e.id, x: e.x, y: e.y, d };
    }
    return { x: me.x, y: me.y, team: mine.team, tags: mine.tags, bot: best };
  });

it('joins the tag game in play mode, walks to a bot, tags it and sees the score change', async () => {
  const page = await browser.newPage();
  await page.setViewport({ width: 1100, height: 700 });
  const logs = [];
  page.on('console', (m) => logs.push(m.text()));
  page.on('pageerror', (e) => logs.push(String(e)));
  await page.goto(stack.gateways[0].http + '/#play', { waitUntil: 'load' });

  await until('play mode joined', () => page.evaluate(() => !!window.tessera.client?.entity), 20000);
  // tag's state bytes reach the page: the panel shows the teams and a score of 0
  await until('own score shown', async () => (await text(page, '#score-me')) === '0', 20000);
  await until('a bot of the other team in view', async () => (await situation(page))?.bot != null, 30000);

  // walk to it with the arrow keys, press space when it is in range; the
  // bot roams, and a bot may tag the player first (it changes team): the
  // target is chosen again each step
  const held = new Set();
  const hold = async (key, on) => {
    if (on && !held.has(key)) {
      held.add(key);
      await page.keyboard.down(key);
    } else if (!on && held.has(key)) {
      held.delete(key);
      await page.keyboard.up(key);
    }
  };
  const deadline = Date.now() + 90000;
  let tags = 0;
  let spaces = 0;
  let lastSpace = 0;
  let before = null;
  while (tags === 0) {
    assert.ok(Date.now() < deadline, `no tag in 90 s (${spaces} presses of space)`);
    const s = await situation(page);
    if (s === null || s.bot === null) {
      for (const k of [...held]) await hold(k, false);
      await new Promise((r) => setTimeout(r, 100));
      continue;
    }
    const dx = s.bot.x - s.x;
    const dy = s.bot.y - s.y;
    await hold('ArrowRight', dx > 2);
    await hold('ArrowLeft', dx < -2);
    await hold('ArrowUp', dy > 2);
    await hold('ArrowDown', dy < -2);
    if (s.bot.d < TAG_RANGE / 2 && Date.now() - lastSpace > 700) {
      // one press, then its outcome (a point, or "no enemy in range")
      // before anything else, so a second press cannot score too
      for (const k of [...held]) await hold(k, false);
      const misses = await page.evaluate(() => window.tessera.game.events.filter((e) => e.type === 4).length);
      // the team scores in the panel (world counters) before this press
      before = { team: s.team, red: Number(await text(page, '#score-red')), blue: Number(await text(page, '#score-blue')) };
      await page.keyboard.press('Space');
      spaces++;
      lastSpace = Date.now();
      await until(
        'a point or a miss',
        async () =>
          ((await situation(page))?.tags ?? 0) > 0 ||
          (await page.evaluate(() => window.tessera.game.events.filter((e) => e.type === 4).length)) > misses,
        3000,
        50,
      ).catch(() => {});
    }
    await new Promise((r) => setTimeout(r, 50));
    tags = (await situation(page))?.tags ?? 0;
  }
  for (const k of [...held]) await hold(k, false);

  // the score in the panel, and the event that says so
  await until('own score 1 in the panel', async () => (await text(page, '#score-me')) === '1', 10000);
  await until('"you tagged" event', () => page.evaluate(() => window.tessera.game.events.some((e) => e.type === 1)), 10000);
  assert.match((await text(page, '#events')) ?? '', /you tagged bot-\d+: \+1/);
  // the team score in the panel (the world counter of the player's team,
  // summed by the gateway over the world) goes up by exactly 1
  assert.ok(before !== null && Number.isInteger(before.red) && Number.isInteger(before.blue), JSON.stringify(before));
  const sel = before.team === 1 ? '#score-red' : '#score-blue';
  const want = String((before.team === 1 ? before.red : before.blue) + 1);
  await until(`${sel} ${want} in the panel`, async () => (await text(page, sel)) === want, 10000);
  const g = await page.evaluate(() => ({ red: window.tessera.game.red, blue: window.tessera.game.blue, counters: window.tessera.client.counters }));
  assert.equal(before.team === 1 ? g.red : g.blue, Number(want), JSON.stringify(g));

  mkdirSync(artifacts, { recursive: true });
  await page.screenshot({ path: join(artifacts, 'browser-tag.png') });
  assert.deepEqual(logs.filter((l) => /error/i.test(l)), []);
  ok = true;
});
