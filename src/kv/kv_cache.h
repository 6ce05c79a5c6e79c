// Key/value cache of the attention layers. Attention is a method of the cache so that compressed
// formats can compute scores and weighted sums directly on their own storage (no dequantized copy).
//
// The cache is a small protocol with a lifecycle, the same for every storage type and device:
//   store / attend   keys and values in, causal attention out (positions given by a KvSpan);
//   reset()          forget the sequence (a slot starts a new conversation); calibration is kept;
//   trim(n)          keep positions [0, n) (prefix reuse), when trims_exactly(n) says it loses nothing;
//   calibrate(c)     what the cache learns about the model before it holds anything (TurboQuant's
//                    centering and key scales), from a calibration pass over a fixed text, so it
//                    never depends on which request came first or how long it was;
//   stats()          sizes and state, for status pages and memory accounting.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "turboquant/tq_sensitivity.h"

namespace qleap {

struct KvShape {
  int n_layers = 0;
  int n_ctx = 0;  // positions per layer
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  // A cache of one segment of a model's layers (runtime/engine.h): its layer 0 is model layer
  // first_layer of model_layers (0: n_layers). Per-layer choices (TurboQuant's rotations, per-head
  // rates, edge layers) follow the model layer, so a segment's cache equals that slice of a whole one.
  int first_layer = 0;
  int model_layers = 0;
  // Sliding-window attention (gemma2/3, phi3): a query at position p of layer l sees only the last
  // window(l) positions, p - window(l) + 1 .. p, so the layer keeps a ring of ring_size(l) positions
  // (position p in slot p % ring_size) instead of n_ctx. Empty: every layer attends to all positions.
  std::vector<int> windows = {};  // per layer of this cache (0: full attention)
  // The most positions one store / attend call covers (the engine's prefill chunk): a ring must also
  // hold the chunk being attended. 0: n_ctx (rings then only help when the window is much smaller).
  // Sliding-window layers take at most kWindowChunk of them per call (chunk_tokens): the attention
  // blocks split a longer chunk there, so that their rings stay close to the window.
  int max_tokens = 0;
  static constexpr int kWindowChunk = 64;
  // Attention logit soft-capping (gemma2): scores become softcap * tanh(score / softcap). 0: off.
  float softcap = 0;
  // Attention sinks (gpt-oss): a learned logit per layer and query head that joins each query's softmax
  // denominator without a value, [layer][n_heads] for the layers of this cache; -inf: none for that
  // head. Empty: no sinks.
  std::vector<float> attn_sinks = {};
  // Layer's sinks (n_heads floats) or nullptr.
  const float* sinks(int layer) const {
    return attn_sinks.empty() ? nullptr : attn_sinks.data() + size_t(layer) * size_t(n_heads);
  }
  // The values stored are the keys themselves (MLA's latent, model/mla_block.h: store() gets v == k). A
  // hint: a cache may then keep each row once (the block and float formats do; TurboQuant keeps one key
  // record per position and reads the values from it; the device caches store both).
  bool values_are_keys = false;
  int kv_dim() const { return n_kv_heads * head_dim; }
  int q_dim() const { return n_heads * head_dim; }
  int total_layers() const { return model_layers > 0 ? model_layers : n_layers; }
  int window(int layer) const { return windows.empty() ? 0 : windows[size_t(layer)]; }
  // The most positions one store / attend call may cover on a layer: max_tokens (0: n_ctx), at most
  // kWindowChunk on a sliding-window layer whose ring is smaller than n_ctx.
  int chunk_tokens(int layer) const;
  // Positions held for a layer: n_ctx, or window + chunk - 1 when that is smaller (chunk: max_tokens,
  // at most kWindowChunk).
  int ring_size(int layer) const;
  // Whether every layer still holds what queries after a trim to n_keep read, when positions
  // [0, n_past) were stored: a ring has overwritten positions older than n_past - ring_size.
  bool can_trim(int n_keep, int n_past) const;
  // The first position a query at pos sees on a layer.
  int first_key(int layer, int pos) const {
    const int w = window(layer);
    return w > 0 && pos - w + 1 > 0 ? pos - w + 1 : 0;
  }
};

// The positions a store or attend call covers: n tokens at pos0 .. pos0 + n - 1. Device caches read
// pos0 from device memory at dev_pos0 when it is given (a recorded CUDA graph replays with new
// positions there); host caches use pos0.
struct KvSpan {
  int pos0 = 0;
  int n = 0;
  const int32_t* dev_pos0 = nullptr;
};

// Sums over the tokens of a calibration text, per layer (the text's first token, an attention sink
// with atypical keys, is left out of the key and value sums): enough for the mean and the centered
// energy of every key and value channel, and the energy of the queries that read each key channel.
struct KvCalibration {
  int n_layers = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;
  int64_t n_tokens = 0;                              // tokens in the K / V sums
  int64_t n_queries = 0;                             // tokens in the query sums
  std::vector<double> sum_k, sum_k2, sum_v, sum_v2;  // [layer][kv_dim]
  std::vector<double> sum_q2;  // [layer][kv_dim]: channel i of kv head g summed over the group's query heads
  // Per-head TurboQuant sensitivity measured on the calibration text (tq_measure_sensitivity), one per
  // exact-window length measured (e.g. 0 and 64): what TurboQuant caches spend their bits by when no
  // per-head rates are given. Empty: none (uniform rates).
  std::vector<TqSensitivity> tq_sensitivity;
  bool empty() const { return n_tokens == 0; }
  int kv_dim() const { return n_kv_heads * head_dim; }
  // Mean key / value of channel c (kv_dim index) of a layer.
  double mean_k(int layer, int c) const;
  double mean_v(int layer, int c) const;
  // Sum over the tokens of (x - mean)^2 for channel c.
  double centered_energy_k(int layer, int c) const;
  double centered_energy_v(int layer, int c) const;
  // Throws InvalidArgument when the calibration was made for another shape.
  void check(const KvShape& s) const;
};

struct KvStats {
  std::string type;
  size_t bytes_per_token = 0;  // per position, all layers, K and V
  size_t allocated_bytes = 0;  // n_ctx positions plus fixed rows
  size_t fixed_bytes = 0;      // not per position (TurboQuant's exact sink and window rows)
  bool calibrated = false;     // a calibration was applied (types that use one)
};

class KvCache {
 public:
  virtual ~KvCache();
  // Stores s.n rows of keys and values (each n_kv_heads * head_dim floats, in the memory of the
  // device the cache lives on) at positions s.pos0.. of a layer.
  virtual void store(int layer, const KvSpan& s, const float* k, const float* v) = 0;
  // Causal attention for s.n query tokens at positions s.pos0.. (each attends to keys [0, its pos]);
  // q and out are s.n x n_heads * head_dim. GQA: head h reads kv head h / (n_heads / n_kv_heads).
  // Scores are q.k * scale. pool: the CPU threads (device caches ignore it).
  virtual void attend(int layer, const KvSpan& s, const float* q, float* out, float scale,
                      ThreadPool& pool) = 0;

