// The parts of the HF -> GGUF conversion (gguf/convert.cpp) specific to the hybrid Gated DeltaNet models:
// Qwen3.5 / Qwen3.6 (model_type qwen3_5, qwen3_5_moe and their *_text variants -> qwen35, qwen35moe) and
// Qwen3-Next (qwen3_next -> qwen3next), written the way llama.cpp's converter writes them so the files
// load in either: Gemma-style (1 + w) RMSNorm weights stored as w + 1 (not the DeltaNet's gated norm),
// A_log as a = -exp(A_log), dt_bias as ssm_dt.bias, the conv kernel as a [kernel, channels] tensor,
// qwen3next's fused in_proj_qkvz split into attn_qkv and attn_gate, and for qwen35 the value heads
// reordered from grouped to tiled (value head j * n_k + k was k * r + j). Only the text model is
// converted: the vision tower and the MTP block are left out.
#pragma once
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "gguf/gguf_writer.h"

namespace qleap {

struct HybridConfig {
  std::string arch;  // qwen35, qwen35moe, qwen3next
  int64_t conv_kernel = 0, n_k_heads = 0, n_v_heads = 0, head_k_dim = 0, head_v_dim = 0;
  int64_t full_attention_interval = 0;
  int64_t n_rot = 0;                    // rotary dimensions per head (head_dim * partial_rotary_factor)
  std::vector<int64_t> mrope_sections;  // qwen35: written as rope.dimension_sections
  bool vision = false;                  // the checkpoint has a vision tower (not converted)
  bool v_tiled() const { return arch != "qwen3next"; }
};

bool is_hybrid_model_type(const std::string& model_type);
// Reads the hybrid settings from the text config (config.json, or its text_config). Throws
// FormatError / Unsupported (a layer pattern that is not every n-th layer full attention).
HybridConfig read_hybrid_config(const nlohmann::json& text, const std::string& model_type, int64_t head_dim,
                                int64_t n_layers, bool vision);
void write_hybrid_hparams(GgufWriter& w, const HybridConfig& h);

// The checkpoint name with the multimodal prefix removed ("model.language_model.x" -> "model.x"), or ""
// for tensors that are not converted (the vision tower, MTP).
std::string hybrid_tensor_name(const std::string& hf);

// A GGUF tensor made from one checkpoint tensor: its rows x cols (cols 0: a vector of rows values) and
// the function that turns the checkpoint's floats (row-major) into it.
struct HybridTensor {
  std::string gname;
  int64_t rows = 0, cols = 0;
  bool keep_f32 = false;  // never quantized (conv kernel)
  std::function<std::vector<float>(const std::vector<float>&)> transform;
};
// The tensors a checkpoint tensor becomes when the hybrid models need more than the common name mapping
// (empty: none, use the common mapping). shape: the checkpoint's.
std::vector<HybridTensor> hybrid_tensors(const HybridConfig& h, const std::string& hf,
                                         const std::vector<int64_t>& shape);

}  // namespace qleap
