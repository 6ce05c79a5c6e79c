// x86 SIMD kernels, compiled once per ISA: matmul_avx2.cpp and matmul_avx512.cpp include this file
// after defining QLEAP_ISA_NS (the namespace that keeps the two builds apart) and QLEAP_USE_VNNI.
// Everything here has internal linkage so no function compiled with AVX-512 flags can be picked by
// the linker for a caller on a lesser CPU; only kernels() is exported.
//
// Scheme: activations are quantized once per call to int8 (BlockQ8A for the 32-element formats,
// Q8_K for the K-quants); weight blocks are unpacked to bytes in registers and multiplied with
// u8 x s8 multiply-adds (maddubs, or VPDPBUSD with VNNI). Signed weights (Q8_0, IQ4_NL) use
// |w| * sign(x, w); Q4_0/Q5_0 stay unsigned with their -8/-16 offset, and Q4_1/Q5_1 with their
// minimum, applied through the activation block sums. Prefill tiles RR weight rows x CC
// activation rows in registers (each unpacked weight block is reused CC times, each activation
// block RR times); K-quant prefill unpacks a super-block once per 64-row activation chunk; decode
// (one activation row) has dedicated register-only kernels.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "backend/cpu/matmul_kernels.h"
#include "backend/cpu/packed_weights.h"
#include "core/guided_for.h"
#include "quant/block_iq4_nl.h"
#include "quant/block_nvfp4.h"
#include "quant/block_q2_k.h"
#include "quant/block_q3_k.h"
#include "quant/block_q4_0.h"
#include "quant/block_q4_1.h"
#include "quant/block_q4_k.h"
#include "quant/block_q5_0.h"
#include "quant/block_q5_1.h"
#include "quant/block_q5_k.h"
#include "quant/block_q6_k.h"
#include "quant/block_q8_0.h"
#include "quant/iq_grids.h"
#if QLEAP_USE_VNNI
#include "backend/cpu/transpose_avx512.h"
#endif

#ifndef QLEAP_ISA_NS
#error "define QLEAP_ISA_NS before including matmul_x86_impl.h"
#endif

namespace qleap::kern::QLEAP_ISA_NS {
namespace {

// Activation rows per cache chunk in prefill: 64 rows of Q8A activations for a 4096-wide matrix
// are ~330 KB, which stays in L2 while every weight row tile streams past it.
constexpr int64_t kActChunk = 64;

inline float h2f(uint16_t h) {
  return _cvtsh_ss(h);
}

// Two adjacent fp16 values (d, m) -> floats in lanes 0 and 1.
inline __m128 dm_of(const uint16_t* p) {
  uint32_t u;
  std::memcpy(&u, p, 4);
  return _mm_cvtph_ps(_mm_cvtsi32_si128(int(u)));
}
// One fp16 value d -> d in lanes 0 and 1.
inline __m128 dd_of(const uint16_t* p) {
  int16_t u;
  std::memcpy(&u, p, 2);
  // A broadcast load (vpbroadcastw) is one instruction fewer than insert + shuffle.
  return _mm_cvtph_ps(_mm_set1_epi16(u));
}

// 8 int32 lanes, each the sum of 4 adjacent u8 x s8 products. maddubs saturates to int16, which
// our operand ranges (|u| <= 128, |s| <= 127) never reach.
inline __m256i dot_u8i8(__m256i u, __m256i s) {
#if QLEAP_USE_VNNI
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

inline float hsum(__m256 v) {
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}

inline int hsum_i32(__m256i v) {
  __m128i lo = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  lo = _mm_add_epi32(lo, _mm_shuffle_epi32(lo, 0x4e));
  lo = _mm_add_epi32(lo, _mm_shuffle_epi32(lo, 0xb1));
  return _mm_cvtsi128_si32(lo);
}

inline void store32(uint8_t* dst, __m256i v) {
  _mm256_store_si256(reinterpret_cast<__m256i*>(dst), v);
}
inline __m256i load32u(const uint8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

// 16 bytes of packed nibbles -> 32 bytes 0..15: low nibbles are elements 0..15, high 16..31.
inline __m256i load_nibbles(const uint8_t* qs) {
  // Broadcast the 16 bytes to both lanes, shift only the upper lane: one instruction fewer than
  // shifting a copy and inserting it.
  const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs)));
  return _mm256_and_si256(_mm256_srlv_epi64(v, _mm256_set_epi64x(4, 4, 0, 0)), _mm256_set1_epi8(0x0F));
}

// 32 bits (little-endian) -> 32 bytes, 0xFF where the bit is set.
inline __m256i bits_to_bytes(const uint8_t* p) {
  uint32_t x;
  std::memcpy(&x, p, 4);
  const __m256i spread = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
  __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(int(x)), spread);
  bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
  return _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1));
}

// ---- 32-element formats against BlockQ8A ----

// kKind: kSignedQ - q is signed, product via |q| * sign(x, q); kOffsetQ - q is unsigned and the
// weight is d * (q + kOffset), the offset applied once per row through the activation sums;
// kAffineQ - unsigned q, weight d * q + m.
enum Kind { kSignedQ, kOffsetQ, kAffineQ };

