// Several sequences (slots) over one shared, read-only Model, for the server: each slot has its own
// KV cache; a decode step of all active slots goes through the weights once (m rows, each row
// attending to its own slot's cache at its own position), a prompt prefill runs as its own chunk.
//
// Row results do not depend on which other rows share a step (every per-row operation is row-local
// and the matmul kernels compute each activation row independently; tests check bit equality), so
// greedy output is the same whether a request runs alone or next to others.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "kv/kv_cache.h"
#include "model/blocks.h"
#include "model/model.h"

namespace qleap {

struct BatchOptions {
  int n_ctx = 0;      // per slot; 0: min(model context_length, 4096)
  int n_threads = 0;  // 0: default_thread_count()
  std::string kv_type = "f16";
  int n_batch = 512;  // prefill chunk
  int n_slots = 1;
};

class BatchDecoder {
 public:
  // Throws InvalidArgument on bad options.
  BatchDecoder(std::shared_ptr<const Model> model, const BatchOptions& opt);

  int n_slots() const { return int(slots_.size()); }
  int n_ctx() const { return n_ctx_; }
  int n_batch() const { return n_batch_; }
  int n_vocab() const { return model_->n_vocab(); }
  int n_past(int slot) const { return slots_.at(size_t(slot)).n_past; }
  // Keeps the first n tokens of a slot (0 <= n <= n_past).
  void truncate(int slot, int n);

  // Evaluates tokens at the slot's n_past.. (chunks of n_batch) and returns the last token's logits
  // (valid until the next call). Throws InvalidArgument on overflow / bad ids / no tokens.
  const float* prefill(int slot, const int32_t* tokens, int n);
  // One token for each of m distinct slots in one pass; returns m x n_vocab logits (row i for
  // slots[i]). m <= n_slots.
  const float* decode(const int* slots, const int32_t* tokens, int m);
  // Runs tokens through a slot from position 0 (the slot is reset) and returns the mean over tokens
  // of the final hidden states (after the output norm), L2-normalised. n_embd floats.
  std::vector<float> embed(int slot, const std::vector<int32_t>& tokens);

  const KvCache& kv(int slot) const { return *slots_.at(size_t(slot)).kv; }
  size_t kv_bytes_per_token() const { return slots_[0].kv->bytes_per_token(); }
  size_t kv_bytes_allocated() const;
  size_t kv_bytes_used() const;
  const std::string& kv_type() const { return kv_type_; }
  const Model& model() const { return *model_; }
  ThreadPool& pool() { return pool_; }
  // Runs the routed experts of MoE layers (moe/expert_flow.h) instead of the CPU loop; null: CPU.
  void set_moe_executor(MoeExecutor* e) { moe_executor_ = e; }

 private:
  struct Slot {
    std::unique_ptr<KvCache> kv;
    int n_past = 0;
  };
  void check_tokens(const int32_t* tokens, int n) const;
  // Embeds m tokens into scratch.x and runs every layer.
  void run_layers(const int32_t* tokens, int m, const LayerCtx& ctx);

  std::shared_ptr<const Model> model_;
  int n_ctx_ = 0;
  int n_batch_ = 0;
  std::string kv_type_;
  ThreadPool pool_;
  MoeExecutor* moe_executor_ = nullptr;
  std::vector<Slot> slots_;
  RopeTable rope_;
  ForwardScratch scratch_;
  std::vector<RowSeq> rows_;
  std::vector<float> logits_;
};

}  // namespace qleap
