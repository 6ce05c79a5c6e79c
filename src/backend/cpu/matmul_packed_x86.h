// Kernels over the repacked weights (packed_weights.h): decode (one activation row) and prefill,
// for AVX-512 VNNI (16 rows per vector) and AVX2 (8 rows: each 64-byte vector of the layout is two
// halves). Included at the end of matmul_x86_impl.h after matmul_panel_x86.h, inside its namespace.
//
// Each format has one unpacker: for a super-block it calls f(sub, U, nU, a, b) for every sub-block,
// with nU vectors U of unsigned bytes (kPR rows x 4 consecutive values; signed for Q8_0 on AVX2)
// and per-row floats a, b such that w = a * u + b (the panel form of matmul_panel_x86.h). Decode
// multiplies the vectors with the activation bytes right away; prefill stores them as a panel and
// runs the panel kernel over all tokens.

namespace packed {

using panel::kPR;
using panel::kVB;
using panel::VF;
using panel::VI;

#if QLEAP_USE_VNNI
inline VI ldq(const uint8_t* p, int) {
  return _mm512_load_si512(p);
}
// 16 fp16 -> floats (AVX2: 8 of them, rows 8h ..).
inline VF ld_h(const uint8_t* p, int) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline VF ld_u8f(const uint8_t* p, int) {
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
inline VF ld_i8f(const uint8_t* p, int) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
// The low (hi = false) or high nibbles of 16 bytes as floats (Q2_K's scales and minimums).
inline VF ld_u4f(const uint8_t* p, int, bool hi) {
  const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm512_cvtepi32_ps(hi ? _mm512_srli_epi32(v, 4) : _mm512_and_si512(v, _mm512_set1_epi32(15)));
}
inline VI v_and(VI a, VI b) {
  return _mm512_and_si512(a, b);
}
inline VI v_or(VI a, VI b) {
  return _mm512_or_si512(a, b);
}
inline VI v_xor(VI a, VI b) {
  return _mm512_xor_si512(a, b);
}
inline VI v_srl16(VI a, int n) {
  return _mm512_srli_epi16(a, unsigned(n));
}
inline VI v_sll16(VI a, int n) {
  return _mm512_slli_epi16(a, unsigned(n));
}
inline VI v_b8(int c) {
  return _mm512_set1_epi8(char(c));
}
// Adds 16 to the bytes whose bit is set in the 64-bit mask (the Q5_K fifth bit).
inline VI v_fifth(VI v, const uint8_t* mask, int) {
  uint64_t m;
  std::memcpy(&m, mask, 8);
  return _mm512_or_si512(v, _mm512_maskz_mov_epi8(__mmask64(m), _mm512_set1_epi8(0x10)));
}
inline VF v_neg(VF a) {
  return _mm512_sub_ps(_mm512_setzero_ps(), a);
}
inline VF v_scale(VF a, float s) {
  return _mm512_mul_ps(a, _mm512_set1_ps(s));
}
#else
inline VI ldq(const uint8_t* p, int h) {
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(p + 32 * h));
}
inline VF ld_h(const uint8_t* p, int h) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * h)));
}
inline VF ld_u8f(const uint8_t* p, int h) {
  return _mm256_cvtepi32_ps(
      _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * h))));
}
inline VF ld_i8f(const uint8_t* p, int h) {
  return _mm256_cvtepi32_ps(
      _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * h))));
}
inline VF ld_u4f(const uint8_t* p, int h, bool hi) {
  const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * h)));
  return _mm256_cvtepi32_ps(hi ? _mm256_srli_epi32(v, 4) : _mm256_and_si256(v, _mm256_set1_epi32(15)));
}
inline VI v_and(VI a, VI b) {
  return _mm256_and_si256(a, b);
}
inline VI v_or(VI a, VI b) {
  return _mm256_or_si256(a, b);
}
inline VI v_xor(VI a, VI b) {
  return _mm256_xor_si256(a, b);
}
inline VI v_srl16(VI a, int n) {
  return _mm256_srli_epi16(a, n);
}
inline VI v_sll16(VI a, int n) {
  return _mm256_slli_epi16(a, n);
}
inline VI v_b8(int c) {
  return _mm256_set1_epi8(char(c));
}
inline VF v_neg(VF a) {
  return _mm256_sub_ps(_mm256_setzero_ps(), a);
}
inline VF v_scale(VF a, float s) {
  return _mm256_mul_ps(a, _mm256_set1_ps(s));
}
#endif

// Bit v (0..7) of every byte of the bit planes f at 0x10: a 16-bit shift left by at most 4 or right
// by at most 3 never carries another byte's bit there (the fifth bits of Q5_0 / Q5_1, and of Q5_K on
// AVX2).
inline VI v_plane(VI f, int v) {
  const VI s = v < 4 ? v_sll16(f, 4 - v) : v == 4 ? f : v_srl16(f, v - 4);
  return v_and(s, v_b8(0x10));
}

// ---- unpackers: s = the super-block's scales, q = its quants, h = AVX2 half (rows 8h ..) ----

struct PQ4_0 {
  static constexpr int kSub = 32;
  static constexpr bool kSigned = false;
  template <class F>
  static void unpack(const uint8_t* s, const uint8_t* q, int h, F&& f) {
    const VF a = ld_h(s, h);
    VI u[8];
    const VI m4 = v_b8(0x0F);
    for (int j = 0; j < 4; ++j) {
      const VI v = ldq(q + 64 * j, h);
      u[j] = v_and(v, m4);
      u[j + 4] = v_and(v_srl16(v, 4), m4);
    }
    f(0, u, 8, a, v_scale(a, -8.0f));
  }
};

struct PQ4_1 {
  static constexpr int kSub = 32;
  static constexpr bool kSigned = false;
  template <class F>
  static void unpack(const uint8_t* s, const uint8_t* q, int h, F&& f) {
    VI u[8];
    const VI m4 = v_b8(0x0F);
    for (int j = 0; j < 4; ++j) {
      const VI v = ldq(q + 64 * j, h);
      u[j] = v_and(v, m4);
      u[j + 4] = v_and(v_srl16(v, 4), m4);
    }
    f(0, u, 8, ld_h(s, h), ld_h(s + 32, h));
  }
};

