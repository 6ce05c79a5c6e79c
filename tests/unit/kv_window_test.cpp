// Sliding-window layers in the KV caches (KvShape::windows): a query sees only its last `window`
// positions, a windowed layer keeps a ring of window + max_tokens - 1 positions, and attention scores
// may be soft-capped. Checked against float attention in double, and ring against no ring bit for bit
// for every cache type (the ring only changes where positions live, not what is computed).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>

#include "core/error.h"
#include "kv/flash_prefill.h"
#include "kv/kv_cache.h"
#include "kv/kv_turboquant.h"
#include "kv_test_data.h"

namespace qleap {
namespace {

// Float attention in double of queries [pos0, pos0 + n_q) of layer 0 (data d) with a window (0: none)
// and a soft-cap (0: none).
std::vector<float> reference(const KvData& d, int pos0, int n_q, int window, float cap) {
  const KvShape& s = d.s;
  const int hd = s.head_dim, kvd = s.kv_dim(), group = s.n_heads / s.n_kv_heads;
  std::vector<float> out(size_t(n_q) * d.row());
  for (int t = 0; t < n_q; ++t)
    for (int h = 0; h < s.n_heads; ++h) {
      const int p = pos0 + t, lo = window > 0 ? std::max(0, p - window + 1) : 0;
      const float* qh = &d.q[size_t(p) * d.row() + size_t(h) * hd];
      const size_t off = size_t(h / group) * hd;
      std::vector<double> w;
      double mx = -1e300, sum = 0;
      for (int j = lo; j <= p; ++j) {
        double x = 0;
        for (int i = 0; i < hd; ++i) x += double(qh[i]) * d.k[size_t(j) * kvd + off + i];
        x *= d.scale();
        if (cap > 0) x = cap * std::tanh(x / cap);
        w.push_back(x);
        mx = std::max(mx, x);
      }
      for (auto& x : w) sum += (x = std::exp(x - mx));
      for (int i = 0; i < hd; ++i) {
        double o = 0;
        for (int j = lo; j <= p; ++j) o += w[size_t(j - lo)] / sum * d.v[size_t(j) * kvd + off + i];
        out[size_t(t) * d.row() + size_t(h) * hd + i] = float(o);
      }
    }
  return out;
}

KvShape window_shape(int window, int max_tokens, float cap = 0) {
  KvShape s{1, 64, 4, 2, 32};
  s.windows = {window};
  s.max_tokens = max_tokens;
  s.softcap = cap;
  return s;
}

// A sequence of prefill chunks (at most max_tokens) and single-token steps through positions [0, 50).
const std::vector<int> kChunks = {4, 3, 1, 1, 4, 2, 1, 1, 1, 4, 4, 1, 3, 1, 1, 4, 2, 2, 1, 1, 4, 4};

std::vector<float> run_chunks(KvCache& kv, const KvData& d, ThreadPool& pool) {
  std::vector<float> all;
  int pos = 0;
  for (int n : kChunks) {
    const std::vector<float> o = d.step(kv, pos, n, pool);
    all.insert(all.end(), o.begin(), o.end());
    pos += n;
  }
  return all;
}

TEST(KvWindow, RingSizeAndTrimRule) {
  KvShape s = window_shape(8, 4);
  EXPECT_EQ(s.ring_size(0), 11);  // the window and a chunk of 4 attended while it is stored
  s.max_tokens = 0;
  EXPECT_EQ(s.ring_size(0), 64);  // no chunk bound: the whole context
  s.max_tokens = 4;
  s.windows = {0};
  EXPECT_EQ(s.ring_size(0), 64);
  s.windows = {8};
  // After 30 positions the ring holds [19, 30): a trim to n needs [n - 7, n).
  EXPECT_TRUE(s.can_trim(30, 30));
  EXPECT_TRUE(s.can_trim(26, 30));
  EXPECT_FALSE(s.can_trim(25, 30));
  EXPECT_FALSE(s.can_trim(3, 30));
  EXPECT_TRUE(s.can_trim(3, 10));  // nothing overwritten yet
  EXPECT_EQ(s.first_key(0, 3), 0);
  EXPECT_EQ(s.first_key(0, 20), 13);
}

TEST(KvWindow, RejectsChunksTheRingCannotHold) {
  auto kv = make_kv_cache("f32", window_shape(8, 4));
  std::vector<float> x(size_t(5) * 64, 0.0f);
  EXPECT_THROW(kv->store(0, 0, 5, x.data(), x.data()), InvalidArgument);
  EXPECT_NO_THROW(kv->store(0, 0, 4, x.data(), x.data()));
  KvShape bad = window_shape(8, 4);
  bad.windows = {8, 8};  // two windows for one layer
  EXPECT_THROW(make_kv_cache("f32", bad), InvalidArgument);
  bad.windows = {-1};
  EXPECT_THROW(make_kv_cache("f32", bad), InvalidArgument);
}

// f32 windowed attention (with and without soft-capping) is float attention over the window.
TEST(KvWindow, F32MatchesReference) {
  ThreadPool pool(2);
  for (float cap : {0.0f, 2.0f}) {
    const KvShape s = window_shape(8, 4, cap);
    const KvData d(s, 50, 7);
    auto kv = make_kv_cache("f32", s);
    int pos = 0;
    for (int n : kChunks) {
      const std::vector<float> got = d.step(*kv, pos, n, pool);
      const std::vector<float> ref = reference(d, pos, n, 8, cap);
      for (size_t i = 0; i < ref.size(); ++i)
        ASSERT_NEAR(got[i], ref[i], 2e-5) << "pos " << pos << " cap " << cap;
      pos += n;
    }
  }
}

// The ring changes where positions live, not what is computed: bit-exact against the same window in
// a cache of n_ctx positions, for every type (a window that wraps around the ring's end included).
TEST(KvWindow, RingEqualsFullCacheBitForBit) {
  for (int threads : {1, 3}) {
    ThreadPool pool(threads);
    // TurboQuant rings spend one bit more than the type's rate (TqKvSpec::ring_bits): a ring of tq3
    // equals a full tq4 cache, the same rotations at the same rates.
    const std::pair<const char*, const char*> kTypes[] = {
        {"f32", "f32"},          {"f16", "f16"},       {"q8_0", "q8_0"},
        {"q4_0", "q4_0"},        {"tq3", "tq4"},       {"tq3:ring0", "tq3"},
        {"tq2:w4", "tq3:w4"},    {"tq4:w4", "tq4:w4"}, {"k4v3:sink0:w0", "tq4:sink0:w0"},
        {"tq3:ring3.5", "tq3.5"}};
    for (const auto& [type, full_type] : kTypes) {
      KvShape ring = window_shape(8, 4, 3.0f);
      KvShape full = ring;
      full.max_tokens = 0;
      ASSERT_LT(ring.ring_size(0), full.ring_size(0));
      const KvData d(ring, 50, 11);
      auto a = make_kv_cache(type, ring);
      auto b = make_kv_cache(full_type, full);
      a->set_pool(&pool);
      b->set_pool(&pool);
      const std::vector<float> ra = run_chunks(*a, d, pool), rb = run_chunks(*b, d, pool);
      ASSERT_EQ(ra.size(), rb.size());
      EXPECT_EQ(0, std::memcmp(ra.data(), rb.data(), ra.size() * sizeof(float)))
          << type << " threads " << threads;
      // The ring is a constant: no per-position cost.
      EXPECT_EQ(a->bytes_per_token(), 0u) << type;
      EXPECT_LT(a->allocated_bytes(), b->allocated_bytes()) << type;
    }
  }
}

// Decode over a long window splits each query's keys across threads (attend_split's tiles); a window
// that wraps around the end of TurboQuant's ring is then cut at the wrap inside a tile. Still bit-exact
// against a cache of n_ctx positions.
TEST(KvWindow, LongRingDecodeSplitEqualsFullCache) {
  ThreadPool pool(3);
  KvShape ring{1, 1024, 4, 2, 32};
  ring.windows = {300};
  ring.max_tokens = 16;  // a ring of 315 positions
  KvShape full = ring;
  full.max_tokens = 0;
  const int n_pos = 700;
  const KvData d(ring, n_pos, 17);
  for (const auto& [type, full_type] : {std::pair{"tq3", "tq4"}, std::pair{"tq3:ring0:w0", "tq3:w0"}}) {
    auto a = make_kv_cache(type, ring);
    auto b = make_kv_cache(full_type, full);
    a->set_pool(&pool);
    b->set_pool(&pool);
    for (int pos = 0; pos < n_pos;) {
      const int n = pos < 320 ? 16 : 1;
      const std::vector<float> ra = d.step(*a, pos, n, pool), rb = d.step(*b, pos, n, pool);
      ASSERT_EQ(0, std::memcmp(ra.data(), rb.data(), ra.size() * sizeof(float))) << type << " pos " << pos;
      pos += n;
    }
    EXPECT_LT(2 * a->allocated_bytes(), b->allocated_bytes()) << type;
  }
}

// A window longer than the sequence changes nothing, and quantized windowed caches stay close to the
// float reference.
TEST(KvWindow, QuantizedTypesCloseToReference) {
  ThreadPool pool(2);
  for (const char* type : {"f16", "q8_0", "tq4"}) {
    const KvShape s = window_shape(8, 4);
    const KvData d(s, 50, 5);
    auto kv = make_kv_cache(type, s);
    kv->set_pool(&pool);
    int pos = 0;
    double err = 0, ref2 = 0;
    for (int n : kChunks) {
      const std::vector<float> got = d.step(*kv, pos, n, pool);
      const std::vector<float> ref = reference(d, pos, n, 8, 0);
      for (size_t i = 0; i < ref.size(); ++i) {
        err += double(got[i] - ref[i]) * (got[i] - ref[i]);
        ref2 += double(ref[i]) * ref[i];
      }
      pos += n;
    }
    // Relative output error: f16 ~1e-3, q8_0 ~1e-2, tq4 (uncalibrated) ~0.1.
    EXPECT_LT(std::sqrt(err / ref2), std::string(type) == "tq4" ? 0.2 : 0.02) << type;
  }
  for (const char* type : {"f32", "tq3"}) {
    KvShape s = window_shape(64, 4);
    KvShape none{1, 64, 4, 2, 32};
    const KvData d(s, 50, 3);
    auto a = make_kv_cache(type, s);
    auto b = make_kv_cache(type, none);
    const std::vector<float> ra = run_chunks(*a, d, pool), rb = run_chunks(*b, d, pool);
    if (std::string(type) == "f32" && flash_prefill_enabled()) {
      // Without a window the f32 cache's prompt chunks take the tiled kernel (kv/flash_prefill), which
      // sums in another order than the masked per-query path a windowed layer uses.
      for (size_t i = 0; i < ra.size(); ++i) ASSERT_NEAR(ra[i], rb[i], 1e-5f + 1e-5f * std::fabs(rb[i])) << i;
    } else {
      EXPECT_EQ(0, std::memcmp(ra.data(), rb.data(), ra.size() * sizeof(float))) << type;
    }
  }
}

// `rwN` gives the layers held in a ring their own exact window. One covering the layer's attention
// window keeps it exact (fp16 rows) whatever the records' bits; a layer without a ring keeps `wN`.
TEST(KvWindow, RingWindowCoveringTheLayerWindowIsExact) {
  ThreadPool pool(2);
  const KvShape s = window_shape(8, 4);
  const KvData d(s, 50, 6);
  auto rel_err = [&](const char* type) {
    auto kv = make_kv_cache(type, s);
    kv->set_pool(&pool);
    int pos = 0;
    double err = 0;
    for (int n : kChunks) {
      const std::vector<float> got = d.step(*kv, pos, n, pool);
      const std::vector<float> ref = reference(d, pos, n, 8, 0);
      double e = 0, r = 0;
      for (size_t i = 0; i < ref.size(); ++i) {
        e = std::max(e, double(std::fabs(got[i] - ref[i])));
        r = std::max(r, double(std::fabs(ref[i])));
      }
      err = std::max(err, e / r);
      pos += n;
    }
    return err;
  };
  EXPECT_LT(rel_err("tq2:w0:rw8"), 2e-3);
  EXPECT_LT(rel_err("tq2:w0:rw100"), 2e-3);  // capped at the layer's window
  EXPECT_GT(rel_err("tq2:w0:rw4"), 1e-2);    // older positions from the 2-bit records
  EXPECT_GT(rel_err("tq2:w0"), 1e-2);
  // Counted: 8 positions + the 8 rows kept for trims, 2 kv heads, K and V, 32 fp16 values; the records
  // no query reads are at 2 bits whatever the type (rings are otherwise at one bit more).
  const size_t rows = size_t((8 + 8) * 2 * 2 * 32 * 2);
  EXPECT_EQ(make_kv_cache("tq2:w0:rw8", s)->allocated_bytes(),
            make_kv_cache("tq2:w0:ring2", s)->allocated_bytes() + rows);
  EXPECT_EQ(make_kv_cache("tq4:w0:rw8", s)->allocated_bytes(),
            make_kv_cache("tq2:w0:rw8", s)->allocated_bytes());
  EXPECT_LT(rel_err("tq4:w0:rw8"), 2e-3);
  EXPECT_EQ(make_kv_cache("tq4:w0:rw4", s)->allocated_bytes(),
            make_kv_cache("tq4:w0", s)->allocated_bytes() + size_t((4 + 8) * 2 * 2 * 32 * 2));
  // A layer without a ring keeps the window of `wN`.
  const KvShape full{1, 64, 4, 2, 32};
  const KvData df(full, 50, 6);
  auto a = make_kv_cache("tq2:w0:rw8", full);
  auto b = make_kv_cache("tq2:w0", full);
  const std::vector<float> ra = run_chunks(*a, df, pool), rb = run_chunks(*b, df, pool);
  EXPECT_EQ(0, std::memcmp(ra.data(), rb.data(), ra.size() * sizeof(float)));
}

}  // namespace
}  // namespace qleap
