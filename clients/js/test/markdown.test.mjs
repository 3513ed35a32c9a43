// The collaborative Markdown demo (/demos/markdown.html) in two real browsers
// (separate contexts, so everything goes through the relay), and its
// renderer (relay/web/demos/render.js) on its own in Node.
import { test } from "node:test";
import assert from "node:assert/strict";
import { DEADLINE, demoSuite, screenshot, uniqueSpace, waitFor } from "./harness.mjs";
import { escapeHtml, renderMarkdown } from "../../../relay/web/demos/render.js";

// ------------------------------------------------------------- renderer ---

test("render.js: the Markdown subset", () => {
  assert.equal(renderMarkdown("# Title"), "<h1>Title</h1>");
  assert.equal(renderMarkdown("## Sub"), "<h2>Sub</h2>");
  assert.equal(renderMarkdown("### Third"), "<h3>Third</h3>");
  assert.equal(renderMarkdown("#nospace"), "<p>#nospace</p>");
  assert.equal(renderMarkdown("**bold** and __also__"), "<p><strong>bold</strong> and <strong>also</strong></p>");
  assert.equal(renderMarkdown("*it* and _it_ and ~~gone~~"), "<p><em>it</em> and <em>it</em> and <del>gone</del></p>");
  assert.equal(renderMarkdown("snake_case_name stays"), "<p>snake_case_name stays</p>");
  assert.equal(renderMarkdown("use `a <b> *c*` here"), "<p>use <code>a &lt;b&gt; *c*</code> here</p>");
  assert.equal(renderMarkdown("- one\n- two\n  - nested\n- three"),
    "<ul><li>one</li><li>two<ul><li>nested</li></ul></li><li>three</li></ul>");
  assert.equal(renderMarkdown("1. first\n2. second"), "<ol><li>first</li><li>second</li></ol>");
  assert.equal(renderMarkdown("3. from three"), '<ol start="3"><li>from three</li></ol>');
  assert.equal(renderMarkdown("> quoted **text**"), "<blockquote><p>quoted <strong>text</strong></p></blockquote>");
  assert.equal(renderMarkdown("```js\nif (a < b && c) {}\n```"), '<pre><code class="language-js">if (a &lt; b &amp;&amp; c) {}</code></pre>');
  assert.equal(renderMarkdown("text\n```\n**not bold**\n```\nafter"), "<p>text</p><pre><code>**not bold**</code></pre><p>after</p>");
  assert.equal(renderMarkdown("line one\nline two"), "<p>line one<br>line two</p>");
  assert.equal(renderMarkdown("---"), "<hr>");
  assert.equal(renderMarkdown(""), "");
  // Links: http, https and mailto only, attribute escaped.
  assert.equal(renderMarkdown("[site](https://example.com/a_b?x=1&y=2)"),
    '<p><a href="https://example.com/a_b?x=1&amp;y=2" target="_blank" rel="noopener noreferrer nofollow">site</a></p>');
  assert.equal(renderMarkdown("[plain](http://example.com)"),
    '<p><a href="http://example.com" target="_blank" rel="noopener noreferrer nofollow">plain</a></p>');
  assert.equal(renderMarkdown("[mail](mailto:a@example.com)"), '<p><a href="mailto:a@example.com">mail</a></p>');
  assert.equal(renderMarkdown("[x](https://e.com/\"onmouseover=\"alert(1))"), '<p>[x](https://e.com/&quot;onmouseover=&quot;alert(1))</p>');
  assert.equal(renderMarkdown('[x](https://e.com/"q")'), '<p><a href="https://e.com/&quot;q&quot;" target="_blank" rel="noopener noreferrer nofollow">x</a></p>');
  for (const bad of ["javascript:alert(1)", "JavaScript:alert(1)", "data:text/html,<b>x</b>", "vbscript:x", "//evil.com", "/relative"]) {
    const html = renderMarkdown(`[click](${bad})`);
    assert.ok(!html.includes("<a"), `${bad} must not become a link: ${html}`);
  }
});

