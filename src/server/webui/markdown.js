// A small Markdown renderer for model answers, written for qleap. It builds DOM nodes (text goes in
// as text nodes, never as HTML), so whatever a model or a user writes (<img onerror=...>,
// <script>, javascript: links) shows as text. Links are kept only for http(s) and mailto URLs;
// images are shown as links (nothing is fetched from another origin).
//
// Supported: ATX headings, paragraphs (single newlines are line breaks, as in chat apps), emphasis
// (* _ ** __ ***), ~~strike~~, `code`, fenced code blocks (``` and ~~~, highlighted by syntax.js,
// with a copy button), bullet / ordered / task lists (nested), block quotes, GFM tables with
// alignment, horizontal rules, links, <autolinks>, bare URLs, backslash escapes, and TeX math
// ($...$, \(...\), $$...$$, \[...\]) through math.js. Not supported: raw HTML (shown as text),
// reference-style links, setext headings, indented code blocks, footnotes.
//
// MarkdownView renders a growing text (a streamed answer) incrementally: blocks whose source did
// not change keep their DOM nodes, and the block being written is patched in place, so nothing
// above the cursor flickers or loses its selection.
import { highlight } from "./syntax.js";
import { renderTex } from "./math.js";
import { el, copyText } from "./util.js";

// ---------------------------------------------------------------------------------------------
// Blocks

const RE_FENCE = /^( {0,3})(`{3,}|~{3,})[ \t]*([^\s`]*)[^`]*$/;
const RE_HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
const RE_HR = /^ {0,3}(?:(?:-[ \t]*){3,}|(?:\*[ \t]*){3,}|(?:_[ \t]*){3,})$/;
const RE_QUOTE = /^ {0,3}>/;
const RE_LIST = /^( *)([-*+]|\d{1,9}[.)])([ \t]+|$)(.*)$/;
const RE_DELIM = /^ *\|? *:?-+:? *(?:\| *:?-+:? *)*\|? *$/;
const RE_MATH_OPEN = /^ {0,3}(\$\$|\\\[)(.*)$/;
const RE_BLANK = /^[ \t]*$/;

const indentOf = (l) => l.length - l.replace(/^ +/, "").length;

function isTableStart(lines, i) {
  return i + 1 < lines.length && lines[i].includes("|") && RE_DELIM.test(lines[i + 1]) &&
    lines[i + 1].includes("-") && splitRow(lines[i]).length === splitRow(lines[i + 1]).length;
}

// A line that ends a paragraph because it starts another block.
function startsBlock(lines, i) {
  const l = lines[i];
  if (RE_FENCE.test(l) || RE_HEADING.test(l) || RE_HR.test(l) || RE_QUOTE.test(l) || RE_MATH_OPEN.test(l)) return true;
  const m = RE_LIST.exec(l);
  if (m && m[4].trim() && indentOf(l) < 4 && (!/\d/.test(m[2]) || m[2].startsWith("1"))) return true;
  return isTableStart(lines, i);
}

function splitRow(line) {
  let s = line.trim();
  if (s.startsWith("|")) s = s.slice(1);
  if (s.endsWith("|") && !s.endsWith("\\|")) s = s.slice(0, -1);
  const cells = [];
  let cur = "", code = false;
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (c === "\\" && s[i + 1] === "|") { cur += "|"; i++; continue; }
    if (c === "`") code = !code;
    if (c === "|" && !code) { cells.push(cur.trim()); cur = ""; continue; }
    cur += c;
  }
  cells.push(cur.trim());
  return cells;
}

