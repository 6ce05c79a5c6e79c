// A weight matrix as the model files hold it: the shared vocabulary of the loader, the backends
// (each maps a view to its own copy or kernel) and the MoE runtime.
#pragma once
#include <cstddef>
#include <cstdint>

#include "quant/ggml_type.h"

namespace qleap {

// Defined by the CPU backend (backend/cpu/packed_weights.h); declared here so a view can point at it
// without the tensor layer depending on the backend.
struct PackedMatrix;

// A 2-D weight matrix in GGUF layout: `rows` rows of `cols` elements each (ne0 = cols), rows
// `row_bytes` apart, in any supported format. `packed`: the same matrix repacked at load for the x86
// kernels (PreparedWeights, owned by the Model), used by the CPU backend when it was made from `data`;
// other backends read `data`.
struct WeightView {
  GgmlType type = GgmlType::F32;
  const void* data = nullptr;
  int64_t cols = 0;
  int64_t rows = 0;
  size_t row_bytes = 0;
  const PackedMatrix* packed = nullptr;
  // Every product with this weight is multiplied by scale: the per-tensor (or per-expert) factor that
  // llama.cpp's converter stores as "<name>.scale" beside NVFP4 weights from ModelOpt checkpoints
  // (their weight_scale_2); 1 for every other file.
  float scale = 1.0f;
};

}  // namespace qleap
