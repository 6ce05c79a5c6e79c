// AVX2 decode (one activation row) of the grid i-quants: IQ3_S, IQ3_XXS, IQ2_XXS, IQ2_XS, IQ2_S,
// IQ1_S, IQ1_M, and of the ternary formats TQ2_0 and TQ1_0 (at the end).
// Included from matmul_iq_x86_impl.h inside its per-ISA namespace, in the AVX2 build only (the
// AVX-512 build has 64-weight kernels of its own there); the integer sums are those of vec_dot_iq.
//
// Per 256-weight block the grid indices, the sign bits and the scales are unpacked with a few
// vector ops into small stack arrays (a sign index's parity bit by one byte shuffle rather than
// one kIqKsigns row per 8 weights), then per 32 weights the grid rows come either from one gather
// or from broadcast loads and blends (rows64 / rows32). Which is faster depends on the CPU: on the
// Sapphire Rapids development machine the gathers won by 1.2-1.7x, on AMD Zen 3, which microcodes
// them, the loads and blends win (docs/formats.md); fast_gather() picks. Two chains of sums.

// 32 sign bits (little-endian) in a register -> bytes 0xFF (bit set: negate) or 0x01.
inline __m256i sign_mask_of(uint32_t bits) {
  const __m256i spread = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
  __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(int(bits)), spread);
  bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
  return _mm256_or_si256(_mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1)), _mm256_set1_epi8(1));
}

// Bytes holding 7-bit sign indices -> the kIqKsigns bytes: bit 7 set where the index has odd parity.
inline __m256i ksigns_of(__m256i b) {
  const __m256i odd =
      _mm256_setr_epi8(0, -128, -128, 0, -128, 0, 0, -128, -128, 0, 0, -128, 0, -128, -128, 0, 0, -128, -128,
                       0, -128, 0, 0, -128, -128, 0, 0, -128, 0, -128, -128, 0);
  const __m256i nib = _mm256_and_si256(_mm256_xor_si256(b, _mm256_srli_epi16(b, 4)), _mm256_set1_epi8(0x0F));
  return _mm256_or_si256(b, _mm256_shuffle_epi8(odd, nib));
}

// Dwords of four 7-bit sign indices (bits 0..27) -> their four kIqKsigns bytes.
inline __m256i ksigns_of_dwords(__m256i v) {
  const __m256i a = _mm256_and_si256(v, _mm256_set1_epi32(0x7F));
  const __m256i b = _mm256_and_si256(_mm256_slli_epi32(v, 1), _mm256_set1_epi32(0x7F00));
  const __m256i c = _mm256_and_si256(_mm256_slli_epi32(v, 2), _mm256_set1_epi32(0x7F0000));
  const __m256i d = _mm256_and_si256(_mm256_slli_epi32(v, 3), _mm256_set1_epi32(0x7F000000));
  return ksigns_of(_mm256_or_si256(_mm256_or_si256(a, b), _mm256_or_si256(c, d)));
}

// Eight odd scales 2 s + 1 (s: the top nibble of each dword) as int16, in both 128-bit lanes; the
// one of sub-block k is picked by scale_of(v, k).
inline __m256i odd_scales_top4(__m256i v) {
  const __m256i s = _mm256_or_si256(_mm256_slli_epi32(_mm256_srli_epi32(v, 28), 1), _mm256_set1_epi32(1));
  return _mm256_broadcastsi128_si256(
      _mm_packs_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1)));
}
inline __m256i scale_of(__m256i sc8, int k) {
  return _mm256_shuffle_epi8(sc8, bcast16_mask(k, k));
}

// IQ2_XS / IQ2_S: a 4-bit scale per 16 weights (scales[k] low nibble, then high) -> the two
// vectors of load_scales for k16_chunk_scale.
inline void odd_scales_nibbles(const uint8_t* scales, __m256i* sc16) {
  const __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(scales));
  const __m128i m4 = _mm_set1_epi8(0x0F);
  const __m128i n = _mm_unpacklo_epi8(_mm_and_si128(v, m4), _mm_and_si128(_mm_srli_epi16(v, 4), m4));
  const __m128i s = _mm_or_si128(_mm_add_epi8(n, n), _mm_set1_epi8(1));
  sc16[0] = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(s));
  sc16[1] = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_srli_si128(s, 8)));
}

