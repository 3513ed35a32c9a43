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
// Modules: hlc.js (stamps, clock), endpoints.js (relay URLs), persist.js
// (localStorage, actor leases). Types: aether.d.ts. No dependencies; relays
// serve them all under /client/.

import { parseRelays } from "./endpoints.js";
import { Clock, MS, cmp, fromWire, newer, toWire } from "./hlc.js";
import { InFlight } from "./inflight.js";
import { Persistence, defaultStorage } from "./persist.js";

const PROTOCOL = "aether.v1.json";
/** Client pings (RTT and dead-socket detection). */
const PING_EVERY_MS = 15_000;
const PONG_WITHIN_MS = 10_000;
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


// ---------------------------------------------------------------- the client

export class Aether {
  #urls;
  #cloudUrl;
  #opts;
  #store;
  #clock;
  /** @type {Map<string, Entry>} */ #confirmed = new Map();
  /** @type {Map<string, Entry>} */ #tab = new Map();
  /** Local ops not yet sent, one per key (a newer write replaces an unsent older one). */
  #queued = new Map();
  /** Sent writes awaiting their ack: id → ops. */
  #inflight = new InFlight();
  /** Local ops not yet persisted nor told to other tabs (see `update`). */
  #written = [];
  /** @type {Map<string, Entry>} */ #view = new Map();
  #nextId = 1n;
  #resume = null; // {epoch, seq}
  #status = "connecting";
  #ws = null;
  #relay = null;
  #session = null;
  #color = null;
  #limits = { maxOpsPerWrite: 256, maxFrameBytes: 262144 };
  #bucket = null;
  #endpoint = 0;
  #failures = 0;
  #reconnectTimer = null;
  #flushTimer = null;
  #pingTimer = null;
  #pongTimer = null;
  #saveTimer = null;
  #presenceState = null;
  #presenceTimer = null;
  #presenceSentAt = 0;
  #peers = new Map();
  #channel = null;
  #closed = false;
  #waiters = [];
  #listeners = { key: new Map(), any: new Set(), presence: new Set(), supersede: new Set(), status: new Set(), error: new Set() };
  #onPageHide = () => this.#saveAll(true);
  /** Back from the back-forward cache: take the actor's lease again. */
  #onPageShow = (e) => {
    if (e.persisted && !this.#closed) this.#store.renewLease();
  };

