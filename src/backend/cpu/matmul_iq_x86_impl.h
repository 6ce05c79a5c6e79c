// x86 kernels for the i-quants (IQ1_S .. IQ4_XS), the ternary formats (TQ1_0, TQ2_0) and the FP4
// formats (MXFP4, NVFP4), compiled once per ISA like matmul_x86_impl.h: matmul_avx2.cpp and
// matmul_avx512.cpp include this file right after that one, and it reopens the same per-ISA
// anonymous namespace, so it uses that file's helpers and exports nothing.
//
// Scheme: the 256-element formats run against Q8_K activations. Every format is described by a
// traits struct that turns a weight block into, per 32 weights, unsigned magnitudes u and a sign
// vector s (the weight is u * sign(s)), an int8 scale per 16 weights and one float factor, so that
//   dot(block, x) = factor * dx * sum_g scale_g * sum_{i in g} u_i * sign(x_i, s_i).
// Decode (one activation row) unpacks in registers; prefill unpacks each weight super-block once
// per chunk of activation rows and reuses it for all of them. MXFP4 is a 32-element signed
// codebook format and goes through the Q8A tiles of matmul_x86_impl.h; NVFP4 (64 weights, a scale
// per 16) has its own Q8A row kernel.
#include <array>

#include "core/cpu_features.h"
#include "quant/block_iq1_m.h"
#include "quant/block_iq1_s.h"
#include "quant/block_iq2_s.h"
#include "quant/block_iq2_xs.h"
#include "quant/block_iq2_xxs.h"
#include "quant/block_iq3_s.h"
#include "quant/block_iq3_xxs.h"
#include "quant/block_iq4_xs.h"
#include "quant/block_mxfp4.h"
#include "quant/block_nvfp4.h"
#include "quant/block_tq1_0.h"
#include "quant/block_tq2_0.h"

namespace qleap::kern::QLEAP_ISA_NS {
namespace {

// kIqKsigns expanded to one byte per weight: 0x01 (keep) or 0xFF (negate), for _mm256_sign_epi8.
constexpr std::array<uint64_t, 128> make_sign_masks() {
  std::array<uint64_t, 128> t{};
  for (int i = 0; i < 128; ++i) {
    uint64_t v = 0;
    for (int j = 0; j < 8; ++j) v |= uint64_t((kIqKsigns[i] >> j) & 1 ? 0xFF : 0x01) << (8 * j);
    t[size_t(i)] = v;
  }
  return t;
}
alignas(64) constexpr std::array<uint64_t, 128> kSignMask = make_sign_masks();

// 32 sign bits (little-endian) -> bytes 0xFF (bit set: negate) or 0x01.
inline __m256i sign_bits_to_mask(const uint8_t* p) {
  return _mm256_or_si256(bits_to_bytes(p), _mm256_set1_epi8(1));
}

// Table rows -> one vector, by broadcast loads and blends: a broadcast from memory is a load alone
// and a blend runs on any vector port, where the inserts that _mm256_set_* compiles to take the
// shuffle port (two ops each on Intel), which bound the decode of these formats. Used by every
// format's prefill unpacking, and by the AVX2 decode kernels (matmul_iq_avx2.h) on CPUs without
// fast gathers (AMD: microcoded there, plain loads are not).
inline __m256i rows64(const uint64_t* t, uint32_t i0, uint32_t i1, uint32_t i2, uint32_t i3) {
  const __m256i a = _mm256_set1_epi64x(int64_t(t[i0])), b = _mm256_set1_epi64x(int64_t(t[i1]));
  const __m256i c = _mm256_set1_epi64x(int64_t(t[i2])), d = _mm256_set1_epi64x(int64_t(t[i3]));
  return _mm256_blend_epi32(_mm256_blend_epi32(a, b, 0x0C), _mm256_blend_epi32(c, d, 0xC0), 0xF0);
}
inline __m256i rows32(const uint32_t* t, const uint32_t* i) {
  __m256i v[8];
  for (int j = 0; j < 8; ++j) v[j] = _mm256_set1_epi32(int(t[i[j]]));
  const __m256i ab = _mm256_blend_epi32(v[0], v[1], 0x02), cd = _mm256_blend_epi32(v[2], v[3], 0x08);
  const __m256i ef = _mm256_blend_epi32(v[4], v[5], 0x20), gh = _mm256_blend_epi32(v[6], v[7], 0x80);
  return _mm256_blend_epi32(_mm256_blend_epi32(ab, cd, 0x0C), _mm256_blend_epi32(ef, gh, 0xC0), 0xF0);
}

inline __m256i grid64(const uint64_t* g, uint32_t i0, uint32_t i1, uint32_t i2, uint32_t i3) {
  return rows64(g, i0, i1, i2, i3);
}
inline __m256i signs64(uint32_t s0, uint32_t s1, uint32_t s2, uint32_t s3) {
  return rows64(kSignMask.data(), s0, s1, s2, s3);
}

#if QLEAP_USE_VNNI
// AVX-512 builds fetch IQ3_XXS's eight 4-byte grid rows per 32 weights with one gather (indices by
// one vpmovzxbd) and its sign rows likewise: the eight broadcasts and seven blends of rows32 need
// every index in a general register, and in these builds GCC parks those in xmm16-31 (a vmovq
// each way). Measured 1.3-1.4x faster there; for the 64-bit rows of IQ2_XS, IQ2_S, IQ1_S and IQ1_M
// (four broadcasts, three blends) gathers were not faster, so those keep rows64.
inline __m128i bcast4(const void* p) {  // 4 bytes broadcast by a load alone (no shuffle)
  return _mm_castps_si128(_mm_broadcast_ss(reinterpret_cast<const float*>(p)));
}
// Four 7-bit sign indices at bits 0, 7, 14, 21 of every lane of a -> their sign-mask rows.
inline __m256i gather_signs(__m128i a) {
  const __m128i i = _mm_and_si128(_mm_srlv_epi32(a, _mm_setr_epi32(0, 7, 14, 21)), _mm_set1_epi32(127));
  return _mm256_i32gather_epi64(reinterpret_cast<const long long*>(kSignMask.data()), i, 8);
}
#endif

// ---- format traits: scales(b, sc), factor(b), chunk(b, k, u, s) for weights 32k .. 32k+31 ----

struct FIq2Xxs {
  using B = BlockIq2Xxs;
  static void scales(const B& b, int8_t* sc) {
    for (int ib = 0; ib < 8; ++ib) {
      uint32_t a;
      std::memcpy(&a, b.qs + 4 * ib + 2, 4);
      sc[2 * ib] = sc[2 * ib + 1] = int8_t(2 * (a >> 28) + 1);
    }
  }
  static float factor(const B& b) { return h2f(b.d) * 0.125f; }
  static void chunk(const B& b, int k, __m256i* u, __m256i* s) {
    uint32_t a[2];
    std::memcpy(a, b.qs + 4 * k, 8);
    *u = grid64(kIq2xxsGrid, a[0] & 0xFF, (a[0] >> 8) & 0xFF, (a[0] >> 16) & 0xFF, a[0] >> 24);
    *s = signs64(a[1] & 127, (a[1] >> 7) & 127, (a[1] >> 14) & 127, (a[1] >> 21) & 127);
  }
};

struct FIq2Xs {
  using B = BlockIq2Xs;
  static void scales(const B& b, int8_t* sc) {
    for (int g = 0; g < 16; ++g) sc[g] = int8_t(2 * ((b.scales[g / 2] >> (4 * (g % 2))) & 0xF) + 1);
  }
  static float factor(const B& b) { return h2f(b.d) * 0.125f; }
  static void chunk(const B& b, int k, __m256i* u, __m256i* s) {
    const uint16_t* q = b.qs + 4 * k;
    *u = grid64(kIq2xsGrid, q[0] & 511, q[1] & 511, q[2] & 511, q[3] & 511);
    *s = signs64(q[0] >> 9, q[1] >> 9, q[2] >> 9, q[3] >> 9);
  }
};

struct FIq2S {
  using B = BlockIq2S;
  static void scales(const B& b, int8_t* sc) {
    for (int g = 0; g < 16; ++g) sc[g] = int8_t(2 * ((b.scales[g / 2] >> (4 * (g % 2))) & 0xF) + 1);
  }
  static float factor(const B& b) { return h2f(b.d) * 0.125f; }
  static void chunk(const B& b, int k, __m256i* u, __m256i* s) {
    const uint8_t* q = b.qs + 4 * k;
    const uint32_t h = b.qh[k];
    *u = grid64(kIq2sGrid, q[0] | ((h << 8) & 0x300), q[1] | ((h << 6) & 0x300), q[2] | ((h << 4) & 0x300),
                q[3] | ((h << 2) & 0x300));
    *s = sign_bits_to_mask(b.signs + 4 * k);
  }
};

struct FIq3Xxs {
  using B = BlockIq3Xxs;
  static void scales(const B& b, int8_t* sc) {
    for (int ib = 0; ib < 8; ++ib) {
      uint32_t a;
      std::memcpy(&a, b.scales_signs + 4 * ib, 4);
      sc[2 * ib] = sc[2 * ib + 1] = int8_t(2 * (a >> 28) + 1);
    }
  }
  static float factor(const B& b) { return h2f(b.d) * 0.25f; }
  static void chunk(const B& b, int k, __m256i* u, __m256i* s) {
#if QLEAP_USE_VNNI
    const __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b.qs + 8 * k)));
    *u = _mm256_i32gather_epi32(reinterpret_cast<const int*>(kIq3xxsGrid), idx, 4);
    *s = gather_signs(bcast4(b.scales_signs + 4 * k));
#else
    const uint8_t* q = b.qs + 8 * k;
    const uint32_t i[8] = {q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7]};
    *u = rows32(kIq3xxsGrid, i);
    uint32_t a;
    std::memcpy(&a, b.scales_signs + 4 * k, 4);
    *s = signs64(a & 127, (a >> 7) & 127, (a >> 14) & 127, (a >> 21) & 127);
