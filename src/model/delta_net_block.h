// The hybrid stack of Qwen3.5 / Qwen3.6 / Qwen3-Next (arch_qwen35.cpp): every full_attention_interval-th
// layer is gated full attention (the query projection also yields a per-channel output gate, q/k
// RMSNorm, partial NeoX RoPE), the others are Gated DeltaNet linear attention with a recurrent state per
// sequence (kv/recurrent_state.h) instead of a KV cache. FFN: SwiGLU (qwen35) or MoE with a
// sigmoid-gated shared expert (qwen35moe, qwen3next). Tensor and key names are llama.cpp's.
#pragma once
#include <string_view>

#include "model/blocks.h"

namespace qleap {

// qwen35, qwen35moe, qwen3next.
bool is_hybrid_arch(std::string_view arch);
// The DeltaNet hyper-parameters and layer pattern (ssm.*, full_attention_interval), and the MTP blocks
// (nextn_predict_layers) left out of the layer count. Throws FormatError / Unsupported.
void read_delta_net_params(const GgufFile& f, HParams& hp);

void load_hybrid_layer(const GgufFile& f, const HParams& hp, int il, LayerWeights& w);

// out += the DeltaNet mixer of the m normalized rows xn (ctx.state holds the sequence state).
void delta_net_block(const LayerWeights& w, int il, const LayerCtx& ctx, const float* xn, float* out);
// out += gated self-attention of xn: attn * sigmoid(gate) through the output projection.
void gated_attention_block(const LayerWeights& w, int il, const LayerCtx& ctx, const float* xn, float* out);
// x += mixer(norm(x)); x += ffn(post_attention_norm(x)).
void hybrid_layer(const LayerWeights& w, int il, const LayerCtx& ctx);

}  // namespace qleap
