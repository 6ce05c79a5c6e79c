#include "kv/kv_turboquant.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <vector>

#include "backend/cpu/ops.h"
#include "core/error.h"
#include "core/fp16.h"
#include "kv/kv_turboquant_attend.h"
#include "kv/split_attention.h"
#include "turboquant/tq_attention.h"
#include "turboquant/tq_quant.h"
#include "turboquant/tq_sensitivity.h"

namespace qleap {

namespace {

struct AlignedFree {
  void operator()(uint8_t* p) const { ::operator delete[](p, std::align_val_t(64)); }
};

// s_i = (b_i / a_i)^(1/4) (a null: a_i = 1), normalized to a geometric mean of 1 and clamped to
// [1e-2, 1e2]; floors keep empty channels finite.
void channel_scales(const double* a, const double* b, int n, float* s_out, float* inv_out) {
  double ma = 0, mb = 0;
  for (int i = 0; i < n; ++i) {
    ma += (a ? a[i] : 1.0) / n;
    mb += b[i] / n;
  }
  std::vector<double> s(static_cast<size_t>(n));
  double log_mean = 0;
  for (int i = 0; i < n; ++i) {
    const double ai = (a ? a[i] : 1.0) + 1e-4 * ma + 1e-30, bi = b[i] + 1e-4 * mb + 1e-30;
    s[size_t(i)] = std::pow(bi / ai, 0.25);
    log_mean += std::log(s[size_t(i)]) / n;
  }
  for (int i = 0; i < n; ++i) {
    const double si =
        std::isfinite(log_mean) ? std::clamp(s[size_t(i)] / std::exp(log_mean), 1e-2, 1e2) : 1.0;
    s_out[i] = float(si);
    inv_out[i] = float(1.0 / si);
  }
}

// Fewest keys per slice when one query's keys are split across threads.
constexpr int kMinSplitKeys = 64;

class TurboQuantKvCache final : public KvCache {
 public:
  TurboQuantKvCache(const std::string& name, const TqKvSpec& spec, const KvShape& s)
      : KvCache(s), name_(name), spec_(spec) {
    const int L = s.n_layers, ML = s.total_layers();
    if (s.n_heads / s.n_kv_heads > 256)
      throw Unsupported("turboquant kv cache: more than 256 query heads per kv head");
    const size_t H = size_t(s.n_kv_heads);
    if (!spec.head_k_bits.empty() &&
        (spec.head_k_bits.size() != size_t(ML) * H || spec.head_v_bits.size() != size_t(ML) * H))
      throw InvalidArgument("turboquant kv cache: the per-head bit allocation does not match the model");
    // MLA's latent (KvShape::values_are_keys): one key record per position, which the attention also
    // reads as the value (the value path decodes it with the key's state, centering and scales). QJL
    // key records carry a residual sketch the value path would ignore, so those keep value records.
    shared_ = s.values_are_keys && !spec.qjl_keys;
    ring_.assign(size_t(L), 0);
    slots_.assign(size_t(L), s.n_ctx);
    window_ = std::max(0, std::min(spec.window, s.n_ctx));
    win_.assign(size_t(L), window_);
    for (int l = 0; l < L; ++l) {
      // Sliding-window layers: a ring of records (a window may wrap around its end: TqWrap).
      const int r = s.ring_size(l);
      if (r < s.n_ctx) {
        ring_[size_t(l)] = r;
        slots_[size_t(l)] = r;
        // Such a layer may keep another exact window (`rwN`), at most the positions it attends to.
        if (spec.ring_window >= 0)
          win_[size_t(l)] = std::max(0, std::min({spec.ring_window, s.window(l), s.n_ctx}));
      }
    }
    // An `rwN` window covering a ring layer's attention window leaves no query reading its records:
    // every position it attends to is an exact row, whose score and value replace the record's. Such
    // records are not encoded (they stay zero: a zero record is a zero vector), which spares the
    // encoder, the append path's main cost; they are still allocated and scored.
    covered_.assign(size_t(L), 0);
    for (int l = 0; l < L; ++l)
      covered_[size_t(l)] = ring_[size_t(l)] > 0 && spec.ring_window >= 0 && win_[size_t(l)] >= s.window(l);
    // Rates per (layer, kv head) of this cache, from the spec (rates and edge layers follow the model
    // layer, KvShape::first_layer); calibrate() may replace them with an allocation.
    std::vector<float> kb(size_t(L) * H), vb(kb.size());
    for (int l = 0; l < L; ++l)
      for (int g = 0; g < s.n_kv_heads; ++g) {
        const int ml = l + s.first_layer;
        const size_t i = size_t(l) * H + size_t(g), mi = size_t(ml) * H + size_t(g);
        const bool per_head = !spec.head_k_bits.empty();
        kb[i] = per_head ? spec.head_k_bits[mi] : spec.k_bits_at(ml, ML);
        vb[i] = per_head ? spec.head_v_bits[mi] : spec.v_bits_at(ml, ML);
        // A ring's records are a constant: bits there do not grow with the context.
        if (!per_head && ring_[size_t(l)] > 0) {
          // Records no query reads (covered_) take the least memory, and no per-head allocation, as
          // for other ring rates. Default caches keep their rates.
          const bool covered = covered_[size_t(l)] != 0;
          kb[i] = covered ? 2.0f : spec.ring_rate(kb[i]);
          vb[i] = covered ? 2.0f : spec.ring_rate(vb[i]);
          ring_boost_ = ring_boost_ || kb[i] != spec.k_bits_at(ml, ML) || vb[i] != spec.v_bits_at(ml, ML);
        }
        if (shared_) vb[i] = kb[i];
      }
    set_rates(kb, vb);
    total_ = head_off_.back();
    mu_k_.assign(size_t(L) * s.kv_dim(), 0.0f);
    mu_v_.assign(size_t(L) * s.kv_dim(), 0.0f);
    calibrated_.assign(size_t(L), 0);
    scaled_.assign(size_t(L), 0);
    vscaled_.assign(size_t(L), 0);
    s_v_.assign(size_t(L) * s.kv_dim(), 1.0f);
    inv_s_v_.assign(size_t(L) * s.kv_dim(), 1.0f);
    s_k_.assign(size_t(L) * s.kv_dim(), 1.0f);
    inv_s_k_.assign(size_t(L) * s.kv_dim(), 1.0f);
    sink_ = std::min(spec.sink, s.n_ctx);
    sink_k_.assign(size_t(L) * s.n_kv_heads * sink_ * s.head_dim, 0.0f);
    sink_v_.assign(shared_ ? 0 : sink_k_.size(), 0.0f);  // shared: the value rows are the key rows
    kblock_ = spec.key_block > 0 && !shared_ ? spec.key_block : 0;
    kshift_on_.assign(size_t(L), 0);
    kshift_valid_.assign(size_t(L), 1);
    // Shift rows where block means can apply: full layers, a row per block of n_ctx; ring layers of at
    // least two blocks (a block's shift is read from the two blocks before it), a ring of rows covering
    // the positions a query sees plus those two. Soft-capped scores keep uncentered keys: none.
    kshift_rows_.assign(size_t(L), 0);
    kshift_off_.assign(size_t(L) + 1, 0);
    for (int l = 0; l < L; ++l) {
      const int r = ring_[size_t(l)];
      if (kblock_ > 0 && !(s.softcap > 0) && (r == 0 || r >= 2 * kblock_)) {
        kshift_rows_[size_t(l)] = r == 0 ? s.n_ctx / kblock_ + 1 : r / kblock_ + 4;
        if (r == 0) kshift_full_heads_ += H;
      }
      kshift_off_[size_t(l) + 1] = kshift_off_[size_t(l)] + size_t(kshift_rows_[size_t(l)]) * H * s.head_dim;
    }
    // Allocated as counted (shift_bytes(), rounded up to whole floats), which holds every row above.
    kshift_.assign(std::max(kshift_off_.back(), (shift_bytes() + sizeof(float) - 1) / sizeof(float)), 0.0f);
    tail_.resize(size_t(L));
    // Not zero-filled, like the other caches: store() writes every position before attend() reads it.
    data_.reset(static_cast<uint8_t*>(::operator new[](total_, std::align_val_t(64))));
  }

