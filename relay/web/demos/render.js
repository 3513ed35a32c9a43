// A small, safe Markdown renderer for the collaborative document demo.
//
// Security model: the source is HTML-escaped FIRST (& < > " '), and only then
// is the Markdown subset applied, by code that emits a fixed set of tags
// (h1–h3, p, br, strong, em, del, code, pre, ul, ol, li, blockquote, hr, a).
// No attribute ever carries unescaped text: link targets must be http:, https:
// or mailto: URLs (everything else, `javascript:` included, stays plain text),
// list `start` numbers are digits, and code-fence languages are [A-Za-z0-9_+-].
// The function is pure (no DOM), so it runs and is tested in Node too.
//
// Subset: `#`, `##`, `###` headings; **bold**/__bold__, *italic*/_italic_,
// ~~strike~~, `inline code`; ``` fenced code blocks; `-`/`*`/`+` bullet and
// `1.` numbered lists (nested by indentation, `[ ]`/`[x]` task items); `>`
// blockquotes; `---` rules; [text](url) links. Single newlines are line breaks.

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

/** Escapes the five HTML-significant characters. */
export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

// Placeholders for already-rendered inline HTML (code spans, links): private-use
// characters, stripped from the input so a source can never forge one.
const STASH_OPEN = "\uE000";
const STASH_CLOSE = "\uE001";
const STASH_RE = /\uE000(\d+)\uE001/g;
const HAS_STASH = /\uE000\d+\uE001/;

const SAFE_URL = /^(?:https?:\/\/|mailto:)[^\s]*$/i;

/**
 * Renders Markdown source to an HTML string that is safe to assign to
 * `innerHTML`.
 * @param {string} source
 * @returns {string}
 */
export function renderMarkdown(source) {
  const clean = String(source ?? "")
    .replace(/\r\n?/g, "\n")
    .replace(/[\uE000\uE001\u0000]/g, "");
  const lines = escapeHtml(clean).split("\n");
  return renderBlocks(lines, 0);
}

export default renderMarkdown;

// ---------------------------------------------------------------- blocks ---
// Every function below works on ALREADY-ESCAPED text and never un-escapes it.

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([A-Za-z0-9_+-]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,3})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
const QUOTE = /^ {0,3}&gt;[ \t]?(.*)$/;
const BULLET = /^([ \t]*)([-*+])[ \t]+(.*)$/;
const ORDERED = /^([ \t]*)(\d{1,9})([.)])[ \t]+(.*)$/;

function isBlank(line) {
  return /^\s*$/.test(line);
}

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) ||
    BULLET.test(line) || ORDERED.test(line);
}

function renderBlocks(lines, depth) {
  const out = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (isBlank(line)) { i++; continue; }

    let m = line.match(FENCE);
    if (m) {
      const marker = m[1];
      const lang = m[2];
      const body = [];
      i++;
      while (i < lines.length && !isClosingFence(lines[i], marker)) body.push(lines[i++]);
      i++; // the closing fence (or past the end: an unclosed fence runs to the end)
      const cls = lang ? ` class="language-${lang}"` : "";
      out.push(`<pre><code${cls}>${body.join("\n")}</code></pre>`);
      continue;
    }

    m = line.match(HEADING);
    if (m) {
      const level = m[1].length;
      out.push(`<h${level}>${renderInline(m[2] || "")}</h${level}>`);
      i++;
      continue;
    }

    if (RULE.test(line)) {
      out.push("<hr>");
      i++;
      continue;
    }

    m = line.match(QUOTE);
    if (m && depth < 8) {
      const inner = [];
      while (i < lines.length) {
        const q = lines[i].match(QUOTE);
        if (q) { inner.push(q[1]); i++; continue; }
        // Lazy continuation: a plain text line right after a quoted one.
        if (!isBlank(lines[i]) && !startsBlock(lines[i]) && inner.length && !isBlank(inner[inner.length - 1])) {
          inner.push(lines[i]);
          i++;
          continue;
        }
        break;
      }
      out.push(`<blockquote>${renderBlocks(inner, depth + 1)}</blockquote>`);
      continue;
    }

    if (BULLET.test(line) || ORDERED.test(line)) {
      const start = i;
      while (i < lines.length && !isBlank(lines[i]) && (BULLET.test(lines[i]) || ORDERED.test(lines[i]) || /^[ \t]+\S/.test(lines[i]))) i++;
      out.push(renderList(lines.slice(start, i), depth));
      continue;
    }

    // A paragraph: consecutive lines up to a blank line or another block.
    const para = [line];
    i++;
    while (i < lines.length && !isBlank(lines[i]) && !startsBlock(lines[i])) para.push(lines[i++]);
    out.push(`<p>${para.map((l) => renderInline(l.trim())).join("<br>")}</p>`);
  }
  return out.join("");
}

