// The Monitor tab and the header's live figure, polled once a second from /api/qleap/status while
// the page is visible: server throughput and memory, and per loaded model its KV cache (type, bytes
// used against an f16 cache, tokens in each slot), prefill and decode speed, and for MoE models the
// expert cache's hit rate and prefetch recall, with charts of the last two minutes.
import { drawChart, Ring } from "./charts.js";
import { $, el, bytes, num, pct } from "./util.js";

const kPollMs = 1000;
const compact = (n) => (n >= 1e6 ? (n / 1e6).toFixed(1) + "M" : n >= 1e4 ? (n / 1e3).toFixed(1) + "k" : String(n));
const rate = (x) => (!x ? "–" : x >= 100 ? Math.round(x).toLocaleString("en-US") : num(x));
const server = { gen: new Ring() };
const perModel = new Map();  // name -> {card, refs, decode, prefill, hit, recall}
let timer = null;
let inFlight = false;

function timeLeft(iso) {
  if (!iso) return "–";
  const t = Date.parse(iso);
  if (Number.isNaN(t) || t > Date.now() + 1e11) return "never";
  const s = Math.max(0, Math.round((t - Date.now()) / 1000));
  return s >= 60 ? Math.floor(s / 60) + " min " + (s % 60) + " s" : s + " s";
}

function stat(label, key, unit) {
  const value = el("div", { class: "value", dataset: { k: key } }, "–");
  const u = el("div", { class: "unit", dataset: { k: key + "-unit" } }, unit);
  return [el("div", { class: "stat" }, el("div", { class: "label" }, label), value, u), value, u];
}

function modelCard(name) {
  const refs = {};
  const add = (label, key, unit) => { const [node, v, u] = stat(label, key, unit); refs[key] = v; refs[key + "-unit"] = u; return node; };
  refs.title = el("h3", {}, name);
  refs.badges = el("div", { class: "badges" });
  refs.kvBarF16 = el("div", { class: "fill f16" });
  refs.kvBarUsed = el("div", { class: "fill used" });
  refs.kvLabelUsed = el("span", { class: "kv-label" });
  refs.slots = el("div", { class: "slots" });
  refs.speedChart = el("canvas", { class: "chart", "aria-label": "decode and prefill tok/s, last 2 minutes" });
  refs.moeChart = el("canvas", { class: "chart moe", "aria-label": "expert-cache hit rate and prefetch recall, last 2 minutes" });
  refs.moeBox = el("div", { class: "moe-box" }, refs.moeChart);
  const card = el("div", { class: "model-card", dataset: { model: name } },
    el("div", { class: "card-head" }, refs.title, refs.badges),
    el("div", { class: "stats" },
      add("KV cache used", "kv-used", ""),
      add("Same tokens in f16", "kv-f16", ""),
      add("Prefill", "prefill", "tok/s, last prompt"),
      add("Decode", "decode", "tok/s, last 5 s of decoding"),
      add("Expert cache hit rate", "hit", ""),
      add("Prefetch recall", "recall", "")),
    el("div", { class: "kv-bars", title: "KV bytes in use against the same tokens in an f16 cache" },
      el("span", { class: "kv-label" }, "f16"), el("div", { class: "bar" }, refs.kvBarF16),
      refs.kvLabelUsed, el("div", { class: "bar" }, refs.kvBarUsed)),
    el("div", { class: "label" }, "Tokens in cache per slot"), refs.slots,
    refs.speedChart, refs.moeBox);
  return { card, refs, decode: new Ring(), prefill: new Ring(), hit: new Ring(), recall: new Ring() };
}

