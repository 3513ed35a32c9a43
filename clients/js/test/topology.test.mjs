// The topology diagrammer (`/`, relay/web/index.html): two browsers edit one
// diagram through a real relay, with real mouse input.
//
// Each page gets its own browser context, so they share no localStorage and no
// BroadcastChannel: everything one page sees of the other went through the relay.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { Relay, launchBrowser, openPage, screenshot, uniqueSpace, waitFor } from "./harness.mjs";

const VIEWPORT = { width: 1440, height: 900 };
const HOSTILE = `<img src=x onerror="window.__xss=1">`;

let relay, browser, a, b;

// ---- Helpers ---------------------------------------------------------------------

const deviceSel = (id) => `[data-testid="device"][data-id="${id}"]`;
const linkSel = (id) => `[data-testid="link"][data-id="${id}"]`;
const ids = (page, testid) => page.$$eval(`[data-testid="${testid}"]`, (els) => els.map((e) => e.dataset.id));

async function centre(page, selector) {
  const box = await page.locator(selector).boundingBox();
  assert.ok(box, `${selector} is not on the page`);
  return { x: box.x + box.width / 2, y: box.y + box.height / 2 };
}
/** A point of the canvas, in canvas coordinates (the view is not panned or zoomed), as page coordinates. */
async function canvasPoint(page, x, y) {
  const box = await page.locator('[data-testid="canvas"]').boundingBox();
  return { x: box.x + x, y: box.y + y };
}
/** A mouse drag, with intermediate moves like a person's. */
async function drag(page, from, to, steps = 12) {
  await page.mouse.move(from.x, from.y);
  await page.mouse.down();
  await page.mouse.move(to.x, to.y, { steps });
  await page.mouse.up();
}
/** Drags a device kind from the palette to canvas point (x, y); returns the new device's id. */
async function dropDevice(page, kind, x, y) {
  const before = new Set(await ids(page, "device"));
  await drag(page, await centre(page, `[data-testid="palette-item"][data-kind="${kind}"]`), await canvasPoint(page, x, y));
  const id = await waitFor(page, (known) => [...document.querySelectorAll('[data-testid="device"]')].map((e) => e.dataset.id).find((i) => !known.includes(i)), [...before], `a new ${kind}`);
  return id;
}
/** Renames the selected device through the inspector. */
async function rename(page, name) {
  await page.locator('[data-testid="name-input"]').fill(name);
  await page.locator('[data-testid="name-input"]').press("Enter");
}
/** Drags from a device's + handle onto another device; returns the new link's id. */
async function connect(page, from, to, type) {
  if (type) await page.click(`[data-testid="default-link-type"] [data-type="${type}"]`);
  const before = await ids(page, "link");
  await drag(page, await centre(page, `${deviceSel(from)} [data-testid="handle"]`), await centre(page, `${deviceSel(to)} .card`));
  return waitFor(page, (known) => [...document.querySelectorAll('[data-testid="link"]')].map((e) => e.dataset.id).find((i) => !known.includes(i)), before, "a new link");
}
const device = (page, id) => page.evaluate((sel) => {
  const g = document.querySelector(sel);
  return g && { ...g.dataset, label: g.querySelector('[data-testid="device-name"]').textContent, title: g.querySelector("title")?.textContent };
}, deviceSel(id));
const waitDevice = (page, id, want, what) => waitFor(page, ([sel, want]) => {
  const g = document.querySelector(sel);
  return !!g && Object.entries(want).every(([k, v]) => g.dataset[k] === String(v));
}, [deviceSel(id), want], what);
/** Waits until `page` shows the cursor of the peer called `name`, at canvas point (x, y) when given. */
const waitCursor = (page, name, x, y) => waitFor(page, ([name, at]) => [...document.querySelectorAll('[data-testid="peer-cursor"]')].some((c) =>
  c.querySelector('[data-testid="peer-cursor-name"]')?.textContent === name && (!at || c.style.transform === at)),
[name, x === undefined ? null : `translate(${x}px, ${y}px)`], `${name}'s cursor${x === undefined ? "" : ` at ${x},${y}`}`);
const myName = (page) => page.locator('[data-testid="my-name"] .me-name').textContent();
async function setMyName(page, name) {
  await page.click('[data-testid="my-name"]');
  await page.locator('[data-testid="my-name-input"]').fill(name);
  await page.locator('[data-testid="my-name-input"]').press("Enter");
}

// ---- The scenario ----------------------------------------------------------------

