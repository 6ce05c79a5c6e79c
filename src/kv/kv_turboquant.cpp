#include "kv/kv_turboquant.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <new>
#include <vector>

#include "core/error.h"
#include "turboquant/tq_attention.h"
#include "turboquant/tq_quant.h"

namespace qleap {

namespace {

// Rates accepted in names, spelled exactly like this (so each name has one spelling).
std::optional<float> parse_rate(const std::string& s) {
  static const std::pair<const char*, float> kRates[] = {
      {"2", 2.0f}, {"2.5", 2.5f}, {"3", 3.0f}, {"3.5", 3.5f}, {"4", 4.0f}};
  for (const auto& [text, bits] : kRates) {
    if (s == text) return bits;
  }
  return std::nullopt;
}

struct AlignedFree {
  void operator()(uint8_t* p) const { ::operator delete[](p, std::align_val_t(64)); }
};

class TurboQuantKvCache final : public KvCache {
 public:
  TurboQuantKvCache(const std::string& name, const TqKvSpec& spec, const KvShape& s)
      : KvCache(s), name_(name) {
    const TqConfig kc = tq_kv_config(spec, s.head_dim, false);
    const TqConfig vc = tq_kv_config(spec, s.head_dim, true);
    k_states_ = tq_make_states(kc, s.n_layers, s.n_kv_heads);
    v_states_ = tq_make_states(vc, s.n_layers, s.n_kv_heads);
    k_rec_ = k_states_.front().layout.bytes;
    v_rec_ = v_states_.front().layout.bytes;
    // Per (layer, kv head): n_ctx key records, then n_ctx value records.
    head_bytes_ = size_t(s.n_ctx) * (k_rec_ + v_rec_);
    total_ = head_bytes_ * size_t(s.n_layers) * size_t(s.n_kv_heads);
    // Not zero-filled, like the other caches: store() writes every position before attend() reads it.
    data_.reset(static_cast<uint8_t*>(::operator new[](total_, std::align_val_t(64))));
  }

  void store(int layer, int pos, int n_tokens, const float* k, const float* v) override {
    check(layer, pos, n_tokens);
    const KvShape& s = shape_;
    const size_t row = size_t(s.kv_dim());
    for (int g = 0; g < s.n_kv_heads; ++g) {
      const size_t off = size_t(g) * s.head_dim;
      tq_quantize_rows(kstate(layer, g), n_tokens, k + off, row, keys(layer, g) + size_t(pos) * k_rec_,
                       k_rec_);
      tq_quantize_rows(vstate(layer, g), n_tokens, v + off, row, values(layer, g) + size_t(pos) * v_rec_,
                       v_rec_);
    }
  }

  void attend(int layer, int pos0, int n_q, const float* q, float* out, float scale,
              ThreadPool& pool) override {
    check(layer, pos0, n_q);
    if (n_q == 0) return;
    const KvShape& s = shape_;
    const int hd = s.head_dim, group = s.n_heads / s.n_kv_heads;
    const size_t row = size_t(s.n_heads) * hd;
    // Work items: (kv head, chunk of query tokens). Prefill gets enough chunks for the dynamic
    // scheduler to balance the causal triangle; decode has one item per kv head.
    const int P = pool.size();
    const int want_chunks = std::max(1, (8 * P + s.n_kv_heads - 1) / s.n_kv_heads);
    const int n_chunks = std::min(n_q, want_chunks);
    const int64_t n_items = int64_t(n_chunks) * s.n_kv_heads;
    auto run = [&](int64_t item) {
      // Latest chunks first: they see the most keys, so the scheduler ends on the cheap ones.
      const int c = n_chunks - 1 - int(item / s.n_kv_heads);
      const int g = int(item % s.n_kv_heads);
      const int t0 = int(int64_t(n_q) * c / n_chunks), t1 = int(int64_t(n_q) * (c + 1) / n_chunks);
      if (t1 <= t0) return;
      const size_t head_off = size_t(g) * group * hd;
      tq_attend_gqa(kstate(layer, g), vstate(layer, g), pos0 + t0, t1 - t0, group,
                    q + size_t(t0) * row + head_off, row, keys(layer, g), k_rec_, values(layer, g), v_rec_,
                    scale, out + size_t(t0) * row + head_off, row);
    };
    // Multiply-adds; below a few tens of thousands the dispatch costs more than it saves.
    const double work = double(n_q) * s.n_heads * (pos0 + 0.5 * n_q + 1) * hd * 2;
    if (P == 1 || n_items == 1 || work < 32768) {
      for (int64_t i = 0; i < n_items; ++i) run(i);
    } else {
      pool.parallel_for(n_items, 1, [&run](int64_t b, int64_t e, int) {
        for (int64_t i = b; i < e; ++i) run(i);
      });
    }
  }

