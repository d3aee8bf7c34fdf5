// The SDK's pure helpers: interpolation of remote entities and prediction
// with reconciliation of the own entity (no server needed).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { InterpolationBuffer, Predictor, decodeServerFrame, encodeClientFrame } from '../dist/index.js';

const st = (id, x, y) => ({ id, x, y, vx: 0, vy: 0, last_input_seq: 0, inputs_applied: 0, name: '' });

describe('InterpolationBuffer', () => {
  it('draws delayMs in the past, between the samples around that time', () => {
    const b = new InterpolationBuffer(100);
    b.push(st('7', 0, 0), 1000);
    b.push(st('7', 10, 20), 1050);
    assert.deepEqual(b.sample('7', 1100), { x: 0, y: 0 }); // render time 1000
    assert.deepEqual(b.sample('7', 1125), { x: 5, y: 10 }); // halfway
    assert.deepEqual(b.sample('7', 1500), { x: 10, y: 20 }); // past the newest: hold it
    assert.equal(b.sample('8', 1100), undefined);
    b.remove('7');
    assert.equal(b.size, 0);
  });

  it('keeps a bounded number of samples per entity', () => {
    const b = new InterpolationBuffer(0, 4);
    for (let i = 0; i < 10; i++) b.push(st('1', i, 0), i * 10);
    assert.deepEqual(b.sample('1', 0), { x: 6, y: 0 }); // oldest kept
  });
});

describe('Predictor', () => {
  it('predicts from the server state plus the unacknowledged inputs, and drops acknowledged ones', () => {
    const p = new Predictor();
    p.reconcile({ x: 0, y: 0, vx: 0, vy: 0 }, 1, 0);
    p.input(2, 10, 0, 1000); // 10 u/s from t=1000 ms
    assert.deepEqual(p.predict(2000), { x: 10, y: 0, vx: 10, vy: 0 });
    p.input(3, 0, 5, 2000);
    assert.deepEqual(p.predict(3000), { x: 10, y: 5, vx: 0, vy: 5 });
    assert.deepEqual(p.unacked().map((i) => i.seq), [2, 3]);
    // the server applied seq 2 and reports the entity at x=9 at t=1900
    p.reconcile({ x: 9, y: 0, vx: 10, vy: 0 }, 2, 1900);
    assert.deepEqual(p.unacked().map((i) => i.seq), [3]);
    const q = p.predict(3000);
    assert.ok(Math.abs(q.x - 10) < 1e-9 && Math.abs(q.y - 5) < 1e-9);
    p.ack(3);
    assert.equal(p.unacked().length, 0);
    assert.equal(p.ackedSeq, 3);
  });
});

describe('protocol', () => {
  it('round-trips 64-bit entity ids as strings', () => {
    const bytes = encodeClientFrame(5, { move: { dx: 1.5, dy: -2 } });
    assert.ok(bytes.length > 0);
    // a ServerFrame with a Snapshot, hand-encoded: seq=1, snapshot{entity=2^63+1}
    const entity = [0x81, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01];
    const snap = [0x08, ...entity];
    const frame = new Uint8Array([0x08, 0x01, 0x5a, snap.length, ...snap]);
    const f = decodeServerFrame(frame);
    assert.equal(f.seq, 1);
    assert.equal(f.snapshot.entity, '9223372036854775809');
  });
});
