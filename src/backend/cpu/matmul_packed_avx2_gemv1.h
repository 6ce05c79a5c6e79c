// AVX2 decode kernels that use each unpacked line at once: a lone token for Q4_0, Q4_1, Q5_0, Q5_1,
// MXFP4, NVFP4, Q8_0, IQ4_NL, IQ4_XS and the K-quants of Q4_K_M / Q5_K_M files (Q4_K, Q5_K, Q6_K);
// 2-4 tokens (the server's batched steps) for Q4_0 ... Q5_1, MXFP4, Q8_0, IQ4_NL and Q4_K; 1-4 tokens
// for Q2_K and Q3_K (gemv_rows_k23, at the end). Included by matmul_packed_x86.h inside namespace
// packed, AVX2 build only.
//
// gemv_rows / gemv_rows_q6 serve every format and 1..4 tokens with one code path, which keeps the
// unpacked vectors of a whole block or sub-block pair live (8 to 16) plus the accumulators, more
// than AVX2's 16 registers, so the compiler spills them every block. These kernels consume each
// vector as soon as it is unpacked. Their integer sums are exact in any order (the same 16-bit
// bounds as widen_of), and their float operations are the same, in the same order, as gemv_rows<P,
// 1, 2> / gemv_rows_q6, so a token's result does not depend on how many tokens share the pass
// (RowExactMatmul).

// Line j (values 4j .. 4j + 3 and 16 + 4j .. 16 + 4j + 3) of half h of a Q4_0 ... Q5_1 or MXFP4
// block q: its low and high nibbles, with the fifth bits of Q5_0 / Q5_1 (the bit planes of the
// block's first line), or MXFP4's codes looked up as PMXFP4 unpacks them (0 .. 24).
template <bool kFive, bool kFp4 = false>
inline void q4q5_line(const uint8_t* q, int j, int h, __m256i& ul, __m256i& uh) {
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  const __m256i w = ldq(kFive ? q + 64 + 64 * j : q + 64 * j, h);
  ul = _mm256_and_si256(w, m4);
  uh = _mm256_and_si256(_mm256_srli_epi16(w, 4), m4);
  if constexpr (kFp4) {
    const __m256i tbl = v_tbl16(kFp4Codes12.v);
    ul = _mm256_shuffle_epi8(tbl, ul);
    uh = _mm256_shuffle_epi8(tbl, uh);
  }
  if constexpr (kFive) {
    const __m256i hb = ldq(q, h);
    ul = _mm256_or_si256(ul, v_plane(hb, j));
    uh = _mm256_or_si256(uh, v_plane(hb, j + 4));
  }
}

// A half's block sum from its 16-bit sums of low and high nibbles: Q4's two fit 16 bits together
// (<= 8 * 2 * 15 * 127), the fifth-bit formats' and MXFP4's (<= 4 * 2 * 24 * 127 each) are widened
// apart (widen_of).
template <bool kFive, bool kFp4 = false>
inline __m256i q4q5_isum(__m256i pl, __m256i ph) {
  const __m256i ones = _mm256_set1_epi16(1);
  return kFive || kFp4 ? _mm256_add_epi32(_mm256_madd_epi16(pl, ones), _mm256_madd_epi16(ph, ones))
                       : _mm256_madd_epi16(_mm256_add_epi16(pl, ph), ones);
}

// The block's scale a (fp16, or MXFP4's power of two) and the factor of its offset term (times the
// activations' sum): the stored minimum, or a times -8 (Q4_0) / -16 (Q5_0) / -12 (MXFP4), as PQ4_0 /
// PQ5 / PMXFP4 unpack them.
template <bool kFp4>
inline VF q4q5_scale(const uint8_t* s, int h) {
  return kFp4 ? ld_e8m0_half(s, h) : ld_h(s, h);
}
template <bool kFive, bool kMin, bool kFp4 = false>
inline VF q4q5_min(const uint8_t* s, int h, VF a) {
  return kMin ? ld_h(s + 32, h) : v_scale(a, kFive ? -16.0f : kFp4 ? -12.0f : -8.0f);
}

