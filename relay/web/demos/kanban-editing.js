// In-place editing on the kanban board: a card's title (click it, or Enter on
// the focused card), a column's name (click it), the composer at the foot of
// a column that adds cards, and the form at the end of the board that adds a
// column.
//
// The board's state and actions come from kanban.js, which imports this module
// in turn: they are only used inside functions, called once both have run.
import { h, icon } from "./common.js";
import {
  demo, aether, board, columnsEl, emptyEl, model, colEls, cardEls,
  readCard, cardValue, addColumn, renameColumn, addCard, scheduleRender,
} from "./kanban.js";

// ------------------------------------------------------ title / rename ---

export let editing = null; // {id, ta}

/** The render removed card `id`: its title editor went with it. */
export function forgetEditor(id) {
  if (editing && editing.id === id) editing = null;
}

export function startEditCard(id) {
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

export function startRenameColumn(id) {
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

/** The render removed column `columnId`: its composer went with it. */
export function forgetComposer(columnId) {
  if (composer && composer.columnId === columnId) composer = null;
}

export function renderComposerButton(columnId, foot) {
  foot.replaceChildren(h("button", {
    type: "button", class: "kb-add-card", "data-testid": "add-card",
    on: { click: () => openComposer(columnId) },
  }, icon("plus"), "Add card"));
}

export function openComposer(columnId) {
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
export const addColEl = h("div", { style: { display: "contents" } });
export let newColumnForm = null;

export function renderAddColumn() {
  newColumnForm = null;
  addColEl.replaceChildren(h("button", {
    type: "button", class: "kb-add-col", "data-testid": "add-column", on: { click: openNewColumn },
  }, icon("plus"), "Add column"));
}

export function openNewColumn() {
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