test("render.js: escapes all HTML before anything else", () => {
  assert.equal(escapeHtml(`<a href="x" title='y'>&</a>`), "&lt;a href=&quot;x&quot; title=&#39;y&#39;&gt;&amp;&lt;/a&gt;");
  const payloads = [
    "<script>window.__xss=1</script>",
    '<img src=x onerror="window.__xss=1">',
    "<svg onload=window.__xss=1>",
    "<iframe srcdoc='<script>parent.__xss=1</script>'>",
    '**<b onmouseover="x">bold</b>**',
    "`</code><script>x</script>`",
    "# <h1>hi</h1>",
    "> <style>body{}</style>",
    "- <a href=javascript:x>l</a>",
    "```\n</pre><script>x</script>\n```",
    "[<img src=x onerror=alert(1)>](https://example.com)",
    "[ok](https://example.com/<script>)",
    "\uE0000\uE001<script>", // forged internal placeholders are stripped
  ];
  for (const p of payloads) {
    const html = renderMarkdown(p);
    // Every tag in the output is one the renderer itself emits, with only its own attributes.
    for (const [, tag, attrs] of html.matchAll(/<\/?([a-zA-Z0-9]+)([^>]*)>/g)) {
      assert.ok(["h1", "h2", "h3", "p", "br", "strong", "em", "del", "code", "pre", "ul", "ol", "li", "blockquote", "hr", "a", "span"].includes(tag), `${p} → <${tag}> in ${html}`);
      assert.ok(!/\son\w+\s*=/i.test(attrs), `${p} → event handler in ${html}`);
    }
    assert.ok(!/<(script|img|svg|iframe|style|b)\b/i.test(html), `${p} → ${html}`);
  }
});

// -------------------------------------------------------------- browser ---

const open = demoSuite("/demos/markdown.html", { width: 1440, height: 900 });

const inputs = '[data-testid="para-input"]';
const values = (page) => page.evaluate((s) => [...document.querySelectorAll(s)].map((t) => t.value), inputs);
const previewText = (page) => page.evaluate(() => document.querySelector('[data-testid="preview"]').textContent);

/** In `page`: remembers (epoch ms) when the last `input` event happened. */
async function trackInput(page) {
  await page.evaluate(() => {
    addEventListener("input", () => { window.__lastInputAt = performance.timeOrigin + performance.now(); }, true);
  });
}

/** In `page`: records when a paragraph's text first equals `text` in the store, and when the preview first contains `rendered`. */
async function armSeen(page, text, rendered) {
  await page.evaluate(([text, rendered]) => {
    window.__seen = {};
    const now = () => performance.timeOrigin + performance.now();
    const off = window.aether.onAny((e) => {
      if (e.key.startsWith("para/") && e.value && e.value.text === text) { window.__seen.store = now(); off(); }
    });
    const preview = document.querySelector('[data-testid="preview"]');
    const mo = new MutationObserver(() => {
      if (preview.textContent.includes(rendered)) { window.__seen.preview = now(); mo.disconnect(); }
    });
    mo.observe(preview, { subtree: true, childList: true, characterData: true });
  }, [text, rendered]);
}