function isClosingFence(line, marker) {
  const t = line.trim();
  return t.length >= marker.length && t[0] === marker[0] && new RegExp(`^\\${marker[0]}{${marker.length},}$`).test(t);
}

function indentOf(ws) {
  let n = 0;
  for (const c of ws) n += c === "\t" ? 4 : 1;
  return n;
}

/** Parses list lines into items with indentation, then nests them. */
function renderList(lines, depth) {
  const items = [];
  for (const line of lines) {
    const b = line.match(BULLET);
    const o = b ? null : line.match(ORDERED);
    if (b) items.push({ indent: indentOf(b[1]), type: "ul", text: b[3], start: 1 });
    else if (o) items.push({ indent: indentOf(o[1]), type: "ol", text: o[4], start: Number(o[2]) });
    else if (items.length) items[items.length - 1].text += "\n" + line.trim(); // continuation line
  }
  return buildList(items, 0, items.length, depth);
}

function buildList(items, from, to, depth) {
  // Items in [from, to) whose indent is the smallest form this level; deeper
  // ones nest inside the item before them.
  let out = "";
  let i = from;
  const base = Math.min(...items.slice(from, to).map((it) => it.indent));
  while (i < to) {
    const type = items[i].type;
    const start = items[i].start;
    let html = "";
    while (i < to && items[i].indent <= base + 1 && items[i].type === type) {
      const item = items[i];
      let j = i + 1;
      while (j < to && items[j].indent > base + 1) j++;
      const nested = j > i + 1 && depth < 8 ? buildList(items, i + 1, j, depth + 1) : "";
      html += `<li${taskClass(item.text)}>${renderItemText(item.text)}${nested}</li>`;
      i = j;
    }
    if (!html) { // deeper item without a parent at this level: render it here
      const item = items[i++];
      html = `<li>${renderItemText(item.text)}</li>`;
    }
    const startAttr = type === "ol" && start !== 1 ? ` start="${String(start).replace(/\D/g, "")}"` : "";
    out += `<${type}${startAttr}>${html}</${type}>`;
  }
  return out;
}

const TASK = /^\[([ xX])\][ \t]+/;

function taskClass(text) {
  return TASK.test(text) ? ' class="task"' : "";
}

function renderItemText(text) {
  const t = text.match(TASK);
  const body = text.split("\n").map((l) => renderInline(l)).join("<br>");
  if (!t) return body;
  const done = t[1] !== " ";
  const rest = text.slice(t[0].length).split("\n").map((l) => renderInline(l)).join("<br>");
  return `<span class="check${done ? " done" : ""}" aria-hidden="true"></span><span${done ? ' class="done"' : ""}>${rest}</span>`;
}

// ---------------------------------------------------------------- inline ---

function renderInline(text) {
  const stash = [];
  const keep = (html) => `${STASH_OPEN}${stash.push(html) - 1}${STASH_CLOSE}`;

  // 1. Code spans: their content is literal (already escaped).
  let s = text.replace(/(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/g, (_, ticks, body) => keep(`<code>${body.trim() || body}</code>`));

  // 2. Links: [text](url), only for http:, https: and mailto: targets. The URL
  // is already escaped, so it is safe inside a double-quoted attribute.
  s = s.replace(/\[([^\[\]]*)\]\(([^()\s]*)\)/g, (whole, label, url) => {
    if (!SAFE_URL.test(url)) return whole;
    const external = !/^mailto:/i.test(url);
    const rel = external ? ' target="_blank" rel="noopener noreferrer nofollow"' : "";
    return keep(`<a href="${url}"${rel}>${emphasis(label) || url}</a>`);
  });

  // 3. Emphasis on what is left.
  s = emphasis(s);

  // 4. Put the stashed HTML back (nested stashes: repeat until none remain).
  for (let n = 0; n < 4 && HAS_STASH.test(s); n++) {
    s = s.replace(STASH_RE, (_, k) => stash[Number(k)] ?? "");
  }
  return s;
}

function emphasis(s) {
  return s
    .replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^\w])__(?=\S)([\s\S]*?\S)__(?!\w)/g, "$1<strong>$2</strong>")
    .replace(/~~(?=\S)([\s\S]*?\S)~~/g, "<del>$1</del>")
    .replace(/(^|[^*\w])\*(?=[^\s*])([\s\S]*?[^\s*])\*(?!\*)/g, "$1<em>$2</em>")
    .replace(/(^|[^\w])_(?=[^\s_])([\s\S]*?[^\s_])_(?!\w)/g, "$1<em>$2</em>");
}
