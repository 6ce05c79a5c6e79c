// One sequence over a shared, read-only Model: the one-slot batch of the Engine (runtime/engine.h),
// for the CLI commands. eval() appends tokens and returns logits.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/engine.h"

namespace qleap {

struct SessionOptions {
  int n_ctx = 0;      // 0: default_context(model)
  int n_threads = 0;  // 0: default_thread_count()
  std::string kv_type = "f16";
  int n_batch = 512;                    // prefill chunk (tokens per matmul)
  int gpu_layers = 0;                   // layers run on the CUDA device (like llama.cpp -ngl); < 0: all
  std::string kv_calibration_dir = "";  // see EngineOptions
  bool calibrate_kv = true;             // see EngineOptions
  bool repack_experts = true;           // see EngineOptions
};

class Session {
 public:
  // Throws InvalidArgument on bad options (unknown kv type, non-positive sizes).
  Session(std::shared_ptr<const Model> model, const SessionOptions& opt);

  // Evaluates tokens at positions n_past() .. n_past() + n - 1 (prefill in chunks of n_batch) and
  // returns the logits of the last token (n_vocab floats), or of every token (n x n_vocab) when
  // all_logits. Throws InvalidArgument when the tokens do not fit in the context, a token id is out
  // of range, or tokens is empty. The reference stays valid until the next eval().
  const std::vector<float>& eval(const std::vector<int32_t>& tokens, bool all_logits = false);

  int n_past() const { return engine_.n_past(0); }
  int n_ctx() const { return engine_.n_ctx(); }
  int n_vocab() const { return engine_.n_vocab(); }
  int n_batch() const { return engine_.n_batch(); }
  // Forgets all tokens (a new sequence).
  void reset() { engine_.reset(0); }
  // Keeps the first n_past tokens (0 <= n_past <= n_past()), or fewer (Engine::trim: a DeltaNet
  // checkpoint, or 0 when a sliding-window ring could not keep them); returns how many it kept.
  // Throws InvalidArgument outside that range.
  int truncate(int n_past) { return engine_.trim(0, n_past); }
  // Benchmarks only: see Engine::fill_random_context.
  void fill_random_context(int n, uint64_t seed) { engine_.fill_random_context(0, n, seed); }

  void set_moe_observer(MoeObserver* o) { engine_.set_moe_observer(o); }
  void set_moe_executor(MoeExecutor* e) { engine_.set_moe_executor(e); }

  KvUsage kv_usage() const { return engine_.kv_usage(); }
  // The cache of the CPU layers (every layer's when nothing is offloaded).
  const KvCache& kv() const;
  ThreadPool& pool() { return engine_.pool(); }
  const Model& model() const { return engine_.model(); }
  const Placement& placement() const { return engine_.placement(); }
  Engine& engine() { return engine_; }

 private:
  Engine engine_;
};

EngineOptions engine_options(const SessionOptions& o, int n_slots = 1);

}  // namespace qleap