struct TQ4_0 {
  using B = BlockQ4_0;
  static constexpr Kind kKind = kOffsetQ;
  static constexpr float kOffset = -8.0f;
  static __m256i q(const B* b) { return load_nibbles(b->qs); }
  static float d(const B* b) { return h2f(b->d); }
  static float m(const B*) { return 0.0f; }
  static __m128 dm(const B* b) { return dd_of(&b->d); }
};
struct TQ4_1 {
  using B = BlockQ4_1;
  static constexpr Kind kKind = kAffineQ;
  static constexpr float kOffset = 0.0f;
  static __m256i q(const B* b) { return load_nibbles(b->qs); }
  static float d(const B* b) { return h2f(b->d); }
  static float m(const B* b) { return h2f(b->m); }
  static __m128 dm(const B* b) { return dm_of(&b->d); }
};
struct TQ5_0 {
  using B = BlockQ5_0;
  static constexpr Kind kKind = kOffsetQ;
  static constexpr float kOffset = -16.0f;
  static __m256i q(const B* b) {
    const __m256i hi = _mm256_and_si256(bits_to_bytes(b->qh), _mm256_set1_epi8(0x10));
    return _mm256_or_si256(load_nibbles(b->qs), hi);
  }
  static float d(const B* b) { return h2f(b->d); }
  static float m(const B*) { return 0.0f; }
  static __m128 dm(const B* b) { return dd_of(&b->d); }
};
struct TQ5_1 {
  using B = BlockQ5_1;
  static constexpr Kind kKind = kAffineQ;
  static constexpr float kOffset = 0.0f;
  static __m256i q(const B* b) {
    const __m256i hi = _mm256_and_si256(bits_to_bytes(b->qh), _mm256_set1_epi8(0x10));
    return _mm256_or_si256(load_nibbles(b->qs), hi);
  }
  static float d(const B* b) { return h2f(b->d); }
  static float m(const B* b) { return h2f(b->m); }
  static __m128 dm(const B* b) { return dm_of(&b->d); }
};
struct TQ8_0 {
  using B = BlockQ8_0;
  static constexpr Kind kKind = kSignedQ;
  static constexpr float kOffset = 0.0f;
  static __m256i q(const B* b) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b->qs)); }
  static float d(const B* b) { return h2f(b->d); }
  static float m(const B*) { return 0.0f; }
  static __m128 dm(const B* b) { return dd_of(&b->d); }
};
struct TIq4Nl {
  using B = BlockIq4Nl;
  static constexpr Kind kKind = kSignedQ;
  static constexpr float kOffset = 0.0f;
  static __m256i q(const B* b) {
    const __m256i table =
        _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4nlValues)));
    return _mm256_shuffle_epi8(table, load_nibbles(b->qs));
  }
  static float d(const B* b) { return h2f(b->d); }
  static float m(const B*) { return 0.0f; }
  static __m128 dm(const B* b) { return dd_of(&b->d); }
};

// Decode streams weights once; a software prefetch this far ahead measured faster than leaving it
// to the hardware prefetcher alone on short rows.
constexpr int kPrefetchBytes = 1024;

template <class T, int RR, int CC>
void tile_q8a(const uint8_t* w, size_t row_bytes, int64_t nb, const BlockQ8A* x, int64_t xs, float* y,
              int64_t ldy) {
  using B = typename T::B;
  constexpr bool kMin = T::kKind != kSignedQ;
  // Small tiles (the decode path) alternate two accumulator sets between even and odd blocks: with a
  // single chain the FMA latency, not memory, would bound a one-row dot product.
  constexpr int kSets = RR * CC <= 2 ? 2 : 1;
  __m256 acc[kSets][RR][CC];
  // Lane 1: sum over blocks of (weight min, or weight d) * activation block sum; lane 0 unused.
  __m128 macc[kSets][RR][CC];
  const B* wr[RR];
  for (int r = 0; r < RR; ++r) wr[r] = reinterpret_cast<const B*>(w + size_t(r) * row_bytes);
  for (int k = 0; k < kSets; ++k) {
    for (int r = 0; r < RR; ++r) {
      for (int c = 0; c < CC; ++c) {
        acc[k][r][c] = _mm256_setzero_ps();
        macc[k][r][c] = _mm_setzero_ps();
      }
    }
  }
  auto step = [&](int64_t b, int k) {
    __m256i q[RR], aq[RR];
    __m128 dm[RR];
    for (int r = 0; r < RR; ++r) {
      if constexpr (CC == 1)
        _mm_prefetch(reinterpret_cast<const char*>(wr[r] + b) + kPrefetchBytes, _MM_HINT_T0);
      q[r] = T::q(wr[r] + b);
      dm[r] = T::dm(wr[r] + b);
      if constexpr (T::kKind == kSignedQ) aq[r] = _mm256_sign_epi8(q[r], q[r]);
    }
    for (int c = 0; c < CC; ++c) {
      const BlockQ8A* xb = x + c * xs + b;
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb->qs));
      // (d, s) of the activation block in lanes 0, 1.
      const __m128 xds = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(&xb->d)));
      for (int r = 0; r < RR; ++r) {
        __m256i p;
        if constexpr (T::kKind == kSignedQ) {
          p = dot_u8i8(aq[r], _mm256_sign_epi8(xv, q[r]));
        } else {
          p = dot_u8i8(q[r], xv);
        }
        const __m128 prod = _mm_mul_ps(dm[r], xds);  // (d_w * d_x, m_w * s_x)
        if constexpr (kMin) macc[k][r][c] = _mm_add_ps(macc[k][r][c], prod);
        acc[k][r][c] = _mm256_fmadd_ps(_mm256_broadcastss_ps(prod), _mm256_cvtepi32_ps(p), acc[k][r][c]);
      }
    }
  };
  int64_t b = 0;
  if constexpr (kSets == 2) {
    for (; b + 2 <= nb; b += 2) {
      step(b, 0);
      step(b + 1, 1);
    }
  }
  for (; b < nb; ++b) step(b, 0);
  for (int r = 0; r < RR; ++r) {
    for (int c = 0; c < CC; ++c) {
      __m256 a = acc[0][r][c];
      __m128 ma = macc[0][r][c];
      if constexpr (kSets == 2) {
        a = _mm256_add_ps(a, acc[1][r][c]);
        ma = _mm_add_ps(ma, macc[1][r][c]);
      }
      float corr = 0.0f;
      if constexpr (kMin) {
        corr = _mm_cvtss_f32(_mm_movehdup_ps(ma));
        if constexpr (T::kKind == kOffsetQ) corr *= T::kOffset;
      }
      y[c * ldy + r] = hsum(a) + corr;
    }
  }
}

// ---- K-quant decode (one activation row): unpack in registers, no staging buffer ----

// Bytes (2k, 2k + 1) of every 16-bit lane: broadcasts int16 element k of each 128-bit lane.
inline __m256i bcast16_mask(int lo_elem, int hi_elem) {
  const auto m = [](int e) { return short(((2 * e + 1) << 8) | (2 * e)); };
  return _mm256_set_m128i(_mm_set1_epi16(m(hi_elem)), _mm_set1_epi16(m(lo_elem)));
}