export function parseBlocks(text) {
  const lines = text.replace(/\r\n?/g, "\n").replace(/\t/g, "    ").split("\n");
  const blocks = [];
  let i = 0;
  const push = (b, start) => { b.src = lines.slice(start, i).join("\n"); blocks.push(b); };
  while (i < lines.length) {
    const line = lines[i];
    const start = i;
    let m;
    if (RE_BLANK.test(line)) { i++; continue; }
    if ((m = RE_FENCE.exec(line))) {
      const indent = m[1].length, fence = m[2];
      const body = [];
      let open = true;
      for (i++; i < lines.length; i++) {
        const c = /^ {0,3}(`{3,}|~{3,})[ \t]*$/.exec(lines[i]);
        if (c && c[1][0] === fence[0] && c[1].length >= fence.length) { open = false; i++; break; }
        body.push(lines[i].slice(Math.min(indent, indentOf(lines[i]))));
      }
      push({ type: "code", lang: m[3] || "", text: body.join("\n"), open }, start);
      continue;
    }
    if ((m = RE_MATH_OPEN.exec(line))) {
      const close = m[1] === "$$" ? "$$" : "\\]";
      let tex = m[2];
      let end = tex.indexOf(close);
      i++;
      if (end < 0) {
        const parts = [tex];
        for (; i < lines.length; i++) {
          end = lines[i].indexOf(close);
          if (end >= 0) { parts.push(lines[i].slice(0, end)); i++; break; }
          parts.push(lines[i]);
        }
        tex = parts.join("\n");
        push({ type: "math", tex: end >= 0 ? tex : tex, open: end < 0 }, start);
      } else {
        push({ type: "math", tex: tex.slice(0, end), open: false }, start);
      }
      continue;
    }
    if ((m = RE_HEADING.exec(line))) {
      i++;
      push({ type: "heading", level: m[1].length, text: m[2] || "" }, start);
      continue;
    }
    if (RE_HR.test(line)) { i++; push({ type: "hr" }, start); continue; }
    if (RE_QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length && !RE_BLANK.test(lines[i])) {
        if (RE_QUOTE.test(lines[i])) inner.push(lines[i].replace(/^ {0,3}> ?/, ""));
        else if (startsBlock(lines, i)) break;
        else inner.push(lines[i]);  // lazy continuation of the quoted paragraph
        i++;
      }
      push({ type: "quote", children: parseBlocks(inner.join("\n")) }, start);
      continue;
    }
    if ((m = RE_LIST.exec(line)) && indentOf(line) < 4) {
      const [list, next] = parseList(lines, i);
      i = next;
      push(list, start);
      continue;
    }
    if (isTableStart(lines, i)) {
      const head = splitRow(lines[i]);
      const align = splitRow(lines[i + 1]).map((c) => (c.startsWith(":") && c.endsWith(":") ? "center" : c.endsWith(":") ? "right" : c.startsWith(":") ? "left" : ""));
      const rows = [];
      for (i += 2; i < lines.length && !RE_BLANK.test(lines[i]) && lines[i].includes("|") && !startsBlock(lines, i); i++) {
        const cells = splitRow(lines[i]);
        while (cells.length < head.length) cells.push("");
        rows.push(cells.slice(0, head.length));
      }
      push({ type: "table", head, align, rows }, start);
      continue;
    }
    const para = [line];
    for (i++; i < lines.length && !RE_BLANK.test(lines[i]) && !startsBlock(lines, i); i++) para.push(lines[i]);
    push({ type: "para", text: para.join("\n") }, start);
  }
  return blocks;
}

function parseList(lines, i) {
  const first = RE_LIST.exec(lines[i]);
  const ordered = /\d/.test(first[2]);
  const kind = ordered ? first[2].slice(-1) : first[2];
  const base = first[1].length;
  const items = [];
  let tight = true;
  while (i < lines.length) {
    const m = RE_LIST.exec(lines[i]);
    if (!m || m[1].length > base + 1 || /\d/.test(m[2]) !== ordered || (ordered ? m[2].slice(-1) : m[2]) !== kind) break;
    const pad = m[3].length > 4 || m[3].length === 0 ? 1 : m[3].length;
    const contentIndent = m[1].length + m[2].length + pad;
    const body = [m[4]];
    let blankInside = false;
    for (i++; i < lines.length; i++) {
      const l = lines[i];
      const ind = indentOf(l);
      if (RE_BLANK.test(l)) {
        let j = i;
        while (j < lines.length && RE_BLANK.test(lines[j])) j++;
        if (j < lines.length && indentOf(lines[j]) >= contentIndent) {
          for (; i < j; i++) body.push("");
          blankInside = true;
          i--;
          continue;
        }
        break;
      }
      if (ind >= contentIndent || (ind > base && RE_LIST.test(l))) { body.push(l.slice(Math.min(ind, contentIndent))); continue; }
      if (RE_LIST.test(l) || startsBlock(lines, i)) break;
      body.push(l.trim());  // lazy continuation
    }
    let task = null;
    const t = /^\[([ xX])\][ \t]+/.exec(body[0]);
    if (t) { task = t[1] !== " "; body[0] = body[0].slice(t[0].length); }
    items.push({ task, blocks: parseBlocks(body.join("\n")) });
    if (blankInside) tight = false;
    // A blank line between items makes the list loose; anything else after it ends the list.
    let j = i;
    while (j < lines.length && RE_BLANK.test(lines[j])) j++;
    if (j > i) {
      const n = j < lines.length ? RE_LIST.exec(lines[j]) : null;
      if (!n || n[1].length > base + 1 || /\d/.test(n[2]) !== ordered) break;
      tight = false;
      i = j;
    }
  }
  return [{ type: "list", ordered, start: ordered ? parseInt(first[2], 10) : 1, tight, items }, i];
}

// ---------------------------------------------------------------------------------------------
// Inline

const PUNCT = /[!-/:-@[-`{-~]/;
const isSpace = (c) => c === undefined || /\s/.test(c);
const isWord = (c) => c !== undefined && /[\p{L}\p{N}]/u.test(c);

// The URL if it may become a link (http, https, mailto), else null. Control characters and spaces
// inside are refused so that "java\tscript:" and friends cannot pass.
export function safeUrl(url) {
  const s = String(url).trim();
  if (!s || /[\u0000-\u0020\u007f-\u009f]/.test(s)) return null;
  return /^(https?:\/\/|mailto:)/i.test(s) ? s : null;
}

function link(href, children, title) {
  return el("a", { href, target: "_blank", rel: "noopener noreferrer nofollow", title }, children);
}

function findClosingRun(text, from, ch, n) {
  for (let j = from; j < text.length; j++) {
    const c = text[j];
    if (c === "\\") { j++; continue; }
    if (c === "`") {
      let k = j; while (text[k] === "`") k++;
      const close = text.indexOf("`".repeat(k - j), k);
      if (close >= 0) { j = close + (k - j) - 1; continue; }
    }
    if (c !== ch) continue;
    let k = j; while (text[k] === ch) k++;
    const run = k - j;
    // Runs of exactly n close; a run of 3 also closes * or ** (as in "***both***").
    const fits = run === n || (run === 3 && n < 3) || (n === 3 && run > 3);
    if (fits && !isSpace(text[j - 1]) && (ch !== "_" || !isWord(text[k]))) return j + (run - n);
    j = k - 1;
  }
  return -1;
}

// [label](url "title") at i (text[i] === "["): {label, url, title, end} or null.
function parseLink(text, i) {
  let depth = 0, j = i;
  for (; j < text.length; j++) {
    const c = text[j];
    if (c === "\\") { j++; continue; }
    if (c === "[") depth++;
    else if (c === "]" && --depth === 0) break;
  }
  if (j >= text.length || text[j + 1] !== "(") return null;
  const m = /^\(\s*(<[^>\n]*>|(?:[^\s()]|\([^\s()]*\))*)(?:\s+("[^"]*"|'[^']*'))?\s*\)/.exec(text.slice(j + 1));
  if (!m) return null;
  let url = m[1];
  if (url.startsWith("<")) url = url.slice(1, -1);
  return { label: text.slice(i + 1, j), url, title: m[2] ? m[2].slice(1, -1) : undefined, end: j + 1 + m[0].length };
}

export function renderInline(text, parent) {
  let buf = "";
  const flush = () => { if (buf) { parent.append(document.createTextNode(buf)); buf = ""; } };
  const add = (node) => { flush(); parent.append(node); };
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (c === "\\") {
      const n = text[i + 1];
      if (n === "(" || n === "[") {
        const close = text.indexOf(n === "(" ? "\\)" : "\\]", i + 2);
        if (close > i + 2) { add(renderTex(text.slice(i + 2, close), n === "[")); i = close + 2; continue; }
      }
      if (n === "\n") { add(el("br")); i += 2; continue; }
      if (n !== undefined && PUNCT.test(n)) { buf += n; i += 2; continue; }
    }
    if (c === "\n") { buf = buf.replace(/ +$/, ""); add(el("br")); i++; continue; }
    if (c === "`") {
      let k = i; while (text[k] === "`") k++;
      const run = text.slice(i, k);
      let close = text.indexOf(run, k);
      while (close >= 0 && text[close + run.length] === "`") close = text.indexOf(run, close + run.length + 1);
      if (close >= 0) {
        let code = text.slice(k, close).replace(/\n/g, " ");
        if (/^ .*[^ ].* $/.test(code)) code = code.slice(1, -1);
        add(el("code", {}, code));
        i = close + run.length;
      } else { buf += run; i = k; }
      continue;
    }
    if (c === "$") {
      const display = text[i + 1] === "$";
      const open = display ? 2 : 1;
      if (display) {
        const close = text.indexOf("$$", i + 2);
        if (close > i + 2) { add(renderTex(text.slice(i + 2, close), true)); i = close + 2; continue; }
      } else if (!isSpace(text[i + 1])) {
        // Pandoc's rule, which keeps prices ("$5 and $10") as text: no space inside the dollars,
        // and no digit right after the closing one.
        let j = i + open;
        for (; j < text.length; j++) {
          if (text[j] === "\\") { j++; continue; }
          if (text[j] === "\n" && text[j + 1] === "\n") { j = text.length; break; }
          if (text[j] === "$") break;
        }
        if (j < text.length && j > i + 1 && !isSpace(text[j - 1]) && !/\d/.test(text[j + 1] || "")) {
          add(renderTex(text.slice(i + 1, j), false));
          i = j + 1;
          continue;
        }
      }
      buf += c; i++;
      continue;
    }
    if (c === "[" || (c === "!" && text[i + 1] === "[")) {
      const image = c === "!";
      const l = parseLink(text, image ? i + 1 : i);
      const href = l && safeUrl(l.url);
      if (l && href) {
        const a = link(href, [], l.title);
        if (image) a.append("🖼 " + (l.label || "image"));
        else renderInline(l.label, a);
        add(a);
        i = l.end;
        continue;
      }
      if (l) { buf += text.slice(i, l.end); i = l.end; continue; }  // an unsafe link stays text
    }
    if (c === "<") {
      const m = /^<((?:https?:\/\/|mailto:)[^\s<>]+)>/i.exec(text.slice(i));
      if (m && safeUrl(m[1])) { add(link(m[1], [m[1]])); i += m[0].length; continue; }
    }
    if ((c === "h" || c === "H") && !isWord(text[i - 1])) {
      const m = /^https?:\/\/[^\s<>"'`]+/i.exec(text.slice(i));
      if (m) {
        let url = m[0];
        while (/[.,;:!?'")\]*_]$/.test(url)) {
          if (url.endsWith(")") && (url.match(/\(/g) || []).length >= (url.match(/\)/g) || []).length) break;
          url = url.slice(0, -1);
        }
        if (safeUrl(url) && url.length > 8) { add(link(url, [url])); i += url.length; continue; }
      }
    }
    if (c === "*" || c === "_" || c === "~") {
      let k = i; while (text[k] === c) k++;
      const run = k - i;
      const leftOk = !isSpace(text[k]) && (c !== "_" || !isWord(text[i - 1]));
      if (leftOk) {
        const tryRun = (n, make) => {
          if (run < n) return false;
          const close = findClosingRun(text, k, c, n);
          if (close <= k) return false;
          buf += c.repeat(run - n);
          const node = make();
          renderInline(text.slice(k, close), node.firstChild || node);
          add(node);
          i = close + n;
          return true;
        };
        if (c === "~") { if (run === 2 && tryRun(2, () => el("del"))) continue; }
        else if ((run >= 3 && tryRun(3, () => el("strong", {}, el("em")))) ||
                 (run >= 2 && tryRun(2, () => el("strong"))) || tryRun(1, () => el("em"))) {
          continue;
        }
      }
      buf += text.slice(i, k); i = k;
      continue;
    }
    buf += c;
    i++;
  }
  flush();
}

// ---------------------------------------------------------------------------------------------
// Blocks to DOM

function inlineInto(node, text) { renderInline(text, node); return node; }

function codeBlock(b) {
  const code = el("code", { class: b.lang ? "lang-" + b.lang.toLowerCase().replace(/[^a-z0-9+#-]/g, "") : undefined });
  highlight(b.text, b.lang, code);
  const wrap = el("div", { class: "code-block" + (b.open ? " open" : "") });
  const copy = el("button", {
    type: "button", class: "copy", title: "Copy code",
    onclick: async () => {
      const ok = await copyText(wrap.dataset.code);
      copy.textContent = ok ? "Copied" : "Copy failed";
      setTimeout(() => { copy.textContent = "Copy"; }, 1500);
    },
  }, "Copy");
  wrap.dataset.code = b.text;
  wrap.append(el("div", { class: "code-head" }, el("span", { class: "lang" }, b.lang || "text"), copy), el("pre", {}, code));
  return wrap;
}

function renderBlock(b, tight = false) {
  switch (b.type) {
    case "code": return codeBlock(b);
    case "math": {
      const d = el("div", { class: "math-display" });
      d.append(renderTex(b.tex, true));
      return d;
    }
    case "heading": return inlineInto(el("h" + b.level), b.text);
    case "hr": return el("hr");
    case "quote": return el("blockquote", {}, b.children.map((c) => renderBlock(c)));
    case "list": {
      const list = el(b.ordered ? "ol" : "ul", { start: b.ordered && b.start !== 1 ? String(b.start) : undefined });
      for (const it of b.items) {
        const li = el("li", { class: it.task !== null ? "task" : undefined });
        if (it.task !== null) li.append(el("input", { type: "checkbox", disabled: true, checked: it.task }));
        for (const c of it.blocks) li.append(renderBlock(c, b.tight));
        list.append(li);
      }
      return list;
    }
    case "table": {
      const cell = (tag, text, k) => inlineInto(el(tag, { style: b.align[k] ? "text-align:" + b.align[k] : undefined }), text);
      return el("div", { class: "table-wrap" }, el("table", {},
        el("thead", {}, el("tr", {}, b.head.map((h, k) => cell("th", h, k)))),
        el("tbody", {}, b.rows.map((r) => el("tr", {}, r.map((d, k) => cell("td", d, k)))))));
    }
    default: return tight ? inlineInto(el("span", { class: "tight" }), b.text) : inlineInto(el("p"), b.text);
  }
}

const keyOf = (b) => b.type + "\u0000" + b.src;

// Renders a text that grows (a streamed answer) into container, touching only what changed.
export class MarkdownView {
  constructor(container) {
    this.root = container;
    this.items = [];  // {key, node}
    this.text = null;
  }

  render(text) {
    if (text === this.text) return;
    this.text = text;
    const blocks = parseBlocks(text);
    let i = 0;
    while (i < blocks.length && i < this.items.length && this.items[i].key === keyOf(blocks[i])) i++;
    for (let k = i; k < blocks.length; k++) {
      const node = renderBlock(blocks[k]);
      const old = this.items[k];
      if (!old) {
        this.root.append(node);
        this.items.push({ key: keyOf(blocks[k]), node });
      } else {
        if (old.node.tagName === node.tagName && old.node.className.replace(" open", "") === node.className.replace(" open", "")) {
          patch(old.node, node);
        } else {
          this.root.replaceChild(node, old.node);
          old.node = node;
        }
        old.key = keyOf(blocks[k]);
      }
    }
    while (this.items.length > blocks.length) this.items.pop().node.remove();
  }
}

// Moves the new rendering of a block into the node already on the page, keeping that node (and, for
// code blocks, its header and copy button).
function patch(old, fresh) {
  if (old.classList.contains("code-block")) {
    old.dataset.code = fresh.dataset.code;
    old.className = fresh.className;
    old.querySelector(".lang").textContent = fresh.querySelector(".lang").textContent;
    old.querySelector("pre").replaceWith(fresh.querySelector("pre"));
    return;
  }
  for (const a of Array.from(old.attributes)) if (!fresh.hasAttribute(a.name)) old.removeAttribute(a.name);
  for (const a of Array.from(fresh.attributes)) old.setAttribute(a.name, a.value);
  old.replaceChildren(...fresh.childNodes);
}

export function renderMarkdown(text, container) {
  const v = new MarkdownView(container);
  v.render(text);
  return v;
}
