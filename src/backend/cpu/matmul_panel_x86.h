// Interleaved-panel GEMM for prefill on AVX2 and AVX-512 (VNNI): included at the end of
// matmul_x86_impl.h, inside its namespace, so it reuses the per-format block decoders there.
//
// A panel is kPR weight rows (16 with AVX-512, 8 with AVX2) decoded to bytes and interleaved in
// groups of 4 k: one vector load gives 4 consecutive weights of every row of the panel, multiplied
// against 4 activation bytes of one token broadcast to all lanes. Every lane accumulates its own
// row, so a register tile of T tokens needs no horizontal sums, and the per-block scales are applied
// once per (token, panel, block) instead of once per (token, row, block) as in the row-dot kernels.
//
// Every format maps to the same panel form: bytes u and, per block of kSub k (32, or 16 for the
// formats with 16-value sub-blocks), a scale a and an offset b per row, so that w = a * u + b.
// With int8 activations x = dx * qx (32 per scale) the block's contribution is
//   a * dx * sum(u * qx) + b * dx * sum(qx),
// the first term from the integer products, the second from the activation block sums.
// u is unsigned (VPDPBUSD / PMADDUBSW take unsigned times signed bytes); signed formats add 128
// (b = -128 a). AVX2's PMADDUBSW saturates its 16-bit pair sums, so there Q8_0 and IQ4_NL keep
// signed bytes and take |w| * sign(x, w), and the narrow formats add several 16-bit products
// before widening.
//
// The panels are decoded per call (the cost is shared by all tokens of the call); see
// docs/performance.md for the measured alternatives.

namespace panel {

#if QLEAP_USE_VNNI
constexpr int kPR = 16;
using VI = __m512i;
using VF = __m512;
inline VI vload(const uint8_t* p) {
  return _mm512_load_si512(p);
}
inline VI vbcast32(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}
inline VF vloadf(const float* p) {
  return _mm512_load_ps(p);
}
inline VF vbcastf(const float* p) {
  return _mm512_set1_ps(*p);
}
inline VF vzerof() {
  return _mm512_setzero_ps();
}
inline VI vzeroi() {
  return _mm512_setzero_si512();
}
inline VF vcvt(VI v) {
  return _mm512_cvtepi32_ps(v);
}
inline VF vfma(VF a, VF b, VF c) {
  return _mm512_fmadd_ps(a, b, c);
}
inline VF vmul(VF a, VF b) {
  return _mm512_mul_ps(a, b);
}
inline void vstore_rows(float* y, VF v, int nr) {
  if (nr == kPR) {
    _mm512_storeu_ps(y, v);
  } else {
    _mm512_mask_storeu_ps(y, __mmask16((1u << nr) - 1), v);
  }
}
#else
constexpr int kPR = 8;
using VI = __m256i;
using VF = __m256;
inline VI vload(const uint8_t* p) {
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(p));
}
inline VI vbcast32(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}
inline VF vloadf(const float* p) {
  return _mm256_load_ps(p);
}
inline VF vbcastf(const float* p) {
  return _mm256_broadcast_ss(p);
}
inline VF vzerof() {
  return _mm256_setzero_ps();
}
inline VI vzeroi() {
  return _mm256_setzero_si256();
}
inline VF vcvt(VI v) {
  return _mm256_cvtepi32_ps(v);
}
inline VF vfma(VF a, VF b, VF c) {
  return _mm256_fmadd_ps(a, b, c);
}
inline VF vmul(VF a, VF b) {
  return _mm256_mul_ps(a, b);
}
inline void vstore_rows(float* y, VF v, int nr) {
  if (nr == kPR) {
    _mm256_storeu_ps(y, v);
  } else {
    alignas(32) float tmp[8];
    _mm256_store_ps(tmp, v);
    for (int i = 0; i < nr; ++i) y[i] = tmp[i];
  }
}
#endif
constexpr int kVB = kPR * 4;  // bytes per interleaved k-group (4 k of every row)

// How a format lands in the panel form.
struct Spec {
  int sub = 32;           // k per (a, b) pair: 32 or 16
  bool signed_q = false;  // AVX2 only: bytes are signed, b = 0 (sign trick in the kernel)
  int widen = 1;          // AVX2: k-groups whose 16-bit products may be added before widening
};

