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
#include "kv/kv_cache.h"
#include "model/model.h"
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
  // What one slot's cache holds besides its per-position bytes, by cache type: TurboQuant's exact sink
  // and recent-window rows, the rings of sliding-window layers (sized for a prefill chunk of 512), and
  // a hybrid model's recurrent state. Absent: 0.
  std::vector<std::pair<std::string, uint64_t>> kv_fixed_bytes;
  // One slot's DeltaNet recurrent state and its checkpoints (hybrid models; included in kv_fixed_bytes).
  uint64_t recurrent_state_bytes = 0;
  // Types that could not be sized for this model, with the reason (reported if one is asked for).
  std::vector<std::pair<std::string, std::string>> kv_unavailable;

  uint64_t weight_bytes() const;
  uint64_t expert_bytes() const;
  bool is_moe() const { return n_experts > 1; }
  // Whether the type was sized for this model (a model whose layers all hold sliding-window rings
  // has 0 bytes per token).
  bool has_kv(const std::string& type) const;
  // 0 when the type is unknown for this model.
  uint64_t kv_bytes(const std::string& type) const;
  uint64_t kv_fixed(const std::string& type) const;
  // One slot's cache of n_ctx positions: kv_bytes(type) * n_ctx + kv_fixed(type), which is the cache's
  // allocation (KvCache::allocated_bytes) for every n_ctx at least the largest sliding-window ring
  // (window + 511) and the exact rows (TurboQuant's sink + window); below that, an upper bound.
  uint64_t kv_cache_bytes(const std::string& type, int n_ctx) const;
};

// KV types the planner considers by default, best quality first: f16, then TurboQuant tq4 (3.8x
// smaller than f16) and tq3 (4.9x), which cost a little perplexity (docs/turboquant.md) and are only
// chosen when f16 does not fit the context and slots asked for. q8_0 is not a default: it is 1.9x
// smaller than f16 at best, slower than f16 and tq on the CPU, and no GPU cache holds it either.
const std::vector<std::string>& planner_kv_types();

// The shape the engine gives one slot's KV cache of this model on one backend (all attention layers,
// sliding-window rings sized for prefill chunks of n_batch tokens).
KvShape kv_shape_of(const HParams& hp, int n_ctx, int n_batch);

// Reads sizes from the file and asks each cache type for its bytes per token. Throws FormatError
// when the hyper-parameters are missing.
ModelInfo model_info_from_gguf(const GgufFile& f,
                               const std::vector<std::string>& kv_types = planner_kv_types());

// The KV sizes of model_info_from_gguf (kv_bytes_per_token, kv_fixed_bytes, kv_unavailable), from
// caches of these types built for the model's shape (kv_shape_of).
void add_kv_sizes(ModelInfo& m, const HParams& hp, const std::vector<std::string>& kv_types);

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

// CPU only (everything in RAM): the RAM a plan needs for n_ctx positions in each of `parallel` slots
// with this KV type and batch (weights, KV caches, activations, runtime: what make_plan counts).
uint64_t cpu_ram_bytes(const ModelInfo& m, const std::string& kv_type, int n_ctx, int batch,
                       int parallel = 1);
// The largest context whose cpu_ram_bytes fits in `budget` bytes (0: not even one position fits).
// Throws InvalidArgument when the type is not available for this model.
int max_context_in_budget(const ModelInfo& m, const std::string& kv_type, uint64_t budget, int batch,
                          int parallel = 1);

// Human-readable plan with its reasons (for `qleap plan` and `run --verbose`).
std::string describe_plan(const Plan& p, const ModelInfo& m);
nlohmann::json to_json(const Plan& p);

// Session options of a plan (GPU layers are separate: see build_has_gpu_offload()).
SessionOptions to_session_options(const Plan& p);

// Whether Session in this build can run layers on a GPU (built with the CUDA backend); when not,
// run/serve print that the planned offload is unavailable.
bool build_has_gpu_offload();

}  // namespace qleap