// Q4_0, Q4_1, Q5_0, Q5_1 (one sub-block of 32 values per block): both 8-row halves of each line
// together, one pair of activation broadcasts for 16 rows. gemv_rows<P, 1, 2> unpacked a block's 8
// vectors per half before using any (with the accumulators, more than 16 registers: spills every
// block). The float operations are gemv_rows' own. kFp4: MXFP4 (as Q4_0, with a codebook lookup).
template <bool kFive, bool kMin, bool kFp4 = false>
[[gnu::noinline]] void gemv1_q4q5(const PackedMatrix& pm, int64_t g, const panel::Acts& x, float* y, int nr) {
  const uint8_t* s = pm.data + size_t(g) * pm.group_bytes;
  const uint8_t* q = s + pm.q_offset;
  const int64_t nb = pm.cols / 32;
  constexpr int kLines = kFive ? 5 : 4;
  VF acc0[2] = {panel::vzerof(), panel::vzerof()}, acc1[2] = {panel::vzerof(), panel::vzerof()};
  for (int64_t b = 0; b < nb; ++b, q += pm.q_bytes, s += pm.s_bytes) {
    for (int o = 0; o < kLines; ++o)
      _mm_prefetch(reinterpret_cast<const char*>(q + kPrefetchAhead + 64 * o), _MM_HINT_T0);
    const int8_t* xq = x.q + 32 * b;
    __m256i pl[2] = {}, ph[2] = {};
    for (int j = 0; j < 4; ++j) {
      const __m256i bl = panel::vbcast32(xq + 4 * j), bh = panel::vbcast32(xq + 16 + 4 * j);
      for (int h = 0; h < 2; ++h) {
        __m256i ul, uh;
        q4q5_line<kFive, kFp4>(q, j, h, ul, uh);
        const __m256i lo = _mm256_maddubs_epi16(ul, bl), hi = _mm256_maddubs_epi16(uh, bh);
        pl[h] = j == 0 ? lo : _mm256_add_epi16(pl[h], lo);
        ph[h] = j == 0 ? hi : _mm256_add_epi16(ph[h], hi);
      }
    }
    for (int h = 0; h < 2; ++h) {
      const VF a = q4q5_scale<kFp4>(s, h);
      acc0[h] = panel::vfma(panel::vcvt(q4q5_isum<kFive, kFp4>(pl[h], ph[h])),
                            panel::vmul(a, panel::vbcastf(x.d + b)), acc0[h]);
      acc1[h] = panel::vfma(q4q5_min<kFive, kMin, kFp4>(s, h, a), panel::vbcastf(x.s + b), acc1[h]);
    }
  }
  const VF v[2] = {_mm256_add_ps(acc0[0], acc1[0]), _mm256_add_ps(acc0[1], acc1[1])};
  store_halves<2>(y, v, nr);
}

// One line's unpacked low (ul) and high (uh) nibbles times the activations of T tokens (at offset
// off, the high nibbles' hi values later), added to 16-bit sums (started at the first line).
template <int T>
inline void line_tokens(__m256i ul, __m256i uh, const TokenActs<T, float>& xa, int64_t off, int hi,
                        bool first, __m256i (&pl)[T], __m256i (&ph)[T]) {
  for (int t = 0; t < T; ++t) {
    const int8_t* xq = xa.q[t] + off;
    const __m256i lo = _mm256_maddubs_epi16(ul, panel::vbcast32(xq));
    const __m256i hp = _mm256_maddubs_epi16(uh, panel::vbcast32(xq + hi));
    pl[t] = first ? lo : _mm256_add_epi16(pl[t], lo);
    ph[t] = first ? hp : _mm256_add_epi16(ph[t], hp);
    // Keep the sums where they are made: left free, GCC computes every product of a block first
    // (the adds reassociated after them) and spills them all.
    asm("" : "+x"(pl[t]), "+x"(ph[t]));
  }
}

// The same formats for 2-4 tokens (the server's batched decode), one 8-row half per pass: the
// accumulators of T tokens of both halves would not fit the registers. Each line is unpacked once
// and consumed by every token at once; per token the integer sums are exact and the float
// operations are gemv1_q4q5's (and gemv_rows'), so a token's result does not depend on the batch.
// Not inlined: inlined into gemv_tokens with the other kernels, the K-quant one ran at half speed.
template <bool kFive, bool kMin, int T, bool kFp4 = false>
[[gnu::noinline]] void gemvt_q4q5(const PackedMatrix& pm, int64_t g, int h, const panel::Acts& x, int64_t t0,
                                  float* y, int64_t ldy, int nr) {
  const uint8_t* s = pm.data + size_t(g) * pm.group_bytes;
  const uint8_t* q = s + pm.q_offset;
  const int64_t nb = pm.cols / 32;
  constexpr int kLines = kFive ? 5 : 4;
  const TokenActs<T, float> xa(x, t0, x.s, nb);
  VF acc0[T], acc1[T];
  for (int t = 0; t < T; ++t) acc0[t] = acc1[t] = panel::vzerof();
  for (int64_t b = 0; b < nb; ++b, q += pm.q_bytes, s += pm.s_bytes) {
    for (int o = 0; o < kLines; ++o)
      _mm_prefetch(reinterpret_cast<const char*>(q + kPrefetchAhead + 64 * o), _MM_HINT_T0);
    __m256i pl[T] = {}, ph[T] = {};
    for (int j = 0; j < 4; ++j) {
      __m256i ul, uh;
      q4q5_line<kFive, kFp4>(q, j, h, ul, uh);
      line_tokens(ul, uh, xa, 32 * b + 4 * j, 16, j == 0, pl, ph);
    }
    const VF a = q4q5_scale<kFp4>(s, h);
    const VF bmin = q4q5_min<kFive, kMin, kFp4>(s, h, a);
    for (int t = 0; t < T; ++t) {
      acc0[t] = panel::vfma(panel::vcvt(q4q5_isum<kFive, kFp4>(pl[t], ph[t])),
                            panel::vmul(a, panel::vbcastf(xa.d[t] + b)), acc0[t]);
      acc1[t] = panel::vfma(bmin, panel::vbcastf(xa.e[t] + b), acc1[t]);
    }
  }
  for (int t = 0; t < T; ++t)
    panel::vstore_rows(y + size_t(t0 + t) * size_t(ldy), _mm256_add_ps(acc0[t], acc1[t]), nr);
}

