#include "kv/flash_prefill.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <vector>

#include "core/cpu_features.h"
#include "core/fp16.h"

namespace qleap {
namespace {

// Query rows (tokens x heads sharing a kv head) per work item: enough to fill the vector lanes and
// reuse each converted key/value block, few enough that the blocks stay in L2.
constexpr int kRowsPerItem = 64;
// Fewest query tokens worth the tiled kernel (below: the per-query path is as fast).
constexpr int kMinQueries = 4;

flash_detail::ItemFn pick_item(const FlashShape& s) {
  const IsaLevel lvl = isa_level();
  if (lvl >= IsaLevel::kAvx512 && s.head_dim % 16 == 0) return flash_detail::item_avx512();
  if (lvl >= IsaLevel::kAvx2 && s.head_dim % 8 == 0) return flash_detail::item_avx2();
  return nullptr;
}

// Fewest query tokens for the AMX kernel, which converts all keys and values of the call to tiles
// first: below this, that conversion costs more than the products it speeds up.
constexpr int kAmxMinQueries = 32;

// The AMX kernel splits its operands into bf16 high and low parts (flash_prefill_amx.cpp), which
// keeps the f16 cache's precision. QLEAP_AMX_ATTENTION=0 turns it off (A/B measurements).
std::atomic<int> g_amx_attention{-1};  // -1: not decided yet (read QLEAP_AMX_ATTENTION)

// Work items (query block, kv head), the last query blocks first: they see the most keys, so the
// threads finish together.
void run_items(const FlashShape& s, const void* kvp, bool f16, const FlashSource* src, const float* q,
               float* out, ThreadPool& pool) {
  const flash_detail::ItemFn fn = pick_item(s);
  const int group = s.n_heads / s.n_kv_heads;
  // Whole vectors of rows: a block of ceil(64 / group) tokens spilled a few rows into a fifth,
  // mostly empty vector (66 rows for 3 query heads per kv head), a fifth more work for 2 rows.
  const int q_block = std::max(1, kRowsPerItem / group);
  const int n_qb = (s.n_q + q_block - 1) / q_block;
  const int64_t items = int64_t(n_qb) * s.n_kv_heads;
  pool.parallel_for(items, 1, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) {
      const int qb = n_qb - 1 - int(i / s.n_kv_heads);
      const int g = int(i % s.n_kv_heads);
      fn(s, kvp, f16, src, q_block, qb, g, q, out);
    }
  });
}

template <class T>
void run(const FlashShape& s, const KvRowsView<T>& kv, const float* q, float* out, ThreadPool& pool) {
  constexpr bool kF16 = sizeof(T) == 2;
  // AMX multiplies in bf16: only for the f16 cache, whose keys and values are already rounded; the
  // f32 cache is the exact reference type and keeps fp32 products.
  if (kF16 && isa_level() >= IsaLevel::kAmx && s.head_dim % 32 == 0 && s.n_q >= kAmxMinQueries &&
      flash_prefill_amx_enabled() && s.sinks_stride == 0 && s.sink_share == nullptr && s.window == 0) {
    flash_detail::run_amx(s, &kv, kF16, q, out, pool);
    return;
  }
  run_items(s, &kv, kF16, nullptr, q, out, pool);
}

inline float to_f32(uint16_t h) {
  return fp16_to_fp32(h);
}
inline float to_f32(float f) {
  return f;
}

template <class T>
void ref(const FlashShape& s, const KvRowsView<T>& kv, const float* q, float* out) {
  const int hd = s.head_dim, group = s.n_heads / s.n_kv_heads;
  std::vector<double> sc, acc(static_cast<size_t>(hd));
  for (int t = 0; t < s.n_q; ++t) {
    const int n_keys = s.pos0 + t + 1;
    sc.assign(size_t(n_keys), 0.0);
    for (int h = 0; h < s.n_heads; ++h) {
      const int g = h / group;
      const float* qr = q + (size_t(t) * s.n_heads + h) * hd;
      double mx = -1e300;
      for (int j = 0; j < n_keys; ++j) {
        const T* kr = kv.k + size_t(g) * kv.head_stride + size_t(j) * kv.pos_stride;
        double d = 0;
        for (int i = 0; i < hd; ++i) d += double(qr[i]) * to_f32(kr[i]);
        sc[size_t(j)] = d * s.scale;
        mx = std::max(mx, sc[size_t(j)]);
      }
      double l = 0;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int j = 0; j < n_keys; ++j) {
        const double p = std::exp(sc[size_t(j)] - mx);
        l += p;
        const T* vr = kv.v + size_t(g) * kv.head_stride + size_t(j) * kv.pos_stride;
        for (int i = 0; i < hd; ++i) acc[size_t(i)] += p * to_f32(vr[i]);
      }
      float* orow = out + (size_t(t) * s.n_heads + h) * hd;
      // A sink adds exp(sink - mx) to the denominator only.
      if (s.sinks != nullptr) l += std::exp(double(s.sinks[h]) - mx);
      for (int i = 0; i < hd; ++i) orow[i] = float(acc[size_t(i)] / l);
    }
  }
}

}  // namespace

bool flash_prefill_amx_enabled() {
  int v = g_amx_attention.load(std::memory_order_relaxed);
  if (v < 0) {
    const char* e = std::getenv("QLEAP_AMX_ATTENTION");
    v = e != nullptr && e[0] == '0' ? 0 : 1;
    g_amx_attention.store(v, std::memory_order_relaxed);
  }
  return v == 1;
}

void set_flash_prefill_amx(bool on) {
  g_amx_attention.store(on ? 1 : 0, std::memory_order_relaxed);
}

bool flash_prefill_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("QLEAP_FLASH_PREFILL");
    return e == nullptr || e[0] != '0';
  }();
  return on;
}

bool flash_prefill_supported(const FlashShape& s) {
  return s.n_q >= kMinQueries && s.n_kv_heads > 0 && s.n_heads % s.n_kv_heads == 0 && pick_item(s) != nullptr;
}

void flash_prefill(const FlashShape& s, const KvRowsView<uint16_t>& kv, const float* q, float* out,
                   ThreadPool& pool) {
  run(s, kv, q, out, pool);
}
void flash_prefill(const FlashShape& s, const KvRowsView<float>& kv, const float* q, float* out,
                   ThreadPool& pool) {
  run(s, kv, q, out, pool);
}

void flash_prefill(const FlashShape& s, const FlashSource& src, const float* q, float* out,
                   ThreadPool& pool) {
  run_items(s, nullptr, false, &src, q, out, pool);
}

// Only called for a source with a band.
void FlashSource::exact_rows(int, int64_t, int, float*, float*) const {}

void attention_prefill_ref(const FlashShape& s, const KvRowsView<uint16_t>& kv, const float* q, float* out) {
  ref(s, kv, q, out);
}
void attention_prefill_ref(const FlashShape& s, const KvRowsView<float>& kv, const float* q, float* out) {
  ref(s, kv, q, out);
}

}  // namespace qleap
