// AVX2/FMA/F16C versions of the small kernels in ops.h (compiled with -mavx2 -mfma -mf16c).
#include <immintrin.h>

#include <cmath>

#include "backend/cpu/ops.h"
#include "core/fp16.h"

namespace qleap::ops_detail {
namespace {

inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v);
  const __m128 hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  __m128 sh = _mm_movehdup_ps(lo);
  lo = _mm_add_ps(lo, sh);
  sh = _mm_movehl_ps(sh, lo);
  lo = _mm_add_ss(lo, sh);
  return _mm_cvtss_f32(lo);
}

inline __m256 load_f16(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

inline __m256 load_i8(const int8_t* p) {
  const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
}

// exp(x) for x <= ~88, Cephes-style range reduction with a degree-5 polynomial (rel. err ~2e-7).
inline __m256 exp256(__m256 x) {
  const __m256 ln2_hi = _mm256_set1_ps(0.693359375f), ln2_lo = _mm256_set1_ps(-2.12194440e-4f);
  x = _mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f));
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3365478515625f));
  __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(fx, ln2_hi, x);
  x = _mm256_fnmadd_ps(fx, ln2_lo, x);
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
  const __m256 x2 = _mm256_mul_ps(x, x);
  y = _mm256_fmadd_ps(y, x2, _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

}  // namespace

float dot_f32_avx2(const float* a, const float* b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  float s = hsum(_mm256_add_ps(s0, s1));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

float dot_f16_avx2(const uint16_t* a, const float* b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(load_f16(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(load_f16(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(load_f16(a + i), _mm256_loadu_ps(b + i), s0);
  float s = hsum(_mm256_add_ps(s0, s1));
  for (; i < n; ++i) s += _cvtsh_ss(a[i]) * b[i];
  return s;
}

float dot_q8_0_avx2(const BlockQ8_0* a, const float* b, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  for (int64_t blk = 0; blk < n / 32; ++blk) {
    const int8_t* q = a[blk].qs;
    const float* bb = b + blk * 32;
    __m256 s = _mm256_mul_ps(load_i8(q), _mm256_loadu_ps(bb));
    s = _mm256_fmadd_ps(load_i8(q + 8), _mm256_loadu_ps(bb + 8), s);
    s = _mm256_fmadd_ps(load_i8(q + 16), _mm256_loadu_ps(bb + 16), s);
    s = _mm256_fmadd_ps(load_i8(q + 24), _mm256_loadu_ps(bb + 24), s);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(a[blk].d)), s, acc);
  }
  return hsum(acc);
}

void axpy_f32_avx2(float a, const float* x, float* y, int64_t n) {
  const __m256 va = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  }
  for (; i < n; ++i) y[i] += a * x[i];
}

void axpy_f16_avx2(float a, const uint16_t* x, float* y, int64_t n) {
  const __m256 va = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, load_f16(x + i), _mm256_loadu_ps(y + i)));
  }
  for (; i < n; ++i) y[i] += a * _cvtsh_ss(x[i]);
}

void axpy_q8_0_avx2(float a, const BlockQ8_0* x, float* y, int64_t n) {
  for (int64_t blk = 0; blk < n / 32; ++blk) {
    const __m256 ad = _mm256_set1_ps(a * _cvtsh_ss(x[blk].d));
    float* yb = y + blk * 32;
    for (int j = 0; j < 32; j += 8) {
      _mm256_storeu_ps(yb + j, _mm256_fmadd_ps(ad, load_i8(x[blk].qs + j), _mm256_loadu_ps(yb + j)));
    }
  }
}

float sum_squares_avx2(const float* x, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
    s0 = _mm256_fmadd_ps(a, a, s0);
    s1 = _mm256_fmadd_ps(b, b, s1);
  }
  for (; i + 8 <= n; i += 8) {
    const __m256 a = _mm256_loadu_ps(x + i);
    s0 = _mm256_fmadd_ps(a, a, s0);
  }
  float s = hsum(_mm256_add_ps(s0, s1));
  for (; i < n; ++i) s += x[i] * x[i];
  return s;
}

void scale_mul_avx2(const float* x, const float* w, float s, float* y, int64_t n) {
  const __m256 vs = _mm256_set1_ps(s);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vs), _mm256_loadu_ps(w + i)));
  }
  for (; i < n; ++i) y[i] = x[i] * s * w[i];
}

