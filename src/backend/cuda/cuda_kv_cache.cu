// KV caches in device memory (cuda_api.h make_kv_cache): f16 keys and values per layer, stored and
// attended by kernels on the backend's stream. Positions come from device memory (KvSpan::dev_pos0),
// and the decode attention grid is sized for the whole context (splits past the current position
// exit at once), so a recorded decode step replays correctly at every position.
//
// Not yet run on a GPU (see cuda_backend.cu).
#include <algorithm>
#include <cmath>

#include "backend/cuda/cuda_api.h"
#include "backend/cuda/cuda_backend.cuh"
#include "core/error.h"

namespace qleap::cuda {
namespace {

constexpr int kDecodeSplit = 256;                    // keys per attention split at decode
constexpr size_t kPartialBudget = size_t(64) << 20;  // bytes for prefill attention partials

class CudaF16KvCache final : public KvCache {
 public:
  CudaF16KvCache(const KvShape& s, CudaBackend& be) : KvCache(s), be_(be) {
    if (s.head_dim > 256) throw Unsupported("CUDA KV cache: head_dim > 256");
    k_.resize(size_t(s.n_layers));
    v_.resize(size_t(s.n_layers));
    ring_.resize(size_t(s.n_layers));
    decode_splits_.resize(size_t(s.n_layers));
    int most_splits = 1;
    for (int l = 0; l < s.n_layers; ++l) {
      // Sliding-window layers keep a ring of positions (KvShape::ring_size).
      const int ring = s.ring_size(l);
      ring_[size_t(l)] = ring;
      const size_t elems = size_t(ring) * size_t(s.kv_dim());
      k_[size_t(l)].alloc(elems);
      v_[size_t(l)].alloc(elems);
      if (ring < s.n_ctx)
        fixed_bytes_ += 2 * 2 * elems;
      else
        per_token_ += 2 * 2 * size_t(s.kv_dim());
      // The decode grid covers the longest key range (the window or the context) at any position.
      const int keys = s.window(l) > 0 ? std::min(s.window(l), s.n_ctx) : s.n_ctx;
      decode_splits_[size_t(l)] = (keys + kDecodeSplit - 1) / kDecodeSplit;
      most_splits = std::max(most_splits, decode_splits_[size_t(l)]);
    }
    if (!s.attn_sinks.empty()) {
      sinks_.alloc(s.attn_sinks.size());
      sinks_.upload(s.attn_sinks.data(), s.attn_sinks.size());
    }
    const size_t decode_partial = size_t(s.n_heads) * most_splits * (s.head_dim + 2);
    partial_.alloc(std::max(decode_partial, kPartialBudget / sizeof(float)));
  }
  using KvCache::attend;
  using KvCache::store;

  void store(int layer, const KvSpan& s, const float* k, const float* v) override {
    check(layer, s);
    kv_store_f16(k, v, k_[size_t(layer)].get(), v_[size_t(layer)].get(), s.n, shape_.kv_dim(), s.dev_pos0,
                 ring_[size_t(layer)], be_.stream());
  }

  void attend(int layer, const KvSpan& s, const float* q, float* out, float scale, ThreadPool&) override {
    check(layer, s);
    AttnArgs a{};
    a.q = q;
    a.k_cache = k_[size_t(layer)].get();
    a.v_cache = v_[size_t(layer)].get();
    a.out = out;
    a.partial = partial_.get();
    a.n_heads = shape_.n_heads;
    a.n_kv_heads = shape_.n_kv_heads;
    a.hd = shape_.head_dim;
    a.scale = scale;
    a.window = shape_.window(layer);
    a.ring = ring_[size_t(layer)];
    a.softcap = shape_.softcap;
    a.sinks = shape_.attn_sinks.empty() ? nullptr : sinks_.get() + size_t(layer) * size_t(shape_.n_heads);
    if (s.n == 1) {
      a.split_len = kDecodeSplit;
      a.n_splits = decode_splits_[size_t(layer)];
    } else {
      // Prefill: the queries already fill the GPU, so use as few splits as the partial buffer and the
      // longest key range (known on the host for a prefill, which is never replayed) allow.
      const int maxlen = a.window > 0 ? std::min(a.window, s.pos0 + s.n) : s.pos0 + s.n;
      const size_t per_split = size_t(s.n) * shape_.n_heads * (shape_.head_dim + 2);
      const int cap = int(std::max<size_t>(1, partial_.size() / per_split));
      a.n_splits = std::max(1, std::min(cap, (maxlen + kDecodeSplit - 1) / kDecodeSplit));
      a.split_len = (maxlen + a.n_splits - 1) / a.n_splits;
    }
    attention(a, s.n, s.dev_pos0, be_.stream());
  }

  // Ring layers (sliding windows) are a constant, not a per-position cost.
  size_t bytes_per_token() const override { return per_token_; }
  size_t allocated_bytes() const override { return per_token_ * size_t(shape_.n_ctx) + fixed_bytes_; }
  const char* type_name() const override { return "f16"; }
  bool on_host() const override { return false; }

 private:
  void check(int layer, const KvSpan& s) const {
    if (s.n <= 0) throw InvalidArgument("CUDA KV cache: no positions");
    check_kv_span(shape_, layer, s.pos0, s.n);
    if (s.dev_pos0 == nullptr) throw InvalidArgument("CUDA KV cache: positions must be in device memory");
  }

  CudaBackend& be_;
  std::vector<DevBuf<__half>> k_, v_;  // per layer: ring x kv_dim
  std::vector<int> ring_;              // per layer: slots (n_ctx unless a sliding window)
  DevBuf<float> partial_;
  DevBuf<float> sinks_;             // KvShape::attn_sinks (empty: none)
  std::vector<int> decode_splits_;  // per layer
  size_t per_token_ = 0, fixed_bytes_ = 0;
};

}  // namespace

std::unique_ptr<KvCache> make_kv_cache(const std::string& type, const KvShape& shape, Backend& backend) {
  auto* be = dynamic_cast<CudaBackend*>(&backend);
  if (be == nullptr || type != "f16") return nullptr;
  check_kv_shape(shape);
  return std::make_unique<CudaF16KvCache>(shape, *be);
}

}  // namespace qleap::cuda
