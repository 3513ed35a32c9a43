// Types of the Aethermesh browser client (`aether.js`). Hand-written; checked
// with `tsc --strict --noEmit` (`npm run typecheck`).

/** Any JSON value a key can hold. `undefined` (never stored) means "absent or deleted". */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** `connecting`: a socket is opening or catching up; `online`: caught up and live; `offline`: waiting to retry. */
export type Status = "connecting" | "online" | "offline";

/** A hybrid-logical-clock stamp, as on the wire: 64-bit fields are decimal strings. */
export interface Stamp {
  wallNs: string;
  counter: number;
  actor: string;
}

/** One relay of an endpoint list (`GET /v1/clouds/{cloud}` answers `{endpoints: Endpoint[]}`). */
export interface Endpoint {
  url: string;
  cloud?: string;
}

/**
 * Where to connect: a relay's base URL (`ws://host:8080`, `https://relay.example.com`),
 * a list of them (tried in order, failing over to the next), an endpoint list
 * as served at `/v1/clouds/{cloud}`, or the URL of that document (`…/v1/clouds/eu-west`),
 * fetched on start and again whenever every endpoint failed.
 */
export type Relays = string | Array<string | Endpoint> | { endpoints: Endpoint[] };

/** A string-keyed storage such as `localStorage`. */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

export interface AetherOptions {
  /** The space (document) to sync. */
  space: string;
  /** The mesh's client token, when relays require one. */
  token?: string;
  /** Where state and unsent writes persist across reloads. Default `localStorage`; `null` keeps nothing. */
  storage?: StorageLike | null;
  /** Share changes with same-origin tabs of this space at once (BroadcastChannel). Default true. */
  broadcast?: boolean;
  /** First reconnect delay in ms (doubles per failed round, with jitter). Default 250. */
  backoffMs?: number;
  /** Longest reconnect delay in ms. Default 10000. */
  maxBackoffMs?: number;
  /** Most ops kept while unsent; beyond, the oldest key's pending op is dropped with an `overflow` error. Default 10000. */
  maxPendingOps?: number;
  /** Name sent in `hello` (shows in relay logs). */
  client?: string;
}

/** Where a change came from. */
export type Origin = "local" | "remote" | "tab" | "superseded" | "rejected";

export interface ChangeEvent {
  key: string;
  /** The value now visible; `undefined` when deleted. */
  value: Json | undefined;
  previous: Json | undefined;
  origin: Origin;
}

export interface SupersedeEvent {
  key: string;
  /** Your write that lost its last-writer-wins race (not applied anywhere). */
  yours: { value: Json | undefined; stamp: Stamp };
  /** What the key holds instead (now also the local value). */
  winner: { value: Json | undefined; stamp: Stamp };
}

export interface AetherError {
  /**
   * A relay error code (`docs/protocol.md`), or the client's own: `overflow` (its
   * queue bound), `connect` / `connection` (a socket could not open, or was dropped
   * as broken), `endpoints` (the endpoint list could not be fetched), `storage`
   * (persisting failed, e.g. over quota), `actor` (continuing under a new actor id: another
   * tab held this one, or the clock was ahead of the relay's and unsent writes were re-stamped).
   * Errors that name `keys` undid those writes.
   */
  code: string;
  message: string;
  /** Keys of the refused write; their local values were rolled back to what the relay confirmed. */
  keys: string[];
}

/** Another session of the space. `state` is what it published with `presence()`. */
export interface Peer {
  session: string;
  color: string;
  state: { [key: string]: Json };
}

export type Unsubscribe = () => void;

export class Aether {
  constructor(relays: Relays, options: AetherOptions);
  readonly space: string;
  /** This client's actor id (top bit set), kept across reloads with its unsent writes. */
  readonly actor: string;
  readonly status: Status;
  /** The relay URL in use, or null while not connected. */
  readonly relay: string | null;
  /** This connection's presence session and color, once online. */
  readonly session: string | null;
  readonly color: string | null;
  /** Ops written here and not yet acknowledged by a relay. */
  readonly pending: number;

  get<T extends Json = Json>(key: string): T | undefined;
  has(key: string): boolean;
  /** Live keys, sorted, optionally only those starting with `prefix`. */
  keys(prefix?: string): string[];
  /** Live entries, sorted by key, optionally only those whose key starts with `prefix`. */
  entries(prefix?: string): Array<[string, Json]>;

  /**
   * Sets a key locally at once; the write is sent when online and kept until acknowledged.
   * Throws `RangeError` for a key or value over the relay's limits (`maxKeyBytes`,
   * `maxValueBytes` of JSON text, UTF-8) or a key that is not well-formed text; nothing applies then.
   */
  set(key: string, value: Json): void;
  delete(key: string): void;
  /** Several sets (and deletes, as `undefined`) applied and sent as one write. */
  update(changes: { [key: string]: Json | undefined }): void;
  /**
   * Resolves once nothing is pending: every write made so far acknowledged (durable at the
   * relay's write quorum), superseded (`onSupersede`) or refused (`onError`). Rejects if the
   * client is closed first.
   */
  synced(): Promise<void>;

  on(key: string, listener: (value: Json | undefined, event: ChangeEvent) => void): Unsubscribe;
  onAny(listener: (event: ChangeEvent) => void): Unsubscribe;
  /** Publishes this session's presence (cursor, name, selection…); `null` withdraws it. Re-sent after reconnects. */
  presence(state: { [key: string]: Json } | null): void;
  /** Called with every other session's presence whenever it changes. */
  onPresence(listener: (peers: Peer[]) => void): Unsubscribe;
  readonly peers: Peer[];
  /** Fires when one of your writes lost a last-writer-wins race to a newer one. */
  onSupersede(listener: (event: SupersedeEvent) => void): Unsubscribe;
  onStatus(listener: (status: Status) => void): Unsubscribe;
  onError(listener: (error: AetherError) => void): Unsubscribe;
  /** Closes the connection and the tab channel; persisted writes stay for the next start. */
  close(): void;
}
