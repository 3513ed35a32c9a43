// The Kanban demo (/demos/kanban.html) in two real browsers (separate
// contexts: separate storage, so everything goes through the relay).
import { test } from "node:test";
import assert from "node:assert/strict";
import { DEADLINE, demoSuite, screenshot, uniqueSpace, waitFor } from "./harness.mjs";

const open = demoSuite("/demos/kanban.html", { width: 1440, height: 860 });

/** Records in `page` when the next keydown of `key` happens (the user's action). */
async function armAction(page, key = "Enter") {
  await page.evaluate((k) => {
    window.__actionAt = undefined;
    addEventListener("keydown", function once(e) {
      if (e.key !== k) return;
      window.__actionAt = performance.timeOrigin + performance.now();
      removeEventListener("keydown", once, true);
    }, true);
  }, key);
}

/** Records in `page` the first moment (epoch ms, sub-ms: comparable across pages of one machine) `css` matches an element whose text includes `text`. */
async function armSeen(page, name, css, text) {
  await page.evaluate(([name, css, text]) => {
    window.__seen = window.__seen || {};
    delete window.__seen[name];
    const f = () => performance.timeOrigin + performance.now();
    const check = () => {
      if (window.__seen[name]) return true;
      const hit = [...document.querySelectorAll(css)].some((el) => text === null || el.textContent.includes(text));
      if (hit) window.__seen[name] = f();
      return hit;
    };
    if (check()) return;
    const mo = new MutationObserver(() => { if (check()) mo.disconnect(); });
    mo.observe(document.body, { subtree: true, childList: true, characterData: true, attributes: true });
  }, [name, css, text]);
}

async function seenAt(page, name) {
  return waitFor(page, (n) => window.__seen && window.__seen[n], name, `"${name}" to show`);
}

const card = (id) => `[data-testid="card"][data-id="${id}"]`;
const column = (id) => `[data-testid="column"][data-id="${id}"]`;