// Q4_K / Q5_K: the eight 6-bit scales and mins as bytes (low word: sub-blocks 0..3).
inline void unpack_k4_scales(const uint8_t* q, uint64_t* sc, uint64_t* mn) {
  uint32_t a, b, c;
  std::memcpy(&a, q, 4);
  std::memcpy(&b, q + 4, 4);
  std::memcpy(&c, q + 8, 4);
  *sc = (a & 0x3f3f3f3fu) | (uint64_t((c & 0x0f0f0f0fu) | ((a >> 2) & 0x30303030u)) << 32);
  *mn = (b & 0x3f3f3f3fu) | (uint64_t(((c >> 4) & 0x0f0f0f0fu) | ((b >> 2) & 0x30303030u)) << 32);
}

template <bool kFifthBit, class B>
float vec_dot_k45(const B* w, const BlockQ8_K* x, int64_t nb) {
  const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    const B& wb = w[i];
    const BlockQ8_K& xb = x[i];
    uint64_t sc8, mn8;
    unpack_k4_scales(wb.scales, &sc8, &mn8);
    const __m256i scv = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(int64_t(sc8))));
    const __m128i mb = _mm_cvtsi64_si128(int64_t(mn8));
    const __m256i msum = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mb, mb)),
                                           _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.bsums)));
    __m256i hv = _mm256_setzero_si256();
    if constexpr (kFifthBit) hv = load32u(wb.qh);
    __m256i isum = _mm256_setzero_si256();
    for (int j = 0; j < 4; ++j) {
      const __m256i qv = load32u(wb.qs + 32 * j);
      __m256i lo = _mm256_and_si256(qv, m4);
      __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qv, 4), m4);
      if constexpr (kFifthBit) {
        lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hv, 2 * j), one), 4));
        hi = _mm256_or_si256(hi,
                             _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hv, 2 * j + 1), one), 4));
      }
      const __m256i p0 = _mm256_maddubs_epi16(lo, load32u(reinterpret_cast<const uint8_t*>(xb.qs) + 64 * j));
      const __m256i p1 =
          _mm256_maddubs_epi16(hi, load32u(reinterpret_cast<const uint8_t*>(xb.qs) + 64 * j + 32));
      isum =
          _mm256_add_epi32(isum, _mm256_madd_epi16(p0, _mm256_shuffle_epi8(scv, bcast16_mask(2 * j, 2 * j))));
      isum = _mm256_add_epi32(
          isum, _mm256_madd_epi16(p1, _mm256_shuffle_epi8(scv, bcast16_mask(2 * j + 1, 2 * j + 1))));
    }
    const __m128 dd = _mm_mul_ps(dm_of(&wb.d), _mm_set1_ps(xb.d));  // (d * dx, dmin * dx)
    acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(dd), _mm256_cvtepi32_ps(isum), acc);
    acc = _mm256_fnmadd_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dd)), _mm256_cvtepi32_ps(msum), acc);
  }
  return hsum(acc);
}

inline float vec_dot_q6k(const BlockQ6_K* w, const BlockQ8_K* x, int64_t nb) {
  const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(3);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    const BlockQ6_K& wb = w[i];
    const BlockQ8_K& xb = x[i];
    const __m128i sc8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wb.scales));
    const __m256i msum = _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc8),
                                           _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.bsums)));
    const __m256i sch[2] = {_mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(sc8)),
                            _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(_mm_srli_si128(sc8, 8)))};
    __m256i isum = _mm256_setzero_si256();
    for (int h = 0; h < 2; ++h) {
      const __m256i l0 = load32u(wb.ql + 64 * h), l1 = load32u(wb.ql + 64 * h + 32);
      const __m256i hq = load32u(wb.qh + 32 * h);
      const __m256i lo[4] = {_mm256_and_si256(l0, m4), _mm256_and_si256(l1, m4),
                             _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                             _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4)};
      for (int k = 0; k < 4; ++k) {
        const __m256i q =
            _mm256_or_si256(lo[k], _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hq, 2 * k), m2), 4));
        const __m256i p =
            _mm256_maddubs_epi16(q, load32u(reinterpret_cast<const uint8_t*>(xb.qs) + 128 * h + 32 * k));
        isum = _mm256_add_epi32(
            isum, _mm256_madd_epi16(p, _mm256_shuffle_epi8(sch[h], bcast16_mask(2 * k, 2 * k + 1))));
      }
    }
    // w = d * sc * (q - 32): subtract 32 * sum(sc * bsums) in the integer domain.
    isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(msum, 5));
    acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(wb.d) * xb.d), _mm256_cvtepi32_ps(isum), acc);
  }
  return hsum(acc);
}

// Q2_K / Q3_K: 16 scales per super-block; chunk k (32 values) covers groups 2k and 2k + 1.
// sc16[h] holds groups 8h .. 8h + 7 as int16 in both 128-bit lanes.
inline __m256i k16_chunk_scale(const __m256i* sc16, int k) {
  return _mm256_shuffle_epi8(sc16[k / 4], bcast16_mask(2 * (k % 4), 2 * (k % 4) + 1));
}

inline float vec_dot_q2k(const BlockQ2_K* w, const BlockQ8_K* x, int64_t nb) {
  const __m128i m4 = _mm_set1_epi8(0x0F);
  const __m256i m2 = _mm256_set1_epi8(3);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    const BlockQ2_K& wb = w[i];
    const BlockQ8_K& xb = x[i];
    const __m128i sb = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wb.scales));
    const __m128i sc = _mm_and_si128(sb, m4);
    const __m128i mn = _mm_and_si128(_mm_srli_epi16(sb, 4), m4);
    const __m256i msum = _mm256_madd_epi16(_mm256_cvtepu8_epi16(mn),
                                           _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.bsums)));
    const __m256i sc16[2] = {_mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sc)),
                             _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_srli_si128(sc, 8)))};
    __m256i isum = _mm256_setzero_si256();
    for (int h = 0; h < 2; ++h) {
      const __m256i v = load32u(wb.qs + 32 * h);
      for (int j = 0; j < 4; ++j) {
        const int k = 4 * h + j;
        const __m256i q = _mm256_and_si256(_mm256_srli_epi16(v, 2 * j), m2);
        const __m256i p = _mm256_maddubs_epi16(q, load32u(reinterpret_cast<const uint8_t*>(xb.qs) + 32 * k));
        isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, k16_chunk_scale(sc16, k)));
      }
    }
    const __m128 dd = _mm_mul_ps(dm_of(&wb.d), _mm_set1_ps(xb.d));  // (d * dx, dmin * dx)
    acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(dd), _mm256_cvtepi32_ps(isum), acc);
    acc = _mm256_fnmadd_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dd)), _mm256_cvtepi32_ps(msum), acc);
  }
  return hsum(acc);
}

