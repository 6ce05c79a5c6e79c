#include "autoconf/planner.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <tuple>

#include "backend/cuda/cuda_api.h"
#include "core/error.h"
#include "kv/kv_cache.h"
#include "kv/recurrent_state.h"
#include "model/blocks.h"
#include "model/model.h"
#include "runtime/engine.h"

namespace qleap {

namespace {

constexpr uint64_t kMiB = uint64_t(1) << 20;
constexpr uint64_t kGiB = uint64_t(1) << 30;
// CUDA context, cuBLAS workspace and allocator slack; a measured CUDA context on recent drivers is
// 300-500 MiB, so this errs on the safe side.
constexpr uint64_t kGpuRuntimeBytes = 512 * kMiB;
// Tokenizer tables, sampler, thread stacks and the allocator: small next to any model.
constexpr uint64_t kCpuRuntimeBytes = 64 * kMiB;

std::string gib(uint64_t b) {
  if (b >= kGiB) return fmt::format("{:.2f} GiB", double(b) / double(kGiB));
  if (b >= kMiB) return fmt::format("{:.1f} MiB", double(b) / double(kMiB));
  if (b >= 1024) return fmt::format("{:.1f} KiB", double(b) / 1024.0);
  return fmt::format("{} B", b);
}

// "blk.12.attn_q.weight" -> 12, else -1.
int layer_of(const std::string& name) {
  if (name.rfind("blk.", 0) != 0) return -1;
  int n = -1;
  const char* b = name.data() + 4;
  const auto r = std::from_chars(b, name.data() + name.size(), n);
  return r.ec == std::errc() && r.ptr != b && *r.ptr == '.' ? n : -1;
}

// Activation buffers of one forward chunk of `batch` tokens (residual, norms, q/k/v, attention
// output, FFN intermediates) plus the logits row: a conservative estimate, reported as such.
uint64_t scratch_bytes(const ModelInfo& m, int batch) {
  const uint64_t ff = uint64_t(m.n_ff) * uint64_t(std::max(1, m.is_moe() ? m.n_experts_used : 1));
  const uint64_t per_token = 4 * (6 * uint64_t(m.n_embd) + 3 * ff + 2 * uint64_t(m.n_kv_heads) * m.head_dim);
  return uint64_t(batch) * per_token + 2 * 4 * uint64_t(m.n_vocab);
}

struct Layout {
  int gpu_layers = 0;
  bool output_on_gpu = false;
  bool experts_on_gpu = false;
  uint64_t vram = 0, ram = 0, cpu_bpt = 0;
};

struct Candidate {
  int n_ctx = 0;
  std::string kv;
  int kv_rank = 0;  // index in the preference list
  int kv_tier = 0;  // 0: near-lossless (f16, q8_0, f32), 1: lossy (TurboQuant)
  int batch = 0;
  Layout lay;
  bool fits = false;
};

class Sizer {
 public:
  // kv_total: the KV caches of all slots, spread evenly over the layers (the remainder on the last).
  // kv_type: the device holds only f16 caches (cuda::make_kv_cache); the other types of GPU layers
  // stay in host memory (Engine::make_cache), so their bytes count as RAM.
  Sizer(const ModelInfo& m, uint64_t kv_total, int batch, const std::string& kv_type)
      : m_(m),
        kv_layer_(kv_total / uint64_t(std::max(1, m.n_layers))),
        kv_rest_(kv_total % uint64_t(std::max(1, m.n_layers))),
        batch_(batch),
        kv_on_device_(kv_type == "f16") {}

