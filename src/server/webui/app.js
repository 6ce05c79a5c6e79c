// qleap web UI: chat (streamed over /api/chat), model management (Ollama API) and live monitoring
// (/api/qleap/status). Plain DOM code, no dependencies, so it works without internet access.
"use strict";

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(n < 10 ? 2 : 1)) + " " + u[i];
}

const num = (x, d = 1) => (x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(d));

async function api(path, body, method) {
  const init = body === undefined ? { method: method || "GET" } : {
    method: method || "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const r = await fetch(path, init);
  if (!r.ok) {
    let msg = r.status + " " + r.statusText;
    try { const j = await r.json(); if (j.error) msg = j.error; } catch (_) { /* not JSON */ }
    throw new Error(msg);
  }
  const text = await r.text();
  return text ? JSON.parse(text) : {};
}

// Reads an NDJSON response line by line as it arrives.
async function* ndjson(response) {
  const reader = response.body.getReader();
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

// ---- tabs ----

function showTab(name) {
  for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t.dataset.tab === name);
  for (const p of document.querySelectorAll(".panel")) p.classList.toggle("active", p.id === name);
  if (name === "models") refreshModels();
  if (name === "monitor") pollStatus();
}
for (const t of document.querySelectorAll(".tab")) t.addEventListener("click", () => showTab(t.dataset.tab));

// ---- chat ----

const chat = { history: [], controller: null };

function addMessage(role, text) {
  const content = el("div", { class: "content" }, text);
  const meta = el("div", { class: "meta" });
  const box = el("div", { class: "msg " + role }, content, meta);
  $("#messages").append(box);
  box.scrollIntoView({ block: "end" });
  return { box, content, meta };
}

function setBusy(busy) {
  $("#send").disabled = busy;
  $("#stop").disabled = !busy;
}

async function sendMessage(text) {
  const model = $("#model-select").value;
  if (!model) { addMessage("error", "No model selected: pull one in the Models tab."); return; }
  chat.history.push({ role: "user", content: text });
  addMessage("user", text);
  const out = addMessage("assistant", "");
  out.box.classList.add("streaming");
  const messages = [];
  const system = $("#system-prompt").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...chat.history);
  const options = {};
  const temperature = parseFloat($("#temperature").value);
  if (Number.isFinite(temperature)) options.temperature = temperature;
  const numPredict = parseInt($("#num-predict").value, 10);
  if (Number.isFinite(numPredict) && numPredict > 0) options.num_predict = numPredict;
  chat.controller = new AbortController();
  setBusy(true);
  let reply = "";
  try {
    const r = await fetch("/api/chat", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model, messages, stream: true, options }),
      signal: chat.controller.signal,
    });
    if (!r.ok) {
      let msg = r.status + " " + r.statusText;
      try { msg = (await r.json()).error || msg; } catch (_) { /* keep status */ }
      throw new Error(msg);
    }
    for await (const part of ndjson(r)) {
      if (part.error) throw new Error(part.error);
      if (part.message && part.message.content) {
        reply += part.message.content;
        out.content.textContent = reply;
        out.box.scrollIntoView({ block: "end" });
      }
      if (part.done) {
        const secs = (part.eval_duration || 0) / 1e9;
        const rate = secs > 0 ? (part.eval_count / secs).toFixed(1) + " tok/s" : "";
        out.meta.textContent = [model, part.eval_count + " tokens", rate, part.done_reason].filter(Boolean).join(" · ");
        out.box.dataset.done = "true";
      }
    }
  } catch (e) {
    if (e.name === "AbortError") {
      out.meta.textContent = "stopped";
      out.box.dataset.done = "true";
    } else {
      out.box.classList.add("error");
      out.content.textContent = reply + (reply ? "\n" : "") + "Error: " + e.message;
      out.box.dataset.done = "error";
    }
  } finally {
    out.box.classList.remove("streaming");
    chat.controller = null;
    setBusy(false);
  }
  if (reply) chat.history.push({ role: "assistant", content: reply });
}

$("#composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("#chat-input").value.trim();
  if (!text || chat.controller) return;
  $("#chat-input").value = "";
  sendMessage(text);
});
$("#chat-input").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); $("#composer").requestSubmit(); }
});
$("#stop").addEventListener("click", () => chat.controller && chat.controller.abort());
$("#new-chat").addEventListener("click", () => {
  if (chat.controller) chat.controller.abort();
  chat.history = [];
  $("#messages").replaceChildren();
});

