// AMX build of the tiled prefill attention: the two products per key block, S = Q K^T and
// O += P V, on bf16 tiles with fp32 accumulation (TDPBF16PS); the online softmax between them in
// AVX-512. Keys and values are converted to tile layouts once per call for each kv head (every
// query block reads the same tiles); queries, scores and probabilities per work item.
//
// Precision: every operand is split into a bf16 high part and a bf16 low part (x = hi + lo, hi =
// bf16(x), lo = bf16(x - hi)) and each product is hi*hi + hi*lo + lo*hi. An f16 key or value (11
// significant bits) is exactly hi + lo; fp32 queries and probabilities keep 16 bits. The dropped
// lo*lo term is below 2^-16 relative, so scores and outputs stay within fp32 rounding noise of the
// f16 cache's own values (plain bf16, 8 bits, moved a tiny golden model's logits by 0.78). Three
// tile products instead of one: the tile units still do them several times faster than AVX-512 FMAs.
//
// Softmax rescaling is lazy: the running maximum of a row only moves (and the row's output and sum
// are rescaled) when a block's maximum exceeds it by more than kLazy; in between, probabilities
// exp(s - m) may exceed 1 by up to e^kLazy, which fp32 sums and the split products hold as well.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <new>

#include "backend/cpu/amx_tiles.h"
#include "backend/cpu/ops.h"
#include "kv/flash_exp16.h"
#include "kv/flash_prefill.h"

namespace qleap::flash_detail {
namespace {

constexpr int kTile = 1024;  // bytes: 16 rows x 64
constexpr int kKeys = 64;    // keys per block: 4 key tiles, 2 steps of 32 for P V
constexpr int kRows = 128;   // query rows (tokens x group) per work item
constexpr float kLazy = 8.0f;

using amx_tiles::AlignedBuf;
using amx_tiles::ensure_tile_config;
using amx_tiles::transpose16x16;

inline __m512 load16(const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline __m512 load16(const float* p) {
  return _mm512_loadu_ps(p);
}
// bf16 of 16 floats, and the residual x - float(bf16(x)).
inline __m256i bf16_round(__m512 x, __m512* rest) {
  const __m256i h = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(x));
  *rest = _mm512_sub_ps(x, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
  return h;
}
// 32 floats (a: elements 0-15, b: 16-31) as bf16 high parts and bf16 low parts.
inline void split_bf16(__m512 a, __m512 b, __m512i* hi, __m512i* lo) {
  __m512 ra, rb;
  const __m256i ha = bf16_round(a, &ra), hb = bf16_round(b, &rb);
  *hi = _mm512_inserti64x4(_mm512_castsi256_si512(ha), hb, 1);
  *lo = _mm512_inserti64x4(_mm512_castsi256_si512(reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(ra))),
                           reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(rb)), 1);
}
// 16 floats as bf16 in the low half of each dword, high and low parts.
inline void split_dwords(__m512 v, __m512i* hi, __m512i* lo) {
  __m512 r;
  *hi = _mm512_cvtepu16_epi32(bf16_round(v, &r));
  *lo = _mm512_cvtepu16_epi32(reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(r)));
}

struct Layout {
  int hd, steps_k, tiles_d;      // dims / 32 (S steps), dims / 16 (output tiles)
  int64_t key_tiles, key_steps;  // per kv head: ceil(n_keys / 16), ceil(n_keys / 32)
  size_t k_half, v_half;         // bytes of one head's K / V high-part tiles (the low parts follow)
  size_t k_head, v_head;         // bytes of one head's K / V tiles, both parts
};

