// qleap web UI: entry point. Tabs, keyboard shortcuts, the Ctrl+K palette, and start-up. The parts:
// chat.js (conversations, streaming), workspaces.js, models.js (store, Hugging Face search, pull),
// monitor.js (live engine figures), markdown.js + syntax.js + math.js (rendering answers),
// store.js (IndexedDB). Plain ES modules served by qleap itself: nothing is loaded from elsewhere.
import * as store from "./store.js";
import { initChat, newChat, stopGeneration, isStreaming, searchConversations, openConversation, openDrawer, closeDrawer } from "./chat.js";
import { initWorkspaces, switchWorkspace } from "./workspaces.js";
import { initModels, refreshModels, refreshModelList, searchHub } from "./models.js";
import { startPolling, pollStatus, redrawMonitor, monitorHistory } from "./monitor.js";
import { renderMarkdown, MarkdownView, parseBlocks, safeUrl } from "./markdown.js";
import { renderTex } from "./math.js";
import { state } from "./state.js";
import { $, $$, el, toast } from "./util.js";

const kTabs = ["chat", "models", "monitor"];

export function showTab(name) {
  if (!kTabs.includes(name)) name = "chat";
  for (const t of $$(".tab")) {
    const on = t.dataset.tab === name;
    t.classList.toggle("active", on);
    t.setAttribute("aria-selected", on ? "true" : "false");
  }
  for (const p of $$(".panel")) p.classList.toggle("active", p.id === name);
  document.body.dataset.tab = name;
  if (location.hash.slice(1) !== name) history.replaceState(null, "", name === "chat" ? location.pathname : "#" + name);
  if (name === "models") refreshModels();
  if (name === "monitor") pollStatus().then(redrawMonitor);
}

// ---- Ctrl+K palette: conversations, workspaces, Hugging Face search, tabs ----

const palette = { items: [], sel: 0 };

function paletteOpen() { return !$("#palette").hidden; }

function openPalette() {
  $("#palette").hidden = false;
  $("#palette-input").value = "";
  renderPalette();
  $("#palette-input").focus();
}

function closePalette() {
  $("#palette").hidden = true;
}

function renderPalette() {
  const q = $("#palette-input").value.trim();
  const lq = q.toLowerCase();
  const items = [];
  for (const c of searchConversations(q, 7)) {
    items.push({ label: c.title, hint: "conversation", run: () => { showTab("chat"); openConversation(c); } });
  }
  for (const w of state.workspaces) {
    if (w !== state.ws && (!lq || w.name.toLowerCase().includes(lq))) {
      items.push({ label: "Workspace: " + w.name, hint: "switch", run: () => { showTab("chat"); switchWorkspace(w.id); } });
    }
  }
  if (q) items.push({ label: `Search Hugging Face for “${q}”`, hint: "models", run: () => { showTab("models"); searchHub(q); } });
  const actions = [
    ["New chat", "chat", () => { showTab("chat"); newChat(); }],
    ["Models", "tab", () => showTab("models")],
    ["Monitor", "tab", () => showTab("monitor")],
    ["Chat", "tab", () => showTab("chat")],
  ];
  for (const [label, hint, run] of actions) if (!lq || label.toLowerCase().includes(lq)) items.push({ label, hint, run });
  palette.items = items;
  palette.sel = 0;
  drawPalette();
}

function drawPalette() {
  $("#palette-results").replaceChildren(...palette.items.map((it, i) => el("li", {
    role: "option", "aria-selected": i === palette.sel ? "true" : "false", class: i === palette.sel ? "sel" : undefined,
    onmousedown: (ev) => { ev.preventDefault(); runPalette(i); },
  }, el("span", { class: "pl-label" }, it.label), el("span", { class: "pl-hint" }, it.hint))));
  const cur = $("#palette-results .sel");
  if (cur) cur.scrollIntoView({ block: "nearest" });
}

function runPalette(i) {
  const it = palette.items[i];
  closePalette();
  if (it) it.run();
}

function initPalette() {
  $("#palette-input").addEventListener("input", renderPalette);
  $("#palette-input").addEventListener("keydown", (ev) => {
    const n = palette.items.length;
    if (ev.key === "ArrowDown") { ev.preventDefault(); palette.sel = (palette.sel + 1) % Math.max(1, n); drawPalette(); }
    else if (ev.key === "ArrowUp") { ev.preventDefault(); palette.sel = (palette.sel - 1 + n) % Math.max(1, n); drawPalette(); }
    else if (ev.key === "Enter") { ev.preventDefault(); runPalette(palette.sel); }
  });
  $("#palette").addEventListener("mousedown", (ev) => { if (ev.target === $("#palette")) closePalette(); });
  $("#open-palette").addEventListener("click", openPalette);
}

// ---- keyboard ----

function initKeys() {
  document.addEventListener("keydown", (ev) => {
    if ((ev.ctrlKey || ev.metaKey) && !ev.altKey && ev.key.toLowerCase() === "k") {
      ev.preventDefault();
      if (paletteOpen()) closePalette(); else openPalette();
      return;
    }
    if (ev.key !== "Escape") return;
    if (paletteOpen()) { ev.preventDefault(); closePalette(); return; }
    if (document.querySelector("dialog[open]")) return;  // the dialog closes itself
    if (isStreaming()) { ev.preventDefault(); stopGeneration(); return; }
    if (document.body.classList.contains("drawer-open")) closeDrawer();
  });
}

async function main() {
  for (const t of $$(".tab")) t.addEventListener("click", () => showTab(t.dataset.tab));
  $("#sidebar-toggle").addEventListener("click", () => {
    showTab("chat");
    if (window.matchMedia("(max-width: 760px)").matches) {
      if (document.body.classList.contains("drawer-open")) closeDrawer(); else openDrawer();
    } else {
      document.body.classList.toggle("sidebar-collapsed");
    }
  });
  initPalette();
  initKeys();
  initChat();
  initModels();
  if (!(await store.init())) $("#storage-note").hidden = false;
  await initWorkspaces();
  try {
    await refreshModelList();
  } catch (e) {
    toast("Cannot list models: " + e.message, "error");
  }
  showTab(location.hash.slice(1) || "chat");
  window.addEventListener("hashchange", () => showTab(location.hash.slice(1) || "chat"));
  startPolling();
  document.body.dataset.ready = "true";
}

// For the browser tests (tests/py/test_webui.py), which check the renderer on known inputs.
window.qleapUI = { renderMarkdown, MarkdownView, parseBlocks, safeUrl, renderTex, state, monitorHistory };

main().catch((e) => {
  document.body.dataset.ready = "error";
  toast("The UI failed to start: " + e.message, "error");
});
