// AMX build of the x86 kernels: the AVX-512 VNNI kernels of matmul_x86_impl.h (decode, small
// batches) plus a tile GEMM for prefill.
//
// Prefill on AMX computes in bf16 with fp32 accumulation (TDPBF16PS): each weight row is decoded to
// floats and rounded to bf16 (8 significant bits), the activations likewise. Why not int8
// (TDPBSSD, twice the products per instruction): the block formats carry a scale per 32 weights,
// so every 32-deep int8 step would need its int32 tile stored and rescaled with AVX-512 (convert,
// multiply, add per 16 outputs), work the tile unit does not share; bf16 needs none (the scales are
// folded into the decoded values) and serves every weight format through one kernel. Rounding both
// operands to bf16 (relative error <= 2^-8 each) is a smaller error than the int8 activation
// quantization the other levels use. F32 and F16 weights stay on the exact fp32 kernels.
//
// Layout: C[t][n] = sum_k X[t][k] * W[n][k]. A tiles are 16 tokens x 32 bf16 (the activations,
// converted once per call), B tiles 16 k-pairs x 16 weight rows (VNNI pairs), made per call from
// the repacked weights (packed_weights.h: their 16-row groups are already interleaved across rows)
// or from GGUF rows (decoded, then transposed), C tiles 16 tokens x 16 rows in fp32, 2x2 per step.
//
// GCC 12 reports the _mm512_undefined_epi32() inside the AVX-512 unpack intrinsics as possibly
// uninitialized (a false positive of the header's `__m512i __Y = __Y;` idiom).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#define QLEAP_ISA_NS amx
#define QLEAP_ISA_NAME "amx"
#define QLEAP_USE_VNNI 1
#include <atomic>
#include <memory>
#include <new>
#include <vector>

#include "backend/cpu/amx_tiles.h"
#include "backend/cpu/matmul.h"
#include "backend/cpu/matmul_x86_impl.h"
// The i-quant kernels (GGUF layout, no repacked or tile form) reopen the namespace above and must
// follow it: at this level they run as on AVX-512.
#include "backend/cpu/matmul_iq_x86_impl.h"
#include "quant/quant.h"

namespace qleap::kern::amx {
namespace {

constexpr int kTileRows = 16;
constexpr int kStep = 32;         // k per tile step (32 bf16 = 64 bytes per A row)
constexpr int kTileBytes = 1024;  // every tile here: 16 rows x 64 bytes
constexpr int64_t kChunkK = 512;  // k per chunk: a token pair's B tiles (32 KiB) stay in L1

using amx_tiles::AlignedBuf;
using amx_tiles::ensure_tile_config;
using amx_tiles::transpose16x16;

inline __m512i to_bf16(__m512 lo, __m512 hi) {
  return reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo));
}

// ---- weight rows -> bf16, 32 values at a time ----
// Each decoder calls emit(step, bf16x32) for the steps of row `src` in [s0, s1) (step = 32 values).

inline __m512 cvt16_u8(__m128i v) {
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v));
}
inline __m512 cvt16_i8(__m128i v) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v));
}

template <class T, class Emit>
void decode_q8a_rows(const uint8_t* src, int64_t s0, int64_t s1, Emit&& emit) {
  const auto* b = reinterpret_cast<const typename T::B*>(src);
  for (int64_t s = s0; s < s1; ++s) {
    const __m256i q = T::q(b + s);
    const __m128i q0 = _mm256_castsi256_si128(q), q1 = _mm256_extracti128_si256(q, 1);
    __m512 f0, f1;
    if constexpr (T::kKind == kSignedQ) {
      f0 = cvt16_i8(q0);
      f1 = cvt16_i8(q1);
    } else {
      f0 = cvt16_u8(q0);
      f1 = cvt16_u8(q1);
    }
    const __m512 d = _mm512_set1_ps(T::d(b + s));
    if constexpr (T::kKind == kOffsetQ) {
      const __m512 off = _mm512_set1_ps(T::kOffset);
      f0 = _mm512_mul_ps(_mm512_add_ps(f0, off), d);
      f1 = _mm512_mul_ps(_mm512_add_ps(f1, off), d);
    } else if constexpr (T::kKind == kAffineQ) {
      const __m512 m = _mm512_set1_ps(T::m(b + s));
      f0 = _mm512_fmadd_ps(f0, d, m);
      f1 = _mm512_fmadd_ps(f1, d, m);
    } else {
      f0 = _mm512_mul_ps(f0, d);
      f1 = _mm512_mul_ps(f1, d);
    }
    emit(s, to_bf16(f0, f1));
  }
}