  using KvCache::attend;
  using KvCache::store;

  void store(int layer, const KvSpan& sp, const float* k, const float* v) override {
    check(layer, sp.pos0, sp.n);
    if (sp.n == 0) return;
    quantize_range(layer, sp.pos0, sp.n, k, v);
  }

  // A new sequence: the exact window rows go (the records are simply overwritten).
  void reset() override {
    for (WindowRing& w : tail_) w.begin = w.end = 0;
    std::fill(kshift_valid_.begin(), kshift_valid_.end(), 1);
  }
  // A trim to n_keep is exact when every layer's window rows of [n_keep + 1 - win_, n_keep) are still held:
  // the next query reads them exactly, as a cache that never went past n_keep would. The ring keeps
  // kTrimRows rows more than queries need, so the common trims (a chat's next turn re-reads all but
  // the last token or two of the previous one) stay exact.
  bool trims_exactly(int n_keep) const override {
    for (size_t l = 0; l < tail_.size(); ++l) {
      if (win_[l] <= 0) continue;
      const int64_t from = std::max<int64_t>(0, int64_t(n_keep) + 1 - win_[l]);
      if (tail_[l].begin > from) return false;
    }
    return true;
  }
  // Positions from n_keep on are forgotten: their window rows too, so that a later query never reads
  // a row of the old continuation.
  void trim(int n_keep) override {
    for (WindowRing& w : tail_) {
      w.end = std::min<int64_t>(w.end, n_keep);
      w.begin = std::min(w.begin, w.end);
    }
    // Block b's shift is the mean of block b - 1's records: it holds while those are kept.
    if (kblock_ > 0)
      for (int64_t& v : kshift_valid_) v = std::min<int64_t>(v, n_keep / kblock_ + 1);
  }
  bool wants_calibration() const override { return spec_.center; }

  // Per layer and kv head: the mean key and value (centering), and from the centered key energy b_i
  // and the energy a_i of the queries that read channel i, key channel scales s_i = (b_i / a_i)^(1/4):
  // keys are stored as (k - mu) / s and queries multiplied by s, so scores are unchanged; the rotated
  // quantization error e is isotropic in the scaled space, and the score error q.(s e) has variance
  // ~ sum a_i s_i^2 * sum b_i / s_i^2, which this s minimizes (Cauchy-Schwarz). It matters when
  // queries and keys put their energy in different channels, as real models do.
  void calibrate(const KvCalibration& c) override {
    c.check(shape_);
    if (!spec_.center || c.empty()) return;
    allocate_from(c);
    const KvShape& sh = shape_;
    const int kvd = sh.kv_dim(), hd = sh.head_dim;
    std::vector<double> a(static_cast<size_t>(hd)), b(static_cast<size_t>(hd));
    // Soft-capped scores (gemma2) are not shift-invariant: softcap(q.(k - mu)) is not softcap(q.k) minus
    // a constant, so keys are then stored uncentered (values still are; key scales stay exact).
    const bool center_keys = !(sh.softcap > 0);
    for (int l = 0; l < sh.n_layers; ++l) {
      const size_t L = size_t(l);
      for (int i = 0; i < kvd; ++i) {
        mu_k_[L * kvd + size_t(i)] = center_keys ? float(c.mean_k(l, i)) : 0.0f;
        mu_v_[L * kvd + size_t(i)] = float(c.mean_v(l, i));
      }
      calibrated_[L] = 1;
      for (int g = 0; g < sh.n_kv_heads; ++g) {
        if (spec_.qscale && c.n_queries > 0) {
          for (int i = 0; i < hd; ++i) {
            a[size_t(i)] = c.sum_q2[L * kvd + size_t(g * hd + i)];
            b[size_t(i)] =
                center_keys ? c.centered_energy_k(l, g * hd + i) : c.sum_k2[L * kvd + size_t(g * hd + i)];
          }
          channel_scales(a.data(), b.data(), hd, &s_k_[L * kvd + size_t(g) * hd],
                         &inv_s_k_[L * kvd + size_t(g) * hd]);
          scaled_[L] = 1;
        }
        if (spec_.vscale) {
          // Values: the output error is ||s e||^2 with e isotropic, minimized by s_i = b_i^(1/4) (a_i = 1).
          for (int i = 0; i < hd; ++i) b[size_t(i)] = c.centered_energy_v(l, g * hd + i);
          channel_scales(nullptr, b.data(), hd, &s_v_[L * kvd + size_t(g) * hd],
                         &inv_s_v_[L * kvd + size_t(g) * hd]);
          vscaled_[L] = 1;
        }
      }
      kshift_on_[L] = kshift_rows_[L] > 0 && center_keys;
      if (shared_) {
        // The values are the key records: decoded with the keys' centering and channel scales.
        std::copy_n(&mu_k_[L * kvd], kvd, &mu_v_[L * kvd]);
        std::copy_n(&s_k_[L * kvd], kvd, &s_v_[L * kvd]);
        std::copy_n(&inv_s_k_[L * kvd], kvd, &inv_s_v_[L * kvd]);
        vscaled_[L] = scaled_[L];
      }
    }
    calibrated_any_ = true;
  }
  KvStats stats() const override {
    KvStats st = KvCache::stats();
    st.calibrated = calibrated_any_;
    return st;
  }