// K tiles of kv head g, key tile kt, step s: row p holds, for key n of the tile, the dims pair
// (32 s + 2p, 32 s + 2p + 1); high parts, then at k_half the low parts in the same layout.
template <class T>
void build_k(const KvRowsView<T>& kv, int g, int64_t n_keys, const Layout& L, int64_t kt, uint8_t* kb) {
  for (int s = 0; s < L.steps_k; ++s) {
    __m512i r[16], rl[16];
    for (int n = 0; n < 16; ++n) {
      const int64_t j = kt * 16 + n;
      if (j >= n_keys) {
        r[n] = rl[n] = _mm512_setzero_si512();
        continue;
      }
      const T* p = kv.k + size_t(g) * kv.head_stride + size_t(j) * kv.pos_stride + size_t(32 * s);
      split_bf16(load16(p), load16(p + 16), &r[n], &rl[n]);
    }
    transpose16x16(r);
    transpose16x16(rl);
    uint8_t* dst = kb + (size_t(kt) * size_t(L.steps_k) + size_t(s)) * kTile;
    for (int p = 0; p < 16; ++p) {
      _mm512_store_si512(dst + 64 * p, r[p]);
      _mm512_store_si512(dst + L.k_half + 64 * p, rl[p]);
    }
  }
}

// V tiles of kv head g, key step ks (32 keys), dim tile dt: row p holds, for dim n of the tile,
// the keys pair (32 ks + 2p, 32 ks + 2p + 1); high parts, then at v_half the low parts.
template <class T>
void build_v(const KvRowsView<T>& kv, int g, int64_t n_keys, const Layout& L, int64_t ks, uint8_t* vb) {
  for (int dt = 0; dt < L.tiles_d; ++dt) {
    uint8_t* dst = vb + (size_t(ks) * size_t(L.tiles_d) + size_t(dt)) * kTile;
    for (int p = 0; p < 16; ++p) {
      const int64_t ja = ks * 32 + 2 * p, jb = ja + 1;
      const T* base = kv.v + size_t(g) * kv.head_stride + size_t(16 * dt);
      const __m512 a = ja < n_keys ? load16(base + size_t(ja) * kv.pos_stride) : _mm512_setzero_ps();
      const __m512 b = jb < n_keys ? load16(base + size_t(jb) * kv.pos_stride) : _mm512_setzero_ps();
      __m512i ah, al, bh, bl;
      split_dwords(a, &ah, &al);
      split_dwords(b, &bh, &bl);
      _mm512_store_si512(dst + 64 * p, _mm512_or_si512(ah, _mm512_slli_epi32(bh, 16)));
      _mm512_store_si512(dst + L.v_half + 64 * p, _mm512_or_si512(al, _mm512_slli_epi32(bl, 16)));
    }
  }
}

// Scores of key tile c (a literal: GCC's tile intrinsics are macros that paste the register number)
// += Q K^T over one 32-dim step, queries high/low already in tiles 4/6.
#define QLEAP_QK_TILE(c, kt, kstep, k_half)              \
  do {                                                   \
    _tile_loadd(5, (kt) + (c) * (kstep), 64);            \
    _tile_dpbf16ps(c, 4, 5);                             \
    _tile_dpbf16ps(c, 6, 5);                             \
    _tile_loadd(7, (kt) + (c) * (kstep) + (k_half), 64); \
    _tile_dpbf16ps(c, 4, 7);                             \
  } while (0)

struct Scratch {
  AlignedBuf qa, pa, s, o, misc;
};
Scratch& scratch() {
  thread_local Scratch sc;
  return sc;
}