test("two browsers write one document", async () => {
  const space = uniqueSpace("markdown");
  const a = await open(space);
  const b = await open(space);
  await trackInput(a);

  // The empty document shows one (unsaved) paragraph to type into.
  assert.equal(await a.locator(inputs).count(), 1);
  assert.equal(await a.evaluate(() => window.aether.keys().length), 0);

  // A types; B's editor and preview follow.
  const first = "Hello from **A**";
  await armSeen(b, first, "Hello from A");
  await a.click(inputs);
  await a.keyboard.type(first);
  await waitFor(b, ([s, t]) => document.querySelector(s)?.value === t, [inputs, first], "A's text in B's editor");
  await waitFor(b, () => document.querySelector('[data-testid="preview"] strong')?.textContent === "A", null, "A's text in B's preview");
  const typedAt = await a.evaluate(() => window.__lastInputAt);
  const seen = await waitFor(b, () => window.__seen.store && window.__seen.preview && window.__seen, null, "timestamps");
  console.log(`markdown: A's last keystroke → B's editor after ${(seen.store - typedAt).toFixed(1)} ms, B's preview after ${(seen.preview - typedAt).toFixed(1)} ms (sends are throttled to 10/s)`);

  // Enter at the end creates a new paragraph on both, focused on A.
  await a.keyboard.press("Enter");
  assert.equal(await a.locator(inputs).count(), 2);
  assert.equal(await a.evaluate((s) => document.activeElement === document.querySelectorAll(s)[1], inputs), true);
  await waitFor(b, (s) => document.querySelectorAll(s).length === 2, inputs, "two paragraphs on B");
  await a.keyboard.type("Second paragraph");
  await waitFor(b, (s) => document.querySelectorAll(s)[1]?.value === "Second paragraph", inputs, "second paragraph on B");
  assert.deepEqual(await values(b), [first, "Second paragraph"]);

  // B sees where A is.
  const aName = await a.evaluate(() => localStorage.getItem("aether-demo-name"));
  await waitFor(b, ([n]) => {
    const p = document.querySelectorAll('[data-testid="paragraph"]')[1];
    return p.querySelector('[data-testid="peer-badge"]')?.textContent === n && p.querySelector('[data-testid="peer-caret"]');
  }, [aName], "A's badge and caret at the second paragraph on B");

  // Enter then Backspace on the empty paragraph: created and deleted on both.
  await a.keyboard.press("Enter");
  await waitFor(b, (s) => document.querySelectorAll(s).length === 3, inputs, "three paragraphs on B");
  await a.keyboard.press("Backspace");
  assert.equal(await a.locator(inputs).count(), 2);
  await waitFor(b, (s) => document.querySelectorAll(s).length === 2, inputs, "back to two on B");
  assert.equal(await a.evaluate((s) => document.activeElement === document.querySelectorAll(s)[1], inputs), true);

  // Enter in the middle splits; Backspace at the start merges back (each one write).
  await a.keyboard.press("Home");
  for (let i = 0; i < 6; i++) await a.keyboard.press("ArrowRight"); // "Second| paragraph"
  await a.keyboard.press("Enter");
  await waitFor(b, (s) => [...document.querySelectorAll(s)].map((t) => t.value).join("|") === "Hello from **A**|Second| paragraph", inputs, "split on B");
  await a.keyboard.press("Backspace");
  await waitFor(b, (s) => [...document.querySelectorAll(s)].map((t) => t.value).join("|") === "Hello from **A**|Second paragraph", inputs, "merged on B");

  // B edits the first paragraph with its caret inside; A's edits there keep B's caret in place.
  await b.click(`${inputs} >> nth=0`);
  await b.evaluate((s) => { const t = document.querySelector(s); t.setSelectionRange(5, 5); }, inputs); // "Hello|"
  await a.click(`${inputs} >> nth=0`);
  await a.keyboard.press("End");
  await a.keyboard.type("!");
  await waitFor(b, (s) => document.querySelector(s).value.endsWith("!"), inputs, "A's edit after B's caret");
  assert.deepEqual(await b.evaluate((s) => { const t = document.querySelector(s); return [document.activeElement === t, t.selectionStart]; }, inputs), [true, 5]);
  await a.evaluate((s) => { const t = document.querySelector(s); t.setSelectionRange(0, 0); }, inputs);
  await a.keyboard.type("Oh. ");
  await waitFor(b, (s) => document.querySelector(s).value.startsWith("Oh. "), inputs, "A's edit before B's caret");
  assert.deepEqual(await b.evaluate((s) => { const t = document.querySelector(s); return [document.activeElement === t, t.selectionStart]; }, inputs), [true, 9]);
  // And B's typing goes on where its caret is.
  await b.keyboard.type(",");
  await waitFor(a, (s) => document.querySelector(s).value === "Oh. Hello, from **A**!", inputs, "B's comma on A");

  // One keystroke after a pause (not held back by the 10/s throttle): A's caret stayed at 4.
  await a.waitForTimeout(250);
  await armSeen(b, "Oh. ?Hello, from **A**!", "Oh. ?Hello, from A!");
  await a.keyboard.type("?");
  const oneAt = await a.evaluate(() => window.__lastInputAt);
  const one = await waitFor(b, () => window.__seen.store && window.__seen.preview && window.__seen, null, "one keystroke on B");
  console.log(`markdown: one keystroke on A → B's editor after ${(one.store - oneAt).toFixed(1)} ms, B's preview after ${(one.preview - oneAt).toFixed(1)} ms`);
  assert.equal(await b.evaluate((s) => document.querySelector(s).value, inputs), "Oh. ?Hello, from **A**!");

  await waitFor(a, () => window.aether.pending === 0, null, "A synced");
  await waitFor(b, () => window.aether.pending === 0, null, "B synced");
  assert.deepEqual(a.errors, []);
  assert.deepEqual(b.errors, []);
});