  void quantize_range(int layer, int pos, int n_tokens, const float* k, const float* v) {
    prepare_window(layer, pos, n_tokens);
    const size_t kvd = size_t(shape_.kv_dim());
    if (!kshift_on_[size_t(layer)]) {
      quantize_segment(layer, pos, n_tokens, k, v, nullptr);
      return;
    }
    // Block by block: a block's keys are centered on the mean of the records of the block before.
    // A store at pos keeps [0, pos) (a restart or rewrite of the tail, as after trim(pos)).
    const int B = kblock_;
    int64_t& valid = kshift_valid_[size_t(layer)];
    valid = std::min<int64_t>(valid, pos / B + 1);
    std::vector<float> mk(kvd);
    for (int p = pos; p < pos + n_tokens;) {
      const int b = p / B, e = std::min(pos + n_tokens, (b + 1) * B);
      update_shifts(layer, b);
      block_mean(layer, b, mk.data());
      const size_t off = size_t(p - pos) * kvd;
      quantize_segment(layer, p, e - p, k + off, shared_ ? nullptr : v + off, mk.data());
      p = e;
    }
  }

  // Shift rows of full layers per position: a row (head_dim floats) per block and kv head, spread
  // over the block's positions (rounded up once, over all of them).
  size_t shift_bytes_per_token() const {
    return kblock_ > 0
               ? (kshift_full_heads_ * size_t(shape_.head_dim) * sizeof(float) + size_t(kblock_) - 1) /
                     size_t(kblock_)
               : 0;
  }
  // What the shift rows are counted as: per position as above, plus one row per full-layer kv head
  // (block n_ctx / B) and the ring layers' rows (a constant). At least the rows' floats.
  size_t shift_bytes() const {
    size_t ring_rows = 0;
    for (size_t l = 0; l < kshift_rows_.size(); ++l)
      if (ring_[l] > 0) ring_rows += size_t(kshift_rows_[l]) * size_t(shape_.n_kv_heads);
    return shift_bytes_per_token() * size_t(shape_.n_ctx) +
           (kshift_full_heads_ + ring_rows) * size_t(shape_.head_dim) * sizeof(float);
  }
  // Block b's shift row of a layer and kv head (ring layers: a ring of kshift_rows_ rows).
  float* shift_row(int layer, int g, int64_t b) {
    const size_t l = size_t(layer);
    const int64_t rows = kshift_rows_[l];
    return &kshift_[kshift_off_[l] +
                    (size_t(g) * size_t(rows) + size_t(ring_[l] > 0 ? b % rows : b)) * shape_.head_dim];
  }
  const float* shift_row(int layer, int g, int64_t b) const {
    return const_cast<TurboQuantKvCache*>(this)->shift_row(layer, g, b);
  }
  // Shift rows of blocks up to b: block c's is block c - 1's plus the mean of block c - 1's records (in
  // the rotated space, norm * c[idx]): together, the mean of block c - 1's keys as stored, relative to
  // the cache's mean. From the records, not the keys: after a trim they are all that is left, and
  // the same records give the same shifts whatever the batches were.
  void update_shifts(int layer, int b) {
    int64_t& valid = kshift_valid_[size_t(layer)];
    const int hd = shape_.head_dim;
    const size_t kvd = size_t(shape_.kv_dim());
    const float* isk = &inv_s_k_[size_t(layer) * kvd];
    const bool scaled = scaled_[size_t(layer)] != 0;
    std::vector<float> a(static_cast<size_t>(hd)), ap(a.size()), dm(a.size());
    // Block 0 is centered on the calibrated mean: its row is zero. A ring layer's row of block 0 is
    // also the row of later blocks, so after a reset or a trim into block 0 it may hold another
    // sequence's shift.
    if (valid <= 1)
      for (int g = 0; g < shape_.n_kv_heads; ++g) std::fill_n(shift_row(layer, g, 0), hd, 0.0f);
    for (; valid <= b; ++valid) {
      const int64_t c = valid;
      for (int g = 0; g < shape_.n_kv_heads; ++g) {
        // Per channel, the previous block's mean where it predicted block c - 1 better than the
        // calibrated mean did (|a - a_prev| < |a|): slow RoPE pairs drift and are followed; a pair that
        // turns by about a radian per block, or a channel whose mean does not move, keeps the
        // calibrated mean (block 1 has no history: the calibrated mean).
        stored_block_mean(layer, g, c - 1, a.data());
        if (c >= 2) stored_block_mean(layer, g, c - 2, ap.data());
        for (int i = 0; i < hd; ++i) {
          const size_t u = size_t(i);
          const float d = c >= 2 && std::fabs(a[u] - ap[u]) < std::fabs(a[u]) ? a[u] : 0.0f;
          dm[u] = d * (scaled ? isk[size_t(g) * hd + u] : 1.0f);
        }
        tq_rotate_query(kstate(layer, g), dm.data(), shift_row(layer, g, c));
      }
    }
  }
  // Block c's keys as stored (its records plus its shift), minus the calibrated mean, averaged, in the
  // model's space: s * R^T (shift_c + mean of norm * c[idx]).
  void stored_block_mean(int layer, int g, int64_t c, float* out) const {
    const int hd = shape_.head_dim, B = kblock_;
    const TqState& ks = kstate(layer, g);
    const size_t kr = krec(layer, g);
    const int64_t ring = ring_[size_t(layer)];  // at least 2 B: those positions are still held
    std::vector<float> y(static_cast<size_t>(hd)), acc(static_cast<size_t>(hd));
    std::copy_n(shift_row(layer, g, c), hd, acc.data());
    for (int64_t j = c * B; j < (c + 1) * B; ++j) {
      const uint8_t* rec = keys(layer, g) + size_t(ring > 0 ? j % ring : j) * kr;
      tq_dequantize_rotated_unit(ks, rec, y.data());
      axpy_f32(tq_record_norm(ks.layout, rec) / float(B), y.data(), acc.data(), hd);
    }
    tq_unrotate(ks, acc.data(), out);
    if (scaled_[size_t(layer)])
      for (int i = 0; i < hd; ++i)
        out[i] *= s_k_[size_t(layer) * shape_.kv_dim() + size_t(g) * hd + size_t(i)];
  }
  // The mean the keys of block b are centered on, in the model's space: mu + s * R^T shift_b.
  void block_mean(int layer, int b, float* out) const {
    const int hd = shape_.head_dim;
    const size_t kvd = size_t(shape_.kv_dim());
    const float* mu = &mu_k_[size_t(layer) * kvd];
    const float* sk = &s_k_[size_t(layer) * kvd];
    std::vector<float> d(static_cast<size_t>(hd));
    for (int g = 0; g < shape_.n_kv_heads; ++g) {
      tq_unrotate(kstate(layer, g), shift_row(layer, g, b), d.data());
      for (int i = 0; i < hd; ++i) {
        const size_t c = size_t(g) * hd + size_t(i);
        out[c] = mu[c] + (scaled_[size_t(layer)] ? sk[c] : 1.0f) * d[size_t(i)];
      }
    }
  }

