// Kanban demo: columns and cards synced live through an Aethermesh relay.
//
// Keys: `column/<id>` → {title, order}; `card/<id>` → {column, title,
// priority, order}. Orders are fractional, so moving a card is one write.
// Deleting a column deletes its cards in the same `update()` (one write).
// Every title goes through textContent: nothing user-written becomes HTML.
import { startDemo, h, icon, newId, toast, cursorLayer, initials, keepingFocus } from "./common.js";

const demo = startDemo({ page: "kanban", title: "Kanban board", defaultSpace: "kanban" });
const { aether } = demo;

const PRIORITIES = ["low", "medium", "high"];
const PRIORITY_LABEL = { low: "Low", medium: "Medium", high: "High" };
const COLUMN_COLORS = ["#8e8ea8", "#3e63dd", "#f5a524", "#8e4ec6", "#d6409f", "#12a594", "#e5484d"];

const $ = (id) => document.getElementById(id);
const board = $("board");
const columnsEl = $("columns");
const emptyEl = $("empty");

// ----------------------------------------------------------------- model ---

const str = (v, max) => (typeof v === "string" ? v : v == null ? "" : String(v)).slice(0, max);
const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : 0);
const obj = (v) => (v && typeof v === "object" && !Array.isArray(v) ? v : {});
const byOrder = (a, b) => a.order - b.order || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);

function readColumn(id, raw) {
  const v = obj(raw);
  return { id, title: str(v.title, 120).trim() || "Untitled", order: num(v.order) };
}

function readCard(id, raw) {
  const v = obj(raw);
  return {
    id,
    column: str(v.column, 200),
    title: str(v.title, 2000),
    priority: PRIORITIES.includes(v.priority) ? v.priority : "medium",
    order: num(v.order),
  };
}

let model = { columns: [], cards: [], byColumn: new Map(), orphans: [], cardById: new Map(), columnById: new Map() };

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
function cardValue(id, patch) {
  const c = readCard(id, aether.get(`card/${id}`));
  return { column: c.column, title: c.title, priority: c.priority, order: c.order, ...patch };
}

function orderBetween(before, after) {
  if (before === undefined && after === undefined) return 1;
  if (before === undefined) return after - 1;
  if (after === undefined) return before + 1;
  return (before + after) / 2;
}

// --------------------------------------------------------------- actions ---

function addColumn(title) {
  const last = model.columns[model.columns.length - 1];
  const id = newId();
  aether.set(`column/${id}`, { title, order: last ? last.order + 1 : 1 });
  return id;
}

function renameColumn(id, title) {
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

function addCard(columnId, title) {
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

const colEls = new Map(); // column id (or ORPHANS) → {el, list, title, count, dot}
const cardEls = new Map(); // card id → {el, title, prio, select, peers, badge}
const ORPHANS = "\u0000orphans";

let renderQueued = false;
function scheduleRender() {
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

function render() {
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
      if (composer && composer.columnId === id) composer = null;
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
      if (editing && editing.id === id) editing = null;
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

// ------------------------------------------------------ title / rename ---

let editing = null; // {id, ta}

function startEditCard(id) {
  const entry = cardEls.get(id);
  if (!entry || (editing && editing.id === id)) return;
  if (editing) editing.finish(true);
  const original = model.cardById.get(id)?.title ?? entry.title.textContent;
  const ta = h("textarea", { class: "kb-edit", rows: 1, maxlength: 2000, "aria-label": "Card title", "data-testid": "card-title-input" });
  ta.value = original;
  entry.title.hidden = true;
  entry.title.after(ta);
  entry.el.classList.add("is-editing");
  const grow = () => { ta.style.height = "auto"; ta.style.height = `${ta.scrollHeight}px`; };
  grow();
  ta.focus();
  ta.setSelectionRange(ta.value.length, ta.value.length);
  demo.presence.set({ editing: id });

  let done = false;
  const finish = (save) => {
    if (done) return;
    done = true;
    const value = ta.value.replace(/\s+$/g, "").replace(/^\s+/g, "");
    if (save && value && aether.get(`card/${id}`) !== undefined && value !== readCard(id, aether.get(`card/${id}`)).title) {
      aether.set(`card/${id}`, cardValue(id, { title: value }));
    }
    ta.remove();
    entry.title.hidden = false;
    entry.el.classList.remove("is-editing");
    if (editing && editing.id === id) editing = null;
    demo.presence.set({ editing: null });
    scheduleRender();
  };
  editing = { id, ta, finish };
  ta.addEventListener("input", grow);
  ta.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); finish(true); entry.el.focus(); }
    else if (e.key === "Escape") { e.preventDefault(); finish(false); entry.el.focus(); }
  });
  ta.addEventListener("blur", () => finish(true));
  ta.addEventListener("pointerdown", (e) => e.stopPropagation());
}