inline float vec_dot_q3k(const BlockQ3_K* w, const BlockQ8_K* x, int64_t nb) {
  const __m256i m2 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    const BlockQ3_K& wb = w[i];
    const BlockQ8_K& xb = x[i];
    // 16 signed 6-bit scales: low nibbles from bytes 0..7, top two bits from bytes 8..11.
    uint32_t a, b, c;
    std::memcpy(&a, wb.scales, 4);
    std::memcpy(&b, wb.scales + 4, 4);
    std::memcpy(&c, wb.scales + 8, 4);
    const uint32_t s0 = (a & 0x0f0f0f0fu) | ((c & 0x03030303u) << 4);
    const uint32_t s1 = (b & 0x0f0f0f0fu) | (((c >> 2) & 0x03030303u) << 4);
    const uint32_t s2 = ((a >> 4) & 0x0f0f0f0fu) | (((c >> 4) & 0x03030303u) << 4);
    const uint32_t s3 = ((b >> 4) & 0x0f0f0f0fu) | (((c >> 6) & 0x03030303u) << 4);
    const __m128i sc = _mm_sub_epi8(_mm_setr_epi32(int(s0), int(s1), int(s2), int(s3)), _mm_set1_epi8(32));
    const __m256i msum = _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc),
                                           _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.bsums)));
    const __m256i sc16[2] = {_mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(sc)),
                             _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(_mm_srli_si128(sc, 8)))};
    const __m256i hm = load32u(wb.hmask);
    __m256i isum = _mm256_setzero_si256();
    for (int h = 0; h < 2; ++h) {
      const __m256i v = load32u(wb.qs + 32 * h);
      for (int j = 0; j < 4; ++j) {
        const int k = 4 * h + j;
        // q' = low bits + 4 * high bit (0..7); the stored value is q' - 4.
        const __m256i hb = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hm, k), one), 2);
        const __m256i q = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 2 * j), m2), hb);
        const __m256i p = _mm256_maddubs_epi16(q, load32u(reinterpret_cast<const uint8_t*>(xb.qs) + 32 * k));
        isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, k16_chunk_scale(sc16, k)));
      }
    }
    isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(msum, 2));
    acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(wb.d) * xb.d), _mm256_cvtepi32_ps(isum), acc);
  }
  return hsum(acc);
}

struct KQ2;
struct KQ3;
struct KQ4;
struct KQ5;
struct KQ6;

template <class T>
float vec_dot_direct(const uint8_t* w, const BlockQ8_K* x, int64_t nb) {
  if constexpr (std::is_same_v<T, KQ4>)
    return vec_dot_k45<false>(reinterpret_cast<const BlockQ4_K*>(w), x, nb);
  if constexpr (std::is_same_v<T, KQ5>)
    return vec_dot_k45<true>(reinterpret_cast<const BlockQ5_K*>(w), x, nb);
  if constexpr (std::is_same_v<T, KQ6>) return vec_dot_q6k(reinterpret_cast<const BlockQ6_K*>(w), x, nb);
  if constexpr (std::is_same_v<T, KQ2>) return vec_dot_q2k(reinterpret_cast<const BlockQ2_K*>(w), x, nb);
  if constexpr (std::is_same_v<T, KQ3>) return vec_dot_q3k(reinterpret_cast<const BlockQ3_K*>(w), x, nb);
  return 0.0f;
}
template <class T>
constexpr bool kHasDirect = std::is_same_v<T, KQ4> || std::is_same_v<T, KQ5> || std::is_same_v<T, KQ6> ||
                            std::is_same_v<T, KQ2> || std::is_same_v<T, KQ3>;

// ---- K-quants against Q8_K (prefill tiles) ----
// Each weight super-block is first unpacked into a uniform form: 256 unsigned bytes q, a scale per
// 16 values and a "min" per 16 values so that w = d * sc * q - dmin * mn. The dot product with a
// Q8_K block is then d * dx * sum(sc * q . x) - dmin * dx * sum(mn * bsums).
struct alignas(32) KPrep {
  uint8_t q[256];
  int16_t sc[8][16];  // scale vector for 32-value chunk k: groups 2k (low 8 lanes), 2k + 1
  int16_t mn[16];
  float d, dmin;
};

inline void set_chunk_scales(KPrep& p, int k, int s0, int s1) {
  for (int i = 0; i < 8; ++i) {
    p.sc[k][i] = int16_t(s0);
    p.sc[k][8 + i] = int16_t(s1);
  }
}

// Local copy of the 6-bit scale unpacking (not the shared inline one: see the file comment).
inline void scale_min_k4(int j, const uint8_t* q, int* sc, int* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

struct KQ4 {
  using B = BlockQ4_K;
  static void prep(const B* b, KPrep& p) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int g = 0; g < 4; ++g) {
      const __m256i v = load32u(b->qs + 32 * g);
      store32(p.q + 64 * g, _mm256_and_si256(v, m4));
      store32(p.q + 64 * g + 32, _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
    }
    for (int k = 0; k < 8; ++k) {
      int sc, m;
      scale_min_k4(k, b->scales, &sc, &m);
      set_chunk_scales(p, k, sc, sc);
      p.mn[2 * k] = p.mn[2 * k + 1] = int16_t(m);
    }
    p.d = h2f(b->d);
    p.dmin = h2f(b->dmin);
  }
};

