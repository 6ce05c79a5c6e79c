// The Models tab: the server's models (show, load, unload, delete), search on the Hugging Face Hub
// through the server (/api/qleap/search: GGUF files, sizes, and whether each fits this machine
// according to qleap's planner), and pull with progress (/api/pull, NDJSON).
import { state } from "./state.js";
import { renderModelSelect } from "./chat.js";
import { $, el, api, bytes, ndjsonPost, toast } from "./util.js";

let installed = [];
let pulling = false;

// /api/tags: updates the model pickers; returns the models.
export async function refreshModelList() {
  const tags = await api("/api/tags");
  installed = tags.models || [];
  state.models = installed.map((m) => m.name);
  renderModelSelect();
  return installed;
}

export async function refreshModels() {
  try {
    const [models, ps] = await Promise.all([refreshModelList(), api("/api/ps")]);
    const loaded = new Set(ps.models.map((m) => m.name));
    const act = (label, fn, cls = "secondary") => el("button", { type: "button", class: cls, onclick: fn }, label);
    const rows = models.map((m) => {
      const on = loaded.has(m.name);
      const d = m.details || {};
      return el("tr", { dataset: { model: m.name } },
        el("td", { class: "name" }, m.name), el("td", {}, bytes(m.size)), el("td", {}, d.parameter_size || "–"),
        el("td", {}, d.quantization_level || "–"), el("td", {}, d.family || "–"),
        el("td", {}, el("span", { class: "badge" + (on ? " on" : "") }, on ? "loaded" : "on disk")),
        el("td", {}, el("div", { class: "row-actions" },
          act("Show", () => showModel(m.name)),
          on ? act("Unload", () => setLoaded(m.name, false)) : act("Load", () => setLoaded(m.name, true)),
          act("Delete", () => deleteModel(m.name), "danger"))));
    });
    if (!rows.length) {
      rows.push(el("tr", {}, el("td", { colspan: "7", class: "muted" },
        "No models yet: search and pull one below, or put .gguf files in the server's model directory.")));
    }
    $("#model-table tbody").replaceChildren(...rows);
    markInstalled();
  } catch (e) {
    $("#model-table tbody").replaceChildren(el("tr", {}, el("td", { colspan: "7", class: "muted" }, "Error: " + e.message)));
  }
}

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
    toast("Cannot show " + name + ": " + e.message, "error");
  }
}

async function setLoaded(name, load) {
  try {
    // Ollama semantics: an empty prompt loads a model; keep_alive 0 unloads it.
    await api("/api/generate", load ? { model: name, prompt: "", stream: false } : { model: name, prompt: "", keep_alive: 0, stream: false });
  } catch (e) {
    toast((load ? "Load" : "Unload") + " failed: " + e.message, "error");
  }
  refreshModels();
}

async function deleteModel(name) {
  if (!confirm("Delete " + name + " from the model store?")) return;
  try { await api("/api/delete", { model: name }, "DELETE"); } catch (e) { toast("Delete failed: " + e.message, "error"); }
  refreshModels();
}

// ---- pull ----

export async function pull(name, button) {
  if (pulling) { toast("A pull is already running", "error"); return false; }
  pulling = true;
  $("#pull").disabled = true;
  const label = button ? button.textContent : "";
  if (button) button.disabled = true;
  $("#pull-status").classList.remove("hidden");
  $("#pull-bar").style.width = "0";
  $("#pull-name-shown").textContent = name;
  $("#pull-text").textContent = "starting…";
  let ok = false;
  try {
    for await (const p of ndjsonPost("/api/pull", { model: name, stream: true })) {
      if (p.error) throw new Error(p.error);
      let text = p.status || "";
      if (p.total) {
        const pct = (100 * (p.completed || 0)) / p.total;
        $("#pull-bar").style.width = pct.toFixed(1) + "%";
        text += " " + bytes(p.completed || 0) + " / " + bytes(p.total) + " (" + pct.toFixed(0) + "%)";
        if (button) button.textContent = pct.toFixed(0) + " %";
      }
      $("#pull-text").textContent = text;
      if (p.status === "success") ok = true;
    }
    $("#pull-bar").style.width = "100%";
  } catch (e) {
    $("#pull-text").textContent = "Error: " + e.message;
  } finally {
    pulling = false;
    $("#pull").disabled = false;
    if (button) { button.textContent = label; button.disabled = false; }
    await refreshModels();
  }
  return ok;
}

// ---- Hugging Face search ----

function fitCell(f) {
  if (f.fits === true || f.fits === false) {
    const p = f.plan || {};
    const summary = `${p.n_ctx} ctx · ${p.kv_type} KV · ${bytes(p.ram_bytes)} RAM` + (p.gpu_layers ? ` · ${p.gpu_layers} layers on GPU (${bytes(p.vram_bytes)})` : "");
    const title = (p.exact ? "" : "estimated from another file's header, scaled by size\n") + (p.reasons || []).join("\n");
    return el("td", { class: "fit", title },
      el("span", { class: "badge " + (f.fits ? "fits" : "nofit") }, f.fits ? "fits" : "too large"),
      el("span", { class: "plan muted" }, f.fits ? summary : `needs ${bytes(p.ram_bytes)}, ${bytes(p.ram_budget)} available`));
  }
  return el("td", { class: "fit", title: f.fit_error || "" }, el("span", { class: "badge" }, "unknown"));
}

