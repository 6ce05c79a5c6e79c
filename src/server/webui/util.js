// Small DOM and fetch helpers shared by the UI modules. Text always goes in as text nodes: nothing
// here (or anywhere in the UI) assigns innerHTML.

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

// el("button", {class: "x", onclick: f, title: "t"}, "label", childNode, ...)
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "dataset") Object.assign(e.dataset, v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "value") e.value = v;
    else e.setAttribute(k, v === true ? "" : v);
  }
  append(e, children);
  return e;
}

function append(e, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(e, c);
    else e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function bytes(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(n < 10 ? 2 : 1)) + " " + u[i];
}

export const num = (x, d = 1) => (x === null || x === undefined || Number.isNaN(Number(x)) ? "–" : Number(x).toFixed(d));
export const pct = (x, d = 1) => (x === null || x === undefined ? "–" : (100 * x).toFixed(d) + " %");

// Short unique ids for stored objects (crypto.randomUUID needs a secure context; LAN http is not).
export function newId() {
  return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 10);
}

export class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function errorOf(r) {
  let msg = r.status + " " + r.statusText;
  try { const j = await r.json(); if (j && j.error) msg = typeof j.error === "string" ? j.error : j.error.message || msg; } catch (_) { /* not JSON */ }
  return new HttpError(r.status, msg);
}

export async function api(path, body, method) {
  const init = body === undefined ? { method: method || "GET" } : {
    method: method || "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const r = await fetch(path, init);
  if (!r.ok) throw await errorOf(r);
  const text = await r.text();
  return text ? JSON.parse(text) : {};
}

// POSTs body and yields the NDJSON objects of the answer as they arrive.
export async function* ndjsonPost(path, body, signal) {
  const r = await fetch(path, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal,
  });
  if (!r.ok) throw await errorOf(r);
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (line) yield JSON.parse(line);
    }
  }
  if (buf.trim()) yield JSON.parse(buf);
}

// Copies text; the Clipboard API needs a secure context (localhost is one), else a textarea fallback.
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try { await navigator.clipboard.writeText(text); return true; } catch (_) { /* fall back */ }
  }
  const ta = el("textarea", { style: "position:fixed;top:-1000px;opacity:0" });
  ta.value = text;
  document.body.append(ta);
  ta.select();
  let ok = false;
  try { ok = document.execCommand("copy"); } catch (_) { ok = false; }
  ta.remove();
  return ok;
}

let toastTimer = null;
export function toast(message, kind = "info") {
  const t = $("#toast");
  t.textContent = message;
  t.className = "toast show " + kind;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.className = "toast"; }, kind === "error" ? 6000 : 3000);
}

export function timeAgo(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return "just now";
  if (s < 3600) return Math.floor(s / 60) + " min ago";
  if (s < 86400) return Math.floor(s / 3600) + " h ago";
  return new Date(ms).toLocaleDateString();
}
