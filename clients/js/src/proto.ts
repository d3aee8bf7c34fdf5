// The client protocol's messages (schemas/client.proto), parsed at load
// time with protobufjs. 64-bit ids are decimal strings (entity ids use all
// 64 bits); sequence numbers, ticks and counters are numbers.
import protobuf from 'protobufjs';
import { CLIENT_PROTO, COMMON_PROTO } from './schema.js';

const root = new protobuf.Root();
protobuf.parse(COMMON_PROTO, root, { keepCase: true });
protobuf.parse(CLIENT_PROTO, root, { keepCase: true });
root.resolveAll();

const ClientFrameT = root.lookupType('tessera.v1.ClientFrame');
const ServerFrameT = root.lookupType('tessera.v1.ServerFrame');

export const ErrorCode = {
  NONE: 0,
  MALFORMED: 1,
  OVERSIZED: 2,
  PROTOCOL: 3,
  RATE_LIMIT: 4,
  UNKNOWN_CELL: 5,
  UNAVAILABLE: 6,
  INPUT_NOT_STORED: 7,
  UNAUTHENTICATED: 8,
  TIMEOUT: 9,
  SLOW_READER: 10,
  RESUME_REFUSED: 11,
} as const;

export interface CellId {
  world: number;
  cx: number;
  cy: number;
  depth: number;
  sub: string;
}

export interface EntityState {
  id: string;
  x: number;
  y: number;
  vx: number;
  vy: number;
  last_input_seq: number;
  inputs_applied: number;
  name: string;
  /** The game module's state of the entity (at most 64 bytes; empty without a module). */
  state: Uint8Array;
  /** EntityFlags bits: PLAYER (a player's entity), NPC (spawned by the game module). */
  flags: number;
}

/** EntityState.flags bits. */
export const EntityFlags = {
  PLAYER: 1,
  NPC: 2,
} as const;

/** Longest Command or Join payload the gateway takes (bytes). */
export const PAYLOAD_MAX = 256;

/**
 * Something the game module said (ServerFrame.event): to this player
 * (`entity` is the player's entity) or, `positional`, to every player whose
 * area of interest holds (x, y). Best effort: at most once, never replayed.
 */
export interface GameEvent {
  type: number;
  payload: Uint8Array;
  entity: string;
  positional: boolean;
  x: number;
  y: number;
  /** The cell's tick that emitted it. */
  tick: number;
}

/**
 * The game module's world counters summed over the whole world
 * (ServerFrame.world_counters): `values[i]` is counter i, missing ones are 0
 * (tag: 0 red's score, 1 blue's). Sent after the first Snapshot and on
 * every change (the gateway looks at most every 250 ms).
 */
export interface WorldCounters {
  values: number[];
}

export interface Welcome {
  protocol_version: number;
  entity: string;
  cell_size: number;
  gateway: string;
  resume_token: string;
  resumed: boolean;
  last_input_seq: number;
  player: string;
}

export interface Snapshot {
  entity: string;
  entities: EntityState[];
  last_input_seq: number;
}

export interface Delta {
  tick: number;
  entities: EntityState[];
  removed: string[];
  last_input_seq: number;
}

export interface CellChanged {
  from: CellId | null;
  to: CellId | null;
  entity: string;
  resume_token: string;
}

export interface Pong {
  client_time_us: number;
  server_time_us: number;
}

export interface ServerError {
  code: number;
  message: string;
  fatal: boolean;
  first_seq: number;
  last_seq: number;
}

export interface ServerFrame {
  seq: number;
  epoch: number;
  cell: CellId | null;
  welcome?: Welcome;
  snapshot?: Snapshot;
  delta?: Delta;
  cell_changed?: CellChanged;
  pong?: Pong;
  error?: ServerError;
  event?: GameEvent;
  world_counters?: WorldCounters;
}