function markInstalled() {
  const names = new Set(installed.map((m) => m.name));
  for (const b of document.querySelectorAll("#hf-results button.pull-file")) {
    const have = names.has(b.dataset.storeName);
    b.textContent = have ? "Installed" : "Pull";
    b.disabled = have || !b.dataset.pull;
  }
}

function renderResults(r) {
  const box = $("#hf-results");
  const m = r.machine || {};
  const head = el("p", { class: "muted", id: "hf-summary" },
    `${r.models.length} GGUF repositor${r.models.length === 1 ? "y" : "ies"} for “${r.query}” · fit for this machine: ` +
    `${bytes(m.ram_available)} RAM free of ${bytes(m.ram_total)}` + (m.gpu ? `, GPU ${m.gpu}` : ", no GPU") + `, ${m.parallel} slot${m.parallel === 1 ? "" : "s"}`);
  const repos = r.models.map((repo) => {
    const facts = [];
    if (repo.downloads !== undefined) facts.push("↓ " + Number(repo.downloads).toLocaleString());
    if (repo.likes !== undefined) facts.push("♥ " + repo.likes);
    if (repo.arch) facts.push(repo.arch + (repo.arch_supported === false ? " (not supported by this build)" : ""));
    if (repo.experts) facts.push(`MoE ${repo.experts[0]}/${repo.experts[1]} experts`);
    const card = el("div", { class: "hf-repo", dataset: { repo: repo.repo } },
      el("div", { class: "hf-repo-head" }, el("strong", { class: "repo-name" }, repo.repo), el("span", { class: "muted" }, facts.join(" · "))));
    if (repo.error) card.append(el("p", { class: "error-text" }, repo.error));
    if (repo.fit_error) card.append(el("p", { class: "muted" }, repo.fit_error));
    if (repo.files && repo.files.length) {
      const rows = repo.files.map((f) => el("tr", { dataset: { file: f.name } },
        el("td", { class: "name" }, f.name, f.note ? el("div", { class: "muted" }, f.note) : null),
        el("td", {}, f.quant || "–"), el("td", { class: "size" }, bytes(f.size)), fitCell(f),
        el("td", {}, el("button", {
          type: "button", class: "pull-file", dataset: { pull: f.pull || "", storeName: f.store_name || "" },
          title: f.pull ? "qleap pull " + f.pull : f.note || "",
          onclick: (ev) => {
            const b = ev.currentTarget;
            if (f.fits === false && !confirm(`${f.name} (${bytes(f.size)}) does not fit this machine's memory by the planner: it would run very slowly, paging from disk. Pull it anyway?`)) return;
            pull(f.pull, b);
          },
        }, "Pull"))));
      card.append(el("div", { class: "table-wrap" }, el("table", { class: "hf-files" },
        el("thead", {}, el("tr", {}, el("th", {}, "File"), el("th", {}, "Quant"), el("th", {}, "Size"), el("th", {}, "This machine"), el("th", {}))),
        el("tbody", {}, rows))));
    }
    return card;
  });
  if (!repos.length) repos.push(el("p", { class: "muted" }, "No GGUF repository matches."));
  box.replaceChildren(head, ...repos);
  markInstalled();
}

export async function searchHub(q) {
  q = q.trim();
  if (!q) return;
  $("#hf-query").value = q;
  const box = $("#hf-results");
  box.replaceChildren(el("p", { class: "muted" }, `Searching the Hugging Face Hub for “${q}”… (reading each repository's file list and one GGUF header)`));
  $("#hf-search-btn").disabled = true;
  try {
    renderResults(await api("/api/qleap/search?q=" + encodeURIComponent(q)));
  } catch (e) {
    const offline = e.status === 502 || e.status === 504 || e.status === 503;
    box.replaceChildren(el("div", { class: "notice error", id: "hf-error" },
      el("strong", {}, offline ? "The Hugging Face Hub cannot be reached from the server. " : "Search failed. "),
      el("span", {}, e.message),
      offline ? el("p", { class: "muted" }, "Models already in the store still work. To add one without internet, copy its .gguf file to the server and pull it by path.") : null));
  } finally {
    $("#hf-search-btn").disabled = false;
  }
}

export function initModels() {
  $("#refresh-models").addEventListener("click", refreshModels);
  $("#details-close").addEventListener("click", () => $("#model-details").classList.add("hidden"));
  $("#pull-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const name = $("#pull-name").value.trim();
    if (name) pull(name, null);
  });
  $("#hf-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    searchHub($("#hf-query").value);
  });
}
