// Shared pieces of the Aethermesh demo pages: the top bar (wordmark, nav,
// connection status, pending writes, peer avatars, your editable name), the
// presence publisher, the peer-cursor layer, toasts and small DOM helpers.
//
// Nothing here ever inserts user-provided text as HTML: names, titles and
// texts go through `textContent` (see `h()`); the only `innerHTML` is the
// static icon markup below.
import { Aether } from "/client/aether.js";

// ------------------------------------------------------------------ DOM ---

/**
 * Creates an element. `props`: `class`, `text` (textContent), `style`
 * (object), `dataset` (object), `on` ({event: handler}), anything else as an
 * attribute (`true` → empty attribute, false/null/undefined → omitted).
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k === "style") Object.assign(el.style, v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "on") for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    else if (k === "value") el.value = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/**
 * Runs `fn` (which may move DOM nodes around) and gives the focus, with its
 * text selection, back to the element that had it if a move took it away.
 */
export function keepingFocus(fn) {
  const active = document.activeElement;
  const sel = active && "selectionStart" in active && typeof active.selectionStart === "number"
    ? [active.selectionStart, active.selectionEnd, active.selectionDirection] : null;
  try {
    return fn();
  } finally {
    if (active && active !== document.body && active.isConnected && document.activeElement !== active) {
      active.focus({ preventScroll: true });
      if (sel) active.setSelectionRange(...sel);
    }
  }
}

const ICONS = {
  plus: '<path d="M12 5v14M5 12h14"/>',
  trash: '<path d="M4 7h16M10 11v6M14 11v6M6 7l1 12a2 2 0 0 0 2 2h6a2 2 0 0 0 2-2l1-12M9 7V4h6v3"/>',
  x: '<path d="M6 6l12 12M18 6 6 18"/>',
  link: '<path d="M10 14a4 4 0 0 0 5.66 0l3-3a4 4 0 0 0-5.66-5.66l-1 1"/><path d="M14 10a4 4 0 0 0-5.66 0l-3 3a4 4 0 0 0 5.66 5.66l1-1"/>',
  sparkles: '<path d="M12 3l1.8 4.7L18.5 9.5l-4.7 1.8L12 16l-1.8-4.7L5.5 9.5l4.7-1.8z"/><path d="M19 15l.8 2.2L22 18l-2.2.8L19 21l-.8-2.2L16 18l2.2-.8z"/>',
  board: '<rect x="3" y="4" width="18" height="16" rx="2.5"/><path d="M9 4v16M15 4v16"/>',
  doc: '<path d="M14 3H7a2 2 0 0 0-2 2v14a2 2 0 0 0 2 2h10a2 2 0 0 0 2-2V8z"/><path d="M14 3v5h5M9 13h6M9 17h4"/>',
  grip: '<circle cx="9" cy="6" r="1"/><circle cx="15" cy="6" r="1"/><circle cx="9" cy="12" r="1"/><circle cx="15" cy="12" r="1"/><circle cx="9" cy="18" r="1"/><circle cx="15" cy="18" r="1"/>',
  pencil: '<path d="M4 20h4L19 9l-4-4L4 16z"/><path d="M13.5 6.5l4 4"/>',
  eye: '<path d="M2 12s3.6-7 10-7 10 7 10 7-3.6 7-10 7S2 12 2 12z"/><circle cx="12" cy="12" r="3"/>',
  check: '<path d="M5 12.5l4.5 4.5L19 7.5"/>',
};

/** A 24×24 stroke icon as an SVG element (static markup only). */
export function icon(name, size) {
  const t = document.createElement("template");
  t.innerHTML = `<svg viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="1.9" stroke-linecap="round" stroke-linejoin="round" aria-hidden="true">${ICONS[name] || ""}</svg>`;
  const svg = t.content.firstChild;
  if (size) { svg.setAttribute("width", size); svg.setAttribute("height", size); }
  return svg;
}

