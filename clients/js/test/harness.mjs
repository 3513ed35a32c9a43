// Test kit for the browser tests: real relay processes and headless Chromium.
//
// Environment: AETHER_RELAY_BIN (the relay binary; set by relay/tests/browser.rs),
// CHROMIUM (default /usr/bin/chromium), AETHER_TEST_OUTPUT (screenshots; default
// clients/js/test-output).
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import { existsSync, mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { homedir, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { after, before } from "node:test";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../../..");

/** Generous bound for anything that should happen "at once": the machines are shared. */
export const DEADLINE = 20_000;

export function relayBin() {
  if (process.env.AETHER_RELAY_BIN) return process.env.AETHER_RELAY_BIN;
  // Else the debug build of this checkout (`cargo build -p aether-relay`), where cargo puts it.
  const targets = [process.env.CARGO_TARGET_DIR, join(root, "target"), join(homedir(), ".cache", "aether-target")];
  const bins = targets.filter(Boolean).map((t) => join(t, "debug", "aether-relay"));
  return bins.find((b) => existsSync(b)) ?? bins[0];
}

export function tempDir(prefix = "aether-js-") {
  return mkdtempSync(join(tmpdir(), prefix));
}

/**
 * A relay process (`aether-relay dev`). `port` 0 picks one; `restart()` reuses
 * the same port and data dir, so clients reconnect to the same URL.
 */
export class Relay {
  static async start({ dataDir = tempDir(), port = 0, args = [] } = {}) {
    const r = new Relay(dataDir, ["dev", ...args]);
    await r.#spawn(port);
    return r;
  }

  /**
   * `n` relays in one mesh (`aether-relay run`, plaintext gRPC on loopback):
   * any of them serves any space, writes replicate to the others. `args(urls)`
   * gives extra flags, knowing every relay's `ws://` base URL.
   */
  static async mesh(n, args = () => []) {
    const ports = await freePorts(2 * n);
    const extra = args(ports.slice(0, n).map((p) => `ws://127.0.0.1:${p}`));
    const names = Array.from({ length: n }, (_, i) => `r${i + 1}`);
    const peers = names.map((name, i) => `${name}=127.0.0.1:${ports[n + i]}`).join(",");
    const relays = [];
    for (let i = 0; i < n; i++) {
      const r = new Relay(tempDir(), [
        "run", "--name", names[i], "--mesh-listen", `127.0.0.1:${ports[n + i]}`, "--mesh-plaintext", "--peer", peers, ...extra,
      ]);
      await r.#spawn(ports[i]);
      relays.push(r);
    }
    return relays;
  }

  constructor(dataDir, args) {
    this.dataDir = dataDir;
    this.args = args;
    this.proc = null;
    this.port = 0;
    this.log = "";
  }

  get http() { return `http://127.0.0.1:${this.port}`; }
  get ws() { return `ws://127.0.0.1:${this.port}`; }

  async #spawn(port) {
    const [mode, ...rest] = this.args;
    const argv = [mode, "--listen", `127.0.0.1:${port}`, "--data-dir", this.dataDir, ...rest];
    const proc = spawn(relayBin(), argv, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "warn" } });
    this.proc = proc;
    proc.stderr.on("data", (d) => { this.log += d; });
    const url = await new Promise((ok, fail) => {
      let out = "";
      const timer = setTimeout(() => fail(new Error(`relay did not start within ${DEADLINE} ms:\n${out}${this.log}`)), DEADLINE);
      proc.stdout.on("data", (d) => {
        out += d;
        const m = out.match(/aether-relay listening on https?:\/\/([0-9.:]+)/);
        if (m) { clearTimeout(timer); ok(`http://${m[1]}`); }
      });
      proc.on("exit", (code) => { clearTimeout(timer); fail(new Error(`relay exited (${code}) at start:\n${out}${this.log}`)); });
      proc.on("error", (e) => { clearTimeout(timer); fail(e); });
    });
    this.port = Number(new URL(url).port);
  }

  /** SIGKILL: no clean shutdown. */
  async kill() { await this.#signal("SIGKILL"); }
  /** SIGTERM: a clean stop. */
  async stop() { await this.#signal("SIGTERM"); }

  async #signal(sig) {
    const p = this.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const exited = new Promise((ok) => p.once("exit", ok));
    p.kill(sig);
    await exited;
    this.proc = null;
  }

  async restart() {
    await this.stop();
    await this.#spawn(this.port);
  }

  async close({ keepData = false } = {}) {
    await this.kill();
    if (!keepData) rmSync(this.dataDir, { recursive: true, force: true });
  }
}

