// Compiled by `tsc --strict --noEmit` (npm run typecheck): the declarations
// must describe how the client is used, and reject what it refuses.
import { Aether, type ChangeEvent, type Json, type Peer, type Status, type SupersedeEvent } from "../src/aether.js";
import { AetherProvider, useAether, useAetherStatus, usePresence } from "../src/react.js";

const a = new Aether("ws://localhost:8080", { space: "demo", token: "t" });
const b = new Aether(["wss://eu.example.com", { url: "wss://us.example.com", cloud: "us" }], { space: "demo", storage: null });
const c = new Aether({ endpoints: [{ url: "wss://eu.example.com" }] }, { space: "demo", broadcast: false, backoffMs: 100 });

a.set("title", "Hello");
a.set("doc", { n: 1, tags: ["x"], none: null });
a.update({ "card/1": { title: "Ship" }, "card/2": undefined });
a.delete("title");
const n: number | undefined = a.get<number>("count");
const live: Array<[string, Json]> = a.entries("card/");
const ks: string[] = a.keys();
const off = a.on("count", (value: Json | undefined, ev: ChangeEvent) => void [value, ev.origin]);
off();
a.onAny((ev) => void ev.previous);
a.onSupersede((ev: SupersedeEvent) => void [ev.yours.stamp.wallNs, ev.winner.value]);
a.onPresence((peers: Peer[]) => void peers.map((p) => p.color));
a.onStatus((s: Status) => void s);
a.onError((e) => void e.keys);
a.presence({ cursor: { x: 1, y: 2 } });
a.presence(null);
const st: Status = a.status;
const pending: number = a.pending;
void a.synced().then(() => a.close());
void [n, live, ks, st, pending, b, c];

// @ts-expect-error a space is required
new Aether("ws://localhost:8080", {});
// @ts-expect-error values are JSON
a.set("f", () => 1);
// @ts-expect-error presence is an object
a.presence("here");

function Counter() {
  const [count, setCount] = useAether("count", 0);
  setCount(count + 1);
  setCount((c) => c + 1);
  const status: Status = useAetherStatus({ space: "other" });
  const [peers, publish] = usePresence();
  publish({ name: "me" });
  // @ts-expect-error the value keeps the default's type
  setCount("three");
  return `${count} ${status} ${peers.length}`;
}
void AetherProvider({ client: a, children: Counter() });