function startRenameColumn(id) {
  const entry = colEls.get(id);
  if (!entry || entry.renaming) return;
  const col = model.columnById.get(id);
  const input = h("input", { class: "kb-col-title-input", value: col ? col.title : entry.title.textContent, maxlength: 120, "aria-label": "Column name", "data-testid": "column-title-input" });
  entry.renaming = true;
  entry.title.hidden = true;
  entry.title.after(input);
  input.focus();
  input.select();
  let done = false;
  const finish = (save) => {
    if (done) return;
    done = true;
    const v = input.value.trim();
    if (save && v) renameColumn(id, v);
    input.remove();
    entry.title.hidden = false;
    entry.renaming = false;
    scheduleRender();
  };
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") { e.preventDefault(); finish(true); }
    else if (e.key === "Escape") { e.preventDefault(); finish(false); }
  });
  input.addEventListener("blur", () => finish(true));
}

// ------------------------------------------------------------ composers ---

let composer = null; // {columnId, ta}

function renderComposerButton(columnId, foot) {
  foot.replaceChildren(h("button", {
    type: "button", class: "kb-add-card", "data-testid": "add-card",
    on: { click: () => openComposer(columnId) },
  }, icon("plus"), "Add card"));
}

function openComposer(columnId) {
  const entry = colEls.get(columnId);
  if (!entry) return;
  if (composer && composer.columnId === columnId) { composer.ta.focus(); return; }
  if (composer) composer.close();
  const ta = h("textarea", { rows: 2, maxlength: 2000, placeholder: "What needs to be done?", "aria-label": "New card title", "data-testid": "new-card-input" });
  const submit = () => {
    const title = ta.value.trim();
    if (!title) { ta.focus(); return; }
    addCard(columnId, title);
    ta.value = "";
    grow();
    ta.focus();
    queueMicrotask(() => { entry.list.scrollTop = entry.list.scrollHeight; });
  };
  const close = () => {
    if (composer && composer.ta === ta) composer = null;
    if (entry.foot.isConnected) renderComposerButton(columnId, entry.foot);
  };
  const grow = () => { ta.style.height = "auto"; ta.style.height = `${Math.max(60, ta.scrollHeight + 2)}px`; };
  const keepFocus = (e) => e.preventDefault(); // buttons must not blur the textarea first
  entry.foot.replaceChildren(h("div", { class: "kb-composer" }, ta,
    h("div", { class: "kb-composer-row" },
      h("button", { type: "button", class: "am-btn am-btn-primary", "data-testid": "new-card-submit", on: { mousedown: keepFocus, click: submit } }, "Add card"),
      h("button", { type: "button", class: "am-icon-btn", "aria-label": "Cancel", title: "Cancel (Esc)", on: { mousedown: keepFocus, click: close } }, icon("x")),
      h("span", { class: "hint" }, h("span", { class: "am-kbd", text: "↵" }), " to add"))));
  ta.addEventListener("input", grow);
  ta.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); submit(); }
    else if (e.key === "Escape") { e.preventDefault(); close(); }
  });
  ta.addEventListener("blur", () => { if (!ta.value.trim()) setTimeout(() => { if (document.activeElement !== ta) close(); }, 0); });
  composer = { columnId, ta, close };
  ta.focus();
}

// New column: a dashed ghost at the end of the board that turns into a form.
const addColEl = h("div", { style: { display: "contents" } });
let newColumnForm = null;

function renderAddColumn() {
  newColumnForm = null;
  addColEl.replaceChildren(h("button", {
    type: "button", class: "kb-add-col", "data-testid": "add-column", on: { click: openNewColumn },
  }, icon("plus"), "Add column"));
}

function openNewColumn() {
  const input = h("input", { placeholder: "Column name", maxlength: 120, "aria-label": "New column name", "data-testid": "new-column-input" });
  const submit = () => {
    const title = input.value.trim();
    if (!title) { input.focus(); return; }
    addColumn(title);
    renderAddColumn();
    scheduleRender();
    queueMicrotask(() => { board.scrollLeft = board.scrollWidth; });
  };
  const keepFocus = (e) => e.preventDefault();
  newColumnForm = h("div", { class: "kb-new-col" }, input,
    h("div", { class: "kb-composer-row" },
      h("button", { type: "button", class: "am-btn am-btn-primary", "data-testid": "new-column-submit", on: { mousedown: keepFocus, click: submit } }, "Add column"),
      h("button", { type: "button", class: "am-icon-btn", "aria-label": "Cancel", on: { mousedown: keepFocus, click: () => { renderAddColumn(); scheduleRender(); } } }, icon("x"))));
  addColEl.replaceChildren(newColumnForm);
  columnsEl.hidden = false;
  emptyEl.hidden = true;
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") { e.preventDefault(); submit(); }
    else if (e.key === "Escape") { e.preventDefault(); renderAddColumn(); scheduleRender(); }
  });
  input.addEventListener("blur", () => { if (!input.value.trim()) setTimeout(() => { if (newColumnForm && !newColumnForm.contains(document.activeElement)) { renderAddColumn(); scheduleRender(); } }, 0); });
  input.focus();
}