void run_item(const FlashShape& s, const Layout& L, const uint8_t* kb, const uint8_t* vb, int q_block, int qb,
              int g, const float* q, float* out) {
  const int hd = s.head_dim, group = s.n_heads / s.n_kv_heads;
  const int t0 = qb * q_block, nt = std::min(q_block, s.n_q - t0);
  const int rows = nt * group, rtiles = (rows + 15) / 16, rp = rtiles * 16;
  const int kend = s.pos0 + t0 + nt;  // keys [0, kend)
  const int pmin = s.pos0 + t0;
  Scratch& sc = scratch();
  // High parts [rt][step] (queries) / [rt][key step] (probabilities), then the low parts.
  const size_t q_half = size_t(rtiles) * size_t(L.steps_k) * kTile, p_half = size_t(rtiles) * 2 * kTile;
  uint8_t* qa = sc.qa.get(2 * q_half);
  uint8_t* pa = sc.pa.get(2 * p_half);
  auto* sb = reinterpret_cast<float*>(sc.s.get(size_t(rp) * kKeys * 4));  // [row][key]
  auto* ob = reinterpret_cast<float*>(sc.o.get(size_t(rp) * size_t(hd) * 4));
  auto* mrow = reinterpret_cast<float*>(sc.misc.get(size_t(rp) * 3 * 4));
  float* lrow = mrow + rp;
  float* posr = lrow + rp;
  const float ninf = -std::numeric_limits<float>::infinity();
  ensure_tile_config();

  // Queries (scaled) as A tiles; padding rows are zero.
  const __m512 scale = _mm512_set1_ps(s.scale);
  for (int r = 0; r < rp; ++r) {
    mrow[r] = ninf;
    lrow[r] = 0.0f;
    posr[r] = float(s.pos0 + t0 + std::min(r, rows - 1) / group);
    const float* qr = q + (size_t(t0 + r / group) * s.n_heads + size_t(g) * group + r % group) * hd;
    for (int st = 0; st < L.steps_k; ++st) {
      __m512i hi = _mm512_setzero_si512(), lo = hi;
      if (r < rows)
        split_bf16(_mm512_mul_ps(_mm512_loadu_ps(qr + 32 * st), scale),
                   _mm512_mul_ps(_mm512_loadu_ps(qr + 32 * st + 16), scale), &hi, &lo);
      uint8_t* dst = qa + (size_t(r / 16) * size_t(L.steps_k) + size_t(st)) * kTile + 64 * size_t(r % 16);
      _mm512_store_si512(dst, hi);
      _mm512_store_si512(dst + q_half, lo);
    }
  }
  std::memset(ob, 0, size_t(rp) * size_t(hd) * 4);

  for (int j0 = 0; j0 < kend; j0 += kKeys) {
    const int nkt = std::min(4, (kend - j0 + 15) / 16);
    const int nks = (nkt + 1) / 2;
    // S = Q K^T for this block.
    for (int rt = 0; rt < rtiles; ++rt) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      const uint8_t* kbase = kb + size_t(j0 / 16) * size_t(L.steps_k) * kTile;
      // Tiles: 0-3 scores of the block's key tiles, 4/6 queries high/low, 5/7 keys high/low.
      for (int st = 0; st < L.steps_k; ++st) {
        const uint8_t* qt = qa + (size_t(rt) * size_t(L.steps_k) + size_t(st)) * kTile;
        _tile_loadd(4, qt, 64);
        _tile_loadd(6, qt + q_half, 64);
        const uint8_t* kt = kbase + size_t(st) * kTile;
        const size_t kstep = size_t(L.steps_k) * kTile;
        if (nkt > 0) QLEAP_QK_TILE(0, kt, kstep, L.k_half);
        if (nkt > 1) QLEAP_QK_TILE(1, kt, kstep, L.k_half);
        if (nkt > 2) QLEAP_QK_TILE(2, kt, kstep, L.k_half);
        if (nkt > 3) QLEAP_QK_TILE(3, kt, kstep, L.k_half);
      }
      float* srow = sb + size_t(rt) * 16 * kKeys;
      _tile_stored(0, srow, kKeys * 4);
      if (nkt > 1) _tile_stored(1, srow + 16, kKeys * 4);
      if (nkt > 2) _tile_stored(2, srow + 32, kKeys * 4);
      if (nkt > 3) _tile_stored(3, srow + 48, kKeys * 4);
    }
    // Online softmax per row; P as bf16 A tiles.
    const bool diag = j0 + 16 * nkt - 1 > pmin;
    const __m512 lane = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int r = 0; r < rp; ++r) {
      uint8_t* prow = pa + size_t(r / 16) * 2 * kTile + 64 * size_t(r % 16);
      __m512 v[4];
      __m512 bmax = _mm512_set1_ps(ninf);
      for (int c = 0; c < 4; ++c) {
        if (c >= nkt || r >= rows) {
          v[c] = _mm512_set1_ps(ninf);
          continue;
        }
        v[c] = _mm512_load_ps(sb + size_t(r) * kKeys + 16 * c);
        if (diag) {
          const __m512 key = _mm512_add_ps(lane, _mm512_set1_ps(float(j0 + 16 * c)));
          const __mmask16 over = _mm512_cmp_ps_mask(key, _mm512_set1_ps(posr[r]), _CMP_GT_OQ);
          v[c] = _mm512_mask_mov_ps(v[c], over, _mm512_set1_ps(ninf));
        }
        bmax = _mm512_max_ps(bmax, v[c]);
      }
      const float bm = _mm512_reduce_max_ps(bmax);
      if (bm == ninf) {
        for (size_t off : {size_t(0), size_t(kTile), p_half, p_half + kTile})
          _mm512_store_si512(prow + off, _mm512_setzero_si512());
        continue;
      }
      if (mrow[r] == ninf) {
        mrow[r] = bm;
      } else if (bm > mrow[r] + kLazy) {
        const float c = std::exp(mrow[r] - bm);
        const __m512 cv = _mm512_set1_ps(c);
        float* orow = ob + size_t(r) * size_t(hd);
        for (int d = 0; d < hd; d += 16)
          _mm512_store_ps(orow + d, _mm512_mul_ps(_mm512_load_ps(orow + d), cv));
        lrow[r] *= c;
        mrow[r] = bm;
      }
      const __m512 m = _mm512_set1_ps(mrow[r]);
      __m512 sum = _mm512_setzero_ps();
      for (int c = 0; c < 4; ++c) {
        v[c] = exp16(_mm512_sub_ps(v[c], m));
        sum = _mm512_add_ps(sum, v[c]);
      }
      lrow[r] += _mm512_reduce_add_ps(sum);
      __m512i hi, lo;
      split_bf16(v[0], v[1], &hi, &lo);
      _mm512_store_si512(prow, hi);
      _mm512_store_si512(prow + p_half, lo);
      split_bf16(v[2], v[3], &hi, &lo);
      _mm512_store_si512(prow + kTile, hi);
      _mm512_store_si512(prow + kTile + p_half, lo);
    }
    // O += P V.
    const uint8_t* vbase = vb + size_t(j0 / 32) * size_t(L.tiles_d) * kTile;
    for (int rt = 0; rt < rtiles; ++rt) {
      for (int dt = 0; dt < L.tiles_d; dt += 2) {
        const bool two = dt + 1 < L.tiles_d;
        float* o0 = ob + size_t(rt) * 16 * size_t(hd) + size_t(16 * dt);
        _tile_loadd(0, o0, size_t(hd) * 4);
        if (two) _tile_loadd(1, o0 + 16, size_t(hd) * 4);
        // Tiles: 0/1 outputs, 4/5 probabilities high/low, 6/7 values high/low.
        for (int ks = 0; ks < nks; ++ks) {
          const uint8_t* pt = pa + (size_t(rt) * 2 + size_t(ks)) * kTile;
          _tile_loadd(4, pt, 64);
          _tile_loadd(5, pt + p_half, 64);
          const uint8_t* vt = vbase + (size_t(ks) * size_t(L.tiles_d) + size_t(dt)) * kTile;
          _tile_loadd(6, vt, 64);
          _tile_dpbf16ps(0, 4, 6);
          _tile_dpbf16ps(0, 5, 6);
          _tile_loadd(7, vt + L.v_half, 64);
          _tile_dpbf16ps(0, 4, 7);
          if (two) {
            _tile_loadd(6, vt + kTile, 64);
            _tile_dpbf16ps(1, 4, 6);
            _tile_dpbf16ps(1, 5, 6);
            _tile_loadd(7, vt + kTile + L.v_half, 64);
            _tile_dpbf16ps(1, 4, 7);
          }
        }
        _tile_stored(0, o0, size_t(hd) * 4);
        if (two) _tile_stored(1, o0 + 16, size_t(hd) * 4);
      }
    }
  }
  for (int r = 0; r < rows; ++r) {
    float* orow = out + (size_t(t0 + r / group) * s.n_heads + size_t(g) * group + r % group) * hd;
    const __m512 inv = _mm512_set1_ps(
        s.sinks == nullptr ? 1.0f / lrow[r]
                           : attn_out_factor(mrow[r], lrow[r], s.sinks[g * group + r % group]));
    for (int d = 0; d < hd; d += 16)
      _mm512_storeu_ps(orow + d, _mm512_mul_ps(_mm512_load_ps(ob + size_t(r) * hd + d), inv));
  }
}