  // k: the last k layers on the GPU.
  Layout layout(int k, bool experts_gpu) const {
    const int n = m_.n_layers;
    Layout l;
    l.gpu_layers = k;
    l.output_on_gpu = k > 0 && k == n;
    l.experts_on_gpu = m_.is_moe() && k > 0 && experts_gpu;
    const double frac = m_.is_moe() ? double(m_.n_experts_used) / double(m_.n_experts) : 1.0;
    l.ram = m_.token_embd_bytes + m_.other_bytes + scratch_bytes(m_, batch_) + kCpuRuntimeBytes;
    for (int i = 0; i < n; ++i) {
      const uint64_t dense = m_.layer_bytes[size_t(i)], exps = m_.layer_expert_bytes[size_t(i)];
      const bool gpu = i >= n - k;
      const uint64_t kv = kv_layer_ + (i == n - 1 ? kv_rest_ : 0);
      if (gpu) {
        l.vram += dense;
        (kv_on_device_ ? l.vram : l.ram) += kv;
        (l.experts_on_gpu ? l.vram : l.ram) += exps;
        if (!l.experts_on_gpu) l.cpu_bpt += uint64_t(double(exps) * frac);
      } else {
        l.ram += dense + exps + kv;
        l.cpu_bpt += dense + uint64_t(double(exps) * frac);
      }
    }
    if (l.output_on_gpu) {
      l.vram += m_.output_bytes;
    } else {
      // A tied output head reads the embedding table already counted in RAM.
      if (!m_.tied_embeddings) l.ram += m_.output_bytes;
      l.cpu_bpt += m_.output_bytes;
    }
    if (k > 0) l.vram += scratch_bytes(m_, batch_) + kGpuRuntimeBytes;
    return l;
  }

  // Most layers that fit in `budget`, with experts on the GPU when everything fits, else in RAM.
  Layout best_gpu_layout(uint64_t budget) const {
    const int n = m_.n_layers;
    if (m_.is_moe()) {
      Layout all = layout(n, true);
      if (all.vram <= budget) return all;
    }
    for (int k = n; k > 0; --k) {
      Layout l = layout(k, false);
      if (l.vram <= budget) return l;
    }
    return layout(0, false);
  }

