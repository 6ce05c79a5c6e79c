// The chat: the sidebar of conversations (open, rename, delete, export, import), the messages of
// the open conversation (user text as text, answers as Markdown), sending with streamed answers,
// stop, regenerate, and edit-and-resend. Everything is saved in IndexedDB (store.js) as it changes.
import * as store from "./store.js";
import { MarkdownView } from "./markdown.js";
import { state, requestOptions, modelFor } from "./state.js";
import { $, el, ndjsonPost, copyText, toast, timeAgo } from "./util.js";

const kTitleLength = 60;

function titleFrom(text) {
  const t = text.replace(/\s+/g, " ").trim();
  return t.length > kTitleLength ? t.slice(0, kTitleLength - 1) + "…" : t || "New chat";
}

async function save(conv) {
  if (conv.deleted) return;
  try {
    await store.putConversation(conv);
  } catch (e) {
    toast("Could not save the conversation: " + e.message, "error");
  }
}

// ---- sidebar ----

export function renderSidebar() {
  const ul = $("#conv-list");
  const convs = [...state.convs].sort((a, b) => b.updated - a.updated);
  const items = convs.map((c) => {
    const li = el("li", { class: "conv" + (c === state.conv ? " active" : ""), dataset: { id: c.id } });
    li.append(
      el("button", { type: "button", class: "conv-open", title: c.title, onclick: () => { openConversation(c); closeDrawer(); } },
        el("span", { class: "conv-title" }, c.title), el("span", { class: "conv-time" }, timeAgo(c.updated))),
      el("button", { type: "button", class: "icon conv-rename", title: "Rename", "aria-label": "Rename " + c.title, onclick: () => startRename(li, c) }, "✎"),
      el("button", { type: "button", class: "icon conv-delete", title: "Delete", "aria-label": "Delete " + c.title, onclick: () => removeConversation(c) }, "✕"));
    return li;
  });
  if (!items.length) items.push(el("li", { class: "muted empty" }, "No conversations in this workspace yet."));
  ul.replaceChildren(...items);
}

function startRename(li, c) {
  const input = el("input", { type: "text", class: "rename-input", "aria-label": "New title", maxlength: "200" });
  input.value = c.title;
  let done = false;
  const finish = async (keep) => {
    if (done) return;
    done = true;
    const t = input.value.replace(/\s+/g, " ").trim();
    if (keep && t && t !== c.title) {
      c.title = t;
      await save(c);
      if (state.conv === c) $("#conv-title").textContent = c.title;
    }
    renderSidebar();
  };
  input.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter") { ev.preventDefault(); finish(true); }
    if (ev.key === "Escape") { ev.preventDefault(); ev.stopPropagation(); finish(false); }
  });
  input.addEventListener("blur", () => finish(true));
  li.replaceChildren(input);
  input.focus();
  input.select();
}

async function removeConversation(c) {
  if (!confirm(`Delete the conversation “${c.title}”?`)) return;
  c.deleted = true;  // a generation still streaming into it must not save it again
  if (state.job && state.job.conv === c) state.job.controller.abort();
  try {
    await store.deleteConversation(c.id);
  } catch (e) {
    toast("Could not delete: " + e.message, "error");
    return;
  }
  const i = state.convs.indexOf(c);
  if (i >= 0) state.convs.splice(i, 1);
  if (state.conv === c) openConversation(null);
  else renderSidebar();
}

export function openDrawer() { document.body.classList.add("drawer-open"); }
export function closeDrawer() { document.body.classList.remove("drawer-open"); }

// ---- the open conversation ----

export function openConversation(conv) {
  state.conv = conv;
  if (!conv) state.draftModel = "";
  if (state.ws) localStorage.setItem("qleap.conv." + state.ws.id, conv ? conv.id : "");
  $("#conv-title").textContent = conv ? conv.title : "New chat";
  renderModelSelect();
  renderMessages();
  renderSidebar();
  setBusy(!!state.job);
}

export function newChat() {
  openConversation(null);
  closeDrawer();
  $("#chat-input").focus();
}

export function renderModelSelect() {
  const sel = $("#model-select");
  const current = modelFor(state.conv);
  const names = [...state.models];
  if (current && !names.includes(current)) names.unshift(current);
  sel.replaceChildren(...names.map((n) => el("option", { value: n }, state.models.includes(n) ? n : n + " (not on this server)")));
  if (!names.length) sel.append(el("option", { value: "" }, "no models: pull one in Models"));
  sel.value = current;
}

function emptyHint() {
  const ws = state.ws;
  return el("div", { class: "empty-hint" },
    el("h2", {}, "Ask anything"),
    el("p", {}, "Answers stream from the model on this server and are kept in this browser, in the workspace “" + (ws ? ws.name : "") + "”."),
    el("p", { class: "muted" }, "Enter sends · Shift+Enter new line · Esc stops · Ctrl+K search"));
}

