// What the browser client keeps across reloads (see aether.js), in a
// synchronous string store (localStorage by default), under `aether/v1/<space>/`:
//
//   state            confirmed entries and the resume point (saved lazily)
//   outbox/<actor>   an actor's unacknowledged ops and clock (saved on every write)
//   actors           actor → lease expiry: which tab uses which actor id
//
// An actor id must never be used by two tabs at once (their stamps could tie),
// and a reloaded tab must get its own back (its unsent writes carry it: relays
// refuse ops stamped by another actor). A tab holds a lease on its actor,
// renewed every few seconds and released when the page goes; sessionStorage
// remembers which one was this tab's. A tab that finds its actor leased by a
// live tab (a duplicated tab) takes an unleased one, preferring one with
// writes left behind by a closed tab, or a new one. Released actors stay
// listed, so the list is as long as the most tabs ever open at once.

import { randomActor } from "./hlc.js";

/** How long a tab's claim on an actor id lasts without renewal. */
const LEASE_MS = 10_000;
const LEASE_RENEW_MS = 3_000;

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

const isActor = (a) => typeof a === "string" && /^\d{1,20}$/.test(a);

export class Persistence {
  #storage;
  #prefix;
  #onError;
  #leaseTimer = null;
  #actor = null;

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

  /** This tab's actor (a BigInt), leased until `release()`. */
  claimActor() {
    if (!this.#storage) return randomActor();
    const key = `${this.#prefix}/actors`;
    const leases = this.#read(key) ?? {};
    const now = Date.now();
    const free = (a) => !(Number(leases[a]) > now);
    let actor = null;
    const mine = session()?.getItem(key) ?? null;
    if (isActor(mine) && free(mine)) actor = mine;
    if (!actor) {
      const candidates = Object.keys(leases).filter((a) => isActor(a) && free(a));
      actor = candidates.find((a) => (this.#read(`${this.#prefix}/outbox/${a}`)?.ops ?? []).length > 0) ?? candidates[0] ?? null;
    }
    const id = actor ? BigInt(actor) : randomActor();
    this.#actor = id.toString();
    this.renewLease();
    clearInterval(this.#leaseTimer);
    this.#leaseTimer = setInterval(() => this.renewLease(), LEASE_RENEW_MS);
    try {
      session()?.setItem(key, this.#actor);
    } catch {
      // no sessionStorage: a reload takes any free actor, which is still safe
    }
    return id;
  }

  renewLease() {
    if (!this.#storage || !this.#actor) return;
    const key = `${this.#prefix}/actors`;
    const leases = this.#read(key) ?? {};
    leases[this.#actor] = Date.now() + LEASE_MS;
    this.#write(key, leases);
  }

  /** Frees the actor (listed, for a reload or a new tab to take with any unsent writes). */
  release({ stop = false } = {}) {
    if (stop) clearInterval(this.#leaseTimer);
    if (!this.#storage || !this.#actor) return;
    const key = `${this.#prefix}/actors`;
    const leases = this.#read(key) ?? {};
    leases[this.#actor] = 0;
    this.#write(key, leases);
  }

  /** `{entries: [[key, Entry]], resume}`; damaged rows are skipped (the relay's catchup brings them back). */
  loadState() {
    const state = this.#read(`${this.#prefix}/state`);
    const entries = [];
    let resume = null;
    if (state && state.v === 1 && Array.isArray(state.entries)) {
      for (const row of state.entries) {
        try {
          const [key, text, w, c, a] = row;
          if (typeof key !== "string") continue;
          entries.push([key, { v: text === null ? undefined : JSON.parse(text), s: { w: BigInt(w), c: Number(c), a: BigInt(a) } }]);
        } catch {
          // skip it
        }
      }
      if (state.resume && typeof state.resume.epoch === "string") resume = { epoch: state.resume.epoch, seq: String(state.resume.seq ?? "0") };
    }
    return { entries, resume };
  }

  saveState(confirmed, resume) {
    if (!this.#storage) return;
    const entries = [];
    for (const [key, e] of confirmed) entries.push([key, e.v === undefined ? null : JSON.stringify(e.v), e.s.w.toString(), e.s.c, e.s.a.toString()]);
    this.#write(`${this.#prefix}/state`, { v: 1, entries, resume });
  }

  /** `{last, ops}` of an actor: its clock's last stamp and its unacknowledged ops (`{key, v, s}`). */
  loadOutbox(actor) {
    const outbox = this.#read(`${this.#prefix}/outbox/${actor}`);
    const ops = [];
    let last = null;
    if (!outbox || !Array.isArray(outbox.ops)) return { last, ops };
    try {
      if (outbox.last) last = { w: BigInt(outbox.last[0]), c: Number(outbox.last[1]), a: actor };
    } catch {
      last = null;
    }
    for (const row of outbox.ops) {
      try {
        const [key, text, w, c] = row;
        if (typeof key !== "string") continue;
        ops.push({ key, v: text === null ? undefined : JSON.parse(text), s: { w: BigInt(w), c: Number(c), a: actor } });
      } catch {
        // skip a damaged row
      }
    }
    return { last, ops };
  }

  /** Saved on every write: the clock's last stamp too, so a reload never reuses a stamp. */
  saveOutbox(actor, last, ops) {
    this.#write(`${this.#prefix}/outbox/${actor}`, {
      last: [last.w.toString(), last.c],
      ops: ops.map((o) => [o.key, o.v === undefined ? null : JSON.stringify(o.v), o.s.w.toString(), o.s.c]),
    });
  }
}