// Q5_0 (kMin: Q5_1): the Q4_0 nibbles plus the fifth bits of packed_weights.cpp's bit vector, bit j
// of each byte for unpacked vector j (v_plane).
template <bool kMin>
struct PQ5 {
  static constexpr int kSub = 32;
  static constexpr bool kSigned = false;
  template <class F>
  static void unpack(const uint8_t* s, const uint8_t* q, int h, F&& f) {
    const VI hb = ldq(q, h);
    const VI m4 = v_b8(0x0F);
    VI u[8];
    for (int j = 0; j < 4; ++j) {
      const VI v = ldq(q + 64 + 64 * j, h);
      u[j] = v_or(v_and(v, m4), v_plane(hb, j));
      u[j + 4] = v_or(v_and(v_srl16(v, 4), m4), v_plane(hb, j + 4));
    }
    const VF a = ld_h(s, h);
    if constexpr (kMin) {
      f(0, u, 8, a, ld_h(s + 32, h));
    } else {
      f(0, u, 8, a, v_scale(a, -16.0f));
    }
  }
};

struct PQ8_0 {
  static constexpr int kSub = 32;
  // VPDPBUSD takes unsigned weights: +128 (b = -128 a). AVX2 keeps them signed (sign trick).
  static constexpr bool kSigned = !QLEAP_USE_VNNI;
  template <class F>
  static void unpack(const uint8_t* s, const uint8_t* q, int h, F&& f) {
    const VF a = ld_h(s, h);
    VI u[8];
    for (int g = 0; g < 8; ++g) {
      u[g] = ldq(q + 64 * g, h);
      if constexpr (!kSigned) u[g] = v_xor(u[g], v_b8(0x80));
    }
    if constexpr (kSigned) {
      f(0, u, 8, a, a);  // b unused by signed kernels
    } else {
      f(0, u, 8, a, v_scale(a, -128.0f));
    }
  }
};

// Q4_K (kFifth: Q5_K; its fifth bits as 64-bit masks with VNNI, as bit planes on AVX2).
template <bool kFifth>
struct PQ45_K {
  static constexpr int kSub = 32;
  static constexpr bool kSigned = false;
  template <class F>
  static void unpack(const uint8_t* s, const uint8_t* q, int h, F&& f) {
    const VF d = ld_h(s, h), dmin = v_neg(ld_h(s + 32, h));
    const VI m4 = v_b8(0x0F);
    const uint8_t* nib = kFifth ? q + 512 : q;
    for (int c = 0; c < 4; ++c) {
      VI lo[8], hi[8];
      for (int v = 0; v < 8; ++v) {
        const VI x = ldq(nib + 64 * (8 * c + v), h);
        lo[v] = v_and(x, m4);
        hi[v] = v_and(v_srl16(x, 4), m4);
        if constexpr (kFifth) {
#if QLEAP_USE_VNNI
          const uint8_t* mk = q + 16 * (8 * c + v);
          lo[v] = v_fifth(lo[v], mk, h);
          hi[v] = v_fifth(hi[v], mk + 8, h);
#else
          lo[v] = v_or(lo[v], v_plane(ldq(q + 128 * c, h), v));
          hi[v] = v_or(hi[v], v_plane(ldq(q + 128 * c + 64, h), v));
#endif
        }
      }
      const int j0 = 2 * c, j1 = 2 * c + 1;
      f(j0, lo, 8, panel::vmul(d, ld_u8f(s + 64 + 16 * j0, h)),
        panel::vmul(dmin, ld_u8f(s + 192 + 16 * j0, h)));
      f(j1, hi, 8, panel::vmul(d, ld_u8f(s + 64 + 16 * j1, h)),
        panel::vmul(dmin, ld_u8f(s + 192 + 16 * j1, h)));
    }
  }
};

// The four 6-bit quant vectors of a Q6_K triple (packed_weights.cpp): a, b, c hold values k = 0,
// 1, 2 in their low 6 bits and 2 bits each of value k = 3 in their top bits.
inline void q6_unpack3(VI a, VI b, VI c, VI* u) {
  const VI m6 = v_b8(0x3F);
  u[0] = v_and(a, m6);
  u[1] = v_and(b, m6);
  u[2] = v_and(c, m6);
  // 16-bit shifts pull bits of the next byte into the top: each piece keeps only its own bits.
#if QLEAP_USE_VNNI
  const VI top = v_and(c, v_b8(0xC0));
  // ternlog 0xCA: m ? x : y, bit by bit.
  const VI lo4 = _mm512_ternarylogic_epi32(v_b8(0x03), v_srl16(a, 6), v_srl16(b, 4), 0xCA);
  u[3] = _mm512_ternarylogic_epi32(v_b8(0x0F), lo4, v_srl16(top, 2), 0xCA);
#else
  // The top bits alone (ANDNOT by the 0x3F mask: one constant) shift without picking up the next
  // byte's.
  u[3] = v_or(v_or(v_srl16(_mm256_andnot_si256(m6, a), 6), v_srl16(_mm256_andnot_si256(m6, b), 4)),
              v_srl16(_mm256_andnot_si256(m6, c), 2));
#endif
}

// The four triples 4 vq .. 4 vq + 3 of half hh of a super-block's quants q (rows 8h .. on AVX2), as
// u[k][i] = value k of triple 4 vq + i: the four vectors of each of the four sub-blocks 8 hh + 2 k
// + vq.
inline void q6_unpack_group(const uint8_t* q, int hh, int vq, int h, VI (&u)[4][4]) {
  for (int i = 0; i < 4; ++i) {
    const uint8_t* t = q + 64 * 3 * (8 * hh + 4 * vq + i);
    VI g[4];
    q6_unpack3(ldq(t, h), ldq(t + 64, h), ldq(t + 128, h), g);
    for (int k = 0; k < 4; ++k) u[k][i] = g[k];
  }
}

// The 2-bit quants of a Q2_K / Q3_K low-bit vector (packed_weights.cpp): bits 2k of each byte, for
// the four sub-blocks 8 hh + 2k + vq of the vector's (hh, vq).
inline VI k2_bits(VI lo, int k) {
  return v_and(k == 0 ? lo : v_srl16(lo, 2 * k), v_b8(0x03));
}

// Q2_K: w = d sc u - dmin m, u = 0..3.
struct PQ2_K {
  static constexpr int kSub = 16;
  static constexpr bool kSigned = false;
  template <class F>
  static void unpack(const uint8_t* s, const uint8_t* q, int h, F&& f) {
    const VF d = ld_h(s, h), dmin = v_neg(ld_h(s + 32, h));
    for (int hh = 0; hh < 2; ++hh) {
      for (int vq = 0; vq < 2; ++vq) {
        VI u[4][4];  // [k][i]
        for (int i = 0; i < 4; ++i) {
          const VI lo = ldq(q + 64 * (8 * hh + 4 * vq + i), h);
          for (int k = 0; k < 4; ++k) u[k][i] = k2_bits(lo, k);
        }
        for (int k = 0; k < 4; ++k) {
          const int sub = 8 * hh + 2 * k + vq;
          const uint8_t* sm = s + 64 + 16 * sub;
          f(sub, u[k], 4, panel::vmul(d, ld_u4f(sm, h, false)), panel::vmul(dmin, ld_u4f(sm, h, true)));
        }
      }
    }
  }
};

