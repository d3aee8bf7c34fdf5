// Client-side prediction and reconciliation for the player's own entity.
//
// Move sets the entity's velocity; the server integrates it every tick. The
// predictor keeps the inputs the server has not acknowledged yet (Delta
// .last_input_seq is the ack). On each authoritative state it drops the
// acknowledged inputs and predicts from the server position: the newest
// unacknowledged velocity applies from the moment it was sent, so the
// local entity answers a key press at once and snaps back only as far as
// the server disagrees.

export interface PendingInput {
  seq: number;
  dx: number;
  dy: number;
  sentAt: number; // ms, local clock
}

export interface Predicted {
  x: number;
  y: number;
  vx: number;
  vy: number;
}

export class Predictor {
  private pending: PendingInput[] = [];
  private base: { x: number; y: number; vx: number; vy: number; at: number } | null = null;
  /** Highest input seq the server acknowledged. */
  ackedSeq = 0;

  /** Records an input sent with `seq`. */
  input(seq: number, dx: number, dy: number, sentAt: number): void {
    this.pending.push({ seq, dx, dy, sentAt });
  }

  /** Inputs sent and not acknowledged yet, oldest first. */
  unacked(): readonly PendingInput[] {
    return this.pending;
  }

  /** An acknowledgement without a new state (e.g. Delta without own entity). */
  ack(seq: number): void {
    if (seq <= this.ackedSeq) return;
    this.ackedSeq = seq;
    while (this.pending.length > 0 && this.pending[0].seq <= seq) this.pending.shift();
  }

  /** Authoritative state of the own entity, received at local time `at`. */
  reconcile(state: { x: number; y: number; vx: number; vy: number }, ackSeq: number, at: number): void {
    this.ack(ackSeq);
    this.base = { x: state.x, y: state.y, vx: state.vx, vy: state.vy, at };
  }

  /** Predicted own position at local time t. */
  predict(t: number): Predicted | null {
    const b = this.base;
    if (b === null) return null;
    let x = b.x;
    let y = b.y;
    let vx = b.vx;
    let vy = b.vy;
    let from = b.at;
    for (const p of this.pending) {
      const start = Math.max(p.sentAt, b.at);
      if (start > from) {
        x += (vx * (start - from)) / 1000;
        y += (vy * (start - from)) / 1000;
        from = start;
      }
      vx = p.dx;
      vy = p.dy;
    }
    if (t > from) {
      x += (vx * (t - from)) / 1000;
      y += (vy * (t - from)) / 1000;
    }
    return { x, y, vx, vy };
  }

  reset(): void {
    this.pending = [];
    this.base = null;
    this.ackedSeq = 0;
  }
}
