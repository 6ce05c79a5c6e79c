// Workspaces: named sets of conversations, each with its own default model, system prompt and
// sampling settings. Switching shows the workspace's conversations from memory (loaded from
// IndexedDB the first time), and reopens the conversation that was open there.
import * as store from "./store.js";
import { state, cache } from "./state.js";
import { openConversation } from "./chat.js";
import { $, el, toast } from "./util.js";

// Dialog field -> [option name, min, max, integer]
const kNumberFields = {
  "ws-temperature": ["temperature", 0, 2, false],
  "ws-top-p": ["top_p", 0, 1, false],
  "ws-top-k": ["top_k", 0, 100000, true],
  "ws-num-predict": ["num_predict", 1, 1 << 20, true],
  "ws-num-ctx": ["num_ctx", 16, 1 << 22, true],
  "ws-seed": ["seed", -(2 ** 31), 2 ** 32 - 1, true],
};

export async function initWorkspaces() {
  let list = [];
  try {
    list = await store.allWorkspaces();
  } catch (e) {
    toast("Cannot read saved workspaces: " + e.message, "error");
  }
  if (!list.length) {
    const ws = store.newWorkspace("Default");
    await store.putWorkspace(ws);
    list = [ws];
  }
  list.sort((a, b) => a.created - b.created);
  state.workspaces = list;
  const want = localStorage.getItem("qleap.workspace");
  await switchWorkspace((list.find((w) => w.id === want) || list[0]).id);

  $("#workspace-select").addEventListener("change", (ev) => switchWorkspace(ev.target.value));
  $("#ws-new").addEventListener("click", () => openDialog(true));
  $("#ws-settings").addEventListener("click", () => openDialog(false));
  $("#ws-form").addEventListener("submit", (ev) => { ev.preventDefault(); saveDialog(); });
  $("#ws-cancel").addEventListener("click", () => $("#ws-dialog").close());
  $("#ws-delete").addEventListener("click", deleteCurrent);
}

export async function switchWorkspace(id) {
  const ws = state.workspaces.find((w) => w.id === id);
  if (!ws) return;
  state.ws = ws;
  localStorage.setItem("qleap.workspace", id);
  if (!cache.get(id)) {
    try {
      cache.set(id, await store.conversationsOf(id));
    } catch (e) {
      cache.set(id, []);
      toast("Cannot read this workspace's conversations: " + e.message, "error");
    }
  }
  state.convs = cache.get(id);
  state.draftModel = "";
  renderWorkspaceSelect();
  const last = localStorage.getItem("qleap.conv." + id);
  openConversation(state.convs.find((c) => c.id === last) || null);
}

export function renderWorkspaceSelect() {
  const sel = $("#workspace-select");
  sel.replaceChildren(...state.workspaces.map((w) => el("option", { value: w.id }, w.name)));
  sel.value = state.ws.id;
  document.body.dataset.workspace = state.ws.name;
}

function openDialog(isNew) {
  const d = $("#ws-dialog");
  d.dataset.mode = isNew ? "new" : "edit";
  const ws = isNew ? store.newWorkspace("Workspace " + (state.workspaces.length + 1)) : state.ws;
  $("#ws-dialog-title").textContent = isNew ? "New workspace" : "Workspace settings";
  $("#ws-name").value = ws.name;
  const models = [...state.models];
  if (ws.model && !models.includes(ws.model)) models.unshift(ws.model);
  $("#ws-model").replaceChildren(el("option", { value: "" }, "first available"), ...models.map((n) => el("option", { value: n }, n)));
  $("#ws-model").value = ws.model || "";
  $("#ws-system").value = ws.system || "";
  for (const [id, [key]] of Object.entries(kNumberFields)) {
    const v = ws.options[key];
    $("#" + id).value = v === null || v === undefined ? "" : String(v);
  }
  $("#ws-delete").hidden = isNew || state.workspaces.length < 2;
  $("#ws-error").textContent = "";
  d.showModal();
  $("#ws-name").focus();
}

async function saveDialog() {
  const d = $("#ws-dialog");
  const isNew = d.dataset.mode === "new";
  const name = $("#ws-name").value.replace(/\s+/g, " ").trim();
  const err = (m) => { $("#ws-error").textContent = m; };
  if (!name) return err("A workspace needs a name.");
  if (state.workspaces.some((w) => w.name === name && (isNew || w !== state.ws))) return err(`There is already a workspace “${name}”.`);
  const options = {};
  for (const [id, [key, lo, hi, integer]] of Object.entries(kNumberFields)) {
    const raw = $("#" + id).value.trim();
    if (raw === "") { options[key] = null; continue; }
    const v = Number(raw);
    if (!Number.isFinite(v) || v < lo || v > hi || (integer && !Number.isInteger(v))) {
      return err(`${$("label[for=" + id + "]").textContent.trim()}: expected ${integer ? "a whole number" : "a number"} from ${lo} to ${hi}.`);
    }
    options[key] = v;
  }
  const ws = isNew ? store.newWorkspace(name) : state.ws;
  ws.name = name;
  ws.model = $("#ws-model").value;
  ws.system = $("#ws-system").value;
  ws.options = options;
  ws.updated = Date.now();
  try {
    await store.putWorkspace(ws);
  } catch (e) {
    return err("Could not save: " + e.message);
  }
  d.close();
  if (isNew) {
    state.workspaces.push(ws);
    cache.set(ws.id, []);
    await switchWorkspace(ws.id);
    toast(`Workspace “${name}” created`);
  } else {
    renderWorkspaceSelect();
    openConversation(state.conv);
  }
}

async function deleteCurrent() {
  if (state.workspaces.length < 2) return;
  const ws = state.ws;
  const n = (cache.get(ws.id) || []).length;
  if (!confirm(`Delete the workspace “${ws.name}” and its ${n} conversation${n === 1 ? "" : "s"}?`)) return;
  if (state.job && state.job.conv.workspace === ws.id) state.job.controller.abort();
  try {
    await store.deleteWorkspace(ws.id);
  } catch (e) {
    $("#ws-error").textContent = "Could not delete: " + e.message;
    return;
  }
  $("#ws-dialog").close();
  for (const c of cache.get(ws.id) || []) c.deleted = true;
  cache.delete(ws.id);
  localStorage.removeItem("qleap.conv." + ws.id);
  state.workspaces = state.workspaces.filter((w) => w !== ws);
  await switchWorkspace(state.workspaces[0].id);
}
