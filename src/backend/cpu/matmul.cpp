#include "backend/cpu/matmul.h"

#include <vector>

#include "quant/quant.h"

namespace qleap {

void matmul_ref(const WeightView& w, const float* x, int64_t m, float* y) {
  std::vector<float> row(size_t(w.cols));
  for (int64_t r = 0; r < w.rows; ++r) {
    dequantize_row_ref(w.type, static_cast<const uint8_t*>(w.data) + size_t(r) * w.row_bytes, row.data(), w.cols);
    for (int64_t t = 0; t < m; ++t) {
      double acc = 0;
      const float* xt = x + t * w.cols;
      for (int64_t c = 0; c < w.cols; ++c) acc += double(row[c]) * xt[c];
      y[t * w.rows + r] = float(acc);
    }
  }
}

// Placeholder until the quantized kernels land: decode each row once, dot with all activations.
void matmul(const WeightView& w, const float* x, int64_t m, float* y, ThreadPool& pool) {
  pool.parallel_for(w.rows, 16, [&](int64_t r0, int64_t r1, int) {
    std::vector<float> row(size_t(w.cols));
    for (int64_t r = r0; r < r1; ++r) {
      dequantize_row(w.type, static_cast<const uint8_t*>(w.data) + size_t(r) * w.row_bytes, row.data(), w.cols);
      for (int64_t t = 0; t < m; ++t) {
        float acc = 0;
        const float* xt = x + t * w.cols;
        for (int64_t c = 0; c < w.cols; ++c) acc += row[c] * xt[c];
        y[t * w.rows + r] = acc;
      }
    }
  });
}

void get_row(const WeightView& w, int64_t r, float* out) {
  dequantize_row(w.type, static_cast<const uint8_t*>(w.data) + size_t(r) * w.row_bytes, out, w.cols);
}

}  // namespace qleap
