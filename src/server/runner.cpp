#include "server/runner.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <optional>

#include "core/timer.h"
#include "sampling/sampler.h"
#include "tokenizer/chat_template.h"

namespace qleap::server {

using nlohmann::json;

bool Job::wait_take(std::vector<std::string>& out, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lk(mu);
  cv.wait_for(lk, timeout, [&] { return done || !pieces.empty(); });
  for (auto& p : pieces) out.push_back(std::move(p));
  pieces.clear();
  return done;
}

std::string Job::wait_all() {
  std::unique_lock<std::mutex> lk(mu);
  cv.wait(lk, [&] { return done; });
  std::string out;
  for (auto& p : pieces) out += p;
  pieces.clear();
  return out;
}

struct ModelRunner::Slot {
  int id = 0;
  std::shared_ptr<Job> job;
  std::vector<int32_t> cached;  // tokens in this slot's KV cache
  int prefilled = 0;            // leading cached tokens computed by prompt prefill (not decode)
  std::optional<Generation> gen;
  int32_t next = -1;  // sampled, not yet evaluated
  int n_ctx = 0;      // effective context of the current job
  Stopwatch gen_clock;
  std::atomic<bool> busy{false};  // job != null, readable by status()
};

ModelRunner::ModelRunner(const ModelInfo& info, const RunnerOptions& opt, Metrics& metrics)
    : info_(info), opt_(opt), metrics_(metrics) {
  Stopwatch sw;
  if (opt_.configure) opt_.configure(info.path, opt_);
  model_ = load_model(info.path);
  tok_ = Tokenizer::from_gguf(model_->file());
  EngineOptions eo;
  eo.n_ctx = opt_.n_ctx;
  eo.n_threads = opt_.n_threads;
  eo.kv_type = opt_.kv_type;
  eo.n_batch = opt_.n_batch;
  eo.n_slots = std::max(1, opt_.parallel);
  eo.gpu_layers = opt_.gpu_layers;
  eo.kv_calibration_dir = opt_.kv_calibration_dir;
  eo.repack_experts = !opt_.expert_flow;  // the flow computes experts from its own copies
  dec_ = std::make_unique<Engine>(model_, eo);
  if (opt_.expert_flow) {
    flow_ = opt_.expert_flow(*model_, std::max(opt_.n_batch, dec_->n_slots()));
    dec_->set_moe_executor(flow_.get());
  }
  n_ctx_ = dec_->n_ctx();
  for (int i = 0; i < dec_->n_slots(); ++i) {
    slots_.push_back(std::make_unique<Slot>());
    slots_.back()->id = i;
  }
  load_s_ = sw.elapsed();
  thread_ = std::thread([this] { loop(); });
}

ModelRunner::~ModelRunner() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::vector<int32_t> ModelRunner::tokenize(const std::string& text, bool special) const {
  std::vector<int32_t> ids = tok_.encode(text, tok_.wants_bos(), special);
  if (ids.empty() && tok_.bos() >= 0) ids.push_back(tok_.bos());
  return ids;
}

std::string ModelRunner::render_chat_text(const json& messages, const json& tools) const {
  const std::string& tmpl =
      info_.chat_template.empty() ? default_chat_template(info_.family) : info_.chat_template;
  json extra = {{"bos_token", tok_.bos() >= 0 ? tok_.token_to_piece(tok_.bos()) : ""},
                {"eos_token", tok_.eos() >= 0 ? tok_.token_to_piece(tok_.eos()) : ""}};
  if (tools.is_array() && !tools.empty()) extra["tools"] = tools;
  try {
    return apply_chat_template(tmpl, messages, true, extra);
  } catch (const std::exception& e) {
    throw RequestError(400, fmt::format("chat template error: {}", e.what()));
  }
}

std::vector<int32_t> ModelRunner::render_chat(const json& messages, const json& tools) const {
  std::vector<int32_t> ids = tok_.encode(render_chat_text(messages, tools), tok_.wants_bos(), true);
  // Templates that write the BOS text themselves would otherwise get it twice.
  if (ids.size() >= 2 && ids[0] == tok_.bos() && ids[1] == tok_.bos()) ids.erase(ids.begin());
  if (ids.empty() && tok_.bos() >= 0) ids.push_back(tok_.bos());
  return ids;
}

bool ModelRunner::submit(const std::shared_ptr<Job>& job) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    // max_queue counts requests waiting for a slot: free slots take requests on top of it.
    const int free_slots = std::max(0, dec_->n_slots() - active_.load());
    if (stop_ || int(queue_.size()) >= opt_.max_queue + free_slots) return false;
    queue_.push_back(job);
  }
  cv_.notify_all();
  return true;
}