// ---- models ----

let loadedNames = new Set();

async function refreshModelPicker() {
  const tags = await api("/api/tags");
  const sel = $("#model-select");
  const keep = sel.value || localStorage.getItem("qleap.model") || "";
  sel.replaceChildren(...tags.models.map((m) => el("option", { value: m.name }, m.name)));
  if (tags.models.some((m) => m.name === keep)) sel.value = keep;
  return tags.models;
}
$("#model-select").addEventListener("change", () => localStorage.setItem("qleap.model", $("#model-select").value));

async function refreshModels() {
  try {
    const [models, ps] = await Promise.all([refreshModelPicker(), api("/api/ps")]);
    loadedNames = new Set(ps.models.map((m) => m.name));
    const rows = models.map((m) => {
      const loaded = loadedNames.has(m.name);
      const d = m.details || {};
      const act = (label, fn, cls = "secondary") => el("button", { class: cls, onclick: fn }, label);
      return el("tr", { "data-model": m.name },
        el("td", {}, m.name), el("td", {}, bytes(m.size)), el("td", {}, d.parameter_size || "–"),
        el("td", {}, d.quantization_level || "–"), el("td", {}, d.family || "–"),
        el("td", {}, el("span", { class: "badge" + (loaded ? " on" : "") }, loaded ? "loaded" : "on disk")),
        el("td", {}, el("div", { class: "actions" },
          act("Show", () => showModel(m.name)),
          loaded ? act("Unload", () => setLoaded(m.name, false)) : act("Load", () => setLoaded(m.name, true)),
          act("Delete", () => deleteModel(m.name), "danger"))));
    });
    $("#model-table tbody").replaceChildren(...rows);
    if (!rows.length) {
      $("#model-table tbody").append(el("tr", {}, el("td", { colspan: "7", class: "muted" },
        "No models yet: pull one above, or put .gguf files in the server's model directory.")));
    }
  } catch (e) {
    $("#model-table tbody").replaceChildren(el("tr", {}, el("td", { colspan: "7", class: "muted" }, "Error: " + e.message)));
  }
}
$("#refresh-models").addEventListener("click", refreshModels);

async function showModel(name) {
  try {
    const info = await api("/api/show", { model: name });
    $("#details-title").textContent = name;
    const lines = [];
    for (const [k, v] of Object.entries(info.details || {})) lines.push(k + ": " + JSON.stringify(v));
    lines.push("capabilities: " + (info.capabilities || []).join(", "), "");
    for (const [k, v] of Object.entries(info.model_info || {})) {
      let s = JSON.stringify(v);
      if (s.length > 160) s = s.slice(0, 160) + "…";
      lines.push(k + " = " + s);
    }
    if (info.template) lines.push("", "chat template:", info.template);
    $("#details-body").textContent = lines.join("\n");
    $("#model-details").classList.remove("hidden");
  } catch (e) {
    alert("Cannot show " + name + ": " + e.message);
  }
}
$("#details-close").addEventListener("click", () => $("#model-details").classList.add("hidden"));

async function setLoaded(name, load) {
  try {
    // Ollama semantics: an empty prompt loads a model; keep_alive 0 unloads it.
    await api("/api/generate", load ? { model: name, prompt: "", stream: false } :
      { model: name, prompt: "", keep_alive: 0, stream: false });
  } catch (e) {
    alert((load ? "Load" : "Unload") + " failed: " + e.message);
  }
  refreshModels();
}

async function deleteModel(name) {
  if (!confirm("Delete " + name + " from the model store?")) return;
  try { await api("/api/delete", { model: name }, "DELETE"); } catch (e) { alert("Delete failed: " + e.message); }
  refreshModels();
}

$("#pull-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const name = $("#pull-name").value.trim();
  if (!name) return;
  $("#pull").disabled = true;
  $("#pull-status").classList.remove("hidden");
  $("#pull-bar").style.width = "0";
  $("#pull-text").textContent = "starting…";
  try {
    const r = await fetch("/api/pull", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model: name, stream: true }) });
    if (!r.ok) throw new Error((await r.json().catch(() => ({}))).error || r.statusText);
    for await (const p of ndjson(r)) {
      if (p.error) throw new Error(p.error);
      let text = p.status || "";
      if (p.total) {
        const pct = (100 * (p.completed || 0)) / p.total;
        $("#pull-bar").style.width = pct.toFixed(1) + "%";
        text += " " + bytes(p.completed || 0) + " / " + bytes(p.total) + " (" + pct.toFixed(0) + "%)";
      }
      $("#pull-text").textContent = text;
    }
    $("#pull-bar").style.width = "100%";
  } catch (e) {
    $("#pull-text").textContent = "Error: " + e.message;
  } finally {
    $("#pull").disabled = false;
    refreshModels();
  }
});

