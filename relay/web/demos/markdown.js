// Collaborative Markdown demo: one key per paragraph (`para/<id>` → {text,
// order}), an editor column of auto-growing textareas and a live preview.
//
// The preview is the only place user text becomes HTML, and only through
// `renderMarkdown()` (render.js), which escapes everything first. Typing is
// sent at most ~10 times a second per paragraph, plus once on blur.
import { startDemo, copySpaceLink, h, icon, newId, toast, initials, keepingFocus } from "./common.js";
import { renderMarkdown } from "./render.js";

const demo = startDemo({ page: "markdown", title: "Markdown document", defaultSpace: "markdown" });
const { aether } = demo;

const SEND_MS = 100;
const MAX_TEXT = 30000; // the relay takes values up to 32 KiB of JSON

const $ = (id) => document.getElementById(id);
const editor = $("editor");
const preview = $("preview");

// ----------------------------------------------------------------- model ---

const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : 0);

function readPara(id, raw) {
  const v = raw && typeof raw === "object" && !Array.isArray(raw) ? raw : {};
  return { id, text: typeof v.text === "string" ? v.text : "", order: num(v.order) };
}

let paras = []; // sorted [{id, text, order}]
let draftId = newId(); // the paragraph shown (unsaved) while the document is empty

function readModel() {
  const list = aether.entries("para/").map(([k, v]) => readPara(k.slice(5), v)).filter((p) => p.id);
  list.sort((a, b) => a.order - b.order || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  return list;
}

function indexOf(id) {
  return paras.findIndex((p) => p.id === id);
}

function orderAfter(id) {
  const i = indexOf(id);
  if (i < 0) return paras.length ? paras[paras.length - 1].order + 1 : 1;
  const here = paras[i].order;
  const next = paras[i + 1];
  return next ? (here + next.order) / 2 : here + 1;
}

function storedOrder(id) {
  const v = aether.get(`para/${id}`);
  if (v !== undefined) return readPara(id, v).order;
  const p = paras.find((q) => q.id === id);
  return p ? p.order : paras.length ? paras[paras.length - 1].order + 1 : 1;
}

// ----------------------------------------------------------- paragraphs ---

const entries = new Map(); // id → {id, wrap, ta, kind, badges, carets, block, rendered, dirty, timer, lastSent}

function blockKind(text) {
  const first = text.split("\n", 1)[0];
  if (/^\s*```/.test(first)) return "{ }";
  let m = first.match(/^ {0,3}(#{1,3})\s/);
  if (m) return `H${m[1].length}`;
  if (/^ {0,3}>/.test(first)) return "“";
  if (/^\s*[-*+]\s+\[[ xX]\]/.test(first)) return "☐";
  if (/^\s*[-*+]\s/.test(first)) return "•";
  m = first.match(/^\s*\d+[.)]\s/);
  if (m) return "1.";
  if (/^ {0,3}([-*_])(\s*\1){2,}\s*$/.test(first)) return "—";
  return "¶";
}

function makeEntry(id) {
  const ta = h("textarea", {
    class: "md-input", rows: 1, spellcheck: "true", "data-testid": "para-input",
    "aria-label": "Paragraph", placeholder: "Type something — Markdown works",
  });
  const kind = h("span", { class: "md-kind", "aria-hidden": "true", text: "¶" });
  const badges = h("div", { class: "md-badges" });
  const carets = h("div");
  const wrap = h("div", { class: "md-para", "data-testid": "paragraph", dataset: { id } }, kind, ta, badges, carets);
  const block = h("div", { class: "md-block", "data-testid": "preview-para", dataset: { id } });
  const entry = { id, wrap, ta, kind, badges, carets, block, rendered: null, dirty: false, timer: null, lastSent: 0 };

  ta.addEventListener("input", () => onInput(entry));
  ta.addEventListener("keydown", (e) => onKeyDown(entry, e));
  ta.addEventListener("focus", () => { wrap.classList.add("is-focused"); block.classList.add("is-focused"); publishCaret(entry); });
  ta.addEventListener("blur", () => {
    wrap.classList.remove("is-focused");
    block.classList.remove("is-focused");
    flush(entry);
    // A focus move to another paragraph publishes its own position right after.
    setTimeout(() => { if (!editor.contains(document.activeElement)) demo.presence.set({ para: null, caret: null }); }, 0);
  });
  for (const ev of ["select", "click", "keyup"]) ta.addEventListener(ev, () => publishCaret(entry));
  block.addEventListener("click", (e) => {
    if (e.target.closest("a")) return;
    if (document.getSelection()?.toString()) return;
    focusPara(entry.id, "end");
  });
  entries.set(id, entry);
  return entry;
}

function grow(ta) {
  ta.style.height = "auto";
  ta.style.height = `${ta.scrollHeight}px`;
}

function renderBlock(entry, text) {
  if (entry.rendered === text) return;
  entry.rendered = text;
  entry.block.innerHTML = renderMarkdown(text); // escapes all HTML first (render.js)
  const kind = blockKind(text);
  if (entry.kind.textContent !== kind) entry.kind.textContent = kind;
}

/** Replaces a focused textarea's text, keeping the caret where it was relative to the text around it. */
function replaceKeepingCaret(ta, next) {
  const old = ta.value;
  if (old === next) return;
  const start = ta.selectionStart;
  const end = ta.selectionEnd;
  const dir = ta.selectionDirection;
  let p = 0;
  while (p < old.length && p < next.length && old[p] === next[p]) p++;
  let q = 0;
  while (q < old.length - p && q < next.length - p && old[old.length - 1 - q] === next[next.length - 1 - q]) q++;
  const map = (i) => (i <= p ? i : i >= old.length - q ? i + (next.length - old.length) : next.length - q);
  ta.value = next;
  ta.setSelectionRange(map(start), map(end), dir);
}

// ---------------------------------------------------------------- render ---

let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  queueMicrotask(render);
}

function placeChildren(parent, els) {
  let ref = parent.firstChild;
  for (const el of els) {
    if (el === ref) ref = ref.nextSibling;
    else parent.insertBefore(el, ref);
  }
  while (ref) { const n = ref.nextSibling; ref.remove(); ref = n; }
}

function render() {
  renderQueued = false;
  keepingFocus(renderDocument);
}

function renderDocument() {
  paras = readModel();
  const list = paras.length ? paras : [{ id: draftId, text: "", order: 1, draft: true }];
  const wanted = new Set(list.map((p) => p.id));
  // An unsaved draft that is still being typed into survives until its first write lands.
  for (const [id, entry] of entries) {
    if (wanted.has(id)) continue;
    if (entry.dirty && document.activeElement === entry.ta) { wanted.add(id); list.push({ id, text: entry.ta.value, order: Infinity }); continue; }
    clearTimeout(entry.timer);
    entries.delete(id);
    entry.wrap.remove();
    entry.block.remove();
  }

  for (const p of list) {
    const entry = entries.get(p.id) || makeEntry(p.id);
    entry.draft = !!p.draft;
    const ta = entry.ta;
    if (ta.value !== p.text && !p.draft) {
      if (document.activeElement === ta) {
        // Our own unsent typing wins (it is sent within ~100 ms, with a newer stamp).
        if (!entry.dirty) replaceKeepingCaret(ta, p.text);
      } else {
        ta.value = p.text;
      }
    }
    renderBlock(entry, ta.value);
  }
  placeChildren(editor, [...list.map((p) => entries.get(p.id).wrap), emptyActions]);
  placeChildren(preview, paras.length ? list.map((p) => entries.get(p.id).block) : [previewEmpty]);
  for (const p of list) grow(entries.get(p.id).ta);
  // Before the first catch-up an empty store says nothing: no sample button yet.
  emptyActions.hidden = paras.length > 0 || !(caughtUp || aether.status === "offline");
  entries.get(list[0].id).ta.placeholder = paras.length > 1 ? "" : "Start writing — Markdown works. Enter starts a new paragraph.";
  for (const p of list.slice(1)) entries.get(p.id).ta.placeholder = "";
  paintStats();
  paintPresence();
}

// ----------------------------------------------------------- local edits ---

function onInput(entry) {
  if (entry.ta.value.length > MAX_TEXT) entry.ta.value = entry.ta.value.slice(0, MAX_TEXT);
  grow(entry.ta);
  renderBlock(entry, entry.ta.value);
  if (entry.draft) {
    // The first keystroke in an empty document creates its first paragraph.
    entry.draft = false;
    draftId = newId();
  }
  entry.dirty = true;
  if (!entry.timer) {
    const wait = Math.max(0, entry.lastSent + SEND_MS - performance.now());
    entry.timer = setTimeout(() => flush(entry), wait);
  }
  publishCaret(entry);
  paintStats();
}

function flush(entry) {
  clearTimeout(entry.timer);
  entry.timer = null;
  if (!entry.dirty) return;
  entry.dirty = false;
  entry.lastSent = performance.now();
  if (!entries.has(entry.id)) return;
  aether.set(`para/${entry.id}`, { text: entry.ta.value, order: storedOrder(entry.id) });
}

/** Marks a paragraph's current text as written by an update() the caller makes. */
function settle(entry) {
  clearTimeout(entry.timer);
  entry.timer = null;
  entry.dirty = false;
  if (entry.draft) { entry.draft = false; draftId = newId(); }
  entry.lastSent = performance.now();
}

function insideOpenFence(text) {
  let open = false;
  for (const line of text.split("\n")) if (/^\s*(```|~~~)/.test(line)) open = !open;
  return open;
}

