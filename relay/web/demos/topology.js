// Aethermesh topology diagrammer: the relay's front page.
//
// Every device and link lives in the shared store of one space, so all
// browsers on the page edit the same diagram live:
//   node/<id> → {kind, name, x, y, color}   (x, y: the device's centre, canvas units)
//   link/<id> → {from, to, type}            (from/to: node ids; type: a LINK_TYPES key)
// Presence carries {cursor: {x, y} | null, name, selection} in canvas units.
//
// The DOM is rendered from the store (never the other way round): every change
// event schedules one render, which reconciles the SVG with the store. Values
// written by others are untrusted: they are validated before use, and text only
// ever reaches the page through textContent.
//
// This module holds the state, rendering and interaction of the canvas; the
// inspector panel is in topology-inspector.js, and the vocabulary, helpers and
// validation of stored values in topology-shared.js.
import { Aether } from "/client/aether.js";
import {
  KINDS, KIND, LINK_TYPES, HALF, MOVE_MS, PRESENCE_MS, MIN_ZOOM, MAX_ZOOM,
  $, h, s, icon, setText, plural, throttle, newId, cleanNode, cleanLink, peerName, initials, shorten,
} from "./topology-shared.js";
import { renderInspector, linkTypePicker } from "./topology-inspector.js";

// ---- Connection and identity ---------------------------------------------------

const space = new URLSearchParams(location.search).get("space") || "topology";
const aether = new Aether(location.origin, { space, client: "topology-demo" });
window.aether = aether;

const ADJECTIVES = ["Swift", "Calm", "Bright", "Clever", "Gentle", "Brave", "Lucky", "Quiet", "Sunny", "Witty", "Nimble", "Bold"];
const ANIMALS = ["Otter", "Falcon", "Panda", "Fox", "Heron", "Lynx", "Koala", "Badger", "Dolphin", "Owl", "Tiger", "Marten"];
const pick = (a) => a[Math.floor(Math.random() * a.length)];
const NAME_KEY = "aethermesh.topology.name";
const me = { name: localStorage.getItem(NAME_KEY) || `${pick(ADJECTIVES)} ${pick(ANIMALS)}`, cursor: null };
localStorage.setItem(NAME_KEY, me.name);

// ---- UI state ------------------------------------------------------------------

export const ui = {
  selection: null, // "node/<id>" | "link/<id>" | null
  tool: "select", // "select" | "link"
  linkType: "ethernet", // type of new links
  view: { x: 0, y: 0, k: 1 }, // screen = world * k + (x, y)
  drag: null, // {id, x, y}: the device being moved here, drawn at x, y
  peers: [],
};
/** The validated diagram, rebuilt by each render. */
export let model = { nodes: new Map(), links: new Map() };

const svg = $(".canvas"), world = $(".world");
const layers = { links: $(".links"), draft: $(".draft"), nodes: $(".nodes"), cursors: $(".cursors") };
const nodeEls = new Map(), linkEls = new Map(), cursorEls = new Map();

const publishPresence = throttle(() => aether.presence({ cursor: me.cursor, name: me.name, selection: ui.selection }), PRESENCE_MS);

export function select(key) {
  if (ui.selection === key) return;
  ui.selection = key;
  publishPresence();
  scheduleRender();
}

// ---- Rendering -----------------------------------------------------------------

let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  queueMicrotask(() => { renderQueued = false; render(); });
}

function readModel() {
  const nodes = new Map(), links = new Map();
  for (const [key, v] of aether.entries("node/")) {
    const n = cleanNode(v);
    if (n) nodes.set(key.slice(5), n);
  }
  if (ui.drag && nodes.has(ui.drag.id)) Object.assign(nodes.get(ui.drag.id), { x: ui.drag.x, y: ui.drag.y });
  for (const [key, v] of aether.entries("link/")) {
    const l = cleanLink(v);
    if (l && l.from !== l.to && nodes.has(l.from) && nodes.has(l.to)) links.set(key.slice(5), l);
  }
  return { nodes, links };
}

