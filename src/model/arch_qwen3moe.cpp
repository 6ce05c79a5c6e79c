// qwen3moe (Qwen3-30B-A3B, Qwen3-235B-A22B): qwen3 attention (per-head q/k RMSNorm, no biases, NeoX
// RoPE) with a mixture-of-experts FFN: softmax over the experts, top-k, renormalized
// (norm_topk_prob). Layers without a router (mlp_only_layers) keep a dense FFN.
#include "model/moe_block.h"

namespace qleap {
namespace {

void load_layer(const GgufFile& f, const HParams& hp, int il, LayerWeights& w) {
  load_attention(f, hp, il, AttnOptions{Presence::kAbsent, Presence::kRequired}, w);
  load_ffn_or_moe(f, hp, il, w);
}

}  // namespace

extern const ArchDef kArchQwen3Moe;
const ArchDef kArchQwen3Moe = {"qwen3moe", RopeStyle::kNeox, load_layer, pre_norm_layer};

}  // namespace qleap
