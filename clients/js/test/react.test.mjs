// The React bindings (`@aethermesh/client/react`): a component using
// `useAether("count", 0)` like `useState`, bundled with the real React by
// esbuild, in two headless Chromium browsers on one relay.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { Relay, fixture, launchBrowser, openPage, uniqueSpace, waitFor } from "./harness.mjs";

const here = dirname(fileURLToPath(import.meta.url));

const APP = `
import { createElement as h, useEffect } from "react";
import { createRoot } from "react-dom/client";
import { useAether, useAetherStatus, usePresence } from "../src/react.js";

const space = new URLSearchParams(location.search).get("space");

function Counter({ who }) {
  const [count, setCount] = useAether("count", 0, { space });
  const [title, setTitle] = useAether("title", "untitled", { space });
  const status = useAetherStatus({ space });
  const [peers, publish] = usePresence({ space });
  useEffect(() => publish({ name: who }), [who, publish]);
  return h("main", null,
    h("button", { id: "inc", onClick: () => setCount((c) => c + 1) }, "+1"),
    h("button", { id: "rename", onClick: () => setTitle("Shipped " + who) }, "rename"),
    h("button", { id: "clear", onClick: () => setTitle(undefined) }, "clear"),
    h("output", { id: "count" }, String(count)),
    h("output", { id: "title" }, title),
    h("output", { id: "status" }, status),
    h("output", { id: "peers" }, peers.map((p) => p.state.name).sort().join(",")));
}
createRoot(document.getElementById("root")).render(h(Counter, { who: new URLSearchParams(location.search).get("who") }));
`;

let browser;
let relay;
let bundle;
before(async () => {
  const out = await build({
    stdin: { contents: APP, resolveDir: here, sourcefile: "app.js", loader: "js" },
    bundle: true,
    format: "esm",
    write: false,
    define: { "process.env.NODE_ENV": '"production"' },
    logLevel: "silent",
  });
  bundle = out.outputFiles[0].text;
  browser = await launchBrowser();
  relay = await Relay.start();
});
after(async () => {
  await browser?.close();
  await relay?.close();
});

async function app(space, who) {
  const context = await browser.newContext();
  await fixture(context, "react", `<!doctype html><meta charset="utf-8"><div id="root"></div><script type="module" src="/__test/react-app.js"></script>`);
  await context.route("**/__test/react-app.js", (r) => r.fulfill({ status: 200, contentType: "text/javascript", body: bundle }));
  const page = await openPage(context, `${relay.http}/__test/react.html?space=${space}&who=${who}`);
  return { context, page };
}

const text = (page, id) => page.evaluate((i) => document.getElementById(i)?.textContent, id);
const waitText = (page, id, want) => waitFor(page, ([i, w]) => document.getElementById(i)?.textContent === w, [id, want], `#${id} = ${want}`);

test("useAether is useState shared by every browser on the space", async () => {
  const space = uniqueSpace("react");
  const a = await app(space, "A");
  const b = await app(space, "B");
  try {
    await waitText(a.page, "status", "online");
    await waitText(b.page, "status", "online");
    // The default shows while the key has no value.
    assert.equal(await text(a.page, "count"), "0");
    assert.equal(await text(b.page, "title"), "untitled");

    await a.page.click("#inc");
    await a.page.click("#inc");
    await waitText(b.page, "count", "2");
    await b.page.click("#inc"); // the updater sees the shared value, not a stale local one
    await waitText(a.page, "count", "3");
    await b.page.click("#rename");
    await waitText(a.page, "title", "Shipped B");
    await a.page.click("#clear"); // undefined deletes: back to the default everywhere
    await waitText(b.page, "title", "untitled");

    await waitText(a.page, "peers", "B");
    await waitText(b.page, "peers", "A");

    await b.page.reload();
    await waitText(b.page, "count", "3");
    assert.deepEqual(a.page.errors, []);
    assert.deepEqual(b.page.errors, []);
  } finally {
    await a.context.close();
    await b.context.close();
  }
});