// Vector v (values 4v .. 4v + 3) of half h of a Q8_0 block q, or (kCb) of an IQ4_NL block: its
// line v % 4's low (v < 4) or high nibbles looked up in the signed codebook, as PIQ4_NL unpacks them.
template <bool kCb>
inline __m256i q8_vector(const uint8_t* q, int v, int h) {
  if constexpr (kCb) {
    const __m256i w = ldq(q + 64 * (v % 4), h);
    const __m256i nib = _mm256_and_si256(v < 4 ? w : _mm256_srli_epi16(w, 4), _mm256_set1_epi8(0x0F));
    return _mm256_shuffle_epi8(v_tbl16(kIq4CodesS8.v), nib);
  } else {
    return ldq(q + 64 * v, h);
  }
}

// Q8_0 (signed bytes: PSIGNB moves the weights' signs onto the activations), a lone token: both
// halves of each line share its activation broadcast. gemv_rows' float operations (its acc1 stays
// zero for signed formats and is still added at the end: x + 0 differs from x for x = -0).
// kCb: IQ4_NL, whose codebook values are signed bytes like Q8_0's. kXs: IQ4_XS, whose 32-value
// sub-blocks are laid out as IQ4_NL blocks, 8 to a super-block, with the row scale d times the
// sub-block's int8 scale as PIQ4_XS unpacks it.
template <bool kCb = false, bool kXs = false>
[[gnu::noinline]] void gemv1_q8(const PackedMatrix& pm, int64_t g, const panel::Acts& x, float* y, int nr) {
  static_assert(kCb || !kXs);
  const uint8_t* s = pm.data + size_t(g) * pm.group_bytes;
  const uint8_t* q = s + pm.q_offset;
  const int64_t nb = pm.cols / 32;
  const __m256i ones = _mm256_set1_epi16(1);
  VF acc[2] = {panel::vzerof(), panel::vzerof()};
  constexpr int kLines = kCb ? 4 : 8;
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t sb = kXs ? b / 8 : b;
    const int ib = kXs ? int(b % 8) : 0;
    const uint8_t* sp = s + size_t(sb) * pm.s_bytes;
    const uint8_t* qb = q + size_t(sb) * pm.q_bytes + 256 * ib;
    for (int o = 0; o < kLines; ++o)
      _mm_prefetch(reinterpret_cast<const char*>(qb + kPrefetchAhead + 64 * o), _MM_HINT_T0);
    const int8_t* xq = x.q + 32 * b;
    __m256i is[2] = {};
    for (int v = 0; v < 8; ++v) {
      const __m256i bx = panel::vbcast32(xq + 4 * v);
      for (int h = 0; h < 2; ++h) {
        const __m256i u = q8_vector<kCb>(qb, v, h);
        const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(u, u), _mm256_sign_epi8(bx, u));
        is[h] = _mm256_add_epi32(is[h], _mm256_madd_epi16(p, ones));
      }
      asm("" : "+x"(is[0]), "+x"(is[1]));  // see line_tokens
    }
    for (int h = 0; h < 2; ++h) {
      const VF a = kXs ? panel::vmul(ld_h(sp, h), ld_i8f(sp + 32 + 16 * ib, h)) : ld_h(sp, h);
      acc[h] = panel::vfma(panel::vcvt(is[h]), panel::vmul(a, panel::vbcastf(x.d + b)), acc[h]);
    }
  }
  const VF v[2] = {_mm256_add_ps(acc[0], panel::vzerof()), _mm256_add_ps(acc[1], panel::vzerof())};
  store_halves<2>(y, v, nr);
}

