// Elementwise and small vector kernels of the transformer forward pass (norms, RoPE, softmax,
// activations, attention dot products). Each entry point dispatches at run time to AVX2 code when the
// CPU has it (core/cpu_features.h); the scalar versions are the reference.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "quant/block_q8_0.h"
#include "tensor/rope.h"

namespace qleap {

// y = x / sqrt(mean(x^2) + eps) * w  (w may be nullptr: no weight). y may alias x.
void rms_norm(const float* x, const float* w, float* y, int64_t n, float eps);
void rms_norm_ref(const float* x, const float* w, float* y, int64_t n, float eps);

// In place, numerically stable (subtracts the max).
void softmax(float* x, int64_t n);

// g[i] = silu(g[i]) * u[i]  (the SwiGLU gate).
void silu_mul(float* g, const float* u, int64_t n);
// g[i] = gelu_tanh(g[i]) * u[i]  (GeGLU with the tanh approximation, gemma's gelu_pytorch_tanh).
void gelu_mul(float* g, const float* u, int64_t n);

// y[i] += x[i]
void add_inplace(float* y, const float* x, int64_t n);

// Dot products and y += a * x over the storage formats of the KV cache.
float dot_f32(const float* a, const float* b, int64_t n);
float dot_f16(const uint16_t* a, const float* b, int64_t n);
void axpy_f32(float a, const float* x, float* y, int64_t n);
void axpy_f16(float a, const uint16_t* x, float* y, int64_t n);
void scale_inplace(float* y, float a, int64_t n);
// One key/value row against several query heads (nq <= 8) that share it, so the row is loaded and
// converted once: out[k] = x . q[k];  acc[k] += p[k] * x.
void dot_f32_multi(const float* x, const float* const* q, int nq, int64_t n, float* out);
void dot_f16_multi(const uint16_t* x, const float* const* q, int nq, int64_t n, float* out);
void axpy_f32_multi(const float* p, const float* x, float* const* acc, int nq, int64_t n);
void axpy_f16_multi(const float* p, const uint16_t* x, float* const* acc, int nq, int64_t n);
// x[i] = exp(x[i] - m); returns the sum (the inner step of an online softmax).
float exp_sub_sum(float* x, int64_t n, float m);
// Converts a row of floats to fp16 (round to nearest even).
void fp32_to_fp16_row(const float* x, uint16_t* y, int64_t n);
void fp16_to_fp32_row(const uint16_t* x, float* y, int64_t n);

// Quantizes n (multiple of 32) floats the way GGUF Q8_0 does: d = max|x| / 127, q = round(x / d).
void quantize_q8_0(const float* x, BlockQ8_0* out, int64_t n);
// n is a multiple of 32 (whole blocks).
float dot_q8_0(const BlockQ8_0* a, const float* b, int64_t n);
void axpy_q8_0(float a, const BlockQ8_0* x, float* y, int64_t n);
void dequantize_q8_0(const BlockQ8_0* x, float* y, int64_t n);

// ---- Rotary position embedding (tables: tensor/rope.h) ----

// Rotates n_heads heads of head_dim floats (contiguous) at one position with cos/sin pairs cs
// (n_rot floats as laid out by RopeTable::at).
void rope_apply(const float* cs, int n_rot, RopeStyle style, float* x, int n_heads, int head_dim);

// ---- implementation details shared with the ISA files ----
namespace ops_detail {
float dot_f32_avx2(const float* a, const float* b, int64_t n);
float dot_f16_avx2(const uint16_t* a, const float* b, int64_t n);
float dot_q8_0_avx2(const BlockQ8_0* a, const float* b, int64_t n);
void axpy_f32_avx2(float a, const float* x, float* y, int64_t n);
void axpy_f16_avx2(float a, const uint16_t* x, float* y, int64_t n);
void axpy_q8_0_avx2(float a, const BlockQ8_0* x, float* y, int64_t n);
float sum_squares_avx2(const float* x, int64_t n);
void scale_mul_avx2(const float* x, const float* w, float s, float* y, int64_t n);
void silu_mul_avx2(float* g, const float* u, int64_t n);
void gelu_mul_avx2(float* g, const float* u, int64_t n);
float exp_sub_sum_avx2(float* x, int64_t n, float m);
void fp32_to_fp16_row_avx2(const float* x, uint16_t* y, int64_t n);
void fp16_to_fp32_row_avx2(const uint16_t* x, float* y, int64_t n);
void dequantize_q8_0_avx2(const BlockQ8_0* x, float* y, int64_t n);
void dot_f32_multi_avx2(const float* x, const float* const* q, int nq, int64_t n, float* out);
void dot_f16_multi_avx2(const uint16_t* x, const float* const* q, int nq, int64_t n, float* out);
void axpy_f32_multi_avx2(const float* p, const float* x, float* const* acc, int nq, int64_t n);
void axpy_f16_multi_avx2(const float* p, const uint16_t* x, float* const* acc, int nq, int64_t n);
}  // namespace ops_detail

// Soft-capped attention score or logit (gemma2's attn / final logit soft-capping): cap * tanh(s / cap);
// cap 0: s.
inline float softcap_score(float s, float cap) {
  return cap > 0 ? cap * std::tanh(s / cap) : s;
}

// The factor that turns an online-softmax accumulator (running max m, sum l of exp(score - m)) into the
// attention output when a learned per-head sink logit joins the denominator without a value (gpt-oss):
// out = acc * attn_out_factor(m, l, sink). sink -inf: none (1 / l). Rescaled to the larger of m and
// sink so that neither exponential overflows.
inline float attn_out_factor(float m, float l, float sink) {
  if (!(l > 0)) return 0.0f;
  if (!(sink > -std::numeric_limits<float>::infinity())) return 1.0f / l;
  if (sink <= m) return 1.0f / (l + std::exp(sink - m));
  const float c = std::exp(m - sink);
  return c / (l * c + 1.0f);
}

inline float silu(float x) {
  return x / (1.0f + __builtin_expf(-x));
}

// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), written as x / (1 + exp(-2 sqrt(2/pi) (...))) (the
// same function: 0.5 (1 + tanh z) = 1 / (1 + exp(-2z))).
inline float gelu_tanh(float x) {
  constexpr float kTwoSqrt2OverPi = 1.5957691216057308f;  // 2 * sqrt(2 / pi)
  return x / (1.0f + __builtin_expf(-kTwoSqrt2OverPi * (x + 0.044715f * x * x * x)));
}

}  // namespace qleap