// The quants u[k][i] (0..7, the value + 4) of Q3_K's (hh, vq) vectors t: two triples (a, b, c) of
// 3-bit fields (packed_weights.cpp). A 16-bit shift right never brings another byte's bits into the
// bits kept.
inline void q3_unpack_group(const uint8_t* t, int h, VI (&u)[4][4]) {
  const VI m3 = v_b8(0x03), m4 = v_b8(0x04), m7 = v_b8(0x07);
  for (int p = 0; p < 2; ++p) {
    const VI a = ldq(t + 192 * p, h), b = ldq(t + 192 * p + 64, h), c = ldq(t + 192 * p + 128, h);
    const int i0 = 2 * p, i1 = 2 * p + 1;
    u[0][i0] = v_and(a, m7);
    u[1][i0] = v_and(v_srl16(a, 3), m7);
    u[2][i0] = v_and(b, m7);
    u[3][i0] = v_and(v_srl16(b, 3), m7);
    u[0][i1] = v_and(c, m7);
    u[1][i1] = v_and(v_srl16(c, 3), m7);
    u[2][i1] = v_or(v_and(v_srl16(c, 6), m3), v_and(v_srl16(a, 4), m4));
    u[3][i1] = v_or(v_and(v_srl16(b, 6), m3), v_and(v_srl16(a, 5), m4));
  }
}

// Q6_K (w = d sc (u - 32)) and Q3_K (kQ3: w = d sc (u - 4)): an fp16 d and int8 scales per 16 values
// (packed_weights.cpp), the quants of each (hh, vq) unpacked by q6_unpack_group / q3_unpack_group.
template <bool kQ3>
struct PSc16 {
  static constexpr int kSub = 16;
  static constexpr bool kSigned = false;
  template <class F>
  static void unpack(const uint8_t* s, const uint8_t* q, int h, F&& f) {
    const VF d = ld_h(s, h);
    for (int hh = 0; hh < 2; ++hh) {
      for (int vq = 0; vq < 2; ++vq) {
        VI u[4][4];  // [k][i]
        if constexpr (kQ3) {
          q3_unpack_group(q + 64 * 6 * (2 * hh + vq), h, u);
        } else {
          q6_unpack_group(q, hh, vq, h, u);
        }
        for (int k = 0; k < 4; ++k) {
          const int sub = 8 * hh + 2 * k + vq;
          const VF a = panel::vmul(d, ld_i8f(s + 32 + 16 * sub, h));
          f(sub, u[k], 4, a, v_scale(a, kQ3 ? -4.0f : -32.0f));
        }
      }
    }
  }
};
using PQ6_K = PSc16<false>;
using PQ3_K = PSc16<true>;

#include "backend/cpu/matmul_packed_iq_x86.h"

// ---- decode: a few activation rows, each computed exactly as if alone ----

// AVX2: k-groups whose 16-bit products (PMADDUBSW pair sums, <= 2 * 127 * max byte) may be added
// before widening: bytes up to 15 (Q4_0, Q4_1, Q4_K), 31 (Q5_0, Q5_1, Q5_K), 63 (Q6_K).
template <class P>
constexpr int widen_of() {
  if constexpr (std::is_same_v<P, PQ6_K>) return 2;
  if constexpr (std::is_same_v<P, PQ45_K<true>> || std::is_same_v<P, PQ5<false>> ||
                std::is_same_v<P, PQ5<true>> || std::is_same_v<P, PMXFP4>)
    return 4;
  return P::kSub / 4;
}

// How far ahead of the kernel the quants are prefetched. A group's rows are one contiguous stream
// and the repacked matrices of a layer follow each other in one arena (packed_weights.cpp), so the
// prefetches stay useful past the end of a group or matrix.
constexpr size_t kPrefetchAhead = 4096;

// Stores kNH halves' results: y[0 .. nr) with nr counting the rows of all kNH halves.
template <int kNH>
void store_halves(float* y, const VF* v, int nr) {
  for (int hh = 0; hh < kNH && nr > kPR * hh; ++hh)
    panel::vstore_rows(y + kPR * hh, v[hh], std::min(kPR, nr - kPR * hh));
}

