#include "kv/kv_cache.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "backend/cpu/ops.h"
#include "core/error.h"
#include "core/fp16.h"
#include "kv/flash_prefill.h"
#include "kv/kv_turboquant.h"
#include "kv/split_attention.h"
#include "quant/block_q4_0.h"
#include "quant/quant_encode.h"
#include "turboquant/rotation.h"

namespace qleap {

KvCache::~KvCache() = default;

namespace {

constexpr int kMaxHeadDim = 1024;
// Keys scored per online-softmax step: one rescale of the accumulator per tile instead of per key.
constexpr int kTile = 64;
// Query heads sharing one kv head that one work item handles together.
constexpr int kMaxGroup = 8;
// Fewest keys per slice when one query's keys are split across threads.
constexpr int kMinSplitKeys = 128;

// Storage formats. encode() writes one segment (a head's vector, or a whole position row for block
// formats whose blocks span heads); `off`/`n` select one head's slice of a segment.
struct F32Format {
  static constexpr const char* kName = "f32";
  static constexpr bool kRotate = false;
  static constexpr int kBlock = 1;
  static size_t row_bytes(int kv_dim) { return size_t(kv_dim) * 4; }
  static void encode(const float* x, uint8_t* row, int kv_dim) { std::memcpy(row, x, size_t(kv_dim) * 4); }
  static const float* view(const uint8_t* row, int off, int, float*) {
    return reinterpret_cast<const float*>(row) + off;
  }
  static void dot_multi(const uint8_t* row, int off, const float* const* q, int nq, int n, float* out,
                        float*) {
    dot_f32_multi(reinterpret_cast<const float*>(row) + off, q, nq, n, out);
  }
  static void axpy_multi(const float* p, const uint8_t* row, int off, float* const* acc, int nq, int n,
                         float*) {
    axpy_f32_multi(p, reinterpret_cast<const float*>(row) + off, acc, nq, n);
  }
};

struct F16Format {
  static constexpr const char* kName = "f16";
  static constexpr bool kRotate = false;
  static constexpr int kBlock = 1;
  static size_t row_bytes(int kv_dim) { return size_t(kv_dim) * 2; }
  static void encode(const float* x, uint8_t* row, int kv_dim) {
    fp32_to_fp16_row(x, reinterpret_cast<uint16_t*>(row), kv_dim);
  }
  static const float* view(const uint8_t* row, int off, int n, float* buf) {
    fp16_to_fp32_row(reinterpret_cast<const uint16_t*>(row) + off, buf, n);
    return buf;
  }
  static void dot_multi(const uint8_t* row, int off, const float* const* q, int nq, int n, float* out,
                        float*) {
    dot_f16_multi(reinterpret_cast<const uint16_t*>(row) + off, q, nq, n, out);
  }
  static void axpy_multi(const float* p, const uint8_t* row, int off, float* const* acc, int nq, int n,
                         float*) {
    axpy_f16_multi(p, reinterpret_cast<const uint16_t*>(row) + off, acc, nq, n);
  }
};

// Blocks of 32 along a segment (zero-padded at its end). When head_dim is a multiple of 32 each head
// is its own segment and the vector kernels apply; otherwise the segment is the whole position row and
// heads narrower than a block share scales with their neighbours.
// Block formats dequantize a head's slice to a float buffer (Format::view) and use the f32 kernels.
template <class Format>
struct DequantizedRows {
  static void dot_multi(const uint8_t* row, int off, const float* const* q, int nq, int n, float* out,
                        float* buf) {
    dot_f32_multi(Format::view(row, off, n, buf), q, nq, n, out);
  }
  static void axpy_multi(const float* p, const uint8_t* row, int off, float* const* acc, int nq, int n,
                         float* buf) {
    axpy_f32_multi(p, Format::view(row, off, n, buf), acc, nq, n);
  }
};

struct Q8Format : DequantizedRows<Q8Format> {
  static constexpr const char* kName = "q8_0";
  static constexpr bool kRotate = false;
  static constexpr int kBlock = 32;
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
  static const float* view(const uint8_t* row, int off, int n, float* buf) {
    const auto* b = reinterpret_cast<const BlockQ8_0*>(row);
    if (off % 32 == 0 && n % 32 == 0) {
      dequantize_q8_0(b + off / 32, buf, n);
    } else {
      for (int i = 0; i < n; ++i) {
        const BlockQ8_0& blk = b[(off + i) / 32];
        buf[i] = fp16_to_fp32(blk.d) * float(blk.qs[(off + i) % 32]);
      }
    }
    return buf;
  }
};

// llama.cpp-style 4-bit blocks (4.5 bits per value with the fp16 scale): the baseline that
// TurboQuant types are measured against. Same row layout as Q8Format.
struct Q4Format : DequantizedRows<Q4Format> {
  static constexpr const char* kName = "q4_0";
  static constexpr bool kRotate = false;
  static constexpr int kBlock = 32;
  static size_t row_bytes(int kv_dim) { return size_t((kv_dim + 31) / 32) * sizeof(BlockQ4_0); }
  static void encode(const float* x, uint8_t* row, int kv_dim) {
    auto* b = reinterpret_cast<BlockQ4_0*>(row);
    for (int i = 0; i < kv_dim; i += 32) {
      if (i + 32 <= kv_dim) {
        quantize_block_ref(x + i, b + i / 32);
      } else {
        float tail[32] = {};
        std::memcpy(tail, x + i, size_t(kv_dim - i) * 4);
        quantize_block_ref(tail, b + i / 32);
      }
    }
  }
  static const float* view(const uint8_t* row, int off, int n, float* buf) {
    const auto* b = reinterpret_cast<const BlockQ4_0*>(row);
    if (off % 32 == 0 && n % 32 == 0) {
      for (int i = 0; i < n; i += 32) dequantize_block_ref(b[(off + i) / 32], buf + i);
    } else {
      float tmp[32];
      int cur = -1;
      for (int i = 0; i < n; ++i) {
        const int blk = (off + i) / 32;
        if (blk != cur) {
          dequantize_block_ref(b[blk], tmp);
          cur = blk;
        }
        buf[i] = tmp[(off + i) % 32];
      }
    }
    return buf;
  }
};

// The same blocks after a random rotation of every head's keys and values (like current llama.cpp's
// quantized KV types): an outlier channel is spread over all coordinates of its head instead of
// setting the scale of its block. Scores are unchanged by an orthogonal rotation (queries are rotated
// the same way) and the weighted sum of rotated values is rotated back once per query head.
struct Q8RotFormat : Q8Format {
  static constexpr const char* kName = "q8_0r";
  static constexpr bool kRotate = true;
};
struct Q4RotFormat : Q4Format {
  static constexpr const char* kName = "q4_0r";
  static constexpr bool kRotate = true;
};
// Base seed of the rotated block types' rotations ("KVROTATE"), one rotation per (model layer, kv head).
constexpr uint64_t kKvRotationSeed = 0x4b56524f54415445ull;

constexpr size_t kHugePage = size_t(2) << 20;

struct AlignedFree {
  size_t align = 64;
  void operator()(uint8_t* p) const { ::operator delete[](p, std::align_val_t(align)); }
};

// Attention streams the whole cache every token; 2 MiB pages keep that from being a walk of 4 KiB
// page-table entries. Advisory: where transparent huge pages are off this does nothing.
void advise_huge_pages(void* p, size_t n) {
#ifdef MADV_HUGEPAGE
  if (n >= kHugePage) madvise(p, n, MADV_HUGEPAGE);
#else
  (void)p;
  (void)n;
#endif
}

template <class Format>
class KvCacheImpl final : public KvCache {
 public:
  explicit KvCacheImpl(const KvShape& s) : KvCache(s) {
    // Head-major storage (per layer and K/V, each kv head's positions contiguous) so that one work
    // item streams one contiguous range: with position-major rows a head's keys sit kv_dim apart,
    // and long-context decode measured 3.7x (4K) to 5.5x (32K) slower (TLB and prefetcher misses,
    // most likely). Block formats fall back to position-major rows when a head is not a whole
    // number of blocks (blocks then span neighbouring heads).
    head_major_ = Format::kBlock == 1 || s.head_dim % Format::kBlock == 0;
    n_segs_ = head_major_ ? s.n_kv_heads : 1;
    seg_width_ = head_major_ ? s.head_dim : s.kv_dim();
    seg_bytes_ = Format::row_bytes(seg_width_);
    n_kv_ = s.values_are_keys ? 1 : 2;  // one set of rows when values are the keys
    // Sliding-window layers hold a ring of positions (KvShape::ring_size), the others n_ctx.
    ring_.resize(size_t(s.n_layers));
    layer_off_.resize(size_t(s.n_layers) + 1, 0);
    for (int l = 0; l < s.n_layers; ++l) {
      ring_[size_t(l)] = s.ring_size(l);
      const size_t layer_bytes = size_t(ring_[size_t(l)]) * seg_bytes_ * size_t(n_segs_) * size_t(n_kv_);
      layer_off_[size_t(l) + 1] = layer_off_[size_t(l)] + layer_bytes;
      if (ring_[size_t(l)] >= s.n_ctx) per_token_ += layer_bytes / size_t(s.n_ctx);
    }
    total_ = layer_off_.back();
    // Not zero-filled: positions are always written by store() before attend() reads them, and
    // leaving the pages untouched keeps a large n_ctx cheap until it is used.
    const size_t align = total_ >= kHugePage ? kHugePage : 64;
    data_ = std::unique_ptr<uint8_t[], AlignedFree>(
        static_cast<uint8_t*>(::operator new[](total_, std::align_val_t(align))), AlignedFree{align});
    advise_huge_pages(data_.get(), total_);
    if constexpr (Format::kRotate) {
      // Randomized Hadamard for power-of-two head dims, Haar-random otherwise (turboquant/rotation.h).
      for (int l = 0; l < s.n_layers; ++l)
        for (int g = 0; g < s.n_kv_heads; ++g)
          rot_.push_back(make_rotation(s.head_dim, TqRotationKind::kAuto,
                                       tq_head_seed(kKvRotationSeed, l + s.first_layer, g)));
    }
  }