const LOGO = `<svg class="am-logo" viewBox="0 0 32 32" aria-hidden="true">
  <defs><linearGradient id="am-lg" x1="0" y1="0" x2="1" y2="1"><stop offset="0" stop-color="#8b7dff"/><stop offset="1" stop-color="#5a46f0"/></linearGradient></defs>
  <rect width="32" height="32" rx="8" fill="url(#am-lg)"/>
  <g stroke="#fff" stroke-width="1.6" stroke-linecap="round" opacity=".9"><path d="M10 21.5 16 10.5l6 11M10 21.5h12"/></g>
  <g fill="#fff"><circle cx="16" cy="10.5" r="2.6"/><circle cx="10" cy="21.5" r="2.6"/><circle cx="22" cy="21.5" r="2.6"/></g>
</svg>`;

// ------------------------------------------------------- names & colours ---

const ADJECTIVES = ["Swift", "Brave", "Clever", "Gentle", "Happy", "Lucky", "Mellow", "Nimble", "Quiet", "Sunny",
  "Witty", "Bold", "Calm", "Cosmic", "Daring", "Eager", "Fuzzy", "Jolly", "Keen", "Merry", "Noble", "Plucky", "Rapid", "Zesty"];
const ANIMALS = ["Otter", "Falcon", "Panda", "Fox", "Koala", "Lynx", "Heron", "Badger", "Dolphin", "Gecko", "Marmot",
  "Owl", "Puffin", "Quokka", "Raven", "Seal", "Tiger", "Walrus", "Yak", "Zebra", "Bison", "Crane", "Ibex", "Narwhal"];

const NAME_KEY = "aether-demo-name";

function pick(list) {
  return list[Math.floor(Math.random() * list.length)];
}

/** This browser's display name (random and friendly, kept in localStorage). */
export function myName() {
  let name = null;
  try { name = localStorage.getItem(NAME_KEY); } catch { /* storage disabled */ }
  if (!name) {
    name = `${pick(ADJECTIVES)} ${pick(ANIMALS)}`;
    try { localStorage.setItem(NAME_KEY, name); } catch { /* storage disabled */ }
  }
  return name;
}

function saveName(name) {
  try { localStorage.setItem(NAME_KEY, name); } catch { /* storage disabled */ }
}

/** "Swift Otter" → "SO"; "madonna" → "MA". */
export function initials(name) {
  const words = String(name || "?").trim().split(/\s+/).filter(Boolean);
  if (!words.length) return "?";
  if (words.length === 1) return [...words[0]].slice(0, 2).join("").toUpperCase();
  return ([...words[0]][0] + [...words[words.length - 1]][0]).toUpperCase();
}

const PALETTE = ["#6d5dfc", "#e5484d", "#12a594", "#f76b15", "#3e63dd", "#d6409f", "#46a758", "#8e4ec6", "#0090ff", "#ca8a04"];

