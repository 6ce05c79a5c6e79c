#include "kv/kv_turboquant_attend.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "backend/cpu/ops.h"
#include "core/fp16.h"

namespace qleap {

namespace {

// Keys per online-softmax step of the key-split decode path.
constexpr int kTileKeys = 256;

// The tiled prefill's source: rows decoded from the records per block, sink rows in place of theirs,
// the recent window as the exact band.
class TqSource final : public FlashSource {
 public:
  explicit TqSource(const TqLayerRecords& r) : r_(r), hd_(r.shape->head_dim) {
    const TqExactRows& x = r.heads.front().exact;  // the window is per layer: the same for every head
    if (x.window > 0) {
      band = x.window;
      band_lo = std::max<int64_t>(x.begin, x.sink);
      band_hi = x.end;
    }
  }

  void rows(int g, int64_t j0, int n, float* k, float* v) const override {
    const TqHeadRecords& h = r_.heads[size_t(g)];
    const TqExactRows& x = h.exact;
    const size_t hd = size_t(hd_);
    int i = 0;
    for (; i < n && j0 + i < x.sink; ++i) {
      std::copy_n(x.sink_k + size_t(j0 + i) * hd, hd, k + size_t(i) * hd);
      std::copy_n(x.sink_v + size_t(j0 + i) * hd, hd, v + size_t(i) * hd);
    }
    if (i == n) return;
    const int64_t p = j0 + i, cnt = n - i, slot = r_.ring > 0 ? p % r_.ring : p;
    const TqWrap wrap = TqWrap::of(r_.ring, slot, cnt);
    tq_decode_rows(*h.ks, h.keys + size_t(slot) * h.key_stride, h.key_stride, cnt, k + size_t(i) * hd, hd,
                   wrap);
    if (h.values == h.keys && h.vs == h.ks) {
      // Values read from the key records (MLA's latent): the same rows.
      std::copy_n(k + size_t(i) * hd, size_t(cnt) * hd, v + size_t(i) * hd);
    } else {
      tq_decode_rows(*h.vs, h.values + size_t(slot) * h.value_stride, h.value_stride, cnt, v + size_t(i) * hd,
                     hd, wrap);
    }
    // Block key means: the records were centered on their block's shifted mean (tq_exact_scores).
    for (; i < n; ++i)
      if (const float* d = x.shift_row(j0 + i, hd_)) {
        float* kr = k + size_t(i) * hd;
        for (size_t c = 0; c < hd; ++c) kr[c] += d[c];
      }
  }

  void exact_rows(int g, int64_t j0, int n, float* k, float* v) const override {
    const TqExactRows& x = r_.heads[size_t(g)].exact;
    const size_t hd = size_t(hd_);
    for (int i = 0; i < n; ++i) {
      const int64_t p = j0 + i;
      float* kr = k + size_t(i) * hd;
      float* vr = v + size_t(i) * hd;
      if (p >= band_lo && p < band_hi) {
        fp16_to_fp32_row(x.win_k + size_t(p % x.ring) * hd, kr, hd);
        fp16_to_fp32_row(x.win_v + size_t(p % x.ring) * hd, vr, hd);
      } else {
        std::fill(kr, kr + hd, 0.0f);
        std::fill(vr, vr + hd, 0.0f);
      }
    }
  }

