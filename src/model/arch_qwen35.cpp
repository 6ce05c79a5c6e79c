// Qwen3.5 / Qwen3.6 (qwen35: dense SwiGLU; qwen35moe: MoE with a sigmoid-gated shared expert) and
// Qwen3-Next (qwen3next: MoE), the hybrid stacks of Gated DeltaNet and gated full attention
// (model/delta_net_block.h). NeoX RoPE over the rotary part of each head (partial_rotary_factor).
#include "model/delta_net_block.h"

namespace qleap {

extern const ArchDef kArchQwen35;
extern const ArchDef kArchQwen35Moe;
extern const ArchDef kArchQwen3Next;
const ArchDef kArchQwen35 = {"qwen35", RopeStyle::kNeox, load_hybrid_layer, hybrid_layer};
const ArchDef kArchQwen35Moe = {"qwen35moe", RopeStyle::kNeox, load_hybrid_layer, hybrid_layer};
const ArchDef kArchQwen3Next = {"qwen3next", RopeStyle::kNeox, load_hybrid_layer, hybrid_layer};

}  // namespace qleap
