// AVX-512 kernels for attention over packed TurboQuant records: 16 coordinates per step. The 16
// indices of a step are 2B bytes; the low 8 go to lanes 0-7 and the high 8 to lanes 8-15 of one
// broadcast, a per-lane shift extracts them, and one vpermps over a zmm holding all 16 centroids
// looks them up for any B <= 4 (no blend needed, unlike AVX2).
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "turboquant/tq_kernels.h"

namespace qleap::tq_detail {

namespace {

template <int B>
inline __m512i unpack16(const uint8_t* p) {
  uint64_t v = 0;
  if constexpr (B == 1) {
    uint16_t t;
    std::memcpy(&t, p, 2);
    v = t;
  } else if constexpr (B == 2) {
    uint32_t t;
    std::memcpy(&t, p, 4);
    v = t;
  } else {
    // 2B = 6 or 8 bytes; for B = 3 the 2 extra bytes are inside the record (the norm follows).
    std::memcpy(&v, p, 8);
  }
  const uint32_t lo = uint32_t(v), hi = uint32_t(v >> (8 * B));
  const __m512i bc = _mm512_mask_set1_epi32(_mm512_set1_epi32(int(lo)), 0xff00, int(hi));
  const __m512i shifts = _mm512_setr_epi32(0, B, 2 * B, 3 * B, 4 * B, 5 * B, 6 * B, 7 * B, 0, B, 2 * B, 3 * B,
                                           4 * B, 5 * B, 6 * B, 7 * B);
  // maskz forms with a full mask: the same instructions, but GCC 12 warns (-Wmaybe-uninitialized) on
  // the _mm512_undefined source operand of the unmasked intrinsics.
  const __m512i idx = _mm512_maskz_srlv_epi32(0xffff, bc, shifts);
  if constexpr (B == 4) return idx;  // vpermps reads only the low 4 bits
  return _mm512_and_si512(idx, _mm512_set1_epi32((1 << B) - 1));
}

inline __m512 lookup(__m512 cents, __m512i idx) {
  return _mm512_maskz_permutexvar_ps(0xffff, idx, cents);
}

// Horizontal sum (not _mm512_reduce_add_ps: same GCC 12 warning as above).
inline float hsum(__m512 v) {
  const __m256 lo = _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xff, _mm512_castps_pd(v), 0));
  const __m256 hi = _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xff, _mm512_castps_pd(v), 1));
  const __m256 s8 = _mm256_add_ps(lo, hi);
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float load_norm(const uint8_t* rec, size_t off) {
  uint16_t h;
  std::memcpy(&h, rec + off, 2);
  return _cvtsh_ss(h);
}

template <int B, int NQ>
inline void seg_dot(const uint8_t* p, int n16, __m512 c, const float* q, int dim, __m512 (&acc)[NQ][2]) {
  int g = 0;
  for (; g + 1 < n16; g += 2) {
    const __m512 c0 = lookup(c, unpack16<B>(p + g * 2 * B));
    const __m512 c1 = lookup(c, unpack16<B>(p + (g + 1) * 2 * B));
    for (int qi = 0; qi < NQ; ++qi) {
      acc[qi][0] = _mm512_fmadd_ps(c0, _mm512_loadu_ps(q + qi * dim + g * 16), acc[qi][0]);
      acc[qi][1] = _mm512_fmadd_ps(c1, _mm512_loadu_ps(q + qi * dim + g * 16 + 16), acc[qi][1]);
    }
  }
  if (g < n16) {
    const __m512 c0 = lookup(c, unpack16<B>(p + g * 2 * B));
    for (int qi = 0; qi < NQ; ++qi)
      acc[qi][0] = _mm512_fmadd_ps(c0, _mm512_loadu_ps(q + qi * dim + g * 16), acc[qi][0]);
  }
}