/** Alt+↑/↓ moves a focused card within its column, Alt+←/→ to the next column (one write each). */
function moveCardByKey(id, key) {
  const card = model.cardById.get(id);
  if (!card) return;
  const cols = model.columns;
  const ci = cols.findIndex((c) => c.id === card.column);
  let column = card.column;
  let order;
  if (key === "ArrowUp" || key === "ArrowDown") {
    if (ci < 0) return;
    const list = model.byColumn.get(column);
    const i = list.findIndex((c) => c.id === id);
    if (key === "ArrowUp") {
      if (i <= 0) return;
      order = orderBetween(list[i - 2]?.order, list[i - 1].order);
    } else {
      if (i >= list.length - 1) return;
      order = orderBetween(list[i + 1].order, list[i + 2]?.order);
    }
  } else {
    const target = cols[ci < 0 ? 0 : ci + (key === "ArrowLeft" ? -1 : 1)];
    if (!target) return;
    column = target.id;
    const list = model.byColumn.get(column);
    order = orderBetween(list[list.length - 1]?.order, undefined);
  }
  aether.set(`card/${id}`, cardValue(id, { column, order }));
  render();
  cardEls.get(id)?.el.focus();
}

// ------------------------------------------------------------------ drag ---
// Pointer events (mouse, pen, touch): the card stays in the list as a dashed
// placeholder that moves to the drop position, a floating copy follows the
// pointer, and the drop is one write of the card with its new column/order.

let drag = null;
let suppressClick = false;

board.addEventListener("pointerdown", (e) => {
  if (e.button !== 0 || drag) return;
  const cardEl = e.target.closest(".kb-card");
  if (!cardEl || e.target.closest("button, select, input, textarea, a, label")) return;
  const id = cardEl.dataset.id;
  if (editing && editing.id === id) return;
  drag = { id, el: cardEl, pointerId: e.pointerId, startX: e.clientX, startY: e.clientY, started: false };
  addEventListener("pointermove", onDragMove);
  addEventListener("pointerup", onDragEnd);
  addEventListener("pointercancel", cancelDrag);
});

function beginDrag(e) {
  const { el } = drag;
  const rect = el.getBoundingClientRect();
  drag.started = true;
  drag.offsetX = drag.startX - rect.left;
  drag.offsetY = drag.startY - rect.top;
  drag.fromList = el.parentNode;
  drag.fromPrev = siblingCard(el, -1)?.dataset.id ?? null;
  drag.fromNext = siblingCard(el, 1)?.dataset.id ?? null;
  const ghost = el.cloneNode(true);
  ghost.classList.add("kb-ghost");
  ghost.removeAttribute("data-testid");
  ghost.querySelectorAll("[data-testid]").forEach((n) => n.removeAttribute("data-testid"));
  ghost.style.width = `${rect.width}px`;
  const ghostSelect = ghost.querySelector("select");
  if (ghostSelect) ghostSelect.value = el.querySelector("select").value;
  document.body.append(ghost);
  drag.ghost = ghost;
  el.classList.add("is-dragging");
  document.body.classList.add("kb-dragging");
  document.getSelection()?.removeAllRanges();
  if (editing) editing.finish(true);
  demo.presence.set({ drag: drag.id });
  drag.scroll = requestAnimationFrame(autoScroll);
  moveGhost(e);
}

function siblingCard(el, dir) {
  let s = dir < 0 ? el.previousElementSibling : el.nextElementSibling;
  while (s && !s.classList.contains("kb-card")) s = dir < 0 ? s.previousElementSibling : s.nextElementSibling;
  return s;
}

function moveGhost(e) {
  drag.x = e.clientX;
  drag.y = e.clientY;
  drag.ghost.style.transform = `translate(${e.clientX - drag.offsetX}px, ${e.clientY - drag.offsetY}px) rotate(2.5deg)`;
  placePlaceholder();
}

