#include "kv/split_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "backend/cpu/ops.h"

namespace qleap {

int key_splits(int n_threads, int64_t base_items, int n_keys_max, int min_keys) {
  if (n_threads <= 1 || base_items >= 2 * n_threads || n_keys_max < 2 * min_keys) return 1;
  const int64_t want = (4 * n_threads + base_items - 1) / base_items;
  return int(std::max<int64_t>(1, std::min<int64_t>(want, n_keys_max / min_keys)));
}

void SplitPartials::reserve(int64_t n_items, int heads, int head_dim) {
  heads_ = heads;
  head_dim_ = head_dim;
  const size_t need = size_t(n_items) * size_t(heads) * size_t(head_dim + 2);
  if (buf_.size() < need) buf_.resize(need);
}

const float* SplitPartials::state(int64_t item, int h) const {
  return buf_.data() + (size_t(item) * size_t(heads_) + size_t(h)) * size_t(head_dim_ + 2);
}

void SplitPartials::put(int64_t item, int h, float m, float l, const float* acc) {
  float* p = const_cast<float*>(state(item, h));
  p[0] = m;
  p[1] = l;
  std::copy(acc, acc + head_dim_, p + 2);
}

float SplitPartials::merge(int64_t base, int n_split, int h, float* out, float sink) const {
  float mx = -std::numeric_limits<float>::infinity();
  for (int sp = 0; sp < n_split; ++sp) {
    const float* p = state(base + sp, h);
    if (p[1] > 0) mx = std::max(mx, p[0]);
  }
  std::fill(out, out + head_dim_, 0.0f);
  double l = 0;
  for (int sp = 0; sp < n_split; ++sp) {
    const float* p = state(base + sp, h);
    if (p[1] <= 0) continue;
    const float c = std::exp(p[0] - mx);
    l += double(p[1]) * c;
    for (int i = 0; i < head_dim_; ++i) out[i] += c * p[2 + i];
  }
  const bool has_sink = sink > -std::numeric_limits<float>::infinity();
  const float inv = has_sink ? attn_out_factor(mx, float(l), sink) : l > 0 ? float(1.0 / l) : 0.0f;
  for (int i = 0; i < head_dim_; ++i) out[i] *= inv;
  return float(l) * inv;
}

void run_items(ThreadPool& pool, int64_t n_items, double work, const std::function<void(int64_t)>& fn) {
  // Below a few tens of thousands of multiply-adds the dispatch costs more than it saves.
  if (pool.size() == 1 || n_items <= 1 || work < 32768) {
    for (int64_t i = 0; i < n_items; ++i) fn(i);
    return;
  }
  pool.parallel_for(n_items, 1, [&fn](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) fn(i);
  });
}

}  // namespace qleap
