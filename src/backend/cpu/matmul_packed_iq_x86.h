// Unpackers for the i-quants repacked at load (packed_weights.h), in the form of
// matmul_packed_x86.h (included from it, inside its namespace `packed`): per sub-block, vectors
// of kPR rows x 4 consecutive weight bytes and per-row floats a, b with w = a * u + b.
//
// IQ4_XS: 4-bit codes into the IQ4_NL codebook, looked up 16 entries at a time with a byte
// shuffle (the codebook fits one 128-bit lane). VPDPBUSD takes unsigned weights, so with VNNI the
// codebook is stored +128 (b = -128 a); AVX2's PMADDUBSW would saturate on those, so there the
// codebook stays signed and the kernels take the sign path (as Q8_0).
//
// IQ4_NL and MXFP4: the same lookup per 32-value block (MXFP4's codebook is the E2M1 values doubled,
// its scale the power of two 2^(e - 128) built from the exponent byte's bits); NVFP4 per 16-value
// group with a UE4M3 scale.

#if QLEAP_USE_VNNI
inline VI v_shuf(VI tbl, VI idx) {
  return _mm512_shuffle_epi8(tbl, idx);
}
inline VI v_tbl16(const uint8_t* t) {
  return _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(t)));
}
#else
inline VI v_shuf(VI tbl, VI idx) {
  return _mm256_shuffle_epi8(tbl, idx);
}
inline VI v_tbl16(const uint8_t* t) {
  return _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(t)));
}
#endif

// A 16-entry codebook as bytes, each value plus `add`, for one byte shuffle.
struct Codes16 {
  alignas(16) uint8_t v[16];
};
constexpr Codes16 codes16(const int8_t (&values)[16], int add) {
  Codes16 c{};
  for (int i = 0; i < 16; ++i) c.v[i] = uint8_t(values[i] + add);
  return c;
}
// IQ4_NL's codebook signed (AVX2) and shifted to unsigned, +128 (VNNI).
inline constexpr Codes16 kIq4CodesS8 = codes16(kIq4nlValues, 0), kIq4CodesU8 = codes16(kIq4nlValues, 128);
// MXFP4's shifted by 12 to unsigned bytes at every level: 0 .. 24, small enough for the 16-bit sums
// of the Q4_0 kernels on AVX2 (b = -12 a).
inline constexpr Codes16 kFp4Codes12 = codes16(kFp4Values, 12);

// Per-row UE4M3 scales (times 1/2) from their bytes: a lookup in kUe4m3Half.
#if QLEAP_USE_VNNI
inline VF ld_ue4m3_half(const uint8_t* p, int) {
  const __m512i i = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm512_i32gather_ps(i, kUe4m3Half.data(), 4);
}
#else
// AVX2 builds the floats from the bits (a gather of 8 cost more on Zen 3): exponent e = bits 3-6 and
// mantissa m = bits 0-2 give (1 + m / 8) 2^(e - 8), float exponent field e + 119; e = 0 gives m 2^-10;
// the byte 0x7F reads as zero.
inline VF ld_ue4m3_half(const uint8_t* p, int h) {
  const __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * h)));
  const __m256i e = _mm256_and_si256(_mm256_srli_epi32(x, 3), _mm256_set1_epi32(0xF));
  const __m256i m = _mm256_and_si256(x, _mm256_set1_epi32(7));
  const __m256i normal = _mm256_or_si256(_mm256_slli_epi32(_mm256_add_epi32(e, _mm256_set1_epi32(119)), 23),
                                         _mm256_slli_epi32(m, 20));
  const __m256 sub = _mm256_mul_ps(_mm256_cvtepi32_ps(m), _mm256_set1_ps(1.0f / 1024.0f));
  const __m256 v = _mm256_blendv_ps(_mm256_castsi256_ps(normal), sub,
                                    _mm256_castsi256_ps(_mm256_cmpeq_epi32(e, _mm256_setzero_si256())));
  return _mm256_andnot_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(x, _mm256_set1_epi32(0x7F))), v);
}
#endif

