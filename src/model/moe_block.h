// Mixture-of-experts feed-forward block shared by the MoE architectures (qwen3moe, qwen2moe, olmoe,
// Mixtral as "llama" with expert tensors): router matmul, softmax, top-k (optionally renormalized),
// each selected expert's SwiGLU FFN over the tokens routed to it, weighted sum, plus an optional
// (sigmoid-gated) shared expert.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "model/blocks.h"

namespace qleap {

// Sees every routing decision of a forward pass (profiler, routing trace, expert-cache simulation).
// Called on the forward thread once per MoE layer per chunk; it must not keep the pointers.
class MoeObserver {
 public:
  virtual ~MoeObserver() = default;
  // m tokens at positions pos0.. of layer il; ids / weights are m x k (weights as applied, after
  // any renormalization), x is the residual stream entering the FFN (m x n_embd) and xn the FFN's
  // normalized input.
  virtual void on_routing(int il, int pos0, int m, int k, const int32_t* ids, const float* weights,
                          const float* x, const float* xn) = 0;
};

// Runs the routed experts of a MoE layer somewhere else than the plain CPU loop (ExpertFlow,
// moe/expert_flow.h: a cache of experts in fast memory). Set through LayerCtx::moe_executor; without
// one moe_ffn_block computes every expert on the CPU.
class MoeExecutor {
 public:
  virtual ~MoeExecutor() = default;
  // out (m x n_embd, overwritten) = sum over each token's k experts of weight * expert(xn) for
  // layer il; ids / wts are m x k. The shared expert is not included (moe_ffn_block adds it).
  virtual void run_experts(const MoeWeights& w, int il, const LayerCtx& ctx, const float* xn,
                           const int32_t* ids, const float* wts, float* out) = 0;
};

// Up to this many tokens per forward, experts run one (token, expert) pair per thread.
constexpr int kMoeDecodeTokens = 2;
// Whether moe_ffn_block computes m tokens' experts pair by pair (each (token, expert) pair alone,
// summed in pair order) rather than grouped by expert (summed in ascending expert order). An
// executor that wants the CPU path's exact floats uses the same grouping and order.
inline bool moe_pairwise(int m, int k, int n_threads) {
  return m <= kMoeDecodeTokens && m * k >= n_threads && n_threads > 1;
}

// What each routed expert computes between its gate / up projections and its down projection, the
// same for every place that runs experts (the CPU loop below, ExpertFlow's CPU misses and its tiers):
// silu(gate + gate_b) * (up + up_b), or gpt-oss's clamped SwiGLU when alpha > 0:
// g = min(gate + gate_b, limit), u = clamp(up + up_b, -limit, limit), out = (u + 1) g sigmoid(alpha g);
// then down + down_b. Biases are per expert and optional (MoeWeights::gate_b / up_b / down_b).
struct ExpertActivation {
  float alpha = 0;  // > 0: gpt-oss's clamped SwiGLU
  float limit = 0;
  bool clamped() const { return alpha > 0; }
};
ExpertActivation expert_activation_of(const HParams& hp);
// Expert e's bias slices (nf for gate / up, n_embd for down), or null when the experts have none.
const float* expert_gate_bias(const MoeWeights& w, int e, int nf);
const float* expert_up_bias(const MoeWeights& w, int e, int nf);
const float* expert_down_bias(const MoeWeights& w, int e, int n_embd);
// g (cnt rows of nf) = act(g + gate_b, u + up_b) in place; biases may be null (u is changed when biased).
void expert_glu(const ExpertActivation& a, const float* gate_b, const float* up_b, float* g, float* u, int nf,
                int cnt);
// y (cnt rows of n) += b; b may be null.
void add_rows_bias(float* y, const float* b, int n, int cnt);

// A 3-D tensor with ne0 = cols, ne1 = rows, ne2 = n (experts), as n 2-D views.
std::vector<WeightView> load_expert_matrices(const GgufFile& f, const std::string& name, int64_t cols,
                                             int64_t rows, int64_t n);
// The experts' gate and up matrices of blk.il: from ffn_gate_exps and ffn_up_exps, or from the fused
// ffn_gate_up_exps ([n_embd, 2 * n_ff, n]: per expert its gate rows, then its up rows) that llama.cpp's
// converter writes with --fuse-gate-up-exps.
void load_gate_up_experts(const GgufFile& f, int il, int64_t n_embd, int64_t n_ff, int64_t n, MoeWeights& m);
// Loads blk.il's FFN norm and either the dense SwiGLU FFN or, when blk.il.ffn_gate_inp exists, the
// router, the experts and any shared expert.
void load_ffn_or_moe(const GgufFile& f, const HParams& hp, int il, LayerWeights& w,
                     std::string_view norm = "ffn_norm.weight");

// Selects the top k of n router logits: probabilities by softmax over all n, the k largest (lower
// index first on ties), renormalized to sum 1 when `norm`. logits is overwritten.
void moe_route(float* logits, int n, int k, bool norm, int32_t* ids, float* weights);

// DeepSeek-style routing (HParams::routing_grouped): scores are the sigmoid (or softmax) of the logits;
// selection ranks scores + bias (bias may be null); with n_expert_group > 1 only the experts of the
// n_expert_group_used best groups compete, a group scored by its best two selection scores (sigmoid,
// transformers' DeepSeek-V3 router) or its best one (softmax, DeepSeek-V2's group_limited_greedy). The
// top k (lower index first on ties) get their scores (without the bias), renormalized when
// hp.expert_weights_norm, times hp.expert_weights_scale. logits is overwritten.
void moe_route_grouped(float* logits, int n, int k, const HParams& hp, const float* bias, int32_t* ids,
                       float* weights);

// out (m x n_embd) = sum over each token's k experts of weight * expert(xn) [+ shared expert].
void moe_ffn_block(const LayerWeights& w, int il, const LayerCtx& ctx, const float* xn, float* out);

}  // namespace qleap
