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
  // without a value; nullptr: none.
  const float* sinks = nullptr;
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

// Reference (tests): two-pass softmax per query in double precision.
void attention_prefill_ref(const FlashShape& s, const KvRowsView<uint16_t>& kv, const float* q, float* out);
void attention_prefill_ref(const FlashShape& s, const KvRowsView<float>& kv, const float* q, float* out);

namespace flash_detail {
// One work item: query block qb (tokens [qb * q_block, ...)) of kv head g. Per ISA (impl header).
using ItemFn = void (*)(const FlashShape& s, const void* kv, bool f16, int q_block, int qb, int g,
                        const float* q, float* out);
ItemFn item_avx2();
ItemFn item_avx512();
// AMX: the whole call (tile layouts of K and V shared by all work items); head_dim % 32 == 0.
void run_amx(const FlashShape& s, const void* kv, bool f16, const float* q, float* out, ThreadPool& pool);
}  // namespace flash_detail

}  // namespace qleap
