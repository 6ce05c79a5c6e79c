#include "runtime/session.h"

#include <fmt/format.h>

#include <algorithm>
#include <random>

#include "backend/cuda/cuda_api.h"
#include "core/error.h"

namespace qleap {
namespace {

int resolve_ctx(const Model& m, int n_ctx) {
  if (n_ctx < 0) throw InvalidArgument(fmt::format("n_ctx must be >= 0 (got {})", n_ctx));
  if (n_ctx > 0) return n_ctx;
  const int train = m.hparams().n_ctx_train;
  return train > 0 ? std::min(train, 4096) : 4096;
}

int resolve_threads(int n) {
  if (n < 0) throw InvalidArgument(fmt::format("n_threads must be >= 0 (got {})", n));
  return n > 0 ? n : default_thread_count();
}

}  // namespace

Session::Session(std::shared_ptr<const Model> model, const SessionOptions& opt)
    : model_(std::move(model)),
      n_ctx_(resolve_ctx(*model_, opt.n_ctx)),
      pool_(resolve_threads(opt.n_threads)) {
  if (opt.n_batch <= 0) throw InvalidArgument(fmt::format("n_batch must be positive (got {})", opt.n_batch));
  n_batch_ = std::min(opt.n_batch, n_ctx_);
  const HParams& hp = model_->hparams();
  KvShape shape;
  shape.n_layers = hp.n_layers;
  shape.n_ctx = n_ctx_;
  shape.n_heads = hp.n_heads;
  shape.n_kv_heads = hp.n_kv_heads;
  shape.head_dim = hp.head_dim;
  kv_ = make_kv_cache(opt.kv_type, shape);
  kv_->set_pool(&pool_);
  rope_ = RopeTable(hp.rope, n_ctx_);
  scratch_.allocate(hp, n_batch_);
  logits_.reserve(size_t(hp.n_vocab));
  placement_ = plan_placement(hp.n_layers, opt.gpu_layers, opt.gpu_layers != 0 ? cuda::device_count() : 0);
  if (placement_.any_gpu()) {
    gpu_ = cuda::make_gpu_layers(*model_, placement_, rope_, n_ctx_, n_batch_);
    if (opt.kv_type != "f16") {
      placement_.note =
          fmt::format("GPU layers keep their KV cache in f16 (--kv {} applies to CPU layers)", opt.kv_type);
    }
  }
}

Session::~Session() = default;

void Session::fill_random_context(int n, uint64_t seed) {
  if (n < 0 || n >= n_ctx_)
    throw InvalidArgument(fmt::format("fill_random_context({}) outside [0, {})", n, n_ctx_));
  const KvShape& s = kv_->shape();
  const int kvd = s.kv_dim();
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd;
  std::vector<float> offset(static_cast<size_t>(kvd));
  for (auto& x : offset) x = 2.0f * nd(rng);
  const int chunk = std::max(1, n_batch_);
  std::vector<float> k(size_t(chunk) * kvd), v(size_t(chunk) * kvd);
  for (int layer = 0; layer < s.n_layers; ++layer) {
    for (int p0 = 0; p0 < n; p0 += chunk) {
      const int m = std::min(chunk, n - p0);
      for (size_t i = 0; i < size_t(m) * kvd; ++i) {
        k[i] = nd(rng) + offset[i % size_t(kvd)];
        v[i] = nd(rng);
      }
      kv_->store(layer, p0, m, k.data(), v.data());
    }
  }
  n_past_ = n;
}

void Session::truncate(int n_past) {
  if (n_past < 0 || n_past > n_past_) {
    throw InvalidArgument(fmt::format("truncate({}) outside [0, {}]", n_past, n_past_));
  }
  n_past_ = n_past;
}

const std::vector<float>& Session::eval(const std::vector<int32_t>& tokens, bool all_logits) {
  const int n = int(tokens.size());
  if (n == 0) throw InvalidArgument("eval: no tokens");
  if (size_t(n_past_) + tokens.size() > size_t(n_ctx_)) {
    throw InvalidArgument(
        fmt::format("context overflow: {} tokens after {} exceed n_ctx {}", tokens.size(), n_past_, n_ctx_));
  }
  const int n_vocab = model_->n_vocab();
  for (int i = 0; i < n; ++i) {
    if (tokens[size_t(i)] < 0 || tokens[size_t(i)] >= n_vocab) {
      throw InvalidArgument(
          fmt::format("token id {} at index {} out of range [0, {})", tokens[size_t(i)], i, n_vocab));
    }
  }
  logits_.resize(all_logits ? size_t(n) * n_vocab : size_t(n_vocab));
  for (int i = 0; i < n; i += n_batch_) {
    const int m = std::min(n_batch_, n - i);
    const bool last_chunk = i + m == n;
    float* out = all_logits ? logits_.data() + size_t(i) * n_vocab : (last_chunk ? logits_.data() : nullptr);
    forward_chunk(tokens.data() + i, m, n_past_, out, all_logits);
    n_past_ += m;
  }
  return logits_;
}

void Session::forward_chunk(const int32_t* tokens, int m, int pos0, float* out, bool all) {
  const HParams& hp = model_->hparams();
  const ModelWeights& w = model_->weights();
  const int n = hp.n_embd;
  for (int t = 0; t < m; ++t) get_row(w.token_embd, tokens[t], scratch_.x.data() + size_t(t) * n);

  const LayerCtx ctx{hp, rope_, *kv_, pool_, scratch_, pos0, m, nullptr, moe_observer_, moe_executor_};
  const ArchDef& arch = model_->arch_def();
  const int n_cpu_layers = placement_.first_gpu_layer();
  for (int il = 0; il < n_cpu_layers; ++il) arch.forward_layer(w.layers[size_t(il)], il, ctx);
  // The GPU runs the remaining layers and, when it holds the head, writes the logits itself.
  if (gpu_ && gpu_->forward(scratch_.x.data(), m, pos0, out, all)) return;

  if (out == nullptr) return;
  // Only the rows whose logits are wanted go through the final norm and the vocabulary projection.
  const int first = all ? 0 : m - 1;
  const int rows = m - first;
  rms_norm_rows(scratch_.x.data() + size_t(first) * n, w.output_norm.data(), scratch_.xn.data(), rows, n,
                hp.rms_eps, pool_);
  matmul(w.output, scratch_.xn.data(), rows, out, pool_);
}

}  // namespace qleap