function render() {
  model = readModel();
  const sel = ui.selection;
  if (sel && !(sel.startsWith("node/") ? model.nodes : model.links).has(sel.slice(5))) { ui.selection = null; publishPresence(); }
  // Which devices each peer has selected: node id → colours.
  const peerSel = new Map();
  for (const p of ui.peers) {
    const k = p.state?.selection;
    if (typeof k === "string" && k.startsWith("node/")) peerSel.set(k.slice(5), [...(peerSel.get(k.slice(5)) ?? []), p.color]);
  }
  reconcile(model.nodes, nodeEls, layers.nodes, createNodeEl, (g, n, id) => updateNodeEl(g, n, id, peerSel.get(id) ?? []));
  reconcile(model.links, linkEls, layers.links, createLinkEl, updateLinkEl);
  renderCursors();
  renderAvatars();
  renderInspector();
  $(".empty").hidden = model.nodes.size > 0;
  setText($(".canvas-stats"), `${plural(model.nodes.size, "device")} · ${plural(model.links.size, "link")}`);
}

/** Makes the children of `layer` match `items` (id → value), creating and removing elements as needed. */
function reconcile(items, els, layer, create, update) {
  for (const [id, item] of items) {
    let g = els.get(id);
    if (!g) { g = create(id); els.set(id, g); layer.append(g); }
    update(g, item, id);
  }
  for (const [id, g] of els) if (!items.has(id)) { g.remove(); els.delete(id); }
}

function createNodeEl(id) {
  const g = s("g", { class: "device", "data-testid": "device", "data-id": id });
  s("g", { class: "peer-rings" }, g);
  s("rect", { class: "sel-ring", x: -HALF - 6, y: -HALF - 6, width: 2 * HALF + 12, height: 2 * HALF + 12, rx: 20 }, g);
  s("rect", { class: "card", x: -HALF, y: -HALF, width: 2 * HALF, height: 2 * HALF, rx: 16, filter: "url(#card-shadow)" }, g);
  s("rect", { class: "tint", x: -HALF + 1, y: -HALF + 1, width: 2 * HALF - 2, height: 2 * HALF - 2, rx: 15 }, g);
  s("use", { class: "glyph", x: -15, y: -15, width: 30, height: 30 }, g);
  s("rect", { class: "label-bg", y: HALF + 6, height: 18, rx: 6 }, g); // hides the links passing behind the name
  s("text", { class: "label", y: HALF + 19, "text-anchor": "middle", "data-testid": "device-name" }, g);
  s("title", {}, g); // the full name, as a tooltip
  const handle = s("g", { class: "handle", "data-testid": "handle", transform: `translate(${HALF + 2} 0)` }, g);
  s("circle", { r: 14, class: "handle-hit" }, handle);
  s("circle", { r: 8.5, class: "handle-dot" }, handle);
  s("path", { d: "M-3.5 0h7M0 -3.5v7", class: "handle-plus" }, handle);
  return g;
}

function updateNodeEl(g, n, id, rings) {
  g.setAttribute("transform", `translate(${n.x} ${n.y})`);
  Object.assign(g.dataset, { kind: n.kind, color: n.color, name: n.name, x: Math.round(n.x), y: Math.round(n.y) });
  g.style.setProperty("--c", n.color);
  g.classList.toggle("selected", ui.selection === `node/${id}`);
  g.classList.toggle("dragging", ui.drag?.id === id);
  g.querySelector(".glyph").setAttribute("href", `#i-${n.kind}`);
  const label = g.querySelector(".label"), text = n.name.trim() ? shorten(n.name) : "Untitled";
  if (label.textContent !== text) {
    label.textContent = text;
    const w = label.getComputedTextLength() + 12, bg = g.querySelector(".label-bg");
    bg.setAttribute("width", w); bg.setAttribute("x", -w / 2);
  }
  label.classList.toggle("untitled", !n.name.trim());
  setText(g.querySelector("title"), n.name);
  // One outline per peer that has this device selected, each a little wider.
  const ringLayer = g.querySelector(".peer-rings");
  if (ringLayer.dataset.sig !== rings.join("|")) {
    ringLayer.dataset.sig = rings.join("|");
    ringLayer.replaceChildren(...rings.map((c, i) => {
      const pad = 5 + i * 4;
      return s("rect", { class: "peer-ring", stroke: c, x: -HALF - pad, y: -HALF - pad, width: 2 * (HALF + pad), height: 2 * (HALF + pad), rx: 16 + pad });
    }));
  }
}