function focusPara(id, where) {
  const entry = entries.get(id);
  if (!entry) return;
  const ta = entry.ta;
  ta.focus();
  const pos = where === "start" ? 0 : typeof where === "number" ? where : ta.value.length;
  ta.setSelectionRange(pos, pos);
  publishCaret(entry);
}

function onKeyDown(entry, e) {
  const ta = entry.ta;
  const { selectionStart: s, selectionEnd: t, value } = ta;
  if (e.isComposing) return;

  if (e.key === "Enter" && !e.shiftKey && !e.altKey && !e.ctrlKey && !e.metaKey) {
    if (insideOpenFence(value.slice(0, s))) return; // a line break inside a code block
    e.preventDefault();
    // Split at the caret: the text after it moves to a new paragraph (at the end: an empty one).
    const before = value.slice(0, s);
    const after = value.slice(t);
    const id = newId();
    const order = orderAfter(entry.id);
    ta.value = before;
    settle(entry);
    aether.update({
      [`para/${entry.id}`]: { text: before, order: storedOrder(entry.id) },
      [`para/${id}`]: { text: after, order },
    });
    render();
    focusPara(id, "start");
    return;
  }

  if (e.key === "Backspace" && s === 0 && t === 0) {
    const i = indexOf(entry.id);
    const prev = i > 0 ? paras[i - 1] : null;
    if (value === "") {
      if (paras.length <= 1 || i < 0) return;
      e.preventDefault();
      const next = paras[i + 1];
      settle(entry);
      aether.delete(`para/${entry.id}`);
      render();
      if (prev) focusPara(prev.id, "end");
      else if (next) focusPara(next.id, "start");
      return;
    }
    if (prev) {
      // Merge into the previous paragraph: one write.
      e.preventDefault();
      const prevEntry = entries.get(prev.id);
      const prevText = prevEntry ? prevEntry.ta.value : prev.text;
      if (prevEntry) { prevEntry.ta.value = prevText + value; settle(prevEntry); }
      settle(entry);
      aether.update({
        [`para/${prev.id}`]: { text: prevText + value, order: prev.order },
        [`para/${entry.id}`]: undefined,
      });
      render();
      focusPara(prev.id, prevText.length);
    }
    return;
  }

  if (e.key === "ArrowUp" && s === 0 && t === 0) {
    const i = indexOf(entry.id);
    if (i > 0) { e.preventDefault(); focusPara(paras[i - 1].id, "end"); }
  } else if (e.key === "ArrowDown" && s === value.length && t === value.length) {
    const i = indexOf(entry.id);
    if (i >= 0 && i < paras.length - 1) { e.preventDefault(); focusPara(paras[i + 1].id, "start"); }
  }
}

