// Conversations and workspaces, kept in the browser's IndexedDB (database "qleap"): nothing is sent
// to the server except the messages of a request. Object shapes:
//   workspace    {id, name, model, system, options: {temperature, top_p, top_k, num_predict,
//                 num_ctx, seed}, created, updated}
//   conversation {id, workspace, title, model, messages: [{role, content, meta?}], created, updated}
// Where IndexedDB is unavailable (some private modes), everything lives in memory and the UI says so.
import { newId } from "./util.js";

const kDb = "qleap";
const kVersion = 1;

let dbPromise = null;
let memory = null;  // fallback: {workspaces: Map, conversations: Map}

function openDb() {
  if (!dbPromise) {
    dbPromise = new Promise((resolve, reject) => {
      if (!window.indexedDB) { reject(new Error("IndexedDB is not available")); return; }
      const r = indexedDB.open(kDb, kVersion);
      r.onupgradeneeded = () => {
        const db = r.result;
        if (!db.objectStoreNames.contains("workspaces")) db.createObjectStore("workspaces", { keyPath: "id" });
        if (!db.objectStoreNames.contains("conversations")) {
          db.createObjectStore("conversations", { keyPath: "id" }).createIndex("workspace", "workspace");
        }
      };
      r.onsuccess = () => resolve(r.result);
      r.onerror = () => reject(r.error);
      r.onblocked = () => reject(new Error("IndexedDB is blocked by another tab"));
    }).catch((e) => {
      memory = { workspaces: new Map(), conversations: new Map() };
      throw e;
    });
  }
  return dbPromise;
}

function request(storeName, mode, fn) {
  return openDb().then((db) => new Promise((resolve, reject) => {
    const tx = db.transaction(storeName, mode);
    const r = fn(tx.objectStore(storeName));
    tx.oncomplete = () => resolve(r ? r.result : undefined);
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error || new Error("transaction aborted"));
  }));
}

// Structured clones of what the UI holds, so later edits in memory do not race the write.
const plain = (o) => JSON.parse(JSON.stringify(o));

export const persistent = () => memory === null;

export async function init() {
  try { await openDb(); return true; } catch (_) { return false; }
}

export async function allWorkspaces() {
  if (memory) return [...memory.workspaces.values()].map(plain);
  return request("workspaces", "readonly", (s) => s.getAll());
}

export async function putWorkspace(ws) {
  if (memory) { memory.workspaces.set(ws.id, plain(ws)); return; }
  await request("workspaces", "readwrite", (s) => s.put(plain(ws)));
}

export async function deleteWorkspace(id) {
  const convs = await conversationsOf(id);
  if (memory) {
    memory.workspaces.delete(id);
    for (const c of convs) memory.conversations.delete(c.id);
    return;
  }
  await openDb().then((db) => new Promise((resolve, reject) => {
    const tx = db.transaction(["workspaces", "conversations"], "readwrite");
    tx.objectStore("workspaces").delete(id);
    for (const c of convs) tx.objectStore("conversations").delete(c.id);
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
  }));
}

export async function conversationsOf(workspaceId) {
  if (memory) return [...memory.conversations.values()].filter((c) => c.workspace === workspaceId).map(plain);
  return request("conversations", "readonly", (s) => s.index("workspace").getAll(workspaceId));
}

export async function putConversation(c) {
  if (memory) { memory.conversations.set(c.id, plain(c)); return; }
  await request("conversations", "readwrite", (s) => s.put(plain(c)));
}

export async function deleteConversation(id) {
  if (memory) { memory.conversations.delete(id); return; }
  await request("conversations", "readwrite", (s) => s.delete(id));
}

export const kDefaultOptions = Object.freeze({
  temperature: 0.7, top_p: null, top_k: null, num_predict: null, num_ctx: null, seed: null,
});

export function newWorkspace(name) {
  const now = Date.now();
  return { id: newId(), name, model: "", system: "", options: { ...kDefaultOptions }, created: now, updated: now };
}

export function newConversation(workspaceId, model) {
  const now = Date.now();
  return { id: newId(), workspace: workspaceId, title: "New chat", model, messages: [], created: now, updated: now };
}

// ---- export / import (JSON files) ----

export const kExportFormat = "qleap-conversations";

export function exportData(ws, convs) {
  return {
    format: kExportFormat,
    version: 1,
    exported: new Date().toISOString(),
    workspace: { name: ws.name, model: ws.model, system: ws.system, options: ws.options },
    conversations: convs.map((c) => ({
      title: c.title, model: c.model, created: c.created, updated: c.updated,
      messages: c.messages.map((m) => (m.meta ? { role: m.role, content: m.content, meta: m.meta } : { role: m.role, content: m.content })),
    })),
  };
}

// Checks an imported file and returns fresh conversations for workspaceId; throws Error with a
// message for the user on anything unexpected. Accepts an export, a list of conversations, or one.
export function parseImport(text, workspaceId) {
  let data;
  try { data = JSON.parse(text); } catch (e) { throw new Error("not a JSON file: " + e.message); }
  let list;
  if (Array.isArray(data)) list = data;
  else if (data && Array.isArray(data.conversations)) list = data.conversations;
  else if (data && Array.isArray(data.messages)) list = [data];
  else throw new Error("no conversations in this file (expected a qleap export)");
  const out = [];
  list.forEach((c, i) => {
    if (!c || typeof c !== "object" || !Array.isArray(c.messages)) throw new Error(`conversation ${i + 1} has no messages list`);
    const messages = [];
    c.messages.forEach((m, j) => {
      if (!m || (m.role !== "user" && m.role !== "assistant") || typeof m.content !== "string") {
        throw new Error(`conversation ${i + 1}, message ${j + 1}: expected {role: "user"|"assistant", content: string}`);
      }
      const msg = { role: m.role, content: m.content };
      if (m.meta && typeof m.meta === "object") msg.meta = sanitizeMeta(m.meta);
      messages.push(msg);
    });
    const now = Date.now();
    out.push({
      id: newId(), workspace: workspaceId,
      title: typeof c.title === "string" && c.title.trim() ? c.title.slice(0, 200) : "Imported chat",
      model: typeof c.model === "string" ? c.model : "",
      messages,
      created: Number.isFinite(c.created) ? c.created : now,
      updated: Number.isFinite(c.updated) ? c.updated : now,
    });
  });
  return out;
}

function sanitizeMeta(meta) {
  const out = {};
  for (const k of ["model", "eval_count", "tok_s", "done_reason", "error", "stopped"]) {
    const v = meta[k];
    if (typeof v === "string" || typeof v === "number" || typeof v === "boolean") out[k] = v;
  }
  return out;
}