function createLinkEl(id) {
  const g = s("g", { class: "link", "data-testid": "link", "data-id": id });
  for (const cls of ["link-hit", "link-halo", "link-line", "link-core"]) s("line", { class: cls }, g);
  const label = s("g", { class: "link-label" }, g);
  s("rect", { height: 18, y: -9, rx: 9 }, label);
  s("text", { "text-anchor": "middle", y: 4 }, label);
  return g;
}

function updateLinkEl(g, l, id) {
  const a = model.nodes.get(l.from), b = model.nodes.get(l.to);
  Object.assign(g.dataset, { type: l.type, from: l.from, to: l.to });
  g.classList.toggle("selected", ui.selection === `link/${id}`);
  for (const line of g.querySelectorAll("line")) {
    line.setAttribute("x1", a.x); line.setAttribute("y1", a.y);
    line.setAttribute("x2", b.x); line.setAttribute("y2", b.y);
  }
  const label = g.querySelector(".link-label"), text = label.querySelector("text");
  label.setAttribute("transform", `translate(${(a.x + b.x) / 2} ${(a.y + b.y) / 2})`);
  if (text.textContent !== LINK_TYPES[l.type]) {
    text.textContent = LINK_TYPES[l.type];
    const w = text.getComputedTextLength() + 16;
    const rect = label.querySelector("rect");
    rect.setAttribute("width", w); rect.setAttribute("x", -w / 2);
  }
}

/** Other people's pointers, drawn in screen space so they keep their size when zooming. */
function renderCursors() {
  const live = new Map();
  for (const p of ui.peers) {
    const c = p.state?.cursor;
    if (c && Number.isFinite(c.x) && Number.isFinite(c.y)) live.set(p.session, p);
  }
  reconcile(live, cursorEls, layers.cursors, (session) => {
    const g = s("g", { class: "cursor", "data-testid": "peer-cursor", "data-session": session });
    s("path", { class: "cursor-arrow", d: "M1 1l0 16.5 4.6-4.3 3.1 6.8 3-1.3-3.1-6.7 6.3-.2z" }, g);
    const tag = s("g", { class: "cursor-tag", transform: "translate(13 19)" }, g);
    s("rect", { height: 20, rx: 6 }, tag);
    s("text", { x: 8, y: 14, "data-testid": "peer-cursor-name" }, tag);
    return g;
  }, (g, p) => {
    const { x, y } = p.state.cursor, v = ui.view;
    g.style.transform = `translate(${x * v.k + v.x}px, ${y * v.k + v.y}px)`;
    g.style.setProperty("--c", p.color);
    const text = g.querySelector("text"), name = peerName(p);
    if (text.textContent !== name) {
      text.textContent = name;
      g.querySelector("rect").setAttribute("width", text.getComputedTextLength() + 16);
    }
  });
}

function renderAvatars() {
  const box = $(".avatars"), shown = ui.peers.slice(0, 5);
  const sig = ui.peers.map((p) => `${p.session}:${p.color}:${peerName(p)}`).join("|");
  if (box.dataset.sig === sig) return;
  box.dataset.sig = sig;
  box.replaceChildren(...shown.map((p) => {
    const a = h("span", { class: "avatar", "data-testid": "avatar", title: peerName(p), text: initials(peerName(p)) });
    a.style.setProperty("--c", p.color);
    return a;
  }));
  if (ui.peers.length > shown.length) h("span", { class: "avatar more", text: `+${ui.peers.length - shown.length}` }, box);
}