#endif
  }
};

struct FIq3S {
  using B = BlockIq3S;
  static void scales(const B& b, int8_t* sc) {
    for (int ib = 0; ib < 8; ++ib)
      sc[2 * ib] = sc[2 * ib + 1] = int8_t(2 * ((b.scales[ib / 2] >> (4 * (ib % 2))) & 0xF) + 1);
  }
  static float factor(const B& b) { return h2f(b.d); }
  static void chunk(const B& b, int k, __m256i* u, __m256i* s) {
    const uint8_t* q = b.qs + 8 * k;
    const uint32_t h = b.qh[k];
    uint32_t i[8];
    for (int j = 0; j < 8; ++j) i[j] = q[j] | ((h << (8 - j)) & 0x100);
    *u = rows32(kIq3sGrid, i);
    *s = sign_bits_to_mask(b.signs + 4 * k);
  }
};

// IQ1: w = d * (2s + 1) * (g + delta) with g in {-1, 0, 1} and delta = +-1/8; we carry the integer
// 8 * (g + delta) in {-9, -7, -1, 1, 7, 9}, looked up from (g + 1) + 3 * (delta < 0), and d / 8.
inline __m256i iq1_values(__m256i g, __m256i delta_neg_x3) {
  const __m256i tbl = _mm256_setr_epi8(-7, 1, 9, -9, -1, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, -7, 1, 9, -9, -1, 7,
                                       0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  return _mm256_shuffle_epi8(tbl, _mm256_add_epi8(_mm256_add_epi8(g, _mm256_set1_epi8(1)), delta_neg_x3));
}

struct FIq1S {
  using B = BlockIq1S;
  static void scales(const B& b, int8_t* sc) {
    for (int ib = 0; ib < 8; ++ib) sc[2 * ib] = sc[2 * ib + 1] = int8_t(2 * ((b.qh[ib] >> 12) & 7) + 1);
  }
  static float factor(const B& b) { return h2f(b.d) * 0.125f; }
  static void chunk(const B& b, int k, __m256i* u, __m256i* s) {
    const uint8_t* q = b.qs + 4 * k;
    const uint32_t h = b.qh[k];
    const __m256i g = grid64(kIq1sGrid, q[0] | ((h << 8) & 0x700), q[1] | ((h << 5) & 0x700),
                             q[2] | ((h << 2) & 0x700), q[3] | ((h >> 1) & 0x700));
    const __m256i v = iq1_values(g, _mm256_set1_epi8(h & 0x8000 ? 3 : 0));
    *u = _mm256_sign_epi8(v, v);
    *s = v;
  }
};

struct FIq1M {
  using B = BlockIq1M;
  static void scales(const B& b, int8_t* sc) {
    uint16_t w[4];
    std::memcpy(w, b.scales, 8);
    for (int g = 0; g < 16; ++g) sc[g] = int8_t(2 * ((w[g / 4] >> (3 * (g % 4))) & 7) + 1);
  }
  static float factor(const B& b) { return fp16_to_fp32(iq1m_scale_bits(b)) * 0.125f; }
  static void chunk(const B& b, int k, __m256i* u, __m256i* s) {
    const uint8_t* q = b.qs + 4 * k;
    const uint32_t h0 = b.qh[2 * k], h1 = b.qh[2 * k + 1];
    const __m256i g = grid64(kIq1sGrid, q[0] | ((h0 << 8) & 0x700), q[1] | ((h0 << 4) & 0x700),
                             q[2] | ((h1 << 8) & 0x700), q[3] | ((h1 << 4) & 0x700));
    auto neg = [](uint32_t bit) { return bit ? int64_t(0x0303030303030303) : int64_t(0); };
    const __m256i dn = _mm256_set_epi64x(neg(h1 & 0x80), neg(h1 & 0x08), neg(h0 & 0x80), neg(h0 & 0x08));
    const __m256i v = iq1_values(g, dn);
    *u = _mm256_sign_epi8(v, v);
    *s = v;
  }
};

struct FIq4Xs {
  using B = BlockIq4Xs;
  static void scales(const B& b, int8_t* sc) {
    for (int ib = 0; ib < 8; ++ib) sc[2 * ib] = sc[2 * ib + 1] = int8_t(iq4xs_scale(b, ib));
  }
  static float factor(const B& b) { return h2f(b.d); }
  static void chunk(const B& b, int k, __m256i* u, __m256i* s) {
    const __m256i tbl =
        _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4nlValues)));
    const __m256i v = _mm256_shuffle_epi8(tbl, load_nibbles(b.qs + 16 * k));
    *u = _mm256_sign_epi8(v, v);
    *s = v;
  }
};