int ModelRunner::busy() const {
  std::lock_guard<std::mutex> lk(mu_);
  return int(queue_.size()) + active_.load();
}

RunnerStatus ModelRunner::status() const {
  RunnerStatus s;
  s.name = info_.name;
  s.parallel = dec_->n_slots();
  s.active_slots = active_.load();
  {
    std::lock_guard<std::mutex> lk(mu_);
    s.queue_depth = int(queue_.size());
  }
  s.n_ctx = n_ctx_;
  const KvUsage u = dec_->kv_usage();
  s.kv_type = u.type;
  s.kv_bytes_used = kv_used_.load();
  s.kv_bytes_allocated = u.allocated_bytes;
  s.kv_bytes_per_token = u.bytes_per_token;
  const HParams& hp = model_->hparams();
  const double f16 = 2.0 * 2.0 * hp.kv_layers() * hp.kv_dim();
  s.kv_compression_vs_f16 = s.kv_bytes_per_token ? f16 / double(s.kv_bytes_per_token) : 1.0;
  s.expert_hit_rate = expert_hit_rate_.load();
  s.expert_prefetch_recall = expert_recall_.load();
  {
    std::lock_guard<std::mutex> lk(stats_mu_);
    s.slot_tokens = slot_tokens_;
    s.prefill_tok_s = prefill_tok_s_;
    int tokens = 0;
    double secs = 0;
    for (const auto& [t, n, sec] : decode_steps_) tokens += n, secs += sec;
    s.decode_tok_s = secs > 0 ? tokens / secs : 0.0;
    if (!decode_steps_.empty()) {
      s.decode_idle_s =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - std::get<0>(decode_steps_.back()))
              .count();
    }
  }
  s.slot_tokens.resize(size_t(s.parallel), 0);
  size_t cached = 0;
  for (int n : s.slot_tokens) cached += size_t(n);
  s.kv_bytes_used_f16 = size_t(f16) * cached;
  for (const auto& sp : slots_) s.slot_busy.push_back(sp->busy.load());
  return s;
}

void ModelRunner::publish_kv() {
  kv_used_ = dec_->kv_usage().used_bytes;
  std::lock_guard<std::mutex> lk(stats_mu_);
  slot_tokens_.resize(slots_.size());
  for (size_t i = 0; i < slots_.size(); ++i) slot_tokens_[i] = dec_->n_past(int(i));
}

void ModelRunner::emit(Slot& s, const std::string& text) {
  if (text.empty()) return;
  {
    std::lock_guard<std::mutex> lk(s.job->mu);
    s.job->pieces.push_back(text);
  }
  s.job->cv.notify_all();
}

void ModelRunner::finish(Slot& s, const std::string& reason, const std::string& error) {
  Job& j = *s.job;
  std::string tail;
  if (error.empty() && s.gen) tail = s.gen->finish();
  {
    std::lock_guard<std::mutex> lk(j.mu);
    if (!tail.empty()) j.pieces.push_back(tail);
    j.gen_s = s.gen_clock.elapsed();
    j.done_reason = reason;
    j.error = error;
    j.done = true;
  }
  j.cv.notify_all();
  s.job.reset();
  s.busy = false;
  s.next = -1;
  s.gen.reset();
  --active_;
}