/** `n` distinct loopback ports that were free a moment ago. */
export async function freePorts(n) {
  const servers = await Promise.all(Array.from({ length: n }, () => new Promise((ok, fail) => {
    const srv = createServer();
    srv.once("error", fail);
    srv.listen(0, "127.0.0.1", () => ok(srv));
  })));
  const ports = servers.map((s) => s.address().port);
  await Promise.all(servers.map((s) => new Promise((ok) => s.close(ok))));
  return ports;
}

/**
 * Serves `html` at `<relay origin>/__test/<name>.html` in `context` (answered by
 * the browser, never reaching the relay), so a test page shares the relay's
 * origin and can `import { Aether } from "/client/aether.js"`.
 */
export async function fixture(context, name, html) {
  await context.route(`**/__test/${name}.html*`, (route) => route.fulfill({ status: 200, contentType: "text/html; charset=utf-8", body: html }));
}

export async function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      // Background tabs must keep their timers and sockets at full speed.
      "--disable-background-timer-throttling", "--disable-renderer-backgrounding", "--disable-backgrounding-occluded-windows",
      // Test pages served by `fixture()` come from no address, which Chromium's Local Network
      // Access checks treat as public and forbid to reach loopback relays. Real pages are served
      // by the relay itself (same origin) and need no such switch.
      "--disable-features=LocalNetworkAccessChecks",
    ],
  });
}

/** Console errors that relays going away cause by design. */
const EXPECTED_CONSOLE = [/^WebSocket connection to .* failed/, /net::ERR_CONNECTION_REFUSED/];

/**
 * Opens `url` in a new page of `context`; uncaught page errors and console
 * errors are collected in `page.errors` (tests assert it stays empty).
 */
export async function openPage(context, url) {
  const page = await context.newPage();
  page.errors = [];
  page.on("pageerror", (e) => page.errors.push(`pageerror: ${e.message}`));
  page.on("console", (m) => {
    // Chromium logs every refused connection; tests stop relays on purpose.
    if (m.type() === "error" && !EXPECTED_CONSOLE.some((re) => re.test(m.text()))) page.errors.push(`console: ${m.text()}`);
  });
  await page.goto(url);
  return page;
}

/** Waits until `fn(arg)` is truthy in the page; returns its value. */
export async function waitFor(page, fn, arg, what = "condition") {
  try {
    const handle = await page.waitForFunction(fn, arg, { timeout: DEADLINE, polling: 20 });
    return await handle.jsonValue();
  } catch (e) {
    let state = "";
    try {
      state = await page.evaluate(() => JSON.stringify({ status: window.aether?.status, relay: window.aether?.relay, pending: window.aether?.pending, log: window.log }).slice(0, 4000));
    } catch {
      state = "(page not readable)";
    }
    throw new Error(`timed out waiting for ${what}: ${e.message}\npage: ${state}\nerrors: ${JSON.stringify(page.errors ?? [])}`);
  }
}

/** Saves a screenshot under the test output so a person can look; returns its path. */
export async function screenshot(page, name) {
  const dir = process.env.AETHER_TEST_OUTPUT || join(root, "clients", "js", "test-output");
  mkdirSync(dir, { recursive: true });
  const path = join(dir, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  return path;
}

/** A space name no other test uses. */
export function uniqueSpace(prefix) {
  return `${prefix}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}

/**
 * A demo page's suite: one relay and one Chromium for the file's tests
 * (node:test `before`/`after` hooks). Returns `open(space, viewport)`: the page
 * in a fresh browser profile (its own storage: everything between two pages
 * goes through the relay), once its status reads online.
 */
export function demoSuite(path, defaultViewport) {
  let relay;
  let browser;
  const contexts = [];
  before(async () => {
    relay = await Relay.start();
    browser = await launchBrowser();
  });
  after(async () => {
    for (const c of contexts) await c.close().catch(() => {});
    await browser?.close();
    await relay?.close();
  });
  return async (space, viewport = defaultViewport) => {
    const context = await browser.newContext({ viewport, deviceScaleFactor: 1 });
    contexts.push(context);
    const page = await openPage(context, `${relay.http}${path}?space=${encodeURIComponent(space)}`);
    await waitFor(page, () => document.querySelector('[data-testid="status"]')?.textContent.trim() === "online", null, "status online");
    return page;
  };
}