// K-quants: unpack each 256-value super-block (KPrep: bytes q, a scale per 16 values, a min per 16)
// and emit its 8 steps. s0 and s1 are multiples of 8.
template <class T, class Emit>
void decode_k_rows(const uint8_t* src, int64_t s0, int64_t s1, Emit&& emit) {
  const auto* b = reinterpret_cast<const typename T::B*>(src);
  KPrep p;
  for (int64_t sb = s0 / 8; sb < s1 / 8; ++sb) {
    T::prep(b + sb, p);
    for (int k = 0; k < 8; ++k) {
      const __m128i q0 = _mm_load_si128(reinterpret_cast<const __m128i*>(p.q + 32 * k));
      const __m128i q1 = _mm_load_si128(reinterpret_cast<const __m128i*>(p.q + 32 * k + 16));
      const __m512 a0 = _mm512_set1_ps(p.d * float(p.sc[k][0])), a1 = _mm512_set1_ps(p.d * float(p.sc[k][8]));
      const __m512 m0 = _mm512_set1_ps(p.dmin * float(p.mn[2 * k]));
      const __m512 m1 = _mm512_set1_ps(p.dmin * float(p.mn[2 * k + 1]));
      const __m512 f0 = _mm512_fmsub_ps(cvt16_u8(q0), a0, m0);
      const __m512 f1 = _mm512_fmsub_ps(cvt16_u8(q1), a1, m1);
      emit(sb * 8 + k, to_bf16(f0, f1));
    }
  }
}

// The 256-weight i-quant / ternary formats, through the traits of matmul_iq_x86_impl.h: per 32
// weights, magnitudes u and signs s (u <= 127, so sign(u, s) is the signed code exactly), an int8
// scale per 16 and one float factor per super-block. s0 and s1 are multiples of 8.
template <class F, class Emit>
void decode_iq_rows(const uint8_t* src, int64_t s0, int64_t s1, Emit&& emit) {
  const auto* b = reinterpret_cast<const typename F::B*>(src);
  for (int64_t sb = s0 / 8; sb < s1 / 8; ++sb) {
    alignas(16) int8_t sc[16];
    F::scales(b[sb], sc);
    const float f = F::factor(b[sb]);
    for (int k = 0; k < 8; ++k) {
      __m256i u, s;
      F::chunk(b[sb], k, &u, &s);
      const __m256i v = _mm256_sign_epi8(u, s);
      const __m512 f0 =
          _mm512_mul_ps(cvt16_i8(_mm256_castsi256_si128(v)), _mm512_set1_ps(f * float(sc[2 * k])));
      const __m512 f1 =
          _mm512_mul_ps(cvt16_i8(_mm256_extracti128_si256(v, 1)), _mm512_set1_ps(f * float(sc[2 * k + 1])));
      emit(sb * 8 + k, to_bf16(f0, f1));
    }
  }
}

// NVFP4: 64 weights per block (two steps), a UE4M3 scale per 16. s0 and s1 are even.
template <class Emit>
void decode_nvfp4_rows(const uint8_t* src, int64_t s0, int64_t s1, Emit&& emit) {
  const auto* b = reinterpret_cast<const BlockNvfp4*>(src);
  for (int64_t i = s0 / 2; i < s1 / 2; ++i) {
    for (int h = 0; h < 2; ++h) {
      const __m256i v = nvfp4_half(b[i], h);
      const __m512 f0 =
          _mm512_mul_ps(cvt16_i8(_mm256_castsi256_si128(v)), _mm512_set1_ps(kUe4m3Half[b[i].d[2 * h]]));
      const __m512 f1 = _mm512_mul_ps(cvt16_i8(_mm256_extracti128_si256(v, 1)),
                                      _mm512_set1_ps(kUe4m3Half[b[i].d[2 * h + 1]]));
      emit(2 * i + h, to_bf16(f0, f1));
    }
  }
}

