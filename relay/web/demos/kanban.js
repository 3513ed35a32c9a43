// Kanban demo: columns and cards synced live through an Aethermesh relay.
//
// Keys: `column/<id>` → {title, order}; `card/<id>` → {column, title,
// priority, order}. Orders are fractional, so moving a card is one write.
// Deleting a column deletes its cards in the same `update()` (one write).
// Every title goes through textContent: nothing user-written becomes HTML.
//
// This module holds the model, the actions and the rendering of the board;
// editing titles and adding cards or columns are in kanban-editing.js, moving
// cards (drag and drop, Alt+arrow keys) in kanban-drag.js.
import { startDemo, copySpaceLink, h, icon, newId, toast, cursorLayer, initials, keepingFocus } from "./common.js";
import {
  forgetEditor, forgetComposer, newColumnForm, addColEl,
  startEditCard, startRenameColumn, openComposer, renderComposerButton, renderAddColumn, openNewColumn,
} from "./kanban-editing.js";
import { drag, suppressClick, cancelDrag, moveCardByKey } from "./kanban-drag.js";

export const demo = startDemo({ page: "kanban", title: "Kanban board", defaultSpace: "kanban" });
export const { aether } = demo;

const PRIORITIES = ["low", "medium", "high"];
const PRIORITY_LABEL = { low: "Low", medium: "Medium", high: "High" };
const COLUMN_COLORS = ["#8e8ea8", "#3e63dd", "#f5a524", "#8e4ec6", "#d6409f", "#12a594", "#e5484d"];

const $ = (id) => document.getElementById(id);
export const board = $("board");
export const columnsEl = $("columns");
export const emptyEl = $("empty");

// ----------------------------------------------------------------- model ---

const str = (v, max) => (typeof v === "string" ? v : v == null ? "" : String(v)).slice(0, max);
const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : 0);
const obj = (v) => (v && typeof v === "object" && !Array.isArray(v) ? v : {});
const byOrder = (a, b) => a.order - b.order || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);

function readColumn(id, raw) {
  const v = obj(raw);
  return { id, title: str(v.title, 120).trim() || "Untitled", order: num(v.order) };
}

export function readCard(id, raw) {
  const v = obj(raw);
  return {
    id,
    column: str(v.column, 200),
    title: str(v.title, 2000),
    priority: PRIORITIES.includes(v.priority) ? v.priority : "medium",
    order: num(v.order),
  };
}

export let model = { columns: [], cards: [], byColumn: new Map(), orphans: [], cardById: new Map(), columnById: new Map() };

function readModel() {
  const columns = aether.entries("column/").map(([k, v]) => readColumn(k.slice(7), v)).filter((c) => c.id);
  columns.sort(byOrder);
  const columnById = new Map(columns.map((c) => [c.id, c]));
  const cards = aether.entries("card/").map(([k, v]) => readCard(k.slice(5), v)).filter((c) => c.id);
  cards.sort(byOrder);
  const byColumn = new Map(columns.map((c) => [c.id, []]));
  const orphans = [];
  for (const card of cards) (byColumn.get(card.column) || orphans).push(card);
  return { columns, cards, byColumn, orphans, cardById: new Map(cards.map((c) => [c.id, c])), columnById };
}

/** A card's stored value with `patch` applied (read fresh, so concurrent edits to other fields survive). */
export function cardValue(id, patch) {
  const c = readCard(id, aether.get(`card/${id}`));
  return { column: c.column, title: c.title, priority: c.priority, order: c.order, ...patch };
}

export function orderBetween(before, after) {
  if (before === undefined && after === undefined) return 1;
  if (before === undefined) return after - 1;
  if (after === undefined) return before + 1;
  return (before + after) / 2;
}

// --------------------------------------------------------------- actions ---

export function addColumn(title) {
  const last = model.columns[model.columns.length - 1];
  const id = newId();
  aether.set(`column/${id}`, { title, order: last ? last.order + 1 : 1 });
  return id;
}

export function renameColumn(id, title) {
  const cur = aether.get(`column/${id}`);
  if (cur === undefined) return;
  const col = readColumn(id, cur);
  if (col.title !== title) aether.set(`column/${id}`, { title, order: col.order });
}

