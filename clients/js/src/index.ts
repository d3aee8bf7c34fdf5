export { TesseraClient, type ClientOptions, type Backoff, type JoinOptions, type PendingCommand } from './client.js';
export { InterpolationBuffer, type Position } from './interp.js';
export { Predictor, type PendingInput, type Predicted } from './predict.js';
export {
  EntityFlags,
  ErrorCode,
  PAYLOAD_MAX,
  decodeServerFrame,
  encodeClientFrame,
  type CellChanged,
  type CellId,
  type ClientPayload,
  type Delta,
  type EntityState,
  type GameEvent,
  type WorldCounters,
  type Pong,
  type ServerError,
  type ServerFrame,
  type Snapshot,
  type Welcome,
} from './proto.js';