// Activations of one call: int8 values, a scale per 32 and the scaled sums per kSub.
struct Acts {
  const int8_t* q;  // [m][cols]
  const float* d;   // [m][cols / 32]
  const float* s;   // [m][cols / sub]: d * sum(q) over each sub-block
  int64_t cols, m;
  int sub;
  // Q6_K decode (and Q3_K / Q2_K on AVX2): VNNI [m][cols / 16] -32 * sum(q) over 16 values; AVX2
  // [m][cols / 32] the two -sum(q) of a 32 as 16-bit halves.
  const int32_t* o16 = nullptr;
};

// ---- kernels ----

#if QLEAP_USE_VNNI
inline VI dot4(VI acc, VI w, VI x) {
  return _mm512_dpbusd_epi32(acc, w, x);
}
#endif

// y[t][0 .. nr) for T tokens from one panel: q [n_groups][kVB] bytes, a/b [n_sub][kPR] floats.
template <int T, int kSub, bool kSigned, int kWiden>
void panel_tile(const uint8_t* q, const float* a, const float* b, int64_t cols, const Acts& x, int64_t t0,
                float* y, int64_t ldy, int nr) {
  constexpr int kGroups = kSub / 4;  // k-groups per sub-block
  VF accf[T];
  for (int t = 0; t < T; ++t) accf[t] = vzerof();
  const int64_t nsub = cols / kSub;
  const int64_t ld32 = cols / 32;
  const int8_t* xq[T];
  for (int t = 0; t < T; ++t) xq[t] = x.q + size_t(t0 + t) * size_t(cols);
  for (int64_t sb = 0; sb < nsub; ++sb) {
    VI acci[T];
    for (int t = 0; t < T; ++t) acci[t] = vzeroi();
    const uint8_t* qg = q + size_t(sb) * kGroups * kVB;
    const int64_t k0 = sb * kSub;
#if QLEAP_USE_VNNI
    for (int g = 0; g < kGroups; ++g) {
      const VI w = vload(qg + g * kVB);
      for (int t = 0; t < T; ++t) acci[t] = dot4(acci[t], w, vbcast32(xq[t] + k0 + 4 * g));
    }
#else
    const VI ones = _mm256_set1_epi16(1);
    if constexpr (kSigned) {
      for (int g = 0; g < kGroups; ++g) {
        const VI w = vload(qg + g * kVB);
        const VI aw = _mm256_sign_epi8(w, w);
        for (int t = 0; t < T; ++t) {
          const VI p = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(vbcast32(xq[t] + k0 + 4 * g), w));
          acci[t] = _mm256_add_epi32(acci[t], _mm256_madd_epi16(p, ones));
        }
      }
    } else {
      for (int g0 = 0; g0 < kGroups; g0 += kWiden) {
        VI acc16[T];
        for (int t = 0; t < T; ++t) acc16[t] = vzeroi();
        for (int g = g0; g < g0 + kWiden; ++g) {
          const VI w = vload(qg + g * kVB);
          for (int t = 0; t < T; ++t)
            acc16[t] = _mm256_add_epi16(acc16[t], _mm256_maddubs_epi16(w, vbcast32(xq[t] + k0 + 4 * g)));
        }
        for (int t = 0; t < T; ++t) acci[t] = _mm256_add_epi32(acci[t], _mm256_madd_epi16(acc16[t], ones));
      }
    }
#endif
    const VF av = vloadf(a + size_t(sb) * kPR);
    const int64_t i32 = k0 / 32;
    for (int t = 0; t < T; ++t) {
      const VF sc = vmul(av, vbcastf(x.d + size_t(t0 + t) * ld32 + i32));
      accf[t] = vfma(vcvt(acci[t]), sc, accf[t]);
    }
    if constexpr (!kSigned) {
      const VF bv = vloadf(b + size_t(sb) * kPR);
      for (int t = 0; t < T; ++t) accf[t] = vfma(bv, vbcastf(x.s + size_t(t0 + t) * nsub + sb), accf[t]);
    }
  }
  for (int t = 0; t < T; ++t) vstore_rows(y + size_t(t0 + t) * ldy, accf[t], nr);
}

#if QLEAP_USE_VNNI
constexpr int kTokTile = 8;
#else
constexpr int kTokTile = 4;
#endif

