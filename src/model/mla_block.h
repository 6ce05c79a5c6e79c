// Multi-head Latent Attention (DeepSeek-V2/V3, deepseek2 files) in its absorbed form. What the KV cache
// holds per position is one shared "head" of HParams::head_dim = rope_dim + kv_lora_rank values,
// [k_pe | c_kv]: the roped decoupled key and the normalized compressed latent. Each query head h is
// taken into that space, [q_pe | W_UK[h]^T q_nope] (W_UK[h] = LayerWeights::k_b[h]), so that its score
// against a position is q_pe . k_pe + q_nope . (W_UK[h] c_kv), the score of the expanded keys; the
// values are the keys (KvShape::values_are_keys: the float and block caches keep the latent once), of
// the attended latent the c_kv part is used, and W_UV[h] (v_b[h]) takes it to the head's output before
// the output projection. Attention is then MQA over the latent, and every
// cache type (f16, q8_0, TurboQuant) stores and attends the latent through the KvCache protocol.
//
// Host backends only: the per-head absorption runs on the CPU threads (prepare_layer refuses MLA layers
// on a device backend).
#pragma once
#include "model/blocks.h"

namespace qleap {

// The latent norms' epsilon: transformers builds q_a_layernorm and kv_a_layernorm with its RMSNorm's
// default (1e-6), not rms_norm_eps.
constexpr float kMlaNormEps = 1e-6f;

// Loads blk.il's MLA attention: attn_norm, attn_q (or attn_q_a, attn_q_a_norm, attn_q_b), attn_kv_a_mqa,
// attn_kv_a_norm, attn_k_b and attn_v_b (or a fused attn_kv_b, split here), attn_output.
void load_mla_attention(const GgufFile& f, const HParams& hp, int il, LayerWeights& w);

// out (m x n_embd) += the MLA attention of the m normalized rows xn (see the top of this file).
void mla_attention_block(const LayerWeights& w, int il, const LayerCtx& ctx, const float* xn, float* out);

}  // namespace qleap