// Q8_0 (kCb: IQ4_NL) for 2-4 tokens, one half per pass (gemvt_q4q5).
template <int T, bool kCb = false>
[[gnu::noinline]] void gemvt_q8(const PackedMatrix& pm, int64_t g, int h, const panel::Acts& x, int64_t t0,
                                float* y, int64_t ldy, int nr) {
  const uint8_t* s = pm.data + size_t(g) * pm.group_bytes;
  const uint8_t* q = s + pm.q_offset;
  const int64_t nb = pm.cols / 32;
  const TokenActs<T, float> xa(x, t0, x.s, nb);
  const __m256i ones = _mm256_set1_epi16(1);
  VF acc[T];
  for (int t = 0; t < T; ++t) acc[t] = panel::vzerof();
  constexpr int kLines = kCb ? 4 : 8;
  for (int64_t b = 0; b < nb; ++b, q += pm.q_bytes, s += pm.s_bytes) {
    for (int o = 0; o < kLines; ++o)
      _mm_prefetch(reinterpret_cast<const char*>(q + kPrefetchAhead + 64 * o), _MM_HINT_T0);
    __m256i is[T];
    for (int t = 0; t < T; ++t) is[t] = _mm256_setzero_si256();
    for (int v = 0; v < 8; ++v) {
      const __m256i u = q8_vector<kCb>(q, v, h);
      const __m256i au = _mm256_sign_epi8(u, u);
      for (int t = 0; t < T; ++t) {
        const __m256i p =
            _mm256_maddubs_epi16(au, _mm256_sign_epi8(panel::vbcast32(xa.q[t] + 32 * b + 4 * v), u));
        is[t] = _mm256_add_epi32(is[t], _mm256_madd_epi16(p, ones));
        asm("" : "+x"(is[t]));  // see line_tokens
      }
    }
    const VF a = ld_h(s, h);
    for (int t = 0; t < T; ++t)
      acc[t] = panel::vfma(panel::vcvt(is[t]), panel::vmul(a, panel::vbcastf(xa.d[t] + b)), acc[t]);
  }
  for (int t = 0; t < T; ++t)
    panel::vstore_rows(y + size_t(t0 + t) * size_t(ldy), _mm256_add_ps(acc[t], panel::vzerof()), nr);
}

// NVFP4, a lone token: both 8-row halves of each line together (gemv1_q4q5's form); per 16-value
// group its two lines' 16-bit sums add up before one widening (<= 2 * 2 * 2 * 24 * 127). The float
// operations are gemv_rows' own, group by group.
[[gnu::noinline]] inline void gemv1_nvfp4(const PackedMatrix& pm, int64_t g, const panel::Acts& x, float* y,
                                          int nr) {
  const uint8_t* s = pm.data + size_t(g) * pm.group_bytes;
  const uint8_t* q = s + pm.q_offset;
  const int64_t nb = pm.cols / 64;
  const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  const __m256i tbl = v_tbl16(kFp4Codes12.v);
  VF acc0[2] = {panel::vzerof(), panel::vzerof()}, acc1[2] = {panel::vzerof(), panel::vzerof()};
  for (int64_t b = 0; b < nb; ++b, q += pm.q_bytes, s += pm.s_bytes) {
    for (int o = 0; o < 8; ++o)
      _mm_prefetch(reinterpret_cast<const char*>(q + kPrefetchAhead + 64 * o), _MM_HINT_T0);
    const int8_t* xq = x.q + 64 * b;
    for (int gr = 0; gr < 4; ++gr) {
      __m256i p[2] = {};
      for (int j = 0; j < 2; ++j) {
        const __m256i bl = panel::vbcast32(xq + 16 * gr + 4 * j),
                      bh = panel::vbcast32(xq + 16 * gr + 8 + 4 * j);
        for (int h = 0; h < 2; ++h) {
          const __m256i w = ldq(q + 64 * (2 * gr + j), h);
          const __m256i ul = _mm256_shuffle_epi8(tbl, _mm256_and_si256(w, m4));
          const __m256i uh = _mm256_shuffle_epi8(tbl, _mm256_and_si256(_mm256_srli_epi16(w, 4), m4));
          const __m256i prod = _mm256_add_epi16(_mm256_maddubs_epi16(ul, bl), _mm256_maddubs_epi16(uh, bh));
          p[h] = j == 0 ? prod : _mm256_add_epi16(p[h], prod);
        }
        asm("" : "+x"(p[0]), "+x"(p[1]));  // see line_tokens
      }
      for (int h = 0; h < 2; ++h) {
        const VF a = ld_ue4m3_half(s + 16 * gr, h);
        acc0[h] = panel::vfma(panel::vcvt(_mm256_madd_epi16(p[h], ones)),
                              panel::vmul(a, panel::vbcastf(x.d + 2 * b + gr / 2)), acc0[h]);
        acc1[h] = panel::vfma(v_scale(a, -12.0f), panel::vbcastf(x.s + 4 * b + gr), acc1[h]);
      }
    }
  }
  const VF v[2] = {_mm256_add_ps(acc0[0], acc1[0]), _mm256_add_ps(acc0[1], acc1[1])};
  store_halves<2>(y, v, nr);
}

