// Interpolation buffer for remote entities: states are kept with the local
// time they arrived, and drawn `delayMs` in the past, between the two
// samples around that time, so entities move smoothly although Deltas come
// at the workers' tick rate with jitter.
import type { EntityState } from './proto.js';

interface Sample {
  t: number;
  x: number;
  y: number;
}

export interface Position {
  x: number;
  y: number;
}

export class InterpolationBuffer {
  private samples = new Map<string, Sample[]>();

  /** delayMs: how far behind real time remote entities are drawn; maxSamples bounds memory per entity. */
  constructor(
    public delayMs = 100,
    private maxSamples = 32,
  ) {}

  push(e: EntityState, t: number = now()): void {
    let s = this.samples.get(e.id);
    if (s === undefined) {
      s = [];
      this.samples.set(e.id, s);
    }
    if (s.length > 0 && t < s[s.length - 1].t) t = s[s.length - 1].t;
    s.push({ t, x: e.x, y: e.y });
    if (s.length > this.maxSamples) s.splice(0, s.length - this.maxSamples);
  }

  remove(id: string): void {
    this.samples.delete(id);
  }

  ids(): IterableIterator<string> {
    return this.samples.keys();
  }

  get size(): number {
    return this.samples.size;
  }

  /** Position of `id` at render time t - delayMs; undefined if unknown. */
  sample(id: string, t: number = now()): Position | undefined {
    const s = this.samples.get(id);
    if (s === undefined || s.length === 0) return undefined;
    const rt = t - this.delayMs;
    if (rt <= s[0].t) return { x: s[0].x, y: s[0].y };
    for (let i = s.length - 1; i > 0; i--) {
      const a = s[i - 1];
      const b = s[i];
      if (rt >= a.t && rt <= b.t) {
        const k = b.t === a.t ? 1 : (rt - a.t) / (b.t - a.t);
        return { x: a.x + (b.x - a.x) * k, y: a.y + (b.y - a.y) * k };
      }
    }
    const last = s[s.length - 1];
    return { x: last.x, y: last.y };
  }
}

export function now(): number {
  return typeof performance !== 'undefined' ? performance.now() : Date.now();
}
