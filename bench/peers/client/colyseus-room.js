// A Colyseus 0.16 game client (colyseus.js) in the bench room.
//
// Every WebSocket message is counted (payload plus the server's frame
// header) with its arrival time before colyseus.js sees it. probe: patches
// are decoded and the own player's last_input_seq is reported with that
// arrival time. bulk: state patches are counted, not decoded.
"use strict";

const path = require("path");
const { Client } = require("colyseus.js");

const ROOM_STATE_PATCH = 15;

// colyseus.js keeps its transport behind its package exports: reach the very
// module instance it uses by file name and tap its message handler.
const { WebSocketTransport } = require(
  path.join(path.dirname(require.resolve("colyseus.js")), "transport", "WebSocketTransport.js"),
);
const connectWs = WebSocketTransport.prototype.connect;
WebSocketTransport.prototype.connect = function (url, headers) {
  const inner = this.events.onmessage;
  this.events.onmessage = (ev) => {
    const tap = this.tap;
    if (tap === undefined || tap(ev)) inner(ev);
  };
  return connectWs.call(this, url, headers);
};

// Bytes of a server-to-client WebSocket frame header (unmasked).
function wsHeader(len) {
  return len < 126 ? 2 : len < 65536 ? 4 : 10;
}

const clients = new Map();

class ColyseusClient {
  constructor(opts) {
    this.probe = opts.probe;
    this.bytes = 0;
    this.deltas = 0;
    this.errors = 0;
    this.errorText = "";
    this.seq = 0;
    this.closed = false;
    this.onOwnSeq = null;
    this.room = null;
  }

  async connect(host, port, x, y, name, timeoutMs) {
    const endpoint = `ws://${host}:${port}`;
    let client = clients.get(endpoint);
    if (client === undefined) {
      client = new Client(endpoint);
      clients.set(endpoint, client);
    }
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`join timed out after ${timeoutMs} ms`)), timeoutMs);
    });
    try {
      this.room = await Promise.race([client.join("bench", { x, y, name }), timeout]);
    } finally {
      clearTimeout(timer);
    }
    const room = this.room;
    room.onLeave(() => {
      this.closed = true;
    });
    room.onError((code, message) => {
      this.errors++;
      this.errorText = `${code} ${message}`;
    });
    const transport = room.connection.transport;
    // bulk: no decoding, so no copy into an ArrayBuffer per message either
    if (!this.probe) transport.ws.binaryType = "nodebuffer";
    transport.tap = (ev) => this.onMessage(ev);
    return this;
  }

  onMessage(ev) {
    const now = performance.now();
    const data = ev.data;
    const len = data.byteLength;
    this.bytes += len + wsHeader(len);
    const code = Buffer.isBuffer(data) ? data[0] : new Uint8Array(data, 0, 1)[0];
    if (code !== ROOM_STATE_PATCH) return true;
    this.deltas++;
    if (!this.probe) return false;
    // decode now (colyseus.js), then look at the own player
    this.room.onMessageCallback(ev);
    const players = this.room.state && this.room.state.players;
    const me = players && players.get(this.room.sessionId);
    if (me !== undefined && this.onOwnSeq !== null) this.onOwnSeq(me.last_input_seq, now);
    return false;
  }

  move(dx, dy) {
    if (this.closed || this.room === null) return 0;
    const seq = ++this.seq;
    this.room.send("move", { dx, dy, seq });
    return seq;
  }

  close() {
    if (this.room !== null && !this.closed) {
      this.closed = true;
      this.room.leave(false).catch(() => {});
    }
  }
}

module.exports = { ColyseusClient };
