// qwen3: no projection biases; per-head RMSNorm of q and k (attn_q_norm / attn_k_norm, applied
// before RoPE); NeoX RoPE; head_dim may differ from n_embd / n_heads (attention.key_length).
#include "model/blocks.h"

namespace qleap {
namespace {

void load_layer(const GgufFile& f, const HParams& hp, int il, LayerWeights& w) {
  load_attention(f, hp, il, AttnOptions{Presence::kAbsent, Presence::kRequired}, w);
  load_swiglu_ffn(f, hp, il, w);
}

}  // namespace

extern const ArchDef kArchQwen3;
const ArchDef kArchQwen3 = {"qwen3", RopeStyle::kNeox, load_layer, pre_norm_layer};

}  // namespace qleap
