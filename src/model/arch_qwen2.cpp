// qwen2: llama-style blocks with biases on the q/k/v projections and NeoX (rotate-half) RoPE.
#include "model/blocks.h"

namespace qleap {
namespace {

void load_layer(const GgufFile& f, const HParams& hp, int il, LayerWeights& w) {
  load_attention(f, hp, il, AttnOptions{Presence::kRequired, Presence::kAbsent}, w);
  load_swiglu_ffn(f, hp, il, w);
}

}  // namespace

extern const ArchDef kArchQwen2;
const ArchDef kArchQwen2 = {"qwen2", RopeStyle::kNeox, load_layer, pre_norm_layer};

}  // namespace qleap
