#include "kv/kv_cache.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>

#include "backend/cpu/ops.h"
#include "core/error.h"
#include "core/fp16.h"

namespace qleap {

KvCache::~KvCache() = default;

namespace {

constexpr int kMaxHeadDim = 1024;
// Keys scored per online-softmax step: one rescale of the accumulator per tile instead of per key.
constexpr int kTile = 64;

// Storage formats. A row holds the n_kv_heads * head_dim values of one position; `off`/`n` select one
// head's slice of it.
struct F32Format {
  static constexpr const char* kName = "f32";
  static size_t row_bytes(int kv_dim) { return size_t(kv_dim) * 4; }
  static void encode(const float* x, uint8_t* row, int kv_dim) { std::memcpy(row, x, size_t(kv_dim) * 4); }
  static float dot(const uint8_t* row, int off, const float* q, int n) {
    return dot_f32(reinterpret_cast<const float*>(row) + off, q, n);
  }
  static void axpy(float p, const uint8_t* row, int off, float* acc, int n) {
    axpy_f32(p, reinterpret_cast<const float*>(row) + off, acc, n);
  }
};

struct F16Format {
  static constexpr const char* kName = "f16";
  static size_t row_bytes(int kv_dim) { return size_t(kv_dim) * 2; }
  static void encode(const float* x, uint8_t* row, int kv_dim) {
    fp32_to_fp16_row(x, reinterpret_cast<uint16_t*>(row), kv_dim);
  }
  static float dot(const uint8_t* row, int off, const float* q, int n) {
    return dot_f16(reinterpret_cast<const uint16_t*>(row) + off, q, n);
  }
  static void axpy(float p, const uint8_t* row, int off, float* acc, int n) {
    axpy_f16(p, reinterpret_cast<const uint16_t*>(row) + off, acc, n);
  }
};

// Blocks of 32 run along the whole row (zero-padded at its end), so heads narrower than a block
// share scales with their neighbours; when head_dim is a multiple of 32 each head owns whole blocks
// and the vector kernels apply.
struct Q8Format {
  static constexpr const char* kName = "q8_0";
  static size_t row_bytes(int kv_dim) { return size_t((kv_dim + 31) / 32) * sizeof(BlockQ8_0); }
  static void encode(const float* x, uint8_t* row, int kv_dim) {
    auto* b = reinterpret_cast<BlockQ8_0*>(row);
    const int full = kv_dim / 32 * 32;
    quantize_q8_0(x, b, full);
    if (full < kv_dim) {
      float tail[32] = {};
      std::memcpy(tail, x + full, size_t(kv_dim - full) * 4);
      quantize_q8_0(tail, b + full / 32, 32);
    }
  }
  static float dot(const uint8_t* row, int off, const float* q, int n) {
    const auto* b = reinterpret_cast<const BlockQ8_0*>(row);
    if (off % 32 == 0 && n % 32 == 0) return dot_q8_0(b + off / 32, q, n);
    float s = 0;
    for (int i = 0; i < n; ++i) {
      const BlockQ8_0& blk = b[(off + i) / 32];
      s += fp16_to_fp32(blk.d) * float(blk.qs[(off + i) % 32]) * q[i];
    }
    return s;
  }
  static void axpy(float p, const uint8_t* row, int off, float* acc, int n) {
    const auto* b = reinterpret_cast<const BlockQ8_0*>(row);
    if (off % 32 == 0 && n % 32 == 0) return axpy_q8_0(p, b + off / 32, acc, n);
    for (int i = 0; i < n; ++i) {
      const BlockQ8_0& blk = b[(off + i) / 32];
      acc[i] += p * fp16_to_fp32(blk.d) * float(blk.qs[(off + i) % 32]);
    }
  }
};

struct AlignedFree {
  void operator()(uint8_t* p) const { ::operator delete[](p, std::align_val_t(64)); }
};

template <class Format>
class KvCacheImpl final : public KvCache {
 public:
  explicit KvCacheImpl(const KvShape& s) : KvCache(s), row_bytes_(Format::row_bytes(s.kv_dim())) {
    layer_bytes_ = size_t(s.n_ctx) * row_bytes_;
    total_ = layer_bytes_ * 2 * size_t(s.n_layers);
    // Not zero-filled: positions are always written by store() before attend() reads them, and
    // leaving the pages untouched keeps a large n_ctx cheap until it is used.
    data_.reset(static_cast<uint8_t*>(::operator new[](total_, std::align_val_t(64))));
  }

  void store(int layer, int pos, int n_tokens, const float* k, const float* v) override {
    check(layer, pos, n_tokens);
    const int kv_dim = shape_.kv_dim();
    for (int t = 0; t < n_tokens; ++t) {
      Format::encode(k + size_t(t) * kv_dim, row(layer, 0, pos + t), kv_dim);
      Format::encode(v + size_t(t) * kv_dim, row(layer, 1, pos + t), kv_dim);
    }
  }