  using KvCache::attend;
  using KvCache::store;

  void store(int layer, const KvSpan& sp, const float* k, const float* v) override {
    const int pos = sp.pos0, n_tokens = sp.n;
    check(layer, pos, n_tokens);
    const int kv_dim = shape_.kv_dim(), ring = ring_[size_t(layer)];
    if constexpr (Format::kRotate) {
      rot_k_.resize(size_t(n_tokens) * kv_dim);
      rot_v_.resize(rot_k_.size());
      rotate_heads(layer, k, rot_k_.data(), n_tokens, shape_.n_kv_heads, false);
      if (n_kv_ == 2) rotate_heads(layer, v, rot_v_.data(), n_tokens, shape_.n_kv_heads, false);
      k = rot_k_.data();
      v = rot_v_.data();
    }
    for (int t = 0; t < n_tokens; ++t) {
      for (int sg = 0; sg < n_segs_; ++sg) {
        const size_t src = size_t(t) * kv_dim + size_t(sg) * seg_width_;
        Format::encode(k + src, seg(layer, 0, sg, (pos + t) % ring), seg_width_);
        if (n_kv_ == 2) Format::encode(v + src, seg(layer, 1, sg, (pos + t) % ring), seg_width_);
      }
    }
  }

  void attend(int layer, const KvSpan& sp, const float* q, float* out, float scale,
              ThreadPool& pool) override {
    const int pos0 = sp.pos0, n_q = sp.n;
    check(layer, pos0, n_q);
    const KvShape& sh = shape_;
    if constexpr (Format::kRotate) {
      rot_q_.resize(size_t(n_q) * sh.q_dim());
      rotate_heads(layer, q, rot_q_.data(), n_q, sh.n_heads, false);
      q = rot_q_.data();
    }
    // Prompt blocks: the tiled kernel converts each key/value block once per block of queries. Full
    // attention layers without soft-capping only: a sliding-window ring and gemma2's capped scores take
    // the path below.
    if constexpr (std::is_same_v<Format, F16Format> || std::is_same_v<Format, F32Format>) {
      FlashShape fs{n_q, pos0, sh.n_heads, sh.n_kv_heads, sh.head_dim, scale};
      fs.sinks = sh.sinks(layer);
      if (sh.window(layer) == 0 && sh.softcap == 0 && ring_[size_t(layer)] >= sh.n_ctx &&
          flash_prefill_enabled() && flash_prefill_supported(fs)) {
        using T = std::conditional_t<std::is_same_v<Format, F16Format>, uint16_t, float>;
        // Head-major (kBlock 1): kv head g's positions start ring * seg_bytes_ after head g - 1's.
        const KvRowsView<T> kv{reinterpret_cast<const T*>(seg(layer, 0, 0, 0)),
                               reinterpret_cast<const T*>(seg(layer, 1, 0, 0)),
                               size_t(ring_[size_t(layer)]) * seg_bytes_ / sizeof(T), seg_bytes_ / sizeof(T)};
        flash_prefill(fs, kv, q, out, pool);
        return;
      }
    }
    Job job{this, layer, pos0, q, out, scale};
    job.group = sh.n_heads / sh.n_kv_heads;
    job.n_sub = (job.group + kMaxGroup - 1) / kMaxGroup;
    job.sub_heads = (job.group + job.n_sub - 1) / job.n_sub;
    const int64_t base_items = int64_t(n_q) * sh.n_kv_heads * job.n_sub;
    // Decode has few (query, kv head) items: split long key ranges across threads as well and merge
    // the partial softmax states afterwards.
    const int window = sh.window(layer);
    const int max_keys = window > 0 ? std::min(window, pos0 + n_q) : pos0 + n_q;
    job.n_split = key_splits(pool.size(), base_items, max_keys, kMinSplitKeys);
    const int64_t n_items = base_items * job.n_split;
    if (job.n_split > 1) {
      partial_.reserve(n_items, job.sub_heads, sh.head_dim);
      job.partial = &partial_;
    }
    const double work = double(n_q) * sh.n_heads * (pos0 + 0.5 * n_q + 1) * sh.head_dim * 2;
    const Job* jp = &job;
    run_items(pool, n_items, work, [jp](int64_t i) { jp->run(i); });
    if (job.n_split > 1) {
      for (int t = 0; t < n_q; ++t)
        for (int h = 0; h < sh.n_heads; ++h) {
          const int g = h / job.group, sub = (h % job.group) / job.sub_heads,
                    k = (h % job.group) % job.sub_heads;
          const int64_t base = ((int64_t(t) * sh.n_kv_heads + g) * job.n_sub + sub) * job.n_split;
          partial_.merge(base, job.n_split, k, out + (size_t(t) * sh.n_heads + h) * sh.head_dim,
                         sink_of(layer, h));
        }
    }
    // The output is a weighted sum of rotated values: rotate it back.
    if constexpr (Format::kRotate) rotate_heads(layer, out, out, n_q, sh.n_heads, true);
  }

