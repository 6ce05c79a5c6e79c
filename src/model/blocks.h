// Shared building blocks of the decoder architectures: tensor loading with shape checks, and the
// forward pieces (RMSNorm, attention with optional bias / per-head q-k norm, SwiGLU FFN). Each
// architecture file (arch_*.cpp) combines them into an ArchDef.
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include "core/thread_pool.h"
#include "kv/kv_cache.h"
#include "model/model.h"

namespace qleap {

// Activation buffers for up to n_batch tokens, allocated once per session (none per token).
struct ForwardScratch {
  int n_batch = 0;
  std::vector<float> x, xn, q, k, v, attn, tmp, gate, up;
  // MoE layers only (model/moe_block.cpp): router logits, routing, per-expert gathered activations.
  std::vector<float> moe_logits, moe_w, moe_xg, moe_g, moe_u, moe_y;
  std::vector<int32_t> moe_ids, moe_rows;
  std::vector<int> moe_start, moe_fill;
  void allocate(const HParams& hp, int n_batch);
};

class MoeObserver;
class MoeExecutor;

// One row of a multi-sequence batch (continuous batching): the row's own KV cache and position.
struct RowSeq {
  KvCache* kv;
  int pos;
};

// What a layer's forward pass needs besides its weights. Rows of scratch.x are the m tokens at
// positions pos0 .. pos0 + m - 1 of kv, or, when rows is non-null, row t is one token of its own
// sequence rows[t] (kv and pos0 unused): decode steps of several sequences then share one pass
// through the weights.
struct LayerCtx {
  const HParams& hp;
  const RopeTable& rope;
  KvCache& kv;
  ThreadPool& pool;
  ForwardScratch& s;
  int pos0;
  int m;
  const RowSeq* rows = nullptr;
  MoeObserver* moe_observer = nullptr;  // sees MoE routing decisions (model/moe_block.h)
  MoeExecutor* moe_executor = nullptr;  // runs the routed experts instead of the CPU loop
};

struct ArchDef {
  const char* name;
  RopeStyle rope_style;
  // Loads and shape-checks the tensors of block il.
  void (*load_layer)(const GgufFile& f, const HParams& hp, int il, LayerWeights& w);
  // Updates ctx.s.x (m x n_embd) in place.
  void (*forward_layer)(const LayerWeights& w, int il, const LayerCtx& ctx);
};

// nullptr when the architecture is unknown.
const ArchDef* find_arch(std::string_view name);
std::string supported_architectures();  // "llama, qwen2, qwen3"

// ---- loading ----
// A 1-D tensor of n elements decoded to floats; empty when absent and !required. FormatError names
// the tensor on a missing tensor or wrong shape.
std::vector<float> load_vector(const GgufFile& f, const std::string& name, int64_t n, bool required);
// A 2-D tensor with ne0 = cols, ne1 = rows.
WeightView load_matrix(const GgufFile& f, const std::string& name, int64_t cols, int64_t rows);
std::string blk_name(int il, std::string_view what);  // "blk.<il>.<what>"

enum class Presence { kAbsent, kOptional, kRequired };
struct AttnOptions {
  Presence qkv_bias = Presence::kOptional;
  Presence qk_norm = Presence::kAbsent;
};
void load_attention(const GgufFile& f, const HParams& hp, int il, const AttnOptions& opt, LayerWeights& w);
void load_swiglu_ffn(const GgufFile& f, const HParams& hp, int il, LayerWeights& w);

// ---- forward ----
// m rows of n: y = rms_norm(x) * w (threaded over rows when large).
void rms_norm_rows(const float* x, const float* w, float* y, int m, int n, float eps, ThreadPool& pool);
// Self-attention of the m normalized rows xn; writes the output projection (m x n_embd) to out.
void attention_block(const LayerWeights& w, int il, const LayerCtx& ctx, const float* xn, float* out);
// SwiGLU feed-forward: out = W_down (silu(W_gate xn) * (W_up xn)).
void swiglu_ffn_block(const LayerWeights& w, const LayerCtx& ctx, const float* xn, float* out);
// The pre-norm residual block: x += attn(norm(x)); x += ffn(norm(x)) (the MoE block when the layer
// has experts).
void pre_norm_layer(const LayerWeights& w, int il, const LayerCtx& ctx);

}  // namespace qleap