template <int kSub, bool kSigned, int kWiden>
void panel_rows(const uint8_t* q, const float* a, const float* b, int64_t cols, const Acts& x, float* y,
                int64_t ldy, int nr) {
  int64_t t = 0;
  for (; t + kTokTile <= x.m; t += kTokTile)
    panel_tile<kTokTile, kSub, kSigned, kWiden>(q, a, b, cols, x, t, y, ldy, nr);
  switch (int(x.m - t)) {
    case 1:
      panel_tile<1, kSub, kSigned, kWiden>(q, a, b, cols, x, t, y, ldy, nr);
      break;
    case 2:
      panel_tile<2, kSub, kSigned, kWiden>(q, a, b, cols, x, t, y, ldy, nr);
      break;
    case 3:
      panel_tile<3, kSub, kSigned, kWiden>(q, a, b, cols, x, t, y, ldy, nr);
      break;
#if QLEAP_USE_VNNI
    case 4:
      panel_tile<4, kSub, kSigned, kWiden>(q, a, b, cols, x, t, y, ldy, nr);
      break;
    case 5:
      panel_tile<5, kSub, kSigned, kWiden>(q, a, b, cols, x, t, y, ldy, nr);
      break;
    case 6:
      panel_tile<6, kSub, kSigned, kWiden>(q, a, b, cols, x, t, y, ldy, nr);
      break;
    case 7:
      panel_tile<7, kSub, kSigned, kWiden>(q, a, b, cols, x, t, y, ldy, nr);
      break;
#endif
    default:
      break;
  }
}

// ---- packing: decode kPR rows into the interleaved form ----

// Interleaves kPR rows of 32 bytes (rows[r]) into 8 groups of kVB bytes at dst.
inline void interleave32(const uint8_t* const* rows, uint8_t* dst) {
#if QLEAP_USE_VNNI
  // The 16 x 16 dword transpose of which the first 8 outputs (the 8 dwords loaded per row) are used.
  __m512i r[16];
  for (int i = 0; i < 16; ++i)
    r[i] = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[i])));
  qleap::simd::transpose16x16(r);
  for (int j = 0; j < 8; ++j) _mm512_store_si512(dst + j * kVB, r[j]);