  size_t bytes_per_token() const override {
    return (k_rec_ + v_rec_) * size_t(shape_.n_kv_heads) * size_t(shape_.n_layers);
  }
  size_t allocated_bytes() const override { return total_; }
  const char* type_name() const override { return name_.c_str(); }

 private:
  const TqState& kstate(int layer, int g) const { return k_states_[size_t(layer) * shape_.n_kv_heads + g]; }
  const TqState& vstate(int layer, int g) const { return v_states_[size_t(layer) * shape_.n_kv_heads + g]; }
  uint8_t* keys(int layer, int g) const {
    return data_.get() + (size_t(layer) * shape_.n_kv_heads + g) * head_bytes_;
  }
  uint8_t* values(int layer, int g) const { return keys(layer, g) + size_t(shape_.n_ctx) * k_rec_; }
  void check(int layer, int pos, int n) const {
    if (layer < 0 || layer >= shape_.n_layers || pos < 0 || n < 0 || pos + n > shape_.n_ctx) {
      throw InvalidArgument(fmt::format("kv cache: layer {} positions [{}, {}) out of range (n_ctx {})",
                                        layer, pos, pos + n, shape_.n_ctx));
    }
  }

  std::string name_;
  std::vector<TqState> k_states_, v_states_;
  size_t k_rec_ = 0, v_rec_ = 0;
  size_t head_bytes_ = 0;
  size_t total_ = 0;
  std::unique_ptr<uint8_t[], AlignedFree> data_;
};

}  // namespace

std::optional<TqKvSpec> parse_tq_kv_type(const std::string& type) {
  if (type.size() > 2 && type.compare(0, 2, "tq") == 0) {
    const auto b = parse_rate(type.substr(2));
    if (!b) return std::nullopt;
    return TqKvSpec{*b, *b};
  }
  if (type.size() > 3 && type[0] == 'k') {
    const size_t vpos = type.find('v');
    if (vpos == std::string::npos) return std::nullopt;
    const auto kb = parse_rate(type.substr(1, vpos - 1));
    const auto vb = parse_rate(type.substr(vpos + 1));
    if (!kb || !vb) return std::nullopt;
    return TqKvSpec{*kb, *vb};
  }
  return std::nullopt;
}

TqConfig tq_kv_config(const TqKvSpec& spec, int head_dim, bool value) {
  TqConfig c;
  c.dim = head_dim;
  c.bits = value ? spec.v_bits : spec.k_bits;
  // rotation kAuto: Hadamard for power-of-two head dims, Haar (dense) otherwise.
  // Values get another base seed ("VALUES" in the high bytes) so that tq_head_seed gives every
  // (layer, head) a value rotation independent of its key rotation.
  if (value) c.seed = kTqDefaultSeed ^ 0x56414c5545530000ull;
  return c;
}

const char* tq_kv_type_help() {
  return "tq2, tq2.5, tq3, tq3.5, tq4 (TurboQuant, K and V at that many bits), kXvY with X, Y in "
         "{2, 2.5, 3, 3.5, 4} (e.g. k4v3, k4v2, k3v2: K at X bits, V at Y bits)";
}

std::unique_ptr<KvCache> make_turboquant_kv_cache(const std::string& name, const TqKvSpec& spec,
                                                  const KvShape& shape) {
  return std::make_unique<TurboQuantKvCache>(name, spec, shape);
}

}  // namespace qleap
