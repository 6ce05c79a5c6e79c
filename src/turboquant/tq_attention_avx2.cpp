// AVX2 kernels for attention over packed TurboQuant records. A group of 8 b-bit indices is exactly b
// bytes: it is loaded as one integer, broadcast, shifted per lane (vpsrlvd) and masked, and the
// centroids are looked up in registers (vpermps over the 8 low centroids; for 4 bits a second
// vpermps over the high 8 and a blend on index bit 3). No gathers, no dequantized buffer.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/fp16.h"
#include "turboquant/tq_kernels.h"

namespace qleap::tq_detail {

namespace {

// Indices of one group of 8 coordinates, one per 32-bit lane. For B >= 3 only the low B bits of
// each lane are meaningful (see below).
template <int B>
inline __m256i unpack8(const uint8_t* p) {
  uint32_t v;
  if constexpr (B == 1) {
    v = p[0];
  } else {
    // B bytes hold the group; reading 4 is safe because every record ends with at least the 2-byte
    // norm after its index segments (B >= 2 reads at most 2 bytes past the group).
    std::memcpy(&v, p, 4);
  }
  const __m256i shifts = _mm256_setr_epi32(0, B, 2 * B, 3 * B, 4 * B, 5 * B, 6 * B, 7 * B);
  const __m256i idx = _mm256_srlv_epi32(_mm256_set1_epi32(int(v)), shifts);
  // vpermps reads only the low 3 bits of each lane and the 4-bit blend only bit 3 (shifted to the
  // sign), so the higher garbage bits need no mask for B >= 3.
  if constexpr (B >= 3) return idx;
  return _mm256_and_si256(idx, _mm256_set1_epi32((1 << B) - 1));
}

struct Cents {
  __m256 lo, hi;
};

template <int B>
inline __m256 lookup(const Cents& c, __m256i idx) {
  const __m256 lo = _mm256_permutevar8x32_ps(c.lo, idx);
  if constexpr (B <= 3) {
    return lo;
  } else {
    const __m256 hi = _mm256_permutevar8x32_ps(c.hi, idx);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
  }
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float load_norm(const uint8_t* rec, size_t off) {
  uint16_t h;
  std::memcpy(&h, rec + off, 2);
  return _cvtsh_ss(h);
}

// acc[qi] += sum over one segment (n8 groups of 8 coordinates) of q[qi] * c[idx]. Two accumulators
// per query (even/odd groups) halve the FMA dependency chain.
template <int B, int NQ>
inline void seg_dot(const uint8_t* p, int n8, const Cents& c, const float* q, int dim, __m256 (&acc)[NQ][2]) {
  int g = 0;
  for (; g + 1 < n8; g += 2) {
    const __m256 c0 = lookup<B>(c, unpack8<B>(p + g * B));
    const __m256 c1 = lookup<B>(c, unpack8<B>(p + (g + 1) * B));
    for (int qi = 0; qi < NQ; ++qi) {
      acc[qi][0] = _mm256_fmadd_ps(c0, _mm256_loadu_ps(q + qi * dim + g * 8), acc[qi][0]);
      acc[qi][1] = _mm256_fmadd_ps(c1, _mm256_loadu_ps(q + qi * dim + g * 8 + 8), acc[qi][1]);
    }
  }
  if (g < n8) {
    const __m256 c0 = lookup<B>(c, unpack8<B>(p + g * B));
    for (int qi = 0; qi < NQ; ++qi)
      acc[qi][0] = _mm256_fmadd_ps(c0, _mm256_loadu_ps(q + qi * dim + g * 8), acc[qi][0]);
  }
}

template <int BH, int BL, int NQ>
void scores_block(const KernelArgs& a, const float* q_rot, const uint8_t* keys, size_t key_stride, int64_t n,
                  float* scores, size_t score_stride) {
  const Cents ch{_mm256_loadu_ps(a.cb_hi), _mm256_loadu_ps(a.cb_hi + 8)};
  const Cents cl{_mm256_loadu_ps(a.cb_lo), _mm256_loadu_ps(a.cb_lo + 8)};
  const int n8_hi = a.split / 8, n8_lo = (a.dim - a.split) / 8;
  for (int64_t j = 0; j < n; ++j) {
    const uint8_t* rec = keys + size_t(j) * key_stride;
    __m256 acc[NQ][2];
    for (int qi = 0; qi < NQ; ++qi) acc[qi][0] = acc[qi][1] = _mm256_setzero_ps();
    seg_dot<BH, NQ>(rec, n8_hi, ch, q_rot, a.dim, acc);
    if (n8_lo > 0) seg_dot<BL, NQ>(rec + a.hi_bytes, n8_lo, cl, q_rot + a.split, a.dim, acc);
    const float nrm = load_norm(rec, a.norm_offset);
    for (int qi = 0; qi < NQ; ++qi)
      scores[size_t(qi) * score_stride + j] = nrm * hsum(_mm256_add_ps(acc[qi][0], acc[qi][1]));
  }
}

// Accumulates the coordinate groups [g0, g0 + cnt) (cnt <= CH) of one bit segment over n values with
// the NQ x CH partial sums held in registers: the records are re-read once per chunk of groups, which
// is cheaper than a load + store of the accumulators per group and record. coef[j * NQ + qi] is the
// record's weight times its norm, computed once for all chunks.
template <int B, int NQ, int CH>
void accum_chunk(const float* coef, const uint8_t* values, size_t stride, int64_t n, const Cents& c,
                 size_t seg_off, int g0, int cnt, float* acc, int dim) {
  __m256 s[NQ][CH];
  for (int qi = 0; qi < NQ; ++qi)
    for (int g = 0; g < CH; ++g)
      s[qi][g] = g < cnt ? _mm256_loadu_ps(acc + qi * dim + (g0 + g) * 8) : _mm256_setzero_ps();
  const uint8_t* p = values + seg_off + size_t(g0) * B;
  for (int64_t j = 0; j < n; ++j, p += stride) {
    __m256 cf[NQ];
    for (int qi = 0; qi < NQ; ++qi) cf[qi] = _mm256_broadcast_ss(coef + j * NQ + qi);
    for (int g = 0; g < CH; ++g) {
      if (g < cnt) {
        const __m256 cv = lookup<B>(c, unpack8<B>(p + g * B));
        for (int qi = 0; qi < NQ; ++qi) s[qi][g] = _mm256_fmadd_ps(cf[qi], cv, s[qi][g]);
      }
    }
  }
  for (int qi = 0; qi < NQ; ++qi)
    for (int g = 0; g < cnt; ++g) _mm256_storeu_ps(acc + qi * dim + (g0 + g) * 8, s[qi][g]);
}

template <int BH, int BL, int NQ>
void accum_block(const KernelArgs& a, const float* w, size_t w_stride, const uint8_t* values,
                 size_t value_stride, int64_t n, float* acc_rot) {
  // Weight x norm per record and query, once; records past the last non-zero weight (the causal
  // tail of a prefill block) are not read at all.
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
  // NQ * kCh accumulators + NQ weights + the centroids in 16 registers (4-bit lookups need two).
  constexpr int kCh = BH == 4 ? (NQ == 1 ? 4 : 2) : (NQ == 1 ? 8 : NQ == 2 ? 4 : 2);
  const Cents ch{_mm256_loadu_ps(a.cb_hi), _mm256_loadu_ps(a.cb_hi + 8)};
  const Cents cl{_mm256_loadu_ps(a.cb_lo), _mm256_loadu_ps(a.cb_lo + 8)};
  const int n8_hi = a.split / 8, n8_lo = (a.dim - a.split) / 8;
  for (int g0 = 0; g0 < n8_hi; g0 += kCh)
    accum_chunk<BH, NQ, kCh>(coef, values, value_stride, n_used, ch, 0, g0, std::min(kCh, n8_hi - g0),
                             acc_rot, a.dim);
  for (int g0 = 0; g0 < n8_lo; g0 += kCh)
    accum_chunk<BL, NQ, kCh>(coef, values, value_stride, n_used, cl, a.hi_bytes, g0,
                             std::min(kCh, n8_lo - g0), acc_rot + a.split, a.dim);
}

template <int BH, int BL>
void scores_bits(const KernelArgs& a, const float* q_rot, int n_q, const uint8_t* keys, size_t key_stride,
                 int64_t n, float* scores, size_t score_stride) {
  // Up to 4 query heads per pass share each key's unpacking (GQA groups are 1..8 wide).
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

template <int B>
inline void seg_decode(const uint8_t* p, int n8, const Cents& c, __m256 nrm, float* out) {
  for (int g = 0; g < n8; ++g)
    _mm256_storeu_ps(out + g * 8, _mm256_mul_ps(nrm, lookup<B>(c, unpack8<B>(p + g * B))));
}

template <int BH, int BL>
void decode_bits(const KernelArgs& a, const uint8_t* recs, size_t stride, int64_t n, float* rows,
                 size_t row_stride) {
  const Cents ch{_mm256_loadu_ps(a.cb_hi), _mm256_loadu_ps(a.cb_hi + 8)};
  const Cents cl{_mm256_loadu_ps(a.cb_lo), _mm256_loadu_ps(a.cb_lo + 8)};
  const int n8_hi = a.split / 8, n8_lo = (a.dim - a.split) / 8;
  for (int64_t j = 0; j < n; ++j) {
    const uint8_t* rec = recs + size_t(j) * stride;
    float* out = rows + size_t(j) * row_stride;
    const __m256 nrm = _mm256_set1_ps(load_norm(rec, a.norm_offset));
    seg_decode<BH>(rec, n8_hi, ch, nrm, out);
    if (n8_lo > 0) seg_decode<BL>(rec + a.hi_bytes, n8_lo, cl, nrm, out + a.split);
  }
}

// (bits_hi, bits_lo) pairs: uniform 1..4 and the half rates (2,1), (3,2), (4,3).
template <typename Fn>
Fn select(int bh, int bl, Fn f11, Fn f22, Fn f33, Fn f44, Fn f21, Fn f32, Fn f43) {
  if (bh == bl) return bh == 1 ? f11 : bh == 2 ? f22 : bh == 3 ? f33 : f44;
  return bh == 2 ? f21 : bh == 3 ? f32 : f43;
}

}  // namespace

void scores_avx2(const KernelArgs& a, const float* q_rot, int n_q, const uint8_t* keys, size_t key_stride,
                 int64_t n, float* scores, size_t score_stride) {
  const ScoresFn f =
      select<ScoresFn>(a.bits_hi, a.bits_lo, scores_bits<1, 1>, scores_bits<2, 2>, scores_bits<3, 3>,
                       scores_bits<4, 4>, scores_bits<2, 1>, scores_bits<3, 2>, scores_bits<4, 3>);
  f(a, q_rot, n_q, keys, key_stride, n, scores, score_stride);
}

void decode_avx2(const KernelArgs& a, const uint8_t* recs, size_t stride, int64_t n, float* rows,
                 size_t row_stride) {
  const DecodeFn f =
      select<DecodeFn>(a.bits_hi, a.bits_lo, decode_bits<1, 1>, decode_bits<2, 2>, decode_bits<3, 3>,
                       decode_bits<4, 4>, decode_bits<2, 1>, decode_bits<3, 2>, decode_bits<4, 3>);
  f(a, recs, stride, n, rows, row_stride);
}

void accum_avx2(const KernelArgs& a, const float* w, size_t w_stride, int n_q, const uint8_t* values,
                size_t value_stride, int64_t n, float* acc_rot) {
  const AccumFn f =
      select<AccumFn>(a.bits_hi, a.bits_lo, accum_bits<1, 1>, accum_bits<2, 2>, accum_bits<3, 3>,
                      accum_bits<4, 4>, accum_bits<2, 1>, accum_bits<3, 2>, accum_bits<4, 3>);
  f(a, w, w_stride, n_q, values, value_stride, n, acc_rot);
}

}  // namespace qleap::tq_detail