#else
  // 8 x 8 dword transpose.
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(reinterpret_cast<const float*>(rows[i]));
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {
    r[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    r[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xee);
    r[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    r[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xee);
  }
  // r[0..3]: columns 0,1,2,3 (lane 0) and 4,5,6,7 (lane 1) of rows 0..3; r[4..7] the same of rows 4..7.
  for (int j = 0; j < 4; ++j) {
    _mm256_store_ps(reinterpret_cast<float*>(dst + j * kVB), _mm256_permute2f128_ps(r[j], r[4 + j], 0x20));
    _mm256_store_ps(reinterpret_cast<float*>(dst + (j + 4) * kVB),
                    _mm256_permute2f128_ps(r[j], r[4 + j], 0x31));
  }
#endif
}

template <class T>
constexpr Spec spec_q8a() {
  Spec s;
#if !QLEAP_USE_VNNI
  if (T::kKind == kSignedQ) s.signed_q = true;
  s.widen = std::is_same_v<T, TQ5_0> || std::is_same_v<T, TQ5_1> ? 4 : 8;
#endif
  return s;
}

// Q4_0 .. IQ4_NL: one 32-value block per sub-block.
template <class T>
void pack_q8a(const uint8_t* const* src, int nr, int64_t cols, uint8_t* q, float* a, float* b) {
  using B = typename T::B;
  constexpr Spec kSpec = spec_q8a<T>();
  alignas(64) uint8_t rows[kPR][32];
  const uint8_t* rp[kPR];
  for (int r = 0; r < kPR; ++r) rp[r] = rows[r];
  for (int r = nr; r < kPR; ++r) std::memset(rows[r], 0, 32);
  for (int64_t blk = 0; blk < cols / 32; ++blk) {
    for (int r = 0; r < kPR; ++r) {
      float ar = 0, br = 0;
      if (r < nr) {
        const B* wb = reinterpret_cast<const B*>(src[r]) + blk;
        __m256i v = T::q(wb);
        ar = T::d(wb);
        if constexpr (T::kKind == kSignedQ) {
          if constexpr (!kSpec.signed_q) {
            v = _mm256_xor_si256(v, _mm256_set1_epi8(char(0x80)));  // + 128
            br = -128.0f * ar;
          }
        } else if constexpr (T::kKind == kOffsetQ) {
          br = T::kOffset * ar;
        } else {
          br = T::m(wb);
        }
        _mm256_store_si256(reinterpret_cast<__m256i*>(rows[r]), v);
      }
      a[size_t(blk) * kPR + size_t(r)] = ar;
      b[size_t(blk) * kPR + size_t(r)] = br;
    }
    interleave32(rp, q + size_t(blk) * 8 * kVB);
  }
}

template <class T>
constexpr int k_sub() {
  return std::is_same_v<T, KQ4> || std::is_same_v<T, KQ5> ? 32 : 16;
}

// K-quants: one KPrep per super-block gives bytes and per-16 scales/mins (w = d sc q - dmin mn).
template <class T>
void pack_k(const uint8_t* const* src, int nr, int64_t cols, uint8_t* q, float* a, float* b) {
  using B = typename T::B;
  constexpr int kSub = k_sub<T>();
  constexpr int kPerSb = 256 / kSub;
  alignas(64) uint8_t rows[kPR][256];
  for (int r = nr; r < kPR; ++r) std::memset(rows[r], 0, 256);
  KPrep p;
  for (int64_t sb = 0; sb < cols / 256; ++sb) {
    for (int r = 0; r < kPR; ++r) {
      float* ar = a + size_t(sb * kPerSb) * kPR + size_t(r);
      float* br = b + size_t(sb * kPerSb) * kPR + size_t(r);
      if (r >= nr) {
        for (int i = 0; i < kPerSb; ++i) ar[size_t(i) * kPR] = br[size_t(i) * kPR] = 0.0f;
        continue;
      }
      T::prep(reinterpret_cast<const B*>(src[r]) + sb, p);
      std::memcpy(rows[r], p.q, 256);
      for (int i = 0; i < kPerSb; ++i) {
        // 16-value group g = i * (kSub / 16); its scale sits in sc[g / 2][8 * (g % 2)].
        const int g = i * (kSub / 16);
        ar[size_t(i) * kPR] = p.d * float(p.sc[g / 2][8 * (g % 2)]);
        br[size_t(i) * kPR] = -p.dmin * float(p.mn[g]);
      }
    }
    for (int c = 0; c < 8; ++c) {
      const uint8_t* rp[kPR];
      for (int r = 0; r < kPR; ++r) rp[r] = rows[r] + 32 * c;
      interleave32(rp, q + (size_t(sb) * 8 + size_t(c)) * 8 * kVB);
    }
  }
}

using PackFn = void (*)(const uint8_t* const* src, int nr, int64_t cols, uint8_t* q, float* a, float* b);
using RowsFn = void (*)(const uint8_t* q, const float* a, const float* b, int64_t cols, const Acts& x,
                        float* y, int64_t ldy, int nr);

struct Format {
  PackFn pack = nullptr;
  RowsFn rows = nullptr;
  int sub = 32;
};

template <class T>
Format q8a_format() {
  constexpr Spec s = spec_q8a<T>();
  return {&pack_q8a<T>, &panel_rows<32, s.signed_q, s.widen>, 32};
}
template <class T>
Format k_format() {
  constexpr int kSub = k_sub<T>();
  // AVX2 widening: bytes up to 15 (Q4_K), 31 (Q5_K), 63 (Q6_K) or 7 (Q2_K/Q3_K).
  constexpr int kWiden = std::is_same_v<T, KQ6> ? 2 : std::is_same_v<T, KQ5> ? 4 : kSub / 4;
  return {&pack_k<T>, &panel_rows<kSub, false, kWiden>, kSub};
}

Format format_of(GgmlType t) {
  switch (t) {
    case GgmlType::Q4_0:
      return q8a_format<TQ4_0>();
    case GgmlType::Q4_1:
      return q8a_format<TQ4_1>();
    case GgmlType::Q5_0:
      return q8a_format<TQ5_0>();
    case GgmlType::Q5_1:
      return q8a_format<TQ5_1>();
    case GgmlType::Q8_0:
      return q8a_format<TQ8_0>();
    case GgmlType::IQ4_NL:
      return q8a_format<TIq4Nl>();
    case GgmlType::Q2_K:
      return k_format<KQ2>();
    case GgmlType::Q3_K:
      return k_format<KQ3>();
    case GgmlType::Q4_K:
      return k_format<KQ4>();
    case GgmlType::Q5_K:
      return k_format<KQ5>();
    case GgmlType::Q6_K:
      return k_format<KQ6>();
    default:
      return {};
  }
}

// ---- driver ----

struct Buf {
  std::vector<uint8_t> v;
  uint8_t* get(size_t n) {
    if (v.size() < n + 64) v.resize(n + 64);
    return reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(v.data()) + 63) & ~uintptr_t(63));
  }
};