// Q4_K / Q5_K: both 8-row halves of each 64-byte line together, so one pair of activation
// broadcasts serves 16 rows. Q5_K's fifth bits (a vector of bit planes per sub-block: a shift and an
// AND a line) add up to 31 per byte, so its 16-bit sums widen every 4 lines instead of 8 (widen_of).
template <bool kFifth>
[[gnu::noinline]] void gemv1_q45k(const PackedMatrix& pm, int64_t g, const panel::Acts& x, float* y, int nr) {
  constexpr int kW = kFifth ? 4 : 8;
  const uint8_t* s = pm.data + size_t(g) * pm.group_bytes;
  const uint8_t* q = s + pm.q_offset;
  const int64_t nsb = pm.cols / 256;
  const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  VF acc0[2] = {panel::vzerof(), panel::vzerof()}, acc1[2] = {panel::vzerof(), panel::vzerof()};
  // A super-block's quants: 32 lines (Q4_K) or 40 (Q5_K), prefetched a quarter per c among the
  // work (a loop of their own, one taken branch a line, cost more than the prefetches).
  constexpr int kLinesC = kFifth ? 10 : 8;
  for (int64_t sb = 0; sb < nsb; ++sb, q += pm.q_bytes, s += pm.s_bytes) {
    const int8_t* xq = x.q + 256 * sb;
    const float* xd = x.d + 8 * sb;
    const float* xs = x.s + 8 * sb;
    const uint8_t* nib = kFifth ? q + 512 : q;
    for (int c = 0; c < 4; ++c) {
      const uint8_t* pf = q + kPrefetchAhead + 64 * kLinesC * c;
      for (int o = 0; o < kLinesC; ++o) _mm_prefetch(reinterpret_cast<const char*>(pf + 64 * o), _MM_HINT_T0);
      // Sub-blocks 2c (low nibbles) and 2c + 1 (high nibbles), rows 0-7 and 8-15.
      __m256i pl[2] = {}, ph[2] = {}, il[2] = {}, ih[2] = {};
      // Line v's unpacked low / high nibbles of half h times their activations: 16-bit sums of kW
      // lines, then widened to 32 bits.
      const auto add_line = [&](int v, int h, __m256i ul, __m256i uh, __m256i bl, __m256i bh) {
        const __m256i lo = _mm256_maddubs_epi16(ul, bl), hi = _mm256_maddubs_epi16(uh, bh);
        pl[h] = v % kW == 0 ? lo : _mm256_add_epi16(pl[h], lo);
        ph[h] = v % kW == 0 ? hi : _mm256_add_epi16(ph[h], hi);
        // Q4_K: see line_tokens (235 -> 211 instructions per c, 47 -> 15 of them on the stack; 9 % less
        // time from L2). Q5_K's loops ran at 0.6x with it.
        if constexpr (!kFifth) asm("" : "+x"(pl[h]), "+x"(ph[h]));
        if (v % kW == kW - 1) {
          const __m256i wl = _mm256_madd_epi16(pl[h], ones), wh = _mm256_madd_epi16(ph[h], ones);
          il[h] = v < kW ? wl : _mm256_add_epi32(il[h], wl);
          ih[h] = v < kW ? wh : _mm256_add_epi32(ih[h], wh);
        }
      };
      if constexpr (kFifth) {
        // Q5_K: bit v of the planes goes to 0x10 by a shift left by 4 - v (lines 0-3) or right by v - 4
        // (lines 4-7), by a count in a register: a loop per direction (one loop choosing the shift
        // per line ran no faster than the masks from L2).
        const __m256i m5 = _mm256_set1_epi8(0x10);
        const auto line_v = [&](int v, auto shift) {
          const uint8_t* line = nib + 64 * (8 * c + v);
          const __m256i bl = panel::vbcast32(xq + 64 * c + 4 * v);
          const __m256i bh = panel::vbcast32(xq + 64 * c + 32 + 4 * v);
          for (int h = 0; h < 2; ++h) {
            const __m256i w = _mm256_load_si256(reinterpret_cast<const __m256i*>(line + 32 * h));
            const __m256i ul =
                _mm256_or_si256(_mm256_and_si256(w, m4), _mm256_and_si256(shift(ldq(q + 128 * c, h)), m5));
            const __m256i uh = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(w, 4), m4),
                                               _mm256_and_si256(shift(ldq(q + 128 * c + 64, h)), m5));
            add_line(v, h, ul, uh, bl, bh);
          }
        };
        for (int v = 0; v < 4; ++v) {
          const __m128i n = _mm_cvtsi32_si128(4 - v);
          line_v(v, [n](__m256i f) { return _mm256_sll_epi16(f, n); });
        }
        for (int v = 4; v < 8; ++v) {
          const __m128i n = _mm_cvtsi32_si128(v - 4);
          line_v(v, [n](__m256i f) { return _mm256_srl_epi16(f, n); });
        }
      } else {
#pragma GCC unroll 8
        for (int v = 0; v < 8; ++v) {
          const uint8_t* line = nib + 64 * (8 * c + v);
          const __m256i bl = panel::vbcast32(xq + 64 * c + 4 * v);
          const __m256i bh = panel::vbcast32(xq + 64 * c + 32 + 4 * v);
          for (int h = 0; h < 2; ++h) {
            const __m256i w = _mm256_load_si256(reinterpret_cast<const __m256i*>(line + 32 * h));
            const __m256i ul = _mm256_and_si256(w, m4), uh = _mm256_and_si256(_mm256_srli_epi16(w, 4), m4);
            add_line(v, h, ul, uh, bl, bh);
          }
        }
      }
      for (int h = 0; h < 2; ++h) {
        const VF d = ld_h(s, h), dmin = v_neg(ld_h(s + 32, h));
        for (int j = 2 * c; j <= 2 * c + 1; ++j) {
          const __m256i isum = j == 2 * c ? il[h] : ih[h];
          const VF a = panel::vmul(d, ld_u8f(s + 64 + 16 * j, h));
          const VF b = panel::vmul(dmin, ld_u8f(s + 192 + 16 * j, h));
          acc0[h] = panel::vfma(panel::vcvt(isum), panel::vmul(a, panel::vbcastf(xd + j)), acc0[h]);
          acc1[h] = panel::vfma(b, panel::vbcastf(xs + j), acc1[h]);
        }
      }
    }
  }
  const VF v[2] = {_mm256_add_ps(acc0[0], acc1[0]), _mm256_add_ps(acc0[1], acc1[1])};
  store_halves<2>(y, v, nr);
}

