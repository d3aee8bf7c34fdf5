// Seeded players: the same start position and the same sequence of headings
// for player i whichever system is driven and whichever process carries it.
//
// The world is the square [min, max) on both axes; start positions are
// uniform in it (1% margin); every input the position is dead-reckoned
// (clamped to the world, as both servers do), the heading turns by up to
// +-0.3 rad like tessera-sim's players and bounces off the world's edges
// looking two input periods ahead.
"use strict";

const TURN = 0.6;

// mulberry32: small, fast, and the same in every Node version.
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function clamp(v, lo, hi) {
  return v < lo ? lo : v > hi ? hi : v;
}

class Walker {
  // index: player number; seed: run seed; world: {min, max}; speed: units/s;
  // periodMs: input period.
  constructor(index, seed, world, speed, periodMs) {
    this.rand = rng((Math.imul(seed >>> 0, 0x9e3779b1) ^ Math.imul(index + 1, 0x85ebca77)) >>> 0);
    this.min = world.min;
    this.max = world.max;
    this.speed = speed;
    this.periodMs = periodMs;
    const margin = Math.min(1, (this.max - this.min) * 0.01);
    const lo = this.min + margin;
    const span = this.max - margin - lo;
    this.x = lo + this.rand() * span;
    this.y = lo + this.rand() * span;
    this.heading = this.rand() * 2 * Math.PI;
    this.phaseMs = this.rand() * periodMs;
    this.vx = 0;
    this.vy = 0;
    this.atMs = -1;
  }

  // The velocity of the next Move at time nowMs (milliseconds, monotonic).
  step(nowMs) {
    if (this.atMs >= 0) {
      const dt = (nowMs - this.atMs) / 1000;
      this.x = clamp(this.x + this.vx * dt, this.min, this.max);
      this.y = clamp(this.y + this.vy * dt, this.min, this.max);
    }
    this.atMs = nowMs;
    this.heading += (this.rand() - 0.5) * TURN;
    let vx = this.speed * Math.cos(this.heading);
    let vy = this.speed * Math.sin(this.heading);
    const ahead = (2 * this.periodMs) / 1000;
    if ((this.x + vx * ahead < this.min && vx < 0) || (this.x + vx * ahead >= this.max && vx > 0)) vx = -vx;
    if ((this.y + vy * ahead < this.min && vy < 0) || (this.y + vy * ahead >= this.max && vy > 0)) vy = -vy;
    this.heading = Math.atan2(vy, vx);
    this.vx = vx;
    this.vy = vy;
    return [vx, vy];
  }
}

module.exports = { Walker };
