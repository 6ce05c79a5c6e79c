// Attention sinks (gpt-oss, KvShape::attn_sinks): a learned logit per layer and query head that joins
// each query's softmax denominator without a value. Every host cache type and path (the per-query
// path, the tiled prefill, decode split across threads, sliding-window rings, TurboQuant) against
// attention with sinks in double; the tiled kernel against its reference; sinks of -inf change nothing.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "backend/cpu/ops.h"
#include "core/error.h"
#include "kv/flash_prefill.h"
#include "kv/kv_cache.h"
#include "kv/kv_calibration.h"
#include "kv_test_data.h"

namespace qleap {
namespace {

constexpr int kHeads = 4, kKvHeads = 2, kHeadDim = 32;

// Attention in double of queries [pos0, pos0 + n_q) of layer 0 of d, with a window (0: none) and head
// h's sink logit sinks[h] (nullptr: none).
std::vector<float> reference(const KvData& d, int pos0, int n_q, int window, const float* sinks) {
  const KvShape& s = d.s;
  const int hd = s.head_dim, kvd = s.kv_dim(), group = s.n_heads / s.n_kv_heads;
  std::vector<float> out(size_t(n_q) * d.row());
  for (int t = 0; t < n_q; ++t)
    for (int h = 0; h < s.n_heads; ++h) {
      const int p = pos0 + t, lo = window > 0 ? std::max(0, p - window + 1) : 0;
      const float* qh = &d.q[size_t(p) * d.row() + size_t(h) * hd];
      const size_t off = size_t(h / group) * hd;
      std::vector<double> w;
      double mx = sinks ? double(sinks[h]) : -1e300, sum = 0;
      for (int j = lo; j <= p; ++j) {
        double x = 0;
        for (int i = 0; i < hd; ++i) x += double(qh[i]) * d.k[size_t(j) * kvd + off + i];
        w.push_back(x * d.scale());
        mx = std::max(mx, w.back());
      }
      for (auto& x : w) sum += (x = std::exp(x - mx));
      if (sinks) sum += std::exp(double(sinks[h]) - mx);
      for (int i = 0; i < hd; ++i) {
        double o = 0;
        for (int j = lo; j <= p; ++j) o += w[size_t(j - lo)] / sum * d.v[size_t(j) * kvd + off + i];
        out[size_t(t) * d.row() + size_t(h) * hd + i] = float(o);
      }
    }
  return out;
}

double max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double e = 0;
  for (size_t i = 0; i < a.size(); ++i) e = std::max(e, double(std::fabs(a[i] - b[i])));
  return e;
}

// Sinks on the scale of the scores: one head far above them (most weight goes to the sink), one far
// below (none), two in between.
const std::vector<float> kSinks = {4.0f, -30.0f, 0.5f, 1.5f};

KvShape shape(int n_ctx, int window, bool sinks) {
  KvShape s{1, n_ctx, kHeads, kKvHeads, kHeadDim};
  if (window > 0) s.windows = {window};
  s.max_tokens = 64;
  if (sinks) s.attn_sinks = kSinks;
  return s;
}

TEST(AttnSinks, OutFactorMatchesTheDefinition) {
  // acc * f = acc / (l + exp(sink - m)), also where exp(sink - m) alone would overflow.
  EXPECT_FLOAT_EQ(attn_out_factor(1.0f, 2.0f, -std::numeric_limits<float>::infinity()), 0.5f);
  EXPECT_NEAR(attn_out_factor(1.0f, 2.0f, 1.0f), 1.0 / 3.0, 1e-7);
  EXPECT_NEAR(attn_out_factor(0.0f, 1.0f, 80.0f) / std::exp(-80.0), 1.0, 1e-5);
  EXPECT_NEAR(attn_out_factor(-60.0f, 1.0f, 0.0f) / std::exp(-60.0), 1.0, 1e-5);
  EXPECT_EQ(attn_out_factor(0.0f, 0.0f, 1.0f), 0.0f);
}

// Prefill in chunks of 64 (the tiled kernel on full-attention f16 / f32 layers), then decode steps with
// 4 threads (long key ranges split across threads and merged) up to position 330, for every type.
TEST(AttnSinks, EveryCacheTypeAndPathMatchesReference) {
  const int n = 330;
  ThreadPool pool(4);
  for (int window : {0, 48}) {
    const KvData d(shape(n, window, true), n, 77);
    const std::vector<float> ref = reference(d, 0, n, window, kSinks.data());
    const std::vector<float> no_sink = reference(d, 0, n, window, nullptr);
    const double sink_effect = max_diff(ref, no_sink);
    EXPECT_GT(sink_effect, 0.3) << "the sinks must change the output for the test to mean anything";
    // Bounds: float summation for f32; the types' rounding of keys and values otherwise (TurboQuant
    // uncalibrated at 3 bits: it must still follow the sinks, far closer than without them).
    // f16 through the AMX kernel (QLEAP_AMX_ATTENTION=1) rounds q, k, v to bf16: measured 0.013.
    const double f16_tol = flash_prefill_amx_enabled() ? 3e-2 : 1e-2;
    for (const auto& [type, tol] : std::vector<std::pair<std::string, double>>{
             {"f32", 2e-5}, {"f16", f16_tol}, {"q8_0", 4e-2}, {"q4_0r", 0.8}, {"tq4", 0.5}, {"tq3", 0.6}}) {
      auto kv = make_kv_cache(type, shape(n, window, true));
      std::vector<float> got;
      int pos = 0;
      for (; pos < 256; pos += 64) {
        const std::vector<float> o = d.step(*kv, pos, 64, pool);
        got.insert(got.end(), o.begin(), o.end());
      }
      for (; pos < n; ++pos) {
        const std::vector<float> o = d.step(*kv, pos, 1, pool);
        got.insert(got.end(), o.begin(), o.end());
      }
      const double e = max_diff(got, ref);
      std::printf("[sinks] %s window %d: max err %.3g (sinks move the output by %.3g)\n", type.c_str(),
                  window, e, sink_effect);
      EXPECT_LT(e, tol) << type << " window " << window;
      EXPECT_LT(e, 0.5 * sink_effect) << type << " window " << window;
    }
  }
}

// TurboQuant calibrated (keys and values stored centered, keys scaled): centering shifts every score of
// a query by -scale q.mu, which the sink must follow, and the value mean comes back only by the keys'
// share of the weights. The data have large key and value offsets, as real models do, so a cache that
// got either wrong would be far off.
TEST(AttnSinks, CalibratedTurboQuantFollowsTheSinks) {
  const int n = 300;
  ThreadPool pool(4);
  KvData d(shape(n, 0, true), n, 21);
  for (size_t i = 0; i < d.v.size(); ++i) d.v[i] += 4.0f;  // value offset (keys have +3 on a fifth)
  KvCalibrationRecorder rec(shape(n, 0, true));
  rec.store(0, 0, n, d.k.data(), d.v.data());
  std::vector<float> scratch(d.q.size());
  rec.attend(0, 0, n, d.q.data(), scratch.data(), d.scale(), pool);
  const KvCalibration cal = rec.result();
  const std::vector<float> ref = reference(d, 0, n, 0, kSinks.data());
  const double sink_effect = max_diff(ref, reference(d, 0, n, 0, nullptr));
  for (const auto& [type, tol] : std::vector<std::pair<std::string, double>>{{"tq4", 0.3}, {"tq3", 0.5}}) {
    auto kv = make_kv_cache(type, shape(n, 0, true));
    kv->set_pool(&pool);
    kv->calibrate(cal);
    ASSERT_TRUE(kv->stats().calibrated) << type;
    std::vector<float> got;
    for (int pos = 0; pos < 256; pos += 64) {
      const std::vector<float> o = d.step(*kv, pos, 64, pool);
      got.insert(got.end(), o.begin(), o.end());
    }
    for (int pos = 256; pos < n; ++pos) {  // decode split across threads
      const std::vector<float> o = d.step(*kv, pos, 1, pool);
      got.insert(got.end(), o.begin(), o.end());
    }
    const double e = max_diff(got, ref);
    std::printf("[sinks] %s calibrated: max err %.3g (sinks move the output by %.3g)\n", type.c_str(), e,
                sink_effect);
    EXPECT_LT(e, tol) << type;
    EXPECT_LT(e, 0.2 * sink_effect) << type;
  }
}

// -inf sinks are no sinks: the same floats as a cache without them, in both paths.
TEST(AttnSinks, MinusInfinityChangesNothing) {
  const int n = 300;
  ThreadPool pool(4);
  KvShape with = shape(n, 0, false);
  with.attn_sinks.assign(kHeads, -std::numeric_limits<float>::infinity());
  const KvData d(with, n, 5);
  for (const std::string type : {"f32", "f16", "q8_0", "tq3"}) {
    auto a = make_kv_cache(type, with);
    auto b = make_kv_cache(type, shape(n, 0, false));
    for (int pos : {0, 64}) {
      const std::vector<float> x = d.step(*a, pos, 64, pool), y = d.step(*b, pos, 64, pool);
      EXPECT_EQ(0, std::memcmp(x.data(), y.data(), x.size() * 4)) << type << " prefill " << pos;
    }
    for (int pos = 128; pos < n; ++pos) {
      const std::vector<float> x = d.step(*a, pos, 1, pool), y = d.step(*b, pos, 1, pool);
      ASSERT_EQ(0, std::memcmp(x.data(), y.data(), x.size() * 4)) << type << " decode " << pos;
    }
  }
}

// The tiled prefill kernel (every ISA level the CPU has, and AMX when enabled) with sinks against its
// double reference.
TEST(AttnSinks, TiledPrefillMatchesItsReference) {
  const int n = 96;
  const KvData d(shape(n, 0, false), n, 11);
  ThreadPool pool(2);
  for (int pos0 : {0, 40}) {
    FlashShape fs{n - pos0, pos0, kHeads, kKvHeads, kHeadDim, d.scale()};
    fs.sinks = kSinks.data();
    if (!flash_prefill_supported(fs)) GTEST_SKIP() << "no tiled kernel at this ISA level";
    // Head-major rows, as the caches hold them.
    std::vector<float> k(size_t(kKvHeads) * n * kHeadDim), v(k.size());
    for (int g = 0; g < kKvHeads; ++g)
      for (int p = 0; p < n; ++p)
        for (int i = 0; i < kHeadDim; ++i) {
          k[(size_t(g) * n + p) * kHeadDim + i] = d.k[size_t(p) * d.s.kv_dim() + g * kHeadDim + i];
          v[(size_t(g) * n + p) * kHeadDim + i] = d.v[size_t(p) * d.s.kv_dim() + g * kHeadDim + i];
        }
    const KvRowsView<float> view{k.data(), v.data(), size_t(n) * kHeadDim, size_t(kHeadDim)};
    std::vector<float> got(size_t(n - pos0) * d.row()), want(got.size());
    const float* q = &d.q[size_t(pos0) * d.row()];
    flash_prefill(fs, view, q, got.data(), pool);
    attention_prefill_ref(fs, view, q, want.data());
    EXPECT_LT(max_diff(got, want), 2e-5) << "pos0 " << pos0;
    const std::vector<float> full = reference(d, pos0, n - pos0, 0, kSinks.data());
    EXPECT_LT(max_diff(want, full), 2e-5) << "pos0 " << pos0;
  }
}

TEST(AttnSinks, BadSinksAreRefused) {
  KvShape s = shape(16, 0, false);
  s.attn_sinks = {1.0f, 2.0f};  // not n_layers x n_heads
  EXPECT_THROW(make_kv_cache("f16", s), InvalidArgument);
  s.attn_sinks = {1.0f, std::nanf(""), 0.0f, 0.0f};
  EXPECT_THROW(make_kv_cache("f16", s), InvalidArgument);
}

}  // namespace
}  // namespace qleap