void ModelRunner::start(Slot& s) {
  Job& j = *s.job;
  try {
    if (j.kind == Job::kEmbed) {
      Stopwatch sw;
      int total = 0;
      for (auto& in : j.inputs) {
        if (int(in.size()) > n_ctx_) {
          if (!j.opt.truncate) {
            throw RequestError(
                400, fmt::format("input length {} exceeds the context length {}", in.size(), n_ctx_));
          }
          in.resize(size_t(n_ctx_));
        }
        if (in.empty()) in.push_back(std::max(0, tok_.bos()));
        j.embeddings.push_back(dec_->embed(s.id, in));
        total += int(in.size());
      }
      s.cached.clear();
      s.prefilled = 0;
      publish_kv();
      j.prompt_tokens = total;
      j.prompt_s = sw.elapsed();
      metrics_.prompted(uint64_t(total));
      finish(s, "stop");
      return;
    }
    s.n_ctx = j.opt.num_ctx > 0 ? std::min(j.opt.num_ctx, n_ctx_) : n_ctx_;
    std::vector<int32_t>& p = j.prompt;
    if (p.empty()) throw RequestError(400, "empty prompt");
    const int keep = j.opt.num_keep >= 0 ? j.opt.num_keep : (tok_.wants_bos() ? 1 : 0);
    j.truncated_tokens = truncate_prompt(p, s.n_ctx, keep);
    // Reuse the cached prefix only in whole prefill chunks computed by an earlier prefill (see
    // reusable_prefix); a slot that keeps nothing starts a new sequence.
    // A hybrid model's DeltaNet state may return to an earlier checkpoint only, and sliding-window caches
    // may keep nothing: trim says what it kept.
    const size_t common =
        size_t(dec_->trim(s.id, int(reusable_prefix(s.cached, p, size_t(s.prefilled), dec_->n_batch()))));
    s.cached.resize(common);
    Stopwatch sw;
    const float* logits = dec_->prefill(s.id, p.data() + common, int(p.size() - common));
    s.cached.insert(s.cached.end(), p.begin() + long(common), p.end());
    s.prefilled = int(p.size());
    j.prompt_s = sw.elapsed();
    j.prompt_tokens = int(p.size() - common);
    j.cached_tokens = int(common);
    metrics_.prompted(uint64_t(j.prompt_tokens));
    if (j.prompt_s > 0) {
      std::lock_guard<std::mutex> lk(stats_mu_);
      prefill_tok_s_ = j.prompt_tokens / j.prompt_s;
    }
    publish_kv();
    if (flow_) {
      expert_hit_rate_ = flow_->stats().hit_rate();
      expert_recall_ = flow_->stats().recall();
    }
    s.gen.emplace(tok_, j.opt.sampling, j.opt.stop, j.opt.num_predict > 0 ? j.opt.num_predict : -1,
                  std::move(j.filter));
    s.gen->accept_prompt(p);
    s.gen_clock.reset();
    if (j.opt.num_predict == 0) return finish(s, "length");
    step(s, logits);
  } catch (const std::exception& e) {
    s.cached.clear();
    s.prefilled = 0;
    dec_->reset(s.id);
    publish_kv();
    finish(s, "error", e.what());
  }
}

void ModelRunner::step(Slot& s, const float* logits) {
  Job& j = *s.job;
  if (j.cancelled.load()) return finish(s, "cancel");
  const Generation::Step st = s.gen->next(logits, dec_->n_vocab());
  if (s.gen->n_generated() > j.gen_tokens) {  // not an end-of-generation token
    ++j.gen_tokens;
    j.output.push_back(st.token);
    if (j.opt.logprobs) {
      LogprobEntry e = token_logprobs(logits, dec_->n_vocab(), st.token, j.opt.top_logprobs);
      std::lock_guard<std::mutex> lk(j.mu);
      j.logprobs.push_back(std::move(e));
    }
    metrics_.generated(1);
  }
  emit(s, st.text);
  if (st.done) return finish(s, st.reason);
  if (dec_->n_past(s.id) >= s.n_ctx) return finish(s, "length");
  s.next = st.token;
}

