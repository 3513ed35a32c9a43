// Types of the Aethermesh React bindings (`react.js`).
import type { ReactNode } from "react";
import type { Aether, Json, Peer, Relays, Status } from "./aether.js";

export interface UseAetherOptions {
  /** Use this client (otherwise the provider's, otherwise a shared one for `relays` + `space`). */
  client?: Aether;
  /** Default: the page's origin. */
  relays?: Relays;
  /** Default: `"default"`. */
  space?: string;
  token?: string;
}

export type SetAether<T> = (next: T | undefined | ((previous: T) => T | undefined)) => void;

export function AetherProvider(props: { client: Aether; children?: ReactNode }): ReactNode;
export function useAetherClient(options?: UseAetherOptions): Aether;
/** `useAether("count", 0)` is a `number`, not the literal `0`. */
export type Widen<T> = T extends string ? string : T extends number ? number : T extends boolean ? boolean : T;

export function useAether<T extends Json>(key: string, initial: T, options?: UseAetherOptions): [Widen<T>, SetAether<Widen<T>>];
export function useAetherStatus(options?: UseAetherOptions): Status;
export function usePresence(options?: UseAetherOptions): [Peer[], (state: { [key: string]: Json } | null) => void];
