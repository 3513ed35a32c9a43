// The topology diagrammer's inspector: the side panel showing the selected
// device or link (name, colour, position, connections; a link's ends and type)
// or, with nothing selected, the keyboard shortcuts; and the link-type picker,
// also used by the toolbar. The panel is rebuilt only when the selection
// changes, and otherwise updated in place by each render.
//
// The diagram's state and edits come from topology.js, which imports this
// module in turn: they are only used inside functions, called once both
// modules have run.
import { KIND, LINK_TYPES, SWATCHES, $, h, s, icon, setText, shorten } from "./topology-shared.js";
import { ui, model, select, deleteSelection, patchNode, patchLink } from "./topology.js";

const inspector = $(".inspector");
const insp = { key: undefined, update: () => {} };

export function renderInspector() {
  const key = ui.selection ?? "";
  if (key !== insp.key) {
    insp.key = key;
    inspector.replaceChildren();
    inspector.classList.toggle("is-empty", !key);
    const id = key.slice(5);
    insp.update = key.startsWith("node/") ? nodeInspector(id) : key.startsWith("link/") ? linkInspector(id) : emptyInspector();
  }
  insp.update();
}

function section(label) {
  const f = h("div", { class: "field" }, inspector);
  h("div", { class: "field-label", text: label }, f);
  return f;
}
function inspectorHead(eyebrow) {
  const head = h("div", { class: "insp-head" }, inspector);
  const badge = h("span", { class: "insp-badge" }, head);
  const titles = h("div", {}, head);
  h("div", { class: "eyebrow", text: eyebrow }, titles);
  return { badge, title: h("div", { class: "insp-title" }, titles) };
}
function deleteButton(label) {
  const b = h("button", { type: "button", class: "btn danger", "data-testid": "delete", onclick: deleteSelection }, inspector);
  b.append(icon("trash"), label);
}
/** Four buttons, one per link type, each with a preview of the line style. */
export function linkTypePicker(parent, onPick) {
  const box = h("div", { class: "link-type-grid" }, parent);
  const buttons = Object.entries(LINK_TYPES).map(([type, label]) => {
    const b = h("button", { type: "button", class: "lt", "data-testid": "link-type", "data-type": type, onclick: () => onPick(type) }, box);
    const pv = s("svg", { class: "lt-preview", viewBox: "0 0 44 12" }, b);
    for (const cls of ["link-line", "link-core"]) s("line", { class: cls, x1: 3, y1: 6, x2: 41, y2: 6 }, pv);
    h("span", { text: label }, b);
    return b;
  });
  return (current) => buttons.forEach((b) => b.classList.toggle("active", b.dataset.type === current));
}

function nodeInspector(id) {
  const { badge, title } = inspectorHead("Device");
  const glyph = icon("server");
  badge.append(glyph);
  const name = h("input", { class: "input", "data-testid": "name-input", maxlength: 60, spellcheck: "false", autocomplete: "off", "aria-label": "Name" }, section("Name"));
  name.addEventListener("input", () => patchNode(id, { name: name.value }));
  name.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === "Escape") name.blur(); });
  const swatchBox = h("div", { class: "swatches" }, section("Colour"));
  const swatches = SWATCHES.map((c) => {
    const b = h("button", { type: "button", class: "swatch", "data-testid": "swatch", "data-color": c, "aria-label": `Colour ${c}`, onclick: () => patchNode(id, { color: c }) }, swatchBox);
    b.style.setProperty("--c", c);
    return b;
  });
  const pos = h("div", { class: "field-value mono" }, section("Position"));
  const connField = section("Connections"), conns = h("div", { class: "conns" }, connField);
  deleteButton("Delete device");
  return () => {
    const n = model.nodes.get(id);
    if (!n) return;
    badge.style.setProperty("--c", n.color);
    glyph.firstChild.setAttribute("href", `#i-${n.kind}`);
    setText(title, KIND[n.kind].label);
    if (document.activeElement !== name && name.value !== n.name) name.value = n.name;
    swatches.forEach((b) => b.classList.toggle("active", b.dataset.color.toLowerCase() === n.color.toLowerCase()));
    setText(pos, `x ${Math.round(n.x)}   y ${Math.round(n.y)}`);
    // The device's links, each naming the device at the other end; click one to select it.
    const mine = [...model.links].filter(([, l]) => l.from === id || l.to === id);
    const sig = mine.map(([lid, l]) => `${lid}:${l.type}:${model.nodes.get(l.from === id ? l.to : l.from).name}`).join("|");
    if (conns.dataset.sig === sig) return;
    conns.dataset.sig = sig;
    conns.replaceChildren(...mine.map(([lid, l]) => {
      const b = h("button", { type: "button", class: "conn", "data-type": l.type, onclick: () => select(`link/${lid}`) });
      const pv = s("svg", { class: "lt-preview small", viewBox: "0 0 28 12" }, b);
      for (const cls of ["link-line", "link-core"]) s("line", { class: cls, x1: 2, y1: 6, x2: 26, y2: 6 }, pv);
      h("span", { class: "conn-name", text: shorten(model.nodes.get(l.from === id ? l.to : l.from).name || "Untitled", 24) }, b);
      h("span", { class: "conn-type", text: LINK_TYPES[l.type] }, b);
      return b;
    }));
    if (!mine.length) h("div", { class: "muted", text: "Not connected yet: drag from the + handle." }, conns);
  };
}

function linkInspector(id) {
  const { badge, title } = inspectorHead("Link");
  badge.append(icon("link"));
  const ends = h("div", { class: "ends" }, section("Connects"));
  const end = () => { const e = h("div", { class: "end" }, ends); const g = icon("server"); e.append(g); return { g, name: h("span", { class: "end-name" }, e), e }; };
  const a = end(), b = end();
  const setType = linkTypePicker(section("Type"), (type) => patchLink(id, { type }));
  deleteButton("Delete link");
  return () => {
    const l = model.links.get(id);
    if (!l) return;
    badge.style.setProperty("--c", "#6d5dfc");
    setText(title, `${LINK_TYPES[l.type]} link`);
    for (const [end, nid] of [[a, l.from], [b, l.to]]) {
      const n = model.nodes.get(nid);
      end.g.firstChild.setAttribute("href", `#i-${n.kind}`);
      end.e.style.setProperty("--c", n.color);
      setText(end.name, n.name || "Untitled");
    }
    setType(l.type);
  };
}

function emptyInspector() {
  const box = h("div", { class: "insp-empty" }, inspector);
  h("div", { class: "insp-empty-icon" }, box).append(icon("pointer"));
  h("h3", { text: "Nothing selected" }, box);
  h("p", { text: "Select a device or link to rename, recolour or delete it." }, box);
  const keys = h("div", { class: "shortcuts" }, inspector);
  h("div", { class: "field-label", text: "Shortcuts" }, keys);
  for (const [k, what] of [["V", "Select and move"], ["L", "Connect devices"], ["Del", "Delete selection"], ["Esc", "Clear selection"], ["Drag", "Pan the canvas"], ["Ctrl + scroll", "Zoom"]]) {
    const row = h("div", { class: "shortcut" }, keys);
    h("span", { text: what }, row);
    h("kbd", { text: k }, row);
  }
  return () => {};
}