// Q4_K for 2-4 tokens, one half per pass (gemvt_q4q5): each line unpacked once for every token;
// the float operations of gemv1_q45k per token. (Q5_K keeps gemv_rows: this form with its fifth
// bits was no faster there, 4 tokens from L2 slower.)
template <int T>
[[gnu::noinline]] void gemvt_q4k(const PackedMatrix& pm, int64_t g, int h, const panel::Acts& x, int64_t t0,
                                 float* y, int64_t ldy, int nr) {
  const uint8_t* s = pm.data + size_t(g) * pm.group_bytes;
  const uint8_t* q = s + pm.q_offset;
  const int64_t nsb = pm.cols / 256;
  const TokenActs<T, float> xa(x, t0, x.s, pm.cols / 32);
  const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  VF acc0[T], acc1[T];
  for (int t = 0; t < T; ++t) acc0[t] = acc1[t] = panel::vzerof();
  for (int64_t sb = 0; sb < nsb; ++sb, q += pm.q_bytes, s += pm.s_bytes) {
    const VF d = ld_h(s, h), dmin = v_neg(ld_h(s + 32, h));
    for (int c = 0; c < 4; ++c) {
      const uint8_t* pf = q + kPrefetchAhead + 64 * 8 * c;
      for (int o = 0; o < 8; ++o) _mm_prefetch(reinterpret_cast<const char*>(pf + 64 * o), _MM_HINT_T0);
      // Sub-blocks 2c (low nibbles) and 2c + 1 (high): 8 lines' products in 16 bits (widen_of).
      __m256i pl[T] = {}, ph[T] = {};
      for (int v = 0; v < 8; ++v) {
        const __m256i w = ldq(q + 64 * (8 * c + v), h);
        const __m256i ul = _mm256_and_si256(w, m4), uh = _mm256_and_si256(_mm256_srli_epi16(w, 4), m4);
        line_tokens(ul, uh, xa, 256 * sb + 64 * c + 4 * v, 32, v == 0, pl, ph);
      }
      for (int j = 2 * c; j <= 2 * c + 1; ++j) {
        const VF a = panel::vmul(d, ld_u8f(s + 64 + 16 * j, h));
        const VF b = panel::vmul(dmin, ld_u8f(s + 192 + 16 * j, h));
        for (int t = 0; t < T; ++t) {
          const __m256i isum = _mm256_madd_epi16(j == 2 * c ? pl[t] : ph[t], ones);
          acc0[t] =
              panel::vfma(panel::vcvt(isum), panel::vmul(a, panel::vbcastf(xa.d[t] + 8 * sb + j)), acc0[t]);
          acc1[t] = panel::vfma(b, panel::vbcastf(xa.e[t] + 8 * sb + j), acc1[t]);
        }
      }
    }
  }
  for (int t = 0; t < T; ++t)
    panel::vstore_rows(y + size_t(t0 + t) * size_t(ldy), _mm256_add_ps(acc0[t], acc1[t]), nr);
}