// ---- Edits ---------------------------------------------------------------------

export function patchNode(id, patch) {
  const n = cleanNode(aether.get(`node/${id}`));
  if (n) aether.set(`node/${id}`, { ...n, ...patch });
}
export function patchLink(id, patch) {
  const l = cleanLink(aether.get(`link/${id}`));
  if (l) aether.set(`link/${id}`, { ...l, ...patch });
}

function createNode(kind, x, y) {
  const used = new Set([...model.nodes.values()].map((n) => n.name));
  let i = 1;
  while (used.has(`${KIND[kind].label} ${i}`)) i++;
  const id = newId();
  aether.set(`node/${id}`, { kind, name: `${KIND[kind].label} ${i}`, x: Math.round(x), y: Math.round(y), color: KIND[kind].color });
  select(`node/${id}`);
}

function createLink(from, to) {
  const existing = [...model.links].find(([, l]) => (l.from === from && l.to === to) || (l.from === to && l.to === from));
  if (existing) return select(`link/${existing[0]}`);
  const id = newId();
  aether.set(`link/${id}`, { from, to, type: ui.linkType });
  select(`link/${id}`);
}

/** Deletes the selection; a device goes together with its links, in one write. */
export function deleteSelection() {
  const key = ui.selection;
  if (!key) return;
  if (key.startsWith("node/")) {
    const id = key.slice(5), changes = { [key]: undefined };
    for (const [lk, v] of aether.entries("link/")) {
      if (v && typeof v === "object" && (v.from === id || v.to === id)) changes[lk] = undefined;
    }
    aether.update(changes);
  } else {
    aether.delete(key);
  }
  select(null);
}

// ---- View: pan and zoom --------------------------------------------------------

function applyView() {
  const { x, y, k } = ui.view, t = `translate(${x} ${y}) scale(${k})`;
  world.setAttribute("transform", t);
  $("#grid").setAttribute("patternTransform", t);
  setText($(".zoom-label"), `${Math.round(k * 100)}%`);
  scheduleRender();
}
function zoomAt(k, sx, sy) {
  const v = ui.view, nk = Math.min(MAX_ZOOM, Math.max(MIN_ZOOM, k));
  ui.view = { k: nk, x: sx - ((sx - v.x) * nk) / v.k, y: sy - ((sy - v.y) * nk) / v.k };
  applyView();
}
function zoomCentre(k) { const r = svg.getBoundingClientRect(); zoomAt(k, r.width / 2, r.height / 2); }
function fit() {
  const r = svg.getBoundingClientRect(), ns = [...model.nodes.values()];
  if (!ns.length) { ui.view = { x: 0, y: 0, k: 1 }; return applyView(); }
  const xs = ns.map((n) => n.x), ys = ns.map((n) => n.y);
  const x0 = Math.min(...xs) - 90, x1 = Math.max(...xs) + 90, y0 = Math.min(...ys) - 80, y1 = Math.max(...ys) + 100;
  const k = Math.min(MAX_ZOOM, Math.max(MIN_ZOOM, Math.min(r.width / (x1 - x0), r.height / (y1 - y0), 1.25)));
  ui.view = { k, x: (r.width - (x0 + x1) * k) / 2, y: (r.height - (y0 + y1) * k) / 2 };
  applyView();
}
/** Client (viewport) coordinates → canvas coordinates. */
function toWorld(cx, cy) {
  const r = svg.getBoundingClientRect(), v = ui.view;
  return { x: (cx - r.left - v.x) / v.k, y: (cy - r.top - v.y) / v.k };
}
function insideCanvas(cx, cy) {
  const r = svg.getBoundingClientRect();
  return cx >= r.left && cx < r.right && cy >= r.top && cy < r.bottom;
}
function nodeAt(p, except) {
  const hit = [...model.nodes].reverse().find(([id, n]) => id !== except && Math.abs(p.x - n.x) <= HALF + 4 && Math.abs(p.y - n.y) <= HALF + 4);
  return hit?.[0] ?? null;
}