struct KQ5 {
  using B = BlockQ5_K;
  static void prep(const B* b, KPrep& p) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
    const __m256i hv = load32u(b->qh);
    for (int g = 0; g < 4; ++g) {
      const __m256i v = load32u(b->qs + 32 * g);
      const __m256i h0 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hv, 2 * g), one), 4);
      const __m256i h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hv, 2 * g + 1), one), 4);
      store32(p.q + 64 * g, _mm256_or_si256(_mm256_and_si256(v, m4), h0));
      store32(p.q + 64 * g + 32, _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), m4), h1));
    }
    for (int k = 0; k < 8; ++k) {
      int sc, m;
      scale_min_k4(k, b->scales, &sc, &m);
      set_chunk_scales(p, k, sc, sc);
      p.mn[2 * k] = p.mn[2 * k + 1] = int16_t(m);
    }
    p.d = h2f(b->d);
    p.dmin = h2f(b->dmin);
  }
};

struct KQ6 {
  using B = BlockQ6_K;
  static void prep(const B* b, KPrep& p) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(3);
    for (int h = 0; h < 2; ++h) {
      const __m256i l0 = load32u(b->ql + 64 * h), l1 = load32u(b->ql + 64 * h + 32);
      const __m256i hq = load32u(b->qh + 32 * h);
      const __m256i lo[4] = {_mm256_and_si256(l0, m4), _mm256_and_si256(l1, m4),
                             _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                             _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4)};
      for (int k = 0; k < 4; ++k) {
        const __m256i hi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hq, 2 * k), m2), 4);
        store32(p.q + 128 * h + 32 * k, _mm256_or_si256(lo[k], hi));
      }
    }
    for (int k = 0; k < 8; ++k) set_chunk_scales(p, k, b->scales[2 * k], b->scales[2 * k + 1]);
    for (int g = 0; g < 16; ++g) p.mn[g] = int16_t(32 * b->scales[g]);
    p.d = p.dmin = h2f(b->d);
  }
};

struct KQ2 {
  using B = BlockQ2_K;
  static void prep(const B* b, KPrep& p) {
    const __m256i m2 = _mm256_set1_epi8(3);
    for (int h = 0; h < 2; ++h) {
      const __m256i v = load32u(b->qs + 32 * h);
      for (int j = 0; j < 4; ++j)
        store32(p.q + 128 * h + 32 * j, _mm256_and_si256(_mm256_srli_epi16(v, 2 * j), m2));
    }
    for (int k = 0; k < 8; ++k) set_chunk_scales(p, k, b->scales[2 * k] & 0xF, b->scales[2 * k + 1] & 0xF);
    for (int g = 0; g < 16; ++g) p.mn[g] = int16_t(b->scales[g] >> 4);
    p.d = h2f(b->d);
    p.dmin = h2f(b->dmin);
  }
};

struct KQ3 {
  using B = BlockQ3_K;
  static void prep(const B* b, KPrep& p) {
    // Stored value is low - 4 * (1 - hbit); we keep q' = low + 4 * hbit (0..7) and fold the -4
    // into the min term.
    const __m256i m2 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
    const __m256i hm = load32u(b->hmask);
    for (int h = 0; h < 2; ++h) {
      const __m256i v = load32u(b->qs + 32 * h);
      for (int j = 0; j < 4; ++j) {
        const int k = 4 * h + j;
        const __m256i hb = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hm, k), one), 2);
        store32(p.q + 32 * k, _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 2 * j), m2), hb));
      }
    }
    int sc[16];
    for (int g = 0; g < 16; ++g) {
      const int lo = (b->scales[g % 8] >> (4 * (g / 8))) & 0xF;
      const int hi = (b->scales[8 + g % 4] >> (2 * (g / 4))) & 3;
      sc[g] = (lo | (hi << 4)) - 32;
      p.mn[g] = int16_t(4 * sc[g]);
    }
    for (int k = 0; k < 8; ++k) set_chunk_scales(p, k, sc[2 * k], sc[2 * k + 1]);
    p.d = p.dmin = h2f(b->d);
  }
};

// Prefill for the K-quants: each weight super-block is unpacked (prep) once per activation chunk
// and then multiplied against every activation row of the chunk; per-(row, activation) vector
// accumulators live in a small L1-resident array.
template <class T, int RR>
void panel_q8k(const uint8_t* w, size_t row_bytes, int64_t nb, const BlockQ8_K* x, int64_t xs, int nt,
               float* y, int64_t ldy) {
  using B = typename T::B;
  alignas(32) __m256 acc[RR][kActChunk];
  for (int r = 0; r < RR; ++r) {
    for (int c = 0; c < nt; ++c) acc[r][c] = _mm256_setzero_ps();
  }
  KPrep prep[RR];
  for (int64_t b = 0; b < nb; ++b) {
    for (int r = 0; r < RR; ++r) T::prep(reinterpret_cast<const B*>(w + size_t(r) * row_bytes) + b, prep[r]);
    for (int c = 0; c < nt; ++c) {
      const BlockQ8_K* xb = x + c * xs + b;
      const __m256i bsums = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb->bsums));
      __m256i xv[8];
      for (int k = 0; k < 8; ++k) xv[k] = load32u(reinterpret_cast<const uint8_t*>(xb->qs) + 32 * k);
      for (int r = 0; r < RR; ++r) {
        const KPrep& p = prep[r];
        __m256i isum = _mm256_setzero_si256();
        for (int k = 0; k < 8; ++k) {
          const __m256i prod =
              _mm256_maddubs_epi16(_mm256_load_si256(reinterpret_cast<const __m256i*>(p.q + 32 * k)), xv[k]);
          isum = _mm256_add_epi32(
              isum, _mm256_madd_epi16(prod, _mm256_load_si256(reinterpret_cast<const __m256i*>(p.sc[k]))));
        }
        const __m256i msum =
            _mm256_madd_epi16(_mm256_load_si256(reinterpret_cast<const __m256i*>(p.mn)), bsums);
        __m256 a = _mm256_fmadd_ps(_mm256_set1_ps(p.d * xb->d), _mm256_cvtepi32_ps(isum), acc[r][c]);
        acc[r][c] = _mm256_fnmadd_ps(_mm256_set1_ps(p.dmin * xb->d), _mm256_cvtepi32_ps(msum), a);
      }
    }
  }
  for (int r = 0; r < RR; ++r) {
    for (int c = 0; c < nt; ++c) y[c * ldy + r] = hsum(acc[r][c]);
  }
}

