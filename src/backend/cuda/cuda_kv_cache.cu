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
    const size_t elems = size_t(s.n_ctx) * size_t(s.kv_dim());
    k_.resize(size_t(s.n_layers));
    v_.resize(size_t(s.n_layers));
    for (int l = 0; l < s.n_layers; ++l) {
      k_[size_t(l)].alloc(elems);
      v_[size_t(l)].alloc(elems);
    }
    decode_splits_ = (s.n_ctx + kDecodeSplit - 1) / kDecodeSplit;
    const size_t decode_partial = size_t(s.n_heads) * decode_splits_ * (s.head_dim + 2);
    partial_.alloc(std::max(decode_partial, kPartialBudget / sizeof(float)));
  }
  using KvCache::attend;
  using KvCache::store;

  void store(int layer, const KvSpan& s, const float* k, const float* v) override {
    check(layer, s);
    kv_store_f16(k, v, k_[size_t(layer)].get(), v_[size_t(layer)].get(), s.n, shape_.kv_dim(), s.dev_pos0,
                 be_.stream());
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
    if (s.n == 1) {
      a.split_len = kDecodeSplit;
      a.n_splits = decode_splits_;
    } else {
      // Prefill: the queries already fill the GPU, so use as few splits as the partial buffer and the
      // longest key range (known on the host for a prefill, which is never replayed) allow.
      const int maxlen = s.pos0 + s.n;
      const size_t per_split = size_t(s.n) * shape_.n_heads * (shape_.head_dim + 2);
      const int cap = int(std::max<size_t>(1, partial_.size() / per_split));
      a.n_splits = std::max(1, std::min(cap, (maxlen + kDecodeSplit - 1) / kDecodeSplit));
      a.split_len = (maxlen + a.n_splits - 1) / a.n_splits;
    }
    attention(a, s.n, s.dev_pos0, be_.stream());
  }

  size_t bytes_per_token() const override {
    return 2 * 2 * size_t(shape_.kv_dim()) * size_t(shape_.n_layers);
  }
  size_t allocated_bytes() const override { return bytes_per_token() * size_t(shape_.n_ctx); }
  const char* type_name() const override { return "f16"; }
  bool on_host() const override { return false; }

 private:
  void check(int layer, const KvSpan& s) const {
    if (layer < 0 || layer >= shape_.n_layers || s.pos0 < 0 || s.n <= 0 || s.pos0 + s.n > shape_.n_ctx)
      throw InvalidArgument("CUDA KV cache: positions out of range");
    if (s.dev_pos0 == nullptr) throw InvalidArgument("CUDA KV cache: positions must be in device memory");
  }

  CudaBackend& be_;
  std::vector<DevBuf<__half>> k_, v_;  // per layer: n_ctx x kv_dim
  DevBuf<float> partial_;
  int decode_splits_ = 1;
};

}  // namespace

std::unique_ptr<KvCache> make_kv_cache(const std::string& type, const KvShape& shape, Backend& backend) {
  auto* be = dynamic_cast<CudaBackend*>(&backend);
  if (be == nullptr || type != "f16") return nullptr;
  check_kv_shape(shape);
  return std::make_unique<CudaF16KvCache>(shape, *be);
}

}  // namespace qleap::cuda
