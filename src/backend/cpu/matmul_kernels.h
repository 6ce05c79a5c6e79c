// Internal interface between the matmul driver (matmul.cpp, baseline ISA) and the per-ISA kernel
// files (matmul_avx2.cpp, matmul_avx512.cpp). Weights stay in their GGUF format; activations are
// quantized once per call into the format the weight type's integer dot product expects.
#pragma once
#include <cstddef>
#include <cstdint>

#include "backend/cpu/matmul.h"
#include "quant/block_q8_k.h"
#include "quant/ggml_type.h"

namespace qleap::kern {

// Activation block for the 32-element weight formats: like GGUF's Q8_1 but with f32 scale and
// s = d * sum(qs), which folds the weight minimum (Q4_1, Q5_1) into one multiply per block.
struct BlockQ8A {
  float d;
  float s;
  int8_t qs[32];
};
static_assert(sizeof(BlockQ8A) == 40);

enum class ActFormat { kF32, kQ8A, kQ8K };

// Which activation format the kernels for weight type t consume.
ActFormat act_format(GgmlType t);
// Bytes of one activation row of n elements in format f.
size_t act_row_bytes(ActFormat f, int64_t n);

// Most matrices packed_matmul_many takes at once.
constexpr int kMaxPackedMany = 8;

struct IsaKernels {
  const char* name;
  // n is a multiple of 32 (Q8A) or 256 (Q8_K).
  void (*quantize_q8a)(const float* x, BlockQ8A* y, int64_t n);
  void (*quantize_q8k)(const float* x, BlockQ8_K* y, int64_t n);
  // y[t * ldy + r] = dot(weight row r, activation row t) for r in [r0, r1), t in [t0, t1).
  // Weight row r starts at w + r * row_bytes; activation row t at xa + t * xa_stride, in
  // act_format(type). Returns false when this ISA has no kernel for the type (an empty range,
  // r0 == r1, only asks that).
  bool (*gemm)(GgmlType type, const uint8_t* w, size_t row_bytes, int64_t cols, int64_t r0, int64_t r1,
               const uint8_t* xa, size_t xa_stride, int64_t t0, int64_t t1, float* y, int64_t ldy);
  // Decodes n elements of type t (false when not handled here).
  bool (*dequantize)(GgmlType t, const void* src, float* dst, int64_t n);
  // The whole product for a batch of activation rows on matrix units (AMX), threads included;
  // nullptr where the ISA has none, false when it does not handle w's type.
  bool (*tile_matmul)(const WeightView& w, const float* x, int64_t m, float* y, ThreadPool& pool);
  // Prefill through interleaved weight panels (matmul_panel_x86.h), threads included; false when
  // it does not handle w's type.
  bool (*panel_matmul)(const WeightView& w, const float* x, int64_t m, float* y, ThreadPool& pool);
  // The product over repacked weights (matmul_packed_x86.h), threads included; row_exact: every
  // activation row computed as if alone. False when the format has no packed kernels here.
  bool (*packed_matmul)(const PackedMatrix& w, const float* x, int64_t m, float* y, ThreadPool& pool,
                        bool row_exact);
  // Several repacked matrices with the same columns on one activation (ys[i] = x w[i]^T, each
  // bit-identical to packed_matmul alone): one quantization of x, one dispatch. False (nothing
  // done) when a format has no packed kernels here, the columns differ or n > kMaxPackedMany.
  bool (*packed_matmul_many)(const PackedMatrix* const* w, float* const* ys, int n, const float* x, int64_t m,
                             ThreadPool& pool, bool row_exact);
};

// The per-ISA kernel sets. Calling into one on a CPU without that ISA is illegal; go through
// active_kernels().
const IsaKernels* kernels_avx2();
const IsaKernels* kernels_avx512();
// AVX-512 VNNI kernels plus the AMX tile_matmul; needs AMX permission from the OS (cpu_features).
const IsaKernels* kernels_amx();
// Weight rows per interleaved panel of the active kernels (16 AVX-512, 8 AVX2).
int panel_rows();

// The kernels for the current isa_level(); nullptr at the scalar level. The AVX-512 set needs
// VNNI; AVX-512 CPUs without it get the AVX2 set.
const IsaKernels* active_kernels();

}  // namespace qleap::kern
