#include "backend/cpu/cpu_backend.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>

#include "backend/cpu/delta_net.h"
#include "backend/cpu/matmul.h"
#include "backend/cpu/ops.h"
#include "core/error.h"

namespace qleap {
namespace {

// Runs f(t) for t in [0, m), over the pool when the rows are numerous and costly enough to pay for
// the dispatch. The lambda handed to the pool captures one pointer, so std::function does not
// allocate.
template <class F>
void parallel_rows(ThreadPool& pool, int m, int64_t cost_per_row, const F& f) {
  if (pool.size() == 1 || m < 2 || cost_per_row * m < 32768) {
    for (int t = 0; t < m; ++t) f(t);
    return;
  }
  const F* fp = &f;
  pool.parallel_for(m, 1, [fp](int64_t b, int64_t e, int) {
    for (int64_t t = b; t < e; ++t) (*fp)(int(t));
  });
}

bool has(const std::vector<float>* v) {
  return v != nullptr && !v->empty();
}

}  // namespace

ActBuffer CpuBackend::alloc_floats(size_t n) {
  // 64-byte aligned and zero-filled: rows are read by the SIMD kernels, and a buffer nobody wrote
  // yet must not hold garbage that turns into NaN in a half-filled batch.
  auto* p =
      static_cast<float*>(::operator new[](std::max<size_t>(1, n) * sizeof(float), std::align_val_t(64)));
  std::memset(p, 0, n * sizeof(float));
  return ActBuffer(p, n, [](float* q) { ::operator delete[](q, std::align_val_t(64)); });
}

void CpuBackend::upload(float* dst, const float* host, size_t n) {
  if (dst != host) std::memcpy(dst, host, n * sizeof(float));
}

void CpuBackend::download(float* host, const float* src, size_t n) {
  if (host != src) std::memcpy(host, src, n * sizeof(float));
}

void CpuBackend::set_positions(const int32_t* pos, int m) {
  pos_.assign(pos, pos + m);
}

void CpuBackend::rms_norm(const float* x, const std::vector<float>& w, float* y, int m, int n, float eps) {
  const float* wp = w.data();
  parallel_rows(pool_, m, n,
                [&](int t) { qleap::rms_norm(x + size_t(t) * n, wp, y + size_t(t) * n, n, eps); });
}

void CpuBackend::matmul(const WeightView& w, const float* x, int m, float* y, bool accumulate) {
  if (!accumulate) return qleap::matmul(w, x, m, y, pool_);
  const size_t n = size_t(m) * size_t(w.rows);
  if (acc_.size() < n) acc_.resize(n);
  qleap::matmul(w, x, m, acc_.data(), pool_);
  add_inplace(y, acc_.data(), int64_t(n));
}

void CpuBackend::matmul_many(std::span<const MatmulOut> outs, const float* x, int m) {
  // In pieces of a few weights (a layer has at most three on one input).
  constexpr size_t kPiece = 8;
  for (size_t b = 0; b < outs.size(); b += kPiece) {
    const WeightView* ws[kPiece];
    float* ys[kPiece];
    const size_t n = std::min(kPiece, outs.size() - b);
    for (size_t i = 0; i < n; ++i) {
      ws[i] = outs[b + i].w;
      ys[i] = outs[b + i].y;
    }
    qleap::matmul_many(ws, ys, int(n), x, m, pool_);
  }
}

void CpuBackend::add(float* y, const float* x, int64_t n) {
  add_inplace(y, x, n);
}

void CpuBackend::silu_mul(float* g, const float* u, int m, int n) {
  parallel_rows(pool_, m, 8 * int64_t(n),
                [&](int t) { qleap::silu_mul(g + size_t(t) * n, u + size_t(t) * n, n); });
}

void CpuBackend::gelu_mul(float* g, const float* u, int m, int n) {
  parallel_rows(pool_, m, 16 * int64_t(n),
                [&](int t) { qleap::gelu_mul(g + size_t(t) * n, u + size_t(t) * n, n); });
}

void CpuBackend::qk_prep(const QkPrep& a, int m) {
  const RopeTable* table = a.swa_rope ? rope_swa_ : rope_;
  if (table == nullptr) throw InvalidArgument("qk_prep: no RoPE table set");
  if (int(pos_.size()) < m)
    throw InvalidArgument(fmt::format("qk_prep: {} positions for {} rows", pos_.size(), m));
  const int hd = a.head_dim, q_dim = a.n_heads * hd, kv_dim = a.n_kv_heads * hd;
  const RopeTable& rope = *table;
  parallel_rows(pool_, m, 4 * (q_dim + 2 * kv_dim), [&](int t) {
    float* q = a.q + size_t(t) * q_dim;
    float* k = a.k + size_t(t) * kv_dim;
    float* v = a.v + size_t(t) * kv_dim;
    if (has(a.bq)) add_inplace(q, a.bq->data(), q_dim);
    if (has(a.bk)) add_inplace(k, a.bk->data(), kv_dim);
    if (has(a.bv)) add_inplace(v, a.bv->data(), kv_dim);
    if (a.norm_full) {
      qleap::rms_norm(q, a.q_norm->data(), q, q_dim, a.eps);
      qleap::rms_norm(k, a.k_norm->data(), k, kv_dim, a.eps);
    } else {
      if (has(a.q_norm)) {
        for (int h = 0; h < a.n_heads; ++h)
          qleap::rms_norm(q + h * hd, a.q_norm->data(), q + h * hd, hd, a.eps);
      }
      if (has(a.k_norm)) {
        for (int h = 0; h < a.n_kv_heads; ++h)
          qleap::rms_norm(k + h * hd, a.k_norm->data(), k + h * hd, hd, a.eps);
      }
    }
    const float* cs = rope.at(pos_[size_t(t)]);
    rope_apply(cs, rope.n_rot(), rope.style(), q, a.n_heads, hd);
    rope_apply(cs, rope.n_rot(), rope.style(), k, a.n_kv_heads, hd);
  });
}

void CpuBackend::split_heads(const float* x, float* a, float* b, int m, int n_heads, int head_dim) {
  const size_t hd = size_t(head_dim);
  for (int t = 0; t < m; ++t) {
    for (int h = 0; h < n_heads; ++h) {
      const float* src = x + (size_t(t) * n_heads + h) * 2 * hd;
      float* da = a + (size_t(t) * n_heads + h) * hd;
      float* db = b + (size_t(t) * n_heads + h) * hd;
      std::copy(src, src + hd, da);
      std::copy(src + hd, src + 2 * hd, db);
    }
  }
}

void CpuBackend::sigmoid_mul(float* y, const float* g, int m, int n) {
  const int64_t total = int64_t(m) * n;
  for (int64_t i = 0; i < total; ++i) y[i] *= 1.0f / (1.0f + std::exp(-g[i]));
}

void CpuBackend::delta_net(const DeltaNetArgs& a, int m) {
  delta_net_cpu(a, m, pool_);
}

}  // namespace qleap
