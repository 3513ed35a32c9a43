// The browser client's socket to one relay at a time (see aether.js): picks
// the relay from the endpoint list, opens `/v1/ws` with the JSON subprotocol,
// keeps it alive with pings, and reconnects with backoff, failing over down
// the list. What the frames mean is the client's business.

import { parseRelays } from "./endpoints.js";

const PROTOCOL = "aether.v1.json";
/** An attempt that neither fails nor gets online within this is abandoned for the next relay. */
const CONNECT_TIMEOUT_MS = 10_000;
/** A connection up this long resets the backoff: one that keeps dropping at once does not. */
const STABLE_MS = 10_000;
/** Client pings (RTT and dead-socket detection). */
const PING_EVERY_MS = 15_000;
const PONG_WITHIN_MS = 10_000;

export class Connection {
  #urls;
  #cloudUrl;
  #opts;
  #on;
  #ws = null;
  #url = null;
  #status = "connecting";
  #endpoint = 0;
  #failures = 0;
  #onlineAt = 0;
  #closed = false;
  /** The next reconnect is on purpose (`restart`): same relay, no failure counted. */
  #restarting = false;
  #timers = { reconnect: null, connect: null, ping: null, pong: null };

  /**
   * `relays` as `Aether` takes them; `opts` `{backoffMs, maxBackoffMs}`; `on`:
   * `ready()` (a promise to wait for before each attempt), `open()` (send the
   * hello), `frame(frame)` (may throw: the socket is dropped), `closed(wasOnline)`,
   * `status(s)`, `error(code, message)`.
   */
  constructor(relays, opts, on) {
    const { urls, cloudUrl } = parseRelays(relays);
    this.#urls = urls;
    this.#cloudUrl = cloudUrl;
    this.#opts = opts;
    this.#on = on;
  }

