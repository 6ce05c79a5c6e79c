// Block key means (TqKvSpec::key_block, `bmN`): keys centered on the mean of the block of positions
// before theirs, with the difference to the cache's mean added back to their scores.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "kv/kv_calibration.h"
#include "kv/kv_turboquant.h"
#include "kv_test_data.h"
#include "turboquant/tq_attention.h"

namespace qleap {
namespace {

KvCalibration calibrate_on(const KvData& d, int n, ThreadPool& pool) {
  KvCalibrationRecorder rec(d.s);
  d.step(rec, 0, n, pool);
  return rec.result();
}

double rel_err(const std::vector<float>& a, const std::vector<float>& ref) {
  double e = 0, r = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    e += double(a[i] - ref[i]) * (a[i] - ref[i]);
    r += double(ref[i]) * ref[i];
  }
  return std::sqrt(e / r);
}

// Keys of real models carry a large constant part that RoPE turns, pair by pair, at the pair's
// frequency: a mean calibrated at short positions fits long ones less and less, while the mean of
// the previous block follows it.
TEST(TqKvBlockMeans, FollowAKeyMeanThatTurnsWithPosition) {
  const KvShape s{.n_layers = 1, .n_ctx = 1200, .n_heads = 4, .n_kv_heads = 2, .head_dim = 64};
  const int n = 1200, hd = s.head_dim, kvd = s.kv_dim();
  KvData d(s, n, 7);
  for (int p = 0; p < n; ++p)
    for (int g = 0; g < s.n_kv_heads; ++g)
      for (int i = 20; i < 28; ++i) {  // slow pairs, periods of 1900 to 15000 positions
        const double th = 1.0 / (300.0 * (i - 19)), a = 6.0;
        float* k = &d.k[size_t(p) * kvd + size_t(g) * hd + 2 * size_t(i)];
        k[0] += float(a * std::cos(p * th + i + g));
        k[1] += float(a * std::sin(p * th + i + g));
        // Queries read those channels too, as in real models (their outliers sit where the keys' do).
        for (int h = 0; h < s.n_heads / s.n_kv_heads; ++h) {
          float* qh = &d.q[size_t(p) * d.row() + (size_t(g) * 2 + size_t(h)) * hd + 2 * size_t(i)];
          qh[0] += 1.5f;
          qh[1] -= 1.5f;
        }
      }
  ThreadPool pool(2);
  const KvCalibration cal = calibrate_on(d, 200, pool);  // calibrated on the first 200 positions
  auto run = [&](const char* type) {
    auto kv = make_kv_cache(type, s);
    kv->set_pool(&pool);
    kv->calibrate(cal);
    std::vector<float> out;
    for (int p = 0; p < n; p += 200) {
      const auto o = d.step(*kv, p, 200, pool);
      if (p >= 1000) out = o;
    }
    return out;
  };
  const auto ref = d.exact(1000, 200);
  const double plain = rel_err(run("tq3:w0:bm0"), ref), bm = rel_err(run("tq3:w0:bm64"), ref);
  std::printf("[ block means ] attention error at positions 1000-1199: calibrated mean %.4f, bm64 %.4f\n",
              plain, bm);
  EXPECT_LT(bm, 0.65 * plain);

  // A mean that turns by about a radian per block (period 400 positions at bm64): the previous block's
  // mean would miss it by more than the calibrated mean does, so those channels keep the calibrated one.
  KvData f(s, n, 8);
  for (int p = 0; p < n; ++p)
    for (int g = 0; g < s.n_kv_heads; ++g) {
      float* k = &f.k[size_t(p) * kvd + size_t(g) * hd];
      k[0] += float(8.0 * std::cos(p * 2 * 3.14159265 / 400));
      k[1] += float(8.0 * std::sin(p * 2 * 3.14159265 / 400));
    }
  const KvCalibration fcal = calibrate_on(f, n, pool);  // a calibration that saw every phase
  auto frun = [&](const char* type) {
    auto kv = make_kv_cache(type, s);
    kv->set_pool(&pool);
    kv->calibrate(fcal);
    std::vector<float> out;
    for (int p = 0; p < n; p += 200) out = f.step(*kv, p, 200, pool);
    return out;
  };
  const auto fref = f.exact(1000, 200);
  const double fplain = rel_err(frun("tq3:w0:bm0"), fref), fbm = rel_err(frun("tq3:w0:bm64"), fref);
  std::printf("[ block means ] fast-turning mean: calibrated %.4f, bm64 %.4f\n", fplain, fbm);
  EXPECT_LT(fbm, 1.1 * fplain);
}

// Shifts come from the records, so one batch, token-by-token decode (the key-split path), and a
// sequence that rewrites its tail after another one give the same outputs; sliding-window rings too.
TEST(TqKvBlockMeans, SameForPrefillDecodeAndRewrites) {
  for (const int window : {0, 100}) {
    KvShape s{.n_layers = 1, .n_ctx = 300, .n_heads = 6, .n_kv_heads = 2, .head_dim = 64};
    if (window > 0) {
      s.windows = {window};
      s.max_tokens = 100;
    }
    const int n = 300;
    const KvData d(s, n, 4), other(s, n, 5);
    ThreadPool pool(4);
    const KvCalibration cal = calibrate_on(d, 100, pool);
    const char* type = "tq3:w8:bm16";
    auto make = [&] {
      auto kv = make_kv_cache(type, s);
      kv->set_pool(&pool);
      kv->calibrate(cal);
      return kv;
    };
    auto batch = make();
    std::vector<float> ref;
    for (int p = 0; p < n; p += 60) {
      const auto o = d.step(*batch, p, 60, pool);
      ref.insert(ref.end(), o.begin(), o.end());
    }
    auto decode = make();
    std::vector<float> out;
    for (int p = 0; p < n; ++p) {
      const auto o = d.step(*decode, p, 1, pool);
      out.insert(out.end(), o.begin(), o.end());
    }
    EXPECT_LT(rel_err(out, ref), 1e-5) << window;
    // Another sequence wrote 0..200; this one restarts at 0 without a reset, then trims back to 130 and
    // goes on in batches of 17 (block boundaries in the middle of batches).
    auto rewrite = make();
    other.step(*rewrite, 0, 100, pool);
    other.step(*rewrite, 100, 100, pool);
    d.step(*rewrite, 0, 60, pool);
    d.step(*rewrite, 60, 60, pool);
    d.step(*rewrite, 120, 40, pool);  // then trimmed back into the block of 128..143
    rewrite->trim(130);
    out.clear();
    for (int p = 130; p < n; p += 17) {
      const auto o = d.step(*rewrite, p, std::min(17, n - p), pool);
      out.insert(out.end(), o.begin(), o.end());
    }
    const std::vector<float> tail(ref.begin() + 130 * long(d.row()), ref.end());
    EXPECT_LT(rel_err(out, tail), 1e-5) << window;
    // And the shifts do something.
    auto none = make_kv_cache("tq3:w8:bm0", s);
    none->calibrate(cal);
    std::vector<float> plain;
    for (int p = 0; p < n; p += 60) {
      const auto o = d.step(*none, p, 60, pool);
      plain.insert(plain.end(), o.begin(), o.end());
    }
    EXPECT_GT(rel_err(plain, ref), 1e-3) << window;
  }
}

// A reset (or a trim into block 0) starts the next sequence on the calibrated mean. On a ring layer
// the row of block 0 is also the row of later blocks: once another sequence wrapped the ring of rows,
// a reused cache centered the new block 0 on that sequence's shift (a server slot or the next chunk of
// `qleap compare`: Gemma 3 tq4 KLD 0.005 fresh, ~0.09 reused).
TEST(TqKvBlockMeans, AReusedCacheEqualsAFreshOne) {
  for (const int window : {0, 256}) {
    KvShape s{.n_layers = 1, .n_ctx = 1024, .n_heads = 4, .n_kv_heads = 1, .head_dim = 64};
    if (window > 0) {
      s.windows = {window};
      s.max_tokens = 128;  // stored in pieces of 64: a ring of 319 positions, 6 rows of shifts
    }
    const int n = 1024;
    const KvData d(s, n, 4), other(s, n, 5);
    ThreadPool pool(2);
    const KvCalibration cal = calibrate_on(d, 128, pool);
    for (const char* type : {"tq4", "tq3:w0"}) {
      auto make = [&] {
        auto kv = make_kv_cache(type, s);
        kv->set_pool(&pool);
        kv->calibrate(cal);
        return kv;
      };
      auto run = [&](KvCache& kv) {
        std::vector<float> out;
        for (int p = 0; p < n; p += 128) {
          const auto o = d.step(kv, p, 128, pool);
          out.insert(out.end(), o.begin(), o.end());
        }
        return out;
      };
      auto fresh = make();
      const std::vector<float> ref = run(*fresh);
      auto reset = make(), trimmed = make();
      for (int p = 0; p < n; p += 128) {
        other.step(*reset, p, 128, pool);
        other.step(*trimmed, p, 128, pool);
      }
      reset->reset();
      trimmed->trim(0);
      EXPECT_EQ(rel_err(run(*reset), ref), 0.0) << window << " " << type;
      EXPECT_EQ(rel_err(run(*trimmed), ref), 0.0) << window << " " << type;
    }
  }
}

// The attention kernels add the shift of each record's block to its score, exactly as the
// dequantizing reference adds it to the key.
TEST(TqKvBlockMeans, KernelsMatchTheReference) {
  const int d = 64;
  const TqState ks = tq_make_state({d, 3.0f}, 0, 0), vs = tq_make_state({d, 3.0f}, 0, 1);
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  const int64_t n = 300;
  std::vector<float> k(size_t(n) * d), v(k.size()), q(size_t(5) * d), shift(size_t(n / 32 + 1) * d);
  for (auto& x : k) x = nd(rng);
  for (auto& x : v) x = nd(rng);
  for (auto& x : q) x = nd(rng);
  for (size_t i = size_t(d); i < shift.size(); ++i) shift[i] = 2.0f * nd(rng);  // row 0 stays zero
  const size_t kb = ks.layout.bytes, vb = vs.layout.bytes;
  std::vector<uint8_t> kr(size_t(n) * kb), vr(size_t(n) * vb);
  tq_quantize_rows(ks, n, k.data(), d, kr.data(), kb);
  tq_quantize_rows(vs, n, v.data(), d, vr.data(), vb);
  std::vector<float> sink_k(d), sink_v(d);
  tq_rotate_query(ks, k.data(), sink_k.data());
  tq_rotate_query(vs, v.data(), sink_v.data());
  TqExactRows x;
  x.sink = 1;
  x.sink_k = sink_k.data();
  x.sink_v = sink_v.data();
  x.shift_block = 32;
  x.key_shift = shift.data();
  const int64_t n_kv[5] = {300, 31, 33, 200, 64};
  std::vector<float> out(size_t(5) * d), ref(out.size());
  tq_attend(ks, vs, q.data(), 5, d, n_kv, kr.data(), kb, vr.data(), vb, 0.125f, out.data(), d, &x);
  tq_attend_ref(ks, vs, q.data(), 5, d, n_kv, kr.data(), kb, vr.data(), vb, 0.125f, ref.data(), d, &x);
  EXPECT_LT(rel_err(out, ref), 1e-5);
  std::vector<float> plain(out.size());
  tq_attend(ks, vs, q.data(), 5, d, n_kv, kr.data(), kb, vr.data(), vb, 0.125f, plain.data(), d, nullptr);
  EXPECT_GT(rel_err(plain, ref), 1e-2);
}

TEST(TqKvBlockMeans, ShiftRowsAreCounted) {
  KvShape s{.n_layers = 3, .n_ctx = 1000, .n_heads = 6, .n_kv_heads = 2, .head_dim = 64};
  auto a = make_kv_cache("tq3:sink0:w0:bm0", s), b = make_kv_cache("tq3:sink0:w0:bm128", s);
  // One row of 64 floats per block of 128 positions: 2 bytes per position per layer and kv head, plus
  // a row per layer and kv head (the block that n_ctx starts).
  EXPECT_EQ(b->bytes_per_token(), a->bytes_per_token() + 3u * 2u * 2u);
  EXPECT_EQ(b->allocated_bytes(), a->allocated_bytes() + 3u * 2u * 2u * 1000u + 3u * 2u * 64u * 4u);
  EXPECT_EQ(make_kv_cache("tq3:sink0:w0", s)->allocated_bytes(), b->allocated_bytes());  // the default
  // Sliding-window layers of at least two blocks keep a ring of rows: a constant, whatever n_ctx.
  s.windows = {300, 0, 300};
  s.max_tokens = 100;
  for (int n_ctx : {1000, 5000}) {
    s.n_ctx = n_ctx;
    auto ra = make_kv_cache("tq3:sink0:w0:bm0", s), rb = make_kv_cache("tq3:sink0:w0:bm128", s);
    EXPECT_EQ(rb->bytes_per_token(), ra->bytes_per_token() + 2u * 2u) << n_ctx;
    const size_t ring_rows = 2u * 2u * (363u / 128u + 4u);  // two ring layers, ring 300 + 64 - 1
    EXPECT_EQ(rb->allocated_bytes(),
              ra->allocated_bytes() + 2u * 2u * size_t(n_ctx) + (2u + ring_rows) * 64u * 4u)
        << n_ctx;
  }
  EXPECT_FALSE(parse_tq_kv_type("tq3:bm4").has_value());
  EXPECT_EQ(parse_tq_kv_type("tq3:bm256")->key_block, 256);
  EXPECT_EQ(parse_tq_kv_type("tq3")->key_block, 128);
  EXPECT_TRUE(parse_tq_kv_type("tq3")->unbiased_k);
  EXPECT_FALSE(parse_tq_kv_type("tq3:noubk")->unbiased_k);
  EXPECT_EQ(parse_tq_kv_type("tq3:plain")->key_block, 0);
}

}  // namespace
}  // namespace qleap
