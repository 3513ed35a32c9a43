// Browser client figures in headless Chromium against a real relay (a
// benchmark, not a test: it prints numbers, asserts only that sync happened).
//
//   cargo build --release -p aether-relay
//   AETHER_RELAY_BIN=$CARGO_TARGET_DIR/release/aether-relay node clients/js/bench/sync.mjs [--keys 5000] [--rounds 200]
//
// 1. latency: A sets a key, B's change event fires; one at a time, `rounds` times.
// 2. throughput: A writes `keys` distinct keys at once; time until all are acknowledged
//    (durable) and until B has them all.
// 3. cold start: a new page catches up the `keys` keys from the relay (FULL catchup),
//    then a reload starts from localStorage and resumes with a DELTA.
import { parseArgs } from "node:util";
import { Relay, fixture, launchBrowser, uniqueSpace } from "../test/harness.mjs";

const { values } = parseArgs({ options: { keys: { type: "string", default: "5000" }, rounds: { type: "string", default: "200" } } });
const KEYS = Number(values.keys);
const ROUNDS = Number(values.rounds);

const PAGE = `<!doctype html><meta charset="utf-8"><script type="module">
import { Aether } from "/client/aether.js";
const p = new URLSearchParams(location.search);
window.t0 = performance.now();
window.aether = new Aether(location.origin, { space: p.get("space") });
window.onlineAt = new Promise((ok) => aether.onStatus((s) => s === "online" && ok(performance.now() - window.t0)));
window.loaded = aether.keys().length;
</script>`;

const pct = (xs, p) => xs.slice().sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((xs.length * p) / 100))];

const relay = await Relay.start({ args: ["--limit-msgs-per-sec", "1000000", "--limit-burst", "1000000", "--limit-send-queue", "1000000"] });
const browser = await launchBrowser();
try {
  const space = uniqueSpace("bench");
  const open = async () => {
    const context = await browser.newContext();
    await fixture(context, "bench", PAGE);
    const page = await context.newPage();
    await page.goto(`${relay.http}/__test/bench.html?space=${space}`);
    await page.evaluate(() => window.onlineAt);
    return page;
  };
  const a = await open();
  const b = await open();

  // 1. latency, one write at a time.
  await b.evaluate(() => { window.seen = new Map(); aether.onAny((e) => window.seen.set(e.key, performance.now())); });
  const lat = [];
  for (let i = 0; i < ROUNDS; i++) {
    const key = `lat/${i}`;
    const sent = await a.evaluate((k) => { const t = performance.timeOrigin + performance.now(); aether.set(k, t); return t; }, key);
    const got = await b.waitForFunction((k) => window.seen.has(k) && performance.timeOrigin + window.seen.get(k), key, { polling: "raf" });
    lat.push((await got.jsonValue()) - sent);
  }
  if (ROUNDS > 0) console.log(`latency A.set → B's change event, ${ROUNDS} sequential writes: p50 ${pct(lat, 50).toFixed(1)} ms, p99 ${pct(lat, 99).toFixed(1)} ms, max ${Math.max(...lat).toFixed(1)} ms`);

  // 2. throughput: a burst of distinct keys.
  const t = await a.evaluate(async (n) => {
    const t0 = performance.now();
    for (let i = 0; i < n; i++) aether.set(`bulk/${i}`, { i, text: "lorem ipsum dolor sit amet" });
    const local = performance.now() - t0;
    await aether.synced();
    return { local, acked: performance.now() - t0, t0: performance.timeOrigin + t0 };
  }, KEYS);
  const all = await b.waitForFunction((n) => aether.keys("bulk/").length === n && performance.timeOrigin + performance.now(), KEYS, { polling: 10, timeout: 600_000 });
  const bAll = (await all.jsonValue()) - t.t0;
  console.log(`throughput, ${KEYS} sets in one burst: applied locally in ${t.local.toFixed(0)} ms; all acknowledged after ${t.acked.toFixed(0)} ms (${((KEYS / t.acked) * 1000).toFixed(0)} ops/s); all on B after ${bAll.toFixed(0)} ms`);

  // 3. cold start and reload.
  const c = await open();
  const cold = await c.evaluate(() => window.onlineAt);
  const ck = await c.evaluate(() => aether.keys().length);
  await c.reload();
  const warm = await c.evaluate(() => window.onlineAt);
  const loaded = await c.evaluate(() => window.loaded);
  console.log(`cold start: online with ${ck} keys (FULL catchup) after ${cold.toFixed(0)} ms; reload: ${loaded} keys from localStorage at once, online (DELTA resume) after ${warm.toFixed(0)} ms`);
  if (ck < KEYS || loaded < KEYS) throw new Error("sync incomplete");
} finally {
  await browser.close();
  await relay.close();
}