// y[t][0 .. nr) for tokens [t0, t0 + T) and the rows of group g from half h0 on (AVX2: 8 rows a
// half, kNH halves). Every token runs the same operations in the same order whatever T and kNH
// are (batch invariance: RowExactMatmul). AVX2 reads each 64-byte line of the layout as two
// halves; doing both halves of a super-block before the next (kNH = 2) keeps the weights one
// stream from memory, where a pass per half left memory idle while the second half re-read the
// group from L2.
template <class P, int T, int kNH = 1>
void gemv_rows(const PackedMatrix& pm, int64_t g, int h0, const panel::Acts& x, int64_t t0, float* y,
               int64_t ldy, int nr) {
  const uint8_t* gs = pm.data + size_t(g) * pm.group_bytes;
  const uint8_t* gq = gs + pm.q_offset;
  const int64_t nsb = pm.cols / pm.sb_values;
  const int64_t n32 = pm.cols / 32, nsub = pm.cols / P::kSub;
  VF acc0[kNH][T], acc1[kNH][T];
  for (int hh = 0; hh < kNH; ++hh)
    for (int t = 0; t < T; ++t) acc0[hh][t] = acc1[hh][t] = panel::vzerof();
  for (int64_t sb = 0; sb < nsb; ++sb) {
    const uint8_t* q = gq + size_t(sb) * pm.q_bytes;
    // The quants stream ahead of the hardware prefetcher's reach (it stops at 4 KiB pages).
    for (size_t o = 0; o < pm.q_bytes; o += 64)
      _mm_prefetch(reinterpret_cast<const char*>(q + kPrefetchAhead + o), _MM_HINT_T0);
    const int64_t k_sb = sb * pm.sb_values;
    for (int hh = 0; hh < kNH; ++hh)
      P::unpack(gs + size_t(sb) * pm.s_bytes, q, h0 + hh, [&](int sub, const VI* u, int nu, VF a, VF b) {
        const int64_t k0 = k_sb + int64_t(sub) * P::kSub;
#if !QLEAP_USE_VNNI
        VI abs_u[8];
        if constexpr (P::kSigned) {
          for (int gi = 0; gi < nu; ++gi) abs_u[gi] = _mm256_sign_epi8(u[gi], u[gi]);
        }
#endif
        for (int t = 0; t < T; ++t) {
          const int8_t* xq = x.q + size_t(t0 + t) * size_t(pm.cols) + k0;
          VI i0 = panel::vzeroi(), i1 = panel::vzeroi();
#if QLEAP_USE_VNNI
          for (int gi = 0; gi < nu; ++gi) {
            VI& acc = (gi & 1) ? i1 : i0;
            acc = _mm512_dpbusd_epi32(acc, u[gi], panel::vbcast32(xq + 4 * gi));
          }
          const VI isum = _mm512_add_epi32(i0, i1);
#else
        const __m256i ones = _mm256_set1_epi16(1);
        if constexpr (P::kSigned) {
          for (int gi = 0; gi < nu; ++gi) {
            VI& acc = (gi & 1) ? i1 : i0;
            const __m256i p = _mm256_maddubs_epi16(abs_u[gi], _mm256_sign_epi8(panel::vbcast32(xq + 4 * gi), u[gi]));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, ones));
          }
        } else {
          // Narrow bytes: several 16-bit products add up before one widening (bounds: widen_of).
          constexpr int kW = widen_of<P>();
          for (int g0 = 0; g0 < nu; g0 += kW) {
            __m256i p = _mm256_maddubs_epi16(u[g0], panel::vbcast32(xq + 4 * g0));
            for (int gi = g0 + 1; gi < g0 + kW; ++gi)
              p = _mm256_add_epi16(p, _mm256_maddubs_epi16(u[gi], panel::vbcast32(xq + 4 * gi)));
            VI& acc = ((g0 / kW) & 1) ? i1 : i0;
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, ones));
          }
        }
        const VI isum = _mm256_add_epi32(i0, i1);
#endif
          const VF sc = panel::vmul(a, panel::vbcastf(x.d + size_t(t0 + t) * size_t(n32) + k0 / 32));
          acc0[hh][t] = panel::vfma(panel::vcvt(isum), sc, acc0[hh][t]);
          if constexpr (!P::kSigned)
            acc1[hh][t] = panel::vfma(b, panel::vbcastf(x.s + size_t(t0 + t) * size_t(nsub) + k0 / P::kSub),
                                      acc1[hh][t]);
        }
      });
  }
  for (int t = 0; t < T; ++t) {
    VF v[kNH];
#if QLEAP_USE_VNNI
    for (int hh = 0; hh < kNH; ++hh) v[hh] = _mm512_add_ps(acc0[hh][t], acc1[hh][t]);
#else
    for (int hh = 0; hh < kNH; ++hh) v[hh] = _mm256_add_ps(acc0[hh][t], acc1[hh][t]);
#endif
    store_halves<kNH>(y + size_t(t0 + t) * size_t(ldy), v, nr);
  }
}

// Where the activations of tokens t0 .. t0 + T - 1 start: quants, scales per 32, and the
// kernel's per-token array `extra` (sub-block sums or Q6_K offsets) of per_token entries a token.
template <int T, class E>
struct TokenActs {
  const int8_t* q[T];
  const float* d[T];
  const E* e[T];
  TokenActs(const panel::Acts& x, int64_t t0, const E* extra, int64_t per_token) {
    for (int t = 0; t < T; ++t) {
      q[t] = x.q + size_t(t0 + t) * size_t(x.cols);
      d[t] = x.d + size_t(t0 + t) * size_t(x.cols / 32);
      e[t] = extra + size_t(t0 + t) * size_t(per_token);
    }
  }
};

#if QLEAP_USE_VNNI
// Decode of the 4-bit formats with one sub-block per super-block (Q4_0, Q4_1) on VNNI, T tokens.
// The high nibbles enter VPDPBUSD as (byte & 0xF0) = 16 * nibble instead of being shifted down: one
// AND per vector instead of shift + AND. The integer sum is then 16 * low + high = 16 * the true
// sum, and the accumulator is scaled by 1/16 at the end; both are exact (powers of two, sums far
// below 2^24), so the result is bit-identical to gemv_rows.
template <bool kMin, int T>
void gemv_rows_q4(const PackedMatrix& pm, int64_t g, const panel::Acts& x, int64_t t0, float* y, int64_t ldy,
                  int nr) {
  const uint8_t* s = pm.data + size_t(g) * pm.group_bytes;
  const uint8_t* q = s + pm.q_offset;
  const int64_t nsb = pm.cols / 32;
  const TokenActs<T, float> xa(x, t0, x.s, nsb);
  VF acc0[T], acc1[T];
  for (int t = 0; t < T; ++t) acc0[t] = acc1[t] = panel::vzerof();
  const VI m_lo = v_b8(0x0F), m_hi = v_b8(0xF0);
  for (int64_t sb = 0; sb < nsb; ++sb, q += 256, s += pm.s_bytes) {
    for (int o = 0; o < 256; o += 64)
      _mm_prefetch(reinterpret_cast<const char*>(q + kPrefetchAhead + o), _MM_HINT_T0);
    const VF a = ld_h(s, 0);
    const VF b = kMin ? ld_h(s + 32, 0) : v_scale(a, -8.0f);
    VI lo[4], hi[4];
    for (int j = 0; j < 4; ++j) {
      const VI v = _mm512_load_si512(q + 64 * j);
      lo[j] = v_and(v, m_lo);
      hi[j] = v_and(v, m_hi);
    }
    for (int t = 0; t < T; ++t) {
      const int8_t* xt = xa.q[t] + 32 * sb;
      VI il = _mm512_dpbusd_epi32(panel::vzeroi(), lo[0], panel::vbcast32(xt));
      VI ih = _mm512_dpbusd_epi32(panel::vzeroi(), hi[0], panel::vbcast32(xt + 16));
      for (int j = 1; j < 4; ++j) {
        il = _mm512_dpbusd_epi32(il, lo[j], panel::vbcast32(xt + 4 * j));
        ih = _mm512_dpbusd_epi32(ih, hi[j], panel::vbcast32(xt + 16 + 4 * j));
      }
      const VI isum = _mm512_add_epi32(_mm512_slli_epi32(il, 4), ih);
      acc0[t] = panel::vfma(panel::vcvt(isum), panel::vmul(a, panel::vbcastf(xa.d[t] + sb)), acc0[t]);
      acc1[t] = panel::vfma(b, panel::vbcastf(xa.e[t] + sb), acc1[t]);
    }
  }
  for (int t = 0; t < T; ++t)
    panel::vstore_rows(y + size_t(t0 + t) * size_t(ldy),
                       _mm512_add_ps(_mm512_mul_ps(acc0[t], _mm512_set1_ps(1.0f / 16)), acc1[t]), nr);
}
#endif

