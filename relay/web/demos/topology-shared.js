// Shared by the topology diagrammer's modules (topology.js, topology-inspector.js):
// the vocabulary of devices and links, small DOM and timing helpers, and the
// validation of values read from the store. No state and no side effects.

// ---- Vocabulary --------------------------------------------------------------

export const KINDS = [
  { kind: "server", label: "Server", color: "#3b82f6" },
  { kind: "router", label: "Router", color: "#6d5dfc" },
  { kind: "switch", label: "Switch", color: "#0ea5e9" },
  { kind: "firewall", label: "Firewall", color: "#ef4444" },
  { kind: "laptop", label: "Laptop", color: "#64748b" },
  { kind: "phone", label: "Phone", color: "#ec4899" },
  { kind: "database", label: "Database", color: "#f59e0b" },
  { kind: "cloud", label: "Cloud", color: "#0ea5e9" },
  { kind: "iot", label: "IoT sensor", color: "#10b981" },
];
export const KIND = Object.fromEntries(KINDS.map((k) => [k.kind, k]));
export const LINK_TYPES = { ethernet: "Ethernet", fiber: "Fiber", wireless: "Wireless", vpn: "VPN" };
export const SWATCHES = ["#6d5dfc", "#3b82f6", "#0ea5e9", "#10b981", "#f59e0b", "#ef4444", "#ec4899", "#64748b"];
export const HALF = 32; // half a device card's side
export const MOVE_MS = 1000 / 15; // position updates while dragging
export const PRESENCE_MS = 1000 / 20; // presence updates
export const MIN_ZOOM = 0.25, MAX_ZOOM = 2.5;

// ---- Small helpers -------------------------------------------------------------

const SVG_NS = "http://www.w3.org/2000/svg";
export const $ = (sel) => document.querySelector(sel);

/** Creates an element; `text` sets textContent, `on…` adds listeners, other keys are attributes. */
function el(ns, tag, attrs = {}, parent) {
  const e = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  if (parent) parent.append(e);
  return e;
}
export const h = (tag, attrs, parent) => el(null, tag, attrs, parent);
export const s = (tag, attrs, parent) => el(SVG_NS, tag, attrs, parent);
export function icon(name, cls = "icon") {
  const svg = s("svg", { class: cls, "aria-hidden": "true" });
  s("use", { href: `#i-${name}` }, svg);
  return svg;
}
export const setText = (e, t) => { if (e.textContent !== t) e.textContent = t; };
const has = (obj, k) => typeof k === "string" && Object.hasOwn(obj, k);
export const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

/** Trailing throttle: runs `fn` at most every `ms`, always with the latest arguments. */
export function throttle(fn, ms) {
  let last = 0, timer = null, args = null;
  const run = () => { timer = null; last = performance.now(); const a = args; args = null; fn(...a); };
  const t = (...a) => {
    args = a;
    if (timer) return;
    const wait = last + ms - performance.now();
    if (wait <= 0) run(); else timer = setTimeout(run, wait);
  };
  t.cancel = () => { clearTimeout(timer); timer = null; args = null; };
  return t;
}

export function newId() {
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A stored device as the UI may use it, or null when the value is not a device. */
export function cleanNode(v) {
  if (!v || typeof v !== "object" || Array.isArray(v)) return null;
  const kind = has(KIND, v.kind) ? v.kind : "server";
  return {
    kind,
    name: typeof v.name === "string" ? v.name.slice(0, 80) : KIND[kind].label,
    x: Number.isFinite(v.x) ? v.x : 0,
    y: Number.isFinite(v.y) ? v.y : 0,
    color: typeof v.color === "string" && /^#[0-9a-f]{6}$/i.test(v.color) ? v.color : KIND[kind].color,
  };
}
export function cleanLink(v) {
  if (!v || typeof v !== "object" || typeof v.from !== "string" || typeof v.to !== "string") return null;
  return { from: v.from, to: v.to, type: has(LINK_TYPES, v.type) ? v.type : "ethernet" };
}
/** A peer's display name (any string a peer published, shortened). */
export const peerName = (p) => (typeof p.state?.name === "string" && p.state.name.trim() ? p.state.name.trim().slice(0, 40) : "Anonymous");
export const initials = (name) => name.split(/\s+/).filter(Boolean).slice(0, 2).map((w) => [...w][0].toUpperCase()).join("") || "?";
export const shorten = (t, n = 28) => ([...t].length > n ? [...t].slice(0, n - 1).join("") + "…" : t);
