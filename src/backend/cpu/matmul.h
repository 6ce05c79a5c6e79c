// Weight-times-activation products on the CPU: the hot path of both prefill and decode.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/thread_pool.h"
#include "quant/ggml_type.h"
#include "tensor/weight_view.h"

namespace qleap {

// y[t * rows + r] = sum_c W[r, c] * x[t * cols + c] for t in [0, m): m activation rows of length
// cols in, m output rows of length rows out. Threads split the work.
void matmul(const WeightView& w, const float* x, int64_t m, float* y, ThreadPool& pool);

// One activation, several weights of the same columns: ys[i] = x W_i^T for i in [0, n), each
// bit-identical to matmul(*ws[i], x, m, ys[i], pool). Weights on their repacked copies share one
// quantization of x and one dispatch of the threads (decode of q, k, v or gate, up).
void matmul_many(const WeightView* const* ws, float* const* ys, int n, const float* x, int64_t m,
                 ThreadPool& pool);

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

// Decodes n elements (a multiple of the block size) of type t into floats with the SIMD decoders
// where this CPU has them, else quant/quant.h's reference decoder.
void dequantize_row(GgmlType t, const void* src, float* dst, int64_t n);

// Copies row r of w, decoded to floats (embedding lookup).
void get_row(const WeightView& w, int64_t r, float* out);

}  // namespace qleap
