// The browser client (`/client/aether.js`) in headless Chromium against real
// relays: sync, tabs, presence, offline edits across a reload and a relay
// restart, superseded writes, failover through an endpoint list.
import { after, afterEach, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { DEADLINE, Relay, fixture, launchBrowser, openPage, tempDir, uniqueSpace, waitFor } from "./harness.mjs";

const PAGE = `<!doctype html><meta charset="utf-8"><title>aether.js test page</title>
<script type="module">
import { Aether } from "/__test/lib/aether.js";
const p = new URLSearchParams(location.search);
const relays = JSON.parse(p.get("relays"));
const aether = new Aether(relays, { space: p.get("space"), ...JSON.parse(p.get("opts") || "{}") });
window.aether = aether;
window.log = { changes: [], supersede: [], status: [], errors: [], presence: [] };
aether.onAny((e) => log.changes.push({ key: e.key, value: e.value, origin: e.origin }));
aether.onSupersede((e) => log.supersede.push(e));
aether.onStatus((s) => log.status.push(s));
aether.onError((e) => log.errors.push(e));
aether.onPresence((peers) => log.presence.push(peers));
</script>`;

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

/** What a test started, closed after it whatever its outcome. */
const started = { relays: [], contexts: [], dirs: [] };
afterEach(async () => {
  for (const c of started.contexts.splice(0)) await c.close().catch(() => {});
  for (const r of started.relays.splice(0)) await r.close();
  for (const d of started.dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** A relay for this test (closed after it), serving the client this file's pages load. */
async function startRelay(opts) {
  const relay = await Relay.start(opts);
  started.relays.push(relay);
  await clientFrom(relay);
  return relay;
}

/**
 * The client as the relay serves it at /client/aether.js. Test pages load it
 * from a routed copy, as an app would from its own server or service worker,
 * so they can reload while the relay is down.
 */
let client = null;
async function clientFrom(relay) {
  const modules = new Map();
  const pending = ["aether.js"];
  while (pending.length > 0) {
    const name = pending.pop();
    if (modules.has(name)) continue;
    const res = await fetch(`${relay.http}/client/${name}`);
    assert.equal(res.status, 200, `/client/${name}`);
    assert.match(res.headers.get("content-type"), /^text\/javascript/);
    const code = await res.text();
    modules.set(name, code);
    for (const m of code.matchAll(/from "\.\/([a-z-]+\.js)"/g)) pending.push(m[1]);
  }
  assert.match(modules.get("aether.js"), /export class Aether/);
  client ??= modules;
  assert.deepEqual(modules, client, "every relay serves the same client");
  return modules;
}

/** A fresh browser profile (its own localStorage) with the test page and the client routed. */
async function profile() {
  assert.ok(client, "clientFrom(relay) first");
  const context = await browser.newContext();
  started.contexts.push(context);
  await fixture(context, "client", PAGE);
  await context.route("**/__test/lib/*.js", (route) => {
    const body = client.get(new URL(route.request().url()).pathname.split("/").pop());
    return body === undefined ? route.fulfill({ status: 404, body: "" }) : route.fulfill({ status: 200, contentType: "text/javascript", body });
  });
  return context;
}

function pageUrl(origin, space, relays, opts = {}) {
  const q = new URLSearchParams({ space, relays: JSON.stringify(relays), opts: JSON.stringify(opts) });
  return `${origin}/__test/client.html?${q}`;
}

async function online(page) {
  await waitFor(page, () => window.aether && window.aether.status === "online", null, "the client to be online");
}

const get = (page, key) => page.evaluate((k) => window.aether.get(k), key);
const waitValue = (page, key, value) =>
  waitFor(page, ([k, v]) => JSON.stringify(window.aether.get(k)) === JSON.stringify(v), [key, value], `${key} = ${JSON.stringify(value)}`);

describe("browser client", () => {
  test("two browsers sync through the relay; tabs of one browser share writes at once, even offline", async () => {
    const relay = await startRelay();
    const space = uniqueSpace("sync");
    const url = pageUrl(relay.http, space, relay.ws);
    const one = await profile();
    const two = await profile();
    const a1 = await openPage(one, url);
    const a2 = await openPage(one, url);
    const b = await openPage(two, url);
    for (const p of [a1, a2, b]) await online(p);

    // Actors: top bit set (relays require it), one per tab.
    const actors = await Promise.all([a1, a2, b].map((p) => p.evaluate(() => window.aether.actor)));
    for (const a of actors) assert.ok(BigInt(a) >= 1n << 63n, `actor ${a} has its top bit set`);
    assert.equal(new Set(actors).size, 3, "every tab has its own actor");

    const t0 = Date.now();
    await a1.evaluate(() => window.aether.set("greeting", { text: "hello", n: 1 }));
    await waitValue(b, "greeting", { text: "hello", n: 1 });
    console.log(`# sync latency, browser A → relay → browser B: ${Date.now() - t0} ms`);
    await waitValue(a2, "greeting", { text: "hello", n: 1 });
    await a1.evaluate(() => window.aether.synced());
    assert.equal(await a1.evaluate(() => window.aether.pending), 0);

    // Deletes reach everyone too, as undefined.
    await b.evaluate(() => window.aether.delete("greeting"));
    await waitFor(a1, () => window.aether.get("greeting") === undefined && !window.aether.has("greeting"), null, "the delete");

    // Presence: B sees A1's state and color; A1 never sees itself.
    await a1.evaluate(() => window.aether.presence({ name: "A1", cursor: { x: 3, y: 4 } }));
    const peer = await waitFor(b, () => window.aether.peers.find((p) => p.state.name === "A1"), null, "A1's presence on B");
    assert.ok(typeof peer.color === "string" && peer.color.length > 0, `a color: ${peer.color}`);
    assert.deepEqual(peer.state.cursor, { x: 3, y: 4 });
    await a2.evaluate(() => window.aether.presence({ name: "A2" }));
    await b.evaluate(() => window.aether.presence({ name: "B" }));
    await waitFor(a1, () => window.aether.peers.map((p) => p.state.name).sort().join() === "A2,B", null, "A1 sees A2 and B, not itself");
    assert.ok((await a1.evaluate(() => window.aether.peers.map((p) => p.session))).every((s) => s !== undefined));

    // The relay goes: tabs of one browser still share writes (BroadcastChannel); other browsers cannot.
    await relay.kill();
    for (const p of [a1, a2, b]) await waitFor(p, () => window.aether.status !== "online", null, "offline");
    await a1.evaluate(() => window.aether.set("offline", "tab to tab"));
    await waitValue(a2, "offline", "tab to tab");
    assert.equal(await get(b, "offline"), undefined, "B is another browser: nothing reaches it without the relay");
    assert.deepEqual(await a2.evaluate(() => window.log.changes.filter((c) => c.key === "offline").map((c) => c.origin)), ["tab"]);
    assert.equal(await b.evaluate(() => window.aether.peers.length), 0, "no presence ghosts while offline");

    for (const p of [a1, a2, b]) assert.deepEqual(p.errors, []);
  });

  test("an offline edit survives a reload and a relay restart, and merges by stamp", async () => {
    const relay = await startRelay();
    const space = uniqueSpace("offline");
    const url = pageUrl(relay.http, space, relay.ws);
    const one = await profile();
    const two = await profile();
    const a = await openPage(one, url);
    const b = await openPage(two, url);
    await online(a);
    await online(b);
    await a.evaluate(() => window.aether.update({ x: "base", z: "old from B?" }));
    await b.evaluate(() => window.aether.set("z", "old from B"));
    await waitValue(a, "z", "old from B");
    await waitValue(b, "x", "base");
    const actor = await a.evaluate(() => window.aether.actor);

    await relay.stop();
    await waitFor(a, () => window.aether.status !== "online", null, "A offline");
    await waitFor(b, () => window.aether.status !== "online", null, "B offline");
    // A edits offline: x (which B will then edit again, later), y (only A), z (newer than B's).
    const editedAt = await a.evaluate(() => { window.aether.update({ x: "offline A", y: "only A", z: "newer from A" }); return Date.now(); });
    assert.equal(await a.evaluate(() => window.aether.pending), 3);
    await waitFor(b, (t) => Date.now() > t, editedAt, "B's clock past A's edit"); // B's edit is later
    await b.evaluate(() => window.aether.set("x", "newer from B"));

    // A reload while still offline: the edits are there, unsent, with the same actor.
    await a.reload();
    await waitFor(a, () => window.aether && window.aether.pending === 3, null, "A's unsent writes restored");
    assert.equal(await a.evaluate(() => window.aether.actor), actor, "a reloaded tab keeps its actor");
    assert.equal(await get(a, "x"), "offline A");
    assert.equal(await get(a, "y"), "only A");
    assert.equal(await get(a, "z"), "newer from A");
    assert.notEqual(await a.evaluate(() => window.aether.status), "online");

    await relay.restart();
    await online(a);
    await online(b);
    for (const p of [a, b]) {
      await waitValue(p, "x", "newer from B"); // A's older offline edit does not clobber B's newer one
      await waitValue(p, "y", "only A");
      await waitValue(p, "z", "newer from A"); // and the relay's older value does not clobber A's
      await p.evaluate(() => window.aether.synced());
    }
    // And it all stays after another reload, now from the relay and the page's own storage.
    await b.reload();
    await online(b);
    await waitValue(b, "x", "newer from B");
    await waitValue(b, "y", "only A");
    assert.deepEqual(a.errors, []);
    assert.deepEqual(b.errors, []);
  });

  test("onSupersede fires on the loser of a concurrent write", async () => {
    const relay = await startRelay();
    const space = uniqueSpace("race");
    const url = pageUrl(relay.http, space, relay.ws);
    const one = await profile();
    const two = await profile();
    // A's frames to the relay pass through here, so its write can be held back
    // while B's later write lands: A's write then arrives older than what the relay has.
    const a = await one.newPage();
    a.errors = [];
    const held = [];
    let hold = false;
    let toRelay = null;
    await a.routeWebSocket(/\/v1\/ws$/, (ws) => {
      const server = ws.connectToServer();
      toRelay = server;
      ws.onMessage((m) => (hold && String(m).includes('"write"') ? held.push(m) : server.send(m)));
      server.onMessage((m) => ws.send(m));
    });
    await a.goto(url);
    const b = await openPage(two, url);
    await online(a);
    await online(b);

    hold = true;
    const raceAt = await a.evaluate(() => { window.aether.set("race", "from A"); return Date.now(); });
    await waitFor(a, () => window.aether.pending === 1, null, "A's write pending");
    const until = Date.now() + DEADLINE;
    while (held.length === 0) {
      assert.ok(Date.now() < until, "A's write never reached the socket");
      await new Promise((r) => setTimeout(r, 10));
    }
    await waitFor(b, (t) => Date.now() > t, raceAt, "B's clock past A's write"); // B writes later
    await b.evaluate(() => window.aether.set("race", "from B"));
    await b.evaluate(() => window.aether.synced());
    hold = false;
    for (const m of held.splice(0)) toRelay.send(m);

    const ev = await waitFor(a, () => window.log.supersede[0], null, "onSupersede on A");
    assert.equal(ev.key, "race");
    assert.equal(ev.yours.value, "from A");
    assert.equal(ev.winner.value, "from B");
    assert.ok(BigInt(ev.winner.stamp.wallNs) > BigInt(ev.yours.stamp.wallNs));
    await waitValue(a, "race", "from B");
    await a.evaluate(() => window.aether.synced());
    assert.equal(await get(b, "race"), "from B");
    assert.equal(await b.evaluate(() => window.log.supersede.length), 0, "the winner is not told anything");
    assert.ok(!(await b.evaluate(() => window.log.changes.some((c) => c.value === "from A"))), "B never saw A's losing value");
    assert.deepEqual(a.errors, []);
  });

  test("fails over to the next relay of its cloud's endpoint list and keeps syncing", async () => {
    // Both relays serve the same endpoint list, as the operator's ConfigMap would have them.
    const cloudsDir = tempDir();
    started.dirs.push(cloudsDir);
    const clouds = join(cloudsDir, "clouds.json");
    const [r1, r2] = await Relay.mesh(2, ([u1, u2]) => {
      writeFileSync(clouds, JSON.stringify({ version: 1, mesh: "test", clouds: { lab: [{ url: u1, cloud: "lab" }, { url: u2, cloud: "lab" }] } }));
      return ["--clouds-file", clouds];
    });
    started.relays.push(r1, r2);
    await clientFrom(r1);
    await clientFrom(r2);
    const space = uniqueSpace("failover");
    const one = await profile();
    const two = await profile();
    // A starts from the endpoint list's URL (fetched from r2, cross-origin) and connects to r1, its first.
    const a = await openPage(one, pageUrl(r1.http, space, `${r2.http}/v1/clouds/lab`, { backoffMs: 100, maxBackoffMs: 1000 }));
    const b = await openPage(two, pageUrl(r2.http, space, [r2.ws]));
    await online(a);
    await online(b);
    assert.equal(await a.evaluate(() => window.aether.relay), `${r1.ws}/v1/ws`);

    await a.evaluate(() => window.aether.set("k0", 0));
    await waitValue(b, "k0", 0);
    // Presence goes among one relay's clients (docs/mesh.md): A's reaches B only once A is on r2.
    await a.evaluate(() => window.aether.presence({ name: "A" }));
    await b.evaluate(() => window.aether.presence({ name: "B" }));

    // Writes made while r1 dies are neither lost nor doubled.
    await a.evaluate(() => { for (let i = 1; i <= 10; i++) window.aether.set(`k${i}`, i); });
    await r1.kill();
    await a.evaluate(() => { for (let i = 11; i <= 20; i++) window.aether.set(`k${i}`, i); });
    await waitFor(a, (u) => window.aether.status === "online" && window.aether.relay === u, `${r2.ws}/v1/ws`, "A online through r2");
    for (let i = 0; i <= 20; i++) await waitValue(b, `k${i}`, i);
    await a.evaluate(() => window.aether.synced());
    await b.evaluate(() => window.aether.set("back", "from B"));
    await waitValue(a, "back", "from B");
    // A's presence was re-sent after the reconnect, and A gets B's on joining r2.
    await waitFor(b, () => window.aether.peers.filter((p) => p.state.name === "A").length === 1, null, "A's presence re-sent through r2");
    await waitFor(a, () => window.aether.peers.filter((p) => p.state.name === "B").length === 1, null, "B's presence on A");
    // Each key changed on B exactly once (no duplicate applications of a resent write).
    const seen = await b.evaluate(() => window.log.changes.filter((c) => c.key.startsWith("k")).map((c) => c.key));
    assert.equal(seen.length, new Set(seen).size, `duplicate change events on B: ${seen}`);
    assert.equal(new Set(seen).size, 21);
    assert.deepEqual(a.errors, []);
    assert.deepEqual(b.errors, []);
  });

  test("a write the relay refuses is rolled back and reported; limits learnt from the relay refuse locally", async () => {
    const relay = await startRelay({ args: ["--limit-value-bytes", "64"] });
    await relay.stop();
    const space = uniqueSpace("refused");
    const one = await profile();
    // Written before any welcome: the client knows only the default limits, so it queues it.
    const a = await openPage(one, pageUrl(relay.http, space, relay.ws, { backoffMs: 100, maxBackoffMs: 500 }));
    await waitFor(a, () => window.aether !== undefined, null, "the client");
    await a.evaluate(() => window.aether.update({ big: "x".repeat(200), small: "ok" }));
    assert.equal(await get(a, "big"), "x".repeat(200));
    await relay.restart();
    await online(a);
    const err = await waitFor(a, () => window.log.errors.find((e) => e.code === "bad-op"), null, "the refusal");
    assert.deepEqual(err.keys.sort(), ["big", "small"], "the whole write is refused");
    assert.equal(await get(a, "big"), undefined, "rolled back");
    assert.deepEqual(await a.evaluate(() => window.aether.entries()), [], "entries() still works after a rollback");
    assert.equal(await a.evaluate(() => window.aether.pending), 0);
    await a.evaluate(() => window.aether.synced());
    // Now the client knows the relay's limit: too large is refused at once, locally, and nothing applies.
    const thrown = await a.evaluate(() => { try { window.aether.update({ fine: 1, big: "y".repeat(100) }); return null; } catch (e) { return `${e.name}: ${e.message}`; } });
    assert.match(thrown, /^RangeError: .*over 64 bytes/);
    assert.equal(await get(a, "fine"), undefined);
    await a.evaluate(() => window.aether.set("fine", 1));
    await a.evaluate(() => window.aether.synced());
    assert.deepEqual(await a.evaluate(() => window.aether.entries()), [["fine", 1]]);
    assert.deepEqual(a.errors, []);
  });

  test("a browser whose clock runs minutes ahead still gets its offline writes in", async () => {
    const relay = await startRelay();
    await relay.stop();
    const space = uniqueSpace("skew");
    const one = await profile();
    const two = await profile();
    await one.addInitScript(() => {
      const real = Date.now;
      Date.now = () => real() + 180_000; // three minutes fast; relays allow 60 s
    });
    const a = await openPage(one, pageUrl(relay.http, space, relay.ws, { backoffMs: 100, maxBackoffMs: 500 }));
    await waitFor(a, () => window.aether !== undefined, null, "the client");
    const before = await a.evaluate(() => window.aether.actor);
    await a.evaluate(() => window.aether.set("fast", "clock"));
    await relay.restart();
    const b = await openPage(two, pageUrl(relay.http, space, relay.ws));
    await waitValue(b, "fast", "clock");
    await online(a);
    await a.evaluate(() => window.aether.synced());
    assert.notEqual(await a.evaluate(() => window.aether.actor), before, "re-stamped as a new actor");
    assert.ok(await a.evaluate(() => window.log.errors.some((e) => e.code === "actor")));
    // Later writes carry corrected stamps: B's newer write still wins over A's older one.
    await b.evaluate(() => window.aether.set("fast", "B later"));
    await waitValue(a, "fast", "B later");
    assert.deepEqual(a.errors, []);
    assert.deepEqual(b.errors, []);
  });

  test("a duplicated tab gets its own actor; a client closed and reopened in a tab gets its actor back", async () => {
    const relay = await startRelay();
    const space = uniqueSpace("actors");
    const url = pageUrl(relay.http, space, relay.ws);
    const one = await profile();
    const a = await openPage(one, url);
    await online(a);
    const actor = await a.evaluate(() => window.aether.actor);
    await a.evaluate(() => window.aether.set("from", "A"));
    // A duplicated tab starts with a copy of the original's sessionStorage, naming its actor.
    const dup = await one.newPage();
    dup.errors = [];
    await dup.addInitScript(([key, value]) => sessionStorage.setItem(key, value), [`aether/v1/${space}/actors`, actor]);
    await dup.goto(url);
    await online(dup);
    const dupActor = await dup.evaluate(() => window.aether.actor);
    assert.notEqual(dupActor, actor, "the original holds its actor: the duplicate takes another");
    await dup.evaluate(() => window.aether.set("from", "the duplicate"));
    await waitValue(a, "from", "the duplicate");
    await a.evaluate(() => window.aether.set("again", "A"));
    await waitValue(dup, "again", "A");
    for (const p of [a, dup]) await p.evaluate(() => window.aether.synced());

    // React's StrictMode mounts, unmounts and mounts again: the second client is this tab's.
    const reopened = await a.evaluate(async ([relays, sp]) => {
      const { Aether } = await import("/__test/lib/aether.js");
      const first = new Aether(relays, { space: sp + "-strict" });
      first.close();
      const second = new Aether(relays, { space: sp + "-strict" });
      second.set("strict", "kept");
      await new Promise((ok) => (second.status === "online" ? ok() : second.onStatus((st) => st === "online" && ok())));
      await second.synced();
      const same = first.actor === second.actor;
      second.close();
      const check = new Aether(relays, { space: sp + "-strict", storage: null });
      await new Promise((ok) => check.onStatus((st) => st === "online" && ok()));
      const value = check.get("strict");
      check.close();
      return { same, value };
    }, [relay.ws, space]);
    assert.deepEqual(reopened, { same: true, value: "kept" });
    assert.deepEqual(a.errors, []);
    assert.deepEqual(dup.errors, []);
  });
});