// Grid rows of 8 bytes for 32 weights: indices gi[0..3].
template <bool kGather>
inline __m256i grid_rows8(const uint64_t* grid, const uint32_t* gi) {
  if constexpr (kGather) {
    return _mm256_i32gather_epi64(reinterpret_cast<const long long*>(grid),
                                  _mm_load_si128(reinterpret_cast<const __m128i*>(gi)), 8);
  } else {
    return rows64(grid, gi[0], gi[1], gi[2], gi[3]);
  }
}
// Grid rows of 4 bytes for 32 weights: indices gi[0..7].
template <bool kGather>
inline __m256i grid_rows4(const uint32_t* grid, const uint32_t* gi) {
  if constexpr (kGather) {
    return _mm256_i32gather_epi32(reinterpret_cast<const int*>(grid),
                                  _mm256_load_si256(reinterpret_cast<const __m256i*>(gi)), 4);
  } else {
    return rows32(grid, gi);
  }
}

// The integer sums of a block's 8 sub-blocks of 32 weights, step(k) giving sub-block k's, in two
// chains (even and odd k) so that consecutive steps do not wait on each other.
template <class Step>
inline __m256i two_chains(Step&& step) {
  __m256i isum0 = _mm256_setzero_si256(), isum1 = _mm256_setzero_si256();
#pragma GCC unroll 4
  for (int m = 0; m < 4; ++m) {
    isum0 = _mm256_add_epi32(isum0, step(2 * m));
    isum1 = _mm256_add_epi32(isum1, step(2 * m + 1));
  }
  return _mm256_add_epi32(isum0, isum1);
}

// After grid indices were stored from vectors: without it GCC forwards each index from the vector
// register by vpextrd (two ops on AMD Zen) instead of one load from the stack array.
inline void indices_in_memory() {
  asm volatile("" ::: "memory");
}

// The products of 32 weights: grid bytes u, sign mask s, activations xq, int16 scales sc.
inline __m256i iq_step(__m256i u, __m256i s, const uint8_t* xq, __m256i sc) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, _mm256_sign_epi8(load32u(xq), s)), sc);
}

template <bool kGather>
float vec_dot_iq3s_256(const uint8_t* w, const BlockQ8_K* x, int64_t nb) {
  const auto* wb = reinterpret_cast<const BlockIq3S*>(w);
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(wb + i) + kPrefetchBytes, _MM_HINT_T0);
    const BlockIq3S& b = wb[i];
    const uint8_t* xq = reinterpret_cast<const uint8_t*>(x[i].qs);
    alignas(32) uint32_t gi[64];  // grid index j of sub-block k: qs[8k + j] plus bit j of qh[k] as bit 8
    for (int k = 0; k < 8; ++k) {
      const __m256i hi = _mm256_and_si256(
          _mm256_srlv_epi32(_mm256_set1_epi32(int(uint32_t(b.qh[k]) << 8)), lanes), _mm256_set1_epi32(0x100));
      const __m256i idx = _mm256_or_si256(
          _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b.qs + 8 * k))), hi);
      _mm256_store_si256(reinterpret_cast<__m256i*>(gi + 8 * k), idx);
    }
    uint32_t sb[8];
    std::memcpy(sb, b.signs, sizeof(sb));
    if constexpr (!kGather) indices_in_memory();
    const __m256i isum = two_chains([&](int k) {
      return iq_step(grid_rows4<kGather>(kIq3sGrid, gi + 8 * k), sign_mask_of(sb[k]), xq + 32 * k,
                     _mm256_set1_epi16(short(2 * ((b.scales[k / 2] >> (4 * (k % 2))) & 0xF) + 1)));
    });
    acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(b.d) * x[i].d), _mm256_cvtepi32_ps(isum), acc);
  }
  return hsum(acc);
}

