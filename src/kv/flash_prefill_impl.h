// The tiled prefill attention kernel, compiled once per ISA: flash_prefill_avx2.cpp (8 floats per
// vector) and flash_prefill_avx512.cpp (16) include it after defining QLEAP_FLASH_NS and
// QLEAP_FLASH_W. Internal linkage except item().
//
// One work item is a block of query tokens of one kv head: R = tokens x group query rows. Rows run
// along the vector lanes (Q and the output are held transposed, [dim][row]), keys along the loop:
//   S[j][rows] = sum_d K[j][d] * Q^T[d][rows]     (K[j][d] broadcast, a row vector of Q^T)
//   O^T[d][rows] += sum_j V[j][d] * P[j][rows]    (V[j][d] broadcast)
// so the online softmax (max, exp, sum per row) is plain element-wise vector work, and K and V are
// only converted to floats once per key block, never transposed.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "backend/cpu/ops.h"
#include "core/fp16.h"
#include "kv/flash_prefill.h"

#if !defined(QLEAP_FLASH_NS) || !defined(QLEAP_FLASH_W)
#error "define QLEAP_FLASH_NS and QLEAP_FLASH_W before including flash_prefill_impl.h"
#endif
#if QLEAP_FLASH_W == 16
#include "kv/flash_exp16.h"
#endif

namespace qleap::flash_detail::QLEAP_FLASH_NS {
namespace {

constexpr int W = QLEAP_FLASH_W;
constexpr int kKeys = 64;  // keys per block
#if QLEAP_FLASH_W == 16
using VF = __m512;
constexpr int kRowVecs = 4;  // row vectors per register tile
constexpr int kKeyTile = 4;  // keys (QK) or dims (PV) per register tile
inline VF vload(const float* p) {
  return _mm512_load_ps(p);
}
inline void vstore(float* p, VF v) {
  _mm512_store_ps(p, v);
}
inline VF vset1(float x) {
  return _mm512_set1_ps(x);
}
inline VF vzero() {
  return _mm512_setzero_ps();
}
inline VF vfma(VF a, VF b, VF c) {
  return _mm512_fmadd_ps(a, b, c);
}
inline VF vmul(VF a, VF b) {
  return _mm512_mul_ps(a, b);
}
inline VF vadd(VF a, VF b) {
  return _mm512_add_ps(a, b);
}
inline VF vsub(VF a, VF b) {
  return _mm512_sub_ps(a, b);
}
inline VF vmax(VF a, VF b) {
  return _mm512_max_ps(a, b);
}
// Lanes where pos < key get -inf.
inline VF vmask_causal(VF s, VF pos, float key) {
  const __mmask16 k = _mm512_cmp_ps_mask(pos, _mm512_set1_ps(key), _CMP_LT_OQ);
  return _mm512_mask_mov_ps(s, k, _mm512_set1_ps(-std::numeric_limits<float>::infinity()));
}
// pos < x ? b : a, per lane.
inline VF vsel_lt(VF pos, float x, VF a, VF b) {
  return _mm512_mask_mov_ps(a, _mm512_cmp_ps_mask(pos, _mm512_set1_ps(x), _CMP_LT_OQ), b);
}
inline void cvt_row_f16(const uint16_t* src, float* dst, int n) {
  int i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
  for (; i < n; ++i) dst[i] = fp16_to_fp32(src[i]);
}
inline VF vexp(VF x) {
  return exp16(x);
}
#else
using VF = __m256;
constexpr int kRowVecs = 2;
constexpr int kKeyTile = 4;
inline VF vload(const float* p) {
  return _mm256_load_ps(p);
}
inline void vstore(float* p, VF v) {
  _mm256_store_ps(p, v);
}
inline VF vset1(float x) {
  return _mm256_set1_ps(x);
}
inline VF vzero() {
  return _mm256_setzero_ps();
}
inline VF vfma(VF a, VF b, VF c) {
  return _mm256_fmadd_ps(a, b, c);
}
inline VF vmul(VF a, VF b) {
  return _mm256_mul_ps(a, b);
}
inline VF vadd(VF a, VF b) {
  return _mm256_add_ps(a, b);
}
inline VF vsub(VF a, VF b) {
  return _mm256_sub_ps(a, b);
}
inline VF vmax(VF a, VF b) {
  return _mm256_max_ps(a, b);
}
inline VF vmask_causal(VF s, VF pos, float key) {
  const VF lt = _mm256_cmp_ps(pos, _mm256_set1_ps(key), _CMP_LT_OQ);
  return _mm256_blendv_ps(s, _mm256_set1_ps(-std::numeric_limits<float>::infinity()), lt);
}
inline VF vsel_lt(VF pos, float x, VF a, VF b) {
  return _mm256_blendv_ps(a, b, _mm256_cmp_ps(pos, _mm256_set1_ps(x), _CMP_LT_OQ));
}
inline void cvt_row_f16(const uint16_t* src, float* dst, int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  for (; i < n; ++i) dst[i] = fp16_to_fp32(src[i]);
}
inline VF vexp(VF x) {
  const VF tiny = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3365478515625f), _CMP_LT_OQ);
  x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f)), _mm256_set1_ps(-87.3365478515625f));
  const VF fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  VF y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(tiny, _mm256_mul_ps(y, _mm256_castsi256_ps(e)));
}
#endif