struct FTq2 {
  using B = BlockTq2_0;
  static void scales(const B&, int8_t* sc) {
    for (int g = 0; g < 16; ++g) sc[g] = 1;
  }
  static float factor(const B& b) { return h2f(b.d); }
  // The digits t in {0, 1, 2} (w = d * (t - 1)) of weights 32k .. 32k+31.
  static __m256i digits(const B& b, int k) {
    return _mm256_and_si256(_mm256_srli_epi16(load32u(b.qs + 32 * (k / 4)), 2 * (k % 4)),
                            _mm256_set1_epi8(3));
  }
  static void all_digits(const B& b, __m256i* t) {
    for (int k = 0; k < 8; ++k) t[k] = digits(b, k);
  }
  static void chunk(const B& b, int k, __m256i* u, __m256i* s) {
    const __m256i v = _mm256_sub_epi8(digits(b, k), _mm256_set1_epi8(1));
    *u = _mm256_sign_epi8(v, v);
    *s = v;
  }
};

// TQ1_0: byte * 3^t mod 256, per byte, with per-byte multipliers m.
inline __m256i mul_bytes(__m256i v, __m256i m) {
  const __m256i lo = _mm256_and_si256(_mm256_mullo_epi16(v, m), _mm256_set1_epi16(0x00FF));
  const __m256i hi =
      _mm256_slli_epi16(_mm256_mullo_epi16(_mm256_srli_epi16(v, 8), _mm256_srli_epi16(m, 8)), 8);
  return _mm256_or_si256(lo, hi);
}
// Minus the trit (v * 3) >> 8 of each byte v: 0 below 86, -1 below 171, else -2 (the sum of the two
// all-ones compare masks).
inline __m256i minus_trit(__m256i v) {
  const __m256i ge86 = _mm256_cmpeq_epi8(_mm256_max_epu8(v, _mm256_set1_epi8(86)), v);
  const __m256i ge171 = _mm256_cmpeq_epi8(_mm256_max_epu8(v, _mm256_set1_epi8(char(171))), v);
  return _mm256_add_epi8(ge86, ge171);
}
// The trit minus one: -1 below 86, 0 below 171, else 1 (~x = -x - 1).
inline __m256i trit_minus_one(__m256i v) {
  return _mm256_xor_si256(minus_trit(v), _mm256_set1_epi8(-1));
}

// Bytes times 3 modulo 256: two byte adds, where a multiply by a power of 3 took two 16-bit
// multiplies, shifts and masks (mul_bytes).
inline __m256i times3(__m256i v) {
  return _mm256_add_epi8(v, _mm256_add_epi8(v, v));
}
inline __m128i times3(__m128i v) {
  return _mm_add_epi8(v, _mm_add_epi8(v, v));
}
// The trit (v * 3) >> 8 of each byte v, as (v >= 86) + (v >= 171) from saturating subtractions.
inline __m256i trit(__m256i v) {
  const __m256i one = _mm256_set1_epi8(1);
  return _mm256_add_epi8(_mm256_min_epu8(_mm256_subs_epu8(v, _mm256_set1_epi8(85)), one),
                         _mm256_min_epu8(_mm256_subs_epu8(v, _mm256_set1_epi8(char(170))), one));
}

struct FTq1 {
  using B = BlockTq1_0;
  static void scales(const B&, int8_t* sc) {
    for (int g = 0; g < 16; ++g) sc[g] = 1;
  }
  static float factor(const B& b) { return h2f(b.d); }
  // Bytes whose trit (v * 3) >> 8 is the digit of weights 32k .. 32k+31.
  static __m256i scaled(const B& b, int k) {
    static constexpr uint8_t kPow3[5] = {1, 3, 9, 27, 81};
    __m256i bytes, mult;
    if (k < 5) {
      bytes = load32u(b.qs);
      mult = _mm256_set1_epi8(char(kPow3[k]));
    } else {
      // Weights 160..239: qs[32..47] trits 0..4 (16 weights each); 240..255: qh trits 0..3.
      const __m128i q1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs + 32));
      if (k < 7) {
        bytes = _mm256_broadcastsi128_si256(q1);
        mult = _mm256_set_m128i(_mm_set1_epi8(char(kPow3[2 * (k - 5) + 1])),
                                _mm_set1_epi8(char(kPow3[2 * (k - 5)])));
      } else {
        uint32_t h;
        std::memcpy(&h, b.qh, 4);
        bytes = _mm256_set_m128i(_mm_set1_epi32(int(h)), q1);
        mult = _mm256_set_m128i(_mm_setr_epi8(1, 1, 1, 1, 3, 3, 3, 3, 9, 9, 9, 9, 27, 27, 27, 27),
                                _mm_set1_epi8(81));
      }
    }
    return mul_bytes(bytes, mult);
  }
  // The digits t in {0, 1, 2} of all 256 weights, t[k] those of weights 32k .. 32k+31 (the trits of
  // scaled(b, k)): each power of 3 from the last one by times3.
  static void all_digits(const B& b, __m256i* t) {
    __m256i p = load32u(b.qs);
    t[0] = trit(p);
    for (int k = 1; k < 5; ++k) {
      p = times3(p);
      t[k] = trit(p);
    }
    const __m128i q1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs + 32));
    const __m128i q3 = times3(q1), q9 = times3(q3), q27 = times3(q9), q81 = times3(q27);
    uint32_t h;
    std::memcpy(&h, b.qh, 4);
    const __m128i h1 = _mm_set1_epi32(int(h)), h3 = times3(h1), h9 = times3(h3), h27 = times3(h9);
    const __m128i hq = _mm_blend_epi32(_mm_blend_epi32(h1, h3, 0x2), _mm_blend_epi32(h9, h27, 0x8), 0xC);
    t[5] = trit(_mm256_set_m128i(q3, q1));
    t[6] = trit(_mm256_set_m128i(q27, q9));
    t[7] = trit(_mm256_set_m128i(hq, q81));
  }
  static void chunk(const B& b, int k, __m256i* u, __m256i* s) {
    const __m256i v = trit_minus_one(scaled(b, k));
    *u = _mm256_sign_epi8(v, v);
    *s = v;
  }
};