/** A colour that is safe to put in a style: the peer's own if it looks like a colour, else one from its id. */
export function safeColor(color, seed = "") {
  if (typeof color === "string" && /^(#[0-9a-fA-F]{3,8}|(rgb|hsl)a?\([0-9., %]+\))$/.test(color.trim())) return color.trim();
  let hsh = 0;
  for (const c of String(seed)) hsh = (hsh * 31 + c.charCodeAt(0)) >>> 0;
  return PALETTE[hsh % PALETTE.length];
}

/** The name a peer published, trimmed and bounded. */
export function peerName(peer) {
  const n = peer && peer.state && typeof peer.state.name === "string" ? peer.state.name.trim() : "";
  return (n || "Anonymous").slice(0, 40);
}

export function spaceFromUrl(fallback) {
  const s = new URLSearchParams(location.search).get("space");
  return s && s.trim() ? s.trim() : fallback;
}

/** A random id for new keys: 10 base-36 characters. */
export function newId() {
  const bytes = new Uint8Array(8);
  crypto.getRandomValues(bytes);
  let s = "";
  for (const b of bytes) s += (b % 36).toString(36);
  return Date.now().toString(36).slice(-4) + s.slice(0, 6);
}

// ---------------------------------------------------------------- toast ---

let toastBox = null;

/** Shows a short message at the bottom; `action`/`onAction` add a button. */
export function toast(message, { action, onAction, duration = 5000 } = {}) {
  if (!toastBox) {
    toastBox = h("div", { class: "am-toasts", role: "status", "aria-live": "polite" });
    document.body.append(toastBox);
  }
  const el = h("div", { class: "am-toast", "data-testid": "toast" }, h("span", { text: message }));
  let timer = null;
  const close = () => { clearTimeout(timer); el.remove(); };
  if (action) {
    el.append(h("button", { type: "button", text: action, on: { click: () => { close(); onAction?.(); } } }));
  }
  toastBox.append(el);
  while (toastBox.children.length > 3) toastBox.firstChild.remove();
  timer = setTimeout(close, duration);
  return close;
}

// ----------------------------------------------------------------- demo ---

const NAV = [
  { href: "/", label: "Topology" },
  { href: "/demos/kanban.html", label: "Kanban" },
  { href: "/demos/markdown.html", label: "Markdown" },
];

/** Copies this page's address with its space to the clipboard (or shows it), saying `copied`. */
export async function copySpaceLink(demo, copied) {
  const url = new URL(location.href);
  url.searchParams.set("space", demo.space);
  try {
    await navigator.clipboard.writeText(url.href);
    toast(copied, { duration: 3000 });
  } catch {
    toast(`Share this address: ${url.href}`, { duration: 6000 });
  }
}

/**
 * Starts a demo page: connects, mounts the top bar into `<header data-topbar>`
 * and publishes `{name, page, ...}` as presence.
 * @param {{page: string, title: string, defaultSpace: string}} opts
 */
export function startDemo({ page, title, defaultSpace }) {
  const space = spaceFromUrl(defaultSpace);
  const aether = new Aether(location.origin, { space, client: `demo-${page}` });
  window.aether = aether;

  let name = myName();
  const presenceState = { name, page };
  let lastSent = 0;
  let timer = null;
  const PRESENCE_MS = 50; // ≤ 20 presence frames/s, far below the relay's rate limit
  const flushPresence = () => {
    timer = null;
    lastSent = performance.now();
    try { aether.presence({ ...presenceState }); } catch (e) { console.warn("presence failed", e); }
  };
  const presence = {
    /** Merges `patch` into the published state (throttled). */
    set(patch) {
      let changed = false;
      for (const [k, v] of Object.entries(patch)) {
        if (JSON.stringify(presenceState[k]) !== JSON.stringify(v)) { presenceState[k] = v; changed = true; }
      }
      if (!changed) return;
      if (timer) return;
      const wait = PRESENCE_MS - (performance.now() - lastSent);
      if (wait <= 0) flushPresence();
      else timer = setTimeout(flushPresence, wait);
    },
    get state() { return presenceState; },
  };
  flushPresence();

  // Peers: every other session of this page with a published state, in a stable order.
  const peerListeners = new Set();
  let peers = [];
  const setPeers = (list) => {
    peers = (list || [])
      .filter((p) => p && p.state && typeof p.state === "object" && Object.keys(p.state).length > 0)
      // Sessions of this space on another demo page (same ?space=) are not "here".
      .filter((p) => p.state.page === undefined || p.state.page === page)
      .map((p) => ({ ...p, color: safeColor(p.color, p.session), name: peerName(p) }))
      .sort((a, b) => (a.session < b.session ? -1 : a.session > b.session ? 1 : 0));
    for (const fn of peerListeners) fn(peers);
  };

  const bar = mountTopBar({ aether, page, title, space, getName: () => name, setName: (n) => {
    name = n;
    saveName(n);
    presence.set({ name: n });
  } });

  aether.onPresence((list) => { setPeers(list); bar.renderPeers(peers); });
  if (Array.isArray(aether.peers)) setPeers(aether.peers);
  bar.renderPeers(peers);

  aether.onError((err) => {
    // Connection trouble shows in the status pill; refused writes are worth a word.
    if (!err || !Array.isArray(err.keys) || err.keys.length === 0) return;
    console.warn("aether: write refused", err);
    toast(`A change was refused by the relay (${err.code}) and rolled back.`);
  });

  addEventListener("pagehide", () => {
    try { aether.presence(null); } catch { /* closing anyway */ }
  });

  return {
    aether,
    space,
    presence,
    get name() { return name; },
    get peers() { return peers; },
    /** This session's colour (the relay's, once online). */
    get color() { return safeColor(aether.color, aether.actor || "me"); },
    onPeers(fn) { peerListeners.add(fn); fn(peers); return () => peerListeners.delete(fn); },
  };
}

function mountTopBar({ aether, page, title, space, getName, setName }) {
  const host = document.querySelector("[data-topbar]") || document.body.insertBefore(h("header"), document.body.firstChild);
  host.classList.add("am-topbar");
  host.replaceChildren();

  const brand = h("a", { class: "am-brand", href: "/", title: "Aethermesh" });
  brand.insertAdjacentHTML("afterbegin", LOGO);
  brand.append(h("span", { text: "Aethermesh" }));

  const nav = h("nav", { class: "am-nav", "aria-label": "Pages" },
    NAV.map((n) => h("a", { href: n.href, text: n.label, "aria-current": location.pathname === n.href ? "page" : null })));

  const spaceChip = h("span", { class: "am-space", title: `Space “${space}”. Add ?space=NAME to the address to use another.` },
    "space", h("b", { text: space }));
  const pending = h("span", { class: "am-pending", "data-testid": "pending", hidden: true, title: "Writes made here and not yet acknowledged by the relay" });
  const status = h("span", { class: "am-status", "data-testid": "status", role: "status", "aria-live": "polite" });
  const avatars = h("div", { class: "am-avatars", "data-testid": "peers", "aria-label": "People here" });

  const meAvatar = h("span", { class: "am-avatar" });
  const meName = h("span", { class: "am-me-name", "data-testid": "my-name" });
  const me = h("button", { type: "button", class: "am-me", title: "You — click to change your name", "data-testid": "me" }, meAvatar, meName);

  const paintMe = () => {
    const n = getName();
    meName.textContent = n;
    meAvatar.textContent = initials(n);
    meAvatar.style.setProperty("--c", safeColor(aether.color, aether.actor || "me"));
  };
  paintMe();

  me.addEventListener("click", () => {
    if (me.classList.contains("is-editing")) return;
    me.classList.add("is-editing");
    const input = h("input", { class: "am-me-input", value: getName(), maxlength: 40, "aria-label": "Your name" });
    meName.replaceWith(input);
    input.focus();
    input.select();
    let done = false;
    const finish = (save) => {
      if (done) return;
      done = true;
      const v = input.value.trim().replace(/\s+/g, " ").slice(0, 40);
      if (save && v) setName(v);
      input.replaceWith(meName);
      me.classList.remove("is-editing");
      paintMe();
    };
    input.addEventListener("keydown", (e) => {
      e.stopPropagation();
      if (e.key === "Enter") { e.preventDefault(); finish(true); }
      else if (e.key === "Escape") { e.preventDefault(); finish(false); }
    });
    input.addEventListener("keyup", (e) => e.preventDefault()); // a space must not re-click the button
    input.addEventListener("blur", () => finish(true));
  });

  host.append(brand, h("span", { class: "am-crumb-sep", text: "/" }), h("span", { class: "am-page-title", text: title }), nav,
    h("div", { class: "am-spacer" }),
    h("div", { class: "am-right" }, spaceChip, pending, status, avatars, me));

  const paintStatus = (s) => {
    const state = s === "online" || s === "connecting" ? s : "offline";
    status.dataset.state = state;
    status.textContent = state;
    status.title = state === "online" ? `Connected to ${aether.relay || "the relay"}`
      : state === "connecting" ? "Connecting and catching up…" : "Offline — changes are kept and sent on reconnect";
    paintMe();
  };
  paintStatus(aether.status);
  aether.onStatus(paintStatus);

  const paintPending = () => {
    const n = Number(aether.pending) || 0;
    pending.hidden = n === 0;
    pending.textContent = n === 1 ? "1 pending write" : `${n} pending writes`;
  };
  paintPending();
  setInterval(paintPending, 250);
  aether.onAny(() => queueMicrotask(paintPending));

  return {
    renderPeers(peers) {
      const MAX = 5;
      const shown = peers.slice(0, MAX).map((p) => {
        const a = h("span", { class: "am-avatar", "data-testid": "peer-avatar", title: p.name, text: initials(p.name) });
        a.style.setProperty("--c", p.color);
        return a;
      });
      if (peers.length > MAX) {
        shown.push(h("span", { class: "am-avatar am-more", text: `+${peers.length - MAX}`, title: peers.slice(MAX).map((p) => p.name).join(", ") }));
      }
      avatars.replaceChildren(...shown);
      avatars.title = peers.length ? `${peers.length} other ${peers.length === 1 ? "person" : "people"} here` : "";
    },
  };
}

// --------------------------------------------------------- cursor layer ---

const ARROW = '<svg viewBox="0 0 18 18" aria-hidden="true"><path d="M2.2 1.6 15.4 8.2 9.3 9.6 6.4 15.6z" stroke="#fff" stroke-width="1.4" stroke-linejoin="round"/></svg>';

/**
 * Shows the pointers of peers on this page inside `container` (which must be
 * positioned), and publishes ours as `cursor: [x, y]` in the container's
 * content coordinates (so scrolled containers line up), or null when it leaves.
 */
export function cursorLayer(demo, container, page) {
  const layer = h("div", { class: "am-cursor-layer", "aria-hidden": "true" });
  container.append(layer);
  const els = new Map();

  const pos = (e) => {
    const r = container.getBoundingClientRect();
    return [Math.round(e.clientX - r.left + container.scrollLeft), Math.round(e.clientY - r.top + container.scrollTop)];
  };
  container.addEventListener("pointermove", (e) => demo.presence.set({ cursor: pos(e) }));
  container.addEventListener("pointerdown", (e) => demo.presence.set({ cursor: pos(e) }));
  container.addEventListener("pointerleave", () => demo.presence.set({ cursor: null }));

  demo.onPeers((peers) => {
    const seen = new Set();
    for (const p of peers) {
      const c = p.state.cursor;
      if (p.state.page !== page || !Array.isArray(c) || !Number.isFinite(c[0]) || !Number.isFinite(c[1])) continue;
      seen.add(p.session);
      let el = els.get(p.session);
      if (!el) {
        el = h("div", { class: "am-cursor", "data-testid": "peer-cursor" });
        el.insertAdjacentHTML("afterbegin", ARROW);
        el.append(h("span", { class: "am-cursor-label" }));
        layer.append(el);
        els.set(p.session, el);
      }
      el.querySelector("path").setAttribute("fill", p.color);
      const label = el.lastChild;
      label.textContent = p.name;
      label.style.background = p.color;
      el.dataset.session = p.session;
      el.style.transform = `translate(${Math.max(0, c[0]) - 2}px, ${Math.max(0, c[1]) - 2}px)`;
    }
    for (const [s, el] of els) if (!seen.has(s)) { el.remove(); els.delete(s); }
  });
}