// Float formats (BF16 is the one routed here; F16/F32 decoders for completeness of the table); the
// last step of a row may be partial (cols not a multiple of 32): zero-filled.
template <class Emit>
void decode_float_rows(GgmlType type, const uint8_t* src, int64_t cols, int64_t s0, int64_t s1, Emit&& emit) {
  for (int64_t s = s0; s < s1; ++s) {
    const int64_t c0 = s * kStep;
    const int64_t n = std::min<int64_t>(kStep, cols - c0);
    const __mmask16 m0 = n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
    const __mmask16 m1 = n >= 32   ? __mmask16(0xffff)
                         : n <= 16 ? __mmask16(0)
                                   : __mmask16((1u << (n - 16)) - 1);
    if (type == GgmlType::BF16) {
      const auto* p = reinterpret_cast<const uint16_t*>(src) + c0;
      const __mmask32 mk = n >= 32 ? ~__mmask32(0) : __mmask32((1u << n) - 1);
      emit(s, _mm512_maskz_loadu_epi16(mk, p));
      continue;
    }
    __m512 f0, f1;
    if (type == GgmlType::F16) {
      const auto* p = reinterpret_cast<const uint16_t*>(src) + c0;
      f0 = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m0, p));
      f1 = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m1, p + 16));
    } else {
      const auto* p = reinterpret_cast<const float*>(src) + c0;
      f0 = _mm512_maskz_loadu_ps(m0, p);
      f1 = _mm512_maskz_loadu_ps(m1, p + 16);
    }
    emit(s, to_bf16(f0, f1));
  }
}

bool amx_supports(GgmlType t) {
  switch (t) {
    case GgmlType::Q4_0:
    case GgmlType::Q4_1:
    case GgmlType::Q5_0:
    case GgmlType::Q5_1:
    case GgmlType::Q8_0:
    case GgmlType::IQ4_NL:
    case GgmlType::Q2_K:
    case GgmlType::Q3_K:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
    case GgmlType::Q6_K:
    case GgmlType::BF16:
    // The i-quant, ternary and FP4 formats: decoded per call like the formats above (measured
    // against their AVX-512 panels in docs/formats.md).
    case GgmlType::IQ1_S:
    case GgmlType::IQ1_M:
    case GgmlType::IQ2_XXS:
    case GgmlType::IQ2_XS:
    case GgmlType::IQ2_S:
    case GgmlType::IQ3_XXS:
    case GgmlType::IQ3_S:
    case GgmlType::IQ4_XS:
    case GgmlType::TQ1_0:
    case GgmlType::TQ2_0:
    case GgmlType::MXFP4:
    case GgmlType::NVFP4:
      return true;
    default:
      // F32 and F16 weights keep exact fp32 products (the AVX-512 kernels): bf16 would drop 16 or 3
      // bits of every weight, a change users of those formats did not ask for.
      return false;
  }
}