function placePlaceholder() {
  const { x, y, el } = drag;
  // The target column: the one under the pointer, else the nearest horizontally.
  let best = null;
  let bestDist = Infinity;
  for (const [id, entry] of colEls) {
    if (id === ORPHANS) continue;
    const r = entry.el.getBoundingClientRect();
    const d = x < r.left ? r.left - x : x > r.right ? x - r.right : 0;
    if (d < bestDist) { bestDist = d; best = entry; }
  }
  for (const entry of colEls.values()) entry.el.classList.toggle("is-drop-target", entry === best);
  if (!best) return;
  const list = best.list;
  let before = null;
  for (const child of list.children) {
    if (child === el || !child.classList.contains("kb-card")) continue;
    const r = child.getBoundingClientRect();
    if (y < r.top + r.height / 2) { before = child; break; }
  }
  if (el.parentNode !== list || (before ? el.nextElementSibling !== before : list.lastElementChild !== el)) {
    list.insertBefore(el, before);
  }
}

function autoScroll() {
  if (!drag || !drag.started) return;
  const r = board.getBoundingClientRect();
  const edge = 70;
  let dx = 0;
  if (drag.x < r.left + edge) dx = -Math.ceil((r.left + edge - drag.x) / 6);
  else if (drag.x > r.right - edge) dx = Math.ceil((drag.x - (r.right - edge)) / 6);
  if (dx) { board.scrollLeft += dx; placePlaceholder(); }
  drag.scroll = requestAnimationFrame(autoScroll);
}

function onDragMove(e) {
  if (!drag || e.pointerId !== drag.pointerId) return;
  if (!drag.started) {
    if (Math.hypot(e.clientX - drag.startX, e.clientY - drag.startY) < 5) return;
    beginDrag(e);
  }
  e.preventDefault();
  moveGhost(e);
}

function onDragEnd(e) {
  if (!drag || e.pointerId !== drag.pointerId) return;
  const d = drag;
  if (!d.started) { stopDrag(); return; }
  const list = d.el.parentNode;
  const colEntry = [...colEls.entries()].find(([, entry]) => entry.list === list);
  const columnId = colEntry ? colEntry[0] : null;
  const prev = siblingCard(d.el, -1);
  const next = siblingCard(d.el, 1);
  const unchanged = list === d.fromList && (prev?.dataset.id ?? null) === d.fromPrev && (next?.dataset.id ?? null) === d.fromNext;
  stopDrag();
  suppressClick = true;
  setTimeout(() => { suppressClick = false; }, 0);
  if (!columnId || columnId === ORPHANS || unchanged || aether.get(`card/${d.id}`) === undefined) { scheduleRender(); return; }
  const a = prev ? model.cardById.get(prev.dataset.id)?.order : undefined;
  const b = next ? model.cardById.get(next.dataset.id)?.order : undefined;
  if (a !== undefined && b !== undefined && !(b - a > 1e-9)) {
    // The gap is used up (or orders tie): renumber the target list, still one write.
    const changes = {};
    [...list.children].filter((c) => c.classList.contains("kb-card")).forEach((c, i) => {
      if (aether.get(`card/${c.dataset.id}`) !== undefined) changes[`card/${c.dataset.id}`] = cardValue(c.dataset.id, { column: columnId, order: i + 1 });
    });
    aether.update(changes);
  } else {
    aether.set(`card/${d.id}`, cardValue(d.id, { column: columnId, order: orderBetween(a, b) }));
  }
  scheduleRender();
}

function stopDrag() {
  if (!drag) return;
  removeEventListener("pointermove", onDragMove);
  removeEventListener("pointerup", onDragEnd);
  removeEventListener("pointercancel", cancelDrag);
  if (drag.scroll) cancelAnimationFrame(drag.scroll);
  drag.ghost?.remove();
  drag.el.classList.remove("is-dragging");
  document.body.classList.remove("kb-dragging");
  for (const entry of colEls.values()) entry.el.classList.remove("is-drop-target");
  if (drag.started) demo.presence.set({ drag: null });
  drag = null;
}

function cancelDrag() {
  if (!drag) return;
  stopDrag();
  scheduleRender();
}

addEventListener("keydown", (e) => { if (e.key === "Escape" && drag && drag.started) cancelDrag(); });

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

const copyLink = async () => {
  const url = new URL(location.href);
  url.searchParams.set("space", demo.space);
  try {
    await navigator.clipboard.writeText(url.href);
    toast("Link copied — open it in another window to collaborate.", { duration: 3000 });
  } catch {
    toast(`Share this address: ${url.href}`, { duration: 6000 });
  }
};
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