/** Deletes the column and every card in it as ONE write; offers an undo. */
function deleteColumn(id) {
  const col = model.columnById.get(id);
  if (!col) return;
  const cards = aether.entries("card/").filter(([, v]) => obj(v).column === id);
  const changes = { [`column/${id}`]: undefined };
  const restore = { [`column/${id}`]: aether.get(`column/${id}`) };
  for (const [key, value] of cards) {
    changes[key] = undefined;
    restore[key] = value;
  }
  aether.update(changes);
  const n = cards.length;
  toast(`Deleted “${col.title}”${n ? ` and ${n} card${n === 1 ? "" : "s"}` : ""}`, {
    action: "Undo",
    onAction: () => aether.update(restore),
  });
}

export function addCard(columnId, title) {
  const list = model.byColumn.get(columnId) || [];
  const last = list[list.length - 1];
  const id = newId();
  aether.set(`card/${id}`, { column: columnId, title, priority: "medium", order: last ? last.order + 1 : 1 });
  return id;
}

function deleteCard(id) {
  const value = aether.get(`card/${id}`);
  if (value === undefined) return;
  aether.delete(`card/${id}`);
  const title = readCard(id, value).title;
  toast(`Deleted “${title.length > 40 ? title.slice(0, 40) + "…" : title}”`, {
    action: "Undo",
    onAction: () => aether.set(`card/${id}`, value),
  });
}

function createSampleBoard() {
  const cols = [
    ["To do", [["Sketch the onboarding flow", "medium"], ["Write the launch blog post", "low"], ["Invite the beta testers", "high"]]],
    ["In progress", [["Offline queue for the mobile app", "high"], ["Presence cursors on the whiteboard", "medium"]]],
    ["Review", [["Relay failover runbook", "medium"]]],
    ["Done", [["Set up the dev relay", "low"], ["Pick a name for the project", "low"]]],
  ];
  const changes = {};
  const base = model.columns.length ? model.columns[model.columns.length - 1].order + 1 : 1;
  cols.forEach(([title, cards], i) => {
    const colId = newId();
    changes[`column/${colId}`] = { title, order: base + i };
    cards.forEach(([cardTitle, priority], j) => {
      changes[`card/${newId()}`] = { column: colId, title: cardTitle, priority, order: j + 1 };
    });
  });
  aether.update(changes);
}

// ---------------------------------------------------------------- render ---

export const colEls = new Map(); // column id (or ORPHANS) → {el, list, title, count, dot}
export const cardEls = new Map(); // card id → {el, title, prio, select, peers, badge}
export const ORPHANS = "\u0000orphans";

let renderQueued = false;
export function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  queueMicrotask(render);
}

/** Column dots run from grey (first) through blue and amber to green (last, "done"). */
function columnColor(i, n) {
  if (n > 1 && i === n - 1) return "#30a46c";
  return COLUMN_COLORS[i % COLUMN_COLORS.length];
}

function makeColumn(id, orphans = false) {
  const dot = h("span", { class: "kb-col-dot" });
  const title = h("h2", {
    class: "kb-col-title", "data-testid": "column-title",
    tabindex: orphans ? null : 0, title: orphans ? "Cards whose column was deleted while they were added or moved" : "Click to rename",
  });
  const count = h("span", { class: "kb-count", "data-testid": "column-count" });
  const head = h("header", { class: "kb-col-head" }, dot, title, count, h("span", { class: "kb-grow" }));
  const list = h("div", { class: "kb-list", "data-testid": "card-list" });
  const el = h("section", { class: "kb-col", "data-testid": "column", dataset: { id } }, head, list);
  if (orphans) {
    el.classList.add("is-orphans");
    title.textContent = "Unassigned";
    dot.style.setProperty("--c", "#f5a524");
  } else {
    head.append(
      h("button", { type: "button", class: "am-icon-btn", title: "Add a card", "aria-label": "Add a card", "data-testid": "column-add-card", on: { click: () => openComposer(id) } }, icon("plus")),
      h("button", { type: "button", class: "am-icon-btn am-danger", title: "Delete column and its cards", "aria-label": "Delete column", "data-testid": "delete-column", on: { click: () => deleteColumn(id) } }, icon("trash")),
    );
    title.addEventListener("click", () => startRenameColumn(id));
    title.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); startRenameColumn(id); } });
    const foot = h("div", { class: "kb-col-foot" });
    el.append(foot);
    renderComposerButton(id, foot);
  }
  const entry = { el, list, title, count, dot, foot: el.querySelector(".kb-col-foot") };
  colEls.set(id, entry);
  return entry;
}