  // Records of positions [pos, pos + n_tokens) (window rows prepared); mean_k: the keys' centering
  // (nullptr: the calibrated mean).
  void quantize_segment(int layer, int pos, int n_tokens, const float* k, const float* v,
                        const float* mean_k) {
    const KvShape& s = shape_;
    const int kvd = s.kv_dim(), hd = s.head_dim;
    const bool c = spec_.center && calibrated_[size_t(layer)];
    const float* muk = c ? (mean_k ? mean_k : &mu_k_[size_t(layer) * kvd]) : nullptr;
    const float* muk0 = c ? &mu_k_[size_t(layer) * kvd] : nullptr;
    const float* muv = c ? &mu_v_[size_t(layer) * kvd] : nullptr;
    const float* isk = scaled_[size_t(layer)] ? &inv_s_k_[size_t(layer) * kvd] : nullptr;
    const float* isv = vscaled_[size_t(layer)] ? &inv_s_v_[size_t(layer) * kvd] : nullptr;
    // Items: (kv head, chunk of 16 tokens); ~2 us per vector, so prefill is worth threading. Many small
    // items, taken dynamically, leave the threads at most one item apart (a few per thread, e.g. 9
    // over 2 threads for 3 KV heads, left one thread idle for a ninth of the work).
    const int P = pool_ ? pool_->size() : 1;
    const int n_chunks = std::max(1, n_tokens / 16);
    const int64_t n_items = int64_t(n_chunks) * s.n_kv_heads;
    auto run = [&](int64_t item) {
      const int g = int(item % s.n_kv_heads), c = int(item / s.n_kv_heads);
      const int t0 = int(int64_t(n_tokens) * c / n_chunks), t1 = int(int64_t(n_tokens) * (c + 1) / n_chunks);
      const TqState& ks = kstate(layer, g);
      const TqState& vs = vstate(layer, g);
      const size_t kr = krec(layer, g), vr = vrec(layer, g);
      const int64_t ring = ring_[size_t(layer)];
      thread_local std::vector<float> tmp, rot;
      tmp.resize(size_t(hd));
      rot.resize(size_t(hd));
      for (int t = t0; t < t1; ++t) {
        const float* kx = k + size_t(t) * kvd + size_t(g) * hd;
        const float* vx = shared_ ? kx : v + size_t(t) * kvd + size_t(g) * hd;
        const float* mk = muk ? muk + size_t(g) * hd : nullptr;
        const float* mk0 = muk0 ? muk0 + size_t(g) * hd : nullptr;  // exact rows: the cache's mean
        const float* mv = muv ? muv + size_t(g) * hd : nullptr;
        const float* sk = isk ? isk + size_t(g) * hd : nullptr;
        const float* sv = isv ? isv + size_t(g) * hd : nullptr;
        const int64_t slot = ring > 0 ? (pos + t) % ring : pos + t;
        uint8_t* kd = keys(layer, g) + size_t(slot) * kr;
        uint8_t* vd = values(layer, g) + size_t(slot) * vr;
        if (!covered_[size_t(layer)]) {
          quantize_one(ks, kx, mk, sk, tmp.data(), kd);
          if (!shared_) quantize_one(vs, vx, mv, sv, tmp.data(), vd);
        }
        if (pos + t < sink_) {
          // The record is written too (it gets zero weight): every position has one.
          exact_one(ks, kx, mk0, sk, tmp.data(), sink_row(sink_k_, layer, g, pos + t));
          if (!shared_) exact_one(vs, vx, mv, sv, tmp.data(), sink_row(sink_v_, layer, g, pos + t));
        }
        if (win_[size_t(layer)] > 0) {
          exact_one(ks, kx, mk0, sk, tmp.data(), rot.data());
          fp32_to_fp16_row(rot.data(), window_row(tail_[size_t(layer)].k, layer, g, pos + t), hd);
          if (!shared_) {
            exact_one(vs, vx, mv, sv, tmp.data(), rot.data());
            fp32_to_fp16_row(rot.data(), window_row(tail_[size_t(layer)].v, layer, g, pos + t), hd);
          }
        }
      }
    };
    if (P == 1 || n_items == 1) {
      for (int64_t i = 0; i < n_items; ++i) run(i);
    } else {
      pool_->parallel_for(n_items, 1, [&run](int64_t b, int64_t e, int) {
        for (int64_t i = b; i < e; ++i) run(i);
      });
    }
  }

  void attend(int layer, const KvSpan& sp, const float* q, float* out, float scale,
              ThreadPool& pool) override {
    const int pos0 = sp.pos0, n_q = sp.n;
    check(layer, pos0, n_q);
    if (n_q == 0) return;
    const KvShape& s = shape_;
    const size_t L = size_t(layer);
    const bool centered = spec_.center && calibrated_[L];
    set_sinks(layer, n_q, q, scale, centered);
    if (scaled_[L]) {
      // Scores on keys stored divided by s need queries multiplied by s.
      const int hd = s.head_dim, group = s.n_heads / s.n_kv_heads;
      qbuf_.resize(size_t(n_q) * s.n_heads * hd);
      const float* sk = &s_k_[L * s.kv_dim()];
      for (int t = 0; t < n_q; ++t)
        for (int h = 0; h < s.n_heads; ++h) {
          const size_t o = (size_t(t) * s.n_heads + h) * hd;
          const float* sc = sk + size_t(h / group) * hd;
          for (int i = 0; i < hd; ++i) qbuf_[o + i] = q[o + i] * sc[i];
        }
      q = qbuf_.data();
    }
    // Decode has few (query, kv head) items: split long key ranges across threads too and merge the
    // partial softmax states (flash-decoding, kv/split_attention.h).
    const int window = s.window(layer);
    const int max_keys = window > 0 ? std::min(window, pos0 + n_q) : pos0 + n_q;
    const int n_split = key_splits(pool.size(), int64_t(n_q) * s.n_kv_heads, max_keys, kMinSplitKeys);
    // QJL keys need the residual term, which only the split path's loop adds.
    const TqLayerRecords& rec = layer_records(layer);
    if (n_split > 1 || spec_.qjl_keys) {
      tq_attend_split(rec, pos0, n_q, q, out, scale, pool, n_split, partial_);
    } else if (!tq_attend_tiled(rec, pos0, n_q, q, out, scale, pool)) {
      tq_attend_chunks(rec, pos0, n_q, q, out, scale, pool);
    }
    if (centered) {
      // Values were stored as (v - mu) / s: out = s * sum_j w_j (v_j - mu) / s + mu * sum_j w_j, and the
      // weights sum to one, or with a sink to one minus its share.
      const int hd = s.head_dim, group = s.n_heads / s.n_kv_heads;
      const float* mu = &mu_v_[L * s.kv_dim()];
      const float* sv = &s_v_[L * s.kv_dim()];
      const bool scaled = vscaled_[L] != 0;
      for (int t = 0; t < n_q; ++t)
        for (int h = 0; h < s.n_heads; ++h) {
          float* o = out + (size_t(t) * s.n_heads + h) * hd;
          const float* m = mu + size_t(h / group) * hd;
          const float* c = sv + size_t(h / group) * hd;
          const float keys_share = sinks_.empty() ? 1.0f : 1.0f - sink_share_[size_t(t) * s.n_heads + h];
          if (scaled) {
            for (int i = 0; i < hd; ++i) o[i] = o[i] * c[i] + keys_share * m[i];
          } else {
            for (int i = 0; i < hd; ++i) o[i] += keys_share * m[i];
          }
        }
    }
  }

