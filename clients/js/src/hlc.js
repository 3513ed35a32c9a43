// Hybrid-logical-clock stamps of the browser client (see aether.js).
// In memory a stamp is `{w, c, a}` (wall ns and actor as BigInt, counter);
// on the wire `{wallNs, counter, actor}` with 64-bit fields as decimal strings.

const TOP_BIT = 1n << 63n;
const U63 = TOP_BIT - 1n;
export const MS = 1_000_000n;

/** @typedef {{w: bigint, c: number, a: bigint}} St  wall ns, counter, actor */
/** @typedef {{v: any, s: St}} Entry  value (undefined = tombstone) and stamp */

/** Orders stamps as relays do: wall time, then counter, then actor. */
export function cmp(x, y) {
  if (x.w !== y.w) return x.w < y.w ? -1 : 1;
  if (x.c !== y.c) return x.c < y.c ? -1 : 1;
  if (x.a !== y.a) return x.a < y.a ? -1 : 1;
  return 0;
}
/** The entry with the greater stamp (either may be missing). */
export const newer = (x, y) => (!y ? x : !x ? y : cmp(x.s, y.s) >= 0 ? x : y);
export const toWire = (s) => ({ wallNs: s.w.toString(), counter: s.c, actor: s.a.toString() });
export function fromWire(w) {
  if (!w || typeof w !== "object") throw new Error("missing stamp");
  return { w: BigInt(w.wallNs ?? "0"), c: Number(w.counter ?? 0), a: BigInt(w.actor ?? "0") };
}

/** A hybrid logical clock for one actor: never repeats, never runs backwards. */
export class Clock {
  constructor(actor, last) {
    this.actor = actor;
    this.last = last ?? { w: 0n, c: 0, a: actor };
    /** Added to this machine's clock: the relay's clock minus ours, once a relay said. */
    this.offsetNs = 0n;
    /** How far ahead of the (corrected) clock a stamp seen elsewhere may pull this one. */
    this.maxAheadNs = 60_000_000_000n;
  }
  now() {
    const wall = BigInt(Date.now()) * MS + this.offsetNs;
    this.last = wall > this.last.w ? { w: wall, c: 0, a: this.actor } : { w: this.last.w, c: this.last.c + 1, a: this.actor };
    return this.last;
  }
  /**
   * Moves past a stamp seen from elsewhere, so the next local write orders after it;
   * not past what relays would accept (a stamp from a clock far ahead is not followed).
   */
  observe(s) {
    if (s.w > BigInt(Date.now()) * MS + this.offsetNs + this.maxAheadNs) return;
    this.restore(s);
  }

  /** Moves past this actor's own last stamp (restored from storage), however far ahead: stamps never repeat. */
  restore(s) {
    if (s.w > this.last.w || (s.w === this.last.w && s.c > this.last.c)) this.last = { w: s.w, c: s.c, a: this.actor };
  }
}

/** A new actor id: 63 random bits under the top bit, which marks client actors. */
export function randomActor() {
  const b = new BigUint64Array(1);
  crypto.getRandomValues(b);
  return (b[0] & U63) | TOP_BIT;
}