// Q6_K: one half at a time, the triples in memory order; the two triples of a 16-bit product pair
// are folded into 32 bits by the row's sub-block scale right away. (Both halves in one pass, one
// activation scale k at a time, sharing the broadcasts, ran a fifth faster from L2 but slower from
// L3 and in whole-model decode on Zen 3.)
[[gnu::noinline]] inline void gemv1_q6k(const PackedMatrix& pm, int64_t g, const panel::Acts& x, float* y,
                                        int nr) {
  const uint8_t* s = pm.data + size_t(g) * pm.group_bytes;
  const uint8_t* q = s + pm.q_offset;
  const int64_t nsb = pm.cols / 256;
  VF acc[2] = {panel::vzerof(), panel::vzerof()};
  for (int64_t sb = 0; sb < nsb; ++sb, q += 3072, s += pm.s_bytes) {
    const int8_t* xq = x.q + 256 * sb;
    for (int h = 0; h < 2; ++h) {
      VF accs = panel::vzerof();
      for (int hh = 0; hh < 2; ++hh) {
        __m256i sc[2][4], isum[4];
        for (int k = 0; k < 4; ++k) {
          const __m256i scp = q6_scale_pairs(s, hh, k, h);
          sc[0][k] = q6_scale_of(scp, 0);
          sc[1][k] = q6_scale_of(scp, 1);
          isum[k] = _mm256_madd_epi16(_mm256_slli_epi16(scp, 5),  // |32 sc| <= 4096
                                      _mm256_set1_epi32(x.o16[8 * sb + 4 * hh + k]));
        }
        for (int vq = 0; vq < 2; ++vq) {
          // The 48 lines' prefetches, 6 per (h, hh, vq), among the work: a loop of its own cost
          // about a tenth of the kernel's time (one taken branch a line).
          const uint8_t* pf = q + kPrefetchAhead + 64 * 6 * (4 * h + 2 * hh + vq);
          for (int o = 0; o < 6; ++o) _mm_prefetch(reinterpret_cast<const char*>(pf + 64 * o), _MM_HINT_T0);
          __m256i p[4] = {};
          for (int i = 0; i < 4; ++i) {
            const uint8_t* tr = q + 64 * 3 * (8 * hh + 4 * vq + i);
            VI u[4];
            q6_unpack3(ldq(tr, h), ldq(tr + 64, h), ldq(tr + 128, h), u);
            for (int k = 0; k < 4; ++k) {
              const __m256i pk =
                  _mm256_maddubs_epi16(u[k], panel::vbcast32(xq + 128 * hh + 32 * k + 16 * vq + 4 * i));
              // Two products fit 16 bits (<= 2 * 2 * 63 * 127); then into 32 bits, times the scale.
              if (i % 2 == 0) {
                p[k] = pk;
              } else {
                isum[k] = _mm256_add_epi32(isum[k], _mm256_madd_epi16(_mm256_add_epi16(p[k], pk), sc[vq][k]));
              }
            }
          }
        }
        for (int k = 0; k < 4; ++k)
          accs = panel::vfma(panel::vcvt(isum[k]), panel::vbcastf(x.d + 8 * sb + 4 * hh + k), accs);
      }
      acc[h] = panel::vfma(ld_h(s, h), accs, acc[h]);
    }
  }
  store_halves<2>(y, acc, nr);
}