#if QLEAP_USE_VNNI
// Decode of Q6_K on VNNI, T tokens. The -32 offset of the quants enters as the starting value of
// each sub-block's VPDPBUSD chain (-32 * the sub-block's activation sum, x.o16), so a sub-block's
// integer sum is exact and costs one conversion; the two sub-blocks of an activation scale are
// combined before it (one multiply by d * the activation scale per 32 values instead of one per 16
// plus the offset's).
template <int T>
void gemv_rows_q6(const PackedMatrix& pm, int64_t g, const panel::Acts& x, int64_t t0, float* y, int64_t ldy,
                  int nr) {
  const uint8_t* s = pm.data + size_t(g) * pm.group_bytes;
  const uint8_t* q = s + pm.q_offset;
  const int64_t nsb = pm.cols / 256;
  const TokenActs<T, int32_t> xa(x, t0, x.o16, pm.cols / 16);
  VF acc[T];
  for (int t = 0; t < T; ++t) acc[t] = panel::vzerof();
  for (int64_t sb = 0; sb < nsb; ++sb, q += 3072, s += pm.s_bytes) {
    for (int o = 0; o < 3072; o += 64)
      _mm_prefetch(reinterpret_cast<const char*>(q + kPrefetchAhead + o), _MM_HINT_T0);
    VF accs[T];
    for (int t = 0; t < T; ++t) accs[t] = panel::vzerof();
#pragma GCC unroll 2
    for (int hh = 0; hh < 2; ++hh) {
      VI isum[T][4][2];
#pragma GCC unroll 2
      for (int vq = 0; vq < 2; ++vq) {
        VI u[4][4];  // [k][i]
        q6_unpack_group(q, hh, vq, 0, u);
        for (int t = 0; t < T; ++t) {
          for (int k = 0; k < 4; ++k) {
            const int64_t k0 = 256 * sb + 128 * hh + 32 * k + 16 * vq;
            const int8_t* xt = xa.q[t] + k0;
            VI is = _mm512_set1_epi32(xa.e[t][k0 / 16]);
            for (int i = 0; i < 4; ++i) is = _mm512_dpbusd_epi32(is, u[k][i], panel::vbcast32(xt + 4 * i));
            isum[t][k][vq] = is;
          }
        }
      }
      VF sc[4][2];
      for (int k = 0; k < 4; ++k)
        for (int vq = 0; vq < 2; ++vq) sc[k][vq] = ld_i8f(s + 32 + 16 * (8 * hh + 2 * k + vq), 0);
      for (int t = 0; t < T; ++t) {
        for (int k = 0; k < 4; ++k) {
          const VF f = panel::vfma(panel::vcvt(isum[t][k][1]), sc[k][1],
                                   panel::vmul(panel::vcvt(isum[t][k][0]), sc[k][0]));
          accs[t] = panel::vfma(f, panel::vbcastf(xa.d[t] + 8 * sb + 4 * hh + k), accs[t]);
        }
      }
    }
    const VF d = ld_h(s, 0);
    for (int t = 0; t < T; ++t) acc[t] = panel::vfma(d, accs[t], acc[t]);
  }
  for (int t = 0; t < T; ++t) panel::vstore_rows(y + size_t(t0 + t) * size_t(ldy), acc[t], nr);
}
#else
// Q6_K on AVX2, rows 8h ..: the signed scales of sub-blocks 2m and 2m + 1 (m = 4 hh + k, the
// 32 values of activation scale m) as 16-bit pairs (sc0, sc1) per 32-bit lane, and each of them
// alone in both halves of the lane (vq = 0: sc0, 1: sc1) for PMADDWD.
inline __m256i q6_scale_pairs(const uint8_t* s, int hh, int k, int h) {
  const uint8_t* sp = s + 32 + 16 * (8 * hh + 2 * k) + 8 * h;
  return _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sp)),
                                                _mm_loadl_epi64(reinterpret_cast<const __m128i*>(sp + 16))));
}
inline __m256i q6_scale_of(__m256i pairs, int vq) {
  const __m256i dup = vq == 0 ? _mm256_setr_epi8(0, 1, 0, 1, 4, 5, 4, 5, 8, 9, 8, 9, 12, 13, 12, 13, 0, 1, 0,
                                                 1, 4, 5, 4, 5, 8, 9, 8, 9, 12, 13, 12, 13)
                              : _mm256_setr_epi8(2, 3, 2, 3, 6, 7, 6, 7, 10, 11, 10, 11, 14, 15, 14, 15, 2, 3,
                                                 2, 3, 6, 7, 6, 7, 10, 11, 10, 11, 14, 15, 14, 15);
  return _mm256_shuffle_epi8(pairs, dup);
}

