// What the browser client keeps across reloads (see aether.js), in a
// synchronous string store (localStorage by default), under `aether/v1/<space>/`:
//
//   state            confirmed entries and the resume point (saved lazily)
//   outbox/<actor>   an actor's unacknowledged ops, clock and clock offset (saved with every write)
//   actors           actor → lease {u: expiry ms, o: owner}: which tab uses which actor id
//
// An actor id must never be used by two tabs at once (their stamps could tie),
// and a reloaded tab must get its own back (its unsent writes carry it: relays
// refuse ops stamped by another actor). Where the Web Locks API exists (secure
// contexts), a tab holds an exclusive lock per actor for its life: the browser
// frees it when the tab closes or crashes, so a reloaded or crashed tab's
// actor is free at once and a live one's never is. The lease in localStorage
// (renewed every few seconds, released when the page goes, checked for its
// owner) picks candidates without waiting and guards contexts without locks.
// sessionStorage remembers which actor was this tab's. A tab whose actor turns
// out to be held by another live tab (a duplicated tab) continues as a new one
// (`onTaken`). Released actors stay listed, so the list is as long as the
// most tabs ever open at once, and a new tab adopts a closed one's writes.

import { randomActor } from "./hlc.js";

/** How long a tab's claim on an actor id lasts without renewal. */
const LEASE_MS = 10_000;
const LEASE_RENEW_MS = 3_000;
/** A hidden tab's timers may be throttled to one a minute: its lease is written for longer. */
const HIDDEN_LEASE_MS = 10 * 60_000;
/** Listed actors kept beyond those in use or with unsent writes. */
const MAX_IDLE_ACTORS = 16;
/** How long a tab waits for its actor's lock before taking another actor. */
const LOCK_WAIT_MS = 1_000;
const U64 = 1n << 64n;
const TOP_BIT = 1n << 63n;

export function defaultStorage() {
  try {
    return typeof localStorage === "undefined" ? null : localStorage;
  } catch {
    return null; // storage disabled (privacy settings): run in memory
  }
}

function session() {
  try {
    return typeof sessionStorage === "undefined" ? null : sessionStorage;
  } catch {
    return null;
  }
}

function webLocks() {
  try {
    return typeof navigator !== "undefined" && navigator.locks ? navigator.locks : null;
  } catch {
    return null;
  }
}

/** A client actor as stored: decimal, top bit set, within u64. */
function isActor(a) {
  if (typeof a !== "string" || !/^\d{19,20}$/.test(a)) return false;
  const n = BigInt(a);
  return n >= TOP_BIT && n < U64;
}

const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
/** A stored stamp's parts, range-checked (a corrupt one would make every write a bad frame). */
function stamp(w, c, a) {
  const wall = BigInt(w);
  const counter = Number(c);
  if (wall < 0n || wall >= U64 || !Number.isInteger(counter) || counter < 0 || counter > 0xffffffff) throw new RangeError("stamp out of range");
  return { w: wall, c: counter, a };
}
const leaseUntil = (l) => (typeof l === "number" ? l : isObject(l) ? Number(l.u) || 0 : 0);

export class Persistence {
  #storage;
  #prefix;
  #onError;
  #onTaken = null;
  #leaseTimer = null;
  #actor = null;
  #owner = Math.random().toString(36).slice(2);
  #locked = false;
  #unlock = null;
  #stopped = false;
  #hidden = false;
  /** Actors this tab tried and found held by another tab. */
  #taken = new Set();
  /** Settles once the actor's lock is known to be held (or cannot be had, or locks are missing). */
  ready = Promise.resolve();

  /** `storage` may be null (nothing persists); `onError(message)` hears of failed saves. */
  constructor(storage, prefix, onError) {
    this.#storage = storage;
    this.#prefix = prefix;
    this.#onError = onError;
  }

  get enabled() { return this.#storage !== null; }

  #read(key) {
    if (!this.#storage) return null;
    try {
      const text = this.#storage.getItem(key);
      return text ? JSON.parse(text) : null;
    } catch {
      return null; // unreadable: start without it rather than not at all
    }
  }

  #write(key, value) {
    if (!this.#storage) return;
    try {
      this.#storage.setItem(key, JSON.stringify(value));
    } catch (e) {
      this.#onError(`saving ${key}: ${e.message ?? e}`);
    }
  }

  #leases() {
    const l = this.#read(`${this.#prefix}/actors`);
    return isObject(l) ? l : {};
  }