template <bool kGather>
float vec_dot_iq3xxs_256(const uint8_t* w, const BlockQ8_K* x, int64_t nb) {
  const auto* wb = reinterpret_cast<const BlockIq3Xxs*>(w);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(wb + i) + kPrefetchBytes, _MM_HINT_T0);
    const BlockIq3Xxs& b = wb[i];
    const uint8_t* xq = reinterpret_cast<const uint8_t*>(x[i].qs);
    // Sub-block k: a dword of four 7-bit sign indices and the scale in its top nibble.
    const __m256i ss = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.scales_signs));
    alignas(32) uint32_t sb[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(sb), ksigns_of_dwords(ss));
    const __m256i sc8 = odd_scales_top4(ss);
    alignas(32) uint32_t gi[64];
    for (int k = 0; k < 8; ++k) {
      if constexpr (kGather) {
        _mm256_store_si256(
            reinterpret_cast<__m256i*>(gi + 8 * k),
            _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b.qs + 8 * k))));
      } else {
        // Byte loads: on Zen 3 faster than a vector store and reload (IQ3_S needs the vector for its
        // ninth bit).
        for (int j = 0; j < 8; ++j) gi[8 * k + j] = b.qs[8 * k + j];
      }
    }
    const __m256i isum = two_chains([&](int k) {
      return iq_step(grid_rows4<kGather>(kIq3xxsGrid, gi + 8 * k), sign_mask_of(sb[k]), xq + 32 * k,
                     scale_of(sc8, k));
    });
    acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(b.d) * 0.25f * x[i].d), _mm256_cvtepi32_ps(isum), acc);
  }
  return hsum(acc);
}

template <bool kGather>
float vec_dot_iq2xxs_256(const uint8_t* w, const BlockQ8_K* x, int64_t nb) {
  const auto* wb = reinterpret_cast<const BlockIq2Xxs*>(w);
  const __m256i odd_dw = _mm256_setr_epi32(1, 3, 5, 7, 1, 3, 5, 7);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(wb + i) + kPrefetchBytes, _MM_HINT_T0);
    const BlockIq2Xxs& b = wb[i];
    const uint8_t* xq = reinterpret_cast<const uint8_t*>(x[i].qs);
    // Sub-block k: dword 2k = 4 grid indices, dword 2k + 1 = 4 x 7 sign bits | scale << 28.
    const __m256i q0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs));
    const __m256i q1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs + 16));
    const __m256i ss = _mm256_blend_epi32(_mm256_permutevar8x32_epi32(q0, odd_dw),
                                          _mm256_permutevar8x32_epi32(q1, odd_dw), 0xF0);
    alignas(32) uint32_t sb[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(sb), ksigns_of_dwords(ss));
    const __m256i sc8 = odd_scales_top4(ss);
    alignas(32) uint32_t gi[32];
    if constexpr (kGather) {
      for (int k = 0; k < 8; ++k) {
        uint32_t g;
        std::memcpy(&g, b.qs + 4 * k, 4);
        _mm_store_si128(reinterpret_cast<__m128i*>(gi + 4 * k), _mm_cvtepu8_epi32(_mm_cvtsi32_si128(int(g))));
      }
    } else {
      // Byte loads, as IQ3_XXS (MatvecHot on Zen 3: 47 -> 42 us).
      const auto* q8 = reinterpret_cast<const uint8_t*>(b.qs);
      for (int k = 0; k < 8; ++k) {
        for (int j = 0; j < 4; ++j) gi[4 * k + j] = q8[8 * k + j];
      }
    }
    const __m256i isum = two_chains([&](int k) {
      return iq_step(grid_rows8<kGather>(kIq2xxsGrid, gi + 4 * k), sign_mask_of(sb[k]), xq + 32 * k,
                     scale_of(sc8, k));
    });
    acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(b.d) * 0.125f * x[i].d), _mm256_cvtepi32_ps(isum), acc);
  }
  return hsum(acc);
}

