// React bindings for the Aethermesh browser client: `useAether(key, default)`
// has the shape of `useState`, and the value is shared by every tab, browser
// and device on the space. Types: react.d.ts.
import { createContext, createElement, useCallback, useContext, useRef, useSyncExternalStore } from "react";
import { Aether } from "./aether.js";

const ClientContext = createContext(null);

/** Makes `client` the one the hooks below use (unless they are given one). */
export function AetherProvider({ client, children }) {
  return createElement(ClientContext.Provider, { value: client }, children);
}

/** Clients made by the hooks themselves, one per relays + space + token, shared by all components. */
const shared = new Map();

/**
 * The client a hook uses: `options.client`, else the provider's, else a shared
 * one for `options.relays` (default: this page's origin) and `options.space`
 * (default `"default"`).
 */
export function useAetherClient(options = {}) {
  const provided = useContext(ClientContext);
  if (options.client) return options.client;
  if (provided && options.relays === undefined && options.space === undefined) return provided;
  return sharedClient(options);
}

function sharedClient({ relays, space = "default", token }) {
  const where = relays ?? (typeof location === "undefined" ? undefined : location.origin);
  if (where === undefined) throw new Error("useAether: no relays given and no page origin to default to");
  const id = JSON.stringify([where, space, token ?? null]);
  let client = shared.get(id);
  if (!client) {
    client = new Aether(where, { space, token });
    shared.set(id, client);
  }
  return client;
}

/**
 * `const [count, setCount] = useAether("count", 0)`: the key's value (or
 * `initial` while it has none) and a setter that takes a value or an updater
 * function. Setting `undefined` deletes the key.
 */
export function useAether(key, initial, options = {}) {
  const client = useAetherClient(options);
  const subscribe = useCallback((onChange) => client.on(key, onChange), [client, key]);
  const read = useCallback(() => client.get(key), [client, key]);
  const value = useSyncExternalStore(subscribe, read, read);
  const initialRef = useRef(initial);
  initialRef.current = initial;
  const set = useCallback(
    (next) => {
      const had = client.get(key);
      const base = had === undefined ? initialRef.current : had;
      const v = typeof next === "function" ? next(base) : next;
      if (v === undefined) client.delete(key);
      else client.set(key, v);
    },
    [client, key],
  );
  return [value === undefined ? initial : value, set];
}

/** The connection status: `"connecting" | "online" | "offline"`. */
export function useAetherStatus(options = {}) {
  const client = useAetherClient(options);
  const subscribe = useCallback((onChange) => client.onStatus(onChange), [client]);
  const read = useCallback(() => client.status, [client]);
  return useSyncExternalStore(subscribe, read, read);
}

/** Other sessions' presence, and a function to publish this one's. */
export function usePresence(options = {}) {
  const client = useAetherClient(options);
  const subscribe = useCallback((onChange) => client.onPresence(onChange), [client]);
  // `client.peers` is a new array only when the peers change: a stable snapshot.
  const read = useCallback(() => client.peers, [client]);
  const peers = useSyncExternalStore(subscribe, read, read);
  const publish = useCallback((state) => client.presence(state), [client]);
  return [peers, publish];
}