// The integer dot of a ternary block (w = t - 1, digit(k) the digits t of weights 32k .. 32k+31)
// with Q8_K activations xv[0..8): the digits go into PMADDUBSW unsigned and the -1 of every weight is
// the activations' sum (bsums), taken once. Two chains in int16 (4 steps of at most 2 x 2 x 127 each,
// and the bsums) stay far below 2^15; one widening.
template <class Digit>
inline __m256i ternary_isum(Digit&& digit, const __m256i* xv, const int16_t* bsums) {
  __m256i s0 =
      _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bsums)));
  __m256i s1 = _mm256_setzero_si256();
  for (int m = 0; m < 4; ++m) {
    s0 = _mm256_add_epi16(s0, _mm256_maddubs_epi16(digit(2 * m), xv[2 * m]));
    s1 = _mm256_add_epi16(s1, _mm256_maddubs_epi16(digit(2 * m + 1), xv[2 * m + 1]));
  }
  return _mm256_madd_epi16(_mm256_add_epi16(s0, s1), _mm256_set1_epi16(1));
}

// ---- 256-element formats against Q8_K ----

inline void load_scales(const int8_t* sc, __m256i* sc16) {
  const __m128i v = _mm_load_si128(reinterpret_cast<const __m128i*>(sc));
  sc16[0] = _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(v));
  sc16[1] = _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(_mm_srli_si128(v, 8)));
}

template <class F>
float vec_dot_iq(const uint8_t* w, const BlockQ8_K* x, int64_t nb) {
  using B = typename F::B;
  const auto* wb = reinterpret_cast<const B*>(w);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(wb + i) + kPrefetchBytes, _MM_HINT_T0);
    alignas(16) int8_t sc[16];
    F::scales(wb[i], sc);
    __m256i sc16[2];
    load_scales(sc, sc16);
    __m256i isum = _mm256_setzero_si256();
    // Unrolled so that k16_chunk_scale's shuffle masks are constants.
#pragma GCC unroll 8
    for (int k = 0; k < 8; ++k) {
      __m256i u, s;
      F::chunk(wb[i], k, &u, &s);
      const __m256i xv = load32u(reinterpret_cast<const uint8_t*>(x[i].qs) + 32 * k);
      const __m256i p = _mm256_maddubs_epi16(u, _mm256_sign_epi8(xv, s));
      isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, k16_chunk_scale(sc16, k)));
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(F::factor(wb[i]) * x[i].d), _mm256_cvtepi32_ps(isum), acc);
  }
  return hsum(acc);
}

#if !QLEAP_USE_VNNI
#include "backend/cpu/matmul_iq_avx2.h"
#endif

#if QLEAP_USE_VNNI
// ---- AVX-512 decode for the grid formats whose lookups dominate (IQ3_S, IQ2_XXS) ----
// 64 weights per step: one gather brings their grid bytes (IQ3_S: 16 x 4, IQ2_XXS: 8 x 8), a
// 64-bit mask negates the activations where the weight's sign bit is set, and the byte products
// are scaled per 32 weights in int16 (low 256 bits: the first sub-block, high: the second). The
// integer sums are those of vec_dot_iq; only the float accumulation has wider lanes.

inline __m512i negate_where(__m512i x, uint64_t neg) {
  return _mm512_mask_sub_epi8(x, __mmask64(neg), _mm512_setzero_si512(), x);
}
inline __m512i scale_pair16(int s0, int s1) {
  return _mm512_inserti64x4(_mm512_set1_epi16(short(s0)), _mm256_set1_epi16(short(s1)), 1);
}

