// An inference session: one sequence's KV cache, scratch buffers and thread pool over a shared,
// read-only Model. eval() appends tokens and returns logits.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend/cpu/ops.h"
#include "core/thread_pool.h"
#include "kv/kv_cache.h"
#include "model/blocks.h"
#include "model/model.h"
#include "placement/placement.h"

namespace qleap {
namespace cuda {
class GpuLayers;
}

struct SessionOptions {
  int n_ctx = 0;      // 0: min(model context_length, 4096)
  int n_threads = 0;  // 0: default_thread_count()
  std::string kv_type = "f16";
  int n_batch = 512;  // prefill chunk (tokens per matmul)
  int gpu_layers = 0;  // layers run on the CUDA device (like llama.cpp -ngl); < 0: all
};

class Session {
 public:
  // Throws InvalidArgument on bad options (unknown kv type, non-positive sizes).
  Session(std::shared_ptr<const Model> model, const SessionOptions& opt);
  ~Session();

  // Evaluates tokens at positions n_past() .. n_past() + n - 1 (prefill in chunks of n_batch) and
  // returns the logits of the last token (n_vocab floats), or of every token (n x n_vocab) when
  // all_logits. Throws InvalidArgument when the tokens do not fit in the context, a token id is out
  // of range, or tokens is empty. The reference stays valid until the next eval().
  const std::vector<float>& eval(const std::vector<int32_t>& tokens, bool all_logits = false);

  int n_past() const { return n_past_; }
  int n_ctx() const { return n_ctx_; }
  int n_vocab() const { return model_->n_vocab(); }
  int n_batch() const { return n_batch_; }
  // Forgets all tokens (the cache is overwritten as new tokens arrive).
  void reset() { n_past_ = 0; }
  // Keeps the first n_past tokens (0 <= n_past <= n_past()); throws InvalidArgument otherwise.
  void truncate(int n_past);
  // Benchmarks only: makes the first n positions hold random keys and values (N(0, 1) plus a fixed
  // per-channel offset, like real keys) in every layer, as if n tokens had been evaluated, without
  // computing them. Decode cost over the cache does not depend on the values. Throws
  // InvalidArgument when n is outside [0, n_ctx).
  void fill_random_context(int n, uint64_t seed);

  // Routing decisions of MoE layers go to `o` (nullptr: none) during later eval() calls; the
  // observer must outlive them.
  void set_moe_observer(MoeObserver* o) { moe_observer_ = o; }
  // Routed experts of the CPU layers run through `e` (ExpertFlow; nullptr: the plain CPU loop)
  // during later eval() calls; it must outlive them.
  void set_moe_executor(MoeExecutor* e) { moe_executor_ = e; }

  const KvCache& kv() const { return *kv_; }
  ThreadPool& pool() { return pool_; }
  const Model& model() const { return *model_; }
  const Placement& placement() const { return placement_; }

 private:
  // m tokens at positions pos0..; writes logits of every row (all) or only the last row to out
  // when out is non-null.
  void forward_chunk(const int32_t* tokens, int m, int pos0, float* out, bool all);

  std::shared_ptr<const Model> model_;
  int n_ctx_ = 0;
  int n_batch_ = 0;
  int n_past_ = 0;
  ThreadPool pool_;
  std::unique_ptr<KvCache> kv_;
  RopeTable rope_;
  ForwardScratch scratch_;
  std::vector<float> logits_;
  Placement placement_;
  std::unique_ptr<cuda::GpuLayers> gpu_;  // layers [placement_.first_gpu_layer(), n_layers) when any
  MoeObserver* moe_observer_ = nullptr;
  MoeExecutor* moe_executor_ = nullptr;
};

}  // namespace qleap