/** Adds a device at the free spot nearest the middle of the view. */
function addInView(kind) {
  const r = svg.getBoundingClientRect(), c = freeSpot(toWorld(r.left + r.width / 2, r.top + r.height / 2));
  createNode(kind, c.x, c.y);
}
/** The point of a 120-unit grid around `c` nearest to it with no device close by. */
function freeSpot(c) {
  const spots = [];
  for (let i = -4; i <= 4; i++) for (let j = -3; j <= 3; j++) spots.push({ x: Math.round(c.x + i * 120), y: Math.round(c.y + j * 120) });
  spots.sort((a, b) => Math.hypot(a.x - c.x, a.y - c.y) - Math.hypot(b.x - c.x, b.y - c.y));
  return spots.find((p) => [...model.nodes.values()].every((n) => Math.hypot(n.x - p.x, n.y - p.y) > 100)) ?? c;
}

svg.addEventListener("wheel", (e) => {
  e.preventDefault();
  const r = svg.getBoundingClientRect();
  if (e.ctrlKey || e.metaKey) zoomAt(ui.view.k * Math.exp(-e.deltaY * 0.01), e.clientX - r.left, e.clientY - r.top);
  else { ui.view.x -= e.deltaX; ui.view.y -= e.deltaY; applyView(); }
}, { passive: false });

// ---- Pointer gestures ----------------------------------------------------------
// One gesture at a time: moving a device, drawing a link, panning, or dragging a
// palette item. They start on pointerdown and are driven by window-level events.

let gesture = null;
const sendMove = throttle((id, x, y) => patchNode(id, { x, y }), MOVE_MS);
const ghost = $(".drag-ghost");

svg.addEventListener("pointerdown", (e) => {
  if (e.button !== 0 || gesture) return;
  if (document.activeElement instanceof HTMLInputElement) document.activeElement.blur(); // a click on the canvas ends typing
  const p = toWorld(e.clientX, e.clientY);
  const dev = e.target.closest(".device"), link = e.target.closest(".link");
  if (dev) {
    const id = dev.dataset.id, n = model.nodes.get(id);
    select(`node/${id}`);
    if (e.target.closest(".handle") || ui.tool === "link") {
      gesture = { type: "link", from: id };
      svg.classList.add("linking");
    } else {
      gesture = { type: "move", id, dx: p.x - n.x, dy: p.y - n.y, sx: e.clientX, sy: e.clientY, moved: false };
    }
  } else if (link) {
    select(`link/${link.dataset.id}`);
  } else {
    select(null);
    gesture = { type: "pan", sx: e.clientX, sy: e.clientY, vx: ui.view.x, vy: ui.view.y };
    svg.classList.add("panning");
  }
  if (gesture) { svg.setPointerCapture(e.pointerId); e.preventDefault(); }
});

