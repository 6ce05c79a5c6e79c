// Weight-times-activation products on the CPU: the hot path of both prefill and decode.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/thread_pool.h"
#include "quant/ggml_type.h"

namespace qleap {

struct PackedMatrix;  // backend/cpu/packed_weights.h

// A 2-D weight matrix in GGUF layout: `rows` rows of `cols` elements each (ne0 = cols), rows
// `row_bytes` apart, in any supported format. `packed`: the same matrix repacked for the x86
// kernels (PreparedWeights, owned by the model), used when it was made from `data`.
struct WeightView {
  GgmlType type = GgmlType::F32;
  const void* data = nullptr;
  int64_t cols = 0;
  int64_t rows = 0;
  size_t row_bytes = 0;
  const PackedMatrix* packed = nullptr;
};

// y[t * rows + r] = sum_c W[r, c] * x[t * cols + c] for t in [0, m): m activation rows of length
// cols in, m output rows of length rows out. Threads split the work.
void matmul(const WeightView& w, const float* x, int64_t m, float* y, ThreadPool& pool);

// While an instance lives on a thread, matmul() calls made from that thread compute every
// activation row with the single-row (decode) kernels: a row's result is then bit-identical to a
// call with that row alone, whatever other rows share the call (the multi-row tiles accumulate in
// another order). Used by the server's batched decode steps so that concurrent requests produce
// the same tokens as sequential ones; the weights are still read once per call.
class RowExactMatmul {
 public:
  RowExactMatmul();
  ~RowExactMatmul();
  RowExactMatmul(const RowExactMatmul&) = delete;
  RowExactMatmul& operator=(const RowExactMatmul&) = delete;

 private:
  bool prev_;
};

// One line on which kernels matmul() uses at the current ISA level (`qleap info`).
std::string matmul_path_summary();

// Reference: dequantize each weight row with the scalar decoder and accumulate in double.
void matmul_ref(const WeightView& w, const float* x, int64_t m, float* y);

// Copies row r of w, decoded to floats (embedding lookup).
void get_row(const WeightView& w, int64_t r, float* out);

}  // namespace qleap
