#include "runtime/batch_decoder.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace qleap {

BatchDecoder::BatchDecoder(std::shared_ptr<const Model> model, const BatchOptions& opt)
    : model_(std::move(model)),
      kv_type_(opt.kv_type),
      pool_(opt.n_threads > 0 ? opt.n_threads : default_thread_count()) {
  const HParams& hp = model_->hparams();
  if (opt.n_ctx < 0) throw InvalidArgument(fmt::format("n_ctx must be >= 0 (got {})", opt.n_ctx));
  if (opt.n_threads < 0) throw InvalidArgument(fmt::format("n_threads must be >= 0 (got {})", opt.n_threads));
  if (opt.n_batch <= 0) throw InvalidArgument(fmt::format("n_batch must be positive (got {})", opt.n_batch));
  if (opt.n_slots <= 0 || opt.n_slots > 1024) {
    throw InvalidArgument(fmt::format("n_slots must be in [1, 1024] (got {})", opt.n_slots));
  }
  n_ctx_ = opt.n_ctx > 0 ? opt.n_ctx : (hp.n_ctx_train > 0 ? std::min(hp.n_ctx_train, 4096) : 4096);
  n_batch_ = std::min(opt.n_batch, n_ctx_);
  KvShape shape;
  shape.n_layers = hp.n_layers;
  shape.n_ctx = n_ctx_;
  shape.n_heads = hp.n_heads;
  shape.n_kv_heads = hp.n_kv_heads;
  shape.head_dim = hp.head_dim;
  slots_.resize(size_t(opt.n_slots));
  for (auto& s : slots_) s.kv = make_kv_cache(opt.kv_type, shape);
  rope_ = RopeTable(hp.rope, n_ctx_);
  scratch_.allocate(hp, std::max(n_batch_, opt.n_slots));
  rows_.resize(size_t(opt.n_slots));
}

void BatchDecoder::truncate(int slot, int n) {
  Slot& s = slots_.at(size_t(slot));
  if (n < 0 || n > s.n_past) throw InvalidArgument(fmt::format("truncate({}) outside [0, {}]", n, s.n_past));
  s.n_past = n;
}

size_t BatchDecoder::kv_bytes_allocated() const {
  size_t b = 0;
  for (const auto& s : slots_) b += s.kv->allocated_bytes();
  return b;
}

size_t BatchDecoder::kv_bytes_used() const {
  size_t b = 0;
  for (const auto& s : slots_) b += size_t(s.n_past) * s.kv->bytes_per_token();
  return b;
}

void BatchDecoder::check_tokens(const int32_t* tokens, int n) const {
  const int n_vocab = model_->n_vocab();
  for (int i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= n_vocab) {
      throw InvalidArgument(
          fmt::format("token id {} at index {} out of range [0, {})", tokens[i], i, n_vocab));
    }
  }
}

void BatchDecoder::run_layers(const int32_t* tokens, int m, const LayerCtx& ctx) {
  const ModelWeights& w = model_->weights();
  const int n = model_->hparams().n_embd;
  for (int t = 0; t < m; ++t) get_row(w.token_embd, tokens[t], scratch_.x.data() + size_t(t) * n);
  const ArchDef& arch = model_->arch_def();
  for (int il = 0; il < model_->hparams().n_layers; ++il) arch.forward_layer(w.layers[size_t(il)], il, ctx);
}

const float* BatchDecoder::prefill(int slot, const int32_t* tokens, int n) {
  Slot& s = slots_.at(size_t(slot));
  if (n <= 0) throw InvalidArgument("prefill: no tokens");
  if (size_t(s.n_past) + size_t(n) > size_t(n_ctx_)) {
    throw InvalidArgument(
        fmt::format("context overflow: {} tokens after {} exceed n_ctx {}", n, s.n_past, n_ctx_));
  }
  check_tokens(tokens, n);
  const HParams& hp = model_->hparams();
  const ModelWeights& w = model_->weights();
  logits_.resize(size_t(hp.n_vocab));
  for (int i = 0; i < n; i += n_batch_) {
    const int m = std::min(n_batch_, n - i);
    const LayerCtx ctx{hp, rope_, *s.kv, pool_, scratch_, s.n_past, m, nullptr, nullptr, moe_executor_};
    run_layers(tokens + i, m, ctx);
    s.n_past += m;
    if (i + m == n) {
      const float* last = scratch_.x.data() + size_t(m - 1) * hp.n_embd;
      rms_norm_rows(last, w.output_norm.data(), scratch_.xn.data(), 1, hp.n_embd, hp.rms_eps, pool_);
      matmul(w.output, scratch_.xn.data(), 1, logits_.data(), pool_);
    }
  }
  return logits_.data();
}