window.addEventListener("pointermove", (e) => {
  const inside = insideCanvas(e.clientX, e.clientY), p = toWorld(e.clientX, e.clientY);
  // Presence: where this pointer is on the canvas (null once it leaves).
  const cursor = inside ? { x: Math.round(p.x), y: Math.round(p.y) } : null;
  if (cursor || me.cursor) { me.cursor = cursor; publishPresence(); }
  if (!gesture) return;
  if (gesture.type === "move") {
    if (!model.nodes.has(gesture.id)) return cancelGesture(); // deleted meanwhile
    if (!gesture.moved && Math.hypot(e.clientX - gesture.sx, e.clientY - gesture.sy) < 3) return;
    if (!gesture.moved) { gesture.moved = true; layers.nodes.append(nodeEls.get(gesture.id)); }
    ui.drag = { id: gesture.id, x: Math.round(p.x - gesture.dx), y: Math.round(p.y - gesture.dy) };
    sendMove(ui.drag.id, ui.drag.x, ui.drag.y);
    scheduleRender();
  } else if (gesture.type === "link") {
    const from = model.nodes.get(gesture.from), target = nodeAt(p, gesture.from);
    if (!from) return cancelGesture();
    const to = target ? model.nodes.get(target) : p;
    layers.draft.replaceChildren(s("line", { class: "draft-line", x1: from.x, y1: from.y, x2: to.x, y2: to.y }));
    for (const [id, g] of nodeEls) g.classList.toggle("drop-target", id === target);
  } else if (gesture.type === "pan") {
    ui.view.x = gesture.vx + e.clientX - gesture.sx;
    ui.view.y = gesture.vy + e.clientY - gesture.sy;
    applyView();
  } else if (gesture.type === "palette") {
    if (!gesture.moved && Math.hypot(e.clientX - gesture.sx, e.clientY - gesture.sy) < 4) return;
    gesture.moved = true;
    ghost.hidden = false;
    ghost.style.transform = `translate(${e.clientX - 28}px, ${e.clientY - 28}px) scale(${ui.view.k})`;
    ghost.classList.toggle("over", inside);
  }
});

window.addEventListener("pointerup", (e) => {
  if (!gesture) return;
  const g = gesture, p = toWorld(e.clientX, e.clientY);
  if (g.type === "move" && g.moved) {
    sendMove.cancel();
    patchNode(g.id, { x: Math.round(p.x - g.dx), y: Math.round(p.y - g.dy) }); // the final position
  } else if (g.type === "link") {
    const target = nodeAt(p, g.from);
    if (target) createLink(g.from, target);
  } else if (g.type === "palette") {
    if (!g.moved) addInView(g.kind); // a click
    else if (insideCanvas(e.clientX, e.clientY)) createNode(g.kind, p.x, p.y);
  }
  cancelGesture();
});
window.addEventListener("pointercancel", () => cancelGesture());
svg.addEventListener("pointerleave", () => { if (!gesture && me.cursor) { me.cursor = null; publishPresence(); } });

function cancelGesture() {
  gesture = null;
  ui.drag = null;
  ghost.hidden = true;
  layers.draft.replaceChildren();
  svg.classList.remove("linking", "panning");
  for (const g of nodeEls.values()) g.classList.remove("drop-target");
  scheduleRender();
}

// ---- Chrome: palette, tools, keyboard, top bar -----------------------------------

for (const k of KINDS) {
  const tile = h("button", { type: "button", class: "tile", "data-testid": "palette-item", "data-kind": k.kind, title: `Drag to add a ${k.label.toLowerCase()}` }, $(".palette-grid"));
  tile.style.setProperty("--c", k.color);
  h("span", { class: "tile-icon" }, tile).append(icon(k.kind));
  h("span", { class: "tile-label", text: k.label }, tile);
  tile.addEventListener("pointerdown", (e) => {
    if (e.button !== 0 || gesture) return;
    e.preventDefault();
    tile.setPointerCapture(e.pointerId); // so the release is seen wherever it happens
    gesture = { type: "palette", kind: k.kind, sx: e.clientX, sy: e.clientY, moved: false };
    ghost.firstElementChild.firstElementChild.setAttribute("href", `#i-${k.kind}`);
    ghost.style.setProperty("--c", k.color);
  });
  tile.addEventListener("click", (e) => { if (e.detail === 0) addInView(k.kind); }); // Enter or Space
}

const setDefaultType = linkTypePicker($(".link-types"), (type) => { ui.linkType = type; setDefaultType(type); });
setDefaultType(ui.linkType);