  get status() { return this.#status; }
  /** The socket URL while a relay has welcomed this client. */
  get url() { return this.#url; }
  /** Failing over is possible (more than one relay known). */
  get alternatives() { return this.#urls.length > 1 || this.#cloudUrl !== null; }

  start() { this.#connect(); }

  send(frame) {
    const ws = this.#ws;
    if (!ws || ws.readyState !== 1) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  /** The relay welcomed this client (its URL is `url` from now). */
  welcomed() {
    this.#url = this.#attempting;
    this.#schedulePing();
  }

  /** A catchup chunk came: the attempt is making progress, give it another timeout. */
  progress() {
    const ws = this.#ws;
    if (!ws || this.#status === "online") return;
    clearTimeout(this.#timers.connect);
    this.#timers.connect = setTimeout(() => {
      if (this.#ws === ws && this.#status !== "online") this.drop(`no catchup progress within ${CONNECT_TIMEOUT_MS} ms`);
    }, CONNECT_TIMEOUT_MS);
  }

  /** Reconnects to the same relay at once, counting no failure (e.g. to hello as another actor). */
  restart(why) {
    if (!this.#ws) return;
    this.#restarting = true;
    this.drop(why);
  }

  /** Caught up: live. */
  online() {
    clearTimeout(this.#timers.connect);
    this.#onlineAt = Date.now();
    this.#setStatus("online");
  }

  /** Drops the current socket (misbehaving, dead, or to reconnect); reconnecting follows. */
  drop(why) {
    const ws = this.#ws;
    if (!ws) return;
    this.#on.error("connection", why);
    this.#disconnected();
    try {
      ws.close(4000, "client: " + why.slice(0, 100));
    } catch {
      // already closed
    }
  }

  close() {
    if (this.#closed) return;
    this.#closed = true;
    for (const t of Object.values(this.#timers)) clearTimeout(t);
    const ws = this.#ws;
    this.#ws = null;
    this.#url = null;
    if (ws) ws.close(1000, "closed");
    this.#setStatus("offline");
  }

  #attempting = null;

  #setStatus(s) {
    if (this.#status === s) return;
    this.#status = s;
    this.#on.status(s);
  }

  async #connect() {
    if (this.#closed) return;
    this.#setStatus("connecting");
    await this.#on.ready();
    if (this.#closed || this.#ws) return;
    if (this.#urls.length === 0 || (this.#cloudUrl && this.#endpoint === 0 && this.#failures > 0)) {
      if (!(await this.#fetchEndpoints())) return this.#retry();
    }
    if (this.#closed || this.#ws) return;
    const url = this.#urls[this.#endpoint % this.#urls.length];
    let ws;
    try {
      ws = new WebSocket(url, PROTOCOL);
    } catch (e) {
      this.#on.error("connect", String(e));
      this.#endpoint = (this.#endpoint + 1) % this.#urls.length;
      return this.#retry();
    }
    this.#ws = ws;
    this.#attempting = url;
    clearTimeout(this.#timers.connect);
    this.#timers.connect = setTimeout(() => {
      if (this.#ws === ws && this.#status !== "online") this.drop(`no welcome and catchup within ${CONNECT_TIMEOUT_MS} ms`);
    }, CONNECT_TIMEOUT_MS);
    ws.onopen = () => {
      if (this.#ws === ws) this.#on.open();
    };
    ws.onmessage = (e) => {
      if (this.#ws !== ws) return;
      let frame;
      try {
        frame = JSON.parse(e.data);
      } catch {
        return this.drop("undecodable frame");
      }
      if (frame && typeof frame === "object" && "pong" in frame) {
        clearTimeout(this.#timers.pong);
        return;
      }
      try {
        this.#on.frame(frame);
      } catch (err) {
        if (this.#ws === ws) this.drop(`bad frame: ${err && err.message}`);
      }
    };
    ws.onclose = () => {
      if (this.#ws === ws) this.#disconnected();
    };
    ws.onerror = () => {}; // onclose follows
  }

  async #fetchEndpoints() {
    try {
      const signal = typeof AbortSignal !== "undefined" && AbortSignal.timeout ? AbortSignal.timeout(CONNECT_TIMEOUT_MS) : undefined;
      const res = await fetch(this.#cloudUrl, { cache: "no-store", signal });
      if (!res.ok) throw new Error(`${res.status}`);
      this.#urls = parseRelays(await res.json()).urls;
      this.#endpoint = 0;
      return true;
    } catch (e) {
      this.#on.error("endpoints", `fetching ${this.#cloudUrl}: ${e.message ?? e}`);
      return this.#urls.length > 0;
    }
  }

  #disconnected() {
    const wasOnline = this.#status === "online";
    const stable = wasOnline && Date.now() - this.#onlineAt >= STABLE_MS;
    this.#ws = null;
    this.#url = null;
    clearTimeout(this.#timers.connect);
    clearTimeout(this.#timers.ping);
    clearTimeout(this.#timers.pong);
    this.#on.closed(wasOnline);
    if (this.#closed) return;
    if (this.#restarting) {
      this.#restarting = false;
      this.#setStatus("offline");
      clearTimeout(this.#timers.reconnect);
      this.#timers.reconnect = setTimeout(() => this.#connect(), 0);
      return;
    }
    // A connection that was live (long enough) is tried once more: the nearest relay comes
    // first in the list. One that never got there, or keeps dropping, gives way to the next.
    if (stable) this.#failures = 0;
    if (!wasOnline || this.#failures > 0) this.#endpoint = (this.#endpoint + 1) % Math.max(1, this.#urls.length);
    this.#retry();
  }

  #retry() {
    if (this.#closed) return;
    this.#setStatus("offline");
    // Exponential backoff with jitter: half to all of the doubled delay.
    const exp = Math.min(this.#opts.maxBackoffMs, this.#opts.backoffMs * 2 ** Math.min(this.#failures, 16));
    const delay = exp / 2 + Math.random() * (exp / 2);
    this.#failures += 1;
    clearTimeout(this.#timers.reconnect);
    this.#timers.reconnect = setTimeout(() => this.#connect(), delay);
  }

  #schedulePing() {
    clearTimeout(this.#timers.ping);
    this.#timers.ping = setTimeout(() => {
      const ws = this.#ws;
      if (!ws) return;
      this.send({ ping: { nonce: String(Date.now()) } });
      clearTimeout(this.#timers.pong);
      this.#timers.pong = setTimeout(() => {
        if (this.#ws === ws) this.drop("no pong");
      }, PONG_WITHIN_MS);
      this.#schedulePing();
    }, PING_EVERY_MS);
  }
}
