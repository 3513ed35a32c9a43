// A relay's limits, as the browser client keeps to them (see aether.js):
// sizes checked before a write applies, and the rate the relay advertises.

/** Relay defaults, until a `welcome` says otherwise. */
export const DEFAULT_LIMITS = { maxOpsPerWrite: 256, maxFrameBytes: 262144, maxKeyBytes: 256, maxValueBytes: 32768 };

const encoder = new TextEncoder();
export const utf8 = (s) => encoder.encode(s).length;
/** UTF-8 is at most 3 bytes per UTF-16 unit: short texts need no encoding to be checked. */
const fits = (s, max) => s.length * 3 <= max || utf8(s) <= max;
export const wellFormed = (s) => (typeof s.isWellFormed === "function" ? s.isWellFormed() : !/\p{Surrogate}/u.test(s));

/**
 * `{key: value | undefined}` → `[[key, value]]` with values as their JSON
 * round trip (what others will see); throws on the first key or value the
 * relay would refuse, before anything applies (a relay refuses a whole write).
 */
export function checkChanges(changes, limits) {
  const maxKey = Number(limits.maxKeyBytes) || DEFAULT_LIMITS.maxKeyBytes;
  const maxValue = Number(limits.maxValueBytes) || DEFAULT_LIMITS.maxValueBytes;
  const checked = [];
  for (const [key, value] of Object.entries(changes)) {
    if (key === "" || !wellFormed(key) || !fits(key, maxKey)) throw new RangeError(`Aether: a key is 1 to ${maxKey} bytes of well-formed text: ${JSON.stringify(key.slice(0, 40))}`);
    if (value === undefined) {
      checked.push([key, undefined]);
      continue;
    }
    const text = JSON.stringify(value);
    if (text === undefined) throw new TypeError(`Aether: the value of ${key} is not JSON`);
    if (!fits(text, maxValue)) throw new RangeError(`Aether: the value of ${key} is over ${maxValue} bytes of JSON`);
    checked.push([key, JSON.parse(text)]);
  }
  return checked;
}

/** The relay's token bucket, mirrored (`welcome.limits.opsPerSec` and `burst`). */
export class TokenBucket {
  /** `spent`: tokens the relay charged already (the hello and the subscribe). */
  constructor(rate, burst, spent) {
    this.rate = rate;
    this.burst = burst;
    this.tokens = Math.max(0, burst - spent);
    this.at = Date.now();
  }

  /** Takes `n` tokens (at most a burst) and returns 0, or returns the ms to wait for them. */
  take(n) {
    const now = Date.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.at) / 1000) * this.rate);
    this.at = now;
    const need = Math.min(n, this.burst);
    if (this.tokens >= need) {
      this.tokens -= need;
      return 0;
    }
    return Math.ceil(((need - this.tokens) / this.rate) * 1000);
  }
}
