// The parts of the HF -> GGUF conversion (gguf/convert.cpp) specific to gpt-oss (model_type gpt_oss ->
// llama.cpp's "gpt-oss"): metadata (sliding window, YaRN truncation, the clamped SwiGLU's alpha and
// limit), and the tensors the common name mapping cannot express: the fused experts, which transformers
// stores as gate_up_proj [E, H, 2I] with gate and up in interleaved columns (x @ W) and down_proj
// [E, I, H], become ffn_gate_exps / ffn_up_exps [H, I, E] and ffn_down_exps [I, H, E] with their biases
// (ffn_*_exps.bias, [I or H, E]), and the attention sinks become attn_sinks.weight.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "gguf/convert_arch.h"
#include "gguf/convert_hybrid.h"
#include "gguf/gguf_writer.h"

namespace qleap::convert_detail {

// Throws Unsupported for a gpt_oss config this engine cannot run (a layer pattern other than
// alternating sliding / full attention from layer 0, another activation).
void check_gptoss_config(const nlohmann::json& config);
void write_gptoss_metadata(GgufWriter& w, const nlohmann::json& config);

// A GGUF tensor made from one checkpoint tensor: `stack` slices (experts) of rows x cols each (stack 0: a
// 2-D tensor; cols 0: a vector of rows values).
struct GptOssTensor {
  HybridTensor t;
  int64_t stack = 0;
};
// The tensors a gpt_oss checkpoint tensor becomes when the common mapping does not apply (empty: it
// does). shape: the checkpoint's. Throws FormatError on a shape that does not fit the config.
std::vector<GptOssTensor> gptoss_tensors(const std::string& hf, const std::vector<int64_t>& shape,
                                         int64_t n_expert);

}  // namespace qleap::convert_detail