// Per-row 2^(e - 128) from E8M0 bytes, bit-exact with e8m0_to_fp32_half: (e - 1) << 23 as float bits,
// and the subnormals 0x00200000 << e for e < 2.
#if QLEAP_USE_VNNI
inline VF ld_e8m0_half(const uint8_t* p, int) {
  const __m512i e = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m512i normal = _mm512_slli_epi32(_mm512_sub_epi32(e, _mm512_set1_epi32(1)), 23);
  const __m512i sub = _mm512_sllv_epi32(_mm512_set1_epi32(0x00200000), e);
  const __mmask16 big = _mm512_cmpgt_epi32_mask(e, _mm512_set1_epi32(1));
  return _mm512_castsi512_ps(_mm512_mask_blend_epi32(big, sub, normal));
}
#else
inline VF ld_e8m0_half(const uint8_t* p, int h) {
  const __m256i e = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * h)));
  const __m256i normal = _mm256_slli_epi32(_mm256_sub_epi32(e, _mm256_set1_epi32(1)), 23);
  const __m256i sub = _mm256_sllv_epi32(_mm256_set1_epi32(0x00200000), e);
  const __m256i big = _mm256_cmpgt_epi32(e, _mm256_set1_epi32(1));
  return _mm256_castsi256_ps(_mm256_blendv_epi8(sub, normal, big));
}
#endif

// Layout (packed_weights.cpp): d[16] fp16 | sc[8][16] int8 (ls - 32) | per sub-block ib 4 vectors,
// vector j holding qs[16 ib + 4j ..] of every row (low nibbles: values 4j .., high: 16 + 4j ..).
struct PIQ4_XS {
  static constexpr int kSub = 32;
  static constexpr bool kSigned = !QLEAP_USE_VNNI;
  template <class F>
  static void unpack(const uint8_t* s, const uint8_t* q, int h, F&& f) {
    const VF d = ld_h(s, h);
    const VI tbl = v_tbl16(kSigned ? kIq4CodesS8.v : kIq4CodesU8.v);
    const VI m4 = v_b8(0x0F);
    for (int ib = 0; ib < 8; ++ib) {
      VI u[8];
      for (int j = 0; j < 4; ++j) {
        const VI v = ldq(q + 64 * (4 * ib + j), h);
        u[j] = v_shuf(tbl, v_and(v, m4));
        u[j + 4] = v_shuf(tbl, v_and(v_srl16(v, 4), m4));
      }
      const VF a = panel::vmul(d, ld_i8f(s + 32 + 16 * ib, h));
      f(ib, u, 8, a, kSigned ? a : v_scale(a, -128.0f));
    }
  }
};

// IQ4_NL (d fp16 per row) and MXFP4 (E8M0 exponent byte per row): one 32-value block per super-block,
// its 4 nibble vectors laid out as Q4_0's, each code looked up in the format's 16-entry codebook.
// IQ4_NL's codes as IQ4_XS's (signed on AVX2, +128 with VNNI); MXFP4's +12 (b = -12 a).
template <bool kFp4>
struct PCodebook4 {
  static constexpr int kSub = 32;
  static constexpr bool kSigned = !kFp4 && !QLEAP_USE_VNNI;
  template <class F>
  static void unpack(const uint8_t* s, const uint8_t* q, int h, F&& f) {
    const VF a = kFp4 ? ld_e8m0_half(s, h) : ld_h(s, h);
    const uint8_t* codes = kFp4 ? kFp4Codes12.v : (kSigned ? kIq4CodesS8.v : kIq4CodesU8.v);
    const VI tbl = v_tbl16(codes);
    const VI m4 = v_b8(0x0F);
    VI u[8];
    for (int j = 0; j < 4; ++j) {
      const VI v = ldq(q + 64 * j, h);
      u[j] = v_shuf(tbl, v_and(v, m4));
      u[j + 4] = v_shuf(tbl, v_and(v_srl16(v, 4), m4));
    }
    f(0, u, 8, a, kSigned ? a : v_scale(a, kFp4 ? -12.0f : -128.0f));
  }
};
using PIQ4_NL = PCodebook4<false>;
using PMXFP4 = PCodebook4<true>;

// NVFP4: four 16-value groups per 64-value block, each with its UE4M3 scale; codes as MXFP4's (+12,
// b = -12 a). Group s's vectors j = 0, 1 hold values 4j .. (low nibbles) and 8 + 4j .. (high).
struct PNVFP4 {
  static constexpr int kSub = 16;
  static constexpr bool kSigned = false;
  template <class F>
  static void unpack(const uint8_t* s, const uint8_t* q, int h, F&& f) {
    const VI tbl = v_tbl16(kFp4Codes12.v);
    const VI m4 = v_b8(0x0F);
    for (int g = 0; g < 4; ++g) {
      const VI v0 = ldq(q + 64 * (2 * g), h), v1 = ldq(q + 64 * (2 * g + 1), h);
      VI u[4] = {v_shuf(tbl, v_and(v0, m4)), v_shuf(tbl, v_and(v1, m4)),
                 v_shuf(tbl, v_and(v_srl16(v0, 4), m4)), v_shuf(tbl, v_and(v_srl16(v1, 4), m4))};
      const VF a = ld_ue4m3_half(s + 16 * g, h);
      f(g, u, 4, a, v_scale(a, -12.0f));
    }
  }
};