// Decode of Q6_K on AVX2, T tokens, rows 8h ..: PMADDUBSW pairs of vectors (<= 2 * 2 * 63 * 127 in
// 16 bits), then PMADDWD by the row's sub-block scale instead of by ones, so the two sub-blocks of
// an activation scale and the -32 offset (-32 * sc * the activation sum, x.o16 holding the two
// sums of a 32 as 16-bit halves) add up exactly in 32 bits: one conversion per 32 values.
template <int T>
void gemv_rows_q6(const PackedMatrix& pm, int64_t g, int h, const panel::Acts& x, int64_t t0, float* y,
                  int64_t ldy, int nr) {
  const uint8_t* s = pm.data + size_t(g) * pm.group_bytes;
  const uint8_t* q = s + pm.q_offset;
  const int64_t nsb = pm.cols / 256;
  const TokenActs<T, int32_t> xa(x, t0, x.o16, pm.cols / 32);
  VF acc[T];
  for (int t = 0; t < T; ++t) acc[t] = panel::vzerof();
  for (int64_t sb = 0; sb < nsb; ++sb, q += 3072, s += pm.s_bytes) {
    VF accs[T];
    for (int t = 0; t < T; ++t) accs[t] = panel::vzerof();
    for (int hh = 0; hh < 2; ++hh) {
      __m256i sc[4][2], isum[T][4];
      for (int k = 0; k < 4; ++k) {
        const __m256i scp = q6_scale_pairs(s, hh, k, h);
        sc[k][0] = q6_scale_of(scp, 0);
        sc[k][1] = q6_scale_of(scp, 1);
        const __m256i scp32 = _mm256_slli_epi16(scp, 5);  // |32 sc| <= 4096
        for (int t = 0; t < T; ++t)
          isum[t][k] = _mm256_madd_epi16(scp32, _mm256_set1_epi32(xa.e[t][8 * sb + 4 * hh + k]));
      }
      for (int vq = 0; vq < 2; ++vq) {
        // The 48 lines' prefetches, 12 per (hh, vq), among the work (gemv1_q6k).
        const uint8_t* pf = q + kPrefetchAhead + 64 * 12 * (2 * hh + vq);
        for (int o = 0; o < 12; ++o) _mm_prefetch(reinterpret_cast<const char*>(pf + 64 * o), _MM_HINT_T0);
        VI u[4][4];  // [k][i]
        q6_unpack_group(q, hh, vq, h, u);
        for (int t = 0; t < T; ++t) {
          for (int k = 0; k < 4; ++k) {
            const int8_t* xt = xa.q[t] + 256 * sb + 128 * hh + 32 * k + 16 * vq;
            const __m256i p0 = _mm256_add_epi16(_mm256_maddubs_epi16(u[k][0], panel::vbcast32(xt)),
                                                _mm256_maddubs_epi16(u[k][1], panel::vbcast32(xt + 4)));
            const __m256i p1 = _mm256_add_epi16(_mm256_maddubs_epi16(u[k][2], panel::vbcast32(xt + 8)),
                                                _mm256_maddubs_epi16(u[k][3], panel::vbcast32(xt + 12)));
            isum[t][k] = _mm256_add_epi32(isum[t][k], _mm256_add_epi32(_mm256_madd_epi16(p0, sc[k][vq]),
                                                                       _mm256_madd_epi16(p1, sc[k][vq])));
          }
        }
      }
      for (int t = 0; t < T; ++t)
        for (int k = 0; k < 4; ++k)
          accs[t] =
              panel::vfma(panel::vcvt(isum[t][k]), panel::vbcastf(xa.d[t] + 8 * sb + 4 * hh + k), accs[t]);
    }
    const VF d = ld_h(s, h);
    for (int t = 0; t < T; ++t) acc[t] = panel::vfma(d, accs[t], acc[t]);
  }
  for (int t = 0; t < T; ++t) panel::vstore_rows(y + size_t(t0 + t) * size_t(ldy), acc[t], nr);
}

#include "backend/cpu/matmul_packed_avx2_gemv1.h"
#endif

// Up to kGemvTokens tokens per pass over the weights.
constexpr int kGemvTokens = 4;

// f(T, t) for tokens [t, t + T) of m: passes of kGemvTokens, then one of the rest (T a constant).
template <class F>
void by_tokens(int64_t m, F&& f) {
  int64_t t = 0;
  for (; t + kGemvTokens <= m; t += kGemvTokens) f(std::integral_constant<int, kGemvTokens>{}, t);
  switch (int(m - t)) {
    case 1:
      return f(std::integral_constant<int, 1>{}, t);
    case 2:
      return f(std::integral_constant<int, 2>{}, t);
    case 3:
      return f(std::integral_constant<int, 3>{}, t);
    default:
      return;
  }
}

// Rows [kPR h, kPR h + nr) of group g for every token.
template <class P>
void gemv_half(const PackedMatrix& pm, int64_t g, int h, const panel::Acts& x, float* y, int64_t ldy,
               int nr) {
#if QLEAP_USE_VNNI
  if constexpr (std::is_same_v<P, PQ4_0> || std::is_same_v<P, PQ4_1>) {
    constexpr bool kMin = std::is_same_v<P, PQ4_1>;
    return by_tokens(x.m, [&](auto T, int64_t t) { gemv_rows_q4<kMin, T()>(pm, g, x, t, y, ldy, nr); });
  }
  if constexpr (std::is_same_v<P, PQ6_K>)
    return by_tokens(x.m, [&](auto T, int64_t t) { gemv_rows_q6<T()>(pm, g, x, t, y, ldy, nr); });
#else
  constexpr bool kQ4 = std::is_same_v<P, PQ4_0> || std::is_same_v<P, PQ4_1>;
  constexpr bool kQ5 = std::is_same_v<P, PQ5<false>> || std::is_same_v<P, PQ5<true>>;
  if constexpr (kQ4 || kQ5) {
    constexpr bool kMin = std::is_same_v<P, PQ4_1> || std::is_same_v<P, PQ5<true>>;
    return by_tokens(x.m, [&](auto T, int64_t t) { gemvt_q4q5<kQ5, kMin, T()>(pm, g, h, x, t, y, ldy, nr); });
  }
  if constexpr (std::is_same_v<P, PQ45_K<false>>)
    return by_tokens(x.m, [&](auto T, int64_t t) { gemvt_q4k<T()>(pm, g, h, x, t, y, ldy, nr); });
  if constexpr (std::is_same_v<P, PMXFP4>)
    return by_tokens(
        x.m, [&](auto T, int64_t t) { gemvt_q4q5<false, false, T(), true>(pm, g, h, x, t, y, ldy, nr); });
  if constexpr (std::is_same_v<P, PQ8_0> || std::is_same_v<P, PIQ4_NL>)
    return by_tokens(x.m, [&](auto T, int64_t t) {
      gemvt_q8<T(), std::is_same_v<P, PIQ4_NL>>(pm, g, h, x, t, y, ldy, nr);
    });
  if constexpr (std::is_same_v<P, PQ6_K>)
    return by_tokens(x.m, [&](auto T, int64_t t) { gemv_rows_q6<T()>(pm, g, h, x, t, y, ldy, nr); });
  if constexpr (std::is_same_v<P, PQ2_K> || std::is_same_v<P, PQ3_K>)
    return by_tokens(x.m, [&](auto T, int64_t t) {
      gemv_rows_k23<std::is_same_v<P, PQ3_K>, T(), 1>(pm, g, h, x, t, y, ldy, nr);
    });
#endif
  by_tokens(x.m, [&](auto T, int64_t t) { gemv_rows<P, T()>(pm, g, h, x, t, y, ldy, nr); });
}

