// One loaded model in the server: tokenizer, chat template, an Engine with N slots, a bounded
// queue of jobs and one inference thread. The thread admits queued jobs into free slots (prefill of
// each new job runs as its own chunk, reusing the longest cached prefix among free slots), then
// runs one decode step for all active slots together (continuous batching). Each job streams its
// text through a mutex/condvar channel that the HTTP thread drains.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "model/model.h"
#include "moe/expert_flow.h"
#include "runtime/engine.h"
#include "runtime/generation.h"
#include "sampling/logprobs.h"
#include "server/metrics.h"
#include "server/model_store.h"
#include "server/request.h"
#include "tokenizer/tokenizer.h"

namespace qleap::server {

using qleap::TokenFilter;  // runtime/generation.h

struct Job {
  enum Kind { kGenerate, kEmbed } kind = kGenerate;
  // Input (set before submit).
  std::vector<int32_t> prompt;
  GenOptions opt;
  std::unique_ptr<TokenFilter> filter;
  std::vector<std::vector<int32_t>> inputs;  // kEmbed

  // Output channel, guarded by mu.
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::string> pieces;  // generated text not yet taken, one entry per token
  bool done = false;
  std::string done_reason;  // "stop", "length", "cancel"
  std::string error;        // non-empty: the job failed
  int prompt_tokens = 0;    // evaluated (after truncation)
  int cached_tokens = 0;    // reused from the slot's cache
  int truncated_tokens = 0;
  int gen_tokens = 0;
  double prompt_s = 0, gen_s = 0;
  std::vector<int32_t> output;         // generated token ids
  std::vector<LogprobEntry> logprobs;  // per generated token when opt.logprobs (appended before its text)
  std::vector<std::vector<float>> embeddings;

  std::atomic<bool> cancelled{false};
  std::chrono::steady_clock::time_point created = std::chrono::steady_clock::now();

  // Waits up to `timeout` for text or the end; moves pending pieces into out. Returns true once the
  // job is done and all its text has been taken.
  bool wait_take(std::vector<std::string>& out, std::chrono::milliseconds timeout);
  // Blocks until done; returns all remaining text.
  std::string wait_all();
};

struct RunnerOptions {
  int n_ctx = 0;
  int n_threads = 0;
  std::string kv_type = "f16";
  int n_batch = 512;
  int gpu_layers = 0;  // as `qleap run --gpu-layers` (filled in by configure from the planner)
  std::string kv_calibration_dir;
  int parallel = 4;
  int max_queue = 128;
  // Called with the model path before loading, to fill in what was left to the planner (serve).
  std::function<void(const std::string& path, RunnerOptions& opt)> configure;
  // Called once the model is loaded: the ExpertFlow runtime for its MoE layers (serve
  // --expert-cache), or null (dense model, or experts stay on the CPU). max_rows: rows per forward.
  std::function<std::shared_ptr<ExpertFlow>(const Model& model, int max_rows)> expert_flow;
};

struct RunnerStatus {
  std::string name;
  int parallel = 0;
  int active_slots = 0;
  int queue_depth = 0;
  int n_ctx = 0;
  std::string kv_type;
  size_t kv_bytes_used = 0;
  size_t kv_bytes_allocated = 0;
  size_t kv_bytes_per_token = 0;
  double kv_compression_vs_f16 = 1.0;
  size_t kv_bytes_used_f16 = 0;  // what the cached tokens would take in an f16 cache
  std::vector<int> slot_tokens;  // tokens in each slot's KV cache
  std::vector<bool> slot_busy;   // the slot serves a request now
  double prefill_tok_s = 0;      // the last prompt's prefill (0: none yet)
  double decode_tok_s = 0;       // decode steps of the last few seconds of decoding (0: none yet)
  double decode_idle_s = -1;     // seconds since the last decode step (< 0: none yet)
  double expert_hit_rate = -1;   // share of routed experts computed on the expert tier; < 0: no ExpertFlow
  double expert_prefetch_recall = -1;  // prefetched experts the routing then chose; < 0: none predicted
};

class ModelRunner {
 public:
  // Loads the model and starts the inference thread. Throws on load failure.
  ModelRunner(const ModelInfo& info, const RunnerOptions& opt, Metrics& metrics);
  ~ModelRunner();
  ModelRunner(const ModelRunner&) = delete;
  ModelRunner& operator=(const ModelRunner&) = delete;

  const ModelInfo& info() const { return info_; }
  const Tokenizer& tokenizer() const { return tok_; }
  const Model& model() const { return *model_; }
  int n_ctx() const { return n_ctx_; }
  double load_seconds() const { return load_s_; }
  bool has_chat_template() const { return !info_.chat_template.empty(); }

  // Prompt text to tokens (BOS when the tokenizer wants one; special tokens parsed when special).
  std::vector<int32_t> tokenize(const std::string& text, bool special) const;
  // Chat messages (+ tools, may be null) through the model's template; RequestError(400) on a
  // template error.
  std::vector<int32_t> render_chat(const nlohmann::json& messages, const nlohmann::json& tools) const;
  std::string render_chat_text(const nlohmann::json& messages, const nlohmann::json& tools) const;

  // Queues a job; false when the queue is full (the caller answers 503).
  bool submit(const std::shared_ptr<Job>& job);
  RunnerStatus status() const;
  // Jobs queued or running.
  int busy() const;

  // Scheduler bookkeeping (guarded by the scheduler's mutex).
  int leases = 0;
  std::chrono::steady_clock::time_point last_used = std::chrono::steady_clock::now();
  std::chrono::system_clock::time_point expires_at = std::chrono::system_clock::time_point::max();
  bool unload_when_idle = false;

 private:
  struct Slot;
  void loop();
  void start(Slot& s);
  void step(Slot& s, const float* logits);
  void emit(Slot& s, const std::string& text);
  void finish(Slot& s, const std::string& reason, const std::string& error = "");

  ModelInfo info_;
  RunnerOptions opt_;
  Metrics& metrics_;
  double load_s_ = 0;
  std::shared_ptr<const Model> model_;
  Tokenizer tok_;
  std::unique_ptr<Engine> dec_;
  std::shared_ptr<ExpertFlow> flow_;           // used by the loop thread only, which ~ModelRunner joins first
  std::atomic<double> expert_hit_rate_{-1.0};  // flow_'s, copied by the loop thread after each step
  std::atomic<double> expert_recall_{-1.0};
  int n_ctx_ = 0;
  std::vector<std::unique_ptr<Slot>> slots_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> queue_;
  std::atomic<int> active_{0};
  std::atomic<size_t> kv_used_{0};
  // Live figures for status(), written by the loop thread (publish_kv(), the decode timer).
  void publish_kv();
  mutable std::mutex stats_mu_;
  std::vector<int> slot_tokens_;
  double prefill_tok_s_ = 0;
  std::deque<std::tuple<std::chrono::steady_clock::time_point, int, double>>
      decode_steps_;  // when, tokens, s
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace qleap::server