test("a hostile collaborator cannot inject HTML or script", async () => {
  const space = uniqueSpace("markdown-xss");
  const a = await open(space);
  const b = await open(space);
  const payloads = [
    "<script>window.__xss=1</script>",
    '<img src=x onerror="window.__xss=1">',
    "[click](javascript:window.__xss=1)",
    "<svg onload=window.__xss=1>",
    "**<iframe src=javascript:window.__xss=1>**",
    "```\n</code></pre><img src=x onerror=window.__xss=1>\n```",
  ];
  await a.click(inputs);
  for (const [i, p] of payloads.entries()) {
    if (i > 0) await a.keyboard.press("Enter");
    // Shift+Enter is a line break within a paragraph (Enter alone starts a new one outside code fences).
    const lines = p.split("\n");
    for (const [j, line] of lines.entries()) {
      if (j > 0) await a.keyboard.press("Shift+Enter");
      await a.keyboard.type(line);
    }
  }
  // Written straight to the store, bypassing the editor, too.
  await a.evaluate(() => {
    window.aether.set("para/zz-evil", { text: '<img src=x onerror="window.__xss=1"><b>raw</b>', order: 1000 });
    window.aether.set("para/zz-odd", { text: { html: "<script>window.__xss=1</script>" }, order: "<img src=x onerror=window.__xss=1>" });
  });
  // And a hostile name in presence.
  await a.click('[data-testid="me"]');
  await a.keyboard.press("ControlOrMeta+a");
  await a.keyboard.type("<img src=x onerror=window.__xss=1>");
  await a.keyboard.press("Enter");
  await a.click(`${inputs} >> nth=0`);

  await waitFor(b, () => document.querySelector('[data-testid="preview"]').textContent.includes("<b>raw</b>"), null, "payloads on B");
  await waitFor(b, (n) => {
    const t = document.querySelector('[data-testid="preview"]').textContent;
    return n.every((p) => t.includes(p.split("\n").pop() === "```" ? p.split("\n")[1] : p.replace(/\*\*/g, "")));
  }, payloads, "every payload as literal text in B's preview");
  await waitFor(b, () => document.querySelector('[data-testid="peer-avatar"]')?.title === "<img src=x onerror=window.__xss=1>", null, "hostile name on B");
  await a.waitForTimeout(300);

  for (const page of [a, b]) {
    const found = await page.evaluate(() => {
      const root = document.querySelector('[data-testid="preview"]');
      const bad = [...root.querySelectorAll("script, img, svg, iframe, style, object, embed, b")].map((e) => e.outerHTML);
      const handlers = [...document.querySelectorAll("*")].flatMap((e) => [...e.attributes].filter((a) => /^on/i.test(a.name)).map((a) => `${e.tagName} ${a.name}`));
      const links = [...root.querySelectorAll("a")].map((a) => a.getAttribute("href")).filter((h) => !/^(https?:|mailto:)/i.test(h));
      return { bad, handlers, links, xss: window.__xss, imgs: document.querySelectorAll("img").length };
    });
    assert.deepEqual(found, { bad: [], handlers: [], links: [], xss: undefined, imgs: 0 });
  }
  const text = await previewText(b);
  assert.ok(text.includes("[click](javascript:window.__xss=1)"), text);
  assert.deepEqual(a.errors, []);
  assert.deepEqual(b.errors, []);
});

test("a populated document, with a peer at work, looks right", async () => {
  const space = uniqueSpace("markdown-shot");
  const a = await open(space, { width: 1440, height: 1000 });
  const b = await open(space);
  await a.click('[data-testid="load-sample"]');
  await waitFor(b, (s) => document.querySelectorAll(s).length >= 9, inputs, "sample on B");
  // B puts its caret in the middle of the second paragraph.
  await b.click(`${inputs} >> nth=1`);
  await b.evaluate((s) => { const t = document.querySelectorAll(s)[1]; t.setSelectionRange(42, 42); t.dispatchEvent(new Event("select")); }, inputs);
  await waitFor(a, () => document.querySelector('[data-testid="peer-caret"]'), null, "B's caret on A");
  await a.click(`${inputs} >> nth=3`);
  await a.keyboard.press("End");
  await a.waitForTimeout(150);
  const path = await screenshot(a, "markdown");
  console.log(`markdown: screenshot ${path}`);
  const counts = await a.evaluate(() => {
    const p = document.querySelector('[data-testid="preview"]');
    return ["h1", "h2", "h3", "ul", "ol", "blockquote", "pre", "a", "strong", "em", "code"].map((t) => p.querySelectorAll(t).length > 0);
  });
  assert.ok(counts.every(Boolean), `sample renders every construct: ${counts}`);
  assert.deepEqual(a.errors, []);
  assert.deepEqual(b.errors, []);
  assert.ok(DEADLINE > 0);
});