// Decodes steps [s0, s1) of weight row src into dst (64 bytes per step).
template <class Emit>
void decode_row(GgmlType type, const uint8_t* src, int64_t cols, int64_t s0, int64_t s1, Emit&& emit) {
  switch (type) {
    case GgmlType::Q4_0:
      return decode_q8a_rows<TQ4_0>(src, s0, s1, emit);
    case GgmlType::Q4_1:
      return decode_q8a_rows<TQ4_1>(src, s0, s1, emit);
    case GgmlType::Q5_0:
      return decode_q8a_rows<TQ5_0>(src, s0, s1, emit);
    case GgmlType::Q5_1:
      return decode_q8a_rows<TQ5_1>(src, s0, s1, emit);
    case GgmlType::Q8_0:
      return decode_q8a_rows<TQ8_0>(src, s0, s1, emit);
    case GgmlType::IQ4_NL:
      return decode_q8a_rows<TIq4Nl>(src, s0, s1, emit);
    case GgmlType::Q2_K:
      return decode_k_rows<KQ2>(src, s0, s1, emit);
    case GgmlType::Q3_K:
      return decode_k_rows<KQ3>(src, s0, s1, emit);
    case GgmlType::Q4_K:
      return decode_k_rows<KQ4>(src, s0, s1, emit);
    case GgmlType::Q5_K:
      return decode_k_rows<KQ5>(src, s0, s1, emit);
    case GgmlType::Q6_K:
      return decode_k_rows<KQ6>(src, s0, s1, emit);
    case GgmlType::IQ1_S:
      return decode_iq_rows<FIq1S>(src, s0, s1, emit);
    case GgmlType::IQ1_M:
      return decode_iq_rows<FIq1M>(src, s0, s1, emit);
    case GgmlType::IQ2_XXS:
      return decode_iq_rows<FIq2Xxs>(src, s0, s1, emit);
    case GgmlType::IQ2_XS:
      return decode_iq_rows<FIq2Xs>(src, s0, s1, emit);
    case GgmlType::IQ2_S:
      return decode_iq_rows<FIq2S>(src, s0, s1, emit);
    case GgmlType::IQ3_XXS:
      return decode_iq_rows<FIq3Xxs>(src, s0, s1, emit);
    case GgmlType::IQ3_S:
      return decode_iq_rows<FIq3S>(src, s0, s1, emit);
    case GgmlType::IQ4_XS:
      return decode_iq_rows<FIq4Xs>(src, s0, s1, emit);
    case GgmlType::TQ1_0:
      return decode_iq_rows<FTq1>(src, s0, s1, emit);
    case GgmlType::TQ2_0:
      return decode_iq_rows<FTq2>(src, s0, s1, emit);
    case GgmlType::MXFP4:
      return decode_q8a_rows<TMxfp4>(src, s0, s1, emit);
    case GgmlType::NVFP4:
      return decode_nvfp4_rows(src, s0, s1, emit);
    default:
      return decode_float_rows(type, src, cols, s0, s1, emit);
  }
}

// ---- B tiles (weights) ----

// B tile row p of a step holds, in dword n, the bf16 pair (w[n][2p], w[n][2p + 1]).
inline __m512i bf16_pairs(__m512 lo, __m512 hi) {
  const __m512i l = _mm512_cvtepu16_epi32(reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(lo)));
  const __m512i h = _mm512_cvtepu16_epi32(reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(hi)));
  return _mm512_or_si512(l, _mm512_slli_epi32(h, 16));
}

// Repacked group g: the B tiles of steps [s0, s1) into bt (tile per step, 1 KiB each).
template <class P>
void btiles_packed(const PackedMatrix& pm, int64_t g, int64_t s0, int64_t s1, uint8_t* bt) {
  const uint8_t* gs = pm.data + size_t(g) * pm.group_bytes;
  const uint8_t* gq = gs + pm.q_offset;
  const int64_t sbs = pm.sb_values / kStep;  // steps per super-block
  for (int64_t sb = s0 / sbs; sb * sbs < s1; ++sb) {
    P::unpack(gs + size_t(sb) * pm.s_bytes, gq + size_t(sb) * pm.q_bytes, 0,
              [&](int sub, const __m512i* u, int nu, __m512 a, __m512 b) {
                const int64_t k0 = sb * pm.sb_values + int64_t(sub) * P::kSub;
                const int64_t step = k0 / kStep;
                if (step < s0 || step >= s1) return;
                auto* row =
                    reinterpret_cast<__m512i*>(bt + size_t(step - s0) * kTileBytes) + (k0 % kStep) / 2;
                const __m512i ff = _mm512_set1_epi32(0xff);
                for (int gi = 0; gi < nu; ++gi) {
                  __m512 f[4];
                  for (int i = 0; i < 4; ++i) {
                    const __m512i v = _mm512_and_si512(_mm512_srli_epi32(u[gi], unsigned(8 * i)), ff);
                    f[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), a, b);
                  }
                  _mm512_store_si512(row + 2 * gi, bf16_pairs(f[0], f[1]));
                  _mm512_store_si512(row + 2 * gi + 1, bf16_pairs(f[2], f[3]));
                }
              });
  }
}

