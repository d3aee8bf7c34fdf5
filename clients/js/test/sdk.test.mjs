// The SDK against a real stack (nats-server, redis-server, orch, w1, w2 and
// two gateways with WebSocket listeners): join, ping, cross cells and
// workers, acks for prediction, resume on another gateway with every input
// applied exactly once, game commands and events (the workers load the echo
// test module, tests/modules/echo.c), and the WebSocket listener's refusals.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import WebSocket from 'ws';
import { EntityFlags, ErrorCode, TesseraClient, decodeServerFrame, encodeClientFrame } from '../dist/index.js';
import { Stack, testModule, until } from './stack.mjs';

const stack = new Stack();
const AUTH_SECRET = 'tessera-js-auth';
let ok = true;

before(async () => {
  // logins optional (no gateway.auth.required), tokens checked when given
  await stack.start({
    gateways: 2,
    gatewayArgs: [`--gateway.auth.secret=${AUTH_SECRET}`],
    workerArgs: [`--worker.game=${testModule('echo')}`],
  });
});

after(async () => {
  stack.failed = !ok;
  assert.deepEqual(await stack.stop(), []);
});

function track(t) {
  t.after?.(() => {});
}

async function client(gw = 0, opts = {}) {
  const c = new TesseraClient({ url: stack.gateways[gw].url, name: 'js-test', ...opts });
  await c.connect();
  return c;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Waits until the own entity shows `applied` inputs and `seq` acked, then checks it stays so for a second. */
async function expectApplied(c, applied, seq) {
  await until(`inputs_applied ${applied}, ack ${seq}`, () => c.me && c.me.inputs_applied >= applied && c.ackedSeq >= seq, 15000, 50);
  await sleep(1000);
  assert.equal(c.me.inputs_applied, applied);
  assert.equal(c.me.last_input_seq, seq);
  assert.equal(c.ackedSeq, seq);
}

describe('sdk', () => {
  it('joins, pings and sees its entity move', async (t) => {
    try {
      const c = await client();
      const snap = await c.join(-30, 50);
      assert.notEqual(snap.entity, '0');
      assert.equal(c.entity, snap.entity);
      assert.equal(c.cell.cx, -1);
      assert.equal(c.cell.cy, 0);
      const rtt = await c.ping();
      assert.ok(rtt >= 0 && rtt < 5000);
      const seq = c.move(10, 0);
      await expectApplied(c, 2, seq);
      assert.ok(c.me.x > -30, `x ${c.me.x} moved`);
      assert.equal(c.me.vx, 10);
      c.close();
    } catch (e) {
      ok = false;
      throw e;
    }
  });

  it('crosses cells and workers on one connection, every input applied once, acks drain the prediction', async () => {
    try {
      const c = await client();
      await c.join(-30, 50);
      const changes = [];
      c.on('cell_changed', (cc) => changes.push(cc));
      let acksSeen = 0;
      c.on('delta', (d) => {
        if (d.last_input_seq > 0) acksSeen++;
      });
      let sent = 1;
      for (let i = 0; i < 40; i++) {
        c.move(25, 0);
        sent++;
        await sleep(100);
      }
      const last = c.move(0, 0);
      sent++;
      await until('cell change', () => changes.length > 0, 10000);
      assert.equal(changes.at(-1).to.cx, 0);
      assert.equal(changes.at(-1).to.cy, 0);
      await expectApplied(c, sent, last);
      assert.ok(c.me.x > 0, `x ${c.me.x} in cell (0, 0)`);
      assert.equal(c.cell.cx, 0);
      assert.ok(acksSeen > 0);
      // every input acknowledged: nothing left to replay, prediction = server
      assert.equal(c.predictor.unacked().length, 0);
      const p = c.predictor.predict(performance.now() + 1000);
      assert.ok(Math.abs(p.x - c.me.x) < 1e-6 && Math.abs(p.y - c.me.y) < 1e-6);
      // a remote player shows up in the interpolation buffer
      const other = await client(1);
      await other.join(c.me.x + 5, c.me.y);
      await until('other player seen', () => c.entities.has(other.entity) && c.interp.sample(other.entity) !== undefined, 10000);
      other.close();
      c.close();
    } catch (e) {
      ok = false;
      throw e;
    }
  });

  it('resumes on another gateway after the connection drops mid-walk, every input applied exactly once', async () => {
    try {
      const c = await client(0, { backoff: { initialMs: 50, maxMs: 500, maxAttempts: 20 } });
      const snap = await c.join(-150, -150);
      const entity = snap.entity;
      assert.ok(c.resumeToken.length > 0, 'Welcome carried a resume token');
      let sent = 1;
      for (let i = 0; i < 10; i++) {
        c.move(20, 0);
        sent++;
        await sleep(50);
      }
      const resumed = c.waitFor('resumed', () => true, 20000);
      // the next connection goes to the second gateway
      c.opts.url = stack.gateways[1].url;
      c.drop();
      const w = await resumed;
      assert.equal(w.entity, entity);
      assert.equal(c.entity, entity);
      assert.equal(c.connections, 2);
      for (let i = 0; i < 10; i++) {
        c.move(0, 20);
        sent++;
        await sleep(50);
      }
      const last = c.move(0, 0);
      sent++;
      await expectApplied(c, sent, last);
      assert.ok(c.me.x > -150 && c.me.y > -150, 'the entity kept walking from where it was');
      c.close();
    } catch (e) {
      ok = false;
      throw e;
    }
  });

  it('a second login of the same player on another gateway takes its entity over', async () => {
    try {
      const token = (await stack.ctl(['token', '--sub', 'zoe', '--secret', AUTH_SECRET])).trim();
      const a = await client(0, { token });
      const snap = await a.join(100, -150);
      assert.equal(BigInt(snap.entity) >> 63n, 1n, 'a player entity id');
      const seqA = a.move(10, 0);
      await until('first login acked', () => a.ackedSeq >= seqA, 10000);
      const closed = a.waitFor('close', () => true, 10000);
      const b = await client(1, { token });
      await b.join(-150, 150); // elsewhere: the entity stays where it is
      assert.equal(b.entity, snap.entity);
      const c = await closed;
      assert.equal(c.willResume, false, 'the replaced connection does not fight back');
      const seqB = b.move(0, 10);
      assert.ok(seqB > seqA, `numbering goes on above ${seqA}: ${seqB}`);
      await until('second login acked', () => b.ackedSeq >= seqB && b.me?.vy === 10, 10000);
      assert.ok(b.me.x > 100 && b.me.y > -160 && b.me.y < 0, `kept its place: ${b.me.x}, ${b.me.y}`);
      b.close();
    } catch (e) {
      ok = false;
      throw e;
    }
  });

  it('sends game commands, applied once and acked, and receives the module\'s events', async () => {
    try {
      const a = await client();
      await a.join(60, -150, { payload: 'hi' });
      await until('own state', () => a.me !== null, 10000, 20);
      // the echo module: state = 4-byte command count + the join payload
      assert.deepEqual([...a.me.state], [0, 0, 0, 0, 0x68, 0x69]);
      assert.equal(a.me.flags, EntityFlags.PLAYER);
      const b = await client(1);
      await b.join(75, -150);
      const bEvents = [];
      b.on('event', (e) => bEvents.push(e));

      // to a only
      const toA = a.waitFor('event', (e) => e.type === 1);
      const s1 = a.command(1, new Uint8Array([1, 2, 3]));
      const e1 = await toA;
      assert.equal(e1.entity, a.entity);
      assert.equal(e1.positional, false);
      assert.deepEqual([...e1.payload], [1, 2, 3]);
      assert.ok(e1.tick > 0);
      // at a's position: a and b
      const atA = a.waitFor('event', (e) => e.type === 2);
      const atB = b.waitFor('event', (e) => e.type === 2);
      a.command(2, 'boom');
      const [e2a, e2b] = await Promise.all([atA, atB]);
      assert.equal(e2a.positional, true);
      assert.equal(e2a.x, 60);
      assert.equal(e2a.y, -150);
      assert.equal(new TextDecoder().decode(e2b.payload), 'boom');
      await b.ping();
      assert.equal(bEvents.length, 1, 'b got the positional event only');

      // state commands between moves: each applied once, acked like moves
      let sent = 3; // join + 2 commands
      for (let i = 0; i < 6; i++) {
        if (i % 2 === 0) a.command(3, `v${i}`);
        else a.move(1, 0);
        sent++;
      }
      const last = a.command(3, 'last');
      sent++;
      assert.ok(last > s1);
      await expectApplied(a, sent, last);
      assert.equal(a.me.state[0], 6, '6 commands applied');
      assert.equal(new TextDecoder().decode(a.me.state.subarray(4)), 'last');
      assert.equal(a.pendingCommands.length, 0);
      assert.throws(() => a.command(3, new Uint8Array(257)), RangeError);
      a.close();
      b.close();
    } catch (e) {
      ok = false;
      throw e;
    }
  });

  it('sends unacknowledged commands again after a resume, each applied once', async () => {
    try {
      const c = await client(0, { backoff: { initialMs: 50, maxMs: 500, maxAttempts: 20 } });
      await c.join(-60, -150);
      let last = 0;
      for (let i = 0; i < 20; i++) last = c.command(3, `c${i}`);
      // drop at once: some are acknowledged, some maybe applied, some not sent
      const resumed = c.waitFor('resumed', () => true, 20000);
      c.opts.url = stack.gateways[1].url;
      c.drop();
      await resumed;
      await expectApplied(c, 21, last);
      assert.equal(c.me.state[0], 20, 'every command applied exactly once');
      assert.equal(new TextDecoder().decode(c.me.state.subarray(4)), 'c19');
      assert.equal(c.pendingCommands.length, 0);
      c.close();
    } catch (e) {
      ok = false;
      throw e;
    }
  });

  it('refuses a forged resume token', async () => {
    try {
      const c = await client(0, { autoResume: false });
      c.resumeToken = 'forged.token';
      c.entity = '1';
      const err = c.waitFor('error', (e) => e.fatal);
      c.send({ hello: { protocol_version: 1, resume_token: 'forged.token' } });
      const e = await err;
      assert.equal(e.code, ErrorCode.RESUME_REFUSED);
      c.close();
    } catch (e) {
      ok = false;
      throw e;
    }
  });
});

/** A raw WebSocket to gateway 0; resolves frames and the close. */
function raw(opts = {}) {
  const ws = new WebSocket(stack.gateways[0].url, opts);
  ws.binaryType = 'arraybuffer';
  const frames = [];
  const closed = new Promise((r) => ws.on('close', (code) => r(code)));
  ws.on('message', (d) => frames.push(decodeServerFrame(new Uint8Array(d))));
  const opened = new Promise((res, rej) => {
    ws.on('open', res);
    ws.on('unexpected-response', (req, resp) => rej(Object.assign(new Error('refused'), { status: resp.statusCode })));
    ws.on('error', rej);
  });
  return { ws, frames, closed, opened };
}

describe('websocket listener', () => {
  it('answers a text message with ERROR_MALFORMED, then closes 1003', async () => {
    try {
      const r = raw();
      await r.opened;
      r.ws.send('hello');
      assert.equal(await r.closed, 1003);
      assert.equal(r.frames.at(-1).error.code, ErrorCode.MALFORMED);
      assert.equal(r.frames.at(-1).error.fatal, true);
    } catch (e) {
      ok = false;
      throw e;
    }
  });

  it('answers an oversized message with ERROR_OVERSIZED, then closes 1009', async () => {
    try {
      const r = raw();
      await r.opened;
      r.ws.send(new Uint8Array(65 * 1024 + 1));
      assert.equal(await r.closed, 1009);
      assert.equal(r.frames.at(-1).error.code, ErrorCode.OVERSIZED);
    } catch (e) {
      ok = false;
      throw e;
    }
  });

  it('refuses a message at its frame header and first payload byte: ERROR_OVERSIZED, then closes 1009', async () => {
    try {
      const r = raw();
      await r.opened;
      // binary, FIN, masked, 64-bit length 10 MiB, the mask key, one payload byte
      r.ws._socket.write(Buffer.from([0x82, 0xff, 0, 0, 0, 0, 0, 0xa0, 0, 0, 1, 2, 3, 4, 9]));
      assert.equal(await r.closed, 1009);
      assert.equal(r.frames.at(-1).error.code, ErrorCode.OVERSIZED);
      assert.equal(r.frames.at(-1).error.fatal, true);
    } catch (e) {
      ok = false;
      throw e;
    }
  });

  it('answers a frame RFC 6455 forbids with ERROR_MALFORMED, then closes 1002', async () => {
    try {
      const r = raw();
      await r.opened;
      r.ws._socket.write(Buffer.from([0x82, 0x02, 0x08, 0x01])); // unmasked
      assert.equal(await r.closed, 1002);
      assert.equal(r.frames.at(-1).error.code, ErrorCode.MALFORMED);
    } catch (e) {
      ok = false;
      throw e;
    }
  });

  it('answers bytes that are no ClientFrame with ERROR_MALFORMED; other players keep playing', async () => {
    try {
      const good = await client();
      await good.join(50, 50);
      const r = raw();
      await r.opened;
      r.ws.send(new Uint8Array([0xff, 0xff, 0xff, 0xff, 0x0f]));
      await r.closed;
      assert.equal(r.frames.at(-1).error.code, ErrorCode.MALFORMED);
      const seq = good.move(1, 0);
      await until('good player acked', () => good.ackedSeq >= seq, 10000);
      assert.ok((await good.ping()) >= 0);
      good.close();
    } catch (e) {
      ok = false;
      throw e;
    }
  });

  it('refuses an Origin that is not the page itself', async () => {
    try {
      const r = raw({ origin: 'https://evil.example' });
      await assert.rejects(r.opened, (e) => e.status === 403);
      const same = raw({ origin: `http://127.0.0.1:${stack.gateways[0].wsPort}` });
      await same.opened;
      same.ws.send(encodeClientFrame(1, { ping: { client_time_us: 7 } }));
      await until('pong', () => same.frames.some((f) => f.pong?.client_time_us === 7), 5000);
      same.ws.close();
    } catch (e) {
      ok = false;
      throw e;
    }
  });

  it('serves the map page and the world feed', async () => {
    try {
      const page = await fetch(stack.gateways[0].http + '/');
      assert.equal(page.status, 200);
      assert.match(page.headers.get('content-type'), /text\/html/);
      const w = await stack.world(0);
      assert.equal(w.cells.length, 16);
      assert.equal(w.workers.length, 2);
      assert.equal((await fetch(stack.gateways[0].http + '/nope.js')).status, 404);
    } catch (e) {
      ok = false;
      throw e;
    }
  });
});