float vec_dot_iq3s_512(const uint8_t* w, const BlockQ8_K* x, int64_t nb) {
  const auto* wb = reinterpret_cast<const BlockIq3S*>(w);
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i bit8 = _mm512_set1_epi32(0x100);
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(wb + i) + kPrefetchBytes, _MM_HINT_T0);
    const BlockIq3S& b = wb[i];
    const int8_t* xq = x[i].qs;
    __m512i isum0 = _mm512_setzero_si512(), isum1 = _mm512_setzero_si512();
    for (int m = 0; m < 4; ++m) {
      // Grid index l = 16m + j: qs[l] plus bit j of the 16 qh bits of the step as bit 8.
      uint16_t qh;
      std::memcpy(&qh, b.qh + 2 * m, 2);
      const __m512i hi =
          _mm512_and_si512(_mm512_srlv_epi32(_mm512_set1_epi32(int(uint32_t(qh) << 8)), lanes), bit8);
      const __m512i idx = _mm512_or_si512(
          _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs + 16 * m))), hi);
      const __m512i g = _mm512_i32gather_epi32(idx, kIq3sGrid, 4);
      uint64_t sg;
      std::memcpy(&sg, b.signs + 8 * m, 8);
      const __m512i xv = negate_where(_mm512_loadu_si512(xq + 64 * m), sg);
      const int s0 = b.scales[m] & 0xF, s1 = b.scales[m] >> 4;
      const __m512i p = _mm512_madd_epi16(_mm512_maddubs_epi16(g, xv), scale_pair16(2 * s0 + 1, 2 * s1 + 1));
      if (m & 1) {
        isum1 = _mm512_add_epi32(isum1, p);
      } else {
        isum0 = _mm512_add_epi32(isum0, p);
      }
    }
    acc = _mm512_fmadd_ps(_mm512_set1_ps(h2f(b.d) * x[i].d),
                          _mm512_cvtepi32_ps(_mm512_add_epi32(isum0, isum1)), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// 8 sign indices of 7 bits (one per byte) -> the 8 sign bytes: bit 7 makes each byte's parity even.
inline uint64_t iq2_sign_bytes(uint64_t s7) {
  uint64_t p = s7 ^ (s7 >> 4);
  p ^= p >> 2;
  p ^= p >> 1;
  return s7 | ((p & 0x0101010101010101ull) << 7);
}

float vec_dot_iq2xxs_512(const uint8_t* w, const BlockQ8_K* x, int64_t nb) {
  const auto* wb = reinterpret_cast<const BlockIq2Xxs*>(w);
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(wb + i) + kPrefetchBytes, _MM_HINT_T0);
    const BlockIq2Xxs& b = wb[i];
    const int8_t* xq = x[i].qs;
    uint32_t a[16];  // sub-block ib: a[2ib] = 4 grid indices, a[2ib + 1] = 4 x 7 sign bits | scale << 28
    std::memcpy(a, b.qs, sizeof(a));
    __m512i isum0 = _mm512_setzero_si512(), isum1 = _mm512_setzero_si512();
    for (int m = 0; m < 4; ++m) {
      const uint32_t g0 = a[4 * m], s0 = a[4 * m + 1], g1 = a[4 * m + 2], s1 = a[4 * m + 3];
      const __m256i idx = _mm256_cvtepu8_epi32(_mm_set_epi32(0, 0, int(g1), int(g0)));
      const __m512i g = _mm512_i32gather_epi64(idx, kIq2xxsGrid, 8);
      const uint64_t s7 = uint64_t(_pdep_u32(s0, 0x7F7F7F7Fu)) | (uint64_t(_pdep_u32(s1, 0x7F7F7F7Fu)) << 32);
      const __m512i xv = negate_where(_mm512_loadu_si512(xq + 64 * m), iq2_sign_bytes(s7));
      const __m512i p = _mm512_madd_epi16(_mm512_maddubs_epi16(g, xv),
                                          scale_pair16(2 * int(s0 >> 28) + 1, 2 * int(s1 >> 28) + 1));
      if (m & 1) {
        isum1 = _mm512_add_epi32(isum1, p);
      } else {
        isum0 = _mm512_add_epi32(isum0, p);
      }
    }
    acc = _mm512_fmadd_ps(_mm512_set1_ps(h2f(b.d) * 0.125f * x[i].d),
                          _mm512_cvtepi32_ps(_mm512_add_epi32(isum0, isum1)), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// IQ3_XXS as IQ3_S above (16 x 4 grid bytes per gather) with the sign indices of IQ2_XXS: per 32
// weights a uint32 of four 7-bit sign indices and the 4-bit scale.
float vec_dot_iq3xxs_512(const uint8_t* w, const BlockQ8_K* x, int64_t nb) {
  const auto* wb = reinterpret_cast<const BlockIq3Xxs*>(w);
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(wb + i) + kPrefetchBytes, _MM_HINT_T0);
    const BlockIq3Xxs& b = wb[i];
    const int8_t* xq = x[i].qs;
    uint32_t a[8];  // sub-block ib: 4 x 7 sign bits | scale << 28
    std::memcpy(a, b.scales_signs, sizeof(a));
    __m512i isum0 = _mm512_setzero_si512(), isum1 = _mm512_setzero_si512();
    for (int m = 0; m < 4; ++m) {
      const __m512i idx =
          _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs + 16 * m)));
      const __m512i g = _mm512_i32gather_epi32(idx, kIq3xxsGrid, 4);
      const uint32_t s0 = a[2 * m], s1 = a[2 * m + 1];
      const uint64_t s7 = uint64_t(_pdep_u32(s0, 0x7F7F7F7Fu)) | (uint64_t(_pdep_u32(s1, 0x7F7F7F7Fu)) << 32);
      const __m512i xv = negate_where(_mm512_loadu_si512(xq + 64 * m), iq2_sign_bytes(s7));
      const __m512i p = _mm512_madd_epi16(_mm512_maddubs_epi16(g, xv),
                                          scale_pair16(2 * int(s0 >> 28) + 1, 2 * int(s1 >> 28) + 1));
      if (m & 1) {
        isum1 = _mm512_add_epi32(isum1, p);
      } else {
        isum0 = _mm512_add_epi32(isum0, p);
      }
    }
    acc = _mm512_fmadd_ps(_mm512_set1_ps(h2f(b.d) * 0.25f * x[i].d),
                          _mm512_cvtepi32_ps(_mm512_add_epi32(isum0, isum1)), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// IQ2_XS: per 8 weights a uint16 of a 9-bit grid index and a 7-bit sign index; a 4-bit scale per
// 16 weights, so the int16 scale vector has four values per 64 weights.
float vec_dot_iq2xs_512(const uint8_t* w, const BlockQ8_K* x, int64_t nb) {
  const auto* wb = reinterpret_cast<const BlockIq2Xs*>(w);
  const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2,
                                          2, 3, 3, 3, 3, 3, 3, 3, 3);
  const __m256i m511 = _mm256_set1_epi32(511);
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(wb + i) + kPrefetchBytes, _MM_HINT_T0);
    const BlockIq2Xs& b = wb[i];
    const int8_t* xq = x[i].qs;
    __m512i isum0 = _mm512_setzero_si512(), isum1 = _mm512_setzero_si512();
    for (int m = 0; m < 4; ++m) {
      const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs + 8 * m));
      const __m512i g =
          _mm512_i32gather_epi64(_mm256_and_si256(_mm256_cvtepu16_epi32(q), m511), kIq2xsGrid, 8);
      const __m128i si = _mm_srli_epi16(q, 9);
      const uint64_t s7 = uint64_t(_mm_cvtsi128_si64(_mm_packus_epi16(si, si)));
      const __m512i xv = negate_where(_mm512_loadu_si512(xq + 64 * m), iq2_sign_bytes(s7));
      uint16_t sc2;
      std::memcpy(&sc2, b.scales + 2 * m, 2);
      const uint32_t sc4 = 2 * _pdep_u32(sc2, 0x0F0F0F0Fu) + 0x01010101u;  // 2 ls + 1 per 16 weights
      const __m512i scv = _mm512_cvtepu8_epi16(_mm256_shuffle_epi8(_mm256_set1_epi32(int(sc4)), spread));
      const __m512i p = _mm512_madd_epi16(_mm512_maddubs_epi16(g, xv), scv);
      if (m & 1) {
        isum1 = _mm512_add_epi32(isum1, p);
      } else {
        isum0 = _mm512_add_epi32(isum0, p);
      }
    }
    acc = _mm512_fmadd_ps(_mm512_set1_ps(h2f(b.d) * 0.125f * x[i].d),
                          _mm512_cvtepi32_ps(_mm512_add_epi32(isum0, isum1)), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// IQ2_S: 10-bit grid indices (qs bytes, 2 high bits each from qh), one sign bit per weight, scales
// per 16 weights as IQ2_XS.
float vec_dot_iq2s_512(const uint8_t* w, const BlockQ8_K* x, int64_t nb) {
  const auto* wb = reinterpret_cast<const BlockIq2S*>(w);
  const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2,
                                          2, 3, 3, 3, 3, 3, 3, 3, 3);
  const __m256i hshift = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
  const __m256i m3 = _mm256_set1_epi32(3);
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(wb + i) + kPrefetchBytes, _MM_HINT_T0);
    const BlockIq2S& b = wb[i];
    const int8_t* xq = x[i].qs;
    __m512i isum0 = _mm512_setzero_si512(), isum1 = _mm512_setzero_si512();
    for (int m = 0; m < 4; ++m) {
      // Entry j of the step: qs[8m + j] | bits 2(j % 4) .. +1 of qh[2m + j / 4] as bits 8, 9.
      uint16_t qh2;
      std::memcpy(&qh2, b.qh + 2 * m, 2);
      const __m256i hi =
          _mm256_slli_epi32(_mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(int(qh2)), hshift), m3), 8);
      const __m256i idx = _mm256_or_si256(
          _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b.qs + 8 * m))), hi);
      const __m512i g = _mm512_i32gather_epi64(idx, kIq2sGrid, 8);
      uint64_t sg;
      std::memcpy(&sg, b.signs + 8 * m, 8);
      const __m512i xv = negate_where(_mm512_loadu_si512(xq + 64 * m), sg);
      uint16_t sc2;
      std::memcpy(&sc2, b.scales + 2 * m, 2);
      const uint32_t sc4 = 2 * _pdep_u32(sc2, 0x0F0F0F0Fu) + 0x01010101u;  // 2 ls + 1 per 16 weights
      const __m512i scv = _mm512_cvtepu8_epi16(_mm256_shuffle_epi8(_mm256_set1_epi32(int(sc4)), spread));
      const __m512i p = _mm512_madd_epi16(_mm512_maddubs_epi16(g, xv), scv);
      if (m & 1) {
        isum1 = _mm512_add_epi32(isum1, p);
      } else {
        isum0 = _mm512_add_epi32(isum0, p);
      }
    }
    acc = _mm512_fmadd_ps(_mm512_set1_ps(h2f(b.d) * 0.125f * x[i].d),
                          _mm512_cvtepi32_ps(_mm512_add_epi32(isum0, isum1)), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// IQ1_S: grid bytes g in {-1, 0, 1} (8-bit index from qs, 3 high bits from qh), turned into
// 8 (g + delta) by the byte table of iq1_values; per 32 weights qh holds the scale and the sign of
// delta. Magnitudes by vpabsb, the signs as a mask on the activations.
float vec_dot_iq1s_512(const uint8_t* w, const BlockQ8_K* x, int64_t nb) {
  const auto* wb = reinterpret_cast<const BlockIq1S*>(w);
  const __m512i tbl =
      _mm512_broadcast_i32x4(_mm_setr_epi8(-7, 1, 9, -9, -1, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0));
  const __m256i hshift = _mm256_setr_epi32(0, 3, 6, 9, 16, 19, 22, 25);
  const __m256i m7 = _mm256_set1_epi32(7);
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(wb + i) + kPrefetchBytes, _MM_HINT_T0);
    const BlockIq1S& b = wb[i];
    const int8_t* xq = x[i].qs;
    __m512i isum0 = _mm512_setzero_si512(), isum1 = _mm512_setzero_si512();
    for (int m = 0; m < 4; ++m) {
      uint32_t h;  // qh of sub-blocks 2m (low half) and 2m + 1 (high half)
      std::memcpy(&h, b.qh + 2 * m, 4);
      const __m256i hi =
          _mm256_slli_epi32(_mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(int(h)), hshift), m7), 8);
      const __m256i idx = _mm256_or_si256(
          _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b.qs + 8 * m))), hi);
      const __m512i g = _mm512_i32gather_epi64(idx, kIq1sGrid, 8);
      const __mmask64 dneg =
          (h & 0x8000u ? 0xFFFFFFFFull : 0ull) | (h & 0x80000000u ? 0xFFFFFFFF00000000ull : 0ull);
      __m512i gi = _mm512_add_epi8(g, _mm512_set1_epi8(1));
      gi = _mm512_mask_add_epi8(gi, dneg, gi, _mm512_set1_epi8(3));
      const __m512i v = _mm512_shuffle_epi8(tbl, gi);
      const __m512i xv = negate_where(_mm512_loadu_si512(xq + 64 * m), uint64_t(_mm512_movepi8_mask(v)));
      const __m512i p =
          _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_abs_epi8(v), xv),
                            scale_pair16(2 * int((h >> 12) & 7) + 1, 2 * int((h >> 28) & 7) + 1));
      if (m & 1) {
        isum1 = _mm512_add_epi32(isum1, p);
      } else {
        isum0 = _mm512_add_epi32(isum0, p);
      }
    }
    acc = _mm512_fmadd_ps(_mm512_set1_ps(h2f(b.d) * 0.125f * x[i].d),
                          _mm512_cvtepi32_ps(_mm512_add_epi32(isum0, isum1)), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// IQ1_M: as IQ1_S, but per 8 weights a qh nibble (3 high index bits, the sign of delta in bit 3),
// a 3-bit scale per 16 weights, and the fp16 factor spread over the scales' top nibbles.
float vec_dot_iq1m_512(const uint8_t* w, const BlockQ8_K* x, int64_t nb) {
  const auto* wb = reinterpret_cast<const BlockIq1M*>(w);
  const __m512i tbl =
      _mm512_broadcast_i32x4(_mm_setr_epi8(-7, 1, 9, -9, -1, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0));
  const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2,
                                          2, 3, 3, 3, 3, 3, 3, 3, 3);
  const __m256i hshift = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  const __m256i m7 = _mm256_set1_epi32(7);
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(wb + i) + kPrefetchBytes, _MM_HINT_T0);
    const BlockIq1M& b = wb[i];
    const int8_t* xq = x[i].qs;
    __m512i isum0 = _mm512_setzero_si512(), isum1 = _mm512_setzero_si512();
    for (int m = 0; m < 4; ++m) {
      uint32_t h;  // nibble j: grid entry 8m + j
      std::memcpy(&h, b.qh + 4 * m, 4);
      const __m256i hi =
          _mm256_slli_epi32(_mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(int(h)), hshift), m7), 8);
      const __m256i idx = _mm256_or_si256(
          _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b.qs + 8 * m))), hi);
      const __m512i g = _mm512_i32gather_epi64(idx, kIq1sGrid, 8);
      const __mmask64 dneg = __mmask64(_pdep_u64(_pext_u32(h, 0x88888888u), 0x0101010101010101ull) * 0xFF);
      __m512i gi = _mm512_add_epi8(g, _mm512_set1_epi8(1));
      gi = _mm512_mask_add_epi8(gi, dneg, gi, _mm512_set1_epi8(3));
      const __m512i v = _mm512_shuffle_epi8(tbl, gi);
      const __m512i xv = negate_where(_mm512_loadu_si512(xq + 64 * m), uint64_t(_mm512_movepi8_mask(v)));
      uint16_t sc2;
      std::memcpy(&sc2, b.scales + 2 * m, 2);
      const uint32_t sc4 = 2 * _pdep_u32(sc2, 0x07070707u) + 0x01010101u;  // 2 s + 1 per 16 weights
      const __m512i scv = _mm512_cvtepu8_epi16(_mm256_shuffle_epi8(_mm256_set1_epi32(int(sc4)), spread));
      const __m512i p = _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_abs_epi8(v), xv), scv);
      if (m & 1) {
        isum1 = _mm512_add_epi32(isum1, p);
      } else {
        isum0 = _mm512_add_epi32(isum0, p);
      }
    }
    acc = _mm512_fmadd_ps(_mm512_set1_ps(fp16_to_fp32(iq1m_scale_bits(b)) * 0.125f * x[i].d),
                          _mm512_cvtepi32_ps(_mm512_add_epi32(isum0, isum1)), acc);
  }
  return _mm512_reduce_add_ps(acc);
}
#endif