function metaText(m) {
  const meta = m.meta || {};
  const parts = [];
  if (meta.model) parts.push(meta.model);
  if (meta.eval_count) parts.push(meta.eval_count + " tokens");
  if (meta.tok_s) parts.push(Number(meta.tok_s).toFixed(1) + " tok/s");
  if (meta.stopped) parts.push("stopped");
  else if (meta.done_reason) parts.push(meta.done_reason);
  return parts.join(" · ");
}

function messageNode(conv, m, i) {
  const last = i === conv.messages.length - 1;
  const content = el("div", { class: "content" });
  const node = el("div", { class: "msg " + m.role, dataset: { index: String(i) } }, content);
  if (m.role === "user") {
    content.textContent = m.content;  // what a person typed is never markup
  } else {
    content.classList.add("md");
    node._view = new MarkdownView(content);
    node._view.render(m.content);
  }
  const meta = m.meta || {};
  if (meta.error) {
    node.classList.add("error");
    node.append(el("div", { class: "error-text" }, "Error: " + meta.error));
  }
  node.append(el("div", { class: "meta" }, metaText(m)));
  const busy = !!state.job;
  const act = (label, title, fn, cls = "") => el("button", { type: "button", class: "link " + cls, title, onclick: fn, disabled: busy && cls !== "copy-msg" }, label);
  const actions = el("div", { class: "actions" });
  if (m.role === "user") {
    actions.append(act("Edit", "Edit this message and send it again (later messages are dropped)", () => editMessage(i), "edit"));
  } else {
    actions.append(act("Copy", "Copy the answer (Markdown)", async () => toast((await copyText(m.content)) ? "Copied" : "Copy failed"), "copy-msg"));
    if (last) actions.append(act("Regenerate", "Ask again for this answer", () => regenerate(), "regen"));
  }
  node.append(actions);
  if (m.role === "assistant" && !(state.job && state.job.msg === m)) node.dataset.done = meta.error ? "error" : "true";
  return node;
}

function nodeFor(i) {
  return $(`#messages .msg[data-index="${i}"]`);
}

export function renderMessages() {
  const box = $("#messages");
  const conv = state.conv;
  if (!conv || !conv.messages.length) {
    box.replaceChildren(emptyHint());
    return;
  }
  box.replaceChildren(...conv.messages.map((m, i) => messageNode(conv, m, i)));
  if (state.job && state.job.conv === conv) {
    const n = nodeFor(conv.messages.indexOf(state.job.msg));
    if (n) n.classList.add("streaming");
  }
  box.scrollTop = box.scrollHeight;
}

function pinnedToBottom() {
  const box = $("#messages");
  return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
}

export function setBusy(busy) {
  $("#send").disabled = busy;
  $("#stop").disabled = !busy;
  for (const b of document.querySelectorAll("#messages .actions button:not(.copy-msg)")) b.disabled = busy;
}

export const isStreaming = () => !!state.job;

export function stopGeneration() {
  if (state.job) state.job.controller.abort();
}

function touch(conv) {
  conv.updated = Date.now();
  renderSidebar();
}

// Creates the conversation on the first message, then sends text.
export async function send(text) {
  if (state.job) return;
  let conv = state.conv;
  if (!conv) {
    conv = store.newConversation(state.ws.id, modelFor(null));
    conv.title = titleFrom(text);
    state.convs.push(conv);
    state.conv = conv;
    localStorage.setItem("qleap.conv." + state.ws.id, conv.id);
    $("#conv-title").textContent = conv.title;
  }
  conv.messages.push({ role: "user", content: text });
  touch(conv);
  await save(conv);
  renderMessages();
  await generate(conv);
}

async function generate(conv) {
  const ws = state.ws;
  const model = modelFor(conv);
  if (!model) {
    toast("No model on this server: pull one in the Models tab.", "error");
    return;
  }
  conv.model = model;
  const history = conv.messages
    .filter((m) => !(m.role === "assistant" && m.meta && m.meta.error))
    .map((m) => ({ role: m.role, content: m.content }));
  const messages = ws.system && ws.system.trim() ? [{ role: "system", content: ws.system }, ...history] : history;
  const msg = { role: "assistant", content: "", meta: { model } };
  conv.messages.push(msg);
  const index = conv.messages.length - 1;
  const job = { controller: new AbortController(), conv, msg };
  state.job = job;
  touch(conv);
  renderMessages();
  setBusy(true);
  let scheduled = false;
  // Paint at most once a frame; blocks already complete keep their nodes (MarkdownView).
  const paint = () => {
    scheduled = false;
    if (state.conv !== conv) return;
    const n = nodeFor(index);
    if (!n || !n._view) return;
    const pin = pinnedToBottom();
    n._view.render(msg.content);
    if (pin) $("#messages").scrollTop = $("#messages").scrollHeight;
  };
  const started = performance.now();
  try {
    const body = { model, messages, stream: true, options: requestOptions(ws) };
    for await (const part of ndjsonPost("/api/chat", body, job.controller.signal)) {
      if (part.error) throw new Error(part.error);
      if (part.message && part.message.content) {
        msg.content += part.message.content;
        if (!scheduled) { scheduled = true; requestAnimationFrame(paint); }
      }
      if (part.done) {
        const secs = (part.eval_duration || 0) / 1e9;
        msg.meta.eval_count = part.eval_count || 0;
        if (secs > 0) msg.meta.tok_s = part.eval_count / secs;
        msg.meta.done_reason = part.done_reason || "stop";
      }
    }
  } catch (e) {
    if (e.name === "AbortError") msg.meta.stopped = true;
    else msg.meta.error = e.message || String(e);
  } finally {
    msg.meta.wall_s = (performance.now() - started) / 1000;
    state.job = null;
    touch(conv);
    await save(conv);
    if (state.conv === conv) {
      const n = nodeFor(index);
      if (n) n.replaceWith(messageNode(conv, msg, index));
      if (pinnedToBottom()) $("#messages").scrollTop = $("#messages").scrollHeight;
    }
    setBusy(false);
  }
}