// ---- float weights against f32 activations ----

struct TF32 {
  static __m256 load(const uint8_t* w, int64_t i) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(w) + i);
  }
  static float get(const uint8_t* w, int64_t i) { return reinterpret_cast<const float*>(w)[i]; }
};
struct TF16 {
  static __m256 load(const uint8_t* w, int64_t i) {
    return _mm256_cvtph_ps(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(reinterpret_cast<const uint16_t*>(w) + i)));
  }
  static float get(const uint8_t* w, int64_t i) {
    uint16_t h;
    std::memcpy(&h, w + 2 * i, 2);
    return h2f(h);
  }
};
struct TBF16 {
  static __m256 load(const uint8_t* w, int64_t i) {
    const __m128i h =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(reinterpret_cast<const uint16_t*>(w) + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  static float get(const uint8_t* w, int64_t i) {
    uint16_t h;
    std::memcpy(&h, w + 2 * i, 2);
    const uint32_t u = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};

template <class T, int RR, int CC>
void tile_f(const uint8_t* w, size_t row_bytes, int64_t cols, const float* x, int64_t xs, float* y,
            int64_t ldy) {
  __m256 acc[RR][CC];
  for (int r = 0; r < RR; ++r) {
    for (int c = 0; c < CC; ++c) acc[r][c] = _mm256_setzero_ps();
  }
  int64_t i = 0;
  for (; i + 8 <= cols; i += 8) {
    __m256 wv[RR];
    for (int r = 0; r < RR; ++r) wv[r] = T::load(w + size_t(r) * row_bytes, i);
    for (int c = 0; c < CC; ++c) {
      const __m256 xv = _mm256_loadu_ps(x + c * xs + i);
      for (int r = 0; r < RR; ++r) acc[r][c] = _mm256_fmadd_ps(wv[r], xv, acc[r][c]);
    }
  }
  for (int r = 0; r < RR; ++r) {
    for (int c = 0; c < CC; ++c) {
      float s = hsum(acc[r][c]);
      for (int64_t j = i; j < cols; ++j) s += T::get(w + size_t(r) * row_bytes, j) * x[c * xs + j];
      y[c * ldy + r] = s;
    }
  }
}

// ---- drivers: walk a rectangle of (weight rows) x (activation rows) in register tiles ----

using TileFn = void (*)(const uint8_t* w, size_t row_bytes, int64_t n, const void* x, int64_t xs, float* y,
                        int64_t ldy);

template <class T, int R, int C>
void tile_q8a_erased(const uint8_t* w, size_t rb, int64_t n, const void* x, int64_t xs, float* y,
                     int64_t ldy) {
  tile_q8a<T, R, C>(w, rb, n / 32, static_cast<const BlockQ8A*>(x), xs, y, ldy);
}
// Decode only (C == 1): K-quant prefill goes through panel_q8k.
template <class T, int R, int C>
void tile_q8k_erased(const uint8_t* w, size_t rb, int64_t n, const void* x, int64_t, float* y, int64_t) {
  static_assert(C == 1);
  for (int r = 0; r < R; ++r)
    y[r] = vec_dot_direct<T>(w + size_t(r) * rb, static_cast<const BlockQ8_K*>(x), n / 256);
}
template <class T, int R, int C>
void tile_f_erased(const uint8_t* w, size_t rb, int64_t n, const void* x, int64_t xs, float* y, int64_t ldy) {
  tile_f<T, R, C>(w, rb, n, static_cast<const float*>(x), xs, y, ldy);
}

// A table of every tile shape up to RR x CC, so edges of the rectangle run the exact shape.
template <int RR, int CC>
struct Tiles {
  TileFn fn[RR][CC];
};

template <template <class, int, int> class F, class T, int RR, int CC, size_t... I>
constexpr Tiles<RR, CC> make_tiles(std::index_sequence<I...>) {
  Tiles<RR, CC> t{};
  ((t.fn[I / CC][I % CC] = &F<T, int(I / CC) + 1, int(I % CC) + 1>::run), ...);
  return t;
}

template <class T, int R, int C>
struct Q8AFn {
  static void run(const uint8_t* w, size_t rb, int64_t n, const void* x, int64_t xs, float* y, int64_t ldy) {
    tile_q8a_erased<T, R, C>(w, rb, n, x, xs, y, ldy);
  }
};
template <class T, int R, int C>
struct Q8KFn {
  static void run(const uint8_t* w, size_t rb, int64_t n, const void* x, int64_t xs, float* y, int64_t ldy) {
    tile_q8k_erased<T, R, C>(w, rb, n, x, xs, y, ldy);
  }
};
template <class T, int R, int C>
struct FFn {
  static void run(const uint8_t* w, size_t rb, int64_t n, const void* x, int64_t xs, float* y, int64_t ldy) {
    tile_f_erased<T, R, C>(w, rb, n, x, xs, y, ldy);
  }
};

// Decode (one activation row) walks one weight row at a time: measured on Zen 3 with a 150M model,
// one sequential stream per thread reads memory faster than 2 or 4 interleaved rows (Q8_0 decode
// 182 vs 127 tok/s with 2 threads).
constexpr int kDecodeRows = 1;

template <int RR, int CC>
void walk(const Tiles<RR, CC>& tiles, const Tiles<kDecodeRows, 1>& dec, const uint8_t* w, size_t rb,
          int64_t cols, int64_t r0, int64_t r1, const uint8_t* xa, size_t xa_stride, int64_t xs_units,
          int64_t t0, int64_t t1, float* y, int64_t ldy) {
  if (t1 - t0 == 1) {
    for (int64_t r = r0; r < r1; r += kDecodeRows) {
      const int rr = int(std::min<int64_t>(kDecodeRows, r1 - r));
      dec.fn[rr - 1][0](w + size_t(r) * rb, rb, cols, xa + size_t(t0) * xa_stride, xs_units, y + t0 * ldy + r,
                        ldy);
    }
    return;
  }
  for (int64_t tc = t0; tc < t1; tc += kActChunk) {
    const int64_t tc1 = std::min(t1, tc + kActChunk);
    for (int64_t r = r0; r < r1; r += RR) {
      const int rr = int(std::min<int64_t>(RR, r1 - r));
      for (int64_t t = tc; t < tc1; t += CC) {
        const int cc = int(std::min<int64_t>(CC, tc1 - t));
        tiles.fn[rr - 1][cc - 1](w + size_t(r) * rb, rb, cols, xa + size_t(t) * xa_stride, xs_units,
                                 y + t * ldy + r, ldy);
      }
    }
  }
}

// Prefill tile shapes (weight rows x activation rows), picked by measurement on AVX2.
constexpr int kQ8aRR = 2, kQ8aCC = 4;
constexpr int kFRR = 3, kFCC = 4;

template <class T>
struct Q8AKernel {
  static constexpr auto kTiles =
      make_tiles<Q8AFn, T, kQ8aRR, kQ8aCC>(std::make_index_sequence<kQ8aRR * kQ8aCC>());
  static constexpr auto kDec = make_tiles<Q8AFn, T, kDecodeRows, 1>(std::make_index_sequence<kDecodeRows>());
  static void run(const uint8_t* w, size_t rb, int64_t cols, int64_t r0, int64_t r1, const uint8_t* xa,
                  size_t xa_stride, int64_t t0, int64_t t1, float* y, int64_t ldy) {
    walk(kTiles, kDec, w, rb, cols, r0, r1, xa, xa_stride, int64_t(xa_stride / sizeof(BlockQ8A)), t0, t1, y,
         ldy);
  }
};
template <class T>
struct Q8KKernel {
  static constexpr auto kDec = make_tiles<Q8KFn, T, kDecodeRows, 1>(std::make_index_sequence<kDecodeRows>());
  static void run(const uint8_t* w, size_t rb, int64_t cols, int64_t r0, int64_t r1, const uint8_t* xa,
                  size_t xa_stride, int64_t t0, int64_t t1, float* y, int64_t ldy) {
    const int64_t xs = int64_t(xa_stride / sizeof(BlockQ8_K));
    if (t1 - t0 <= 1) {
      walk(kDec, kDec, w, rb, cols, r0, r1, xa, xa_stride, xs, t0, t1, y, ldy);
      return;
    }
    constexpr int kRR = 4;
    for (int64_t tc = t0; tc < t1; tc += kActChunk) {
      const int nt = int(std::min(t1, tc + kActChunk) - tc);
      const auto* xb = reinterpret_cast<const BlockQ8_K*>(xa + size_t(tc) * xa_stride);
      int64_t r = r0;
      for (; r + kRR <= r1; r += kRR)
        panel_q8k<T, kRR>(w + size_t(r) * rb, rb, cols / 256, xb, xs, nt, y + tc * ldy + r, ldy);
      for (; r < r1; ++r)
        panel_q8k<T, 1>(w + size_t(r) * rb, rb, cols / 256, xb, xs, nt, y + tc * ldy + r, ldy);
    }
  }
};
template <class T>
struct FKernel {
  static constexpr auto kTiles = make_tiles<FFn, T, kFRR, kFCC>(std::make_index_sequence<kFRR * kFCC>());
  static constexpr auto kDec = make_tiles<FFn, T, kDecodeRows, 1>(std::make_index_sequence<kDecodeRows>());
  static void run(const uint8_t* w, size_t rb, int64_t cols, int64_t r0, int64_t r1, const uint8_t* xa,
                  size_t xa_stride, int64_t t0, int64_t t1, float* y, int64_t ldy) {
    walk(kTiles, kDec, w, rb, cols, r0, r1, xa, xa_stride, int64_t(xa_stride / sizeof(float)), t0, t1, y,
         ldy);
  }
};

// I-quant, ternary and FP4 kernels: matmul_iq_x86_impl.h, included after this file.
bool gemm_iq(GgmlType type, const uint8_t* w, size_t rb, int64_t cols, int64_t r0, int64_t r1,
             const uint8_t* xa, size_t xa_stride, int64_t t0, int64_t t1, float* y, int64_t ldy);
bool dequantize_iq(GgmlType t, const void* src, float* dst, int64_t n);

bool gemm(GgmlType type, const uint8_t* w, size_t rb, int64_t cols, int64_t r0, int64_t r1, const uint8_t* xa,
          size_t xa_stride, int64_t t0, int64_t t1, float* y, int64_t ldy) {
  switch (type) {
    case GgmlType::Q4_0:
      Q8AKernel<TQ4_0>::run(w, rb, cols, r0, r1, xa, xa_stride, t0, t1, y, ldy);
      return true;
    case GgmlType::Q4_1:
      Q8AKernel<TQ4_1>::run(w, rb, cols, r0, r1, xa, xa_stride, t0, t1, y, ldy);
      return true;
    case GgmlType::Q5_0:
      Q8AKernel<TQ5_0>::run(w, rb, cols, r0, r1, xa, xa_stride, t0, t1, y, ldy);
      return true;
    case GgmlType::Q5_1:
      Q8AKernel<TQ5_1>::run(w, rb, cols, r0, r1, xa, xa_stride, t0, t1, y, ldy);
      return true;
    case GgmlType::Q8_0:
      Q8AKernel<TQ8_0>::run(w, rb, cols, r0, r1, xa, xa_stride, t0, t1, y, ldy);
      return true;
    case GgmlType::IQ4_NL:
      Q8AKernel<TIq4Nl>::run(w, rb, cols, r0, r1, xa, xa_stride, t0, t1, y, ldy);
      return true;
    case GgmlType::Q2_K:
      Q8KKernel<KQ2>::run(w, rb, cols, r0, r1, xa, xa_stride, t0, t1, y, ldy);
      return true;
    case GgmlType::Q3_K:
      Q8KKernel<KQ3>::run(w, rb, cols, r0, r1, xa, xa_stride, t0, t1, y, ldy);
      return true;
    case GgmlType::Q4_K:
      Q8KKernel<KQ4>::run(w, rb, cols, r0, r1, xa, xa_stride, t0, t1, y, ldy);
      return true;
    case GgmlType::Q5_K:
      Q8KKernel<KQ5>::run(w, rb, cols, r0, r1, xa, xa_stride, t0, t1, y, ldy);
      return true;
    case GgmlType::Q6_K:
      Q8KKernel<KQ6>::run(w, rb, cols, r0, r1, xa, xa_stride, t0, t1, y, ldy);
      return true;
    case GgmlType::F32:
      FKernel<TF32>::run(w, rb, cols, r0, r1, xa, xa_stride, t0, t1, y, ldy);
      return true;
    case GgmlType::F16:
      FKernel<TF16>::run(w, rb, cols, r0, r1, xa, xa_stride, t0, t1, y, ldy);
      return true;
    case GgmlType::BF16:
      FKernel<TBF16>::run(w, rb, cols, r0, r1, xa, xa_stride, t0, t1, y, ldy);
      return true;
    default:
      return gemm_iq(type, w, rb, cols, r0, r1, xa, xa_stride, t0, t1, y, ldy);
  }
}

// ---- activation quantizers ----

inline __m256 abs_ps(__m256 v) {
  return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v);
}

inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

// Rounds 32 floats times id to int8, stores them in order; returns their sum.
inline int quantize32(const float* x, float id, int8_t* out) {
  const __m256 mul = _mm256_set1_ps(id);
  __m256i i[4];
  for (int k = 0; k < 4; ++k) {
    i[k] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * k), mul),
                                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  const int sum = hsum_i32(_mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3])));
  // packs work per 128-bit lane; the final permute restores element order.
  const __m256i a = _mm256_packs_epi32(i[0], i[1]);
  const __m256i b = _mm256_packs_epi32(i[2], i[3]);
  __m256i q = _mm256_packs_epi16(a, b);
  q = _mm256_permutevar8x32_epi32(q, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), q);
  return sum;
}

