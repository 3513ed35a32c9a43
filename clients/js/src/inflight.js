// Writes sent and not yet acknowledged (see aether.js), by write id and by
// key, so looking up a key's newest unacknowledged op stays cheap however
// many ops are in flight.

import { cmp } from "./hlc.js";

export class InFlight {
  #byId = new Map();
  #byKey = new Map();
  #ops = 0;

  /** Ops in flight. */
  get size() { return this.#ops; }

  add(id, ops) {
    this.#byId.set(id, ops);
    this.#ops += ops.length;
    for (const op of ops) {
      let set = this.#byKey.get(op.key);
      if (!set) this.#byKey.set(op.key, (set = new Set()));
      set.add(op);
    }
  }

  /** The write's remaining ops, removed; undefined for an unknown id (acknowledged already, or from an older socket). */
  take(id) {
    const ops = this.#byId.get(id);
    if (!ops) return undefined;
    this.#byId.delete(id);
    for (const op of ops) this.#forget(op);
    return ops;
  }

  /** Removes and returns the op for `key` of write `id`, if any. */
  takeOne(id, key) {
    const ops = this.#byId.get(id);
    const i = ops ? ops.findIndex((o) => o.key === key) : -1;
    if (i < 0) return undefined;
    const [op] = ops.splice(i, 1);
    this.#forget(op);
    return op;
  }

  /** The newest op in flight for `key`. */
  newest(key) {
    let best;
    for (const op of this.#byKey.get(key) ?? []) if (!best || cmp(op.s, best.s) > 0) best = op;
    return best;
  }

  all() { return [...this.#byId.values()].flat(); }

  /** Every op, removed (the socket they went out on is gone). */
  clear() {
    const ops = this.all();
    this.#byId.clear();
    this.#byKey.clear();
    this.#ops = 0;
    return ops;
  }

  #forget(op) {
    this.#ops -= 1;
    const set = this.#byKey.get(op.key);
    set?.delete(op);
    if (set && set.size === 0) this.#byKey.delete(op.key);
  }
}