function setTool(tool) {
  ui.tool = tool;
  svg.dataset.tool = tool;
  for (const b of document.querySelectorAll("[data-tool]")) b.classList.toggle("active", b.dataset.tool === tool);
}
setTool("select");
for (const b of document.querySelectorAll("[data-tool]")) b.addEventListener("click", () => setTool(b.dataset.tool));
const ZOOMS = { in: () => zoomCentre(ui.view.k * 1.2), out: () => zoomCentre(ui.view.k / 1.2), reset: () => zoomCentre(1), fit };
for (const b of document.querySelectorAll("[data-zoom]")) b.addEventListener("click", () => ZOOMS[b.dataset.zoom]());

document.addEventListener("keydown", (e) => {
  if (e.target.closest?.("input, textarea, [contenteditable]") || e.metaKey || e.altKey) return;
  const key = e.ctrlKey ? "" : e.key;
  if (key === "Delete" || key === "Backspace") { e.preventDefault(); deleteSelection(); }
  else if (key === "Escape") { cancelGesture(); select(null); }
  else if (key === "v" || key === "V") setTool("select");
  else if (key === "l" || key === "L") setTool("link");
  else if (key === "+" || key === "=") ZOOMS.in();
  else if (key === "-") ZOOMS.out();
  else if (key === "1") fit();
  else if (key.startsWith("Arrow") && ui.selection?.startsWith("node/")) {
    e.preventDefault();
    const n = model.nodes.get(ui.selection.slice(5)), d = e.shiftKey ? 24 : 4;
    const [dx, dy] = { ArrowLeft: [-d, 0], ArrowRight: [d, 0], ArrowUp: [0, -d], ArrowDown: [0, d] }[key];
    patchNode(ui.selection.slice(5), { x: n.x + dx, y: n.y + dy });
  }
});

// Your name: click to edit it in place.
const meButton = $(".me");
function showMe() {
  setText(meButton.querySelector(".me-name"), me.name);
  if (aether.color) meButton.style.setProperty("--c", aether.color);
}
meButton.addEventListener("click", () => {
  const input = h("input", { class: "me-input", maxlength: 40, value: me.name, "aria-label": "Your name", "data-testid": "my-name-input" });
  meButton.hidden = true;
  meButton.after(input);
  input.select();
  let done = false;
  const finish = (save) => {
    if (done) return;
    done = true;
    const v = input.value.trim();
    if (save && v) { me.name = v; localStorage.setItem(NAME_KEY, v); publishPresence(); }
    input.remove();
    meButton.hidden = false;
    showMe();
  };
  input.addEventListener("keydown", (e) => { if (e.key === "Enter") finish(true); if (e.key === "Escape") finish(false); });
  input.addEventListener("blur", () => finish(true));
});

// Connection status, and the writes waiting for a connection.
function showStatus(status) {
  $(".status").dataset.state = status;
  setText($('[data-testid="status"]'), status);
  showMe();
  showPending();
}
function showPending() {
  const n = aether.pending, el = $(".pending");
  el.hidden = !(n > 0 && aether.status !== "online");
  setText(el, `${plural(n, "change")} waiting to sync`);
}
setInterval(showPending, 500);

function toast(message) {
  const t = h("div", { class: "toast", role: "status", text: message }, document.body);
  setTimeout(() => t.remove(), 5000);
}

// ---- Start -----------------------------------------------------------------------

setText($(".space-chip"), space);
aether.onAny((ev) => { if (ev.key.startsWith("node/") || ev.key.startsWith("link/")) scheduleRender(); });
aether.onPresence((peers) => { ui.peers = Array.isArray(peers) ? peers : []; scheduleRender(); });
aether.onStatus(showStatus);
aether.onError((err) => { console.warn("aether:", err); toast(`A change was refused by the relay (${err.code}); it was rolled back.`); });
showStatus(aether.status);
applyView();
publishPresence();
render();