void quantize_q8a(const float* x, BlockQ8A* y, int64_t n) {
  for (int64_t b = 0; b < n / 32; ++b) {
    const float* xb = x + 32 * b;
    __m256 mx = abs_ps(_mm256_loadu_ps(xb));
    for (int k = 1; k < 4; ++k) mx = _mm256_max_ps(mx, abs_ps(_mm256_loadu_ps(xb + 8 * k)));
    const float amax = hmax(mx);
    const float d = amax / 127.0f;
    const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
    const int sum = quantize32(xb, id, y[b].qs);
    y[b].d = d;
    y[b].s = d * float(sum);
  }
}

void quantize_q8k(const float* x, BlockQ8_K* y, int64_t n) {
  for (int64_t b = 0; b < n / 256; ++b) {
    const float* xb = x + 256 * b;
    __m256 mx = _mm256_setzero_ps();
    for (int k = 0; k < 32; ++k) mx = _mm256_max_ps(mx, abs_ps(_mm256_loadu_ps(xb + 8 * k)));
    const float amax = hmax(mx);
    const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
    for (int k = 0; k < 8; ++k) quantize32(xb + 32 * k, id, y[b].qs + 32 * k);
    for (int g = 0; g < 16; ++g) {
      // 16 int8 -> int16 and a horizontal sum.
      const __m256i v =
          _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(y[b].qs + 16 * g)));
      y[b].bsums[g] = int16_t(hsum_i32(_mm256_madd_epi16(v, _mm256_set1_epi16(1))));
    }
    y[b].d = amax / 127.0f;
  }
}