// A weight super-block unpacked once for a chunk of activation rows.
struct alignas(32) IqPrep {
  uint8_t u[256];
  int8_t s[256];
  int16_t sc[8][16];  // chunk k: lanes 0..7 scale of weights 32k..32k+15, lanes 8..15 the next 16
  float f;
};

template <class F>
void iq_prep(const typename F::B& b, IqPrep& p) {
  alignas(16) int8_t sc[16];
  F::scales(b, sc);
  for (int k = 0; k < 8; ++k) {
    __m256i u, s;
    F::chunk(b, k, &u, &s);
    store32(p.u + 32 * k, u);
    store32(reinterpret_cast<uint8_t*>(p.s) + 32 * k, s);
    for (int i = 0; i < 8; ++i) {
      p.sc[k][i] = sc[2 * k];
      p.sc[k][8 + i] = sc[2 * k + 1];
    }
  }
  p.f = F::factor(b);
}

template <class F>
constexpr bool kTernary = std::is_same_v<F, FTq2> || std::is_same_v<F, FTq1>;

template <class F, int RR>
void panel_iq(const uint8_t* w, size_t row_bytes, int64_t nb, const BlockQ8_K* x, int64_t xs, int nt,
              float* y, int64_t ldy) {
  using B = typename F::B;
  alignas(32) __m256 acc[RR][kActChunk];
  for (int r = 0; r < RR; ++r) {
    for (int c = 0; c < nt; ++c) acc[r][c] = _mm256_setzero_ps();
  }
  IqPrep prep[RR];
  for (int64_t b = 0; b < nb; ++b) {
    for (int r = 0; r < RR; ++r) {
      const B& blk = reinterpret_cast<const B*>(w + size_t(r) * row_bytes)[b];
      if constexpr (kTernary<F>) {
        // Ternary: the digits t unsigned, the -1 of every weight taken off once per block as the
        // activations' sum (bsums), instead of a sign op and a unit scale per 32 weights.
        __m256i t[8];
        F::all_digits(blk, t);
        for (int k = 0; k < 8; ++k) store32(prep[r].u + 32 * k, t[k]);
        prep[r].f = F::factor(blk);
      } else {
        iq_prep<F>(blk, prep[r]);
      }
    }
    for (int c = 0; c < nt; ++c) {
      const BlockQ8_K* xb = x + c * xs + b;
      __m256i xv[8];
      for (int k = 0; k < 8; ++k) xv[k] = load32u(reinterpret_cast<const uint8_t*>(xb->qs) + 32 * k);
      if constexpr (kTernary<F>) {
        for (int r = 0; r < RR; ++r) {
          const uint8_t* u = prep[r].u;
          const __m256i isum = ternary_isum(
              [u](int k) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(u + 32 * k)); }, xv,
              xb->bsums);
          acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(prep[r].f * xb->d), _mm256_cvtepi32_ps(isum), acc[r][c]);
        }
        continue;
      }
      for (int r = 0; r < RR; ++r) {
        const IqPrep& p = prep[r];
        __m256i isum = _mm256_setzero_si256();
        for (int k = 0; k < 8; ++k) {
          const __m256i s = _mm256_load_si256(reinterpret_cast<const __m256i*>(p.s + 32 * k));
          const __m256i prod = _mm256_maddubs_epi16(
              _mm256_load_si256(reinterpret_cast<const __m256i*>(p.u + 32 * k)), _mm256_sign_epi8(xv[k], s));
          isum = _mm256_add_epi32(
              isum, _mm256_madd_epi16(prod, _mm256_load_si256(reinterpret_cast<const __m256i*>(p.sc[k]))));
        }
        acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(p.f * xb->d), _mm256_cvtepi32_ps(isum), acc[r][c]);
      }
    }
  }
  for (int r = 0; r < RR; ++r) {
    for (int c = 0; c < nt; ++c) y[c * ldy + r] = hsum(acc[r][c]);
  }
}