// The nr rows of group g for every token. AVX2 decodes a lone token's two halves in one pass
// (gemv_rows' kNH, or the K-quant kernels of matmul_packed_avx2_gemv1.h); with several tokens
// the accumulators of both halves would not fit the 16 registers, so each half takes its own pass.
template <class P>
void gemv_tokens(const PackedMatrix& pm, int64_t g, const panel::Acts& x, float* y, int64_t ldy, int nr) {
#if !QLEAP_USE_VNNI
  if (x.m == 1) {
    if constexpr (std::is_same_v<P, PQ6_K>)
      gemv1_q6k(pm, g, x, y, nr);
    else if constexpr (std::is_same_v<P, PQ45_K<false>>)
      gemv1_q45k<false>(pm, g, x, y, nr);
    else if constexpr (std::is_same_v<P, PQ45_K<true>>)
      gemv1_q45k<true>(pm, g, x, y, nr);
    else if constexpr (std::is_same_v<P, PQ8_0>)
      gemv1_q8(pm, g, x, y, nr);
    else if constexpr (std::is_same_v<P, PIQ4_NL>)
      gemv1_q8<true>(pm, g, x, y, nr);
    else if constexpr (std::is_same_v<P, PIQ4_XS>)
      gemv1_q8<true, true>(pm, g, x, y, nr);
    else if constexpr (std::is_same_v<P, PMXFP4>)
      gemv1_q4q5<false, false, true>(pm, g, x, y, nr);
    else if constexpr (std::is_same_v<P, PNVFP4>)
      gemv1_nvfp4(pm, g, x, y, nr);
    else if constexpr (std::is_same_v<P, PQ4_0>)
      gemv1_q4q5<false, false>(pm, g, x, y, nr);
    else if constexpr (std::is_same_v<P, PQ4_1>)
      gemv1_q4q5<false, true>(pm, g, x, y, nr);
    else if constexpr (std::is_same_v<P, PQ5<false>>)
      gemv1_q4q5<true, false>(pm, g, x, y, nr);
    else if constexpr (std::is_same_v<P, PQ5<true>>)
      gemv1_q4q5<true, true>(pm, g, x, y, nr);
    else if constexpr (std::is_same_v<P, PQ2_K> || std::is_same_v<P, PQ3_K>)
      gemv_rows_k23<std::is_same_v<P, PQ3_K>, 1, 2>(pm, g, 0, x, 0, y, ldy, nr);
    else
      gemv_rows<P, 1, 2>(pm, g, 0, x, 0, y, ldy, nr);
    return;
  }
#endif
  for (int h = 0; h * kPR < nr; ++h) gemv_half<P>(pm, g, h, x, y + kPR * h, ldy, std::min(kPR, nr - kPR * h));
}

// ---- prefill: unpack a group into a panel, then the panel kernel ----

template <class P>
void fill_panel(const PackedMatrix& pm, int64_t g, int h, uint8_t* pq, float* pa, float* pb) {
  const uint8_t* gs = pm.data + size_t(g) * pm.group_bytes;
  const uint8_t* gq = gs + pm.q_offset;
  const int64_t nsb = pm.cols / pm.sb_values;
  const int subs_per_sb = int(pm.sb_values / P::kSub);
  constexpr int kGroups = P::kSub / 4;
  for (int64_t sb = 0; sb < nsb; ++sb) {
    P::unpack(gs + size_t(sb) * pm.s_bytes, gq + size_t(sb) * pm.q_bytes, h,
              [&](int sub, const VI* u, int nu, VF a, VF b) {
                const int64_t gsub = sb * subs_per_sb + sub;
                uint8_t* dst = pq + size_t(gsub) * kGroups * kVB;
                for (int i = 0; i < nu; ++i) std::memcpy(dst + size_t(i) * kVB, &u[i], kVB);
                std::memcpy(pa + size_t(gsub) * kPR, &a, sizeof(VF));
                std::memcpy(pb + size_t(gsub) * kPR, &b, sizeof(VF));
              });
  }
}

struct Ops {
  void (*gemv)(const PackedMatrix&, int64_t, const panel::Acts&, float*, int64_t, int);  // a whole group
  void (*fill)(const PackedMatrix&, int64_t, int, uint8_t*, float*, float*);
  panel::RowsFn rows;
  int sub;
};

template <class P>
Ops ops_of() {
  return {&gemv_tokens<P>, &fill_panel<P>, &panel::panel_rows<P::kSub, P::kSigned, widen_of<P>()>, P::kSub};
}

// The kernels of a matrix's layout; none ({}) for a copy laid out for another ISA level (Q5_K's
// fifth bits: a copy made before the level changed, in tests), which then takes the GGUF rows.
Ops packed_ops(const PackedMatrix& pm) {
  constexpr bool kPlanes = !QLEAP_USE_VNNI;
  if (pm.type == GgmlType::Q5_K && pm.fifth_planes != kPlanes) return {};
  switch (pm.type) {
    case GgmlType::Q4_0:
      return ops_of<PQ4_0>();
    case GgmlType::Q4_1:
      return ops_of<PQ4_1>();
#if !QLEAP_USE_VNNI
    // AVX-512 keeps the GGUF-layout kernels for these until they are checked on such a CPU.
    case GgmlType::Q5_0:
      return ops_of<PQ5<false>>();
    case GgmlType::Q5_1:
      return ops_of<PQ5<true>>();
    case GgmlType::Q2_K:
      return ops_of<PQ2_K>();
    case GgmlType::Q3_K:
      return ops_of<PQ3_K>();
#endif
    case GgmlType::Q8_0:
      return ops_of<PQ8_0>();
    case GgmlType::Q4_K:
      return ops_of<PQ45_K<false>>();
    case GgmlType::Q5_K:
      return ops_of<PQ45_K<true>>();
    case GgmlType::Q6_K:
      return ops_of<PQ6_K>();
    case GgmlType::IQ4_XS:
      return ops_of<PIQ4_XS>();
    case GgmlType::IQ4_NL:
      return ops_of<PIQ4_NL>();
    case GgmlType::MXFP4:
      return ops_of<PMXFP4>();
    case GgmlType::NVFP4:
      return ops_of<PNVFP4>();
    default:
      return {};
  }
}

#if QLEAP_USE_VNNI
constexpr int kHalves = 1;
#else
constexpr int kHalves = 2;
#endif

// y[t][r] for every row and token; threads split the row groups. Below kPanelTokens tokens (or
// with row_exact) every token is computed as decode computes it alone; above, through panels.
// AVX2: 4 tokens through the decode kernels took 0.5-0.7x the panels' time for Q4_0, Q4_1, Q5_0,
// Q8_0 and Q4_K (about equal for Q5_K and Q6_K; kernels bench, 256 x 2048, Zen 3).
constexpr int64_t kPanelTokens = QLEAP_USE_VNNI ? 4 : 5;

// Whether a format's decode kernels read Acts::o16 (Q2_K and Q3_K: AVX2 only, packed_ops).
constexpr bool uses_o16(GgmlType t) {
  return t == GgmlType::Q6_K || t == GgmlType::Q3_K || t == GgmlType::Q2_K;
}