 private:
  const ModelInfo& m_;
  uint64_t kv_layer_, kv_rest_;
  int batch_;
  bool kv_on_device_;
};

}  // namespace

uint64_t ModelInfo::weight_bytes() const {
  uint64_t s = token_embd_bytes + other_bytes + (tied_embeddings ? 0 : output_bytes);
  for (auto b : layer_bytes) s += b;
  return s + expert_bytes();
}

uint64_t ModelInfo::expert_bytes() const {
  uint64_t s = 0;
  for (auto b : layer_expert_bytes) s += b;
  return s;
}

uint64_t ModelInfo::kv_bytes(const std::string& type) const {
  for (const auto& [t, b] : kv_bytes_per_token) {
    if (t == type) return b;
  }
  return 0;
}

bool ModelInfo::has_kv(const std::string& type) const {
  for (const auto& [t, b] : kv_bytes_per_token) {
    if (t == type) return true;
  }
  return false;
}

uint64_t ModelInfo::kv_fixed(const std::string& type) const {
  for (const auto& [t, b] : kv_fixed_bytes) {
    if (t == type) return b;
  }
  return 0;
}

uint64_t ModelInfo::kv_cache_bytes(const std::string& type, int n_ctx) const {
  return kv_bytes(type) * uint64_t(std::max(0, n_ctx)) + kv_fixed(type);
}

const std::vector<std::string>& planner_kv_types() {
  static const std::vector<std::string> types = {"f16", "tq4", "tq3"};
  return types;
}

KvShape kv_shape_of(const HParams& hp, int n_ctx, int n_batch) {
  // As Engine builds one segment's cache (runtime/engine.cpp) when all layers are on one backend.
  KvShape s;
  s.n_layers = std::max(1, hp.kv_layers());
  s.model_layers = hp.kv_layers();
  s.n_ctx = n_ctx;
  s.n_heads = hp.n_heads;
  s.n_kv_heads = hp.n_kv_heads;
  s.head_dim = hp.head_dim;
  if (hp.n_swa > 0) {
    s.windows.assign(size_t(s.n_layers), 0);
    for (int il = 0; il < std::min(hp.n_layers, s.n_layers); ++il) s.windows[size_t(il)] = hp.window(il);
  }
  s.max_tokens = std::min(n_batch, n_ctx);
  s.softcap = hp.attn_softcap;
  s.values_are_keys = hp.is_mla();  // MLA's latent is cached once (every cache type keeps one copy)
  return s;
}

ModelInfo model_info_from_gguf(const GgufFile& f, const std::vector<std::string>& kv_types) {
  HParams hp = read_hparams(f);
  // The architecture's extras shape the caches too: sliding-window layers (rings), hybrid models'
  // recurrent layers (no cache).
  if (const ArchDef* arch = find_arch(f.architecture()); arch != nullptr && arch->read_hparams != nullptr)
    arch->read_hparams(f, hp);
  ModelInfo m;
  m.name = f.get_string("general.name", "");
  m.arch = f.architecture();
  m.file_bytes = f.file_size();
  m.n_layers = hp.n_layers;
  m.n_ctx_train = hp.n_ctx_train;
  m.n_embd = hp.n_embd;
  m.n_ff = hp.n_ff;
  m.n_vocab = hp.n_vocab;
  m.n_heads = hp.n_heads;
  m.n_kv_heads = hp.n_kv_heads;
  m.head_dim = hp.head_dim;
  if (const GgufValue* v = f.find_arch("expert_count")) m.n_experts = int(v->as_int());
  if (const GgufValue* v = f.find_arch("expert_used_count")) m.n_experts_used = int(v->as_int());
  if (const GgufValue* v = f.find_arch("expert_feed_forward_length")) m.n_ff = int(v->as_int());
  m.layer_bytes.assign(size_t(hp.n_layers), 0);
  m.layer_expert_bytes.assign(size_t(hp.n_layers), 0);
  m.tied_embeddings = f.find_tensor("output.weight") == nullptr;
  for (const auto& t : f.tensors()) {
    const int l = layer_of(t.name);
    if (l >= 0 && l < hp.n_layers) {
      // Routed experts are stacked as ffn_{gate,up,down}_exps; shared experts (_shexp) and the
      // router stay with the dense part.
      (t.name.find("_exps") != std::string::npos ? m.layer_expert_bytes : m.layer_bytes)[size_t(l)] +=
          t.nbytes;
    } else if (t.name == "token_embd.weight") {
      m.token_embd_bytes += t.nbytes;
    } else if (t.name == "output.weight" || t.name == "output_norm.weight") {
      m.output_bytes += t.nbytes;
    } else {
      m.other_bytes += t.nbytes;
    }
  }
  if (m.tied_embeddings) m.output_bytes += m.token_embd_bytes;
  add_kv_sizes(m, hp, kv_types);
  return m;
}

void add_kv_sizes(ModelInfo& m, const HParams& hp, const std::vector<std::string>& kv_types) {
  // Sized from a cache built at a context past every ring and exact-row count, where its allocation is
  // bytes_per_token * n_ctx + a constant (the pages are never touched, so this costs no memory).
  constexpr int kMaxBatch = 512;
  int probe = 4096;
  for (int il = 0; il < hp.n_layers; ++il) probe = std::max(probe, hp.window(il) + kMaxBatch);
  const KvShape shape = kv_shape_of(hp, probe, kMaxBatch);
  // Hybrid models' DeltaNet layers keep a recurrent state per slot instead (with the Engine's default
  // number of checkpoints): fixed bytes next to the KV cache, whatever its type.
  m.recurrent_state_bytes = 0;
  if (const int n_rec = hp.recurrent_layers_before(hp.n_layers); n_rec > 0) {
    const DeltaNetParams& d = hp.delta;
    const RecurrentShape rs{n_rec, d.conv_dim(), d.conv_kernel, d.n_v_heads, d.head_k_dim, d.head_v_dim};
    m.recurrent_state_bytes =
        uint64_t(rs.floats()) * sizeof(float) * uint64_t(1 + EngineOptions{}.state_checkpoints);
  }
  for (const auto& type : kv_types) {
    try {
      const KvStats st = make_kv_cache(type, shape)->stats();
      m.kv_bytes_per_token.emplace_back(type, st.bytes_per_token);
      m.kv_fixed_bytes.emplace_back(type, st.fixed_bytes + m.recurrent_state_bytes);
    } catch (const Error& e) {
      // A type this model's shape cannot use (e.g. head_dim limits) is simply not a candidate.
      m.kv_unavailable.emplace_back(type, e.what());
    }
  }
}

Plan make_plan(const HardwareInfo& hw, const ModelInfo& m, const PlanRequest& req) {
  if (m.n_layers <= 0 || m.layer_bytes.size() != size_t(m.n_layers) ||
      m.layer_expert_bytes.size() != size_t(m.n_layers)) {
    throw InvalidArgument("planner: model info has no layers");
  }
  Plan p;
  const int n = m.n_layers;

  // Budgets: keep 10% of RAM (at least 512 MiB) for the OS and other programs, and 5% of the GPU
  // (at least 256 MiB) for fragmentation and other processes.
  const uint64_t ram_headroom = std::max<uint64_t>(512 * kMiB, hw.ram_total / 10);
  p.ram_budget = hw.ram_available > ram_headroom ? hw.ram_available - ram_headroom : 0;
  const GpuInfo* gpu = hw.best_gpu();
  if (gpu) {
    const uint64_t free = gpu->vram_free ? gpu->vram_free : gpu->vram_total;
    const uint64_t headroom = std::max<uint64_t>(256 * kMiB, gpu->vram_total / 20);
    p.vram_budget = free > headroom ? free - headroom : 0;
  }

  // Candidates, searched from the preferred context down.
  std::vector<int> ctxs;
  const int default_ctx = default_context(m.n_ctx_train);
  if (req.n_ctx > 0) {
    ctxs.push_back(req.n_ctx);
  } else {
    for (int c = default_ctx; c >= 512; c /= 2) ctxs.push_back(c);
    if (ctxs.empty()) ctxs.push_back(default_ctx);
  }
  std::vector<std::string> kvs;
  if (!req.kv_type.empty()) {
    kvs.push_back(req.kv_type);
  } else {
    for (const auto& [t, b] : m.kv_bytes_per_token) {
      if (std::find(planner_kv_types().begin(), planner_kv_types().end(), t) != planner_kv_types().end()) {
        kvs.push_back(t);
      }
    }
  }
  if (kvs.empty()) throw InvalidArgument("planner: no KV cache type is available for this model");

  auto candidates_at = [&](int ctx) {
    std::vector<Candidate> out;
    std::vector<int> batches;
    if (req.batch > 0) {
      batches.push_back(req.batch);
    } else {
      for (int b : {512, 256, 128, 64}) {
        if (b <= std::max(64, ctx)) batches.push_back(b);
      }
    }
    for (size_t ki = 0; ki < kvs.size(); ++ki) {
      if (!m.has_kv(kvs[ki])) {
        std::string why;
        for (const auto& [t, reason] : m.kv_unavailable)
          if (t == kvs[ki]) why = ": " + reason;
        throw InvalidArgument(fmt::format("planner: KV cache type '{}' is not available{}", kvs[ki], why));
      }
      for (int b : batches) {
        Sizer sz(m, m.kv_cache_bytes(kvs[ki], ctx) * uint64_t(std::max(1, req.parallel)), b, kvs[ki]);
        Candidate c;
        c.n_ctx = ctx;
        c.kv = kvs[ki];
        c.kv_rank = int(ki);
        c.kv_tier = kvs[ki].rfind("tq", 0) == 0 || kvs[ki][0] == 'k' ? 1 : 0;
        c.batch = b;
        if (!gpu || req.gpu_layers == 0) {
          c.lay = sz.layout(0, false);
        } else if (req.gpu_layers == kGpuLayersAuto) {
          c.lay = sz.best_gpu_layout(p.vram_budget);
        } else {
          const int k = req.gpu_layers < 0 ? n : std::min(req.gpu_layers, n);
          c.lay = sz.layout(k, m.is_moe() && sz.layout(k, true).vram <= p.vram_budget);
        }
        c.fits = c.lay.ram <= p.ram_budget && (c.lay.gpu_layers == 0 || c.lay.vram <= p.vram_budget);
        out.push_back(c);
      }
    }
    return out;
  };
  // Near-lossless KV first; then as much on the GPU as possible; then the preferred KV type; then
  // the largest batch.
  auto better = [](const Candidate& a, const Candidate& b) {
    const int ga = a.lay.gpu_layers + (a.lay.experts_on_gpu ? 1 : 0);
    const int gb = b.lay.gpu_layers + (b.lay.experts_on_gpu ? 1 : 0);
    return std::make_tuple(a.kv_tier, -ga, a.kv_rank, -a.batch) <
           std::make_tuple(b.kv_tier, -gb, b.kv_rank, -b.batch);
  };

  Candidate chosen;
  bool found = false;
  for (int ctx : ctxs) {
    for (const auto& c : candidates_at(ctx)) {
      if (c.fits && (!found || better(c, chosen))) {
        chosen = c;
        found = true;
      }
    }
    if (found) break;
  }
  if (!found) {
    // Nothing fits: keep the first context and the candidate with the least RAM (the smallest KV
    // type: the closest to fitting), and say so.
    auto all = candidates_at(ctxs.front());
    chosen = all.front();
    for (const auto& c : all) {
      if (c.lay.ram < chosen.lay.ram) chosen = c;
    }
  }

  p.n_ctx = chosen.n_ctx;
  p.kv_type = chosen.kv;
  p.batch = chosen.batch;
  p.gpu_layers = chosen.lay.gpu_layers;
  p.output_on_gpu = chosen.lay.output_on_gpu;
  p.experts_on_gpu = chosen.lay.experts_on_gpu;
  p.ram_bytes = chosen.lay.ram;
  p.vram_bytes = chosen.lay.gpu_layers > 0 ? chosen.lay.vram : 0;
  p.kv_bytes = m.kv_cache_bytes(p.kv_type, p.n_ctx) * uint64_t(std::max(1, req.parallel));
  p.cpu_bytes_per_token = chosen.lay.cpu_bpt;
  p.fits = found;
  p.threads = req.threads > 0 ? req.threads : std::max(1, hw.physical_cores);
  if (p.gpu_layers > 0 && gpu) {
    p.gpu_index = gpu->index;
    p.gpu_name = gpu->name;
  }
  if (hw.mem_bw_gbps > 0 && p.cpu_bytes_per_token > 0 &&
      !(p.gpu_layers == n && p.experts_on_gpu == m.is_moe())) {
    p.est_cpu_tok_s = hw.mem_bw_gbps * 1e9 / double(p.cpu_bytes_per_token);
  }

  // Reasons, in the order a user would ask about them.
  auto& r = p.reasons;
  r.push_back(fmt::format("memory budget: {} RAM available - {} headroom = {}", gib(hw.ram_available),
                          gib(ram_headroom), gib(p.ram_budget)));
  if (!gpu) {
    bool any = false;
    for (const auto& g : hw.gpus) {
      r.push_back(fmt::format("GPU {} ({}) not usable: {}", g.name, g.vendor,
                              g.note.empty() ? "unsupported" : g.note));
      any = true;
    }
    if (!any) r.push_back("no supported GPU detected: everything runs on the CPU");
  } else if (req.gpu_layers == 0) {
    r.push_back(fmt::format("GPU {} present but --gpu-layers 0 was requested: CPU only", gpu->name));
  } else {
    r.push_back(fmt::format(
        "GPU {}: {} free - headroom = {} budget (VRAM needed includes {} for the CUDA context)", gpu->name,
        gib(gpu->vram_free ? gpu->vram_free : gpu->vram_total), gib(p.vram_budget), gib(kGpuRuntimeBytes)));
    if (p.gpu_layers == n) {
      r.push_back(
          fmt::format("all {} layers and the output head on the GPU ({} VRAM)", n, gib(p.vram_bytes)));
    } else if (p.gpu_layers > 0) {
      r.push_back(fmt::format("{} of {} layers on the GPU ({} VRAM): more do not fit in {}", p.gpu_layers, n,
                              gib(p.vram_bytes), gib(p.vram_budget)));
    } else {
      r.push_back(fmt::format("no layer fits in {} of VRAM: CPU only", gib(p.vram_budget)));
    }
    if (req.gpu_layers != kGpuLayersAuto && p.gpu_layers > 0 && chosen.lay.vram > p.vram_budget) {
      r.push_back(fmt::format("warning: the requested {} GPU layers need {} but the budget is {}",
                              p.gpu_layers, gib(chosen.lay.vram), gib(p.vram_budget)));
    }
  }
  if (m.is_moe()) {
    if (p.gpu_layers > 0 && !p.experts_on_gpu) {
      r.push_back(fmt::format(
          "experts in RAM: the {} of routed experts do not fit on the GPU next to attention and shared "
          "weights; each "
          "token reads only {} of {} experts per layer, so they are the cheapest part to leave on the CPU",
          gib(m.expert_bytes()), m.n_experts_used, m.n_experts));
    } else if (p.experts_on_gpu) {
      r.push_back(
          fmt::format("routed experts ({}) fit on the GPU with everything else", gib(m.expert_bytes())));
    } else {
      r.push_back(fmt::format(
          "MoE: {} of {} experts per token, so a decode step reads {} of {} expert bytes", m.n_experts_used,
          m.n_experts, gib(uint64_t(double(m.expert_bytes()) * m.n_experts_used / std::max(1, m.n_experts))),
          gib(m.expert_bytes())));
    }
  }
  {
    const int slots = std::max(1, req.parallel);
    const uint64_t fixed = m.kv_fixed(p.kv_type);
    std::string kv_line = fmt::format(
        "KV cache {}: {} per token x {} tokens{}{} = {}", p.kv_type, gib(m.kv_bytes(p.kv_type)), p.n_ctx,
        fixed > 0 ? fmt::format(" + {} fixed{}", gib(fixed),
                                m.recurrent_state_bytes > 0
                                    ? fmt::format(" (DeltaNet state {})", gib(m.recurrent_state_bytes))
                                    : "")
                  : "",
        slots > 1 ? fmt::format(", x {} slots", slots) : "", gib(p.kv_bytes));
    if (!req.kv_type.empty()) {
      kv_line += " (requested)";
    } else if (p.kv_type == kvs.front()) {
      kv_line += " (best quality, and it fits)";
    } else {
      // What the preferred type would have needed at the same context, and why it was not taken.
      const std::string& best = kvs.front();
      const uint64_t best_kv = m.kv_cache_bytes(best, p.n_ctx) * uint64_t(slots);
      Sizer sz(m, best_kv, p.batch, best);
      const Layout lay = p.gpu_layers > 0 ? sz.layout(p.gpu_layers, p.experts_on_gpu) : sz.layout(0, false);
      const bool ram_short = lay.ram > p.ram_budget;
      kv_line = fmt::format(
          "KV {} would need {} for {} x {} slot{} ({} of {} in all, budget {}); using {}: {}{}", best,
          gib(best_kv), p.n_ctx, slots, slots > 1 ? "s" : "",
          gib(ram_short || p.gpu_layers == 0 ? lay.ram : lay.vram),
          ram_short || p.gpu_layers == 0 ? "RAM" : "VRAM",
          gib(ram_short || p.gpu_layers == 0 ? p.ram_budget : p.vram_budget), p.kv_type, gib(p.kv_bytes),
          chosen.kv_tier == 1 ? " (TurboQuant: about 4-5x smaller than f16 for a little perplexity, "
                                "docs/turboquant.md)"
                              : "");
      if (!found) kv_line += " (nothing fits; this is the least memory)";
    }
    r.push_back(kv_line);
  }
  if (req.n_ctx <= 0) {
    if (p.n_ctx == default_ctx) {
      r.push_back(fmt::format("context {}: min(model's trained {}, 4096)", p.n_ctx, m.n_ctx_train));
    } else {
      r.push_back(fmt::format("context reduced to {} (from {}) to fit in memory", p.n_ctx, default_ctx));
    }
  }
  r.push_back(req.threads > 0 ? fmt::format("threads {} (requested)", p.threads)
                              : fmt::format("threads {}: one per physical core (decode is memory-bound; SMT "
                                            "siblings share a core's bandwidth)",
                                            p.threads));
  r.push_back(req.batch > 0 ? fmt::format("batch {} (requested)", p.batch)
                            : fmt::format("batch {}: prompt tokens per forward pass ({} of activations)",
                                          p.batch, gib(scratch_bytes(m, p.batch))));
  r.push_back(fmt::format("RAM needed: {} (weights resident in RAM, CPU-side KV, activations, runtime)",
                          gib(p.ram_bytes)));
  if (!p.fits) {
    if (p.ram_bytes > p.ram_budget) {
      r.push_back(
          fmt::format("does NOT fit: needs {} of RAM but the budget is {}; the weights are memory-mapped, so "
                      "it still runs, paging from disk, very slowly",
                      gib(p.ram_bytes), gib(p.ram_budget)));
    } else {
      r.push_back("does NOT fit in the GPU budget with the requested settings");
    }
  }
  if (p.est_cpu_tok_s > 0) {
    r.push_back(
        fmt::format("decode ceiling of the CPU part: {:.1f} GB/s / {} per token = {:.0f} tok/s (upper bound)",
                    hw.mem_bw_gbps, gib(p.cpu_bytes_per_token), p.est_cpu_tok_s));
  }
  return p;
}

std::string describe_plan(const Plan& p, const ModelInfo& m) {
  std::string s;
  s += fmt::format("model:       {} ({}, {} layers{}, {} of weights)\n", m.name.empty() ? "?" : m.name,
                   m.arch, m.n_layers,
                   m.is_moe() ? fmt::format(", MoE {}/{} experts", m.n_experts_used, m.n_experts) : "",
                   gib(m.weight_bytes()));
  s += fmt::format("plan:        ctx {}, KV {}, threads {}, batch {}, GPU layers {}{}\n", p.n_ctx, p.kv_type,
                   p.threads, p.batch, p.gpu_layers,
                   p.gpu_layers > 0 ? fmt::format(" on GPU {} ({})", p.gpu_index, p.gpu_name) : "");
  if (m.is_moe()) s += fmt::format("experts:     {}\n", p.experts_on_gpu ? "on the GPU" : "in RAM");
  s += fmt::format("memory:      {} RAM, {} VRAM, {} of it KV cache\n", gib(p.ram_bytes), gib(p.vram_bytes),
                   gib(p.kv_bytes));
  s += fmt::format("fits:        {}\n", p.fits ? "yes" : "NO");
  s += "why:\n";
  for (const auto& r : p.reasons) s += "  - " + r + "\n";
  return s;
}

nlohmann::json to_json(const Plan& p) {
  return {{"n_ctx", p.n_ctx},
          {"kv_type", p.kv_type},
          {"threads", p.threads},
          {"batch", p.batch},
          {"gpu_layers", p.gpu_layers},
          {"gpu_index", p.gpu_index},
          {"gpu_name", p.gpu_name},
          {"output_on_gpu", p.output_on_gpu},
          {"experts_on_gpu", p.experts_on_gpu},
          {"ram_bytes", p.ram_bytes},
          {"vram_bytes", p.vram_bytes},
          {"ram_budget", p.ram_budget},
          {"vram_budget", p.vram_budget},
          {"kv_bytes", p.kv_bytes},
          {"cpu_bytes_per_token", p.cpu_bytes_per_token},
          {"est_cpu_tok_s", p.est_cpu_tok_s},
          {"fits", p.fits},
          {"reasons", p.reasons}};
}

uint64_t cpu_ram_bytes(const ModelInfo& m, const std::string& kv_type, int n_ctx, int batch, int parallel) {
  if (!m.has_kv(kv_type)) {
    std::string why;
    for (const auto& [t, reason] : m.kv_unavailable)
      if (t == kv_type) why = ": " + reason;
    throw InvalidArgument(fmt::format("KV cache type '{}' is not available for this model{}", kv_type, why));
  }
  Sizer sz(m, m.kv_cache_bytes(kv_type, n_ctx) * uint64_t(std::max(1, parallel)), batch, kv_type);
  return sz.layout(0, false).ram;
}

int max_context_in_budget(const ModelInfo& m, const std::string& kv_type, uint64_t budget, int batch,
                          int parallel) {
  const uint64_t base = cpu_ram_bytes(m, kv_type, 0, batch, parallel);  // everything but the positions
  const uint64_t per_position = m.kv_bytes(kv_type) * uint64_t(std::max(1, parallel));
  if (budget <= base) return 0;
  // Every layer a fixed ring (sliding windows only): any context fits once the rest does.
  const uint64_t n = per_position == 0 ? uint64_t(1) << 30 : (budget - base) / per_position;
  return int(std::min<uint64_t>(n, uint64_t(1) << 30));
}

SessionOptions to_session_options(const Plan& p) {
  SessionOptions o;
  o.n_ctx = p.n_ctx;
  o.n_threads = p.threads;
  o.kv_type = p.kv_type;
  o.n_batch = p.batch;
  return o;
}

bool build_has_gpu_offload() {
  return cuda::compiled();
}

}  // namespace qleap