  // Ring layers (sliding windows) are a constant, not a per-position cost.
  size_t bytes_per_token() const override {
    size_t n = 0;
    for (size_t i = 0; i < k_rec_.size(); ++i)
      if (ring_[i / size_t(shape_.n_kv_heads)] == 0) n += k_rec_[i] + v_rec_[i];
    return n + shift_bytes_per_token();
  }
  // The records plus the exact rows: sink_ (floats) and the layer's win_ + kTrimRows (fp16) positions per
  // layer and kv head, K and V (K only when values are keys; a constant). A prefill batch's own rows are held
  // too while it is attended (window_row); like the activations they are computed from, they are not
  // counted.
  size_t allocated_bytes() const override {
    size_t window_rows = 0;
    for (const int w : win_) window_rows += size_t(w > 0 ? std::min(w + kTrimRows, shape_.n_ctx) : 0);
    const size_t window_values = window_rows * shape_.n_kv_heads * (shared_ ? 1 : 2) * shape_.head_dim;
    return total_ + (sink_k_.size() + sink_v_.size()) * sizeof(float) + shift_bytes() +
           window_values * sizeof(uint16_t);
  }
  const char* type_name() const override { return name_.c_str(); }

  // measure()'s copy of update_shifts() on reconstructed keys (rows of head_dim floats in the model's
  // space, from position 0): block c's centering = mu + (per channel, block c - 1's mean minus mu where
  // it predicted block c - 1 better than block c - 2's did, else 0).
  void replay_block_mean(const float* rows, int64_t c, const float* mu, float* out) const {
    const int hd = shape_.head_dim, B = kblock_;
    std::vector<double> a(size_t(hd), 0.0), ap(size_t(hd), 0.0);
    for (int64_t j = 0; j < B; ++j)
      for (int i = 0; i < hd; ++i) {
        a[size_t(i)] += rows[size_t((c - 1) * B + j) * hd + size_t(i)] - mu[i];
        ap[size_t(i)] += rows[size_t((c - 2) * B + j) * hd + size_t(i)] - mu[i];
      }
    for (int i = 0; i < hd; ++i) {
      const double m = a[size_t(i)] / B, mp = ap[size_t(i)] / B;
      out[i] = mu[i] + (std::fabs(m - mp) < std::fabs(m) ? float(m) : 0.0f);
    }
  }

  // Sensitivity of each kv head of a layer on one chunk of a sequence (n tokens of float keys k,
  // values v and queries q, as the model computed them): for the last kTqMeasureQueries queries,
  // attention as this cache computes it (sink and window exact, everything else from records at rate r,
  // quantized exactly as store() would: same centering, scales and rotations) against float attention,
  // once with quantized keys and exact values and once the other way round. Error = sum ||o - o_r||^2
  // / sum ||o||^2 over queries and the group's heads, into out's rows of this layer. Plain float loops:
  // it runs once per profile.
  void measure(int layer, const float* k, const float* v, const float* q, int n, float scale,
               TqSensitivity& out) const {
    const KvShape& sh = shape_;
    const size_t L = size_t(layer);
    const int kvd = sh.kv_dim(), hd = sh.head_dim, group = sh.n_heads / sh.n_kv_heads;
    const int t_first = std::max(0, n - kTqMeasureQueries);
    const std::vector<int>& rates = out.rates;
    const size_t R = rates.size();
    auto run = [&](int g) {
      const float* muk = &mu_k_[L * kvd + size_t(g) * hd];
      const float* muv = &mu_v_[L * kvd + size_t(g) * hd];
      const float* sk = &s_k_[L * kvd + size_t(g) * hd];
      const float* isk = &inv_s_k_[L * kvd + size_t(g) * hd];
      const float* sv = &s_v_[L * kvd + size_t(g) * hd];
      const float* isv = &inv_s_v_[L * kvd + size_t(g) * hd];
      const bool ks_on = scaled_[L] != 0, vs_on = vscaled_[L] != 0;
      // Reconstructions in the model's space: [rate][token][hd].
      const size_t un = static_cast<size_t>(n), uhd = static_cast<size_t>(hd);
      std::vector<float> kh(R * un * uhd), vh(kh.size()), tmp(uhd), x(uhd);
      for (size_t r = 0; r < R; ++r) {
        const int ml = layer + sh.first_layer;
        const TqState ks = tq_make_state(tq_kv_config(spec_, hd, false, float(rates[r])), ml, g);
        const TqState vs =
            shared_ ? ks : tq_make_state(tq_kv_config(spec_, hd, true, float(rates[r])), ml, g);
        std::vector<uint8_t> rec(std::max(ks.layout.bytes, vs.layout.bytes));
        std::vector<float> mub(muk, muk + hd);  // the keys' centering: per block with block means
        for (int t = 0; t < n; ++t) {
          const float* kx = &k[size_t(t) * kvd + size_t(g) * hd];
          const float* vx = &v[size_t(t) * kvd + size_t(g) * hd];
          float* ko = &kh[(r * n + size_t(t)) * hd];
          float* vo = &vh[(r * n + size_t(t)) * hd];
          if (kshift_on_[L] && t % kblock_ == 0 && t >= 2 * kblock_)
            replay_block_mean(&kh[r * un * uhd], t / kblock_, muk, mub.data());
          quantize_one(ks, kx, mub.data(), ks_on ? isk : nullptr, tmp.data(), rec.data());
          tq_dequantize(ks, rec.data(), x.data());
          for (int i = 0; i < hd; ++i) ko[i] = x[size_t(i)] * (ks_on ? sk[i] : 1.0f) + mub[size_t(i)];
          quantize_one(vs, vx, muv, vs_on ? isv : nullptr, tmp.data(), rec.data());
          tq_dequantize(vs, rec.data(), x.data());
          for (int i = 0; i < hd; ++i) vo[i] = x[size_t(i)] * (vs_on ? sv[i] : 1.0f) + muv[i];
        }
      }
      std::vector<double> ek(R, 0.0), ev(R, 0.0);
      double ref = 0;
      std::vector<float> s0(un), p0(un), p1(un), o(uhd), o1(uhd);
      auto err = [&](const float* a, const float* b) {
        double e = 0;
        for (int i = 0; i < hd; ++i) e += double(a[i] - b[i]) * (a[i] - b[i]);
        return e;
      };
      auto key = [&](int j) { return &k[size_t(j) * kvd + size_t(g) * hd]; };
      auto value = [&](int j) { return &v[size_t(j) * kvd + size_t(g) * hd]; };
      // out = sum_j w_j row(j) over the first len positions.
      auto mix = [&](const float* w, int len, auto row, float* out) {
        std::fill(out, out + hd, 0.0f);
        for (int j = 0; j < len; ++j) axpy_f32(w[j], row(j), out, hd);
      };
      // Attention as the model computes it: a sliding-window layer sees only its window (KvShape),
      // scores are soft-capped, and a learned sink logit joins the denominator without a value.
      const float cap = sh.softcap;
      const float* sink_logits = sh.sinks(layer);
      auto weights = [&](float* p, int len, float sink) {
        float m = sink;
        for (int j = 0; j < len; ++j) m = std::max(m, p[j]);
        double z = sink > -std::numeric_limits<float>::infinity() ? std::exp(double(sink - m)) : 0.0;
        for (int j = 0; j < len; ++j) {
          p[j] = std::exp(p[j] - m);
          z += p[j];
        }
        for (int j = 0; j < len; ++j) p[j] = float(p[j] / z);
      };
      for (int t = t_first; t < n; ++t) {
        const int j0 = sh.first_key(layer, t), len = t + 1 - j0;
        auto is_exact = [&](int j) { return j < sink_ || t - j < win_[size_t(layer)]; };
        auto vrow = [&](int j) { return value(j0 + j); };
        for (int h = 0; h < group; ++h) {
          const float* qh = q + (size_t(t) * sh.n_heads + size_t(g) * group + h) * hd;
          const float sink =
              sink_logits ? sink_logits[size_t(g) * group + h] : -std::numeric_limits<float>::infinity();
          for (int j = 0; j < len; ++j)
            s0[size_t(j)] = softcap_score(scale * dot_f32(qh, key(j0 + j), hd), cap);
          std::copy_n(s0.data(), len, p0.data());
          weights(p0.data(), len, sink);
          mix(p0.data(), len, vrow, o.data());
          double on = 0;
          for (float y : o) on += double(y) * y;
          ref += on;
          for (size_t r = 0; r < R; ++r) {
            const float* kr = &kh[r * un * uhd];
            const float* vr = &vh[r * un * uhd];
            // Keys at rate r, values exact.
            for (int j = 0; j < len; ++j)
              p1[size_t(j)] = is_exact(j0 + j)
                                  ? s0[size_t(j)]
                                  : softcap_score(scale * dot_f32(qh, kr + size_t(j0 + j) * hd, hd), cap);
            weights(p1.data(), len, sink);
            mix(p1.data(), len, vrow, o1.data());
            ek[r] += err(o.data(), o1.data());
            // Keys exact, values at rate r.
            mix(
                p0.data(), len,
                [&](int j) { return is_exact(j0 + j) ? value(j0 + j) : vr + size_t(j0 + j) * hd; },
                o1.data());
            ev[r] += err(o.data(), o1.data());
          }
        }
      }
      const size_t i = L * size_t(sh.n_kv_heads) + size_t(g);
      for (size_t r = 0; r < R; ++r) {
        out.k_err[i][r] = ref > 0 ? ek[r] / ref : 0.0;
        out.v_err[i][r] = ref > 0 ? ev[r] / ref : 0.0;
      }
    };
    if (pool_ && pool_->size() > 1 && sh.n_kv_heads > 1) {
      pool_->parallel_for(sh.n_kv_heads, 1, [&run](int64_t b, int64_t e, int) {
        for (int64_t g = b; g < e; ++g) run(int(g));
      });
    } else {
      for (int g = 0; g < sh.n_kv_heads; ++g) run(g);
    }
  }