// The sums over 16 values of quantized activations (PQ6_K's sub-block), from the quants and scales
// per 32: the same floats quantize_acts makes with sub == 16.
void sums16_of(const int8_t* q, const float* d, int64_t cols, int64_t m, float* s16) {
  const size_t n32 = size_t(m) * size_t(cols / 32);
  for (size_t i = 0; i < n32; ++i) {
    int s0 = 0, s1 = 0;
    for (int k = 0; k < 16; ++k) {
      s0 += q[32 * i + size_t(k)];
      s1 += q[32 * i + 16 + size_t(k)];
    }
    s16[2 * i] = d[i] * float(s0);
    s16[2 * i + 1] = d[i] * float(s1);
  }
}

// ys[i] = x pms[i]^T for matrices with the same columns, each bit-identical to packed_matmul alone:
// the activations are quantized once (sums per 32 and per 16 values as the formats need them) and
// the row groups of all matrices are split over the threads in one dispatch. False (nothing done)
// when a format has no packed kernels, the columns differ or n > kMaxPackedMany.
bool packed_matmul_many(const PackedMatrix* const* pms, float* const* ys, int n, const float* x, int64_t m,
                        ThreadPool& pool, bool row_exact) {
  if (n <= 0 || n > kMaxPackedMany) return n == 0;
  const int64_t cols = pms[0]->cols;
  const bool rows_path = row_exact || m < kPanelTokens;
  // Everything the workers need, behind one pointer (std::function then does not allocate).
  struct Mat {
    const PackedMatrix* pm;
    Ops op;
    panel::Acts xa;
    float* y;
    int64_t g_end;  // this matrix's groups end here in the joint numbering
  };
  struct Job {
    Mat mats[kMaxPackedMany];
    int n;
    bool rows_path;
  } job{};
  job.n = n;
  job.rows_path = rows_path;
  bool need32 = false, need16 = false, need_o16 = false;
  for (int i = 0; i < n; ++i) {
    job.mats[i].op = packed_ops(*pms[i]);
    if (job.mats[i].op.gemv == nullptr || pms[i]->cols != cols) return false;
    (job.mats[i].op.sub == 32 ? need32 : need16) = true;
    // The Q6_K / Q3_K / Q2_K decode kernels' activation sums (Acts::o16).
    if (uses_o16(pms[i]->type) && rows_path) need_o16 = true;
  }
  thread_local panel::Buf act;
  const size_t qbytes = size_t(m) * size_t(cols);
  const size_t n32 = size_t(cols / 32), n16 = size_t(cols / 16);
  uint8_t* base = act.get(qbytes + (size_t(m) * (2 * n32 + n16)) * sizeof(float) + 128);
  auto* q = reinterpret_cast<int8_t*>(base);
  auto* d = reinterpret_cast<float*>(base + (qbytes + 63) / 64 * 64);
  float* s32 = d + size_t(m) * n32;
  float* s16 = s32 + size_t(m) * n32;
  const int sub = need32 ? 32 : 16;
  float* s = need32 ? s32 : s16;
  if (m >= 8 && pool.size() > 1) {
    pool.parallel_for(m, std::max<int64_t>(1, m / (4 * pool.size())), [=](int64_t t0, int64_t t1, int) {
      panel::quantize_acts(x, cols, sub, t0, t1, q, d, s);
    });
  } else {
    panel::quantize_acts(x, cols, sub, 0, m, q, d, s);
  }
  if (need32 && need16) sums16_of(q, d, cols, m, s16);
  thread_local std::vector<int32_t> o16;
  if (need_o16) {
    const size_t n16m = size_t(m) * n16;
    o16.resize(n16m);
    for (size_t j = 0; j < n16m; ++j) {
      int sum = 0;
      for (int c = 0; c < 16; ++c) sum += q[16 * j + size_t(c)];
#if QLEAP_USE_VNNI
      o16[j] = -32 * sum;
#else
      const auto half = uint32_t(uint16_t(int16_t(-sum)));
      o16[j / 2] = int32_t((j % 2) != 0 ? (uint32_t(o16[j / 2]) | (half << 16)) : half);
#endif
    }
  }
  int64_t groups = 0;
  for (int i = 0; i < n; ++i) {
    Mat& mt = job.mats[i];
    mt.pm = pms[i];
    mt.y = ys[i];
    const int msub = mt.op.sub;
    mt.xa = panel::Acts{q, d, msub == 32 ? s32 : s16, cols, m, msub};
    if (uses_o16(mt.pm->type) && rows_path) mt.xa.o16 = o16.data();
    groups += mt.pm->groups;
    mt.g_end = groups;
  }
  const Job* jp = &job;
  const auto work = [jp](int64_t g0, int64_t g1, int) {
    thread_local panel::Buf pbuf;
    int i = 0;
    for (int64_t gg = g0; gg < g1; ++gg) {
      while (gg >= jp->mats[i].g_end) ++i;
      const Mat& mt = jp->mats[i];
      const PackedMatrix& p = *mt.pm;
      const int64_t g = gg - (mt.g_end - p.groups);
      if (jp->rows_path) {
        const int64_t r0 = g * kPackRows;
        mt.op.gemv(p, g, mt.xa, mt.y + r0, p.rows, int(std::min<int64_t>(kPackRows, p.rows - r0)));
        continue;
      }
      for (int h = 0; h < kHalves; ++h) {
        const int64_t r0 = g * kPackRows + h * kPR;
        if (r0 >= p.rows) break;
        const int nr = int(std::min<int64_t>(kPR, p.rows - r0));
        const size_t qb = size_t(p.cols) * kPR;
        const size_t nsb = size_t(p.cols / mt.op.sub) * kPR;
        uint8_t* pq = pbuf.get(qb + 2 * nsb * sizeof(float) + 64);
        auto* pa = reinterpret_cast<float*>(pq + qb);
        float* pb = pa + nsb;
        mt.op.fill(p, g, h, pq, pa, pb);
        mt.op.rows(pq, pa, pb, p.cols, mt.xa, mt.y + r0, p.rows, nr);
      }
    }
  };
  // Decode: chunks that shrink as the groups run out keep every thread streaming and end the
  // threads within one group of each other (a decode dispatch lasts only microseconds on a small
  // model, so a fixed-size last chunk was a measurable wait); prefill: one group each.
  if (rows_path) {
    parallel_for_guided(pool, groups, 1, work);
  } else {
    pool.parallel_for(groups, 1, work);
  }
  return true;
}

bool packed_matmul(const PackedMatrix& pm, const float* x, int64_t m, float* y, ThreadPool& pool,
                   bool row_exact) {
  const PackedMatrix* pms[] = {&pm};
  float* ys[] = {y};
  return packed_matmul_many(pms, ys, 1, x, m, pool, row_exact);
}

}  // namespace packed