function publishCaret(entry) {
  if (document.activeElement !== entry.ta) return;
  demo.presence.set({ para: entry.id, caret: [entry.ta.selectionStart, entry.ta.selectionEnd] });
}

// -------------------------------------------------------------- presence ---

const mirror = h("div", { class: "md-mirror", "aria-hidden": "true" });
document.body.append(mirror);
const MIRRORED = ["boxSizing", "width", "paddingTop", "paddingRight", "paddingBottom", "paddingLeft",
  "borderTopWidth", "borderRightWidth", "borderBottomWidth", "borderLeftWidth", "borderStyle",
  "fontFamily", "fontSize", "fontWeight", "fontStyle", "letterSpacing", "lineHeight", "textTransform",
  "wordSpacing", "textIndent", "tabSize", "whiteSpace", "overflowWrap", "wordBreak"];

/** Pixel position of character `index` inside a textarea, relative to the textarea. */
function caretCoords(ta, index) {
  const cs = getComputedStyle(ta);
  for (const p of MIRRORED) mirror.style[p] = cs[p];
  mirror.style.width = `${ta.offsetWidth}px`;
  mirror.textContent = ta.value.slice(0, index);
  const marker = h("span", { text: "\u200b" });
  mirror.append(marker);
  const lh = parseFloat(cs.lineHeight) || parseFloat(cs.fontSize) * 1.4;
  return { left: marker.offsetLeft, top: marker.offsetTop, height: lh };
}