template <class F>
void run_iq(const uint8_t* w, size_t rb, int64_t cols, int64_t r0, int64_t r1, const uint8_t* xa,
            size_t xa_stride, int64_t t0, int64_t t1, float* y, int64_t ldy) {
  const int64_t nb = cols / 256;
  const int64_t xs = int64_t(xa_stride / sizeof(BlockQ8_K));
  if (t1 - t0 <= 1) {
    for (int64_t t = t0; t < t1; ++t) {
      const auto* xb = reinterpret_cast<const BlockQ8_K*>(xa + size_t(t) * xa_stride);
#if QLEAP_USE_VNNI
      if constexpr (std::is_same_v<F, FIq3S>) {
        for (int64_t r = r0; r < r1; ++r) y[t * ldy + r] = vec_dot_iq3s_512(w + size_t(r) * rb, xb, nb);
        continue;
      }
      if constexpr (std::is_same_v<F, FIq2Xxs>) {
        for (int64_t r = r0; r < r1; ++r) y[t * ldy + r] = vec_dot_iq2xxs_512(w + size_t(r) * rb, xb, nb);
        continue;
      }
      if constexpr (std::is_same_v<F, FIq3Xxs>) {
        for (int64_t r = r0; r < r1; ++r) y[t * ldy + r] = vec_dot_iq3xxs_512(w + size_t(r) * rb, xb, nb);
        continue;
      }
      if constexpr (std::is_same_v<F, FIq2Xs>) {
        for (int64_t r = r0; r < r1; ++r) y[t * ldy + r] = vec_dot_iq2xs_512(w + size_t(r) * rb, xb, nb);
        continue;
      }
      if constexpr (std::is_same_v<F, FIq2S>) {
        for (int64_t r = r0; r < r1; ++r) y[t * ldy + r] = vec_dot_iq2s_512(w + size_t(r) * rb, xb, nb);
        continue;
      }
      if constexpr (std::is_same_v<F, FIq1S>) {
        for (int64_t r = r0; r < r1; ++r) y[t * ldy + r] = vec_dot_iq1s_512(w + size_t(r) * rb, xb, nb);
        continue;
      }
      if constexpr (std::is_same_v<F, FIq1M>) {
        for (int64_t r = r0; r < r1; ++r) y[t * ldy + r] = vec_dot_iq1m_512(w + size_t(r) * rb, xb, nb);
        continue;
      }
#else
      if (const DotIqFn dot = avx2_decode<F>(fast_gather())) {
        for (int64_t r = r0; r < r1; ++r) y[t * ldy + r] = dot(w + size_t(r) * rb, xb, nb);
        continue;
      }
#endif
      for (int64_t r = r0; r < r1; ++r) y[t * ldy + r] = vec_dot_iq<F>(w + size_t(r) * rb, xb, nb);
    }
    return;
  }
  constexpr int kRR = 4;
  for (int64_t tc = t0; tc < t1; tc += kActChunk) {
    const int nt = int(std::min(t1, tc + kActChunk) - tc);
    const auto* xb = reinterpret_cast<const BlockQ8_K*>(xa + size_t(tc) * xa_stride);
    int64_t r = r0;
    for (; r + kRR <= r1; r += kRR)
      panel_iq<F, kRR>(w + size_t(r) * rb, rb, nb, xb, xs, nt, y + tc * ldy + r, ldy);
    for (; r < r1; ++r) panel_iq<F, 1>(w + size_t(r) * rb, rb, nb, xb, xs, nt, y + tc * ldy + r, ldy);
  }
}