 private:
  // (x - mu) * inv_s (either may be null: x itself), in tmp when it has to be computed.
  static const float* centered(int dim, const float* x, const float* mu, const float* inv_s, float* tmp) {
    if (!mu && !inv_s) return x;
    for (int i = 0; i < dim; ++i) tmp[i] = (x[i] - (mu ? mu[i] : 0.0f)) * (inv_s ? inv_s[i] : 1.0f);
    return tmp;
  }

  // Records (x - mu) * inv_s.
  static void quantize_one(const TqState& st, const float* x, const float* mu, const float* inv_s, float* tmp,
                           uint8_t* rec) {
    tq_quantize(st, centered(st.layout.dim, x, mu, inv_s, tmp), rec);
  }

  // The rotated exact vector R ((x - mu) * inv_s) of a sink position, in the space the records live in.
  static void exact_one(const TqState& st, const float* x, const float* mu, const float* inv_s, float* tmp,
                        float* out) {
    tq_rotate_query(st, centered(st.layout.dim, x, mu, inv_s, tmp), out);
  }

  // Start of (layer, kv head)'s sink rows in sink_k_ / sink_v_.
  size_t sink_offset(int layer, int g) const {
    return (size_t(layer) * shape_.n_kv_heads + size_t(g)) * sink_ * shape_.head_dim;
  }
  float* sink_row(std::vector<float>& buf, int layer, int g, int pos) {
    return &buf[sink_offset(layer, g) + size_t(pos) * shape_.head_dim];
  }

  // The window rows of a layer: a ring of `cap` slots per kv head ([kv head][slot][head_dim], position
  // p in slot p % cap) holding positions [begin, end).
  struct WindowRing {
    std::vector<uint16_t> k, v;
    int64_t cap = 0, begin = 0, end = 0;
  };

  uint16_t* window_row(std::vector<uint16_t>& buf, int layer, int g, int64_t pos) {
    const WindowRing& w = tail_[size_t(layer)];
    return &buf[(size_t(g) * size_t(w.cap) + size_t(pos % w.cap)) * shape_.head_dim];
  }

  // Before positions [pos, pos + n) of a layer are stored: keeps the held rows that queries of this
  // batch can still need ([pos - window + 1, pos), if held: a sequence that restarted or jumped
  // back keeps only what it wrote) and makes room for the batch. Decode needs window slots (the layer's
  // win_: window - 1 previous positions and the new one); a prefill of n tokens needs window - 1 + n for
  // as long as it is attended, then the ring shrinks back.
  void prepare_window(int layer, int pos, int n) {
    const int window = win_[size_t(layer)];
    if (window <= 0) return;
    WindowRing& w = tail_[size_t(layer)];
    int64_t keep = pos;  // rows [keep, pos) are carried over
    if (w.end >= pos && w.cap > 0)
      keep = std::min<int64_t>(pos, std::max<int64_t>(pos - (window - 1) - kTrimRows, w.begin));
    const int64_t need = pos + n - keep;
    const int64_t cap = std::max<int64_t>(need, window);
    if (need > w.cap || w.cap > 4 * cap) {
      const size_t hd = size_t(shape_.head_dim), H = size_t(shape_.n_kv_heads);
      std::vector<uint16_t> nk(H * size_t(cap) * hd), nv(shared_ ? 0 : nk.size());
      for (size_t g = 0; g < H; ++g)
        for (int64_t p = keep; p < pos; ++p) {
          const size_t from = (g * size_t(w.cap) + size_t(p % w.cap)) * hd,
                       to = (g * size_t(cap) + size_t(p % cap)) * hd;
          std::copy_n(&w.k[from], hd, &nk[to]);
          if (!shared_) std::copy_n(&w.v[from], hd, &nv[to]);
        }
      w.k.swap(nk);
      w.v.swap(nv);
      w.cap = cap;
    }
    w.begin = keep;
    w.end = pos + n;
  }