using BTilesFn = void (*)(const PackedMatrix&, int64_t, int64_t, int64_t, uint8_t*);

BTilesFn btiles_fn(GgmlType t) {
  switch (t) {
    case GgmlType::Q4_0:
      return &btiles_packed<packed::PQ4_0>;
    case GgmlType::Q4_1:
      return &btiles_packed<packed::PQ4_1>;
    case GgmlType::Q8_0:
      return &btiles_packed<packed::PQ8_0>;
    case GgmlType::Q4_K:
      return &btiles_packed<packed::PQ45_K<false>>;
    case GgmlType::Q5_K:
      return &btiles_packed<packed::PQ45_K<true>>;
    case GgmlType::Q6_K:
      return &btiles_packed<packed::PQ6_K>;
    case GgmlType::IQ4_XS:
      return &btiles_packed<packed::PIQ4_XS>;
    case GgmlType::IQ4_NL:
      return &btiles_packed<packed::PIQ4_NL>;
    case GgmlType::MXFP4:
      return &btiles_packed<packed::PMXFP4>;
    case GgmlType::NVFP4:
      return &btiles_packed<packed::PNVFP4>;
    default:
      return nullptr;
  }
}

// GGUF rows [r0, r0 + 16) (rows past `rows` are zero): decode each row's steps to bf16, then
// transpose every 16 x 16 block of pairs.
void btiles_rows(const WeightView& w, int64_t r0, int64_t s0, int64_t s1, uint8_t* bt, uint8_t* tmp) {
  const int64_t ns = s1 - s0;
  for (int n = 0; n < 16; ++n) {
    uint8_t* rowbase = tmp + size_t(n) * 64;  // [step][16 rows][64 bytes]
    if (r0 + n >= w.rows) {
      for (int64_t s = 0; s < ns; ++s)
        _mm512_store_si512(rowbase + size_t(s) * kTileBytes, _mm512_setzero_si512());
      continue;
    }
    const uint8_t* src = static_cast<const uint8_t*>(w.data) + size_t(r0 + n) * w.row_bytes;
    decode_row(w.type, src, w.cols, s0, s1,
               [&](int64_t s, __m512i v) { _mm512_store_si512(rowbase + size_t(s - s0) * kTileBytes, v); });
  }
  for (int64_t s = 0; s < ns; ++s) {
    __m512i r[16];
    for (int n = 0; n < 16; ++n) r[n] = _mm512_load_si512(tmp + size_t(s) * kTileBytes + 64 * size_t(n));
    transpose16x16(r);
    for (int p = 0; p < 16; ++p) _mm512_store_si512(bt + size_t(s) * kTileBytes + 64 * size_t(p), r[p]);
  }
}

