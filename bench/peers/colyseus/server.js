// Colyseus 0.16 peer for the side-by-side benchmark (scripts/bench-peers.sh).
//
//   node server.js PORT [MIN MAX]
//
// One room ("bench", created at start and kept while the server runs), a
// 20 Hz simulation (setSimulationInterval 50 ms) and state patches every
// 50 ms (patchRate 50). A `move` message {dx, dy, seq} sets the sender's
// velocity (clamped like Tessera's worker.max_speed) and its last_input_seq.
// The world is the square [MIN, MAX) on both axes (default -800 800, the
// 16x16 cells of 100 units scripts/bench-peers.sh gives Tessera); positions
// are clamped to it. Listens on 127.0.0.1 only, prints "listening PORT
// ROOMID" once the room exists, exits at once on SIGTERM / SIGINT.
"use strict";

const { Server, Room, matchMaker } = require("colyseus");
const { WebSocketTransport } = require("@colyseus/ws-transport");
const { Schema, MapSchema, defineTypes, Encoder } = require("@colyseus/schema");

// Room for the whole state of 5,000 players (a full state is ~45 B a player)
// without the encoder's grow-and-re-encode step.
Encoder.BUFFER_SIZE = 256 * 1024;

let WORLD_MIN = -800;
let WORLD_MAX = 800;
const MAX_SPEED = 50;

class Player extends Schema {
  constructor() {
    super();
    this.x = 0;
    this.y = 0;
    this.vx = 0;
    this.vy = 0;
    this.last_input_seq = 0;
  }
}
defineTypes(Player, {
  x: "number",
  y: "number",
  vx: "number",
  vy: "number",
  last_input_seq: "number",
});

class State extends Schema {
  constructor() {
    super();
    this.players = new MapSchema();
  }
}
defineTypes(State, { players: { map: Player } });

function finite(v, def) {
  return typeof v === "number" && Number.isFinite(v) ? v : def;
}

function clamp(v, lo, hi) {
  return v < lo ? lo : v > hi ? hi : v;
}

class BenchRoom extends Room {
  onCreate() {
    this.autoDispose = false;
    this.setState(new State());
    this.setPatchRate(50);
    this.setSimulationInterval((dt) => this.step(dt), 50);
    this.onMessage("move", (client, m) => {
      const p = this.state.players.get(client.sessionId);
      if (p === undefined || m === null || typeof m !== "object") return;
      p.vx = clamp(finite(m.dx, 0), -MAX_SPEED, MAX_SPEED);
      p.vy = clamp(finite(m.dy, 0), -MAX_SPEED, MAX_SPEED);
      const seq = finite(m.seq, 0);
      if (seq > p.last_input_seq) p.last_input_seq = seq;
    });
  }

  onJoin(client, options) {
    const p = new Player();
    p.x = clamp(finite(options && options.x, 0), WORLD_MIN, WORLD_MAX);
    p.y = clamp(finite(options && options.y, 0), WORLD_MIN, WORLD_MAX);
    this.state.players.set(client.sessionId, p);
  }

  onLeave(client) {
    this.state.players.delete(client.sessionId);
  }

  step(dtMs) {
    const dt = dtMs / 1000;
    this.state.players.forEach((p) => {
      if (p.vx !== 0) p.x = clamp(p.x + p.vx * dt, WORLD_MIN, WORLD_MAX);
      if (p.vy !== 0) p.y = clamp(p.y + p.vy * dt, WORLD_MIN, WORLD_MAX);
    });
  }
}

async function main() {
  const port = Number(process.argv[2]);
  if (!Number.isInteger(port) || port <= 0 || port > 65535) {
    console.error("usage: node server.js PORT [MIN MAX]");
    process.exit(2);
  }
  if (process.argv.length > 3) {
    WORLD_MIN = Number(process.argv[3]);
    WORLD_MAX = Number(process.argv[4]);
    if (!Number.isFinite(WORLD_MIN) || !Number.isFinite(WORLD_MAX) || WORLD_MIN >= WORLD_MAX) {
      console.error("server.js: MIN MAX must be numbers with MIN < MAX");
      process.exit(2);
    }
  }
  for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => process.exit(0));
  const server = new Server({ transport: new WebSocketTransport(), greet: false, gracefullyShutdown: false });
  server.define("bench", BenchRoom);
  await server.listen(port, "127.0.0.1");
  const room = await matchMaker.createRoom("bench", {});
  console.log(`listening ${port} ${room.roomId}`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