template <int BH, int BL, int NQ>
void scores_block(const KernelArgs& a, const float* q_rot, const uint8_t* keys, size_t key_stride, int64_t n,
                  float* scores, size_t score_stride) {
  const __m512 ch = _mm512_loadu_ps(a.cb_hi), cl = _mm512_loadu_ps(a.cb_lo);
  const int n16_hi = a.split / 16, n16_lo = (a.dim - a.split) / 16;
  for (int64_t j = 0; j < n; ++j) {
    const uint8_t* rec = keys + size_t(j) * key_stride;
    __m512 acc[NQ][2];
    for (int qi = 0; qi < NQ; ++qi) acc[qi][0] = acc[qi][1] = _mm512_setzero_ps();
    seg_dot<BH, NQ>(rec, n16_hi, ch, q_rot, a.dim, acc);
    if (n16_lo > 0) seg_dot<BL, NQ>(rec + a.hi_bytes, n16_lo, cl, q_rot + a.split, a.dim, acc);
    const float nrm = load_norm(rec, a.norm_offset);
    for (int qi = 0; qi < NQ; ++qi)
      scores[size_t(qi) * score_stride + j] = nrm * hsum(_mm512_add_ps(acc[qi][0], acc[qi][1]));
  }
}

// Groups [g0, g0 + cnt) of one segment for all n values, partial sums in registers (see the AVX2
// version; with 32 zmm registers one pass covers d = 128 for a single query). coef[j * NQ + qi] is
// the record's weight times its norm, computed once for all chunks.
template <int B, int NQ, int CH>
void accum_chunk(const float* coef, const uint8_t* values, size_t stride, int64_t n, __m512 c, size_t seg_off,
                 int g0, int cnt, float* acc, int dim) {
  __m512 s[NQ][CH];
  for (int qi = 0; qi < NQ; ++qi)
    for (int g = 0; g < CH; ++g)
      s[qi][g] = g < cnt ? _mm512_loadu_ps(acc + qi * dim + (g0 + g) * 16) : _mm512_setzero_ps();
  const uint8_t* p = values + seg_off + size_t(g0) * 2 * B;
  for (int64_t j = 0; j < n; ++j, p += stride) {
    __m512 cf[NQ];
    for (int qi = 0; qi < NQ; ++qi) cf[qi] = _mm512_set1_ps(coef[j * NQ + qi]);
    for (int g = 0; g < CH; ++g) {
      if (g < cnt) {
        const __m512 cv = lookup(c, unpack16<B>(p + g * 2 * B));
        for (int qi = 0; qi < NQ; ++qi) s[qi][g] = _mm512_fmadd_ps(cf[qi], cv, s[qi][g]);
      }
    }
  }
  for (int qi = 0; qi < NQ; ++qi)
    for (int g = 0; g < cnt; ++g) _mm512_storeu_ps(acc + qi * dim + (g0 + g) * 16, s[qi][g]);
}

template <int BH, int BL, int NQ>
void accum_block(const KernelArgs& a, const float* w, size_t w_stride, const uint8_t* values,
                 size_t value_stride, int64_t n, float* acc_rot) {
  // Weight x norm per record and query, once for all chunks of coordinates (the records' norms and
  // the weights are read once, not once per chunk); records past the last non-zero weight (the
  // causal tail of a prefill block) are not read at all.
  thread_local std::vector<float> coef_buf;
  if (coef_buf.size() < size_t(n) * NQ) coef_buf.resize(size_t(n) * NQ);
  float* coef = coef_buf.data();
  int64_t n_used = 0;
  for (int64_t j = 0; j < n; ++j) {
    const float nrm = load_norm(values + size_t(j) * value_stride, a.norm_offset);
    bool any = false;
    for (int qi = 0; qi < NQ; ++qi) {
      const float cf = w[size_t(qi) * w_stride + size_t(j)] * nrm;
      coef[j * NQ + qi] = cf;
      any |= cf != 0.0f;
    }
    if (any) n_used = j + 1;
  }
  constexpr int kCh = NQ <= 2 ? 8 : 4;  // NQ * kCh <= 16 of the 32 zmm registers
  const __m512 ch = _mm512_loadu_ps(a.cb_hi), cl = _mm512_loadu_ps(a.cb_lo);
  const int n16_hi = a.split / 16, n16_lo = (a.dim - a.split) / 16;
  for (int g0 = 0; g0 < n16_hi; g0 += kCh)
    accum_chunk<BH, NQ, kCh>(coef, values, value_stride, n_used, ch, 0, g0, std::min(kCh, n16_hi - g0),
                             acc_rot, a.dim);
  for (int g0 = 0; g0 < n16_lo; g0 += kCh)
    accum_chunk<BL, NQ, kCh>(coef, values, value_stride, n_used, cl, a.hi_bytes, g0,
                             std::min(kCh, n16_lo - g0), acc_rot + a.split, a.dim);
}

