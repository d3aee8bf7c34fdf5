// The world map's feed (/api/events) without a browser: the entity dots it
// pushes and what they cost the gateway. A gateway subscribes to every live
// cell's state only while a map viewer is connected (its
// tessera_gateway_subscribed_cells gauge goes from its players' cells to
// every live cell and back when the last viewer leaves, and its players keep
// their view), the `dots` event carries each entity once and at most
// gateway.map_max_dots of them with the total, and gateway.map_max_dots=0
// pushes no dots and subscribes to nothing for the map.
import assert from 'node:assert/strict';
import { after, before, it } from 'node:test';
import { TesseraClient } from '../dist/index.js';
import { Stack, freePort, until } from './stack.mjs';

const stack = new Stack();
const players = [];
let capped = null; // gateway.map_max_dots=2
let off = null; // gateway.map_max_dots=0
let ok = false;

before(async () => {
  await stack.start({ gateways: 1 });
  const m2 = await freePort();
  const m3 = await freePort();
  capped = await stack.addGateway(2, [`--gateway.http_listen=127.0.0.1:${m2}`, '--gateway.map_max_dots=2']);
  capped.metrics = `http://127.0.0.1:${m2}/metrics`;
  off = await stack.addGateway(3, [`--gateway.http_listen=127.0.0.1:${m3}`, '--gateway.map_max_dots=0']);
  off.metrics = `http://127.0.0.1:${m3}/metrics`;
});

after(async () => {
  for (const p of players) p.close();
  stack.failed = !ok;
  assert.deepEqual(await stack.stop(), []);
});

async function gauge(gw, name) {
  const r = await fetch(gw.metrics);
  const m = (await r.text()).match(new RegExp(`^${name}\\{[^}]*\\} (\\S+)$`, 'm'));
  if (m === null) throw new Error(`${name} not in ${gw.metrics}`);
  return Number(m[1]);
}

/** An /api/events stream: its events as they come, by kind. */
function viewer(gw) {
  const ctl = new AbortController();
  const v = { events: [], closed: false, close: () => ctl.abort() };
  v.done = (async () => {
    const r = await fetch(`${gw.http}/api/events`, { signal: ctl.signal });
    assert.equal(r.status, 200);
    const dec = new TextDecoder();
    let buf = '';
    try {
      for await (const chunk of r.body) {
        buf += dec.decode(chunk, { stream: true });
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const kind = block.match(/^event: (\w+)$/m)?.[1];
          const data = block.match(/^data: (.*)$/m)?.[1];
          if (kind !== undefined && data !== undefined) v.events.push({ kind, data: JSON.parse(data) });
        }
      }
    } catch (e) {
      if (e.name !== 'AbortError') throw e;
    }
    v.closed = true;
  })();
  return v;
}

const lastDots = (v) => v.events.filter((e) => e.kind === 'dots').at(-1)?.data;

it('subscribes to the world only while a viewer is connected; dots are capped by gateway.map_max_dots', async () => {
  // three players on gateway 1, one on the capped gateway
  for (const [x, y] of [
    [-40, -40],
    [60, 60],
    [150, -150],
  ]) {
    const c = new TesseraClient({ url: stack.gateways[0].url, name: 'npc' });
    await c.connect();
    await c.join(x, y);
    players.push(c);
  }
  const mine = new TesseraClient({ url: capped.url, name: 'local' });
  await mine.connect();
  await mine.join(-150, 150);
  players.push(mine);
  const ids = players.map((p) => p.entity);
  const live = (await stack.world(0)).cells.length; // 16, none split

  // without a viewer: only the local player's area of interest
  const own = await until('the local player\'s cells subscribed', async () => {
    const n = await gauge(capped, 'tessera_gateway_subscribed_cells');
    return n > 0 ? n : null;
  }, 10000);
  assert.ok(own < live, `${own} cells for one player`);
  assert.equal(await gauge(capped, 'tessera_gateway_map_viewers'), 0);

  // a viewer: every live cell, and two dots of the world's four entities
  const v = viewer(capped);
  await until('every live cell subscribed', async () => (await gauge(capped, 'tessera_gateway_subscribed_cells')) === live, 10000);
  assert.equal(await gauge(capped, 'tessera_gateway_map_viewers'), 1);
  await until('dots: 2 of 4', () => lastDots(v)?.total === 4, 10000);
  const d = lastDots(v);
  assert.equal(d.max, 2);
  assert.equal(d.dots.length, 2);
  for (const [id, x, y] of d.dots) {
    assert.ok(ids.includes(id), `dot ${id} is a player`);
    assert.ok(Number.isFinite(x) && Number.isFinite(y));
  }
  assert.equal(new Set(d.dots.map((x) => x[0])).size, 2);
  assert.equal(v.events[0].kind, 'world');
  assert.equal(v.events[0].data.max_dots, 2);
  // the world counters ride along (none kept by this stack's module: [], and no `counters` event)
  assert.deepEqual(v.events[0].data.counters, []);
  assert.ok(!v.events.some((e) => e.kind === 'counters'));

  // a second viewer shares the subscriptions; the last one leaving releases them
  const v2 = viewer(capped);
  await until('the second viewer\'s dots', () => lastDots(v2)?.total === 4, 10000);
  assert.equal(await gauge(capped, 'tessera_gateway_subscribed_cells'), live);
  v.close();
  await v.done;
  await until('one viewer left', async () => (await gauge(capped, 'tessera_gateway_map_viewers')) === 1, 10000);
  assert.equal(await gauge(capped, 'tessera_gateway_subscribed_cells'), live);
  v2.close();
  await v2.done;
  await until('map subscriptions released', async () =>
    (await gauge(capped, 'tessera_gateway_map_viewers')) === 0 &&
    (await gauge(capped, 'tessera_gateway_subscribed_cells')) === own, 10000);
  // the local player still sees its world: its own moves come back
  const x0 = mine.me.x;
  mine.move(20, 0);
  await until('the local player moving', () => mine.me !== null && mine.me.x > x0 + 5, 10000);
  mine.move(0, 0);

  // map_max_dots=0: the map without dots costs no subscription
  const v3 = viewer(off);
  await until('a world event', () => v3.events.length > 0, 10000);
  assert.equal(v3.events[0].data.max_dots, 0);
  assert.equal(await gauge(off, 'tessera_gateway_map_viewers'), 1);
  // the feed's workers events come every 100 ms as heartbeats change: wait
  // for a few, then no dots were pushed and nothing is subscribed
  await until('three workers events', () => v3.events.filter((e) => e.kind === 'workers').length >= 3, 10000);
  assert.equal(v3.events.filter((e) => e.kind === 'dots').length, 0);
  assert.equal(await gauge(off, 'tessera_gateway_subscribed_cells'), 0);
  v3.close();
  await v3.done;
  ok = true;
});
