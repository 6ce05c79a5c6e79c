// The architecture-specific parts of the Hugging Face -> GGUF conversion (gguf/convert.cpp) for
// gemma2, gemma3 (text) and phi3: their metadata beyond the common keys, tensor names, norm weights
// stored as 1 + w, and extra tensors (LongRoPE factors). Keys and names follow llama.cpp's converter.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "gguf/convert_hybrid.h"
#include "gguf/gguf_writer.h"

namespace qleap::convert_detail {

// The GGUF architecture of a config.json handled here ("gemma2", "gemma3", "phi3"), or "" for the
// others. Throws Unsupported for what these architectures cannot convert (a multimodal Gemma 3
// checkpoint, bidirectional attention, another activation).
std::string extra_arch(const nlohmann::json& config);

// The sizes the common reader found, for the extra metadata.
struct CommonSizes {
  int64_t n_layer = 0, n_embd = 0, n_head = 0, head_dim = 0, n_ctx = 0;
};

// Metadata beyond the common keys; may overwrite common ones (rope base and dimensions).
void write_extra_metadata(GgufWriter& w, const std::string& arch, const nlohmann::json& config,
                          const CommonSizes& s);

// The GGUF name of an HF block tensor ("self_attn.qkv_proj" -> "attn_qkv", ...) for these
// architectures; "" when the common table applies.
std::string extra_block_name(const std::string& arch, const std::string& what);

// Whether the GGUF tensor holds a norm weight that these models apply as (1 + w) (gemma), so the
// converter adds the 1, as llama.cpp's does.
bool norm_plus_one(const std::string& arch, const std::string& gguf_name);

// Model-level tensors the checkpoint does not hold (phi3's rope_factors_long / _short), F32.
std::vector<std::pair<std::string, std::vector<float>>> extra_tensors(const std::string& arch,
                                                                      const nlohmann::json& config,
                                                                      const CommonSizes& s);

// deepseek2 (deepseek_v2 / deepseek_v3 configs): the tensors that need more than a name, as llama.cpp's
// newer converter writes them: kv_b_proj split per head into attn_k_b (W_UK^T: rows h * kv_lora_rank + r
// of qk_nope values) and attn_v_b (W_UV: rows h * v_head_dim + j of kv_lora_rank values), stored 2-D
// (the bytes of llama.cpp's 3-D [cols, rows, heads]); e_score_correction_bias as exp_probs_b.bias; and
// with rope_interleave = false the rope rows of q and kv_a reordered from halves to adjacent pairs.
// Empty: the common mapping applies. Throws FormatError on a shape that does not fit the config.
std::vector<HybridTensor> mla_tensors(const nlohmann::json& config, const std::string& hf,
                                      const std::vector<int64_t>& shape);

}  // namespace qleap::convert_detail