export type ClientPayload =
  | { hello: { protocol_version?: number; client_name?: string; resume_token?: string; token?: string } }
  | { join: { x: number; y: number; name?: string; payload?: Uint8Array } }
  | { move: { dx: number; dy: number } }
  | { command: { type: number; payload?: Uint8Array } }
  | { ping: { client_time_us: number } }
  | { leave: Record<string, never> };

export function encodeClientFrame(seq: number, payload: ClientPayload, cell?: CellId | null, epoch = 0): Uint8Array {
  const msg = ClientFrameT.fromObject({ seq, epoch, cell: cell ?? undefined, ...payload });
  return ClientFrameT.encode(msg).finish();
}

const num = (v: unknown): number => (v === undefined || v === null ? 0 : Number(v));
const str = (v: unknown): string => (v === undefined || v === null ? '0' : String(v));
const bytes = (v: unknown): Uint8Array => (v instanceof Uint8Array ? new Uint8Array(v) : new Uint8Array(0));

function entity(e: Record<string, unknown>): EntityState {
  return {
    id: str(e.id),
    x: num(e.x),
    y: num(e.y),
    vx: num(e.vx),
    vy: num(e.vy),
    last_input_seq: num(e.last_input_seq),
    inputs_applied: num(e.inputs_applied),
    name: (e.name as string) ?? '',
    state: bytes(e.state),
    flags: num(e.flags),
  };
}

function cellId(c: unknown): CellId | null {
  if (c === undefined || c === null) return null;
  const o = c as Record<string, unknown>;
  return { world: num(o.world), cx: num(o.cx), cy: num(o.cy), depth: num(o.depth), sub: str(o.sub) };
}

/** Decodes one ServerFrame; throws on bytes that are not one. */
export function decodeServerFrame(data: Uint8Array): ServerFrame {
  const o = ServerFrameT.toObject(ServerFrameT.decode(data), {
    longs: String,
    enums: Number,
    defaults: true,
    arrays: true,
  }) as Record<string, any>;
  const f: ServerFrame = { seq: num(o.seq), epoch: num(o.epoch), cell: cellId(o.cell) };
  if (o.welcome) {
    const w = o.welcome;
    f.welcome = {
      protocol_version: num(w.protocol_version),
      entity: str(w.entity),
      cell_size: num(w.cell_size),
      gateway: w.gateway ?? '',
      resume_token: w.resume_token ?? '',
      resumed: !!w.resumed,
      last_input_seq: num(w.last_input_seq),
      player: w.player ?? '',
    };
  } else if (o.snapshot) {
    f.snapshot = {
      entity: str(o.snapshot.entity),
      entities: (o.snapshot.entities ?? []).map(entity),
      last_input_seq: num(o.snapshot.last_input_seq),
    };
  } else if (o.delta) {
    f.delta = {
      tick: num(o.delta.tick),
      entities: (o.delta.entities ?? []).map(entity),
      removed: (o.delta.removed ?? []).map(str),
      last_input_seq: num(o.delta.last_input_seq),
    };
  } else if (o.cell_changed) {
    const c = o.cell_changed;
    f.cell_changed = { from: cellId(c.from), to: cellId(c.to), entity: str(c.entity), resume_token: c.resume_token ?? '' };
  } else if (o.pong) {
    f.pong = { client_time_us: num(o.pong.client_time_us), server_time_us: num(o.pong.server_time_us) };
  } else if (o.event) {
    const e = o.event;
    f.event = {
      type: num(e.type),
      payload: bytes(e.payload),
      entity: str(e.entity),
      positional: !!e.positional,
      x: num(e.x),
      y: num(e.y),
      tick: num(e.tick),
    };
  } else if (o.world_counters) {
    f.world_counters = { values: (o.world_counters.values ?? []).map(num) };
  } else if (o.error) {
    const e = o.error;
    f.error = { code: num(e.code), message: e.message ?? '', fatal: !!e.fatal, first_seq: num(e.first_seq), last_seq: num(e.last_seq) };
  }
  return f;
}
