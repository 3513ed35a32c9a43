// Checks a running relay's pages in headless Chromium (.ci/run points it at the
// README's quick start): the three demos come online without errors, and two
// tabs of the /ws counter page sync a counter, a note and cursors through /ws
// (a reload gets the state back from the relay).
// Usage: node quickstart.mjs http://127.0.0.1:PORT
import { chromium } from "playwright-core";

const base = process.argv[2];
if (!base) {
  console.error("usage: node quickstart.mjs BASE_URL");
  process.exit(2);
}
const page_url = `${base}/demos/counter.html?space=browser-smoke-${Date.now()}`;
const timeout = 15_000;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  for (const path of ["/", "/demos/kanban.html", "/demos/markdown.html"]) {
    const demo = await browser.newPage();
    const errors = [];
    demo.on("pageerror", (e) => errors.push(e.message));
    demo.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
    await demo.goto(`${base}${path}?space=quickstart-${Date.now()}`);
    await demo.waitForFunction(() => document.querySelector('[data-testid="status"]')?.textContent === "online", null, { timeout });
    if (errors.length > 0) throw new Error(`${path}: ${errors.join("; ")}`);
    await demo.close();
    console.log(`demo ${path} online`);
  }
  const context = await browser.newContext();
  const open = async () => {
    const page = await context.newPage();
    page.on("pageerror", (e) => { throw e; });
    await page.goto(page_url);
    await page.waitForFunction(() => document.getElementById("status").textContent.startsWith("connected"), null, { timeout });
    return page;
  };
  const a = await open();
  const b = await open();

  await a.click("#inc");
  await a.click("#inc");
  await b.waitForFunction(() => document.getElementById("count").textContent === "2", null, { timeout });

  await a.fill("#note", "hello from tab A <b>not bold</b>");
  await b.waitForFunction(() => document.getElementById("note").value === "hello from tab A <b>not bold</b>", null, { timeout });

  await a.mouse.move(140, 160);
  await a.mouse.move(150, 170);
  await b.waitForSelector(".cursor", { timeout });

  // A reload starts from the relay's snapshot.
  await b.reload();
  await b.waitForFunction(() => document.getElementById("count").textContent === "2", null, { timeout });
  await b.waitForFunction(() => document.getElementById("note").value.startsWith("hello from tab A"), null, { timeout });
  console.log("browser smoke OK:", page_url);
} finally {
  await browser.close();
}
