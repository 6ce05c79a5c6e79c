// qwen2moe (Qwen1.5-MoE, Qwen2-57B-A14B): qwen2 attention (q/k/v biases, NeoX RoPE) with routed
// experts (top-k of a softmax, renormalized only when norm_topk_prob) plus a shared expert scaled by
// sigmoid(ffn_gate_inp_shexp . x).
#include "model/moe_block.h"

namespace qleap {
namespace {

void load_layer(const GgufFile& f, const HParams& hp, int il, LayerWeights& w) {
  load_attention(f, hp, il, AttnOptions{Presence::kRequired, Presence::kAbsent}, w);
  load_ffn_or_moe(f, hp, il, w);
}

}  // namespace

extern const ArchDef kArchQwen2Moe;
const ArchDef kArchQwen2Moe = {"qwen2moe", RopeStyle::kNeox, load_layer, pre_norm_layer};

}  // namespace qleap
