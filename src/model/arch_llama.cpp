// llama (also Mistral, SmolLM, TinyLlama): pre-norm blocks, SwiGLU, RoPE on adjacent pairs (GGUF
// converters permute q/k rows for this). Biases are loaded when a checkpoint has them. Mixtral is
// llama with expert_count / ffn_*_exps tensors (top-k of a softmax, renormalized).
#include "model/moe_block.h"

namespace qleap {
namespace {

void load_layer(const GgufFile& f, const HParams& hp, int il, LayerWeights& w) {
  load_attention(f, hp, il, AttnOptions{Presence::kOptional, Presence::kAbsent}, w);
  load_ffn_or_moe(f, hp, il, w);  // Mixtral: expert tensors under arch llama
}

}  // namespace

extern const ArchDef kArchLlama;
const ArchDef kArchLlama = {"llama", RopeStyle::kNormal, load_layer, pre_norm_layer};

}  // namespace qleap
