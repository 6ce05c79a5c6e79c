// phi3 (Phi-3, Phi-3.5, Phi-4-mini): llama-style pre-norm blocks with fused projections as llama.cpp
// stores them, attn_qkv (q, k, v rows stacked) and ffn_up (gate rows, then up rows), used as row views
// (no copy); NeoX RoPE, partial on Phi-4-mini (rope.dimension_count); LongRoPE as two per-pair factor
// tensors (rope_factors_short / _long, the long set used when the context exceeds
// rope.scaling.original_context_length, as llama.cpp chooses) and rope.scaling.attn_factor on cos/sin;
// a sliding window on every layer when attention.sliding_window is set (Phi-3-mini: 2047).
#include <fmt/format.h>

#include "core/error.h"
#include "model/blocks.h"

namespace qleap {
namespace {

void read_phi3(const GgufFile& f, HParams& hp) {
  if (const GgufValue* w = f.find_arch("attention.sliding_window")) {
    hp.n_swa = int(w->as_int());
    if (hp.n_swa < 0) throw FormatError("bad attention.sliding_window");
    hp.swa_layers.assign(size_t(hp.n_layers), true);
  }
  const GgufTensor* lf = f.find_tensor("rope_factors_long.weight");
  const GgufTensor* sf = f.find_tensor("rope_factors_short.weight");
  if ((lf == nullptr) != (sf == nullptr))
    throw FormatError("phi3: rope_factors_long.weight and rope_factors_short.weight come as a pair");
  if (lf != nullptr) {
    const int half = hp.rope.n_rot / 2;
    hp.rope.freq_factors = load_vector(f, "rope_factors_short.weight", half, true);
    hp.rope.long_freq_factors = load_vector(f, "rope_factors_long.weight", half, true);
  }
}

void load_layer(const GgufFile& f, const HParams& hp, int il, LayerWeights& w) {
  load_attention(f, hp, il, AttnOptions{Presence::kAbsent, Presence::kAbsent}, w);  // attn_qkv as llama.cpp
  w.ffn_norm = load_vector(f, blk_name(il, "ffn_norm.weight"), hp.n_embd, true);
  if (f.find_tensor(blk_name(il, "ffn_gate.weight")) == nullptr) {
    const WeightView up = load_matrix(f, blk_name(il, "ffn_up.weight"), hp.n_embd, 2 * int64_t(hp.n_ff));
    w.w_gate = rows_of(up, 0, hp.n_ff);
    w.w_up = rows_of(up, hp.n_ff, hp.n_ff);
  } else {
    w.w_gate = load_matrix(f, blk_name(il, "ffn_gate.weight"), hp.n_embd, hp.n_ff);
    w.w_up = load_matrix(f, blk_name(il, "ffn_up.weight"), hp.n_embd, hp.n_ff);
  }
  w.w_down = load_matrix(f, blk_name(il, "ffn_down.weight"), hp.n_ff, hp.n_embd);
}

}  // namespace

extern const ArchDef kArchPhi3;
const ArchDef kArchPhi3 = {"phi3", RopeStyle::kNeox, load_layer, pre_norm_layer, read_phi3};

}  // namespace qleap