  // Ring layers are a constant (KvStats::fixed_bytes), not a per-position cost.
  size_t bytes_per_token() const override { return per_token_; }
  size_t allocated_bytes() const override { return total_; }
  const char* type_name() const override { return Format::kName; }

 private:
  // One work item: a query token, a kv head and up to kMaxGroup of the query heads that share it
  // (each K/V row is decoded once for all of them), over one slice of the keys.
  struct Job {
    const KvCacheImpl* self;
    int layer, pos0;
    const float* q;
    float* out;
    float scale;
    int group = 1, n_sub = 1, sub_heads = 1, n_split = 1;
    SplitPartials* partial = nullptr;  // n_split > 1

    void run(int64_t item) const {
      const KvShape& s = self->shape_;
      const int hd = s.head_dim;
      const int split = int(item % n_split);
      int64_t rest = item / n_split;
      const int sub = int(rest % n_sub);
      rest /= n_sub;
      const int g = int(rest % s.n_kv_heads);
      const int t = int(rest / s.n_kv_heads);
      const int h0 = g * group + sub * sub_heads;
      const int nh = std::min(sub_heads, group - sub * sub_heads);
      // Head-major: the head's own segment, from its start; otherwise its slice of the position row.
      const int sg = self->head_major_ ? g : 0;
      const int off = self->head_major_ ? 0 : g * hd;
      const int n_keys = pos0 + t + 1;
      const int lo = s.first_key(layer, n_keys - 1), span = n_keys - lo;
      const int jb = lo + int(int64_t(span) * split / n_split),
                je = lo + int(int64_t(span) * (split + 1) / n_split);
      const int ring = self->ring_[size_t(layer)];
      const float cap = s.softcap;

      const float* qh[kMaxGroup];
      float* accp[kMaxGroup];
      float m[kMaxGroup], l[kMaxGroup];
      alignas(32) float acc[kMaxGroup][kMaxHeadDim];
      alignas(32) float sc[kMaxGroup][kTile];
      alignas(32) float buf[kMaxHeadDim];
      for (int k = 0; k < nh; ++k) {
        qh[k] = q + (size_t(t) * s.n_heads + h0 + k) * hd;
        accp[k] = acc[k];
        m[k] = -std::numeric_limits<float>::infinity();
        l[k] = 0;
        std::fill(acc[k], acc[k] + hd, 0.0f);
      }
      for (int j0 = jb; j0 < je; j0 += kTile) {
        const int nt = std::min(kTile, je - j0);
        const int slot0 = j0 % ring;  // ring slots of positions j0.. (wrapping at most once)
        for (int j = 0, slot = slot0; j < nt; ++j, slot = slot + 1 == ring ? 0 : slot + 1) {
          const uint8_t* kr = self->seg(layer, 0, sg, slot);
          float d[kMaxGroup];
          Format::dot_multi(kr, off, qh, nh, hd, d, buf);
          for (int k = 0; k < nh; ++k) sc[k][j] = softcap_score(d[k] * scale, cap);
        }
        for (int k = 0; k < nh; ++k) {
          float tmax = sc[k][0];
          for (int j = 1; j < nt; ++j) tmax = std::max(tmax, sc[k][j]);
          if (tmax > m[k]) {
            if (l[k] > 0) {
              const float c = std::exp(m[k] - tmax);
              scale_inplace(acc[k], c, hd);
              l[k] *= c;
            }
            m[k] = tmax;
          }
          l[k] += exp_sub_sum(sc[k], nt, m[k]);
        }
        for (int j = 0, slot = slot0; j < nt; ++j, slot = slot + 1 == ring ? 0 : slot + 1) {
          const uint8_t* vr = self->seg(layer, 1, sg, slot);
          float p[kMaxGroup];
          for (int k = 0; k < nh; ++k) p[k] = sc[k][j];
          Format::axpy_multi(p, vr, off, accp, nh, hd, buf);
        }
      }
      for (int k = 0; k < nh; ++k) {
        if (n_split == 1) {
          float* oh = out + (size_t(t) * s.n_heads + h0 + k) * hd;
          const float inv = attn_out_factor(m[k], l[k], self->sink_of(layer, h0 + k));
          for (int i = 0; i < hd; ++i) oh[i] = acc[k][i] * inv;
        } else {
          partial->put(item, k, m[k], l[k], acc[k]);
        }
      }
    }
  };

