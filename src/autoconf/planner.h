// The planner: from what the machine offers (HardwareInfo) and what the model needs (ModelInfo:
// tensor sizes per layer, KV bytes per token of each cache type) to a Plan for a target context:
// GPU layers, expert placement, KV cache type, threads and batch size, each with the reason it was
// chosen. make_plan() is a pure function so it can be tested on synthetic machines.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "autoconf/hardware.h"
#include "gguf/gguf.h"
#include "runtime/session.h"

namespace qleap {

struct ModelInfo {
  std::string name;
  std::string arch;
  uint64_t file_bytes = 0;
  int n_layers = 0;
  int n_ctx_train = 0;
  int n_embd = 0;
  int n_ff = 0;
  int n_vocab = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int n_experts = 0;       // 0 for dense models
  int n_experts_used = 0;  // experts each token is routed to
  // Per decoder layer: everything except routed experts (attention, norms, dense FFN, router,
  // shared experts), and the routed expert tensors (*_exps).
  std::vector<uint64_t> layer_bytes;
  std::vector<uint64_t> layer_expert_bytes;
  uint64_t token_embd_bytes = 0;
  uint64_t output_bytes = 0;  // output projection + final norm (the embedding table when tied)
  uint64_t other_bytes = 0;   // tensors outside the layers not counted above
  bool tied_embeddings = false;
  // KV cache bytes per token (all layers, K and V) by cache type, from the cache implementations.
  std::vector<std::pair<std::string, uint64_t>> kv_bytes_per_token;
  // Types that could not be sized for this model, with the reason (reported if one is asked for).
  std::vector<std::pair<std::string, std::string>> kv_unavailable;

  uint64_t weight_bytes() const;
  uint64_t expert_bytes() const;
  bool is_moe() const { return n_experts > 1; }
  // 0 when the type is unknown for this model.
  uint64_t kv_bytes(const std::string& type) const;
};

// KV types the planner considers by default, best quality first. tq4 is the last resort: it costs
// about half a percent of perplexity (docs/turboquant.md), so it is only chosen when nothing else
// fits. The planner counts per-token bytes only, not TurboQuant's fixed exact rows (~1.5 MiB for a 135M
// model, 8 MiB for an 8B one with the default window).
const std::vector<std::string>& planner_kv_types();

// Reads sizes from the file and asks each cache type for its bytes per token. Throws FormatError
// when the hyper-parameters are missing.
ModelInfo model_info_from_gguf(const GgufFile& f,
                               const std::vector<std::string>& kv_types = planner_kv_types());

constexpr int kGpuLayersAuto = -2;
constexpr int kGpuLayersAll = -1;

struct PlanRequest {
  int n_ctx = 0;                    // 0: min(n_ctx_train, 4096); may then be reduced to fit
  std::string kv_type;              // empty: chosen
  int gpu_layers = kGpuLayersAuto;  // kGpuLayersAuto, kGpuLayersAll or a count
  int threads = 0;                  // 0: chosen
  int batch = 0;                    // 0: chosen
  int parallel = 1;                 // sequences served at once (server slots), each with its own KV cache
};

struct Plan {
  int n_ctx = 0;
  std::string kv_type;
  int threads = 1;
  int batch = 512;
  int gpu_layers = 0;  // the last gpu_layers decoder layers run on the GPU
  int gpu_index = -1;  // CUDA device ordinal, -1: CPU only
  std::string gpu_name;
  bool output_on_gpu = false;
  bool experts_on_gpu = false;       // MoE: routed experts of offloaded layers on the GPU (else in RAM)
  uint64_t ram_bytes = 0;            // weights resident in RAM + CPU KV + CPU scratch + runtime
  uint64_t vram_bytes = 0;           // weights + KV + scratch on the GPU
  uint64_t ram_budget = 0;           // available RAM minus headroom
  uint64_t vram_budget = 0;          // free VRAM minus headroom
  uint64_t kv_bytes = 0;             // whole cache at n_ctx
  uint64_t cpu_bytes_per_token = 0;  // weight bytes a decode step streams from RAM
  double est_cpu_tok_s = 0;          // bandwidth ceiling of the CPU part (0: bandwidth unknown or all on GPU)
  bool fits = true;
  std::vector<std::string> reasons;
};

Plan make_plan(const HardwareInfo& hw, const ModelInfo& model, const PlanRequest& req);

// Human-readable plan with its reasons (for `qleap plan` and `run --verbose`).
std::string describe_plan(const Plan& p, const ModelInfo& m);
nlohmann::json to_json(const Plan& p);

// Session options of a plan (GPU layers are separate: see build_has_gpu_offload()).
SessionOptions to_session_options(const Plan& p);

// Whether Session in this build can run layers on a GPU (built with the CUDA backend); when not,
// run/serve print that the planned offload is unavailable.
bool build_has_gpu_offload();

}  // namespace qleap
