// Key/value cache of the attention layers. Attention is a method of the cache so that compressed
// formats can compute scores and weighted sums directly on their own storage (no dequantized copy).
#pragma once
#include <cstddef>
#include <memory>
#include <string>

#include "core/thread_pool.h"

namespace qleap {

struct KvShape {
  int n_layers = 0;
  int n_ctx = 0;  // positions per layer
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int kv_dim() const { return n_kv_heads * head_dim; }
};

class KvCache {
 public:
  virtual ~KvCache();
  // Stores n_tokens rows of keys and values (each n_kv_heads * head_dim floats) at positions
  // [pos, pos + n_tokens) of a layer.
  virtual void store(int layer, int pos, int n_tokens, const float* k, const float* v) = 0;
  // Causal attention for n_q query tokens at positions pos0 .. pos0 + n_q - 1 (each attends to keys
  // [0, its pos]); q and out are n_q x n_heads * head_dim. GQA: head h reads kv head
  // h / (n_heads / n_kv_heads). Scores are q.k * scale.
  virtual void attend(int layer, int pos0, int n_q, const float* q, float* out, float scale,
                      ThreadPool& pool) = 0;
  // Bytes per position over all layers, K and V: exactly what is allocated per token.
  virtual size_t bytes_per_token() const = 0;
  virtual size_t allocated_bytes() const = 0;
  virtual const char* type_name() const = 0;
  const KvShape& shape() const { return shape_; }
  // Pool that store() may use for work worth threading (quantizing a prefill chunk); null: none.
  // The owner calls store() from outside the pool's jobs.
  void set_pool(ThreadPool* pool) { pool_ = pool; }

 protected:
  explicit KvCache(const KvShape& shape) : shape_(shape) {}
  KvShape shape_;
  ThreadPool* pool_ = nullptr;
};

// type: "f32" (reference), "f16", "q8_0", "q4_0" (llama.cpp-style baselines), or TurboQuant "tq2".."tq4" /
// "kXvY" (kv_turboquant.h). Throws InvalidArgument on an unknown type or bad shape.
std::unique_ptr<KvCache> make_kv_cache(const std::string& type, const KvShape& shape);

}  // namespace qleap