 private:
  const TqLayerRecords& r_;
  int hd_;
};

}  // namespace

bool tq_attend_tiled(const TqLayerRecords& r, int pos0, int n_q, const float* q, float* out, float scale,
                     ThreadPool& pool) {
  const KvShape& s = *r.shape;
  FlashShape fs{.n_q = n_q,
                .pos0 = pos0,
                .n_heads = s.n_heads,
                .n_kv_heads = s.n_kv_heads,
                .head_dim = s.head_dim,
                .scale = scale};
  fs.sinks = r.sinks;
  fs.sinks_stride = size_t(s.n_heads);
  fs.sink_share = r.sink_share;
  fs.window = s.window(r.layer);
  // Soft-capped scores (FlashShape has no cap) and QJL residuals stay on tq_attend_chunks.
  if (s.softcap != 0 || !flash_prefill_enabled() || !flash_prefill_supported(fs) ||
      r.heads.size() != size_t(s.n_kv_heads))
    return false;
  for (const TqHeadRecords& h : r.heads)
    if (h.ks->layout.dim != s.head_dim || h.vs->layout.dim != s.head_dim || h.ks->layout.qjl) return false;
  const int hd = s.head_dim, group = s.n_heads / s.n_kv_heads;
  const size_t row = size_t(s.n_heads) * hd;
  // Queries into each kv head's key space, outputs back from its value space, a token per item, all in
  // out: the kernel reads a block's query rows before it writes their outputs (no copy of q is kept).
  auto each_head = [&](auto&& f) {
    pool.parallel_for(n_q, 1, [&](int64_t b, int64_t e, int) {
      for (int64_t t = b; t < e; ++t)
        for (int h = 0; h < s.n_heads; ++h) f(size_t(t) * row + size_t(h) * hd, r.heads[size_t(h / group)]);
    });
  };
  each_head([&](size_t o, const TqHeadRecords& head) { tq_rotate_query(*head.ks, q + o, out + o); });
  const TqSource src(r);
  flash_prefill(fs, src, out, out, pool);
  each_head([&](size_t o, const TqHeadRecords& head) { tq_unrotate(*head.vs, out + o, out + o); });
  return true;
}

// Prefill: work items (kv head, chunk of query tokens); the dynamic scheduler balances the causal
// triangle.
void tq_attend_chunks(const TqLayerRecords& r, int pos0, int n_q, const float* q, float* out, float scale,
                      ThreadPool& pool) {
  const KvShape& s = *r.shape;
  const int layer = r.layer;
  const int hd = s.head_dim, group = s.n_heads / s.n_kv_heads;
  const size_t row = size_t(s.n_heads) * hd;
  const int P = pool.size();
  const int want_chunks = std::max(1, (8 * P + s.n_kv_heads - 1) / s.n_kv_heads);
  const int n_chunks = std::min(n_q, want_chunks);
  const int64_t n_items = int64_t(n_chunks) * s.n_kv_heads;
  auto run = [&](int64_t item) {
    // Latest chunks first: they see the most keys, so the scheduler ends on the cheap ones.
    const int c = n_chunks - 1 - int(item / s.n_kv_heads);
    const int g = int(item % s.n_kv_heads);
    const int t0 = int(int64_t(n_q) * c / n_chunks), t1 = int(int64_t(n_q) * (c + 1) / n_chunks);
    if (t1 <= t0) return;
    const size_t head_off = size_t(g) * group * hd;
    const TqHeadRecords& hr = r.heads[size_t(g)];
    const TqExactRows& x = hr.exact;
    TqWindow win{s.window(layer), r.ring, s.softcap};
    if (r.sinks != nullptr) {
      const size_t at = size_t(t0) * s.n_heads + size_t(g) * group;
      win.sinks = r.sinks + at;
      win.sink_share = r.sink_share + at;
      win.sinks_stride = size_t(s.n_heads);
    }
    tq_attend_gqa(*hr.ks, *hr.vs, pos0 + t0, t1 - t0, group, q + size_t(t0) * row + head_off, row, hr.keys,
                  hr.key_stride, hr.values, hr.value_stride, scale, out + size_t(t0) * row + head_off, row,
                  x.empty() ? nullptr : &x, win);
  };
  run_items(pool, n_items, double(n_q) * s.n_heads * (pos0 + 0.5 * n_q + 1) * hd * 2, run);
}

// Decode: items (query token, kv head, key slice); each leaves {m, l, acc_rot} per query head of
// the group, merged afterwards in the rotated value space (one inverse rotation per head).
void tq_attend_split(const TqLayerRecords& r, int pos0, int n_q, const float* q, float* out, float scale,
                     ThreadPool& pool, int n_split, SplitPartials& partial) {
  const KvShape& s = *r.shape;
  const int layer = r.layer;
  const int hd = s.head_dim, group = s.n_heads / s.n_kv_heads;
  const size_t row = size_t(s.n_heads) * hd;
  const int64_t n_items = int64_t(n_q) * s.n_kv_heads * n_split;
  partial.reserve(n_items, group, hd);
  auto run = [&](int64_t item) {
    const int split = int(item % n_split);
    const int g = int((item / n_split) % s.n_kv_heads);
    const int t = int(item / n_split / s.n_kv_heads);
    const int64_t n_keys = int64_t(pos0) + t + 1;
    const int64_t lo = s.first_key(layer, int(n_keys - 1)), span = n_keys - lo;
    const int64_t jb = lo + span * split / n_split, je = lo + span * (split + 1) / n_split;
    // Records of positions [lo, n_keys) are a run of slots from slot(lo), wrapping around a ring.
    const int64_t ring = r.ring;
    const int64_t slot_lo = ring > 0 ? lo % ring : lo;
    const TqWrap wrap = TqWrap::of(ring, slot_lo, n_keys - lo);
    auto slot = [&](int64_t j) { return size_t(slot_lo + wrap.offset(j - lo, 1)); };
    const float cap = s.softcap;
    const TqHeadRecords& hr = r.heads[size_t(g)];
    const TqState& ks = *hr.ks;
    const TqState& vs = *hr.vs;
    const size_t kr = hr.key_stride, vr = hr.value_stride;
    const TqExactRows& x = hr.exact;
    thread_local std::vector<float> qr, sc, acc;
    qr.resize(size_t(group) * hd);
    sc.resize(size_t(group) * kTileKeys);
    acc.assign(size_t(group) * hd, 0.0f);
    const float* qg = q + size_t(t) * row + size_t(g) * group * hd;
    for (int h = 0; h < group; ++h) tq_rotate_query(ks, qg + size_t(h) * hd, &qr[size_t(h) * hd]);
    // QJL keys: S q' per head, for the residual term of every score (scalar: measured for quality).
    thread_local std::vector<float> sq;
    const TqLayout& kl = ks.layout;
    if (kl.qjl) {
      sq.resize(size_t(group) * hd);
      for (int h = 0; h < group; ++h)
        for (int r = 0; r < hd; ++r) {
          const float* srow = &ks.qjl_matrix[size_t(r) * hd];
          double acc_s = 0;
          for (int i = 0; i < hd; ++i) acc_s += double(srow[i]) * qr[size_t(h) * hd + i];
          sq[size_t(h) * hd + r] = float(acc_s);
        }
    }
    float m[256], l[256];
    for (int h = 0; h < group; ++h) {
      m[h] = -std::numeric_limits<float>::infinity();
      l[h] = 0;
    }
    for (int64_t j0 = jb; j0 < je; j0 += kTileKeys) {
      const int64_t nt = std::min<int64_t>(kTileKeys, je - j0);
      tq_scores(ks, qr.data(), group, hr.keys + slot(j0) * kr, kr, nt, sc.data(), kTileKeys,
                wrap.from(j0 - lo));
      if (kl.qjl) {
        // + norm * sqrt(pi/2)/d * gamma * <S q', sign(S r)> (tq_qjl_inner_product, unbiased).
        const float cst = float(std::sqrt(3.14159265358979323846 / 2.0) / hd);
        for (int64_t j = 0; j < nt; ++j) {
          const uint8_t* rec = hr.keys + slot(j0 + j) * kr;
          uint16_t gh;
          std::memcpy(&gh, rec + kl.gamma_offset, 2);
          const float coef = cst * fp16_to_fp32(gh) * tq_record_norm(kl, rec);
          const uint8_t* bits = rec + kl.qjl_offset;
          for (int h = 0; h < group; ++h) {
            const float* v = &sq[size_t(h) * hd];
            float dsum = 0;
            for (int r = 0; r < hd; ++r) dsum += (bits[r >> 3] >> (r & 7)) & 1 ? v[r] : -v[r];
            sc[size_t(h) * kTileKeys + size_t(j)] += coef * dsum;
          }
        }
      }
      tq_exact_scores(x, n_keys, qr.data(), group, hd, j0, nt, sc.data(), kTileKeys);
      for (int h = 0; h < group; ++h) {
        float* w = &sc[size_t(h) * kTileKeys];
        float mx = m[h];
        for (int64_t j = 0; j < nt; ++j) {
          w[j] = softcap_score(w[j] * scale, cap);
          mx = std::max(mx, w[j]);
        }
        if (mx > m[h] && l[h] > 0) {
          const float c = std::exp(m[h] - mx);
          l[h] *= c;
          float* a = &acc[size_t(h) * hd];
          for (int i = 0; i < hd; ++i) a[i] *= c;
        }
        m[h] = mx;
        float sum = 0;
        for (int64_t j = 0; j < nt; ++j) sum += (w[j] = std::exp(w[j] - mx));
        l[h] += sum;
      }
      tq_exact_accumulate(x, n_keys, sc.data(), kTileKeys, group, hd, j0, nt, acc.data());
      tq_accumulate_values(vs, sc.data(), kTileKeys, group, hr.values + slot(j0) * vr, vr, nt, acc.data(),
                           wrap.from(j0 - lo));
    }
    for (int h = 0; h < group; ++h) partial.put(item, h, m[h], l[h], &acc[size_t(h) * hd]);
  };
  // Always threaded when the pool has threads: this path is taken for decode over long contexts.
  run_items(pool, n_items, std::numeric_limits<double>::infinity(), run);
  // Merged in the rotated value space, then one inverse rotation per head.
  std::vector<float> a(static_cast<size_t>(hd));
  for (int t = 0; t < n_q; ++t)
    for (int g = 0; g < s.n_kv_heads; ++g)
      for (int h = 0; h < group; ++h) {
        const size_t at = size_t(t) * s.n_heads + size_t(g) * group + size_t(h);
        const float keys =
            partial.merge((int64_t(t) * s.n_kv_heads + g) * n_split, n_split, h, a.data(),
                          r.sinks == nullptr ? -std::numeric_limits<float>::infinity() : r.sinks[at]);
        if (r.sinks != nullptr) r.sink_share[at] = 1.0f - keys;
        tq_unrotate(*r.heads[size_t(g)].vs, a.data(), out + size_t(t) * row + (size_t(g) * group + h) * hd);
      }
}

}  // namespace qleap