// ---- MXFP4: a signed 16-entry codebook per 32 weights, like IQ4_NL, with a power-of-two scale ----

struct TMxfp4 {
  using B = BlockMxfp4;
  static constexpr Kind kKind = kSignedQ;
  static constexpr float kOffset = 0.0f;
  static __m256i q(const B* b) {
    const __m256i table =
        _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kFp4Values)));
    return _mm256_shuffle_epi8(table, load_nibbles(b->qs));
  }
  static float d(const B* b) { return e8m0_to_fp32_half(b->e); }
  static float m(const B*) { return 0.0f; }
  static __m128 dm(const B* b) { return _mm_set1_ps(d(b)); }
};

// ---- NVFP4 against Q8A: each 32-weight half of a block has two scales of 16 ----

// Codes of weights 32h .. 32h+31 of an NVFP4 block, in order, as signed values.
inline __m256i nvfp4_half(const BlockNvfp4& b, int h) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs + 16 * h));
  const __m128i m4 = _mm_set1_epi8(0x0F);
  const __m128i lo = _mm_and_si128(v, m4), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m4);
  // Group 2h: low nibbles of bytes 0..7 then their high nibbles; group 2h + 1 likewise for 8..15.
  const __m256i idx = _mm256_set_m128i(_mm_unpackhi_epi64(lo, hi), _mm_unpacklo_epi64(lo, hi));
  const __m256i table =
      _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kFp4Values)));
  return _mm256_shuffle_epi8(table, idx);
}

inline float vec_dot_nvfp4(const uint8_t* w, const BlockQ8A* x, int64_t nb) {
  const auto* wb = reinterpret_cast<const BlockNvfp4*>(w);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(wb + i) + kPrefetchBytes, _MM_HINT_T0);
    for (int h = 0; h < 2; ++h) {
      const BlockQ8A& xb = x[2 * i + h];
      const __m256i q = nvfp4_half(wb[i], h);
      const __m256i p =
          dot_u8i8(_mm256_sign_epi8(q, q),
                   _mm256_sign_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.qs)), q));
      const __m256 sc = _mm256_mul_ps(_mm256_set_m128(_mm_set1_ps(kUe4m3Half[wb[i].d[2 * h + 1]]),
                                                      _mm_set1_ps(kUe4m3Half[wb[i].d[2 * h]])),
                                      _mm256_set1_ps(xb.d));
      acc = _mm256_fmadd_ps(sc, _mm256_cvtepi32_ps(p), acc);
    }
  }
  return hsum(acc);
}

void run_nvfp4(const uint8_t* w, size_t rb, int64_t cols, int64_t r0, int64_t r1, const uint8_t* xa,
               size_t xa_stride, int64_t t0, int64_t t1, float* y, int64_t ldy) {
  // Row-dot only: weight rows outer in small blocks so they stay in L1 while the activation rows
  // pass (NVFP4 files are rare; no unpacked prefill tiles yet).
  const int64_t block = std::max<int64_t>(1, int64_t(16384 / std::max<size_t>(1, rb)));
  for (int64_t rs = r0; rs < r1; rs += block) {
    const int64_t re = std::min(r1, rs + block);
    for (int64_t t = t0; t < t1; ++t) {
      const auto* xb = reinterpret_cast<const BlockQ8A*>(xa + size_t(t) * xa_stride);
      for (int64_t r = rs; r < re; ++r) y[t * ldy + r] = vec_dot_nvfp4(w + size_t(r) * rb, xb, cols / 64);
    }
  }
}

bool gemm_iq(GgmlType type, const uint8_t* w, size_t rb, int64_t cols, int64_t r0, int64_t r1,
             const uint8_t* xa, size_t xa_stride, int64_t t0, int64_t t1, float* y, int64_t ldy) {
  switch (type) {
    case GgmlType::IQ2_XXS:
      run_iq<FIq2Xxs>(w, rb, cols, r0, r1, xa, xa_stride, t0, t1, y, ldy);
      return true;
    case GgmlType::IQ2_XS:
      run_iq<FIq2Xs>(w, rb, cols, r0, r1, xa, xa_stride, t0, t1, y, ldy);
      return true;
    case GgmlType::IQ2_S:
      run_iq<FIq2S>(w, rb, cols, r0, r1, xa, xa_stride, t0, t1, y, ldy);
      return true;
    case GgmlType::IQ3_XXS:
      run_iq<FIq3Xxs>(w, rb, cols, r0, r1, xa, xa_stride, t0, t1, y, ldy);
      return true;
    case GgmlType::IQ3_S:
      run_iq<FIq3S>(w, rb, cols, r0, r1, xa, xa_stride, t0, t1, y, ldy);
      return true;
    case GgmlType::IQ1_S:
      run_iq<FIq1S>(w, rb, cols, r0, r1, xa, xa_stride, t0, t1, y, ldy);
      return true;
    case GgmlType::IQ1_M:
      run_iq<FIq1M>(w, rb, cols, r0, r1, xa, xa_stride, t0, t1, y, ldy);
      return true;
    case GgmlType::IQ4_XS:
      run_iq<FIq4Xs>(w, rb, cols, r0, r1, xa, xa_stride, t0, t1, y, ldy);
      return true;
    case GgmlType::TQ1_0:
      run_iq<FTq1>(w, rb, cols, r0, r1, xa, xa_stride, t0, t1, y, ldy);
      return true;
    case GgmlType::TQ2_0:
      run_iq<FTq2>(w, rb, cols, r0, r1, xa, xa_stride, t0, t1, y, ldy);
      return true;
    case GgmlType::MXFP4:
      Q8AKernel<TMxfp4>::run(w, rb, cols, r0, r1, xa, xa_stride, t0, t1, y, ldy);
      return true;
    case GgmlType::NVFP4:
      run_nvfp4(w, rb, cols, r0, r1, xa, xa_stride, t0, t1, y, ldy);
      return true;
    default:
      return false;
  }
}

bool dequantize_iq(GgmlType t, const void* src, float* dst, int64_t n) {
  switch (t) {
    case GgmlType::MXFP4:
      dequant_q8a_type<TMxfp4>(src, dst, n);
      return true;
    default:
      return false;
  }
}

}  // namespace
}  // namespace qleap::kern::QLEAP_ISA_NS