function updateModel(m) {
  let e = perModel.get(m.name);
  if (!e) {
    e = modelCard(m.name);
    perModel.set(m.name, e);
    $("#model-cards").append(e.card);
  }
  const r = e.refs;
  r.badges.replaceChildren(
    el("span", { class: "badge kv", dataset: { k: "kv-type" } }, "KV " + m.kv_type),
    el("span", { class: "badge" }, "ctx " + m.context_length),
    el("span", { class: "badge" }, m.active_slots + "/" + m.parallel + " slots busy"),
    el("span", { class: "badge" }, "queue " + (m.queue_depth ?? 0)),
    el("span", { class: "badge" }, bytes(m.size_ram) + " RAM"),
    el("span", { class: "badge muted" }, "unloads in " + timeLeft(m.expires_at)));
  const f16 = m.kv_bytes_used_f16 || 0;
  r["kv-used"].textContent = bytes(m.kv_bytes_used);
  r["kv-used-unit"].textContent = "of " + bytes(m.kv_bytes_allocated) + " allocated · " + bytes(m.kv_bytes_per_token) + "/token";
  r["kv-f16"].textContent = bytes(f16);
  r["kv-f16-unit"].textContent = m.kv_compression_vs_f16 ? num(m.kv_compression_vs_f16, 2) + "× smaller as " + m.kv_type : "";
  const ref = Math.max(f16, m.kv_bytes_used, 1);
  r.kvBarF16.style.width = ((100 * f16) / ref).toFixed(1) + "%";
  r.kvBarUsed.style.width = ((100 * m.kv_bytes_used) / ref).toFixed(1) + "%";
  r.kvLabelUsed.textContent = m.kv_type;
  r.prefill.textContent = rate(m.prefill_tok_per_s);
  r.decode.textContent = rate(m.decode_tok_per_s);
  const moe = m.expert_cache_hit_rate !== null && m.expert_cache_hit_rate !== undefined;
  r.hit.textContent = moe ? pct(m.expert_cache_hit_rate) : "n/a";
  r["hit-unit"].textContent = moe ? "routed experts computed from the cache" : "dense model, or no --expert-cache";
  const rec = m.expert_prefetch_recall;
  r.recall.textContent = rec === null || rec === undefined ? "n/a" : pct(rec);
  r["recall-unit"].textContent = rec === null || rec === undefined ? (moe ? "no prefetch predictions yet" : "MoE with prefetch only") : "prefetched experts the router then chose";
  // Slot rows are updated in place: nothing is rebuilt once a second.
  const ctx = m.context_length || 1;
  const slots = m.slots || [];
  while (r.slots.children.length > slots.length) r.slots.lastChild.remove();
  slots.forEach((s, i) => {
    let row = r.slots.children[i];
    if (!row) {
      row = el("div", { class: "slot", dataset: { slot: String(s.id) } },
        el("span", { class: "slot-id" }, "slot " + s.id), el("div", { class: "bar" }, el("div", { class: "fill" })),
        el("span", { class: "slot-tokens" }));
      r.slots.append(row);
    }
    row.classList.toggle("busy", !!s.busy);
    row.querySelector(".fill").style.width = Math.min(100, (100 * s.tokens) / ctx).toFixed(1) + "%";
    row.querySelector(".slot-tokens").textContent = s.tokens + " / " + ctx + (s.busy ? " · busy" : "");
  });
  // A gap in the chart while the model does not decode.
  const decoding = m.decode_idle_s !== null && m.decode_idle_s !== undefined && m.decode_idle_s < 1.5;
  e.decode.push(decoding ? m.decode_tok_per_s : null);
  e.prefill.push(m.prefill_tok_per_s || null);
  e.hit.push(moe ? 100 * m.expert_cache_hit_rate : null);
  e.recall.push(rec === null || rec === undefined ? null : 100 * rec);
  r.moeBox.hidden = !moe;
}

function drawAll() {
  if (!$("#monitor").classList.contains("active")) return;
  drawChart($("#spark"), [{ values: server.gen.values, color: "--accent", label: "generated tok/s (all models, 10 s window)" }]);
  for (const e of perModel.values()) {
    drawChart(e.refs.speedChart, [
      { values: e.decode.values, color: "--accent", label: "decode tok/s" },
      { values: e.prefill.values, color: "--chart2", label: "prefill tok/s (last prompt)" },
    ], { format: (v) => rate(v) });
    if (!e.refs.moeBox.hidden) {
      drawChart(e.refs.moeChart, [
        { values: e.hit.values, color: "--good", label: "hit rate %" },
        { values: e.recall.values, color: "--chart2", label: "prefetch recall %" },
      ], { max: 100 });
    }
  }
}

export async function pollStatus() {
  if (inFlight) return;
  inFlight = true;
  let s;
  try {
    const r = await fetch("/api/qleap/status");
    if (!r.ok) throw new Error("HTTP " + r.status);
    s = await r.json();
  } catch (e) {
    $("#live-chip").textContent = "server unreachable";
    $("#live-chip").classList.add("down");
    return;
  } finally {
    inFlight = false;
  }
  $("#live-chip").classList.remove("down");
  $("#live-chip").textContent = num(s.gen_tok_per_s) + " tok/s · queue " + s.queue_depth;
  $("#m-gen").textContent = num(s.gen_tok_per_s);
  $("#m-prompt").textContent = num(s.prompt_tok_per_s);
  $("#m-queue").textContent = s.queue_depth;
  $("#m-requests").textContent = s.requests_total;
  $("#m-tokens").textContent = compact(s.tokens_generated_total);
  $("#m-tokens").title = s.tokens_generated_total + " generated";
  $("#m-tokens-prompt").textContent = "generated · " + compact(s.tokens_prompt_total) + " prompt";
  $("#m-ram").textContent = bytes(s.ram_used_bytes);
  $("#m-ram-total").textContent = "of " + bytes(s.ram_total_bytes) + " (process)";
  $("#m-ram-bar").style.width = s.ram_total_bytes ? ((100 * s.ram_used_bytes) / s.ram_total_bytes).toFixed(1) + "%" : "0";
  $("#m-vram").textContent = s.vram_used_bytes ? bytes(s.vram_used_bytes) : "–";
  $("#m-experts").textContent = s.expert_cache_hit_rate === null || s.expert_cache_hit_rate === undefined ? "n/a" : pct(s.expert_cache_hit_rate);
  server.gen.push(Number(s.gen_tok_per_s) || 0);
  const seen = new Set();
  for (const m of s.models || []) {
    seen.add(m.name);
    updateModel(m);
  }
  for (const [name, e] of perModel) {
    if (!seen.has(name)) { e.card.remove(); perModel.delete(name); }
  }
  $("#no-models").hidden = perModel.size > 0;
  drawAll();
  $("#monitor-updated").textContent = "updated " + new Date().toLocaleTimeString();
}

export function startPolling() {
  const tick = async () => {
    if (!document.hidden) await pollStatus();
    timer = setTimeout(tick, kPollMs);
  };
  if (!timer) tick();
  window.addEventListener("resize", drawAll);
}

export { drawAll as redrawMonitor };

// The charted history of a loaded model (for the tests).
export function monitorHistory(name) {
  const e = perModel.get(name);
  return e ? { decode: e.decode.values, prefill: e.prefill.values, hit: e.hit.values, recall: e.recall.values } : null;
}