  // Rotates (or with inverse, rotates back) the heads of n rows of n_row_heads heads each (kv heads, or
  // query heads that read kv head h / group) with the rotation of their kv head; in place allowed.
  void rotate_heads(int layer, const float* x, float* y, int n, int n_row_heads, bool inverse) const {
    const int hd = shape_.head_dim, group = n_row_heads / shape_.n_kv_heads;
    for (int t = 0; t < n; ++t)
      for (int h = 0; h < n_row_heads; ++h) {
        const size_t o = (size_t(t) * n_row_heads + size_t(h)) * hd;
        const TqRotation& r = rot_[size_t(layer) * shape_.n_kv_heads + size_t(h / group)];
        if (inverse) {
          rotate_inverse(r, x + o, y + o);
        } else {
          rotate_forward(r, x + o, y + o);
        }
      }
  }

  // Ring slot `slot` of a layer's keys (kv 0) or values (kv 1; the keys when values are the keys),
  // segment sg.
  uint8_t* seg(int layer, int kv, int sg, int slot) const {
    if (n_kv_ == 1) kv = 0;
    const size_t ring = size_t(ring_[size_t(layer)]);
    return data_.get() + layer_off_[size_t(layer)] +
           ((size_t(kv) * size_t(n_segs_) + size_t(sg)) * ring + size_t(slot)) * seg_bytes_;
  }
  void check(int layer, int pos, int n) const { check_kv_span(shape_, layer, pos, n); }
  float sink_of(int layer, int h) const {
    const float* s = shape_.sinks(layer);
    return s != nullptr ? s[h] : -std::numeric_limits<float>::infinity();
  }