// Per-thread scratch, 64-byte aligned floats.
struct Scratch {
  std::vector<float> buf;
  float* get(size_t n) {
    if (buf.size() < n + 16) buf.resize(n + 16);
    auto p = reinterpret_cast<uintptr_t>(buf.data());
    return reinterpret_cast<float*>((p + 63) & ~uintptr_t(63));
  }
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

// S[j][rv .. rv + RC) for keys j in [0, nk) (nk a multiple of kKeyTile): K rows (kf, hd floats each)
// against Q^T (qt, rp floats per dim).
template <int RC>
void scores(const float* kf, int hd, int nk, const float* qt, int rp, int rv, float* st) {
  for (int j = 0; j < nk; j += kKeyTile) {
    VF acc[kKeyTile][RC];
    for (int a = 0; a < kKeyTile; ++a)
      for (int c = 0; c < RC; ++c) acc[a][c] = vzero();
    const float* kr = kf + size_t(j) * hd;
    for (int d = 0; d < hd; ++d) {
      VF qv[RC];
      for (int c = 0; c < RC; ++c) qv[c] = vload(qt + size_t(d) * rp + (rv + c) * W);
      for (int a = 0; a < kKeyTile; ++a) {
        const VF kb = vset1(kr[size_t(a) * hd + d]);
        for (int c = 0; c < RC; ++c) acc[a][c] = vfma(kb, qv[c], acc[a][c]);
      }
    }
    for (int a = 0; a < kKeyTile; ++a)
      for (int c = 0; c < RC; ++c) vstore(st + size_t(j + a) * rp + (rv + c) * W, acc[a][c]);
  }
}

// O^T[d][rv .. rv + RC) = O^T * corr + sum_j V[j][d] * P[j][rows], dims in tiles of kKeyTile.
template <int RC>
void accumulate(const float* vf, int hd, int nk, const float* pt, int rp, int rv, const float* corr,
                float* ot) {
  VF cv[RC];
  for (int c = 0; c < RC; ++c) cv[c] = vload(corr + (rv + c) * W);
  for (int d = 0; d < hd; d += kKeyTile) {
    VF acc[kKeyTile][RC];
    for (int a = 0; a < kKeyTile; ++a)
      for (int c = 0; c < RC; ++c) acc[a][c] = vmul(vload(ot + size_t(d + a) * rp + (rv + c) * W), cv[c]);
    for (int j = 0; j < nk; ++j) {
      VF pv[RC];
      for (int c = 0; c < RC; ++c) pv[c] = vload(pt + size_t(j) * rp + (rv + c) * W);
      const float* vr = vf + size_t(j) * hd + d;
      for (int a = 0; a < kKeyTile; ++a) {
        const VF vb = vset1(vr[a]);
        for (int c = 0; c < RC; ++c) acc[a][c] = vfma(vb, pv[c], acc[a][c]);
      }
    }
    for (int a = 0; a < kKeyTile; ++a)
      for (int c = 0; c < RC; ++c) vstore(ot + size_t(d + a) * rp + (rv + c) * W, acc[a][c]);
  }
}

template <class F>
void for_row_chunks(int rv_total, F&& f) {
  for (int rv = 0; rv < rv_total; rv += kRowVecs) {
    const int rc = std::min(kRowVecs, rv_total - rv);
    f(rv, rc);
  }
}

template <int RC>
void scores_rc(int rc, const float* kf, int hd, int nk, const float* qt, int rp, int rv, float* st) {
  if constexpr (RC > 1) {
    if (rc < RC) return scores_rc<RC - 1>(rc, kf, hd, nk, qt, rp, rv, st);
  }
  scores<RC>(kf, hd, nk, qt, rp, rv, st);
}

template <int RC>
void accumulate_rc(int rc, const float* vf, int hd, int nk, const float* pt, int rp, int rv,
                   const float* corr, float* ot) {
  if constexpr (RC > 1) {
    if (rc < RC) return accumulate_rc<RC - 1>(rc, vf, hd, nk, pt, rp, rv, corr, ot);
  }
  accumulate<RC>(vf, hd, nk, pt, rp, rv, corr, ot);
}

// One work item: rows of keys and values come from a KvRowsView (kv) or from a source (src, then kv is
// unused), converted to floats once per block of kKeys keys.
template <class T>
void run_item(const FlashShape& s, const KvRowsView<T>* kv, const FlashSource* src, int q_block, int qb,
              int g, const float* q, float* out) {
  const int hd = s.head_dim, group = s.n_heads / s.n_kv_heads;
  const int t0 = qb * q_block, nt = std::min(q_block, s.n_q - t0);
  const int rows = nt * group, rvn = (rows + W - 1) / W, rp = rvn * W;
  const int kend = s.pos0 + t0 + nt;  // keys [jlo, kend)
  const int pmin = s.pos0 + t0;       // position of the block's first query
  const int pmax = kend - 1;
  const int win = src != nullptr ? s.window : 0;
  const int jlo = win > 0 ? std::max(0, pmin - win + 1) : 0;
  const int band = src != nullptr ? src->band : 0;

  const size_t tile = size_t(kKeys) * hd, smat = size_t(kKeys) * rp;
  // The band's buffers are allocated whether used or not (the scratch grows once per thread).
  float* base = scratch().get(size_t(hd) * rp * 2 + smat * 3 + tile * 4 + size_t(rp) * 5);
  float* qt = base;                  // [hd][rp]
  float* ot = qt + size_t(hd) * rp;  // [hd][rp]
  float* st = ot + size_t(hd) * rp;  // [kKeys][rp]: scores, then probabilities
  float* kf = st + smat;             // [kKeys][hd]
  float* vf = kf + tile;             // [kKeys][hd]
  float* mrow = vf + tile;           // running max per row
  float* lrow = mrow + rp;           // running sum per row
  float* corr = lrow + rp;           // rescale factor of this block
  float* posr = corr + rp;           // query position per row (padding: never masked)
  float* ones = posr + rp;           // 1 per row: the exact band's values add without a rescale
  float* ke = ones + rp;             // band: exact key rows [kKeys][hd]
  float* ve = ke + tile;             // band: exact value rows
  float* se = ve + tile;             // band: exact scores, then their probabilities [kKeys][rp]
  float* em = se + smat;             // band: 1 where a row reads the exact row, else 0

  for (int r = 0; r < rp; ++r) {
    mrow[r] = -std::numeric_limits<float>::infinity();
    lrow[r] = 0.0f;
    ones[r] = 1.0f;
    posr[r] = r < rows ? float(s.pos0 + t0 + r / group) : 3.0e38f;
  }
  std::fill(ot, ot + size_t(hd) * rp, 0.0f);
  for (int r = 0; r < rp; ++r) {
    if (r >= rows) {
      for (int d = 0; d < hd; ++d) qt[size_t(d) * rp + r] = 0.0f;
      continue;
    }
    const float* qr = q + (size_t(t0 + r / group) * s.n_heads + size_t(g) * group + r % group) * hd;
    for (int d = 0; d < hd; ++d) qt[size_t(d) * rp + r] = qr[d] * s.scale;
  }

  // Zero key / value rows past nk up to a whole key tile (zero scores, masked; zero values).
  auto pad = [&](float* k, float* v, int nk, int nkp) {
    std::fill(k + size_t(nk) * hd, k + size_t(nkp) * hd, 0.0f);
    std::fill(v + size_t(nk) * hd, v + size_t(nkp) * hd, 0.0f);
  };
  for (int j0 = jlo; j0 < kend; j0 += kKeys) {
    const int nk = std::min(kKeys, kend - j0);
    const int nkp = (nk + kKeyTile - 1) / kKeyTile * kKeyTile;
    // With an exact band: keys [0, nb) are read from the rows by some row of the block, keys [ne, nkp)
    // from the exact rows (both in whole key tiles; in between, each row picks per key). A key that
    // every row reads exactly (the band of the block's last row starts at or before it) is neither
    // decoded nor scored from the rows.
    int nb = nkp, ne = nkp;
    if (band > 0) {
      const int64_t lo =
          std::max<int64_t>(src->band_lo, pmin + 1 - band);  // first key some row reads exactly
      const int64_t all = std::max<int64_t>(src->band_lo, pmax + 1 - band);  // from here every row does
      const int ex_lo = int(std::clamp<int64_t>(lo - j0, 0, nk));
      const int ex_hi = int(std::clamp<int64_t>(src->band_hi - j0, 0, nk));
      if (ex_lo < ex_hi) {
        ne = ex_lo / kKeyTile * kKeyTile;
        // Rows past the held ones (ex_hi < nk) are read from the records again: keep them all.
        if (ex_hi == nk)
          nb = std::min(nkp,
                        (int(std::clamp<int64_t>(all - j0, ex_lo, nk)) + kKeyTile - 1) / kKeyTile * kKeyTile);
      }
    }
    const bool in_band = src != nullptr && ne < nkp;
    const int nbk = std::min(nb, nk);  // rows to fill
    if (src != nullptr) {
      if (nbk > 0) src->rows(g, j0, nbk, kf, vf);
    } else {
      const T* kh = kv->k + size_t(g) * kv->head_stride;
      const T* vh = kv->v + size_t(g) * kv->head_stride;
      for (int j = 0; j < nk; ++j) {
        float* kd = kf + size_t(j) * hd;
        float* vd = vf + size_t(j) * hd;
        const size_t off = size_t(j0 + j) * kv->pos_stride;
        if constexpr (sizeof(T) == 2) {
          cvt_row_f16(kh + off, kd, hd);
          cvt_row_f16(vh + off, vd, hd);
        } else {
          std::memcpy(kd, kh + off, size_t(hd) * sizeof(float));
          std::memcpy(vd, vh + off, size_t(hd) * sizeof(float));
        }
      }
    }
    pad(kf, vf, nbk, nb);
    if (nb > 0)
      for_row_chunks(rvn, [&](int rv, int rc) { scores_rc<kRowVecs>(rc, kf, hd, nb, qt, rp, rv, st); });
    if (in_band) {
      const size_t eo = size_t(ne) * hd;
      src->exact_rows(g, j0 + ne, nk - ne, ke + eo, ve + eo);
      pad(ke, ve, nk, nkp);
      const size_t so = size_t(ne) * rp;
      for_row_chunks(
          rvn, [&](int rv, int rc) { scores_rc<kRowVecs>(rc, ke + eo, hd, nkp - ne, qt, rp, rv, se + so); });
      for (int j = ne; j < nkp; ++j) {
        const int64_t key = j0 + j;
        const bool held = j < nk && key >= src->band_lo && key < src->band_hi;
        for (int rv = 0; rv < rvn; ++rv) {
          const size_t o = size_t(j) * rp + size_t(rv) * W;
          // Rows with p < key + band read the exact row. Keys past nb have no row scores: every row
          // of the block reads them exactly, and the zero padding is masked below.
          const VF e =
              held ? vsel_lt(vload(posr + rv * W), float(key + band), vzero(), vset1(1.0f)) : vzero();
          vstore(em + o, e);
          vstore(st + o, j < nb ? vsel_lt(e, 0.5f, vload(se + o), vload(st + o)) : vload(se + o));
        }
      }
    }
    // Keys past a row's own position (the block's diagonal, and the zero padding) get -inf, and so do
    // keys that left a row's sliding window.
    const bool diag = j0 + nkp - 1 > pmin;
    const bool old = win > 0 && j0 < pmax - win + 1;
    for (int rv = 0; rv < rvn; ++rv) {
      const VF pos = vload(posr + rv * W);
      VF bmax = vset1(-std::numeric_limits<float>::infinity());
      for (int j = 0; j < nkp; ++j) {
        float* sp = st + size_t(j) * rp + rv * W;
        VF sv = vload(sp);
        if (diag || old) {
          if (diag) sv = vmask_causal(sv, pos, float(j0 + j));
          if (old) sv = vsel_lt(pos, float(j0 + j + win), vset1(-std::numeric_limits<float>::infinity()), sv);
          vstore(sp, sv);
        }
        bmax = vmax(bmax, sv);
      }
      const VF mold = vload(mrow + rv * W);
      // A row that sees no key of this block yet (a sliding window's first blocks) keeps a finite
      // maximum, so that exp(-inf - m) is 0, never NaN; every row sees its own position later.
      const VF mnew = vmax(vmax(mold, bmax), vset1(-std::numeric_limits<float>::max()));
      const VF c = vexp(vsub(mold, mnew));
      VF sum = vzero();
      for (int j = 0; j < nkp; ++j) {
        float* sp = st + size_t(j) * rp + rv * W;
        const VF p = vexp(vsub(vload(sp), mnew));
        if (in_band && j >= ne) {
          // Split the weight: the exact rows' share to se, the records' to st (1 and 0 multiply exactly).
          float* ep = se + size_t(j) * rp + rv * W;
          const VF pe = vmul(p, vload(em + size_t(j) * rp + rv * W));
          vstore(ep, pe);
          vstore(sp, vsub(p, pe));
        } else {
          vstore(sp, p);
        }
        sum = vadd(sum, p);
      }
      vstore(lrow + rv * W, vfma(vload(lrow + rv * W), c, sum));
      vstore(mrow + rv * W, mnew);
      vstore(corr + rv * W, c);
    }
    // Rescaled once: the rows' pass applies corr (over no keys when nb is 0), the exact pass adds on.
    for_row_chunks(rvn,
                   [&](int rv, int rc) { accumulate_rc<kRowVecs>(rc, vf, hd, nb, st, rp, rv, corr, ot); });
    if (in_band)
      for_row_chunks(rvn, [&](int rv, int rc) {
        accumulate_rc<kRowVecs>(rc, ve + size_t(ne) * hd, hd, nkp - ne, se + size_t(ne) * rp, rp, rv, ones,
                                ot);
      });
  }
  for (int r = 0; r < rows; ++r) {
    const int t = t0 + r / group, h = g * group + r % group;
    float* orow = out + (size_t(t) * s.n_heads + size_t(h)) * hd;
    const float* sk = s.sinks == nullptr ? nullptr : s.sinks + size_t(t) * s.sinks_stride;
    const float inv = sk == nullptr ? 1.0f / lrow[r] : attn_out_factor(mrow[r], lrow[r], sk[h]);
    if (sk != nullptr && s.sink_share != nullptr)
      s.sink_share[size_t(t) * s.n_heads + size_t(h)] = 1.0f - lrow[r] * inv;
    for (int d = 0; d < hd; ++d) orow[d] = ot[size_t(d) * rp + r] * inv;
  }
}

void item(const FlashShape& s, const void* kv, bool f16, const FlashSource* src, int q_block, int qb, int g,
          const float* q, float* out) {
  if (src != nullptr) {
    run_item<float>(s, nullptr, src, q_block, qb, g, q, out);
  } else if (f16) {
    run_item(s, static_cast<const KvRowsView<uint16_t>*>(kv), nullptr, q_block, qb, g, q, out);
  } else {
    run_item(s, static_cast<const KvRowsView<float>*>(kv), nullptr, q_block, qb, g, q, out);
  }
}

}  // namespace
}  // namespace qleap::flash_detail::QLEAP_FLASH_NS