// ---- monitoring ----

const spark = [];
const kSparkPoints = 120;

function drawSpark() {
  const c = $("#spark");
  const w = (c.width = c.clientWidth || 900), h = c.height;
  const g = c.getContext("2d");
  g.clearRect(0, 0, w, h);
  const max = Math.max(1, ...spark);
  const style = getComputedStyle(document.documentElement);
  g.strokeStyle = style.getPropertyValue("--accent").trim() || "#2f6fde";
  g.lineWidth = 2;
  g.beginPath();
  spark.forEach((v, i) => {
    const x = (i / (kSparkPoints - 1)) * w, y = h - 8 - (v / max) * (h - 24);
    if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
  });
  g.stroke();
  g.fillStyle = style.getPropertyValue("--muted").trim() || "#888";
  g.font = "12px system-ui, sans-serif";
  g.fillText("generation tok/s (max " + max.toFixed(1) + ")", 8, 14);
}

function timeLeft(iso) {
  if (!iso) return "–";
  const t = Date.parse(iso);
  if (Number.isNaN(t) || t > Date.now() + 1e11) return "never";
  const s = Math.max(0, Math.round((t - Date.now()) / 1000));
  return s >= 60 ? Math.floor(s / 60) + " min " + (s % 60) + " s" : s + " s";
}

async function pollStatus() {
  let s;
  try {
    s = await api("/api/qleap/status");
  } catch (e) {
    $("#live-chip").textContent = "server unreachable";
    return;
  }
  $("#live-chip").textContent = num(s.gen_tok_per_s) + " tok/s · queue " + s.queue_depth;
  $("#m-gen").textContent = num(s.gen_tok_per_s);
  $("#m-prompt").textContent = num(s.prompt_tok_per_s);
  $("#m-queue").textContent = s.queue_depth;
  $("#m-requests").textContent = s.requests_total;
  $("#m-tokens").textContent = s.tokens_generated_total + " / " + s.tokens_prompt_total;
  $("#m-ram").textContent = bytes(s.ram_used_bytes);
  $("#m-ram-total").textContent = "of " + bytes(s.ram_total_bytes) + " (process)";
  $("#m-ram-bar").style.width = s.ram_total_bytes ? ((100 * s.ram_used_bytes) / s.ram_total_bytes).toFixed(1) + "%" : "0";
  $("#m-vram").textContent = s.vram_used_bytes ? bytes(s.vram_used_bytes) : "–";
  $("#m-experts").textContent = s.expert_cache_hit_rate === null || s.expert_cache_hit_rate === undefined
    ? "n/a" : (100 * s.expert_cache_hit_rate).toFixed(1) + " %";
  const rows = (s.models || []).map((m) => el("tr", { "data-model": m.name },
    el("td", {}, m.name), el("td", {}, m.kv_type),
    el("td", {}, bytes(m.kv_bytes_used) + " / " + bytes(m.kv_bytes_allocated)),
    el("td", {}, bytes(m.kv_bytes_per_token)),
    el("td", {}, m.kv_compression_vs_f16 ? num(m.kv_compression_vs_f16, 2) + "×" : "–"),
    el("td", {}, m.active_slots + " / " + m.parallel), el("td", {}, m.queue_depth ?? "–"),
    el("td", {}, bytes(m.size_ram)), el("td", {}, timeLeft(m.expires_at))));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "9", class: "muted" }, "No model loaded.")));
  $("#loaded-table tbody").replaceChildren(...rows);
  spark.push(Number(s.gen_tok_per_s) || 0);
  while (spark.length > kSparkPoints) spark.shift();
  if ($("#monitor").classList.contains("active")) drawSpark();
  $("#monitor-updated").textContent = "updated " + new Date().toLocaleTimeString();
}

setInterval(() => { if (!document.hidden) pollStatus(); }, 1500);
pollStatus();
refreshModelPicker().catch((e) => addMessage("error", "Cannot list models: " + e.message));
