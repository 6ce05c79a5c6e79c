// llama (also Mistral, SmolLM, TinyLlama): pre-norm blocks, SwiGLU, RoPE on adjacent pairs (GGUF
// converters permute q/k rows for this). Biases are loaded when a checkpoint has them.
#include "model/blocks.h"

namespace qleap {
namespace {

void load_layer(const GgufFile& f, const HParams& hp, int il, LayerWeights& w) {
  load_attention(f, hp, il, AttnOptions{Presence::kOptional, Presence::kAbsent}, w);
  load_swiglu_ffn(f, hp, il, w);
}

}  // namespace

extern const ArchDef kArchLlama;
const ArchDef kArchLlama = {"llama", RopeStyle::kNormal, load_layer, pre_norm_layer};

}  // namespace qleap
