// Moving cards on the kanban board: drag and drop with the pointer, and
// Alt+arrow keys on the focused card. Either way a move is one write: the card
// with its new column and order (or, when there is no room left between two
// orders, the target column's cards renumbered).
//
// The board's state and actions come from kanban.js, which imports this module
// in turn: they are only used inside functions, called once both have run.
import {
  demo, aether, model, colEls, cardEls, ORPHANS, cardValue, orderBetween, scheduleRender, render,
} from "./kanban.js";
import { editing } from "./kanban-editing.js";

// -------------------------------------------------------------- keyboard ---

/** Alt+↑/↓ moves a focused card within its column, Alt+←/→ to the next column (one write each). */
export function moveCardByKey(id, key) {
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

// Looked up here rather than imported: the listener below is added as this
// module loads, before kanban.js has run.
const board = document.getElementById("board");

export let drag = null;
export let suppressClick = false;

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

export function cancelDrag() {
  if (!drag) return;
  stopDrag();
  scheduleRender();
}

addEventListener("keydown", (e) => { if (e.key === "Escape" && drag && drag.started) cancelDrag(); });