  // The attention sinks (KvShape::attn_sinks) of this call per token and query head, as the scores see
  // them: keys stored centered (k - mu) score q.k - q.mu, a shift the softmax over keys ignores but a
  // sink does not, so the sink moves by the same -scale q.mu. Empty when the layer has none.
  void set_sinks(int layer, int n_q, const float* q, float scale, bool centered) {
    const KvShape& s = shape_;
    const float* ls = s.sinks(layer);
    if (ls == nullptr) {
      sinks_.clear();
      sink_share_.clear();
      return;
    }
    const int hd = s.head_dim, group = s.n_heads / s.n_kv_heads, kvd = s.kv_dim();
    sinks_.resize(size_t(n_q) * s.n_heads);
    sink_share_.assign(sinks_.size(), 0.0f);
    for (int t = 0; t < n_q; ++t)
      for (int h = 0; h < s.n_heads; ++h) {
        float x = ls[h];
        if (centered && x > -std::numeric_limits<float>::infinity()) {
          const float* qh = q + (size_t(t) * s.n_heads + h) * hd;
          const float* mu = &mu_k_[size_t(layer) * kvd + size_t(h / group) * hd];
          double d = 0;
          for (int i = 0; i < hd; ++i) d += double(qh[i]) * mu[i];
          x -= float(scale * d);
        }
        sinks_[size_t(t) * s.n_heads + h] = x;
      }
  }

  TqExactRows exact(int layer, int g) const {
    TqExactRows x;
    const size_t off = sink_offset(layer, g);
    x.sink = sink_;
    x.sink_k = sink_k_.data() + off;
    x.sink_v = (shared_ ? sink_k_ : sink_v_).data() + off;
    if (win_[size_t(layer)] > 0) {
      const WindowRing& w = tail_[size_t(layer)];
      x.window = win_[size_t(layer)];
      x.begin = w.begin;
      x.end = w.end;
      x.ring = w.cap;
      x.win_k = w.k.data() + size_t(g) * size_t(w.cap) * shape_.head_dim;
      x.win_v = (shared_ ? w.k : w.v).data() + size_t(g) * size_t(w.cap) * shape_.head_dim;
    }
    if (kshift_on_[size_t(layer)]) {
      x.shift_block = kblock_;
      x.key_shift = shift_row(layer, g, 0);
      x.shift_ring = ring_[size_t(layer)] > 0 ? kshift_rows_[size_t(layer)] : 0;
    }
    return x;
  }

  // A layer's records as the attention paths of kv/kv_turboquant_attend.h read them (refilled per call
  // into one member, so decode allocates nothing per layer and token).
  const TqLayerRecords& layer_records(int layer) {
    TqLayerRecords& r = records_;
    r.shape = &shape_;
    r.layer = layer;
    r.ring = ring_[size_t(layer)];
    r.heads.clear();
    for (int g = 0; g < shape_.n_kv_heads; ++g)
      r.heads.push_back(TqHeadRecords{&kstate(layer, g), &vstate(layer, g), keys(layer, g), krec(layer, g),
                                      values(layer, g), vrec(layer, g), exact(layer, g)});
    r.sinks = sinks_.empty() ? nullptr : sinks_.data();
    r.sink_share = sinks_.empty() ? nullptr : sink_share_.data();
    return r;
  }

  // Quantizer states, record sizes and offsets for these rates per (layer, kv head) of the cache.
  void set_rates(const std::vector<float>& kb, const std::vector<float>& vb) {
    const KvShape& s = shape_;
    const size_t H = size_t(s.n_kv_heads), n = size_t(s.n_layers) * H;
    k_states_.clear();
    v_states_.clear();
    k_rec_.assign(n, 0);
    v_rec_.assign(n, 0);
    head_off_.assign(n + 1, 0);
    k_bits_ = kb;
    v_bits_ = vb;
    for (int l = 0; l < s.n_layers; ++l)
      for (int g = 0; g < s.n_kv_heads; ++g) {
        const int ml = l + s.first_layer;  // rotations follow the model layer
        const size_t i = size_t(l) * H + size_t(g);
        k_states_.push_back(tq_make_state(tq_kv_config(spec_, s.head_dim, false, kb[i]), ml, g));
        v_states_.push_back(tq_make_state(tq_kv_config(spec_, s.head_dim, true, vb[i]), ml, g));
        k_rec_[i] = k_states_.back().layout.bytes;
        v_rec_[i] = shared_ ? 0 : v_states_.back().layout.bytes;
        // Per (layer, kv head): the layer's slots of key records, then as many value records (none
        // when they are shared).
        head_off_[i + 1] = head_off_[i] + size_t(slots_[size_t(l)]) * (k_rec_[i] + v_rec_[i]);
      }
  }

  // Per-head rates from the calibration's sensitivity (the one measured at the window nearest to this
  // cache's), at the mean rate of the spec, when the spec names no rates of its own. Applied only when
  // the records then take exactly the bytes of the uniform rates (always for head_dim a multiple of 16),
  // so the cache's size never depends on the calibration; once, before the cache holds anything.
  void allocate_from(const KvCalibration& c) {
    // Shared key / value records (MLA) have one rate per head, which the K / V allocation cannot move.
    if (!spec_.auto_alloc || alloc_done_ || !spec_.head_k_bits.empty() || spec_.qjl_keys ||
        spec_.edge_layers > 0 || ring_boost_ || shared_ || c.tq_sensitivity.empty())
      return;
    alloc_done_ = true;
    const TqSensitivity* best = nullptr;
    for (const TqSensitivity& t : c.tq_sensitivity)
      if (!best || std::abs(t.window - window_) < std::abs(best->window - window_) ||
          (std::abs(t.window - window_) == std::abs(best->window - window_) && t.window > best->window))
        best = &t;
    if (best->n_layers != shape_.n_layers || best->n_kv_heads != shape_.n_kv_heads ||
        best->head_dim != shape_.head_dim)
      return;
    // The calibration's model-level check found uniform rates better on its text: keep them.
    if (!spec_.force_alloc && !best->allocation_pays()) return;
    const float avg = 0.5f * (spec_.k_bits + spec_.v_bits);
    if (avg <= float(best->rates.front()) || avg >= float(best->rates.back())) return;  // nothing to move
    const TqBitAllocation a = tq_allocate_bits(*best, avg, tq_allocation_step(shape_.head_dim));
    const std::vector<float> kb = k_bits_, vb = v_bits_;
    set_rates(a.k_bits, a.v_bits);
    if (head_off_.back() != total_) {
      set_rates(kb, vb);
      return;
    }
    allocated_ = true;
  }