// Decode of Q2_K (kQ3 false) and Q3_K on AVX2, T tokens, kNH halves from rows 8 h0 on. As
// gemv_rows_q6: the products of a sub-block's 4 vectors add up in 16 bits (<= 4 * 2 * 7 * 127), then
// PMADDWD by the row's sub-block scale; Q3_K's -4 offset enters as -4 sc times the activation sums
// (x.o16), Q2_K's minimums as m times them in a second sum that dmin scales. One conversion per 32
// values (two for Q2_K), the same float operations in the same order for any T and kNH.
template <bool kQ3, int T, int kNH>
void gemv_rows_k23(const PackedMatrix& pm, int64_t g, int h0, const panel::Acts& x, int64_t t0, float* y,
                   int64_t ldy, int nr) {
  const uint8_t* s = pm.data + size_t(g) * pm.group_bytes;
  const uint8_t* q = s + pm.q_offset;
  const int64_t nsb = pm.cols / 256;
  constexpr size_t kQB = kQ3 ? 1536 : 1024;
  constexpr int kLines = int(kQB / 64) / (4 * kNH);  // prefetched per (half, hh, vq)
  const TokenActs<T, int32_t> xa(x, t0, x.o16, pm.cols / 32);
  VF acc[kNH][T];
  for (int hn = 0; hn < kNH; ++hn)
    for (int t = 0; t < T; ++t) acc[hn][t] = panel::vzerof();
  for (int64_t sb = 0; sb < nsb; ++sb, q += kQB, s += pm.s_bytes) {
    for (int hn = 0; hn < kNH; ++hn) {
      const int h = h0 + hn;
      VF accs[T], accm[T];
      for (int t = 0; t < T; ++t) accs[t] = accm[t] = panel::vzerof();
      for (int hh = 0; hh < 2; ++hh) {
        __m256i sc[2][4], isum[T][4], imin[T][4];
        for (int k = 0; k < 4; ++k) {
          __m256i scp;
          if constexpr (kQ3) {
            scp = q6_scale_pairs(s, hh, k, h);
          } else {
            const uint8_t* sp = s + 64 + 16 * (8 * hh + 2 * k) + 8 * h;
            const __m256i sm = _mm256_cvtepu8_epi16(
                _mm_unpacklo_epi8(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sp)),
                                  _mm_loadl_epi64(reinterpret_cast<const __m128i*>(sp + 16))));
            scp = _mm256_and_si256(sm, _mm256_set1_epi16(15));
            for (int t = 0; t < T; ++t)
              imin[t][k] = _mm256_madd_epi16(_mm256_srli_epi16(sm, 4),
                                             _mm256_set1_epi32(xa.e[t][8 * sb + 4 * hh + k]));
          }
          sc[0][k] = q6_scale_of(scp, 0);
          sc[1][k] = q6_scale_of(scp, 1);
          for (int t = 0; t < T; ++t)
            isum[t][k] = kQ3 ? _mm256_madd_epi16(_mm256_slli_epi16(scp, 2),  // |4 sc| <= 128
                                                 _mm256_set1_epi32(xa.e[t][8 * sb + 4 * hh + k]))
                             : _mm256_setzero_si256();
        }
        for (int vq = 0; vq < 2; ++vq) {
          const uint8_t* pf = q + kPrefetchAhead + 64 * kLines * (4 * hn + 2 * hh + vq);
          for (int o = 0; o < kLines; ++o)
            _mm_prefetch(reinterpret_cast<const char*>(pf + 64 * o), _MM_HINT_T0);
          VI u[4][4];  // [k][i]
          if constexpr (kQ3) {
            q3_unpack_group(q + 64 * 6 * (2 * hh + vq), h, u);
          } else {
            for (int i = 0; i < 4; ++i) {
              const VI lo = ldq(q + 64 * (8 * hh + 4 * vq + i), h);
              for (int k = 0; k < 4; ++k) u[k][i] = k2_bits(lo, k);
            }
          }
          for (int t = 0; t < T; ++t) {
            for (int k = 0; k < 4; ++k) {
              const int8_t* xt = xa.q[t] + 256 * sb + 128 * hh + 32 * k + 16 * vq;
              __m256i p = _mm256_maddubs_epi16(u[k][0], panel::vbcast32(xt));
              for (int i = 1; i < 4; ++i)
                p = _mm256_add_epi16(p, _mm256_maddubs_epi16(u[k][i], panel::vbcast32(xt + 4 * i)));
              isum[t][k] = _mm256_add_epi32(isum[t][k], _mm256_madd_epi16(p, sc[vq][k]));
            }
          }
        }
        for (int t = 0; t < T; ++t) {
          for (int k = 0; k < 4; ++k) {
            const VF xd = panel::vbcastf(xa.d[t] + 8 * sb + 4 * hh + k);
            accs[t] = panel::vfma(panel::vcvt(isum[t][k]), xd, accs[t]);
            if constexpr (!kQ3) accm[t] = panel::vfma(panel::vcvt(imin[t][k]), xd, accm[t]);
          }
        }
      }
      for (int t = 0; t < T; ++t) {
        acc[hn][t] = panel::vfma(ld_h(s, h), accs[t], acc[hn][t]);
        if constexpr (!kQ3) acc[hn][t] = panel::vfma(ld_h(s + 32, h), accm[t], acc[hn][t]);
      }
    }
  }
  for (int t = 0; t < T; ++t) {
    VF v[kNH];
    for (int hn = 0; hn < kNH; ++hn) v[hn] = acc[hn][t];
    store_halves<kNH>(y + size_t(t0 + t) * size_t(ldy), v, nr);
  }
}