// Quantizes activation rows [t0, t1) to int8 with a scale per 32 and per-sub sums.
void quantize_acts(const float* x, int64_t cols, int sub, int64_t t0, int64_t t1, int8_t* q, float* d,
                   float* s) {
  alignas(64) BlockQ8A blk[1];
  const int64_t n32 = cols / 32, nsub = cols / sub;
  for (int64_t t = t0; t < t1; ++t) {
    for (int64_t i = 0; i < n32; ++i) {
      quantize_q8a(x + size_t(t) * size_t(cols) + size_t(i) * 32, blk, 32);
      std::memcpy(q + size_t(t) * size_t(cols) + size_t(i) * 32, blk[0].qs, 32);
      d[size_t(t) * size_t(n32) + size_t(i)] = blk[0].d;
      if (sub == 32) {
        s[size_t(t) * size_t(nsub) + size_t(i)] = blk[0].s;
      } else {
        int s0 = 0, s1 = 0;
        for (int k = 0; k < 16; ++k) {
          s0 += blk[0].qs[k];
          s1 += blk[0].qs[16 + k];
        }
        s[size_t(t) * size_t(nsub) + size_t(2 * i)] = blk[0].d * float(s0);
        s[size_t(t) * size_t(nsub) + size_t(2 * i + 1)] = blk[0].d * float(s1);
      }
    }
  }
}

bool panel_matmul(const WeightView& w, const float* x, int64_t m, float* y, ThreadPool& pool) {
  const Format f = format_of(w.type);
  if (f.pack == nullptr || w.cols % 32 != 0) return false;
  const int64_t cols = w.cols;
  thread_local Buf act;
  const size_t qbytes = size_t(m) * size_t(cols);
  const size_t n32 = size_t(cols / 32), nsub = size_t(cols / f.sub);
  uint8_t* base = act.get(qbytes + (size_t(m) * (n32 + nsub)) * sizeof(float) + 128);
  auto* q = reinterpret_cast<int8_t*>(base);
  auto* d = reinterpret_cast<float*>(base + (qbytes + 63) / 64 * 64);
  float* s = d + size_t(m) * n32;
  Acts xa{q, d, s, cols, m, f.sub};
  const int sub = f.sub;
  if (m >= 8 && pool.size() > 1) {
    pool.parallel_for(m, std::max<int64_t>(1, m / (4 * pool.size())),
                      [=](int64_t t0, int64_t t1, int) { quantize_acts(x, cols, sub, t0, t1, q, d, s); });
  } else {
    quantize_acts(x, cols, sub, 0, m, q, d, s);
  }
  const int64_t n_panels = (w.rows + kPR - 1) / kPR;
  const Acts* xp = &xa;
  const WeightView* wp = &w;
  const Format* fp = &f;
  pool.parallel_for(
      n_panels, std::max<int64_t>(1, n_panels / (8 * pool.size())), [=](int64_t p0, int64_t p1, int) {
        thread_local Buf pbuf;
        const WeightView& wv = *wp;
        const size_t qb = size_t(wv.cols) * kPR;
        const size_t nsb = size_t(wv.cols / fp->sub) * kPR;
        uint8_t* pq = pbuf.get(qb + 2 * nsb * sizeof(float) + 64);
        auto* pa = reinterpret_cast<float*>(pq + qb);
        float* pb = pa + nsb;
        for (int64_t p = p0; p < p1; ++p) {
          const int64_t r0 = p * kPR;
          const int nr = int(std::min<int64_t>(kPR, wv.rows - r0));
          const uint8_t* src[kPR];
          for (int r = 0; r < kPR; ++r)
            src[r] = static_cast<const uint8_t*>(wv.data) + size_t(r0 + std::min(r, nr - 1)) * wv.row_bytes;
          fp->pack(src, nr, wv.cols, pq, pa, pb);
          fp->rows(pq, pa, pb, wv.cols, *xp, y + r0, wv.rows, nr);
        }
      });
  return true;
}

}  // namespace panel
