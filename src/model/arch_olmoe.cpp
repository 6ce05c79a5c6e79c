// olmoe (OLMoE-1B-7B): RMSNorm of the whole q and k projections (q_norm over n_heads * head_dim, k_norm
// over n_kv_heads * head_dim, before RoPE), NeoX RoPE, no biases, and a mixture-of-experts FFN
// (top-k of a softmax, renormalized only when norm_topk_prob).
#include "model/moe_block.h"

namespace qleap {
namespace {

void load_layer(const GgufFile& f, const HParams& hp, int il, LayerWeights& w) {
  load_attention(f, hp, il, AttnOptions{Presence::kAbsent, Presence::kAbsent}, w);
  w.q_norm = load_vector(f, blk_name(il, "attn_q_norm.weight"), hp.q_dim(), true);
  w.k_norm = load_vector(f, blk_name(il, "attn_k_norm.weight"), hp.kv_dim(), true);
  w.qk_norm_full = true;
  load_ffn_or_moe(f, hp, il, w);
}

}  // namespace

extern const ArchDef kArchOlmoe;
const ArchDef kArchOlmoe = {"olmoe", RopeStyle::kNeox, load_layer, pre_norm_layer};

}  // namespace qleap