  const TqState& kstate(int layer, int g) const { return k_states_[size_t(layer) * shape_.n_kv_heads + g]; }
  const TqState& vstate(int layer, int g) const {
    return shared_ ? kstate(layer, g) : v_states_[size_t(layer) * shape_.n_kv_heads + g];
  }
  uint8_t* keys(int layer, int g) const {
    return data_.get() + head_off_[size_t(layer) * shape_.n_kv_heads + g];
  }
  uint8_t* values(int layer, int g) const {
    return shared_ ? keys(layer, g) : keys(layer, g) + size_t(slots_[size_t(layer)]) * krec(layer, g);
  }
  size_t krec(int layer, int g) const { return k_rec_[size_t(layer) * shape_.n_kv_heads + g]; }
  size_t vrec(int layer, int g) const {
    return shared_ ? krec(layer, g) : v_rec_[size_t(layer) * shape_.n_kv_heads + g];
  }
  void check(int layer, int pos, int n) const { check_kv_span(shape_, layer, pos, n); }

  std::string name_;
  TqKvSpec spec_;
  bool shared_ = false;  // values read from the key records (KvShape::values_are_keys)
  std::vector<TqState> k_states_, v_states_;
  std::vector<size_t> k_rec_, v_rec_;  // record bytes per (layer, kv head)
  std::vector<size_t> head_off_;       // byte offset of each (layer, kv head)'s records
  std::vector<int64_t> ring_;          // per layer: the ring of a sliding-window layer (0: none)
  std::vector<int> slots_;             // per layer: record slots (n_ctx, or the ring)
  std::vector<float> mu_k_, mu_v_;
  std::vector<float> sinks_, sink_share_;  // this call's sinks and their shares (set_sinks)
  int sink_ = 0, window_ = 0;
  std::vector<int> win_;       // per layer: window_, or the `rwN` window of a ring layer
  std::vector<char> covered_;  // per layer: a ring layer whose exact window covers its attention window
  // Window rows held beyond what queries read, so that a trim that far back stays exact (trims_exactly).
  static constexpr int kTrimRows = 8;
  // Block key means (TqKvSpec::key_block): rows [layer][kv head][block][head_dim], per layer whether
  // they apply and how many blocks' rows are valid (block 0's, zero, always).
  // Rows per layer and kv head (kshift_rows_; 0: none) start at kshift_off_ floats.
  int kblock_ = 0;
  std::vector<float> kshift_;
  std::vector<int64_t> kshift_rows_;
  std::vector<size_t> kshift_off_;
  size_t kshift_full_heads_ = 0;  // (layer, kv head) pairs of full layers with shift rows
  std::vector<uint8_t> kshift_on_;
  std::vector<int64_t> kshift_valid_;
  bool ring_boost_ = false;             // ring layers at other rates than the spec's (TqKvSpec::ring_bits)
  std::vector<WindowRing> tail_;        // per layer
  std::vector<float> sink_k_, sink_v_;  // [layer][kv head][sink position][head_dim], rotated space
  std::vector<uint8_t> calibrated_, scaled_, vscaled_;
  std::vector<float> s_v_, inv_s_v_;  // per layer and value channel
  std::vector<float> s_k_, inv_s_k_;  // per layer and key channel: s and 1 / s
  std::vector<float> qbuf_;
  SplitPartials partial_;
  TqLayerRecords records_;  // layer_records()
  size_t total_ = 0;
  std::vector<float> k_bits_, v_bits_;           // rates per (layer, kv head)
  bool alloc_done_ = false, allocated_ = false;  // calibrate() tried / applied an allocation
  std::unique_ptr<uint8_t[], AlignedFree> data_;
  bool calibrated_any_ = false;
};

}  // namespace

std::unique_ptr<KvCache> make_turboquant_kv_cache(const std::string& name, const TqKvSpec& spec_in,
                                                  const KvShape& shape) {
  TqKvSpec spec = spec_in;
  if (!spec.alloc_path.empty() && spec.head_k_bits.empty()) {
    const TqSensitivity sens = load_tq_sensitivity(spec.alloc_path);
    if (sens.n_layers != shape.total_layers() || sens.n_kv_heads != shape.n_kv_heads ||
        sens.head_dim != shape.head_dim)
      throw InvalidArgument(fmt::format(
          "kv sensitivity profile '{}' is for {} layers x {} kv heads x {} dims, the model has {} x {} x {}",
          spec.alloc_path, sens.n_layers, sens.n_kv_heads, sens.head_dim, shape.total_layers(),
          shape.n_kv_heads, shape.head_dim));
    if (spec.qjl_keys || spec.edge_layers > 0)
      throw InvalidArgument("kv type: alloc= cannot be combined with qjl or eN");
    const TqBitAllocation a =
        tq_allocate_bits(sens, 0.5f * (spec.k_bits + spec.v_bits), tq_allocation_step(shape.head_dim));
    spec.head_k_bits = a.k_bits;
    spec.head_v_bits = a.v_bits;
  }
  return std::make_unique<TurboQuantKvCache>(name, spec, shape);
}

TqSensitivity tq_measure_sensitivity(const TqKvSpec& spec_in, const KvShape& shape, const KvCalibration& cal,
                                     const KvChunkRows& rows, ThreadPool* pool) {
  if (rows.k.size() != size_t(shape.n_layers) || rows.v.size() != rows.k.size() ||
      rows.q.size() != rows.k.size())
    throw InvalidArgument("tq_measure_sensitivity: the chunk does not hold every layer");
  const int n = rows.n;
  TqKvSpec spec = spec_in;
  spec.alloc_path.clear();
  spec.head_k_bits.clear();
  spec.head_v_bits.clear();
  spec.auto_alloc = false;  // what each head loses at uniform rates
  const int window = std::max(0, std::min(spec.window, n));
  if (n < std::max(kTqMeasureMinTokens, window + 64))
    throw InvalidArgument(fmt::format("a sensitivity measurement needs at least {} tokens per chunk (got {})",
                                      std::max(kTqMeasureMinTokens, window + 64), n));
  KvShape s = shape;
  s.n_ctx = n;
  TurboQuantKvCache cache("measure", spec, s);
  cache.set_pool(pool);
  cache.calibrate(cal);
  TqSensitivity out;
  out.n_layers = s.n_layers;
  out.n_kv_heads = s.n_kv_heads;
  out.head_dim = s.head_dim;
  out.window = window;
  out.sink = std::min(spec.sink, n);
  out.rates = {2, 3, 4};
  out.k_err.assign(size_t(s.n_layers) * size_t(s.n_kv_heads), std::vector<double>(out.rates.size(), 0.0));
  out.v_err = out.k_err;
  const size_t kv_rows = size_t(n) * size_t(s.kv_dim()), q_rows = size_t(n) * size_t(s.q_dim());
  for (int l = 0; l < s.n_layers; ++l) {
    const size_t L = size_t(l);
    if (rows.k[L].size() != kv_rows || rows.v[L].size() != kv_rows || rows.q[L].size() != q_rows)
      throw InvalidArgument(fmt::format("tq_measure_sensitivity: layer {} rows have the wrong size", l));
    cache.measure(l, rows.k[L].data(), rows.v[L].data(), rows.q[L].data(), n, rows.scale, out);
  }
  out.tokens = n;
  out.chunks = 1;
  return out;
}

}  // namespace qleap
