#include "backend/cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/cpu_features.h"
#include "core/error.h"
#include "core/fp16.h"

namespace qleap {
namespace {

bool use_avx2() {
  return isa_level() >= IsaLevel::kAvx2;
}

}  // namespace

void rms_norm_ref(const float* x, const float* w, float* y, int64_t n, float eps) {
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += double(x[i]) * x[i];
  const float s = float(1.0 / std::sqrt(ss / double(n) + double(eps)));
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * s * (w ? w[i] : 1.0f);
}

void rms_norm(const float* x, const float* w, float* y, int64_t n, float eps) {
  if (use_avx2() && w != nullptr) {
    const float ss = ops_detail::sum_squares_avx2(x, n);
    const float s = 1.0f / std::sqrt(ss / float(n) + eps);
    ops_detail::scale_mul_avx2(x, w, s, y, n);
    return;
  }
  float ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
  const float s = 1.0f / std::sqrt(ss / float(n) + eps);
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * s * (w ? w[i] : 1.0f);
}

void softmax(float* x, int64_t n) {
  if (n <= 0) return;
  float mx = x[0];
  for (int64_t i = 1; i < n; ++i) mx = std::max(mx, x[i]);
  float sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - mx);
    sum += x[i];
  }
  const float inv = 1.0f / sum;
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

void silu_mul(float* g, const float* u, int64_t n) {
  if (use_avx2()) return ops_detail::silu_mul_avx2(g, u, n);
  for (int64_t i = 0; i < n; ++i) g[i] = silu(g[i]) * u[i];
}

void add_inplace(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void scale_inplace(float* y, float a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] *= a;
}

float exp_sub_sum(float* x, int64_t n, float m) {
  if (use_avx2()) return ops_detail::exp_sub_sum_avx2(x, n, m);
  float sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - m);
    sum += x[i];
  }
  return sum;
}

void fp32_to_fp16_row(const float* x, uint16_t* y, int64_t n) {
  if (use_avx2()) return ops_detail::fp32_to_fp16_row_avx2(x, y, n);
  for (int64_t i = 0; i < n; ++i) y[i] = fp32_to_fp16(x[i]);
}

void fp16_to_fp32_row(const uint16_t* x, float* y, int64_t n) {
  if (use_avx2()) return ops_detail::fp16_to_fp32_row_avx2(x, y, n);
  for (int64_t i = 0; i < n; ++i) y[i] = fp16_to_fp32(x[i]);
}

void dequantize_q8_0(const BlockQ8_0* x, float* y, int64_t n) {
  if (use_avx2()) return ops_detail::dequantize_q8_0_avx2(x, y, n);
  for (int64_t blk = 0; blk < n / 32; ++blk) {
    const float d = fp16_to_fp32(x[blk].d);
    for (int i = 0; i < 32; ++i) y[blk * 32 + i] = d * float(x[blk].qs[i]);
  }
}

float dot_f32(const float* a, const float* b, int64_t n) {
  if (use_avx2()) return ops_detail::dot_f32_avx2(a, b, n);
  float s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

float dot_f16(const uint16_t* a, const float* b, int64_t n) {
  if (use_avx2()) return ops_detail::dot_f16_avx2(a, b, n);
  float s = 0;
  for (int64_t i = 0; i < n; ++i) s += fp16_to_fp32(a[i]) * b[i];
  return s;
}

void axpy_f32(float a, const float* x, float* y, int64_t n) {
  if (use_avx2()) return ops_detail::axpy_f32_avx2(a, x, y, n);
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

void axpy_f16(float a, const uint16_t* x, float* y, int64_t n) {
  if (use_avx2()) return ops_detail::axpy_f16_avx2(a, x, y, n);
  for (int64_t i = 0; i < n; ++i) y[i] += a * fp16_to_fp32(x[i]);
}

void dot_f32_multi(const float* x, const float* const* q, int nq, int64_t n, float* out) {
  if (use_avx2() && n % 8 == 0) return ops_detail::dot_f32_multi_avx2(x, q, nq, n, out);
  for (int k = 0; k < nq; ++k) out[k] = dot_f32(x, q[k], n);
}

void dot_f16_multi(const uint16_t* x, const float* const* q, int nq, int64_t n, float* out) {
  if (use_avx2() && n % 8 == 0) return ops_detail::dot_f16_multi_avx2(x, q, nq, n, out);
  for (int k = 0; k < nq; ++k) out[k] = dot_f16(x, q[k], n);
}

void axpy_f32_multi(const float* p, const float* x, float* const* acc, int nq, int64_t n) {
  if (use_avx2() && n % 8 == 0) return ops_detail::axpy_f32_multi_avx2(p, x, acc, nq, n);
  for (int k = 0; k < nq; ++k) axpy_f32(p[k], x, acc[k], n);
}

void axpy_f16_multi(const float* p, const uint16_t* x, float* const* acc, int nq, int64_t n) {
  if (use_avx2() && n % 8 == 0) return ops_detail::axpy_f16_multi_avx2(p, x, acc, nq, n);
  for (int k = 0; k < nq; ++k) axpy_f16(p[k], x, acc[k], n);
}

void quantize_q8_0(const float* x, BlockQ8_0* out, int64_t n) {
  for (int64_t b = 0; b < n / 32; ++b) {
    const float* xb = x + b * 32;
    float amax = 0;
    for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(xb[i]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    out[b].d = fp32_to_fp16(d);
    for (int i = 0; i < 32; ++i) out[b].qs[i] = int8_t(std::lround(xb[i] * id));
  }
}

float dot_q8_0(const BlockQ8_0* a, const float* b, int64_t n) {
  if (use_avx2()) return ops_detail::dot_q8_0_avx2(a, b, n);
  float s = 0;
  for (int64_t blk = 0; blk < n / 32; ++blk) {
    float sb = 0;
    for (int i = 0; i < 32; ++i) sb += float(a[blk].qs[i]) * b[blk * 32 + i];
    s += sb * fp16_to_fp32(a[blk].d);
  }
  return s;
}

void axpy_q8_0(float a, const BlockQ8_0* x, float* y, int64_t n) {
  if (use_avx2()) return ops_detail::axpy_q8_0_avx2(a, x, y, n);
  for (int64_t blk = 0; blk < n / 32; ++blk) {
    const float ad = a * fp16_to_fp32(x[blk].d);
    for (int i = 0; i < 32; ++i) y[blk * 32 + i] += ad * float(x[blk].qs[i]);
  }
}

// ---- RoPE ----

void rope_apply(const float* cs, int n_rot, RopeStyle style, float* x, int n_heads, int head_dim) {
  const int half = n_rot / 2;
  for (int h = 0; h < n_heads; ++h) {
    float* v = x + size_t(h) * size_t(head_dim);
    if (style == RopeStyle::kNormal) {
      for (int i = 0; i < half; ++i) {
        const float c = cs[2 * i], s = cs[2 * i + 1];
        const float a = v[2 * i], b = v[2 * i + 1];
        v[2 * i] = a * c - b * s;
        v[2 * i + 1] = a * s + b * c;
      }
    } else {
      for (int i = 0; i < half; ++i) {
        const float c = cs[2 * i], s = cs[2 * i + 1];
        const float a = v[i], b = v[i + half];
        v[i] = a * c - b * s;
        v[i + half] = a * s + b * c;
      }
    }
  }
}

}  // namespace qleap
