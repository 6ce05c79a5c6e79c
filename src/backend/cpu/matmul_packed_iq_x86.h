// Unpackers for the i-quants repacked at load (packed_weights.h), in the form of
// matmul_packed_x86.h (included from it, inside its namespace `packed`): per sub-block, vectors
// of kPR rows x 4 consecutive weight bytes and per-row floats a, b with w = a * u + b.
//
// IQ4_XS: 4-bit codes into the IQ4_NL codebook, looked up 16 entries at a time with a byte
// shuffle (the codebook fits one 128-bit lane). VPDPBUSD takes unsigned weights, so with VNNI the
// codebook is stored +128 (b = -128 a); AVX2's PMADDUBSW would saturate on those, so there the
// codebook stays signed and the kernels take the sign path (as Q8_0).

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

// The IQ4_NL codebook as bytes: signed (AVX2) and shifted to unsigned, +128 (VNNI).
struct Iq4Codes {
  alignas(16) uint8_t v[16];
};
constexpr Iq4Codes iq4_codes(int add) {
  Iq4Codes c{};
  for (int i = 0; i < 16; ++i) c.v[i] = uint8_t(kIq4nlValues[i] + add);
  return c;
}
inline constexpr Iq4Codes kIq4CodesS8 = iq4_codes(0), kIq4CodesU8 = iq4_codes(128);

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
