// AMX build of the tiled prefill attention: the two products per key block, S = Q K^T and
// O += P V, on bf16 tiles with fp32 accumulation (TDPBF16PS); the online softmax between them in
// AVX-512. Keys and values are converted to tile layouts once per call for each kv head (every
// query block reads the same tiles); queries, scores and probabilities per work item.
//
// bf16 keeps 8 significant bits: scores carry a relative error of about 2^-9 per product term, the
// probabilities and values the same; the outputs (weighted means of V) then differ from fp32 by a
// few 1e-3 relative, the size of the differences the f16 cache itself brings.
//
// Softmax rescaling is lazy: the running maximum of a row only moves (and the row's output and sum
// are rescaled) when a block's maximum exceeds it by more than kLazy; in between, probabilities
// exp(s - m) may exceed 1 by up to e^kLazy, which fp32 sums and bf16 products hold exactly as well.
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
inline __m512i to_bf16(__m512 lo, __m512 hi) {
  return reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo));
}
inline __m512i bf16_dwords(__m512 v) {
  return _mm512_cvtepu16_epi32(reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)));
}

struct Layout {
  int hd, steps_k, tiles_d;      // dims / 32 (S steps), dims / 16 (output tiles)
  int64_t key_tiles, key_steps;  // per kv head: ceil(n_keys / 16), ceil(n_keys / 32)
  size_t k_head, v_head;         // bytes of one head's K / V tiles
};

// K tiles of kv head g, key tile kt, step s: row p holds, for key n of the tile, the dims pair
// (32 s + 2p, 32 s + 2p + 1).
template <class T>
void build_k(const KvRowsView<T>& kv, int g, int64_t n_keys, const Layout& L, int64_t kt, uint8_t* kb) {
  for (int s = 0; s < L.steps_k; ++s) {
    __m512i r[16];
    for (int n = 0; n < 16; ++n) {
      const int64_t j = kt * 16 + n;
      if (j >= n_keys) {
        r[n] = _mm512_setzero_si512();
        continue;
      }
      const T* p = kv.k + size_t(g) * kv.head_stride + size_t(j) * kv.pos_stride + size_t(32 * s);
      r[n] = to_bf16(load16(p), load16(p + 16));
    }
    transpose16x16(r);
    uint8_t* dst = kb + (size_t(kt) * size_t(L.steps_k) + size_t(s)) * kTile;
    for (int p = 0; p < 16; ++p) _mm512_store_si512(dst + 64 * p, r[p]);
  }
}

// V tiles of kv head g, key step ks (32 keys), dim tile dt: row p holds, for dim n of the tile,
// the keys pair (32 ks + 2p, 32 ks + 2p + 1).
template <class T>
void build_v(const KvRowsView<T>& kv, int g, int64_t n_keys, const Layout& L, int64_t ks, uint8_t* vb) {
  for (int dt = 0; dt < L.tiles_d; ++dt) {
    uint8_t* dst = vb + (size_t(ks) * size_t(L.tiles_d) + size_t(dt)) * kTile;
    for (int p = 0; p < 16; ++p) {
      const int64_t ja = ks * 32 + 2 * p, jb = ja + 1;
      const T* base = kv.v + size_t(g) * kv.head_stride + size_t(16 * dt);
      const __m512 a = ja < n_keys ? load16(base + size_t(ja) * kv.pos_stride) : _mm512_setzero_ps();
      const __m512 b = jb < n_keys ? load16(base + size_t(jb) * kv.pos_stride) : _mm512_setzero_ps();
      _mm512_store_si512(dst + 64 * p,
                         _mm512_or_si512(bf16_dwords(a), _mm512_slli_epi32(bf16_dwords(b), 16)));
    }
  }
}

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
  uint8_t* qa = sc.qa.get(size_t(rtiles) * size_t(L.steps_k) * kTile);    // [rt][step]
  uint8_t* pa = sc.pa.get(size_t(rtiles) * 2 * kTile);                    // [rt][key step]
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
      __m512i v = _mm512_setzero_si512();
      if (r < rows)
        v = to_bf16(_mm512_mul_ps(_mm512_loadu_ps(qr + 32 * st), scale),
                    _mm512_mul_ps(_mm512_loadu_ps(qr + 32 * st + 16), scale));
      _mm512_store_si512(qa + (size_t(r / 16) * size_t(L.steps_k) + size_t(st)) * kTile + 64 * size_t(r % 16),
                         v);
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
      for (int st = 0; st < L.steps_k; ++st) {
        _tile_loadd(4, qa + (size_t(rt) * size_t(L.steps_k) + size_t(st)) * kTile, 64);
        _tile_loadd(5, kbase + size_t(st) * kTile, 64);
        _tile_dpbf16ps(0, 4, 5);
        if (nkt > 1) {
          _tile_loadd(6, kbase + (size_t(L.steps_k) + size_t(st)) * kTile, 64);
          _tile_dpbf16ps(1, 4, 6);
        }
        if (nkt > 2) {
          _tile_loadd(7, kbase + (2 * size_t(L.steps_k) + size_t(st)) * kTile, 64);
          _tile_dpbf16ps(2, 4, 7);
        }
        if (nkt > 3) {
          _tile_loadd(5, kbase + (3 * size_t(L.steps_k) + size_t(st)) * kTile, 64);
          _tile_dpbf16ps(3, 4, 5);
        }
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
        _mm512_store_si512(prow, _mm512_setzero_si512());
        _mm512_store_si512(prow + kTile, _mm512_setzero_si512());
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
      _mm512_store_si512(prow, to_bf16(v[0], v[1]));
      _mm512_store_si512(prow + kTile, to_bf16(v[2], v[3]));
    }
    // O += P V.
    const uint8_t* vbase = vb + size_t(j0 / 32) * size_t(L.tiles_d) * kTile;
    for (int rt = 0; rt < rtiles; ++rt) {
      for (int dt = 0; dt < L.tiles_d; dt += 2) {
        const bool two = dt + 1 < L.tiles_d;
        float* o0 = ob + size_t(rt) * 16 * size_t(hd) + size_t(16 * dt);
        _tile_loadd(0, o0, size_t(hd) * 4);
        if (two) _tile_loadd(1, o0 + 16, size_t(hd) * 4);
        for (int ks = 0; ks < nks; ++ks) {
          _tile_loadd(4, pa + (size_t(rt) * 2 + size_t(ks)) * kTile, 64);
          _tile_loadd(5, vbase + (size_t(ks) * size_t(L.tiles_d) + size_t(dt)) * kTile, 64);
          _tile_dpbf16ps(0, 4, 5);
          if (two) {
            _tile_loadd(6, vbase + (size_t(ks) * size_t(L.tiles_d) + size_t(dt + 1)) * kTile, 64);
            _tile_dpbf16ps(1, 4, 6);
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
  L.k_head = size_t(L.key_tiles) * size_t(L.steps_k) * kTile;
  L.v_head = size_t(L.key_steps) * size_t(L.tiles_d) * kTile;
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

}  // namespace

void run_amx(const FlashShape& s, const void* kv, bool f16, const float* q, float* out, ThreadPool& pool) {
  if (f16) {
    run(s, *static_cast<const KvRowsView<uint16_t>*>(kv), q, out, pool);
  } else {
    run(s, *static_cast<const KvRowsView<float>*>(kv), q, out, pool);
  }
}

}  // namespace qleap::flash_detail