  /**
   * This tab's actor (a BigInt). `onTaken()` is called if another live tab
   * turns out to hold it; the caller then continues with `claimNew()`.
   */
  claimActor(onTaken) {
    this.#onTaken = onTaken;
    if (!this.#storage) return randomActor();
    const leases = this.#leases();
    const now = Date.now();
    const free = (a) => !(leaseUntil(leases[a]) > now);
    const locks = webLocks() !== null;
    let actor = null;
    const mine = session()?.getItem(`${this.#prefix}/actors`) ?? null;
    // With locks, this tab's own actor is worth trying even under a live lease: a crashed
    // tab's lease outlives it, its lock does not.
    if (isActor(mine) && (locks || free(mine))) actor = mine;
    if (!actor) {
      const candidates = Object.keys(leases).filter((a) => isActor(a) && free(a));
      actor = candidates.find((a) => this.loadOutbox(BigInt(a)).ops.length > 0) ?? candidates[0] ?? null;
    }
    const id = actor ? BigInt(actor) : randomActor();
    this.#hold(id);
    return id;
  }

  /**
   * Another actor for this tab: `releaseOld` frees the previous one (else another tab holds
   * it); a listed free actor without unsent writes if there is one, or a new one.
   */
  claimNew(releaseOld) {
    if (releaseOld) this.release();
    else if (this.#actor) this.#taken.add(this.#actor);
    this.#unlock?.();
    this.#unlock = null;
    if (!this.#storage) return randomActor();
    const leases = this.#leases();
    const now = Date.now();
    const reuse = Object.keys(leases).find(
      (a) => isActor(a) && a !== this.#actor && !this.#taken.has(a) && !(leaseUntil(leases[a]) > now) && this.loadOutbox(BigInt(a)).ops.length === 0,
    );
    const id = reuse ? BigInt(reuse) : randomActor();
    this.#hold(id);
    return id;
  }

  #hold(id) {
    this.#actor = id.toString();
    this.#locked = false;
    this.#writeLease();
    clearInterval(this.#leaseTimer);
    this.#leaseTimer = setInterval(() => this.renewLease(), LEASE_RENEW_MS);
    try {
      session()?.setItem(`${this.#prefix}/actors`, this.#actor);
    } catch {
      // no sessionStorage: a reload takes any free actor, which is still safe
    }
    this.ready = this.#lock(this.#actor);
  }

  #lock(actor) {
    const locks = webLocks();
    if (!locks) return Promise.resolve();
    // Wait a little for the lock: a reloaded page's predecessor, or a client closed a moment
    // ago in this tab, may still hold it; a live tab holds it for good.
    const signal = typeof AbortSignal !== "undefined" && AbortSignal.timeout ? AbortSignal.timeout(LOCK_WAIT_MS) : undefined;
    const taken = () => {
      if (!this.#stopped && this.#actor === actor) this.#onTaken?.();
    };
    return new Promise((settled) => {
      locks
        .request(`${this.#prefix}/actor/${actor}`, signal ? { signal } : { ifAvailable: true }, (lock) => {
          settled();
          if (this.#stopped || this.#actor !== actor) return undefined; // closed or moved on meanwhile
          if (!lock) {
            taken();
            return undefined;
          }
          this.#locked = true;
          return new Promise((release) => { this.#unlock = release; });
        })
        .catch(() => {
          settled();
          taken(); // the wait ran out: another live tab holds it
        });
    });
  }

  #writeLease() {
    const leases = this.#leases();
    const now = Date.now();
    leases[this.#actor] = { u: now + (this.#hidden ? HIDDEN_LEASE_MS : LEASE_MS), o: this.#owner };
    // Forget the oldest idle actors (free, nothing unsent) beyond a few.
    const idle = Object.keys(leases).length <= MAX_IDLE_ACTORS + 1 ? [] : Object.keys(leases).filter((a) => a !== this.#actor && !(leaseUntil(leases[a]) > now) && (!isActor(a) || this.loadOutbox(BigInt(a)).ops.length === 0));
    for (const a of idle.slice(0, Math.max(0, idle.length - MAX_IDLE_ACTORS))) {
      delete leases[a];
      if (isActor(a)) this.dropOutbox(a);
    }
    this.#write(`${this.#prefix}/actors`, leases);
  }

  /** The page was hidden or shown: a hidden tab's lease lasts longer (its timers slow down). */
  setHidden(hidden) {
    this.#hidden = hidden;
    this.renewLease();
  }

  /** Renews the lease, unless another tab took the actor meanwhile (a throttled or frozen tab's lease expires). */
  renewLease() {
    if (!this.#storage || !this.#actor || this.#stopped) return;
    const held = this.#leases()[this.#actor];
    if (!this.#locked && isObject(held) && held.o !== this.#owner && leaseUntil(held) > Date.now()) {
      this.#onTaken?.();
      return;
    }
    this.#writeLease();
  }

  /** Frees the actor (listed, for a reload or a new tab to take with any unsent writes); `stop` also ends renewals and the lock. */
  release({ stop = false } = {}) {
    const actor = this.#actor;
    if (stop) {
      this.#stopped = true;
      this.#actor = null;
      clearInterval(this.#leaseTimer);
      this.#unlock?.();
      this.#unlock = null;
      this.#locked = false;
    }
    if (!this.#storage || !actor) return;
    const leases = this.#leases();
    const held = leases[actor];
    if (isObject(held) && held.o !== this.#owner && leaseUntil(held) > Date.now()) return; // not ours any more
    leases[actor] = { u: 0, o: this.#owner };
    this.#write(`${this.#prefix}/actors`, leases);
  }

  /** `{entries: [[key, Entry]], resume, offsetNs}`; damaged rows are skipped (the relay's catchup brings them back). */
  loadState() {
    const state = this.#read(`${this.#prefix}/state`);
    const entries = [];
    let resume = null;
    let offsetNs = null;
    if (isObject(state) && state.v === 1 && Array.isArray(state.entries)) {
      try {
        if (typeof state.off === "string" && /^-?\d{1,20}$/.test(state.off)) offsetNs = BigInt(state.off);
      } catch {
        offsetNs = null;
      }
      for (const row of state.entries) {
        try {
          const [key, text, w, c, a] = row;
          if (typeof key !== "string" || key === "") continue;
          const actor = BigInt(a);
          if (actor < 0n || actor >= U64) continue;
          entries.push([key, { v: text === null ? undefined : JSON.parse(text), s: stamp(w, c, actor) }]);
        } catch {
          // skip it
        }
      }
      const r = state.resume;
      if (isObject(r) && typeof r.epoch === "string" && /^[A-Za-z0-9+/]{1,88}={0,2}$/.test(r.epoch) && /^\d{1,20}$/.test(String(r.seq ?? "0"))) {
        resume = { epoch: r.epoch, seq: String(r.seq ?? "0") };
      }
    }
    return { entries, resume, offsetNs };
  }

  /** The confirmed entries, the resume point and the clock offset (shared by the space's tabs). */
  saveState(confirmed, resume, offsetNs) {
    if (!this.#storage) return;
    const entries = [];
    for (const [key, e] of confirmed) entries.push([key, e.v === undefined ? null : JSON.stringify(e.v), e.s.w.toString(), e.s.c, e.s.a.toString()]);
    this.#write(`${this.#prefix}/state`, { v: 1, entries, resume, off: offsetNs.toString() });
  }

  /** `{last, offsetNs, ops}` of an actor: its clock's last stamp and offset, and its unacknowledged ops (`{key, v, s}`). */
  loadOutbox(actor) {
    const outbox = this.#read(`${this.#prefix}/outbox/${actor}`);
    const ops = [];
    let last = null;
    let offsetNs = 0n;
    if (!isObject(outbox) || !Array.isArray(outbox.ops)) return { last, offsetNs, ops };
    try {
      if (Array.isArray(outbox.last)) last = stamp(outbox.last[0], outbox.last[1], actor);
      if (typeof outbox.off === "string" && /^-?\d{1,20}$/.test(outbox.off)) offsetNs = BigInt(outbox.off);
    } catch {
      last = null;
    }
    for (const row of outbox.ops) {
      try {
        const [key, text, w, c] = row;
        if (typeof key !== "string" || key === "") continue;
        ops.push({ key, v: text === null ? undefined : JSON.parse(text), s: stamp(w, c, actor) });
      } catch {
        // skip a damaged row
      }
    }
    return { last, offsetNs, ops };
  }

  /** Saved with every write: the clock's last stamp too, so a reload never reuses a stamp. */
  saveOutbox(actor, clock, ops) {
    this.#write(`${this.#prefix}/outbox/${actor}`, {
      last: [clock.last.w.toString(), clock.last.c],
      off: clock.offsetNs.toString(),
      ops: ops.map((o) => [o.key, o.v === undefined ? null : JSON.stringify(o.v), o.s.w.toString(), o.s.c]),
    });
  }

  dropOutbox(actor) {
    try {
      this.#storage?.removeItem(`${this.#prefix}/outbox/${actor}`);
    } catch {
      // nothing to do
    }
  }
}
