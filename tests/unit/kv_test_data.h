// Random K/V/Q for KV cache tests, and float attention over them in double (GQA).
#pragma once
#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "core/thread_pool.h"
#include "kv/kv_cache.h"

namespace qleap {

struct KvData {
  KvShape s;
  std::vector<float> k, v, q;
  KvData(const KvShape& shape, int n, unsigned seed) : s(shape) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd;
    k.resize(size_t(n) * s.kv_dim());
    v.resize(k.size());
    q.resize(size_t(n) * s.n_heads * s.head_dim);
    for (auto& x : k) x = nd(rng);
    for (size_t i = 0; i < k.size(); i += 5) k[i] += 3.0f;  // offsets, so that centering has work to do
    for (auto& x : v) x = nd(rng) + 1.0f;
    for (auto& x : q) x = nd(rng);
  }
  size_t row() const { return size_t(s.n_heads) * s.head_dim; }
  float scale() const { return 1.0f / std::sqrt(float(s.head_dim)); }
  std::vector<float> exact(int pos0, int n_q) const {
    const int hd = s.head_dim, kvd = s.kv_dim(), group = s.n_heads / s.n_kv_heads;
    std::vector<float> out(size_t(n_q) * row());
    for (int t = 0; t < n_q; ++t)
      for (int h = 0; h < s.n_heads; ++h) {
        const float* qh = &q[size_t(pos0 + t) * row() + size_t(h) * hd];
        const size_t off = size_t(h / group) * hd;
        const int m = pos0 + t + 1;
        std::vector<double> w(static_cast<size_t>(m));
        double mx = -1e300, sum = 0;
        for (int j = 0; j < m; ++j) {
          double d = 0;
          for (int i = 0; i < hd; ++i) d += double(qh[i]) * k[size_t(j) * kvd + off + i];
          mx = std::max(mx, w[size_t(j)] = d * scale());
        }
        for (auto& x : w) sum += (x = std::exp(x - mx));
        for (int i = 0; i < hd; ++i) {
          double o = 0;
          for (int j = 0; j < m; ++j) o += w[size_t(j)] / sum * v[size_t(j) * kvd + off + i];
          out[size_t(t) * row() + size_t(h) * hd + i] = float(o);
        }
      }
    return out;
  }
  // Stores positions [pos, pos + n) and attends their queries, in one batch, or as the attention
  // blocks do (model/blocks.h, store_and_attend) in pieces of KvShape::chunk_tokens on a ring layer.
  std::vector<float> step(KvCache& kv, int pos, int n, ThreadPool& pool) const {
    const size_t kvd = size_t(s.kv_dim());
    std::vector<float> out(size_t(n) * row());
    const int piece = std::max(1, kv.shape().chunk_tokens(0));
    for (int t0 = 0; t0 < n; t0 += piece) {
      const int p = pos + t0, m = std::min(piece, n - t0);
      kv.store(0, p, m, &k[size_t(p) * kvd], &v[size_t(p) * kvd]);
      kv.attend(0, p, m, &q[size_t(p) * row()], out.data() + size_t(t0) * row(), scale(), pool);
    }
    return out;
  }
};

}  // namespace qleap