struct Scratch {
  AlignedBuf b, acc, tmp;
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

struct Job {
  const WeightView* w;
  const PackedMatrix* pm;  // repacked source, or nullptr: GGUF rows
  BTilesFn btiles;
  int64_t m, m_pad, n_steps, steps_per_chunk, panel_rows, n_panels;
  const uint8_t* xa;  // activations, bf16: [token tile][step][16 tokens][32]
  float* y;
};

// One panel of weight rows [r0, r0 + rows): all k, all tokens.
void run_panel(const Job& j, int64_t r0) {
  const WeightView& w = *j.w;
  const int64_t rows = std::min(j.panel_rows, w.rows - r0);
  const int64_t ngroups = (rows + kTileRows - 1) / kTileRows;
  const int64_t ttiles = j.m_pad / kTileRows;
  const int64_t sb = j.steps_per_chunk;
  const int64_t ld = ngroups * kTileRows;  // acc row length
  Scratch& sc = scratch();
  uint8_t* bt = sc.b.get(size_t(ngroups) * size_t(sb) * kTileBytes);  // [group][step] tiles
  auto* acc = reinterpret_cast<float*>(sc.acc.get(size_t(j.m_pad) * size_t(ld) * sizeof(float)));
  uint8_t* tmp = j.pm == nullptr ? sc.tmp.get(size_t(sb) * kTileBytes) : nullptr;
  const size_t ldacc = size_t(ld) * sizeof(float);
  ensure_tile_config();

  for (int64_t c0 = 0; c0 < j.n_steps; c0 += sb) {
    const int64_t c1 = std::min(j.n_steps, c0 + sb);
    const int64_t ns = c1 - c0;
    for (int64_t g = 0; g < ngroups; ++g) {
      uint8_t* dst = bt + size_t(g) * size_t(sb) * kTileBytes;
      if (j.pm != nullptr) {
        j.btiles(*j.pm, r0 / kTileRows + g, c0, c1, dst);
      } else {
        btiles_rows(w, r0 + g * kTileRows, c0, c1, dst, tmp);
      }
    }
    for (int64_t gp = 0; gp < ngroups; gp += 2) {
      const bool two_g = gp + 1 < ngroups;
      const uint8_t* b0 = bt + size_t(gp) * size_t(sb) * kTileBytes;
      const uint8_t* b1 = b0 + size_t(sb) * kTileBytes;
      for (int64_t tp = 0; tp < ttiles; tp += 2) {
        const bool two_t = tp + 1 < ttiles;
        const uint8_t* a0 = j.xa + (size_t(tp) * size_t(j.n_steps) + size_t(c0)) * kTileBytes;
        const uint8_t* a1 = a0 + size_t(j.n_steps) * kTileBytes;
        float* c00 = acc + size_t(tp * kTileRows) * size_t(ld) + size_t(gp * kTileRows);
        float* c10 = c00 + 16 * size_t(ld);
        if (c0 == 0) {
          _tile_zero(0);
          _tile_zero(1);
          _tile_zero(2);
          _tile_zero(3);
        } else {
          _tile_loadd(0, c00, ldacc);
          if (two_g) _tile_loadd(1, c00 + 16, ldacc);
          if (two_t) {
            _tile_loadd(2, c10, ldacc);
            if (two_g) _tile_loadd(3, c10 + 16, ldacc);
          }
        }
        if (two_t && two_g) {
          for (int64_t s = 0; s < ns; ++s) {
            _tile_loadd(4, a0 + size_t(s) * kTileBytes, 64);
            _tile_loadd(5, a1 + size_t(s) * kTileBytes, 64);
            _tile_loadd(6, b0 + size_t(s) * kTileBytes, 64);
            _tile_loadd(7, b1 + size_t(s) * kTileBytes, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
          }
        } else {
          for (int64_t s = 0; s < ns; ++s) {
            _tile_loadd(4, a0 + size_t(s) * kTileBytes, 64);
            _tile_loadd(6, b0 + size_t(s) * kTileBytes, 64);
            _tile_dpbf16ps(0, 4, 6);
            if (two_g) {
              _tile_loadd(7, b1 + size_t(s) * kTileBytes, 64);
              _tile_dpbf16ps(1, 4, 7);
            }
            if (two_t) {
              _tile_loadd(5, a1 + size_t(s) * kTileBytes, 64);
              _tile_dpbf16ps(2, 5, 6);
            }
          }
        }
        _tile_stored(0, c00, ldacc);
        if (two_g) _tile_stored(1, c00 + 16, ldacc);
        if (two_t) {
          _tile_stored(2, c10, ldacc);
          if (two_g) _tile_stored(3, c10 + 16, ldacc);
        }
      }
    }
  }
  // acc[t][n] -> y[t][r0 + n]
  for (int64_t t = 0; t < j.m; ++t)
    std::memcpy(j.y + size_t(t) * size_t(w.rows) + size_t(r0), acc + size_t(t) * size_t(ld),
                size_t(rows) * 4);
}

// Activation rows [tt * 16, tt * 16 + 16) (rows past m are zero) to bf16 A tiles.
void pack_activations(const float* x, int64_t m, int64_t cols, int64_t n_steps, int64_t tt, uint8_t* xa) {
  for (int64_t s = 0; s < n_steps; ++s) {
    const int64_t c0 = s * kStep;
    const int64_t n = std::min<int64_t>(kStep, cols - c0);
    const __mmask16 m0 = n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
    const __mmask16 m1 = n >= 32   ? __mmask16(0xffff)
                         : n <= 16 ? __mmask16(0)
                                   : __mmask16((1u << (n - 16)) - 1);
    uint8_t* dst = xa + (size_t(tt) * size_t(n_steps) + size_t(s)) * kTileBytes;
    for (int i = 0; i < 16; ++i) {
      const int64_t t = tt * 16 + i;
      __m512i v = _mm512_setzero_si512();
      if (t < m) {
        const float* p = x + size_t(t) * size_t(cols) + size_t(c0);
        v = to_bf16(_mm512_maskz_loadu_ps(m0, p), _mm512_maskz_loadu_ps(m1, p + 16));
      }
      _mm512_store_si512(dst + 64 * i, v);
    }
  }
}

AlignedBuf& shared_act_buf() {
  // Owned by the calling thread (the one that calls matmul); workers only read it.
  thread_local AlignedBuf b;
  return b;
}

bool tile_matmul(const WeightView& w, const float* x, int64_t m, float* y, ThreadPool& pool) {
  Job j{};
  j.w = &w;
  // A Q5_K copy with fifth-bit planes was made for the AVX2 kernels (before the level changed).
  if (w.packed != nullptr && w.packed->source == w.data && !w.packed->fifth_planes &&
      (j.btiles = btiles_fn(w.packed->type)) != nullptr) {
    j.pm = w.packed;
  } else if (!amx_supports(w.type)) {
    return false;
  }
  j.m = m;
  j.m_pad = (m + 31) / 32 * 32;
  j.n_steps = (w.cols + kStep - 1) / kStep;
  j.y = y;
  // Chunks of whole super-blocks (K-quants: 8 steps).
  const int64_t bs_steps =
      std::max<int64_t>(1, (j.pm ? j.pm->sb_values : type_traits(w.type).block_size) / kStep);
  j.steps_per_chunk = std::max<int64_t>(bs_steps, kChunkK / kStep / bs_steps * bs_steps);
  // Taller panels reuse each activation tile more; keep enough panels to share among threads.
  const int nth = pool.size();
  j.panel_rows = 128;
  while (j.panel_rows > 32 && (w.rows + j.panel_rows - 1) / j.panel_rows < 4 * nth) j.panel_rows /= 2;
  j.n_panels = (w.rows + j.panel_rows - 1) / j.panel_rows;

  const int64_t ttiles = j.m_pad / kTileRows;
  uint8_t* xa = shared_act_buf().get(size_t(ttiles) * size_t(j.n_steps) * kTileBytes);
  j.xa = xa;
  const int64_t cols = w.cols, n_steps = j.n_steps;
  pool.parallel_for(ttiles, 1, [x, m, cols, n_steps, xa](int64_t b, int64_t e, int) {
    for (int64_t tt = b; tt < e; ++tt) pack_activations(x, m, cols, n_steps, tt, xa);
  });
  const Job* jp = &j;
  pool.parallel_for(j.n_panels, 1, [jp](int64_t b, int64_t e, int) {
    for (int64_t p = b; p < e; ++p) run_panel(*jp, p * jp->panel_rows);
  });
  return true;
}

}  // namespace
}  // namespace qleap::kern::amx

namespace qleap::kern {

const IsaKernels* kernels_amx() {
  static const IsaKernels k = [] {
    IsaKernels r = *amx::kernels();
    r.tile_matmul = &amx::tile_matmul;
    return r;
  }();
  return &k;
}

}  // namespace qleap::kern
