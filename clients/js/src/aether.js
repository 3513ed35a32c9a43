// Aethermesh browser client: an offline-first, last-writer-wins map of JSON
// values per space, synced through relays over the native protocol's JSON
// encoding (`GET /v1/ws`, subprotocol `aether.v1.json`, docs/protocol.md).
//
// The state a page sees is three layers merged by stamp, newest wins:
//   confirmed  what relays sent (catchups, changes) and what they acknowledged,
//   tab        what other same-origin tabs of the space wrote (BroadcastChannel),
//   local      this client's writes not yet acknowledged (queued or in flight).
// Every write is stamped here (hybrid logical clock; the actor id has its top
// bit set, as relays require), so a write made offline keeps its place in
// time: after a reload and a reconnect it wins over older values and loses to
// newer ones, which the relay reports as `superseded` (see `onSupersede`).
//
// Modules: connection.js (the socket: endpoints, backoff, pings), hlc.js
// (stamps, clock), endpoints.js (relay URLs), persist.js (localStorage, actor
// leases), inflight.js (sent writes). Types: aether.d.ts. No dependencies; relays
// serve them all under /client/.

import { Connection } from "./connection.js";
import { Clock, MS, cmp, fromWire, newer, toWire } from "./hlc.js";
import { InFlight } from "./inflight.js";
import { DEFAULT_LIMITS, TokenBucket, checkChanges, utf8, wellFormed } from "./limits.js";
import { Persistence, defaultStorage } from "./persist.js";

/** Presence updates are sent at most this often (the newest state wins). */
const PRESENCE_EVERY_MS = 50;
/** Confirmed state is saved at most this often (and when the page is hidden). */
const SAVE_STATE_EVERY_MS = 250;
/** Skews smaller than this are left alone: stamps stay on this machine's clock. */
const SKEW_TOLERANCE_NS = 250n * MS;
/** Relay errors after which a write is retried rather than dropped. */
const RETRY_CODES = new Set(["rate-limited", "overloaded", "unavailable", "write-failed"]);
/** Relay errors after which another relay is tried. */
const FAILOVER_CODES = new Set(["unavailable", "write-failed"]);
/** Refusals of a `subscribe`: the connection is useless; retry later. */
const SUBSCRIBE_CODES = new Set(["bad-space", "too-many-spaces", "auth-failed"]);


// ---------------------------------------------------------------- the client