  void attend(int layer, int pos0, int n_q, const float* q, float* out, float scale, ThreadPool& pool) override {
    check(layer, pos0, n_q);
    Job job{this, layer, pos0, q, out, scale};
    const int64_t n_items = int64_t(n_q) * shape_.n_heads;
    // Work in multiply-adds; below a few tens of thousands the dispatch costs more than it saves.
    const double work = double(n_items) * (pos0 + 0.5 * n_q + 1) * shape_.head_dim * 2;
    if (pool.size() == 1 || work < 32768) {
      for (int64_t i = 0; i < n_items; ++i) job.run(i);
      return;
    }
    const Job* jp = &job;
    pool.parallel_for(n_items, 1, [jp](int64_t b, int64_t e, int) {
      for (int64_t i = b; i < e; ++i) jp->run(i);
    });
  }

  size_t bytes_per_token() const override { return 2 * row_bytes_ * size_t(shape_.n_layers); }
  size_t allocated_bytes() const override { return total_; }
  const char* type_name() const override { return Format::kName; }

 private:
  struct Job {
    const KvCacheImpl* self;
    int layer, pos0;
    const float* q;
    float* out;
    float scale;

    // One (query token, head) pair: online softmax over tiles of keys.
    void run(int64_t item) const {
      const KvShape& s = self->shape_;
      const int hd = s.head_dim;
      const int t = int(item / s.n_heads), h = int(item % s.n_heads);
      const int kvh = h / (s.n_heads / s.n_kv_heads);
      const int off = kvh * hd;
      const float* qh = q + (size_t(t) * s.n_heads + h) * hd;
      float* oh = out + (size_t(t) * s.n_heads + h) * hd;
      const int n_keys = pos0 + t + 1;
      float acc[kMaxHeadDim];
      float sc[kTile];
      std::fill(acc, acc + hd, 0.0f);
      float m = -std::numeric_limits<float>::infinity(), l = 0;
      for (int j0 = 0; j0 < n_keys; j0 += kTile) {
        const int nt = std::min(kTile, n_keys - j0);
        float tmax = -std::numeric_limits<float>::infinity();
        for (int j = 0; j < nt; ++j) {
          sc[j] = Format::dot(self->row(layer, 0, j0 + j), off, qh, hd) * scale;
          tmax = std::max(tmax, sc[j]);
        }
        if (tmax > m) {
          if (l > 0) {
            const float c = std::exp(m - tmax);
            scale_inplace(acc, c, hd);
            l *= c;
          }
          m = tmax;
        }
        l += exp_sub_sum(sc, nt, m);
        for (int j = 0; j < nt; ++j) Format::axpy(sc[j], self->row(layer, 1, j0 + j), off, acc, hd);
      }
      const float inv = 1.0f / l;
      for (int i = 0; i < hd; ++i) oh[i] = acc[i] * inv;
    }
  };

  uint8_t* row(int layer, int kv, int pos) const {
    return data_.get() + (size_t(layer) * 2 + size_t(kv)) * layer_bytes_ + size_t(pos) * row_bytes_;
  }
  void check(int layer, int pos, int n) const {
    if (layer < 0 || layer >= shape_.n_layers || pos < 0 || n < 0 || pos + n > shape_.n_ctx) {
      throw InvalidArgument(fmt::format("kv cache: layer {} positions [{}, {}) out of range (n_ctx {})", layer,
                                        pos, pos + n, shape_.n_ctx));
    }
  }

  size_t row_bytes_;
  size_t layer_bytes_ = 0;
  size_t total_ = 0;
  std::unique_ptr<uint8_t[], AlignedFree> data_;
};

}  // namespace

std::unique_ptr<KvCache> make_kv_cache(const std::string& type, const KvShape& s) {
  if (s.n_layers <= 0 || s.n_ctx <= 0 || s.n_heads <= 0 || s.n_kv_heads <= 0 || s.head_dim <= 0 ||
      s.n_heads % s.n_kv_heads != 0) {
    throw InvalidArgument(fmt::format("kv cache: bad shape (layers {}, ctx {}, heads {}/{}, head_dim {})",
                                      s.n_layers, s.n_ctx, s.n_heads, s.n_kv_heads, s.head_dim));
  }
  if (s.head_dim > kMaxHeadDim) {
    throw Unsupported(fmt::format("kv cache: head_dim {} exceeds {}", s.head_dim, kMaxHeadDim));
  }
  if (type == "f32") return std::make_unique<KvCacheImpl<F32Format>>(s);
  if (type == "f16") return std::make_unique<KvCacheImpl<F16Format>>(s);
  if (type == "q8_0") return std::make_unique<KvCacheImpl<Q8Format>>(s);
  throw InvalidArgument(fmt::format("unknown kv cache type '{}' (supported: f32, f16, q8_0)", type));
}

}  // namespace qleap
