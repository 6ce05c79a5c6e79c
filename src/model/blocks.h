// Shared building blocks of the decoder architectures: tensor loading with shape checks, and the
// forward pieces (RMSNorm, attention with optional bias / per-head q-k norm, SwiGLU FFN). Each
// architecture file (arch_*.cpp) combines them into an ArchDef.
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include "backend/backend.h"
#include "core/thread_pool.h"
#include "kv/kv_cache.h"
#include "kv/recurrent_state.h"
#include "model/model.h"

namespace qleap {

// Activation buffers of one backend for up to n_batch rows, allocated once where that backend
// computes (none per token).
struct Activations {
  int n_batch = 0;
  ActBuffer x, xn, q, k, v, attn, tmp, gate, up;
  // Hybrid models (hp.delta.n_v_heads > 0): the gated attention's query + gate projection and gate, and
  // the DeltaNet mixer's projections and output.
  ActBuffer qg, qgate, dn_qkv, dn_z, dn_ba, dn_out;
  // MLA models (hp.is_mla(), model/mla_block.h): the query projection and its low-rank input, kv_a's
  // output, the heads' outputs, and per-head gather / result rows.
  ActBuffer mla_q, mla_qa, mla_kv, mla_o, mla_in, mla_out;
  void allocate(Backend& be, const HParams& hp, int n_batch);
};

// Host scratch of the MoE block (model/moe_block.cpp): router logits, routing, per-expert gathered
// activations. Only host backends run MoE layers.
struct MoeScratch {
  std::vector<float> logits, w, xg, g, u, y;
  std::vector<int32_t> ids, rows;
  std::vector<int> start, fill;
  void allocate(const HParams& hp, int n_batch);
};

class MoeObserver;
class MoeExecutor;

// One row of a multi-sequence batch (continuous batching): the row's own KV cache and position.
struct RowSeq {
  KvCache* kv;
  int pos;
  RecurrentState* state = nullptr;  // hybrid models: the row's DeltaNet state
};

// What a layer's forward pass needs besides its weights. Rows of a.x are the m tokens at positions
// pos0 .. pos0 + m - 1 of kv, or, when rows is non-null, row t is one token of its own sequence
// rows[t] (kv and pos0 unused): decode steps of several sequences then share one pass through the
// weights. Layer il's keys and values are layer il - kv_first of its cache (a cache holds the layers
// of one backend segment). be.set_positions() was called with the rows' positions.
struct LayerCtx {
  const HParams& hp;
  Backend& be;
  Activations& a;
  ThreadPool& pool;  // the host threads (host caches' attention, MoE)
  int m;
  KvCache* kv = nullptr;
  int pos0 = 0;
  const RowSeq* rows = nullptr;
  int kv_first = 0;
  MoeScratch* moe = nullptr;            // host backends
  MoeObserver* moe_observer = nullptr;  // sees MoE routing decisions (model/moe_block.h)
  MoeExecutor* moe_executor = nullptr;  // runs the routed experts instead of the CPU loop
  // Hybrid models: the DeltaNet state of the sequence (rows == nullptr; else each row's), holding the
  // recurrent layers of the segment as kv holds its attention layers.
  RecurrentState* state = nullptr;
};

struct ArchDef {
  const char* name;
  RopeStyle rope_style;
  // Loads and shape-checks the tensors of block il.
  void (*load_layer)(const GgufFile& f, const HParams& hp, int il, LayerWeights& w);
  // Updates ctx.a.x (m x n_embd) in place, with the ops of ctx.be.
  void (*forward_layer)(const LayerWeights& w, int il, const LayerCtx& ctx);
  // Reads what the architecture adds to the common hyper-parameters (HParams' architecture extras,
  // model-level tensors such as rope factors), after read_hparams; null: nothing.
  void (*read_hparams)(const GgufFile& f, HParams& hp) = nullptr;
};

// nullptr when the architecture is unknown.
const ArchDef* find_arch(std::string_view name);
std::string supported_architectures();  // "llama, qwen2, qwen3"

// ---- loading ----
// A 1-D tensor of n elements decoded to floats; empty when absent and !required. FormatError names
// the tensor on a missing tensor or wrong shape.
std::vector<float> load_vector(const GgufFile& f, const std::string& name, int64_t n, bool required);
// The factors of "<base>.scale" for the weight "<base>.weight" (WeightView::scale): one value, or n
// for a stack of n experts; all 1 when the file has none.
std::vector<float> load_weight_scales(const GgufFile& f, const std::string& weight_name, int64_t n);
// A 2-D tensor with ne0 = cols, ne1 = rows, with its scale (load_weight_scales).
WeightView load_matrix(const GgufFile& f, const std::string& name, int64_t cols, int64_t rows);
std::string blk_name(int il, std::string_view what);  // "blk.<il>.<what>"
// Rows [row0, row0 + rows) of w, a view into the same bytes.
WeightView rows_of(const WeightView& w, int64_t row0, int64_t rows);

enum class Presence { kAbsent, kOptional, kRequired };
struct AttnOptions {
  Presence qkv_bias = Presence::kOptional;
  Presence qk_norm = Presence::kAbsent;
};
// q, k and v projections of blk.il (q_rows, kv_rows, kv_rows outputs) with their biases: attn_q / attn_k /
// attn_v, or the fused attn_qkv (and attn_qkv.bias) that llama.cpp's loader prefers for every
// architecture when a file has it (its converter's --fuse-qkv), as row views of that one tensor.
void load_qkv(const GgufFile& f, int il, int64_t n_embd, int64_t q_rows, int64_t kv_rows, Presence bias,
              LayerWeights& w);
void load_attention(const GgufFile& f, const HParams& hp, int il, const AttnOptions& opt, LayerWeights& w);
// norm: the FFN's input norm (qwen35 / qwen3next files call it post_attention_norm).
void load_swiglu_ffn(const GgufFile& f, const HParams& hp, int il, LayerWeights& w,
                     std::string_view norm = "ffn_norm.weight");

// ---- forward (over the ops of ctx.be) ----
// Self-attention of the m normalized rows xn; out (m x n_embd) += the output projection (= when not
// accumulate). Layers with a sliding window (HParams::window) attend to it; the score scale is
// HParams::attn_scale when set.
// Stores the ctx.m tokens' keys and values on layer `layer` of the cache and attends their queries:
// as one span, in pieces of KvShape::chunk_tokens on a sliding-window layer (its ring holds the
// window and one piece), or row by row for a multi-sequence batch (ctx.rows). Rows of k and v are
// kv_stride floats apart, of q and out q_stride; dev_pos: the backend's device positions (or nullptr).
void store_and_attend(const LayerCtx& ctx, int layer, const float* k, const float* v, size_t kv_stride,
                      const float* q, float* out, size_t q_stride, float scale, const int32_t* dev_pos);

void attention_block(const LayerWeights& w, int il, const LayerCtx& ctx, const float* xn, float* out,
                     bool accumulate = true);
// SwiGLU feed-forward: out += W_down (silu(W_gate xn) * (W_up xn)).
void swiglu_ffn_block(const LayerWeights& w, const LayerCtx& ctx, const float* xn, float* out);
// GeGLU feed-forward (gemma): out (=, or += when accumulate) W_down (gelu_tanh(W_gate xn) * (W_up xn)).
void geglu_ffn_block(const LayerWeights& w, const LayerCtx& ctx, const float* xn, float* out,
                     bool accumulate);
// The pre-norm residual block: x += attn(norm(x)); x += ffn(norm(x)) (the MoE block when the layer
// has experts).
void pre_norm_layer(const LayerWeights& w, int il, const LayerCtx& ctx);
// Its second half, shared by layers whose attention differs (MLA, DeltaNet hybrids): x += ffn(norm(x)).
void pre_norm_ffn(const LayerWeights& w, int il, const LayerCtx& ctx);

// Every tensor of layer w that a forward on a device backend reads, for Backend::prepare. Throws
// Unsupported for layers the device backends cannot run (MoE: experts go through ExpertFlow instead; MLA
// attention).
void prepare_layer(const LayerWeights& w, Backend& be);

}  // namespace qleap