test("two browsers edit one board live", async () => {
  const space = uniqueSpace("kanban");
  const a = await open(space);
  const b = await open(space);

  // An empty board offers a sample board, and creates nothing by itself.
  await waitFor(a, () => !document.querySelector('[data-testid="empty"]').hidden, null, "empty state on A");
  assert.equal(await a.evaluate(() => window.aether.keys().length), 0);

  // A adds a column (toolbar button, name, Enter).
  await a.click('[data-testid="toolbar-add-column"]');
  await a.fill('[data-testid="new-column-input"]', "Backlog");
  await armSeen(b, "column", '[data-testid="column-title"]', "Backlog");
  await armAction(a);
  await a.press('[data-testid="new-column-input"]', "Enter");
  const colSeen = await seenAt(b, "column");
  const colLatency = colSeen - (await a.evaluate(() => window.__actionAt));
  console.log(`kanban: A adds a column → visible on B after ${colLatency.toFixed(1)} ms`);
  const col1 = await a.getAttribute('[data-testid="column"]', "data-id");

  // A adds a card to it.
  await a.click(`${column(col1)} [data-testid="add-card"]`);
  await a.fill(`${column(col1)} [data-testid="new-card-input"]`, "Ship the relay");
  await armSeen(b, "card", '[data-testid="card-title"]', "Ship the relay");
  await armAction(a);
  await a.press(`${column(col1)} [data-testid="new-card-input"]`, "Enter");
  const cardSeen = await seenAt(b, "card");
  const cardLatency = cardSeen - (await a.evaluate(() => window.__actionAt));
  console.log(`kanban: A adds a card → visible on B after ${cardLatency.toFixed(1)} ms`);
  await a.press(`${column(col1)} [data-testid="new-card-input"]`, "Escape");
  const cardId = await a.getAttribute('[data-testid="card"]', "data-id");
  assert.deepEqual(await b.evaluate((k) => window.aether.get(k), `card/${cardId}`),
    { column: col1, title: "Ship the relay", priority: "medium", order: 1 });

  // A second column, added on B this time.
  await b.click('[data-testid="add-column"]');
  await b.fill('[data-testid="new-column-input"]', "Doing");
  await b.press('[data-testid="new-column-input"]', "Enter");
  await waitFor(a, () => document.querySelectorAll('[data-testid="column"]').length === 2, null, "second column on A");
  const col2 = await b.evaluate(() => document.querySelectorAll('[data-testid="column"]')[1].dataset.id);

  // B drags the card into the second column with the mouse.
  await waitFor(b, (s) => !!document.querySelector(s), card(cardId), "card on B");
  const from = await b.locator(card(cardId)).boundingBox();
  const to = await b.locator(`${column(col2)} [data-testid="card-list"]`).boundingBox();
  await b.mouse.move(from.x + 30, from.y + 14);
  await b.mouse.down();
  await b.mouse.move(from.x + 40, from.y + 20, { steps: 3 });
  await b.mouse.move(to.x + to.width / 2, to.y + 20, { steps: 12 });
  await armSeen(a, "moved", `${column(col2)} ${card(cardId)}`, null);
  const dropAt = await b.evaluate(() => performance.timeOrigin + performance.now());
  await b.mouse.up();
  const movedSeen = await seenAt(a, "moved");
  console.log(`kanban: B drops a card in another column → visible on A after ${(movedSeen - dropAt).toFixed(1)} ms`);
  assert.equal(await a.evaluate((k) => window.aether.get(k).column, `card/${cardId}`), col2);
  assert.equal(await b.locator(`${column(col1)} [data-testid="card"]`).count(), 0);

  // Reorder within a column: two more cards in col2 on A, B drags the last one to the top.
  await a.click(`${column(col2)} [data-testid="add-card"]`);
  for (const t of ["Write the docs", "Load test"]) {
    await a.fill(`${column(col2)} [data-testid="new-card-input"]`, t);
    await a.press(`${column(col2)} [data-testid="new-card-input"]`, "Enter");
  }
  await a.press(`${column(col2)} [data-testid="new-card-input"]`, "Escape");
  await waitFor(b, (s) => document.querySelectorAll(s).length === 3, `${column(col2)} [data-testid="card"]`, "three cards on B");
  const titlesOf = (page) => page.evaluate((s) => [...document.querySelectorAll(s)].map((e) => e.textContent), `${column(col2)} [data-testid="card-title"]`);
  assert.deepEqual(await titlesOf(b), ["Ship the relay", "Write the docs", "Load test"]);
  const last = await b.locator(`${column(col2)} [data-testid="card"]`).nth(2).boundingBox();
  const first = await b.locator(`${column(col2)} [data-testid="card"]`).nth(0).boundingBox();
  await b.mouse.move(last.x + 30, last.y + 12);
  await b.mouse.down();
  await b.mouse.move(last.x + 30, last.y + 2, { steps: 3 });
  await b.mouse.move(first.x + 30, first.y + 4, { steps: 10 });
  await b.mouse.up();
  await waitFor(a, (s) => [...document.querySelectorAll(s)].map((e) => e.textContent).join("|") === "Load test|Ship the relay|Write the docs",
    `${column(col2)} [data-testid="card-title"]`, "reordered cards on A");
  // The keyboard moves a focused card too (Alt+↑).
  await a.locator(`${column(col2)} [data-testid="card"]`).nth(2).focus();
  await a.keyboard.press("Alt+ArrowUp");
  await waitFor(b, (s) => [...document.querySelectorAll(s)].map((e) => e.textContent).join("|") === "Load test|Write the docs|Ship the relay",
    `${column(col2)} [data-testid="card-title"]`, "keyboard-moved card on B");

  // A edits the title in place and changes the priority.
  await a.click(`${card(cardId)} [data-testid="card-title"]`);
  await a.fill(`${card(cardId)} [data-testid="card-title-input"]`, "Ship the relay v2");
  await armSeen(b, "title", `${card(cardId)} [data-testid="card-title"]`, "Ship the relay v2");
  await armAction(a);
  await a.press(`${card(cardId)} [data-testid="card-title-input"]`, "Enter");
  const titleSeen = await seenAt(b, "title");
  console.log(`kanban: A renames a card in place → visible on B after ${(titleSeen - (await a.evaluate(() => window.__actionAt))).toFixed(1)} ms`);
  // Escape cancels an edit.
  await a.click(`${card(cardId)} [data-testid="card-title"]`);
  await a.fill(`${card(cardId)} [data-testid="card-title-input"]`, "not this");
  await a.press(`${card(cardId)} [data-testid="card-title-input"]`, "Escape");
  assert.equal(await a.textContent(`${card(cardId)} [data-testid="card-title"]`), "Ship the relay v2");
  assert.equal(await a.evaluate((k) => window.aether.get(k).title, `card/${cardId}`), "Ship the relay v2");

  await a.selectOption(`${card(cardId)} [data-testid="card-priority"]`, "high");
  await waitFor(b, (s) => document.querySelector(s)?.value === "high", `${card(cardId)} [data-testid="card-priority"]`, "priority high on B");
  assert.equal(await b.getAttribute(card(cardId), "data-priority"), "high");
  assert.equal(await b.evaluate((k) => window.aether.get(k).title, `card/${cardId}`), "Ship the relay v2");

  // A's pointer shows on B as a named cursor.
  const boardBox = await a.locator('[data-testid="board"]').boundingBox();
  await a.mouse.move(boardBox.x + 420, boardBox.y + 260, { steps: 4 });
  await a.mouse.move(boardBox.x + 460, boardBox.y + 300, { steps: 4 });
  await waitFor(b, () => document.querySelector('[data-testid="peer-cursor"]')?.textContent.length > 0, null, "A's cursor on B");
  const aName = await a.evaluate(() => localStorage.getItem("aether-demo-name"));
  assert.equal(await b.textContent('[data-testid="peer-cursor"]'), aName);
  assert.equal(await b.locator('[data-testid="peer-avatar"]').count(), 1);

  // B deletes the second column with its three cards: ONE update() call.
  const col2Cards = await b.evaluate((s) => [...document.querySelectorAll(s)].map((e) => e.dataset.id), `${column(col2)} [data-testid="card"]`);
  assert.equal(col2Cards.length, 3);
  await b.evaluate(() => {
    window.__calls = [];
    for (const m of ["set", "delete", "update"]) {
      const orig = window.aether[m].bind(window.aether);
      window.aether[m] = (...args) => { window.__calls.push([m, args]); return orig(...args); };
    }
  });
  await b.hover(column(col2));
  await b.click(`${column(col2)} [data-testid="delete-column"]`);
  const calls = await b.evaluate(() => window.__calls);
  assert.equal(calls.length, 1, `one write, got ${JSON.stringify(calls)}`);
  assert.equal(calls[0][0], "update");
  assert.deepEqual(Object.keys(calls[0][1][0]).sort(), [`column/${col2}`, ...col2Cards.map((id) => `card/${id}`)].sort());
  await waitFor(a, (s) => !document.querySelector(s), column(col2), "column gone on A");
  await waitFor(a, () => document.querySelectorAll('[data-testid="card"]').length === 0, null, "cards gone on A");
  for (const id of col2Cards) {
    assert.equal(await a.evaluate((k) => window.aether.get(k), `card/${id}`), undefined);
    assert.equal(await a.evaluate((k) => window.aether.has(k), `card/${id}`), false);
  }
  assert.equal(await a.evaluate((k) => window.aether.get(k), `column/${col2}`), undefined);
  assert.equal(await a.locator('[data-testid="column"]').count(), 1);

  // Everything is acknowledged; no page errors anywhere.
  await waitFor(a, () => window.aether.pending === 0, null, "A synced");
  await waitFor(b, () => window.aether.pending === 0, null, "B synced");
  assert.deepEqual(a.errors, []);
  assert.deepEqual(b.errors, []);
  assert.ok(colLatency < DEADLINE && cardLatency < DEADLINE);
});

test("a sample board, with a peer at work, looks right", async () => {
  const space = uniqueSpace("kanban-shot");
  const a = await open(space);
  const b = await open(space);
  await a.click('[data-testid="create-sample"]');
  await waitFor(b, () => document.querySelectorAll('[data-testid="card"]').length >= 8, null, "sample board on B");
  assert.equal(await a.locator('[data-testid="column"]').count(), 4);
  // B starts editing a card and points at the board: A sees both.
  const target = b.locator('[data-testid="card"]').nth(3);
  await target.locator('[data-testid="card-title"]').click();
  const box = await b.locator('[data-testid="board"]').boundingBox();
  await b.mouse.move(box.x + 700, box.y + 190, { steps: 5 });
  await waitFor(a, () => document.querySelector(".kb-card.is-peer") && document.querySelector('[data-testid="peer-cursor"]'), null, "B's activity on A");
  await a.mouse.move(5, 300);
  await a.waitForTimeout(200);
  const path = await screenshot(a, "kanban");
  console.log(`kanban: screenshot ${path}`);
  assert.deepEqual(a.errors, []);
  assert.deepEqual(b.errors, []);
});