async function regenerate() {
  const conv = state.conv;
  if (!conv || state.job) return;
  let n = conv.messages.length;
  while (n > 0 && conv.messages[n - 1].role === "assistant") n--;
  if (n === 0) return;
  conv.messages = conv.messages.slice(0, n);
  await save(conv);
  renderMessages();
  await generate(conv);
}

function editMessage(i) {
  const conv = state.conv;
  if (!conv || state.job) return;
  const node = nodeFor(i);
  const ta = el("textarea", { class: "edit-box", rows: "3", "aria-label": "Edit message" });
  ta.value = conv.messages[i].content;
  const submit = () => resend(i, ta.value);
  ta.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); submit(); }
    if (ev.key === "Escape") { ev.preventDefault(); ev.stopPropagation(); renderMessages(); }
  });
  node.querySelector(".content").replaceWith(el("div", { class: "editing" }, ta,
    el("div", { class: "edit-actions" },
      el("button", { type: "button", class: "edit-send", onclick: submit }, "Send"),
      el("button", { type: "button", class: "secondary edit-cancel", onclick: () => renderMessages() }, "Cancel"))));
  node.querySelector(".actions").remove();
  ta.focus();
  ta.setSelectionRange(ta.value.length, ta.value.length);
}

async function resend(i, text) {
  const conv = state.conv;
  text = text.trim();
  if (!conv || !text || state.job) return;
  conv.messages = conv.messages.slice(0, i);
  conv.messages.push({ role: "user", content: text });
  touch(conv);
  await save(conv);
  renderMessages();
  await generate(conv);
}

// ---- export / import ----

export function exportWorkspace() {
  const data = store.exportData(state.ws, [...state.convs].sort((a, b) => a.created - b.created));
  const blob = new Blob([JSON.stringify(data, null, 2)], { type: "application/json" });
  const slug = state.ws.name.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "") || "workspace";
  const a = el("a", { href: URL.createObjectURL(blob), download: `qleap-${slug}-${new Date().toISOString().slice(0, 10)}.json` });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  toast(`Exported ${data.conversations.length} conversation${data.conversations.length === 1 ? "" : "s"}`);
}

export async function importFile(file) {
  let convs;
  try {
    convs = store.parseImport(await file.text(), state.ws.id);
  } catch (e) {
    toast("Import failed: " + e.message, "error");
    return;
  }
  for (const c of convs) {
    await save(c);
    state.convs.push(c);
  }
  renderSidebar();
  toast(`Imported ${convs.length} conversation${convs.length === 1 ? "" : "s"} into “${state.ws.name}”`);
}

// ---- search (the Ctrl+K palette) ----

export function searchConversations(q, limit = 8) {
  const needle = q.toLowerCase();
  const scored = [];
  for (const c of state.convs) {
    let score = 0;
    if (c.title.toLowerCase().includes(needle)) score = 2;
    else if (c.messages.some((m) => m.content.toLowerCase().includes(needle))) score = 1;
    if (score || !needle) scored.push([score, c]);
  }
  scored.sort((a, b) => b[0] - a[0] || b[1].updated - a[1].updated);
  return scored.slice(0, limit).map((x) => x[1]);
}

export function initChat() {
  $("#composer").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("#chat-input").value.trim();
    if (!text || state.job) return;
    $("#chat-input").value = "";
    send(text);
  });
  $("#chat-input").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); $("#composer").requestSubmit(); }
  });
  $("#stop").addEventListener("click", stopGeneration);
  $("#new-chat").addEventListener("click", newChat);
  $("#model-select").addEventListener("change", async () => {
    const v = $("#model-select").value;
    if (state.conv) {
      state.conv.model = v;
      await save(state.conv);
    } else {
      state.draftModel = v;
    }
  });
  $("#export").addEventListener("click", exportWorkspace);
  $("#import-file").addEventListener("change", async (ev) => {
    const f = ev.target.files && ev.target.files[0];
    ev.target.value = "";
    if (f) await importFile(f);
  });
  $("#sidebar-scrim").addEventListener("click", closeDrawer);
}