template <class T>
void run(const FlashShape& s, const KvRowsView<T>& kv, const float* q, float* out, ThreadPool& pool) {
  const int64_t n_keys = int64_t(s.pos0) + s.n_q;
  Layout L{};
  L.hd = s.head_dim;
  L.steps_k = s.head_dim / 32;
  L.tiles_d = s.head_dim / 16;
  L.key_tiles = (n_keys + 15) / 16;
  L.key_steps = (n_keys + 31) / 32;
  // Blocks read up to 64 keys past a tile boundary: round both up to whole blocks.
  L.key_tiles = (L.key_tiles + 3) / 4 * 4;
  L.key_steps = (L.key_steps + 1) / 2 * 2;
  L.k_half = size_t(L.key_tiles) * size_t(L.steps_k) * kTile;
  L.v_half = size_t(L.key_steps) * size_t(L.tiles_d) * kTile;
  L.k_head = 2 * L.k_half;
  L.v_head = 2 * L.v_half;
  thread_local AlignedBuf kvbuf;  // owned by the calling thread; workers read it
  uint8_t* kbuf = kvbuf.get((L.k_head + L.v_head) * size_t(s.n_kv_heads));
  uint8_t* vbuf = kbuf + L.k_head * size_t(s.n_kv_heads);
  const int64_t kjobs = L.key_tiles * s.n_kv_heads, vjobs = L.key_steps * s.n_kv_heads;
  pool.parallel_for(kjobs + vjobs, 8, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) {
      if (i < kjobs) {
        const int g = int(i / L.key_tiles);
        build_k(kv, g, n_keys, L, i % L.key_tiles, kbuf + L.k_head * size_t(g));
      } else {
        const int64_t v = i - kjobs;
        const int g = int(v / L.key_steps);
        build_v(kv, g, n_keys, L, v % L.key_steps, vbuf + L.v_head * size_t(g));
      }
    }
  });
  const int group = s.n_heads / s.n_kv_heads;
  const int q_block = std::max(1, kRows / group);
  const int n_qb = (s.n_q + q_block - 1) / q_block;
  const int64_t items = int64_t(n_qb) * s.n_kv_heads;
  pool.parallel_for(items, 1, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) {
      const int qb = n_qb - 1 - int(i / s.n_kv_heads);
      const int g = int(i % s.n_kv_heads);
      run_item(s, L, kbuf + L.k_head * size_t(g), vbuf + L.v_head * size_t(g), q_block, qb, g, q, out);
    }
  });
}

#undef QLEAP_QK_TILE

}  // namespace

void run_amx(const FlashShape& s, const void* kv, bool f16, const float* q, float* out, ThreadPool& pool) {
  if (f16) {
    run(s, *static_cast<const KvRowsView<uint16_t>*>(kv), q, out, pool);
  } else {
    run(s, *static_cast<const KvRowsView<float>*>(kv), q, out, pool);
  }
}

}  // namespace qleap::flash_detail