function paintPresence() {
  const here = demo.peers.filter((p) => p.state.page === "markdown");
  const byPara = new Map();
  for (const p of here) {
    if (typeof p.state.para !== "string" || !entries.has(p.state.para)) continue;
    if (!byPara.has(p.state.para)) byPara.set(p.state.para, []);
    byPara.get(p.state.para).push(p);
  }
  for (const [id, entry] of entries) {
    const peers = byPara.get(id) || [];
    const has = peers.length > 0;
    entry.wrap.classList.toggle("has-peer", has);
    entry.block.classList.toggle("has-peer", has);
    if (has) {
      entry.wrap.style.setProperty("--peer", peers[0].color);
      entry.block.style.setProperty("--peer", peers[0].color);
    }
    entry.badges.replaceChildren(...peers.map((p) => {
      const b = h("span", { class: "md-badge", "data-testid": "peer-badge", text: p.name });
      b.style.setProperty("--c", p.color);
      return b;
    }));
    entry.carets.replaceChildren(...peers.flatMap((p) => {
      const c = p.state.caret;
      const idx = Array.isArray(c) && Number.isFinite(c[0]) ? Math.max(0, Math.min(entry.ta.value.length, Math.floor(c[0]))) : null;
      if (idx === null || !entry.ta.offsetWidth) return [];
      const pos = caretCoords(entry.ta, idx);
      const el = h("div", { class: "md-caret", "data-testid": "peer-caret", title: p.name });
      el.style.setProperty("--c", p.color);
      el.style.left = `${entry.ta.offsetLeft + pos.left - 1}px`;
      el.style.top = `${entry.ta.offsetTop + pos.top + 2}px`;
      el.style.height = `${pos.height - 4}px`;
      return [el];
    }));
  }
  // "Who is typing" in the editor header.
  const active = here.filter((p) => typeof p.state.para === "string" && entries.has(p.state.para));
  typing.replaceChildren();
  if (active.length) {
    typing.append(...active.slice(0, 3).map((p) => {
      const a = h("span", { class: "am-avatar", title: p.name, text: initials(p.name) });
      a.style.setProperty("--c", p.color);
      return a;
    }), h("span", { text: active.length === 1 ? `${active[0].name} is editing` : `${active.length} people editing` }));
  }
}

// ------------------------------------------------------------------ page ---

const statParas = h("span");
const statWords = h("span");
const statLive = h("span", { class: "md-live", text: "Live" });
const typing = h("span", { class: "md-typing", "data-testid": "typing" });