function makeCard(id) {
  const title = h("div", { class: "kb-card-title", "data-testid": "card-title", title: "Click to edit" });
  const select = h("select", { "aria-label": "Priority", "data-testid": "card-priority" },
    PRIORITIES.map((p) => h("option", { value: p, text: PRIORITY_LABEL[p] })));
  const prio = h("label", { class: "kb-prio" }, select);
  const peers = h("span", { class: "kb-card-peers" });
  const del = h("button", { type: "button", class: "am-icon-btn am-danger", title: "Delete card", "aria-label": "Delete card", "data-testid": "delete-card" }, icon("trash"));
  const badge = h("span", { class: "kb-peer-badge", hidden: true });
  const el = h("article", {
    class: "kb-card", "data-testid": "card", dataset: { id }, tabindex: 0,
    "aria-keyshortcuts": "Enter Delete Alt+ArrowUp Alt+ArrowDown Alt+ArrowLeft Alt+ArrowRight",
  },
    badge, title, h("div", { class: "kb-card-foot" }, prio, h("span", { class: "kb-grow" }), peers, del));

  title.addEventListener("click", () => { if (!suppressClick) startEditCard(id); });
  el.addEventListener("keydown", (e) => {
    if (e.target !== el) return;
    if (e.key === "Enter") { e.preventDefault(); startEditCard(id); }
    else if (e.key === "Delete" || e.key === "Backspace") { e.preventDefault(); deleteCard(id); }
    else if (e.altKey && e.key.startsWith("Arrow")) { e.preventDefault(); moveCardByKey(id, e.key); }
  });
  select.addEventListener("change", () => {
    if (aether.get(`card/${id}`) === undefined) return;
    aether.set(`card/${id}`, cardValue(id, { priority: select.value }));
  });
  del.addEventListener("click", () => deleteCard(id));
  const entry = { el, title, prio, select, peers, badge };
  cardEls.set(id, entry);
  return entry;
}

/**
 * Puts `els` in `parent` in that order, moving only what is out of place;
 * `skip` (the card being dragged) stays wherever it is.
 */
function placeChildren(parent, els, skip) {
  let ref = parent.firstChild;
  for (const el of els) {
    while (ref && ref === skip) ref = ref.nextSibling;
    if (el === ref) ref = ref.nextSibling;
    else parent.insertBefore(el, ref);
  }
}

export function render() {
  renderQueued = false;
  keepingFocus(renderBoard);
}

function renderBoard() {
  model = readModel();

  // Columns.
  const wanted = new Set(model.columns.map((c) => c.id));
  if (model.orphans.length) wanted.add(ORPHANS);
  for (const [id, entry] of colEls) {
    if (!wanted.has(id)) {
      if (drag && entry.list.contains(drag.el)) cancelDrag();
      entry.el.remove();
      colEls.delete(id);
      forgetComposer(id);
    }
  }
  const colOrder = model.columns.map((col, i) => {
    const entry = colEls.get(col.id) || makeColumn(col.id);
    if (entry.title.textContent !== col.title) entry.title.textContent = col.title;
    entry.dot.style.setProperty("--c", columnColor(i, model.columns.length));
    return entry.el;
  });
  if (model.orphans.length) colOrder.push((colEls.get(ORPHANS) || makeColumn(ORPHANS, true)).el);
  placeChildren(columnsEl, colOrder, null);
  if (addColEl.parentNode !== columnsEl || columnsEl.lastChild !== addColEl) columnsEl.append(addColEl);

  // Cards.
  for (const [id, entry] of cardEls) {
    if (!model.cardById.has(id)) {
      if (drag && drag.id === id) cancelDrag();
      forgetEditor(id);
      entry.el.remove();
      cardEls.delete(id);
    }
  }
  const lists = [...model.byColumn.entries()];
  if (model.orphans.length) lists.push([ORPHANS, model.orphans]);
  for (const [colId, cards] of lists) {
    const colEntry = colEls.get(colId);
    const els = cards.map((card) => {
      const entry = cardEls.get(card.id) || makeCard(card.id);
      if (entry.title.textContent !== card.title) entry.title.textContent = card.title;
      if (entry.select.value !== card.priority) entry.select.value = card.priority;
      entry.prio.dataset.level = card.priority;
      entry.el.dataset.column = card.column;
      entry.el.dataset.priority = card.priority;
      return entry.el;
    });
    placeChildren(colEntry.list, els, drag && drag.started ? drag.el : null);
    colEntry.count.textContent = String(cards.length);
  }

  // Page chrome.
  const empty = model.columns.length === 0 && model.orphans.length === 0;
  // Before the first catch-up an empty store says nothing: show no empty state yet.
  emptyEl.hidden = !empty || !!newColumnForm || !(caughtUp || aether.status === "offline");
  columnsEl.hidden = empty && !newColumnForm;
  const nCards = model.cards.length;
  statCols.textContent = `${model.columns.length} column${model.columns.length === 1 ? "" : "s"}`;
  statCards.textContent = `${nCards} card${nCards === 1 ? "" : "s"}`;
  paintPeers();
}