export class Aether {
  #opts;
  #store;
  #clock;
  #conn;
  #helloAt = 0;
  /** @type {Map<string, Entry>} */ #confirmed = new Map();
  /** @type {Map<string, Entry>} */ #tab = new Map();
  /** Local ops not yet sent, one per key (a newer write replaces an unsent older one). */
  #queued = new Map();
  /** Sent writes awaiting their ack: id → ops. */
  #inflight = new InFlight();
  /** Ops restored from storage at start: if another live tab holds the actor, they are its. */
  #adopted = new Set();
  /** Local ops not yet persisted nor told to other tabs (see `update`). */
  #written = new Set();
  /** @type {Map<string, Entry>} */ #view = new Map();
  #nextId = 1n;
  #resume = null; // {epoch, seq}
  #session = null;
  #color = null;
  #limits = { ...DEFAULT_LIMITS };
  #bucket = null;
  #flushTimer = null;
  #saveTimer = null;
  #presenceState = null;
  #presenceTimer = null;
  #presenceSentAt = 0;
  #peers = new Map();
  /** `peers` as an array whose identity changes only when they do (React's useSyncExternalStore). */
  #peerList = [];
  #channel = null;
  #closed = false;
  #waiters = [];
  #listeners = { key: new Map(), any: new Set(), presence: new Set(), supersede: new Set(), status: new Set(), error: new Set() };
  #onPageHide = () => {
    this.#saveAll(true);
    this.#post({ t: "gone", actor: this.actor }); // other tabs stop showing our unsent writes
  };
  /** Hidden tabs may be frozen or discarded without a pagehide: save now. */
  #onVisibility = () => {
    if (this.#closed) return;
    const hidden = typeof document !== "undefined" && document.visibilityState === "hidden";
    if (hidden) this.#saveAll(false);
    this.#store.setHidden(hidden);
  };
  /** Back from the back-forward cache: take the actor's lease again. */
  #onPageShow = (e) => {
    if (e.persisted && !this.#closed) this.#store.renewLease();
  };

  constructor(relays, options) {
    if (!options || typeof options.space !== "string" || options.space === "") throw new TypeError("Aether: options.space is required");
    if (!wellFormed(options.space) || utf8(options.space) > 1024) throw new TypeError("Aether: options.space must be well-formed text of at most 1024 bytes");
    this.#opts = {
      token: options.token,
      broadcast: options.broadcast ?? true,
      backoffMs: options.backoffMs ?? 250,
      maxBackoffMs: options.maxBackoffMs ?? 10_000,
      maxPendingOps: options.maxPendingOps ?? 10_000,
      client: options.client ?? "aether.js",
    };
    this.space = options.space;
    // First what can throw (a bad relay URL), then what takes locks, timers and listeners.
    this.#conn = new Connection(relays, this.#opts, {
      ready: () => this.#store.ready, // never send as an actor another live tab holds
      open: () => {
        this.#helloAt = Date.now();
        this.#conn.send({ hello: { version: 1, actor: this.actor, client: this.#opts.client, ...(this.#opts.token ? { token: this.#opts.token } : {}) } });
      },
      frame: (frame) => this.#onFrame(frame),
      closed: () => this.#disconnected(),
      status: (s) => this.#emit("status", s),
      error: (code, message) => this.#emit("error", { code, message, keys: [] }),
    });
    const prefix = `aether/v1/${this.space}`;
    const storage = options.storage === undefined ? defaultStorage() : options.storage;
    this.#store = new Persistence(storage, prefix, (message) => this.#emit("error", { code: "storage", message, keys: [] }));
    this.#clock = new Clock(this.#store.claimActor(() => this.#switchActor(false, "another tab holds this actor")));
    this.actor = this.#clock.actor.toString();
    this.#load();
    if (this.#opts.broadcast && typeof BroadcastChannel !== "undefined") {
      this.#channel = new BroadcastChannel(prefix);
      this.#channel.onmessage = (e) => this.#onTabMessage(e.data);
    }
    if (typeof addEventListener === "function") {
      addEventListener("pagehide", this.#onPageHide);
      addEventListener("pageshow", this.#onPageShow);
      addEventListener("visibilitychange", this.#onVisibility);
    }
    this.#conn.start();
  }

  // ------------------------------------------------------------ reading

  get status() { return this.#conn.status; }
  get relay() { return this.#conn.url; }
  get session() { return this.#session; }
  get color() { return this.#color; }
  get pending() {
    return this.#queued.size + this.#inflight.size;
  }
  get peers() { return this.#peerList; }

  get(key) { return this.#view.get(key)?.v; }
  has(key) { return this.#view.get(key)?.v !== undefined; }
  keys(prefix = "") { return this.entries(prefix).map(([k]) => k); }
  entries(prefix = "") {
    const out = [];
    for (const [k, e] of this.#view) if (e.v !== undefined && k.startsWith(prefix)) out.push([k, e.v]);
    return out.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  }

  // ------------------------------------------------------------ writing

  set(key, value) {
    if (value === undefined) throw new TypeError("Aether.set: value is undefined (use delete)");
    this.update({ [key]: value });
  }
  delete(key) { this.update({ [key]: undefined }); }

  update(changes) {
    if (this.#closed) throw new Error("Aether: closed");
    const ops = checkChanges(changes, this.#limits).map(([key, v]) => ({ key, v, s: this.#clock.now() }));
    if (ops.length === 0) return;
    for (const op of ops) {
      this.#queued.delete(op.key); // keeps insertion order = write order
      this.#queued.set(op.key, op);
      this.#show(op.key, "local");
    }
    this.#bound();
    // Persisted and told to other tabs once per burst of writes, at the end of the current
    // task: no reload can come between a write and its save.
    if (this.#written.size === 0) queueMicrotask(() => this.#afterWrites());
    for (const o of ops) this.#written.add(o);
    this.#scheduleFlush(0);
  }

  #afterWrites() {
    const ops = [...this.#written].map((o) => [o.key, o.v === undefined ? null : JSON.stringify(o.v), toWire(o.s)]);
    this.#written.clear();
    this.#saveOutbox();
    if (ops.length > 0) this.#post({ t: "ops", ops });
  }

  synced() {
    if (this.#closed) return Promise.reject(new Error("Aether: closed"));
    if (this.pending === 0) return Promise.resolve();
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  #checkSynced() {
    if (this.pending > 0 || this.#waiters.length === 0) return;
    const ws = this.#waiters;
    this.#waiters = [];
    for (const w of ws) w.resolve();
  }

  presence(state) {
    if (state !== null && (typeof state !== "object" || Array.isArray(state))) throw new TypeError("Aether.presence: an object or null");
    this.#presenceState = state === null ? null : JSON.parse(JSON.stringify(state));
    this.#schedulePresence();
  }

  // ------------------------------------------------------------ listening

  on(key, listener) {
    let set = this.#listeners.key.get(key);
    if (!set) this.#listeners.key.set(key, (set = new Set()));
    set.add(listener);
    return () => {
      set.delete(listener);
      if (set.size === 0) this.#listeners.key.delete(key);
    };
  }
  onAny(listener) { return this.#add("any", listener); }
  onPresence(listener) { return this.#add("presence", listener); }
  onSupersede(listener) { return this.#add("supersede", listener); }
  onStatus(listener) { return this.#add("status", listener); }
  onError(listener) { return this.#add("error", listener); }

  close() {
    if (this.#closed) return;
    this.#closed = true;
    for (const t of [this.#flushTimer, this.#presenceTimer, this.#saveTimer]) clearTimeout(t);
    this.#presenceTimer = null;
    for (const w of this.#waiters.splice(0)) w.reject(new Error("Aether: closed"));
    if (typeof removeEventListener === "function") {
      removeEventListener("pagehide", this.#onPageHide);
      removeEventListener("pageshow", this.#onPageShow);
      removeEventListener("visibilitychange", this.#onVisibility);
    }
    this.#saveAll(false);
    this.#store.release({ stop: true });
    this.#post({ t: "gone", actor: this.actor });
    this.#channel?.close();
    this.#setPeers(() => this.#peers.clear());
    this.#conn.close();
  }

  #add(kind, listener) {
    this.#listeners[kind].add(listener);
    return () => this.#listeners[kind].delete(listener);
  }

  #emit(kind, arg) {
    for (const l of [...this.#listeners[kind]]) {
      try {
        l(arg);
      } catch (e) {
        setTimeout(() => { throw e; }); // a listener's bug must not break the sync loop
      }
    }
  }

  // ------------------------------------------------------------ the merged view

  /** Recomputes a key's visible entry from the three layers; emits when it changed. */
  #show(key, origin) {
    let best = newer(this.#confirmed.get(key), this.#tab.get(key));
    best = newer(best, this.#queued.get(key));
    best = newer(best, this.#inflight.newest(key));
    const before = this.#view.get(key);
    if (best === before || (best && before && cmp(best.s, before.s) === 0)) return;
    if (best) this.#view.set(key, best);
    else this.#view.delete(key);
    const event = { key, value: best?.v, previous: before?.v, origin };
    const ls = this.#listeners.key.get(key);
    if (ls) for (const l of [...ls]) {
      try {
        l(event.value, event);
      } catch (e) {
        setTimeout(() => { throw e; });
      }
    }
    this.#emit("any", event);
  }

  /** Merges an entry from a relay (or an acknowledged local op) into the confirmed layer. */
  #confirm(key, entry, origin) {
    this.#clock.observe(entry.s);
    const had = this.#confirmed.get(key);
    if (had && cmp(had.s, entry.s) >= 0) return;
    this.#confirmed.set(key, entry);
    const tab = this.#tab.get(key);
    if (tab && cmp(tab.s, entry.s) <= 0) this.#tab.delete(key);
    this.#show(key, origin);
    this.#scheduleSave();
  }

  // ------------------------------------------------------------ other tabs

  #post(msg) {
    try {
      this.#channel?.postMessage(msg);
    } catch {
      // a closed channel: the relay still carries the change
    }
  }

  #onTabMessage(msg) {
    if (!msg || typeof msg !== "object") return;
    if (msg.t === "ops" && Array.isArray(msg.ops)) {
      for (const [key, text, stamp] of msg.ops) {
        const s = fromWire(stamp);
        const entry = { v: text === null ? undefined : JSON.parse(text), s };
        this.#clock.observe(s);
        if (newer(this.#confirmed.get(key), entry) !== entry) continue;
        this.#tab.set(key, newer(this.#tab.get(key), entry));
        this.#show(key, "tab");
      }
    } else if (msg.t === "gone" && typeof msg.actor === "string" && /^\d+$/.test(msg.actor)) {
      // That tab went; its unsent writes wait in storage for it (or a new tab) to send.
      const actor = BigInt(msg.actor);
      for (const [key, e] of [...this.#tab]) {
        if (e.s.a !== actor) continue;
        this.#tab.delete(key);
        this.#show(key, "rejected");
      }
    } else if (msg.t === "undo" && Array.isArray(msg.keys)) {
      // Another tab's write was refused: forget what it told us.
      for (const [key, stamp] of msg.keys) {
        const t = this.#tab.get(key);
        if (t && cmp(t.s, fromWire(stamp)) === 0) {
          this.#tab.delete(key);
          this.#show(key, "rejected");
        }
      }
    }
  }

  // ------------------------------------------------------------ connection

  /** The socket went (connection.js reconnects): what was in flight goes back to the queue. */
  #disconnected() {
    this.#session = null;
    this.#color = null;
    clearTimeout(this.#flushTimer);
    clearTimeout(this.#presenceTimer);
    this.#presenceTimer = null;
    // Unacknowledged writes go back to the queue (a newer queued op for the same key wins);
    // resending them is harmless: stamps make them idempotent.
    const back = this.#inflight.clear();
    const requeued = new Map();
    for (const op of [...back, ...this.#queued.values()]) {
      const had = requeued.get(op.key);
      if (!had || cmp(op.s, had.s) > 0) requeued.set(op.key, op);
    }
    this.#queued = requeued;
    this.#checkSynced();
    this.#setPeers(() => this.#peers.clear()); // no ghosts: the next relay sends who is there
  }

  #onFrame(frame) {
    const [kind] = Object.keys(frame);
    const f = frame[kind] ?? {};
    switch (kind) {
      case "welcome": {
        this.#conn.welcomed();
        this.#session = f.session ?? null;
        this.#color = f.color ?? null;
        this.#limits = { ...this.#limits, ...(f.limits ?? {}) };
        const rate = Number(f.limits?.opsPerSec ?? 0);
        const burst = Number(f.limits?.burst ?? 0);
        // The relay charged the hello and the subscribe already.
        this.#bucket = rate > 0 && burst > 0 ? new TokenBucket(rate, burst, 2) : null;
        // Follow the relay's clock when ours is off, so our writes neither lose unfairly nor get refused.
        const now = BigInt(Date.now());
        const relayNs = BigInt(f.nowNs ?? "0") + (now - BigInt(this.#helloAt)) * MS / 2n;
        const skew = relayNs - now * MS;
        this.#clock.offsetNs = skew > SKEW_TOLERANCE_NS || skew < -SKEW_TOLERANCE_NS ? skew : 0n;
        // Stamps made on a clock far ahead (before this welcome, or restored) would be refused
        // as future-stamp: continue as a new actor on the corrected clock, re-stamping them.
        const maxSkew = BigInt(f.maxSkewNs ?? "60000000000");
        this.#clock.maxAheadNs = maxSkew;
        if (this.#clock.last.w > relayNs + maxSkew) return this.#switchActor(true, "the clock was ahead of the relay's");
        const sub = { space: this.space, presence: true };
        if (this.#resume) Object.assign(sub, { epoch: this.#resume.epoch, seq: this.#resume.seq });
        this.#conn.send({ subscribe: sub });
        break;
      }
      case "catchup": {
        if (f.space !== this.space) break;
        this.#conn.progress();
        for (const op of f.ops ?? []) this.#applyRemote(op);
        if (f.done) {
          this.#resume = typeof f.epoch === "string" && f.epoch !== "" ? { epoch: f.epoch, seq: f.seq ?? "0" } : null;
          this.#scheduleSave();
          this.#conn.online();
          this.#presenceSentAt = 0;
          if (this.#presenceState) this.#schedulePresence();
          this.#scheduleFlush(0);
        }
        break;
      }
      case "changes": {
        if (f.space !== this.space) break;
        for (const op of f.ops ?? []) this.#applyRemote(op);
        if (this.#resume && f.seq) this.#resume.seq = f.seq;
        this.#scheduleSave();
        break;
      }
      case "ack": {
        const ops = this.#inflight.take(f.id ?? "0");
        if (!ops) break;
        for (const op of ops) this.#confirm(op.key, { v: op.v, s: op.s }, "local");
        this.#afterSettle();
        break;
      }
      case "superseded": {
        const mine = this.#inflight.takeOne(f.id ?? "0", f.key);
        if (!mine) break;
        const w = f.winner ?? {};
        const winner = { v: w.delete ? undefined : w.value ?? null, s: fromWire(w.stamp) };
        this.#confirm(f.key, winner, "superseded");
        this.#show(f.key, "superseded");
        this.#emit("supersede", {
          key: f.key,
          yours: { value: mine.v, stamp: toWire(mine.s) },
          winner: { value: winner.v, stamp: toWire(winner.s) },
        });
        this.#saveOutbox();
        this.#checkSynced();
        break;
      }
      case "error":
        this.#onError(f);
        break;
      case "presence": {
        if (f.space !== this.space || !f.session) break;
        const state = f.state;
        if (state && typeof state === "object" && !Array.isArray(state) && Object.keys(state).length > 0) {
          this.#setPeers(() => this.#peers.set(f.session, { session: f.session, color: typeof f.color === "string" ? f.color : "#888", state }));
        } else if (this.#peers.has(f.session)) {
          this.#setPeers(() => this.#peers.delete(f.session));
        }
        break;
      }
      default:
        break; // a newer relay's frame: ignore
    }
  }

  /** Changes the peers and announces the new list (once per change, a new array). */
  #setPeers(change) {
    const before = this.#peers.size;
    change();
    if (before === 0 && this.#peers.size === 0) return;
    this.#peerList = [...this.#peers.values()];
    this.#emit("presence", this.#peerList);
  }

  #applyRemote(op) {
    if (typeof op.key !== "string") throw new Error("op without key");
    this.#confirm(op.key, { v: op.delete ? undefined : op.value ?? null, s: fromWire(op.stamp) }, "remote");
  }

  #onError(f) {
    const code = f.code ?? "error";
    const message = f.message ?? "";
    const ops = f.id && f.id !== "0" ? this.#inflight.take(f.id) : undefined;
    if (ops) {
      if (code === "quorum-timeout") {
        // Durable at this relay; it replicates on its own.
        for (const op of ops) this.#confirm(op.key, { v: op.v, s: op.s }, "local");
      } else if (RETRY_CODES.has(code) || code === "future-stamp") {
        // Back to the queue, unless a newer write of the key is queued or in flight.
        for (const op of ops) {
          const q = this.#queued.get(op.key);
          const f2 = this.#inflight.newest(op.key);
          if ((!q || cmp(op.s, q.s) > 0) && (!f2 || cmp(op.s, f2.s) > 0)) this.#queued.set(op.key, op);
        }
        if (code === "future-stamp") return this.#switchActor(true, `${code}: ${message}`);
        if (FAILOVER_CODES.has(code) && this.#conn.alternatives) return this.#conn.drop(`${code}: ${message}`);
        this.#scheduleFlush(500 + Math.random() * 500);
      } else {
        // Refused for good: roll the keys back to what relays confirmed.
        for (const op of ops) this.#show(op.key, "rejected");
        this.#post({ t: "undo", keys: ops.map((o) => [o.key, toWire(o.s)]) });
        this.#emit("error", { code, message, keys: ops.map((o) => o.key) });
      }
      this.#afterSettle();
      return;
    }
    this.#emit("error", { code, message, keys: [] });
    if (f.fatal && code === "bad-frame") this.#resume = null; // perhaps our resume point: start afresh
    if (f.fatal || (SUBSCRIBE_CODES.has(code) && this.status !== "online")) this.#conn.drop(`${code}: ${message}`);
  }

  #afterSettle() {
    this.#saveOutbox();
    this.#checkSynced();
  }

  // ------------------------------------------------------------ sending

  #scheduleFlush(ms) {
    clearTimeout(this.#flushTimer);
    this.#flushTimer = setTimeout(() => this.#flush(), ms);
  }

  /** Sends queued ops as writes of at most `maxOpsPerWrite` ops and half a frame, paced by the relay's rate. */
  #flush() {
    if (this.status !== "online" || this.#queued.size === 0) return;
    const maxOps = Math.max(1, Number(this.#limits.maxOpsPerWrite) || 256);
    const maxBytes = Math.max(1024, (Number(this.#limits.maxFrameBytes) || 262144) / 2);
    while (this.#queued.size > 0) {
      const batch = [];
      const wire = [];
      let bytes = 0;
      for (const op of this.#queued.values()) {
        const w = op.v === undefined ? { key: op.key, delete: true, stamp: toWire(op.s) } : { key: op.key, value: op.v, stamp: toWire(op.s) };
        const size = utf8(JSON.stringify(w)) + 1;
        if (batch.length > 0 && (batch.length >= maxOps || bytes + size > maxBytes)) break;
        batch.push(op);
        wire.push(w);
        bytes += size;
      }
      const wait = this.#take(batch.length);
      if (wait > 0) return this.#scheduleFlush(wait);
      const id = (this.#nextId++).toString();
      if (!this.#conn.send({ write: { id, space: this.space, ops: wire } })) return;
      for (const op of batch) this.#queued.delete(op.key);
      this.#inflight.add(id, batch);
    }
    this.#saveOutbox();
  }

  /** ms to wait for `n` of the relay's rate tokens, or 0 (taken). */
  #take(n) {
    return this.#bucket ? this.#bucket.take(n) : 0;
  }

  #schedulePresence() {
    if (this.#presenceTimer || this.status !== "online") return;
    const wait = Math.max(0, this.#presenceSentAt + PRESENCE_EVERY_MS - Date.now());
    this.#presenceTimer = setTimeout(() => {
      this.#presenceTimer = null;
      if (this.status !== "online") return;
      const wait = this.#take(1);
      if (wait > 0) {
        this.#presenceSentAt = Date.now() + wait - PRESENCE_EVERY_MS;
        return this.#schedulePresence();
      }
      this.#presenceSentAt = Date.now();
      this.#conn.send({ presence: this.#presenceState ? { space: this.space, state: this.#presenceState } : { space: this.space } });
    }, wait);
  }

  /** Bounds the unsent queue: the oldest queued key's op goes first, reported as `overflow`. */
  #bound() {
    while (this.pending > this.#opts.maxPendingOps && this.#queued.size > 0) {
      const [key, op] = this.#queued.entries().next().value;
      this.#queued.delete(key);
      this.#show(key, "rejected");
      // Not yet told to other tabs: nothing to undo there.
      if (!this.#written.delete(op)) this.#post({ t: "undo", keys: [[key, toWire(op.s)]] });
      this.#emit("error", { code: "overflow", message: `more than ${this.#opts.maxPendingOps} unsent ops`, keys: [key] });
    }
    this.#checkSynced();
  }

  /**
   * Continues as another actor. `keep`: the clock was ahead, so this client's
   * unacknowledged ops were (or would be) refused as future-stamp and never
   * applied anywhere; they are re-stamped as the new actor's (lowering stamps
   * under the old actor could repeat one). Otherwise another live tab holds
   * the old actor: the ops restored from its outbox at start are that tab's to
   * send (they stay visible as the tab's), and ops written here since are
   * re-stamped. Other tabs hear of the new stamps and forget the old ones.
   */
  #switchActor(keep, why) {
    if (this.#closed) return;
    const old = this.actor;
    const newest = new Map();
    for (const op of [...this.#inflight.clear(), ...this.#queued.values()]) {
      const had = newest.get(op.key);
      if (!had || cmp(op.s, had.s) > 0) newest.set(op.key, op);
    }
    this.#queued = new Map();
    const clock = new Clock(this.#store.claimNew(keep));
    clock.offsetNs = this.#clock.offsetNs;
    clock.maxAheadNs = this.#clock.maxAheadNs;
    for (const e of this.#confirmed.values()) clock.observe(e.s);
    this.#clock = clock;
    this.actor = clock.actor.toString();
    const undo = [];
    for (const op of newest.values()) {
      if (!keep && this.#adopted.has(op)) {
        this.#tab.set(op.key, newer(this.#tab.get(op.key), { v: op.v, s: op.s }));
        this.#show(op.key, "tab");
        continue;
      }
      undo.push([op.key, toWire(op.s)]);
      const mine = { key: op.key, v: op.v, s: clock.now() };
      this.#queued.set(op.key, mine);
      if (this.#written.size === 0) queueMicrotask(() => this.#afterWrites());
      this.#written.add(mine);
      this.#show(op.key, "local");
    }
    this.#adopted.clear();
    if (undo.length > 0) this.#post({ t: "undo", keys: undo });
    if (keep) this.#store.dropOutbox(old);
    this.#saveOutbox();
    this.#checkSynced();
    this.#emit("error", { code: "actor", message: `continuing as a new actor: ${why}`, keys: [] });
    this.#conn.restart(why); // the hello names the actor
  }

  // ------------------------------------------------------------ persistence (persist.js)

  #load() {
    const { entries, resume, offsetNs: spaceOffset } = this.#store.loadState();
    for (const [key, entry] of entries) {
      this.#confirmed.set(key, entry);
      this.#view.set(key, entry);
      this.#clock.observe(entry.s);
    }
    this.#resume = resume;
    const { last, offsetNs, ops } = this.#store.loadOutbox(this.#clock.actor);
    if (last) this.#clock.restore(last);
    // The last offset a relay gave this space's tabs, or this actor's: offline writes start corrected.
    this.#clock.offsetNs = spaceOffset ?? offsetNs;
    for (const op of ops) {
      const had = this.#queued.get(op.key);
      if (!had || cmp(op.s, had.s) > 0) this.#queued.set(op.key, op);
    }
    for (const op of this.#queued.values()) this.#adopted.add(op);
    for (const key of this.#queued.keys()) this.#show(key, "local");
  }

  #saveOutbox() {
    if (!this.#store.enabled) return;
    const ops = [...this.#queued.values(), ...this.#inflight.all()];
    this.#store.saveOutbox(this.actor, this.#clock, ops);
  }

  #scheduleSave() {
    if (!this.#store.enabled || this.#saveTimer) return;
    this.#saveTimer = setTimeout(() => {
      this.#saveTimer = null;
      this.#store.saveState(this.#confirmed, this.#resume, this.#clock.offsetNs);
    }, SAVE_STATE_EVERY_MS);
  }

  /** Everything now (the page is going, or the client closes); `release` frees the actor. */
  #saveAll(release) {
    if (!this.#store.enabled) return;
    clearTimeout(this.#saveTimer);
    this.#saveTimer = null;
    this.#store.saveState(this.#confirmed, this.#resume, this.#clock.offsetNs);
    this.#saveOutbox();
    if (release) this.#store.release();
  }
}
