// A Tessera game client over the gateway's TCP protocol: every frame a
// 4-byte big-endian length and one protobuf ClientFrame / ServerFrame
// (schemas/client.proto, loaded at run time).
//
// probe: every ServerFrame is decoded and the own entity's last_input_seq is
// reported with the arrival time of the bytes that carried it. bulk: frames
// are delimited and only Welcome / Snapshot / Error frames are decoded (the
// payload field number is read from the frame's top-level fields); Deltas
// are counted, not decoded.
"use strict";

const net = require("net");
const path = require("path");
const protobuf = require("protobufjs");

const PAYLOAD_WELCOME = 10;
const PAYLOAD_SNAPSHOT = 11;
const PAYLOAD_DELTA = 12;
const PAYLOAD_ERROR = 15;
const MAX_FRAME = 16 * 1024 * 1024;

let types = null;

function load(schemasDir) {
  if (types !== null) return types;
  const root = protobuf.loadSync(path.join(schemasDir, "client.proto"));
  types = {
    ClientFrame: root.lookupType("tessera.v1.ClientFrame"),
    ServerFrame: root.lookupType("tessera.v1.ServerFrame"),
  };
  return types;
}

function u64(v) {
  if (v === null || v === undefined) return 0;
  return typeof v === "number" ? v : Number(v.toString());
}

// Field number of the first top-level field numbered >= 10 (the payload of
// the oneof), or 0 if there is none or the frame is malformed.
function payloadField(buf) {
  let i = 0;
  const readVarint = () => {
    let v = 0;
    let mul = 1;
    while (i < buf.length) {
      const b = buf[i++];
      v += (b & 0x7f) * mul;
      if ((b & 0x80) === 0) return v;
      mul *= 128;
    }
    return -1;
  };
  while (i < buf.length) {
    const key = readVarint();
    if (key < 0) return 0;
    const field = Math.floor(key / 8);
    const wire = key & 7;
    if (field >= 10) return field;
    if (wire === 0) {
      if (readVarint() < 0) return 0;
    } else if (wire === 2) {
      const len = readVarint();
      if (len < 0) return 0;
      i += len;
    } else if (wire === 1) {
      i += 8;
    } else if (wire === 5) {
      i += 4;
    } else {
      return 0;
    }
  }
  return 0;
}

class TesseraClient {
  constructor(opts) {
    this.t = load(opts.schemasDir);
    this.probe = opts.probe;
    this.bytes = 0;
    this.deltas = 0;
    this.errors = 0;
    this.errorText = "";
    this.seq = 0;
    this.entity = 0;
    this.closed = false;
    this.onOwnSeq = null; // (lastInputSeq, recvMs) for probes
    this.pending = [];
    this.pendingLen = 0;
    this.joinWaiter = null;
  }

  // Resolves once the gateway answered Join with a Snapshot.
  connect(host, port, x, y, name, timeoutMs) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.close();
        reject(new Error(`join timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      this.joinWaiter = (err) => {
        clearTimeout(timer);
        this.joinWaiter = null;
        if (err) {
          this.close();
          reject(err);
        } else {
          resolve(this);
        }
      };
      const s = net.connect({ host, port });
      this.sock = s;
      s.setNoDelay(true);
      s.on("connect", () => {
        this.send({ hello: { protocolVersion: 1, clientName: "bench-peers" } });
        this.send({ join: { x, y, name } });
      });
      s.on("data", (chunk) => this.onData(chunk));
      s.on("error", (e) => {
        if (this.joinWaiter) this.joinWaiter(e);
      });
      s.on("close", () => {
        this.closed = true;
        if (this.joinWaiter) this.joinWaiter(new Error("connection closed before the Snapshot"));
      });
    });
  }

  send(payload) {
    if (this.closed) return 0;
    const seq = ++this.seq;
    const msg = this.t.ClientFrame.create(Object.assign({ seq }, payload));
    const body = this.t.ClientFrame.encode(msg).finish();
    const frame = Buffer.allocUnsafe(4 + body.length);
    frame.writeUInt32BE(body.length, 0);
    frame.set(body, 4);
    this.sock.write(frame);
    return seq;
  }

  // Sends Move(dx, dy); returns its sequence number (0 if closed).
  move(dx, dy) {
    return this.send({ move: { dx, dy } });
  }

  onData(chunk) {
    const now = performance.now();
    this.bytes += chunk.length;
    this.pending.push(chunk);
    this.pendingLen += chunk.length;
    if (this.pendingLen < 4) return;
    let buf = this.pending.length === 1 ? this.pending[0] : Buffer.concat(this.pending, this.pendingLen);
    let off = 0;
    while (buf.length - off >= 4) {
      const len = buf.readUInt32BE(off);
      if (len > MAX_FRAME) {
        this.errors++;
        this.errorText = `frame of ${len} bytes`;
        this.close();
        return;
      }
      if (buf.length - off - 4 < len) break;
      this.onFrame(buf.subarray(off + 4, off + 4 + len), now);
      off += 4 + len;
    }
    buf = off === buf.length ? null : buf.subarray(off);
    this.pending = buf === null ? [] : [buf];
    this.pendingLen = buf === null ? 0 : buf.length;
  }

  onFrame(body, now) {
    let field = 0;
    if (!this.probe) {
      field = payloadField(body);
      if (field === PAYLOAD_DELTA) {
        this.deltas++;
        return;
      }
    }
    let f;
    try {
      f = this.t.ServerFrame.decode(body);
    } catch (e) {
      this.errors++;
      this.errorText = `undecodable frame: ${e.message}`;
      return;
    }
    if (f.error) {
      this.errors++;
      this.errorText = f.error.message;
      if (this.joinWaiter && (this.entity === 0 || f.error.fatal)) this.joinWaiter(new Error(`gateway: ${f.error.message}`));
      return;
    }
    if (f.snapshot) {
      this.entity = u64(f.snapshot.entity);
      this.own(f.snapshot.entities, now);
      if (this.joinWaiter) this.joinWaiter(null);
    } else if (f.delta) {
      this.deltas++;
      this.own(f.delta.entities, now);
    }
  }

  own(entities, now) {
    if (this.onOwnSeq === null || !entities || this.entity === 0) return;
    for (const e of entities) {
      if (u64(e.id) === this.entity) {
        this.onOwnSeq(u64(e.lastInputSeq), now);
        return;
      }
    }
  }

  close() {
    if (this.sock && !this.closed) {
      this.closed = true;
      this.sock.destroy();
    }
  }
}

module.exports = { TesseraClient, payloadField };