// -------------------------------------------------------------- presence ---

function paintPeers() {
  const activity = new Map(); // card id → [{peer, what}]
  for (const p of demo.peers) {
    if (p.state.page !== "kanban") continue;
    for (const what of ["drag", "editing"]) {
      const id = p.state[what];
      if (typeof id === "string" && cardEls.has(id)) {
        if (!activity.has(id)) activity.set(id, []);
        activity.get(id).push({ peer: p, what });
      }
    }
  }
  for (const [id, entry] of cardEls) {
    const acts = activity.get(id);
    entry.el.classList.toggle("is-peer", !!acts);
    entry.el.classList.toggle("is-peer-moving", !!acts && acts.some((a) => a.what === "drag"));
    if (!acts) {
      if (!entry.badge.hidden) { entry.badge.hidden = true; entry.peers.replaceChildren(); entry.el.style.removeProperty("--peer"); }
      continue;
    }
    const first = acts[0];
    entry.el.style.setProperty("--peer", first.peer.color);
    entry.badge.hidden = false;
    entry.badge.textContent = `${first.peer.name} is ${first.what === "drag" ? "moving" : "editing"}`;
    entry.badge.dataset.testid = "peer-activity";
    entry.peers.replaceChildren(...acts.map(({ peer }) => {
      const a = h("span", { class: "am-avatar", title: peer.name, text: initials(peer.name) });
      a.style.setProperty("--c", peer.color);
      return a;
    }));
  }
}

// ------------------------------------------------------------------ page ---

const statCols = h("span");
const statCards = h("span");
const statPeople = h("span", { class: "kb-live" });

function paintPeople(peers) {
  const n = peers.filter((p) => p.state.page === "kanban").length;
  statPeople.textContent = n ? `${n + 1} people here` : "Live";
}

$("kb-icon").append(icon("board"));
$("kb-title").textContent = demo.space === "kanban" ? "Team board" : demo.space;
$("kb-sub").append(statCols, h("span", { class: "sep", text: "·" }), statCards, h("span", { class: "sep", text: "·" }), statPeople);

const copyLink = () => copySpaceLink(demo, "Link copied — open it in another window to collaborate.");
$("kb-actions").append(
  h("button", { type: "button", class: "am-btn", on: { click: copyLink } }, icon("link"), "Copy link"),
  h("button", { type: "button", class: "am-btn am-btn-primary", "data-testid": "toolbar-add-column", on: { click: openNewColumn } }, icon("plus"), "Add column"),
);
$("empty-actions").append(
  h("button", { type: "button", class: "am-btn am-btn-primary", "data-testid": "create-sample", on: { click: createSampleBoard } }, icon("sparkles"), "Create sample board"),
  h("button", { type: "button", class: "am-btn", on: { click: openNewColumn } }, icon("plus"), "Add a column"),
);

renderAddColumn();
cursorLayer(demo, board, "kanban");
demo.onPeers((peers) => { paintPeers(); paintPeople(peers); });
let caughtUp = aether.status === "online";
aether.onAny(scheduleRender);
aether.onStatus((status) => {
  if (status === "online") caughtUp = true;
  scheduleRender();
});
render();