void silu_mul_avx2(float* g, const float* u, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_loadu_ps(g + i);
    const __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), x));
    const __m256 sx = _mm256_div_ps(x, _mm256_add_ps(one, e));
    _mm256_storeu_ps(g + i, _mm256_mul_ps(sx, _mm256_loadu_ps(u + i)));
  }
  for (; i < n; ++i) g[i] = silu(g[i]) * u[i];
}

void gelu_mul_avx2(float* g, const float* u, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f), c = _mm256_set1_ps(-1.5957691216057308f),
               c3 = _mm256_set1_ps(0.044715f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_loadu_ps(g + i);
    const __m256 inner = _mm256_fmadd_ps(_mm256_mul_ps(c3, x), _mm256_mul_ps(x, x), x);
    const __m256 e = exp256(_mm256_mul_ps(c, inner));
    const __m256 gx = _mm256_div_ps(x, _mm256_add_ps(one, e));
    _mm256_storeu_ps(g + i, _mm256_mul_ps(gx, _mm256_loadu_ps(u + i)));
  }
  for (; i < n; ++i) g[i] = gelu_tanh(g[i]) * u[i];
}

float exp_sub_sum_avx2(float* x, int64_t n, float m) {
  const __m256 vm = _mm256_set1_ps(m);
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
    _mm256_storeu_ps(x + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  float sum = hsum(acc);
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - m);
    sum += x[i];
  }
  return sum;
}

void fp32_to_fp16_row_avx2(const float* x, uint16_t* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
  }
  for (; i < n; ++i) y[i] = _cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT);
}

void fp16_to_fp32_row_avx2(const uint16_t* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, load_f16(x + i));
  for (; i < n; ++i) y[i] = _cvtsh_ss(x[i]);
}

void dequantize_q8_0_avx2(const BlockQ8_0* x, float* y, int64_t n) {
  for (int64_t blk = 0; blk < n / 32; ++blk) {
    const __m256 d = _mm256_set1_ps(_cvtsh_ss(x[blk].d));
    for (int j = 0; j < 32; j += 8)
      _mm256_storeu_ps(y + blk * 32 + j, _mm256_mul_ps(d, load_i8(x[blk].qs + j)));
  }
}

namespace {

// Row x (8 floats per step, produced by load) against nq <= 8 query vectors.
template <class Load>
inline void dot_multi(const Load& load, const float* const* q, int nq, int64_t n, float* out) {
  __m256 acc[8];
  for (int k = 0; k < nq; ++k) acc[k] = _mm256_setzero_ps();
  for (int64_t i = 0; i < n; i += 8) {
    const __m256 xv = load(i);
    for (int k = 0; k < nq; ++k) acc[k] = _mm256_fmadd_ps(xv, _mm256_loadu_ps(q[k] + i), acc[k]);
  }
  for (int k = 0; k < nq; ++k) out[k] = hsum(acc[k]);
}

template <class Load>
inline void axpy_multi(const Load& load, const float* p, float* const* acc, int nq, int64_t n) {
  __m256 pv[8];
  for (int k = 0; k < nq; ++k) pv[k] = _mm256_set1_ps(p[k]);
  for (int64_t i = 0; i < n; i += 8) {
    const __m256 xv = load(i);
    for (int k = 0; k < nq; ++k) {
      _mm256_storeu_ps(acc[k] + i, _mm256_fmadd_ps(pv[k], xv, _mm256_loadu_ps(acc[k] + i)));
    }
  }
}

}  // namespace

void dot_f32_multi_avx2(const float* x, const float* const* q, int nq, int64_t n, float* out) {
  dot_multi([x](int64_t i) { return _mm256_loadu_ps(x + i); }, q, nq, n, out);
}

void dot_f16_multi_avx2(const uint16_t* x, const float* const* q, int nq, int64_t n, float* out) {
  dot_multi([x](int64_t i) { return load_f16(x + i); }, q, nq, n, out);
}

void axpy_f32_multi_avx2(const float* p, const float* x, float* const* acc, int nq, int64_t n) {
  axpy_multi([x](int64_t i) { return _mm256_loadu_ps(x + i); }, p, acc, nq, n);
}

void axpy_f16_multi_avx2(const float* p, const uint16_t* x, float* const* acc, int nq, int64_t n) {
  axpy_multi([x](int64_t i) { return load_f16(x + i); }, p, acc, nq, n);
}

}  // namespace qleap::ops_detail