// ---- SIMD decoders for the common formats (get_row, fallbacks) ----

template <class T>
void dequant_q8a_type(const void* src, float* dst, int64_t n) {
  const auto* b = static_cast<const typename T::B*>(src);
  for (int64_t i = 0; i < n / 32; ++i) {
    const __m256i q = T::q(b + i);
    const __m256 d = _mm256_set1_ps(T::d(b + i));
    const __m256 m = _mm256_set1_ps(T::m(b + i));
    const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
    for (int k = 0; k < 4; ++k) {
      __m256i v = T::kKind == kSignedQ ? _mm256_cvtepi8_epi32(parts[k]) : _mm256_cvtepu8_epi32(parts[k]);
      if constexpr (T::kKind == kOffsetQ) v = _mm256_add_epi32(v, _mm256_set1_epi32(int(T::kOffset)));
      // Same operation order as the reference (d * q + m, no fused multiply-add) for bit-exactness.
      __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(v), d);
      if constexpr (T::kKind == kAffineQ) f = _mm256_add_ps(f, m);
      _mm256_storeu_ps(dst + 32 * i + 8 * k, f);
    }
  }
}

bool dequantize(GgmlType t, const void* src, float* dst, int64_t n) {
  switch (t) {
    case GgmlType::Q4_0:
      dequant_q8a_type<TQ4_0>(src, dst, n);
      return true;
    case GgmlType::Q4_1:
      dequant_q8a_type<TQ4_1>(src, dst, n);
      return true;
    case GgmlType::Q5_0:
      dequant_q8a_type<TQ5_0>(src, dst, n);
      return true;
    case GgmlType::Q5_1:
      dequant_q8a_type<TQ5_1>(src, dst, n);
      return true;
    case GgmlType::Q8_0:
      dequant_q8a_type<TQ8_0>(src, dst, n);
      return true;
    case GgmlType::IQ4_NL:
      dequant_q8a_type<TIq4Nl>(src, dst, n);
      return true;
    case GgmlType::F16: {
      const auto* s = static_cast<const uint8_t*>(src);
      int64_t i = 0;
      for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, TF16::load(s, i));
      for (; i < n; ++i) dst[i] = TF16::get(s, i);
      return true;
    }
    default:
      return dequantize_iq(t, src, dst, n);
  }
}

#include "backend/cpu/matmul_panel_x86.h"
// After the panel kernels, which it uses.
#include "backend/cpu/matmul_packed_x86.h"

}  // namespace

const IsaKernels* kernels() {
  static const IsaKernels k{QLEAP_ISA_NAME,
                            &quantize_q8a,
                            &quantize_q8k,
                            &gemm,
                            &dequantize,
                            nullptr,
                            &panel::panel_matmul,
                            &packed::packed_matmul,
                            &packed::packed_matmul_many};
  return &k;
}

}  // namespace qleap::kern::QLEAP_ISA_NS