template <bool kGather>
float vec_dot_iq2xs_256(const uint8_t* w, const BlockQ8_K* x, int64_t nb) {
  const auto* wb = reinterpret_cast<const BlockIq2Xs*>(w);
  const __m256i m511 = _mm256_set1_epi16(511);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(wb + i) + kPrefetchBytes, _MM_HINT_T0);
    const BlockIq2Xs& b = wb[i];
    const uint8_t* xq = reinterpret_cast<const uint8_t*>(x[i].qs);
    // Per 8 weights a uint16: 9-bit grid index, 7-bit sign index above it.
    const __m256i q0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs));
    const __m256i q1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs + 16));
    alignas(32) uint32_t gi[32];
    const __m256i g0 = _mm256_and_si256(q0, m511), g1 = _mm256_and_si256(q1, m511);
    _mm256_store_si256(reinterpret_cast<__m256i*>(gi), _mm256_cvtepu16_epi32(_mm256_castsi256_si128(g0)));
    _mm256_store_si256(reinterpret_cast<__m256i*>(gi + 8),
                       _mm256_cvtepu16_epi32(_mm256_extracti128_si256(g0, 1)));
    _mm256_store_si256(reinterpret_cast<__m256i*>(gi + 16),
                       _mm256_cvtepu16_epi32(_mm256_castsi256_si128(g1)));
    _mm256_store_si256(reinterpret_cast<__m256i*>(gi + 24),
                       _mm256_cvtepu16_epi32(_mm256_extracti128_si256(g1, 1)));
    // Sign bytes in weight order (packus interleaves the 128-bit lanes; the permute undoes it).
    const __m256i s = _mm256_permute4x64_epi64(
        _mm256_packus_epi16(_mm256_srli_epi16(q0, 9), _mm256_srli_epi16(q1, 9)), _MM_SHUFFLE(3, 1, 2, 0));
    alignas(32) uint32_t sb[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(sb), ksigns_of(s));
    __m256i sc16[2];
    odd_scales_nibbles(b.scales, sc16);
    if constexpr (!kGather) indices_in_memory();
    const __m256i isum = two_chains([&](int k) {
      return iq_step(grid_rows8<kGather>(kIq2xsGrid, gi + 4 * k), sign_mask_of(sb[k]), xq + 32 * k,
                     k16_chunk_scale(sc16, k));
    });
    acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(b.d) * 0.125f * x[i].d), _mm256_cvtepi32_ps(isum), acc);
  }
  return hsum(acc);
}

template <bool kGather>
float vec_dot_iq2s_256(const uint8_t* w, const BlockQ8_K* x, int64_t nb) {
  const auto* wb = reinterpret_cast<const BlockIq2S*>(w);
  // Index j of a sub-block takes bits 2j, 2j + 1 of its qh byte as bits 8, 9: qh * 2^(8 - 2j).
  const __m256i mul = _mm256_setr_epi16(256, 64, 16, 4, 256, 64, 16, 4, 256, 64, 16, 4, 256, 64, 16, 4);
  const __m256i rep4 = _mm256_setr_epi8(0, -1, 0, -1, 0, -1, 0, -1, 1, -1, 1, -1, 1, -1, 1, -1, 2, -1, 2, -1,
                                        2, -1, 2, -1, 3, -1, 3, -1, 3, -1, 3, -1);  // qh byte of each index
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(wb + i) + kPrefetchBytes, _MM_HINT_T0);
    const BlockIq2S& b = wb[i];
    const uint8_t* xq = reinterpret_cast<const uint8_t*>(x[i].qs);
    alignas(32) uint32_t gi[32];
    for (int h = 0; h < 2; ++h) {  // indices 16h .. 16h + 15: sub-blocks 4h .. 4h + 3
      uint32_t qh4;
      std::memcpy(&qh4, b.qh + 4 * h, 4);
      const __m256i qh = _mm256_shuffle_epi8(_mm256_set1_epi32(int(qh4)), rep4);
      const __m256i hi = _mm256_and_si256(_mm256_mullo_epi16(qh, mul), _mm256_set1_epi16(0x300));
      const __m256i idx = _mm256_or_si256(
          _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs + 16 * h))), hi);
      _mm256_store_si256(reinterpret_cast<__m256i*>(gi + 16 * h),
                         _mm256_cvtepu16_epi32(_mm256_castsi256_si128(idx)));
      _mm256_store_si256(reinterpret_cast<__m256i*>(gi + 16 * h + 8),
                         _mm256_cvtepu16_epi32(_mm256_extracti128_si256(idx, 1)));
    }
    uint32_t sb[8];
    std::memcpy(sb, b.signs, sizeof(sb));
    __m256i sc16[2];
    odd_scales_nibbles(b.scales, sc16);
    if constexpr (!kGather) indices_in_memory();
    const __m256i isum = two_chains([&](int k) {
      return iq_step(grid_rows8<kGather>(kIq2sGrid, gi + 4 * k), sign_mask_of(sb[k]), xq + 32 * k,
                     k16_chunk_scale(sc16, k));
    });
    acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(b.d) * 0.125f * x[i].d), _mm256_cvtepi32_ps(isum), acc);
  }
  return hsum(acc);
}

// IQ1_S / IQ1_M: grid bytes g in {-1, 0, 1} -> 8 (g + delta) by iq1_values; magnitudes by vpsignb
// of the value with itself, the value's sign applied to the activations.
inline __m256i iq1_step(__m256i g, __m256i dn3, const uint8_t* xq, __m256i sc) {
  const __m256i v = iq1_values(g, dn3);
  return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(v, v), _mm256_sign_epi8(load32u(xq), v)),
                           sc);
}