void ModelRunner::loop() {
  std::vector<Slot*> fresh;
  std::vector<int> rows;
  std::vector<int32_t> toks;
  for (;;) {
    fresh.clear();
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stop_ || !queue_.empty() || active_.load() > 0; });
      if (stop_) break;
      while (!queue_.empty()) {
        // The free slot sharing the longest prefix with the prompt (multi-turn chats reuse their KV).
        Slot* best = nullptr;
        size_t best_common = 0;
        const auto& job = queue_.front();
        for (auto& sp : slots_) {
          if (sp->job) continue;
          size_t c = 0;
          while (c < sp->cached.size() && c < job->prompt.size() && sp->cached[c] == job->prompt[c]) ++c;
          if (!best || c > best_common) best = sp.get(), best_common = c;
        }
        if (!best) break;
        best->job = queue_.front();
        best->busy = true;
        queue_.pop_front();
        ++active_;
        fresh.push_back(best);
      }
    }
    for (Slot* s : fresh) {
      if (s->job->cancelled.load()) {
        finish(*s, "cancel");
        continue;
      }
      start(*s);
    }
    // One decode step for every slot with a sampled token.
    rows.clear();
    toks.clear();
    for (auto& sp : slots_) {
      if (!sp->job) continue;
      if (sp->job->cancelled.load()) {
        finish(*sp, "cancel");
        continue;
      }
      if (sp->next >= 0) {
        rows.push_back(sp->id);
        toks.push_back(sp->next);
      }
    }
    if (rows.empty()) continue;
    const float* logits = nullptr;
    Stopwatch step_clock;
    try {
      logits = dec_->decode(rows.data(), toks.data(), int(rows.size()));
    } catch (const std::exception& e) {
      for (int id : rows) {
        Slot& s = *slots_[size_t(id)];
        s.cached.clear();
        s.prefilled = 0;
        dec_->reset(s.id);
        finish(s, "error", e.what());
      }
      continue;
    }
    publish_kv();
    if (flow_) {
      expert_hit_rate_ = flow_->stats().hit_rate();
      expert_recall_ = flow_->stats().recall();
    }
    for (size_t i = 0; i < rows.size(); ++i) {
      Slot& s = *slots_[size_t(rows[i])];
      s.cached.push_back(toks[i]);
      s.next = -1;
      try {
        step(s, logits + i * size_t(dec_->n_vocab()));
      } catch (const std::exception& e) {
        finish(s, "error", e.what());
      }
    }
    {
      // Speed over the last few seconds of decoding (the step and the sampling after it): idle
      // time between requests does not count.
      const auto now = std::chrono::steady_clock::now();
      std::lock_guard<std::mutex> lk(stats_mu_);
      decode_steps_.emplace_back(now, int(rows.size()), step_clock.elapsed());
      while (now - std::get<0>(decode_steps_.front()) > std::chrono::seconds(5)) decode_steps_.pop_front();
    }
  }
  // Unloading: fail whatever is left.
  std::deque<std::shared_ptr<Job>> left;
  {
    std::lock_guard<std::mutex> lk(mu_);
    left.swap(queue_);
  }
  for (auto& sp : slots_) {
    if (sp->job) finish(*sp, "error", "model unloaded");
  }
  for (auto& j : left) {
    {
      std::lock_guard<std::mutex> lk(j->mu);
      j->error = "model unloaded";
      j->done = true;
    }
    j->cv.notify_all();
  }
}

}  // namespace qleap::server
