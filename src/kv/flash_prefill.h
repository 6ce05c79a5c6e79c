// Causal attention for a block of prompt tokens (prefill), tiled flash-style: queries are taken in
// blocks (all query heads of one kv head, for several tokens), keys and values in blocks of
// kFlashKeys, with an online softmax, so every key/value row is converted and read once per query
// block instead of once per query. The f16 and f32 KV caches call it from attend(); decode (one
// query) keeps the caches' own split-keys path.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/thread_pool.h"

namespace qleap {

// Keys/values of one layer: kv head g's row at position p starts at k + g * head_stride +
// p * pos_stride (elements; same strides for v).
template <class T>
struct KvRowsView {
  const T* k = nullptr;
  const T* v = nullptr;
  size_t head_stride = 0;
  size_t pos_stride = 0;
};

struct FlashShape {
  int n_q = 0;   // query tokens, at positions pos0 .. pos0 + n_q - 1
  int pos0 = 0;  // each query sees keys [0, its position]
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  float scale = 1.0f;  // scores are q.k * scale
  // Attention sinks (KvShape::attn_sinks): n_heads logits that join each query's softmax denominator
  // without a value; nullptr: none. With sinks_stride > 0, token t's are at sinks + t * sinks_stride
  // (a cache that stores centered keys moves each token's sinks by its own q.mu).
  const float* sinks = nullptr;
  size_t sinks_stride = 0;
  // With sinks: each query row's softmax weight on its sink (n_q x n_heads), when given.
  float* sink_share = nullptr;
  // Sliding window: a query at position p sees keys [p - window + 1, p] (0: [0, p]). Sources only.
  int window = 0;
};

// Keys and values that a cache hands over as float rows per block of positions instead of storing
// them as rows (TurboQuant decodes its records): the tiled kernel asks once per block of keys and
// block of queries. Rows live in whatever space the source fills (the caller turns queries and
// outputs into and out of it).
struct FlashSource {
  virtual ~FlashSource() = default;
  // Rows (head_dim floats each, packed) of kv head g for positions [j0, j0 + n).
  virtual void rows(int g, int64_t j0, int n, float* k, float* v) const = 0;
  // An exact band: a query at position p reads positions [max(p + 1 - band, band_lo), min(p + 1,
  // band_hi)) from exact_rows instead of rows (band 0: none). Positions outside [band_lo, band_hi)
  // may be left as anything finite.
  int band = 0;
  int64_t band_lo = 0, band_hi = 0;
  virtual void exact_rows(int g, int64_t j0, int n, float* k, float* v) const;
};

// False when QLEAP_FLASH_PREFILL=0 (A/B measurements against the per-query path).
bool flash_prefill_enabled();
// Whether f16 prompt blocks may use the AMX kernel (split bf16 products, f16 precision): on unless
// QLEAP_AMX_ATTENTION=0. Tests switch it to check both kernels.
bool flash_prefill_amx_enabled();
void set_flash_prefill_amx(bool on);

// Whether the tiled kernel handles this shape at the current ISA level (otherwise the caller uses
// its per-query path).
bool flash_prefill_supported(const FlashShape& s);

// q and out: n_q x n_heads x head_dim. GQA: head h reads kv head h / (n_heads / n_kv_heads).
void flash_prefill(const FlashShape& s, const KvRowsView<uint16_t>& kv, const float* q, float* out,
                   ThreadPool& pool);
void flash_prefill(const FlashShape& s, const KvRowsView<float>& kv, const float* q, float* out,
                   ThreadPool& pool);

// The same over rows from a source (avx2 / avx512 kernels only: flash_prefill_supported first). q and
// out may be the same buffer: a work item reads its query rows before it writes their outputs.
void flash_prefill(const FlashShape& s, const FlashSource& src, const float* q, float* out, ThreadPool& pool);

// Reference (tests): two-pass softmax per query in double precision.
void attention_prefill_ref(const FlashShape& s, const KvRowsView<uint16_t>& kv, const float* q, float* out);
void attention_prefill_ref(const FlashShape& s, const KvRowsView<float>& kv, const float* q, float* out);

namespace flash_detail {
// One work item: query block qb (tokens [qb * q_block, ...)) of kv head g. Per ISA (impl header).
// kv: a KvRowsView<uint16_t> (f16), KvRowsView<float>, or with src a FlashSource (kv unused).
using ItemFn = void (*)(const FlashShape& s, const void* kv, bool f16, const FlashSource* src, int q_block,
                        int qb, int g, const float* q, float* out);
ItemFn item_avx2();
ItemFn item_avx512();
// AMX: the whole call (tile layouts of K and V shared by all work items); head_dim % 32 == 0.
void run_amx(const FlashShape& s, const void* kv, bool f16, const float* q, float* out, ThreadPool& pool);
}  // namespace flash_detail

}  // namespace qleap
