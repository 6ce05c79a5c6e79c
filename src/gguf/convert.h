// Hugging Face checkpoint (config.json + safetensors) -> GGUF, and GGUF -> GGUF re-quantization.
// Metadata keys and tensor names follow llama.cpp's converter so the files also load there.
#pragma once
#include <functional>
#include <string>

#include "quant/ggml_type.h"

namespace qleap {

using ProgressFn = std::function<void(const std::string& msg, double frac)>;

struct ConvertOptions {
  // Type of the 2-D weight matrices (rows whose length is not a multiple of the block size fall
  // back to F16). Norm weights, biases and rope factors always stay F32.
  GgmlType out_type = GgmlType::F16;
  ProgressFn progress;
  int n_threads = 0;  // 0: default_thread_count()
};

// Supported config.json model_type values: llama, mistral, mixtral (-> arch llama), qwen2, qwen3,
// qwen2_moe (-> qwen2moe), qwen3_moe (-> qwen3moe), olmoe, gemma2, gemma3_text (-> gemma3; multimodal
// gemma3 checkpoints are refused), phi3 (gguf/convert_arch.h). Per-expert HF tensors are stacked into
// 3-D ffn_*_exps tensors; MoE routers stay F32.
// Throws IoError / FormatError / Unsupported (unknown model_type, dtype or tensor; no encoder for
// out_type).
void convert_hf_to_gguf(const std::string& hf_dir, const std::string& out_path, const ConvertOptions& opt);

// Re-encodes every 2-D weight of `in` as `type` (decoding any source type dequantize_row knows),
// copies all other tensors and metadata, and updates general.file_type.
void requantize_gguf(const std::string& in, const std::string& out, GgmlType type,
                     const ProgressFn& progress = {}, int n_threads = 0);

// llama.cpp's general.file_type value for a model whose weights are mostly `t`.
uint32_t file_type_for(GgmlType t);

}  // namespace qleap