// Grid indices of IQ1_S / IQ1_M for 64 weights: qs bytes q8[0..7] and 3 high bits each from h,
// lane j's at bit shift[j].
inline void iq1_indices(const uint8_t* q8, uint32_t h, __m256i shift, uint32_t* gi) {
  const __m256i hi = _mm256_slli_epi32(
      _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(int(h)), shift), _mm256_set1_epi32(7)), 8);
  _mm256_store_si256(
      reinterpret_cast<__m256i*>(gi),
      _mm256_or_si256(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q8))), hi));
}

template <bool kGather>
float vec_dot_iq1s_256(const uint8_t* w, const BlockQ8_K* x, int64_t nb) {
  const auto* wb = reinterpret_cast<const BlockIq1S*>(w);
  const __m256i hshift = _mm256_setr_epi32(0, 3, 6, 9, 16, 19, 22, 25);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(wb + i) + kPrefetchBytes, _MM_HINT_T0);
    const BlockIq1S& b = wb[i];
    const uint8_t* xq = reinterpret_cast<const uint8_t*>(x[i].qs);
    // qh[k]: 4 x 3 high index bits, the scale in bits 12..14, the sign of delta in bit 15.
    alignas(32) uint32_t gi[32];
    for (int m = 0; m < 4; ++m) {
      uint32_t h;
      std::memcpy(&h, b.qh + 2 * m, 4);
      iq1_indices(b.qs + 8 * m, h, hshift, gi + 8 * m);
    }
    const __m128i qh = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qh));
    const __m128i sc = _mm_or_si128(
        _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(qh, 12), _mm_set1_epi16(7)), 1), _mm_set1_epi16(1));
    const __m256i sc8 = _mm256_broadcastsi128_si256(sc);
    const __m256i dn8 = _mm256_broadcastsi128_si256(_mm_and_si128(_mm_srai_epi16(qh, 15), _mm_set1_epi16(3)));
    if constexpr (!kGather) indices_in_memory();
    const __m256i isum = two_chains([&](int k) {
      return iq1_step(grid_rows8<kGather>(kIq1sGrid, gi + 4 * k),
                      _mm256_shuffle_epi8(dn8, _mm256_set1_epi8(char(2 * k))), xq + 32 * k, scale_of(sc8, k));
    });
    acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(b.d) * 0.125f * x[i].d), _mm256_cvtepi32_ps(isum), acc);
  }
  return hsum(acc);
}

template <bool kGather>
float vec_dot_iq1m_256(const uint8_t* w, const BlockQ8_K* x, int64_t nb) {
  const auto* wb = reinterpret_cast<const BlockIq1M*>(w);
  const __m256i hshift = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  // Scale g (3 bits at 3 (g % 4) of word g / 4) to bits 13..15: times 2^(13 - 3 (g % 4)).
  const __m256i smul =
      _mm256_setr_epi16(8192, 1024, 128, 16, 8192, 1024, 128, 16, 8192, 1024, 128, 16, 8192, 1024, 128, 16);
  const __m256i rep4 = _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 4, 5, 4, 5, 4, 5, 4,
                                        5, 6, 7, 6, 7, 6, 7, 6, 7);
  const __m256i spread = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(wb + i) + kPrefetchBytes, _MM_HINT_T0);
    const BlockIq1M& b = wb[i];
    const uint8_t* xq = reinterpret_cast<const uint8_t*>(x[i].qs);
    // Per 8 weights a qh nibble: 3 high index bits and the sign of delta in bit 3.
    alignas(32) uint32_t gi[32];
    for (int m = 0; m < 4; ++m) {
      uint32_t h;
      std::memcpy(&h, b.qh + 4 * m, 4);
      iq1_indices(b.qs + 8 * m, h, hshift, gi + 8 * m);
    }
    const __m128i qh = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qh));
    const __m128i d8 = _mm_set1_epi8(8);
    const __m128i lo = _mm_and_si128(qh, d8), hi = _mm_and_si128(_mm_srli_epi16(qh, 4), d8);
    alignas(32) uint8_t dn[32];  // 3 where the delta of the 8 weights is negative
    const __m256i d8s =
        _mm256_set_m128i(_mm_unpackhi_epi8(lo, hi), _mm_unpacklo_epi8(lo, hi));  // bytes 8 or 0
    _mm256_store_si256(reinterpret_cast<__m256i*>(dn),
                       _mm256_and_si256(_mm256_cmpeq_epi8(d8s, _mm256_set1_epi8(8)), _mm256_set1_epi8(3)));
    const __m256i ws = _mm256_shuffle_epi8(
        _mm256_broadcastsi128_si256(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b.scales))), rep4);
    const __m256i s16 = _mm256_or_si256(
        _mm256_slli_epi16(_mm256_srli_epi16(_mm256_mullo_epi16(ws, smul), 13), 1), _mm256_set1_epi16(1));
    const __m256i sc16[2] = {_mm256_permute2x128_si256(s16, s16, 0x00),
                             _mm256_permute2x128_si256(s16, s16, 0x11)};
    if constexpr (!kGather) indices_in_memory();
    const __m256i isum = two_chains([&](int k) {
      uint32_t dk;
      std::memcpy(&dk, dn + 4 * k, 4);
      return iq1_step(grid_rows8<kGather>(kIq1sGrid, gi + 4 * k),
                      _mm256_shuffle_epi8(_mm256_set1_epi32(int(dk)), spread), xq + 32 * k,
                      k16_chunk_scale(sc16, k));
    });
    acc = _mm256_fmadd_ps(_mm256_set1_ps(fp16_to_fp32(iq1m_scale_bits(b)) * 0.125f * x[i].d),
                          _mm256_cvtepi32_ps(isum), acc);
  }
  return hsum(acc);
}