const float* BatchDecoder::decode(const int* slots, const int32_t* tokens, int m) {
  if (m <= 0 || m > n_slots())
    throw InvalidArgument(fmt::format("decode: {} rows for {} slots", m, n_slots()));
  check_tokens(tokens, m);
  for (int i = 0; i < m; ++i) {
    Slot& s = slots_.at(size_t(slots[i]));
    for (int j = 0; j < i; ++j) {
      if (slots[j] == slots[i]) throw InvalidArgument("decode: a slot appears twice in one step");
    }
    if (s.n_past >= n_ctx_) throw InvalidArgument(fmt::format("context overflow: slot {} is full", slots[i]));
    rows_[size_t(i)] = RowSeq{s.kv.get(), s.n_past};
  }
  const HParams& hp = model_->hparams();
  const ModelWeights& w = model_->weights();
  // Each row exactly as if it ran alone (see RowExactMatmul).
  const RowExactMatmul exact;
  const LayerCtx ctx{hp,      rope_,        *slots_[size_t(slots[0])].kv, pool_, scratch_, 0, m, rows_.data(),
                     nullptr, moe_executor_};
  run_layers(tokens, m, ctx);
  for (int i = 0; i < m; ++i) slots_[size_t(slots[i])].n_past += 1;
  logits_.resize(size_t(m) * hp.n_vocab);
  rms_norm_rows(scratch_.x.data(), w.output_norm.data(), scratch_.xn.data(), m, hp.n_embd, hp.rms_eps, pool_);
  matmul(w.output, scratch_.xn.data(), m, logits_.data(), pool_);
  return logits_.data();
}

std::vector<float> BatchDecoder::embed(int slot, const std::vector<int32_t>& tokens) {
  Slot& s = slots_.at(size_t(slot));
  const int n = int(tokens.size());
  if (n <= 0) throw InvalidArgument("embed: no tokens");
  if (n > n_ctx_)
    throw InvalidArgument(fmt::format("input of {} tokens exceeds the context of {}", n, n_ctx_));
  check_tokens(tokens.data(), n);
  const HParams& hp = model_->hparams();
  const ModelWeights& w = model_->weights();
  const int d = hp.n_embd;
  std::vector<double> sum(static_cast<size_t>(d), 0.0);
  s.n_past = 0;
  for (int i = 0; i < n; i += n_batch_) {
    const int m = std::min(n_batch_, n - i);
    const LayerCtx ctx{hp, rope_, *s.kv, pool_, scratch_, s.n_past, m, nullptr, nullptr, moe_executor_};
    run_layers(tokens.data() + i, m, ctx);
    s.n_past += m;
    rms_norm_rows(scratch_.x.data(), w.output_norm.data(), scratch_.xn.data(), m, d, hp.rms_eps, pool_);
    for (int t = 0; t < m; ++t) {
      const float* row = scratch_.xn.data() + size_t(t) * d;
      for (int j = 0; j < d; ++j) sum[size_t(j)] += row[j];
    }
  }
  s.n_past = 0;  // the slot's cache now holds the input, not a conversation
  double norm = 0;
  for (double v : sum) norm += (v / n) * (v / n);
  norm = std::sqrt(norm);
  std::vector<float> out(static_cast<size_t>(d));
  for (int j = 0; j < d; ++j) out[size_t(j)] = norm > 0 ? float(sum[size_t(j)] / n / norm) : 0.0f;
  return out;
}

}  // namespace qleap