template <int BH, int BL>
void scores_bits(const KernelArgs& a, const float* q_rot, int n_q, const uint8_t* keys, size_t key_stride,
                 int64_t n, float* scores, size_t score_stride) {
  for (int q0 = 0; q0 < n_q; q0 += 4) {
    const float* q = q_rot + size_t(q0) * a.dim;
    float* s = scores + size_t(q0) * score_stride;
    switch (std::min(4, n_q - q0)) {
      case 1:
        scores_block<BH, BL, 1>(a, q, keys, key_stride, n, s, score_stride);
        break;
      case 2:
        scores_block<BH, BL, 2>(a, q, keys, key_stride, n, s, score_stride);
        break;
      case 3:
        scores_block<BH, BL, 3>(a, q, keys, key_stride, n, s, score_stride);
        break;
      default:
        scores_block<BH, BL, 4>(a, q, keys, key_stride, n, s, score_stride);
        break;
    }
  }
}

template <int BH, int BL>
void accum_bits(const KernelArgs& a, const float* w, size_t w_stride, int n_q, const uint8_t* values,
                size_t value_stride, int64_t n, float* acc_rot) {
  for (int q0 = 0; q0 < n_q; q0 += 4) {
    const float* ww = w + size_t(q0) * w_stride;
    float* acc = acc_rot + size_t(q0) * a.dim;
    switch (std::min(4, n_q - q0)) {
      case 1:
        accum_block<BH, BL, 1>(a, ww, w_stride, values, value_stride, n, acc);
        break;
      case 2:
        accum_block<BH, BL, 2>(a, ww, w_stride, values, value_stride, n, acc);
        break;
      case 3:
        accum_block<BH, BL, 3>(a, ww, w_stride, values, value_stride, n, acc);
        break;
      default:
        accum_block<BH, BL, 4>(a, ww, w_stride, values, value_stride, n, acc);
        break;
    }
  }
}

template <typename Fn>
Fn select(int bh, int bl, Fn f11, Fn f22, Fn f33, Fn f44, Fn f21, Fn f32, Fn f43) {
  if (bh == bl) return bh == 1 ? f11 : bh == 2 ? f22 : bh == 3 ? f33 : f44;
  return bh == 2 ? f21 : bh == 3 ? f32 : f43;
}

}  // namespace

void scores_avx512(const KernelArgs& a, const float* q_rot, int n_q, const uint8_t* keys, size_t key_stride,
                   int64_t n, float* scores, size_t score_stride) {
  const ScoresFn f =
      select<ScoresFn>(a.bits_hi, a.bits_lo, scores_bits<1, 1>, scores_bits<2, 2>, scores_bits<3, 3>,
                       scores_bits<4, 4>, scores_bits<2, 1>, scores_bits<3, 2>, scores_bits<4, 3>);
  f(a, q_rot, n_q, keys, key_stride, n, scores, score_stride);
}

void accum_avx512(const KernelArgs& a, const float* w, size_t w_stride, int n_q, const uint8_t* values,
                  size_t value_stride, int64_t n, float* acc_rot) {
  const AccumFn f =
      select<AccumFn>(a.bits_hi, a.bits_lo, accum_bits<1, 1>, accum_bits<2, 2>, accum_bits<3, 3>,
                      accum_bits<4, 4>, accum_bits<2, 1>, accum_bits<3, 2>, accum_bits<4, 3>);
  f(a, w, w_stride, n_q, values, value_stride, n, acc_rot);
}

}  // namespace qleap::tq_detail
