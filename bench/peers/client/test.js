// Checks of the load client's own logic, no server needed:
//   node --test bench/peers/client/test.js   (after npm ci in this folder)
"use strict";

const assert = require("node:assert/strict");
const path = require("node:path");
const test = require("node:test");
const protobuf = require("protobufjs");
const { Walker } = require("./walk");
const { TesseraClient, payloadField } = require("./tessera");

const SCHEMAS = path.resolve(__dirname, "..", "..", "..", "schemas");
const WORLD = { min: -800, max: 800 };

test("a player's start and walk depend only on the seed and its index", () => {
  const a = new Walker(7, 1, WORLD, 20, 100);
  const b = new Walker(7, 1, WORLD, 20, 100);
  const c = new Walker(8, 1, WORLD, 20, 100);
  assert.deepEqual([a.x, a.y, a.phaseMs], [b.x, b.y, b.phaseMs]);
  assert.notDeepEqual([a.x, a.y], [c.x, c.y]);
  for (let t = 0; t < 1000; t += 100) assert.deepEqual(a.step(t), b.step(t));
});

test("players start inside the world and stay inside it", () => {
  for (let i = 0; i < 200; i++) {
    const w = new Walker(i, 3, { min: -100, max: 100 }, 50, 100);
    assert.ok(w.x > -100 && w.x < 100 && w.y > -100 && w.y < 100);
    for (let t = 0; t <= 60000; t += 100) {
      const [vx, vy] = w.step(t);
      assert.ok(Math.abs(Math.hypot(vx, vy) - 50) < 1e-9);
      assert.ok(w.x >= -100 && w.x <= 100 && w.y >= -100 && w.y <= 100);
    }
  }
});

function frames(...msgs) {
  const root = protobuf.loadSync(path.join(SCHEMAS, "client.proto"));
  const SF = root.lookupType("tessera.v1.ServerFrame");
  return Buffer.concat(
    msgs.map((m) => {
      const body = SF.encode(SF.create(m)).finish();
      const head = Buffer.alloc(4);
      head.writeUInt32BE(body.length);
      return Buffer.concat([head, body]);
    }),
  );
}

test("the payload field is read without decoding the frame", () => {
  const f = frames({ seq: 3, epoch: 9, cell: { world: 0, cx: -3, cy: 2 }, delta: { tick: 5 } });
  assert.equal(payloadField(f.subarray(4)), 12);
  const e = frames({ seq: 4, error: { code: 6, message: "x" } });
  assert.equal(payloadField(e.subarray(4)), 15);
});

test("a probe sees its own last_input_seq in frames split across reads", () => {
  const c = new TesseraClient({ probe: true, schemasDir: SCHEMAS });
  const seen = [];
  c.onOwnSeq = (seq, at) => seen.push([seq, at > 0]);
  const me = 281474976710657;
  const bytes = frames(
    { seq: 1, welcome: { protocolVersion: 1 } },
    { seq: 2, snapshot: { entity: me, entities: [{ id: me, lastInputSeq: 2 }] } },
    { seq: 3, delta: { tick: 1, entities: [{ id: 5, lastInputSeq: 40 }, { id: me, lastInputSeq: 7 }] } },
    { seq: 4, delta: { tick: 2, entities: [{ id: 5, lastInputSeq: 41 }] } },
  );
  for (let i = 0; i < bytes.length; i += 5) c.onData(bytes.subarray(i, Math.min(bytes.length, i + 5)));
  assert.equal(c.entity, me);
  assert.equal(c.bytes, bytes.length);
  assert.equal(c.deltas, 2);
  assert.deepEqual(seen, [[2, true], [7, true]]);
});

test("a bulk client counts Deltas without decoding them and still sees Errors", () => {
  const c = new TesseraClient({ probe: false, schemasDir: SCHEMAS });
  c.onData(frames({ seq: 1, delta: { tick: 1 } }, { seq: 2, error: { code: 6, message: "cell is not taking inputs" } }));
  assert.equal(c.deltas, 1);
  assert.equal(c.errors, 1);
  assert.equal(c.errorText, "cell is not taking inputs");
});