describe("topology diagrammer", () => {
  before(async () => {
    relay = await Relay.start();
    browser = await launchBrowser();
    const url = `${relay.http}/?space=${uniqueSpace("topology")}`;
    a = await openPage(await browser.newContext({ viewport: VIEWPORT }), url);
    b = await openPage(await browser.newContext({ viewport: VIEWPORT }), url);
  });
  after(async () => {
    await browser?.close();
    await relay?.close();
  });

  // Ids shared by the steps below.
  let router, server, link;

  it("connects both pages", async () => {
    for (const page of [a, b]) {
      await waitFor(page, () => document.querySelector('[data-testid="status"]')?.textContent === "online", null, "online");
      assert.equal(await page.evaluate(() => typeof window.aether?.get), "function");
      assert.equal(await page.isVisible('[data-testid="empty"]'), true, "the empty canvas shows its hint");
    }
  });

  it("a device dropped from the palette on A appears on B", async () => {
    // Timestamps taken in the pages (one machine, one clock): A's mouse release, B's first render of the device.
    await a.evaluate(() => addEventListener("pointerup", () => { window.__upAt = Date.now(); }, { capture: true, once: true }));
    await b.evaluate(() => {
      window.__seenAt = null;
      new MutationObserver((_, obs) => {
        if (document.querySelector('[data-testid="device"]')) { window.__seenAt = Date.now(); obs.disconnect(); }
      }).observe(document.querySelector(".nodes"), { childList: true });
    });
    router = await dropDevice(a, "router", 300, 260);
    await waitFor(b, (sel) => !!document.querySelector(sel), deviceSel(router), "the router on B");
    const latency = (await b.evaluate(() => window.__seenAt)) - (await a.evaluate(() => window.__upAt));
    console.log(`sync latency, A's drop → B's render: ${latency} ms`);
    const seen = await device(b, router);
    assert.equal(seen.kind, "router");
    assert.deepEqual([seen.x, seen.y], ["300", "260"]);
    assert.equal(await b.isVisible('[data-testid="empty"]'), false);
  });

  it("renaming and recolouring on A shows on B", async () => {
    await a.click(`${deviceSel(router)} .card`);
    await rename(a, "Core router");
    await a.click('[data-testid="swatch"][data-color="#10b981"]');
    await waitDevice(b, router, { name: "Core router", color: "#10b981" }, "the new name and colour on B");
    assert.equal((await device(b, router)).label, "Core router");
  });

  it("a device and a link made on B show on A, with the link's type", async () => {
    server = await dropDevice(b, "server", 560, 260);
    link = await connect(b, server, router);
    await b.click(`[data-testid="inspector"] [data-testid="link-type"][data-type="fiber"]`);
    await waitFor(a, ([sel, from, to]) => {
      const g = document.querySelector(sel);
      return g?.dataset.type === "fiber" && g.dataset.from === from && g.dataset.to === to;
    }, [linkSel(link), server, router], "the fiber link on A");
    assert.equal(await a.locator(`${linkSel(link)} .link-label text`).textContent(), "Fiber");
  });

  it("moving a device on A moves it on B", async () => {
    const from = await centre(a, `${deviceSel(server)} .card`);
    const start = await device(a, server);
    const dx = -310, dy = 300;
    // Count the positions B sees on the way: updates are throttled, not withheld until the drop.
    await b.evaluate((id) => {
      window.__positions = new Set();
      aether.on(`node/${id}`, (v) => v && window.__positions.add(`${v.x},${v.y}`));
    }, server);
    await drag(a, from, { x: from.x + dx, y: from.y + dy }, 30);
    const want = { x: Number(start.x) + dx, y: Number(start.y) + dy };
    await waitDevice(b, server, want, "the moved server on B");
    assert.deepEqual(await a.evaluate((id) => { const { x, y } = aether.get(`node/${id}`); return { x, y }; }, server), want);
    console.log(`positions B received during a 30-step drag: ${await b.evaluate(() => window.__positions.size)}`);
  });

  it("other people's cursors and selections show, with their names", async () => {
    const nameA = await myName(a);
    assert.ok(nameA.length > 0);
    await a.mouse.move(...Object.values(await canvasPoint(a, 420, 380)));
    // B draws it where A's pointer is: same canvas point (neither view is panned or zoomed).
    await waitCursor(b, nameA, 420, 380);
    // A selects the router: B outlines it in A's colour; B's avatars include A.
    await a.click(`${deviceSel(router)} .card`);
    await waitFor(b, (sel) => !!document.querySelector(`${sel} .peer-ring`), deviceSel(router), "A's selection outlined on B");
    await waitFor(b, (name) => [...document.querySelectorAll('[data-testid="avatar"]')].some((e) => e.title === name), nameA, "A's avatar on B");
  });

  it("deleting a device on B removes it and its links on A", async () => {
    await b.click(`${deviceSel(router)} .card`);
    await b.keyboard.press("Delete");
    await waitFor(a, ([d, l]) => !document.querySelector(d) && !document.querySelector(l), [deviceSel(router), linkSel(link)], "the router and its link gone on A");
    const stored = await a.evaluate(([r, l]) => [aether.get(`node/${r}`), aether.get(`link/${l}`), aether.has(`node/${r}`)], [router, link]);
    assert.deepEqual(stored, [undefined, undefined, false]);
    assert.ok(await a.$(deviceSel(server)), "the other device stays");
  });

  it("hostile names are shown as text", async () => {
    await a.click(`${deviceSel(server)} .card`);
    await rename(a, HOSTILE);
    await setMyName(a, HOSTILE);
    await waitDevice(b, server, { name: HOSTILE }, "the hostile device name on B");
    await waitFor(b, (name) => [...document.querySelectorAll('[data-testid="avatar"]')].some((e) => e.title === name && e.textContent === "<S" && e.children.length === 0), HOSTILE, "the hostile avatar on B");
    await a.mouse.move(...Object.values(await canvasPoint(a, 600, 500)));
    await waitCursor(b, HOSTILE);
    const seen = await device(b, server);
    assert.equal(seen.title, HOSTILE);
    assert.ok(HOSTILE.startsWith(seen.label.replace(/…$/, "")), `label ${seen.label}`);
    for (const page of [a, b]) {
      assert.equal(await page.evaluate(() => document.querySelectorAll("img").length), 0);
      assert.equal(await page.evaluate(() => window.__xss), undefined);
    }
    assert.equal(await a.inputValue('[data-testid="name-input"]'), HOSTILE);
  });

  it("draws a small network (screenshots)", async () => {
    await setMyName(a, "Ada Lovelace");
    await setMyName(b, "Grace Hopper");
    // The server from above becomes the app server; the rest is built on both pages.
    await a.click(`${deviceSel(server)} .card`);
    await rename(a, "App server");
    const cloud = await dropDevice(a, "cloud", 470, 130);
    await rename(a, "Internet");
    const firewall = await dropDevice(a, "firewall", 470, 290);
    await rename(a, "Edge firewall");
    const core = await dropDevice(b, "router", 470, 440);
    await rename(b, "Core router");
    const sensor = await dropDevice(b, "iot", 700, 590);
    await rename(b, "Temp sensor");
    const laptop = await dropDevice(b, "laptop", 760, 290);
    await rename(b, "Remote laptop");
    await connect(a, cloud, firewall, "fiber");
    await connect(a, firewall, core, "ethernet");
    await connect(b, core, server, "fiber");
    await connect(b, core, sensor, "wireless");
    const vpn = await connect(b, laptop, firewall, "vpn");
    for (const page of [a, b]) {
      await waitFor(page, () => document.querySelectorAll('[data-testid="device"]').length === 6 && document.querySelectorAll('[data-testid="link"]').length === 5, null, "the whole diagram");
    }
    const types = await a.$$eval('[data-testid="link"]', (els) => els.map((e) => e.dataset.type).sort());
    assert.deepEqual(types, ["ethernet", "fiber", "fiber", "vpn", "wireless"]);
    // A selects the VPN link (inspector), B the firewall; A's pointer rests on the canvas.
    await a.click(`${linkSel(vpn)} .link-label`);
    await b.click(`${deviceSel(firewall)} .card`);
    await a.mouse.move(...Object.values(await canvasPoint(a, 610, 400)));
    await waitCursor(b, "Ada Lovelace", 610, 400);
    await waitFor(a, (sel) => !!document.querySelector(`${sel} .peer-ring`), deviceSel(firewall), "B's selection on A");
    await b.mouse.move(...Object.values(await canvasPoint(b, 250, 180)));
    await waitCursor(a, "Grace Hopper", 250, 180);
    await new Promise((ok) => setTimeout(ok, 250)); // let the cursors finish gliding (a 90 ms transition)
    console.log(`screenshots: ${await screenshot(a, "topology")} ${await screenshot(b, "topology-peer")}`);
  });

  it("logs no errors on either page", () => {
    assert.deepEqual(a.errors, []);
    assert.deepEqual(b.errors, []);
  });
});