  bool head_major_ = true;
  int n_segs_ = 1, seg_width_ = 0, n_kv_ = 2;
  size_t seg_bytes_ = 0;
  std::vector<int> ring_;          // positions held per layer
  std::vector<size_t> layer_off_;  // byte offset of each layer's keys and values
  size_t per_token_ = 0;
  SplitPartials partial_;
  size_t total_ = 0;
  std::unique_ptr<uint8_t[], AlignedFree> data_;
  std::vector<TqRotation> rot_;               // [layer][kv head] (rotated formats)
  std::vector<float> rot_k_, rot_v_, rot_q_;  // rotated inputs of one call
};

}  // namespace

KvStats KvCache::stats() const {
  KvStats st;
  st.type = type_name();
  st.bytes_per_token = bytes_per_token();
  st.allocated_bytes = allocated_bytes();
  st.fixed_bytes = st.allocated_bytes - st.bytes_per_token * size_t(shape_.n_ctx);
  return st;
}

int KvShape::ring_size(int layer) const {
  const int w = window(layer);
  if (w <= 0 || max_tokens <= 0) return n_ctx;
  const int64_t r = int64_t(w) + std::min(max_tokens, kWindowChunk) - 1;
  return r < n_ctx ? int(r) : n_ctx;
}

int KvShape::chunk_tokens(int layer) const {
  const int all = max_tokens > 0 ? max_tokens : n_ctx;
  return ring_size(layer) < n_ctx ? std::min(all, kWindowChunk) : all;
}

bool KvShape::can_trim(int n_keep, int n_past) const {
  for (int l = 0; l < n_layers; ++l) {
    const int ring = ring_size(l);
    if (ring >= n_ctx) continue;
    // Queries after the trim read positions from first_key(n_keep); the ring holds [n_past - ring, n_past).
    if (first_key(l, n_keep) < std::max(0, n_past - ring)) return false;
  }
  return true;
}

void check_kv_span(const KvShape& s, int layer, int pos, int n) {
  if (layer < 0 || layer >= s.n_layers || pos < 0 || n < 0 || pos + n > s.n_ctx) {
    throw InvalidArgument(fmt::format("kv cache: layer {} positions [{}, {}) out of range (n_ctx {})", layer,
                                      pos, pos + n, s.n_ctx));
  }
  const int ring = s.ring_size(layer);
  if (ring < s.n_ctx && n > ring - s.window(layer) + 1) {
    throw InvalidArgument(
        fmt::format("kv cache: {} positions at once exceed what the ring of {} holds for a "
                    "window of {}",
                    n, ring, s.window(layer)));
  }
}

void check_kv_shape(const KvShape& s) {
  if (s.n_layers <= 0 || s.n_ctx <= 0 || s.n_heads <= 0 || s.n_kv_heads <= 0 || s.head_dim <= 0 ||
      s.n_heads % s.n_kv_heads != 0) {
    throw InvalidArgument(fmt::format("kv cache: bad shape (layers {}, ctx {}, heads {}/{}, head_dim {})",
                                      s.n_layers, s.n_ctx, s.n_heads, s.n_kv_heads, s.head_dim));
  }
  if (!s.windows.empty() && int(s.windows.size()) != s.n_layers)
    throw InvalidArgument(fmt::format("kv cache: {} windows for {} layers", s.windows.size(), s.n_layers));
  for (int w : s.windows)
    if (w < 0) throw InvalidArgument("kv cache: negative sliding window");
  if (s.max_tokens < 0 || !(s.softcap >= 0)) throw InvalidArgument("kv cache: bad max_tokens or softcap");
  if (!s.attn_sinks.empty() && s.attn_sinks.size() != size_t(s.n_layers) * size_t(s.n_heads))
    throw InvalidArgument(fmt::format("kv cache: {} attention sinks for {} layers x {} heads",
                                      s.attn_sinks.size(), s.n_layers, s.n_heads));
  for (float x : s.attn_sinks)
    if (std::isnan(x) || x == std::numeric_limits<float>::infinity())
      throw InvalidArgument("kv cache: attention sink is NaN or +inf");
  if (s.head_dim > kMaxHeadDim) {
    throw Unsupported(fmt::format("kv cache: head_dim {} exceeds {}", s.head_dim, kMaxHeadDim));
  }
}

std::unique_ptr<KvCache> make_kv_cache(const std::string& type, const KvShape& s) {
  check_kv_shape(s);
  if (type == "f32") return std::make_unique<KvCacheImpl<F32Format>>(s);
  if (type == "f16") return std::make_unique<KvCacheImpl<F16Format>>(s);
  if (type == "q8_0") return std::make_unique<KvCacheImpl<Q8Format>>(s);
  if (type == "q4_0") return std::make_unique<KvCacheImpl<Q4Format>>(s);
  if (type == "q8_0r") return std::make_unique<KvCacheImpl<Q8RotFormat>>(s);
  if (type == "q4_0r") return std::make_unique<KvCacheImpl<Q4RotFormat>>(s);
  if (const auto tq = parse_tq_kv_type(type)) return make_turboquant_kv_cache(type, *tq, s);
  throw InvalidArgument(
      fmt::format("unknown kv cache type '{}' (supported: f32, f16, q8_0, q4_0, q8_0r, q4_0r, {})", type,
                  tq_kv_type_help()));
}

}  // namespace qleap