  // Host conveniences.
  void store(int layer, int pos, int n_tokens, const float* k, const float* v) {
    store(layer, KvSpan{pos, n_tokens, nullptr}, k, v);
  }
  void attend(int layer, int pos0, int n_q, const float* q, float* out, float scale, ThreadPool& pool) {
    attend(layer, KvSpan{pos0, n_q, nullptr}, q, out, scale, pool);
  }

  // Lifecycle (see the top of this file). The defaults suit formats that hold nothing beyond the
  // positions themselves, which are overwritten as new tokens arrive. Before trim(n_keep), the owner
  // checks shape().can_trim (sliding-window layers cannot bring back overwritten positions).
  virtual void reset() {}
  virtual void trim(int n_keep) { (void)n_keep; }
  // Whether trim(n_keep) leaves the cache as one that stored only positions [0, n_keep) would be; when
  // not, the owner starts the sequence over instead (Engine::restorable), so that reusing a prefix
  // never changes what the model computes.
  virtual bool trims_exactly(int n_keep) const {
    (void)n_keep;
    return true;
  }
  virtual bool wants_calibration() const { return false; }
  virtual void calibrate(const KvCalibration& c) { (void)c; }
  virtual KvStats stats() const;

  // Bytes per position over all layers, K and V: exactly what is allocated per token.
  virtual size_t bytes_per_token() const = 0;
  virtual size_t allocated_bytes() const = 0;
  virtual const char* type_name() const = 0;
  // The device the cache's memory is on: true for host memory.
  virtual bool on_host() const { return true; }
  const KvShape& shape() const { return shape_; }
  // Pool that store() may use for work worth threading (quantizing a prefill chunk); null: none.
  // The owner calls store() from outside the pool's jobs.
  void set_pool(ThreadPool* pool) { pool_ = pool; }

 protected:
  explicit KvCache(const KvShape& shape) : shape_(shape) {}
  KvShape shape_;
  ThreadPool* pool_ = nullptr;
};

// type: "f32" (reference), "f16", "q8_0", "q4_0" (llama.cpp-style blocks), "q8_0r", "q4_0r" (the same
// blocks after a random rotation of each head, like current llama.cpp: the honest baselines), or
// TurboQuant "tq2".."tq4" / "kXvY" (kv_turboquant.h). Host memory. Throws InvalidArgument on an unknown type
// or bad shape.
std::unique_ptr<KvCache> make_kv_cache(const std::string& type, const KvShape& shape);
// Throws InvalidArgument on a bad shape (what make_kv_cache checks first; device caches use it too).
void check_kv_shape(const KvShape& s);
// Throws InvalidArgument unless n positions from pos of a layer fit the context, and the layer's ring
// (sliding window) can hold them while they are attended.
void check_kv_span(const KvShape& s, int layer, int pos, int n);

}  // namespace qleap