function paintStats() {
  let words = 0;
  let n = 0;
  for (const entry of entries.values()) {
    if (entry.draft) continue;
    n++;
    words += (entry.ta.value.match(/[\p{L}\p{N}][\p{L}\p{N}'’_-]*/gu) || []).length;
  }
  statParas.textContent = `${n} paragraph${n === 1 ? "" : "s"}`;
  statWords.textContent = `${words} word${words === 1 ? "" : "s"}`;
  footWords.textContent = `${words} word${words === 1 ? "" : "s"} · ${n} paragraph${n === 1 ? "" : "s"}`;
}

function loadSample() {
  const texts = [
    "# Aethermesh field notes",
    "A **collaborative** document where every paragraph is its own key, so two people editing different paragraphs never conflict. Open this page in a second window and type in both.",
    "## What syncs",
    "- Text, one paragraph per key\n- Presence: who is where, and their caret\n- Offline edits, sent again on reconnect",
    "> Last writer wins *per paragraph* — small keys make conflicts rare.",
    "## Try the syntax",
    "1. **Bold**, *italic*, ~~strike~~ and `inline code`\n2. Links such as [the Aethermesh protocol](https://example.com/docs/protocol)\n3. Fenced code blocks:",
    "```js\nconst aether = new Aether(location.origin, { space: \"markdown\" });\naether.set(\"para/intro\", { text: \"Hello\", order: 1 });\n```",
    "### Checklist\n- [x] Escape every bit of HTML first\n- [ ] Invite a colleague",
  ];
  const base = paras.length ? paras[paras.length - 1].order + 1 : 1;
  const changes = {};
  texts.forEach((text, i) => { changes[`para/${newId()}`] = { text, order: base + i }; });
  aether.update(changes);
}

const emptyActions = h("div", { class: "md-empty-actions", "data-testid": "empty" },
  h("button", { type: "button", class: "am-btn", "data-testid": "load-sample", on: { click: loadSample } }, icon("sparkles"), "Load sample document"),
  h("span", { text: "or just start typing." }));
const previewEmpty = h("div", { class: "md-preview-empty" }, icon("eye"), "Nothing to preview yet — what you write appears here, rendered.");

const footWords = h("span");
$("md-icon").append(icon("doc"));
$("md-title").textContent = demo.space === "markdown" ? "Shared document" : demo.space;
$("md-sub").append(statParas, h("span", { class: "sep", text: "·" }), statWords, h("span", { class: "sep", text: "·" }), statLive);
$("editor-head").append(icon("pencil"), h("span", { text: "Editor" }), typing, h("span", { class: "grow" }),
  h("span", { class: "md-hint" }, h("span", { class: "am-kbd", text: "↵" }), "new paragraph", h("span", { class: "am-kbd", text: "⇧↵" }), "line break"));
$("preview-head").append(icon("eye"), h("span", { text: "Preview" }));
$("editor-foot").append(footWords, h("span", { class: "grow" }),
  h("span", { class: "md-syntax", title: "# heading · **bold** · *italic* · `code` · - list · 1. list · > quote · ``` code block · [text](https://…)" },
    "Markdown: ", h("code", { text: "#" }), h("code", { text: "**b**" }), h("code", { text: "*i*" }), h("code", { text: "`c`" }), h("code", { text: "-" }), h("code", { text: ">" }), h("code", { text: "[a](url)" })));

const split = $("split");
const views = [["split", "Split"], ["editor", "Editor"], ["preview", "Preview"]];
const seg = h("div", { class: "md-seg", role: "group", "aria-label": "View" }, views.map(([v, label]) => h("button", {
  type: "button", "aria-pressed": v === "split" ? "true" : "false", dataset: { view: v }, text: label,
  on: {
    click: () => {
      split.dataset.view = v;
      for (const b of seg.children) b.setAttribute("aria-pressed", b.dataset.view === v ? "true" : "false");
      for (const entry of entries.values()) grow(entry.ta);
      paintPresence();
    },
  },
})));
const copyLink = () => copySpaceLink(demo, "Link copied — open it in another window to write together.");
$("md-actions").append(seg, h("button", { type: "button", class: "am-btn", on: { click: copyLink } }, icon("link"), "Copy link"));

new ResizeObserver(() => {
  for (const entry of entries.values()) grow(entry.ta);
  paintPresence();
}).observe(editor);

demo.onPeers((peers) => {
  paintPresence();
  const n = peers.filter((p) => p.state.page === "markdown").length;
  statLive.textContent = n ? `${n + 1} people here` : "Live";
});
let caughtUp = aether.status === "online";
aether.onAny(scheduleRender);
aether.onStatus((status) => {
  if (status === "online") caughtUp = true;
  scheduleRender();
});
render();