  constructor(relays, options) {
    if (!options || typeof options.space !== "string" || options.space === "") throw new TypeError("Aether: options.space is required");
    const { urls, cloudUrl } = parseRelays(relays);
    this.#urls = urls;
    this.#cloudUrl = cloudUrl;
    this.#opts = {
      token: options.token,
      broadcast: options.broadcast ?? true,
      backoffMs: options.backoffMs ?? 250,
      maxBackoffMs: options.maxBackoffMs ?? 10_000,
      maxPendingOps: options.maxPendingOps ?? 10_000,
      client: options.client ?? "aether.js",
    };
    this.space = options.space;
    const prefix = `aether/v1/${this.space}`;
    const storage = options.storage === undefined ? defaultStorage() : options.storage;
    this.#store = new Persistence(storage, prefix, (message) => this.#emit("error", { code: "storage", message, keys: [] }));
    this.#clock = new Clock(this.#store.claimActor());
    this.actor = this.#clock.actor.toString();
    this.#load();
    if (this.#opts.broadcast && typeof BroadcastChannel !== "undefined") {
      this.#channel = new BroadcastChannel(prefix);
      this.#channel.onmessage = (e) => this.#onTabMessage(e.data);
    }
    if (typeof addEventListener === "function") {
      addEventListener("pagehide", this.#onPageHide);
      addEventListener("pageshow", this.#onPageShow);
    }
    this.#connect();
  }

  // ------------------------------------------------------------ reading

  get status() { return this.#status; }
  get relay() { return this.#relay; }
  get session() { return this.#session; }
  get color() { return this.#color; }
  get pending() {
    return this.#queued.size + this.#inflight.size;
  }
  get peers() { return [...this.#peers.values()]; }

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
    const ops = [];
    for (const [key, value] of Object.entries(changes)) {
      if (typeof key !== "string" || key === "") throw new TypeError("Aether: keys are non-empty strings");
      // Round-trip through JSON: what is stored is exactly what others will see.
      const v = value === undefined ? undefined : JSON.parse(JSON.stringify(value));
      ops.push({ key, v, s: this.#clock.now() });
    }
    if (ops.length === 0) return;
    for (const op of ops) {
      this.#queued.delete(op.key); // keeps insertion order = write order
      this.#queued.set(op.key, op);
      this.#show(op.key, "local");
    }
    this.#bound();
    // Persisted and told to other tabs once per burst of writes, at the end of the current
    // task: no reload can come between a write and its save.
    if (this.#written.length === 0) queueMicrotask(() => this.#afterWrites());
    for (const o of ops) this.#written.push([o.key, o.v === undefined ? null : JSON.stringify(o.v), toWire(o.s)]);
    this.#scheduleFlush(0);
  }

  #afterWrites() {
    const ops = this.#written;
    this.#written = [];
    this.#saveOutbox();
    this.#post({ t: "ops", ops });
  }

  synced() {
    if (this.pending === 0) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push(resolve));
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
    for (const t of [this.#reconnectTimer, this.#flushTimer, this.#pingTimer, this.#pongTimer, this.#presenceTimer, this.#saveTimer]) clearTimeout(t);
    if (typeof removeEventListener === "function") {
      removeEventListener("pagehide", this.#onPageHide);
      removeEventListener("pageshow", this.#onPageShow);
    }
    this.#saveAll(false);
    this.#store.release({ stop: true });
    this.#channel?.close();
    const ws = this.#ws;
    this.#ws = null;
    if (ws) ws.close(1000, "closed");
    this.#peers.clear();
    this.#setStatus("offline");
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
    this.#view.set(key, best);
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

  #setStatus(s) {
    if (this.#status === s) return;
    this.#status = s;
    this.#emit("status", s);
  }

  async #connect() {
    if (this.#closed) return;
    this.#setStatus("connecting");
    if (this.#urls.length === 0 || (this.#cloudUrl && this.#endpoint === 0 && this.#failures > 0)) {
      if (!(await this.#fetchEndpoints())) return this.#retry();
    }
    if (this.#closed) return;
    const url = this.#urls[this.#endpoint % this.#urls.length];
    let ws;
    try {
      ws = new WebSocket(url, PROTOCOL);
    } catch (e) {
      this.#emit("error", { code: "connect", message: String(e), keys: [] });
      return this.#retry();
    }
    this.#ws = ws;
    let helloAt = 0;
    ws.onopen = () => {
      helloAt = Date.now();
      this.#send({ hello: { version: 1, actor: this.actor, client: this.#opts.client, ...(this.#opts.token ? { token: this.#opts.token } : {}) } });
    };
    ws.onmessage = (e) => {
      if (this.#ws !== ws) return;
      let frame;
      try {
        frame = JSON.parse(e.data);
      } catch {
        return this.#drop(ws, "undecodable frame");
      }
      try {
        this.#onFrame(ws, url, frame, helloAt);
      } catch (err) {
        this.#drop(ws, `bad frame: ${err && err.message}`);
      }
    };
    ws.onclose = () => {
      if (this.#ws === ws) this.#disconnected();
    };
    ws.onerror = () => {}; // onclose follows
  }

  async #fetchEndpoints() {
    try {
      const res = await fetch(this.#cloudUrl, { cache: "no-store" });
      if (!res.ok) throw new Error(`${res.status}`);
      const doc = await res.json();
      const { urls } = parseRelays(doc);
      this.#urls = urls;
      this.#endpoint = 0;
      return true;
    } catch (e) {
      this.#emit("error", { code: "endpoints", message: `fetching ${this.#cloudUrl}: ${e.message ?? e}`, keys: [] });
      return this.#urls.length > 0;
    }
  }

  /** Closes a misbehaving or dead socket; reconnecting follows from its close. */
  #drop(ws, why) {
    if (this.#ws !== ws) return;
    this.#emit("error", { code: "connection", message: why, keys: [] });
    this.#disconnected();
    try {
      ws.close(4000, "client: " + why.slice(0, 100));
    } catch {
      // already closed
    }
  }

  #disconnected() {
    const wasOnline = this.#status === "online";
    this.#ws = null;
    this.#relay = null;
    this.#session = null;
    this.#color = null;
    clearTimeout(this.#pingTimer);
    clearTimeout(this.#pongTimer);
    clearTimeout(this.#flushTimer);
    clearTimeout(this.#presenceTimer);
    // Unacknowledged writes go back to the queue (a newer queued op for the same key wins);
    // resending them is harmless: stamps make them idempotent.
    const back = this.#inflight.clear();
    const requeued = new Map();
    for (const op of [...back, ...this.#queued.values()]) {
      const had = requeued.get(op.key);
      if (!had || cmp(op.s, had.s) > 0) requeued.set(op.key, op);
    }
    this.#queued = requeued;
    if (this.#peers.size > 0) {
      this.#peers.clear(); // no ghosts: the next relay sends who is there
      this.#emit("presence", []);
    }
    if (this.#closed) return;
    this.#endpoint = (this.#endpoint + 1) % Math.max(1, this.#urls.length);
    if (wasOnline) this.#failures = 0;
    this.#retry();
  }

  #retry() {
    if (this.#closed) return;
    this.#setStatus("offline");
    // Exponential backoff with jitter; the first retry after a drop is quick.
    const exp = Math.min(this.#opts.maxBackoffMs, this.#opts.backoffMs * 2 ** Math.min(this.#failures, 16));
    const delay = exp / 2 + Math.random() * (exp / 2);
    this.#failures += 1;
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = setTimeout(() => this.#connect(), delay);
  }

  #send(frame) {
    const ws = this.#ws;
    if (!ws || ws.readyState !== 1) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  #onFrame(ws, url, frame, helloAt) {
    const [kind] = Object.keys(frame);
    const f = frame[kind] ?? {};
    switch (kind) {
      case "welcome": {
        this.#relay = url;
        this.#session = f.session ?? null;
        this.#color = f.color ?? null;
        this.#limits = { ...this.#limits, ...(f.limits ?? {}) };
        const rate = Number(f.limits?.opsPerSec ?? 0);
        const burst = Number(f.limits?.burst ?? 0);
        this.#bucket = rate > 0 && burst > 0 ? { rate, burst, tokens: burst, at: Date.now() } : null;
        // Follow the relay's clock when ours is off, so our writes neither lose unfairly nor get refused.
        const now = BigInt(Date.now());
        const relayNs = BigInt(f.nowNs ?? "0") + (now - BigInt(helloAt)) * MS / 2n;
        const skew = relayNs - now * MS;
        this.#clock.offsetNs = skew > SKEW_TOLERANCE_NS || skew < -SKEW_TOLERANCE_NS ? skew : 0n;
        const sub = { space: this.space, presence: true };
        if (this.#resume) Object.assign(sub, { epoch: this.#resume.epoch, seq: this.#resume.seq });
        this.#send({ subscribe: sub });
        this.#schedulePing();
        break;
      }
      case "catchup": {
        if (f.space !== this.space) break;
        for (const op of f.ops ?? []) this.#applyRemote(op);
        if (f.done) {
          this.#resume = { epoch: f.epoch, seq: f.seq ?? "0" };
          this.#scheduleSave();
          this.#failures = 0;
          this.#setStatus("online");
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
        break;
      }
      case "error":
        this.#onError(ws, f);
        break;
      case "presence": {
        if (f.space !== this.space || !f.session) break;
        const state = f.state;
        if (state && typeof state === "object" && Object.keys(state).length > 0) {
          this.#peers.set(f.session, { session: f.session, color: f.color ?? "#888", state });
        } else if (!this.#peers.delete(f.session)) break;
        this.#emit("presence", this.peers);
        break;
      }
      case "pong":
        clearTimeout(this.#pongTimer);
        break;
      default:
        break; // a newer relay's frame: ignore
    }
  }

  #applyRemote(op) {
    if (typeof op.key !== "string") throw new Error("op without key");
    this.#confirm(op.key, { v: op.delete ? undefined : op.value ?? null, s: fromWire(op.stamp) }, "remote");
  }

  #onError(ws, f) {
    const code = f.code ?? "error";
    const message = f.message ?? "";
    const ops = f.id && f.id !== "0" ? this.#inflight.take(f.id) : undefined;
    if (ops) {
      if (code === "quorum-timeout") {
        // Durable at this relay; it replicates on its own.
        for (const op of ops) this.#confirm(op.key, { v: op.v, s: op.s }, "local");
      } else if (RETRY_CODES.has(code)) {
        for (const op of ops) if (!this.#queued.has(op.key)) this.#queued.set(op.key, op);
        if (FAILOVER_CODES.has(code) && this.#urls.length > 1) return this.#drop(ws, `${code}: ${message}`);
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
    if (f.fatal) this.#drop(ws, `${code}: ${message}`);
  }

  #afterSettle() {
    this.#saveOutbox();
    if (this.pending === 0) {
      const ws = this.#waiters;
      this.#waiters = [];
      for (const w of ws) w();
    }
  }

  // ------------------------------------------------------------ sending

  #scheduleFlush(ms) {
    clearTimeout(this.#flushTimer);
    this.#flushTimer = setTimeout(() => this.#flush(), ms);
  }

  /** Sends queued ops as writes of at most `maxOpsPerWrite` ops and half a frame, paced by the relay's rate. */
  #flush() {
    if (this.#status !== "online" || this.#queued.size === 0) return;
    const maxOps = Math.max(1, Number(this.#limits.maxOpsPerWrite) || 256);
    const maxBytes = Math.max(1024, (Number(this.#limits.maxFrameBytes) || 262144) / 2);
    while (this.#queued.size > 0) {
      const batch = [];
      const wire = [];
      let bytes = 0;
      for (const op of this.#queued.values()) {
        const w = op.v === undefined ? { key: op.key, delete: true, stamp: toWire(op.s) } : { key: op.key, value: op.v, stamp: toWire(op.s) };
        const size = JSON.stringify(w).length + 1;
        if (batch.length > 0 && (batch.length >= maxOps || bytes + size > maxBytes)) break;
        batch.push(op);
        wire.push(w);
        bytes += size;
      }
      const wait = this.#take(batch.length);
      if (wait > 0) return this.#scheduleFlush(wait);
      const id = (this.#nextId++).toString();
      if (!this.#send({ write: { id, space: this.space, ops: wire } })) return;
      for (const op of batch) this.#queued.delete(op.key);
      this.#inflight.add(id, batch);
    }
    this.#saveOutbox();
  }

  /** Token bucket mirroring the relay's (`welcome.limits`): ms to wait before `n` tokens are there, or 0 (taken). */
  #take(n) {
    const b = this.#bucket;
    if (!b) return 0;
    const now = Date.now();
    b.tokens = Math.min(b.burst, b.tokens + ((now - b.at) / 1000) * b.rate);
    b.at = now;
    const need = Math.min(n, b.burst);
    if (b.tokens >= need) {
      b.tokens -= need;
      return 0;
    }
    return Math.ceil(((need - b.tokens) / b.rate) * 1000);
  }

  #schedulePresence() {
    if (this.#presenceTimer || this.#status !== "online") return;
    const wait = Math.max(0, this.#presenceSentAt + PRESENCE_EVERY_MS - Date.now());
    this.#presenceTimer = setTimeout(() => {
      this.#presenceTimer = null;
      if (this.#status !== "online") return;
      if (this.#take(1) > 0) return this.#schedulePresence();
      this.#presenceSentAt = Date.now();
      this.#send({ presence: this.#presenceState ? { space: this.space, state: this.#presenceState } : { space: this.space } });
    }, wait);
  }

  #schedulePing() {
    clearTimeout(this.#pingTimer);
    this.#pingTimer = setTimeout(() => {
      const ws = this.#ws;
      if (!ws) return;
      this.#send({ ping: { nonce: String(Date.now()) } });
      clearTimeout(this.#pongTimer);
      this.#pongTimer = setTimeout(() => this.#drop(ws, "no pong"), PONG_WITHIN_MS);
      this.#schedulePing();
    }, PING_EVERY_MS);
  }

  /** Bounds the unsent queue: the oldest queued key's op goes first, reported as `overflow`. */
  #bound() {
    while (this.pending > this.#opts.maxPendingOps && this.#queued.size > 0) {
      const [key, op] = this.#queued.entries().next().value;
      this.#queued.delete(key);
      this.#show(key, "rejected");
      this.#post({ t: "undo", keys: [[key, toWire(op.s)]] });
      this.#emit("error", { code: "overflow", message: `more than ${this.#opts.maxPendingOps} unsent ops`, keys: [key] });
    }
  }

  // ------------------------------------------------------------ persistence (persist.js)

  #load() {
    const { entries, resume } = this.#store.loadState();
    for (const [key, entry] of entries) {
      this.#confirmed.set(key, entry);
      this.#view.set(key, entry);
      this.#clock.observe(entry.s);
    }
    this.#resume = resume;
    const { last, ops } = this.#store.loadOutbox(this.#clock.actor);
    if (last) this.#clock.observe(last);
    for (const op of ops) {
      const had = this.#queued.get(op.key);
      if (!had || cmp(op.s, had.s) > 0) this.#queued.set(op.key, op);
    }
    for (const key of this.#queued.keys()) this.#show(key, "local");
  }

  #saveOutbox() {
    if (!this.#store.enabled) return;
    const ops = [...this.#queued.values(), ...this.#inflight.all()];
    this.#store.saveOutbox(this.actor, this.#clock.last, ops);
  }

  #scheduleSave() {
    if (!this.#store.enabled || this.#saveTimer) return;
    this.#saveTimer = setTimeout(() => {
      this.#saveTimer = null;
      this.#store.saveState(this.#confirmed, this.#resume);
    }, SAVE_STATE_EVERY_MS);
  }

  /** Everything now (the page is going, or the client closes); `release` frees the actor. */
  #saveAll(release) {
    if (!this.#store.enabled) return;
    clearTimeout(this.#saveTimer);
    this.#saveTimer = null;
    this.#store.saveState(this.#confirmed, this.#resume);
    this.#saveOutbox();
    if (release) this.#store.release();
  }
}