// ---- Ternary formats: w = d * (t - 1), t in {0, 1, 2} ----
// The digits t go into PMADDUBSW unsigned and the -1 is subtracted once per block as the activations'
// sum (ternary_isum). The generic kernel spent two sign ops and a multiply by a scale of 1 per 32
// weights on the signed form.

template <class F>
float vec_dot_ternary_256(const uint8_t* w, const BlockQ8_K* x, int64_t nb) {
  const auto* wb = reinterpret_cast<const typename F::B*>(w);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(wb + i) + kPrefetchBytes, _MM_HINT_T0);
    __m256i xv[8];
    for (int k = 0; k < 8; ++k) xv[k] = load32u(reinterpret_cast<const uint8_t*>(x[i].qs) + 32 * k);
    const typename F::B& b = wb[i];
    __m256i t[8];
    F::all_digits(b, t);
    const __m256i isum = ternary_isum([&t](int k) { return t[k]; }, xv, x[i].bsums);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(b.d) * x[i].d), _mm256_cvtepi32_ps(isum), acc);
  }
  return hsum(acc);
}

using DotIqFn = float (*)(const uint8_t*, const BlockQ8_K*, int64_t);

// The decode kernel of format F above, gathers or blends; nullptr: F uses vec_dot_iq.
template <class F>
DotIqFn avx2_decode(bool gather) {
  if constexpr (std::is_same_v<F, FIq3S>) return gather ? vec_dot_iq3s_256<true> : vec_dot_iq3s_256<false>;
  if constexpr (std::is_same_v<F, FIq3Xxs>)
    return gather ? vec_dot_iq3xxs_256<true> : vec_dot_iq3xxs_256<false>;
  if constexpr (std::is_same_v<F, FIq2Xxs>)
    return gather ? vec_dot_iq2xxs_256<true> : vec_dot_iq2xxs_256<false>;
  if constexpr (std::is_same_v<F, FIq2Xs>) return gather ? vec_dot_iq2xs_256<true> : vec_dot_iq2xs_256<false>;
  if constexpr (std::is_same_v<F, FIq2S>) return gather ? vec_dot_iq2s_256<true> : vec_dot_iq2s_256<false>;
  if constexpr (std::is_same_v<F, FIq1S>) return gather ? vec_dot_iq1s_256<true> : vec_dot_iq1s_256<false>;
  if constexpr (std::is_same_v<F, FIq1M>) return gather ? vec_dot_iq1m_256<true> : vec_dot_iq1m_256<false>;
  if constexpr (std::is_same_v<F, FTq2>) return vec_dot_ternary_256<FTq2>;
  if constexpr (std::is_same_v<F, FTq1>) return vec_dot_ternary_256<FTq1>;
  return nullptr;
}
