// Per-head bit allocation of the TurboQuant KV cache (turboquant/tq_sensitivity.h, `measure` and
// `alloc=` options of kv/kv_turboquant.h): the greedy allocation against brute force, the profile
// file, the cache built from an allocation, and the measurement against what the cache really loses.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>

#include "core/error.h"
#include "kv/kv_calibration.h"
#include "kv/kv_turboquant.h"
#include "kv_test_data.h"
#include "turboquant/tq_sensitivity.h"

namespace qleap {
namespace {

// A profile with rates 2..4 whose errors are convex in the bits: e4 = a, e3 = a + d1, e2 = e3 + d1 + d2.
TqSensitivity random_profile(int n_layers, int n_kv_heads, int head_dim, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  TqSensitivity s;
  s.n_layers = n_layers;
  s.n_kv_heads = n_kv_heads;
  s.head_dim = head_dim;
  s.tokens = 256;
  s.chunks = 1;
  s.window = 64;
  s.sink = 1;
  s.rates = {2, 3, 4};
  for (int h = 0; h < s.n_heads_total(); ++h) {
    for (auto* err : {&s.k_err, &s.v_err}) {
      const double scale = std::pow(10.0, -4.0 * u(rng));  // heads spread over 4 decades
      const double a = scale * u(rng), d1 = scale * u(rng), d2 = scale * u(rng);
      err->push_back({a + 2 * d1 + d2, a + d1, a});
    }
  }
  return s;
}

double total_error(const TqSensitivity& s, const TqBitAllocation& a) {
  double e = 0;
  for (int h = 0; h < s.n_heads_total(); ++h)
    e += s.error_at(s.k_err, h, a.k_bits[size_t(h)]) + s.error_at(s.v_err, h, a.v_bits[size_t(h)]);
  return e;
}

// Every allocation of 6 items (3 heads, K and V) over {2, 2.5, .., 4} with the given mean: the best
// total error, found by enumeration.
double brute_force_best(const TqSensitivity& s, float avg, float step) {
  const int n_levels = int(std::lround(2.0f / step)) + 1;
  double best = 1e300;
  TqBitAllocation a;
  a.k_bits.resize(3);
  a.v_bits.resize(3);
  int total_levels = 1;
  for (int i = 0; i < 6; ++i) total_levels *= n_levels;
  for (int code = 0; code < total_levels; ++code) {
    int c = code;
    float sum = 0;
    for (int i = 0; i < 6; ++i) {
      const float b = 2.0f + step * float(c % n_levels);
      c /= n_levels;
      (i < 3 ? a.k_bits[size_t(i)] : a.v_bits[size_t(i - 3)]) = b;
      sum += b;
    }
    if (std::fabs(sum - 6 * avg) > 1e-3f) continue;
    best = std::min(best, total_error(s, a));
  }
  return best;
}

TEST(TqSensitivity, GreedyAllocationIsOptimalForConvexErrors) {
  for (unsigned seed = 1; seed <= 20; ++seed) {
    const TqSensitivity s = random_profile(1, 3, 64, seed);
    for (const float step : {0.5f, 1.0f})
      for (const float avg : {2.0f, 2.5f, 3.0f, 3.5f, 4.0f}) {
        const TqBitAllocation a = tq_allocate_bits(s, avg, step);
        double mean = 0;
        for (int h = 0; h < 3; ++h) mean += (a.k_bits[size_t(h)] + a.v_bits[size_t(h)]) / 6.0;
        EXPECT_NEAR(mean, avg, 1e-6) << seed << " " << avg << " " << step;
        const double best = brute_force_best(s, avg, step);
        EXPECT_NEAR(total_error(s, a), best, 1e-12 + 1e-9 * best) << seed << " " << avg << " " << step;
      }
  }
}

TEST(TqSensitivity, AllocationFollowsTheErrorsAndRejectsBadBudgets) {
  TqSensitivity s = random_profile(2, 2, 64, 7);
  // Head 3's keys lose 1000x more than anything else: they get the most bits; head 0's values nearly
  // nothing: they get the fewest.
  s.k_err[3] = {10.0, 1.0, 0.1};
  s.v_err[0] = {1e-9, 5e-10, 4e-10};
  const TqBitAllocation a = tq_allocate_bits(s, 3.0f);
  EXPECT_EQ(a.k_bits[3], 4.0f);
  EXPECT_EQ(a.v_bits[0], 2.0f);
  EXPECT_THROW(tq_allocate_bits(s, 1.5f), InvalidArgument);
  EXPECT_THROW(tq_allocate_bits(s, 4.5f), InvalidArgument);
  EXPECT_THROW(tq_allocate_bits(s, 3.0f, 0.25f), InvalidArgument);
  // Half rates are the mean of their neighbours' errors (half the coordinates at each rate).
  EXPECT_DOUBLE_EQ(s.error_at(s.k_err, 3, 2.5f), 5.5);
  EXPECT_DOUBLE_EQ(s.error_at(s.k_err, 3, 4.0f), 0.1);
  EXPECT_THROW(s.error_at(s.k_err, 3, 4.5f), InvalidArgument);
}

TEST(TqSensitivity, JsonRoundTripAndMalformedFiles) {
  const TqSensitivity s = random_profile(3, 2, 64, 3);
  const TqSensitivity r = tq_sensitivity_from_json(tq_sensitivity_to_json(s), "mem");
  EXPECT_EQ(r.n_layers, 3);
  EXPECT_EQ(r.n_kv_heads, 2);
  EXPECT_EQ(r.rates, s.rates);
  for (int h = 0; h < s.n_heads_total(); ++h) {
    for (size_t i = 0; i < 3; ++i) {
      EXPECT_DOUBLE_EQ(r.k_err[size_t(h)][i], s.k_err[size_t(h)][i]);
      EXPECT_DOUBLE_EQ(r.v_err[size_t(h)][i], s.v_err[size_t(h)][i]);
    }
  }
  const std::string good = tq_sensitivity_to_json(s);
  auto replaced = [&](const std::string& from, const std::string& to) {
    std::string t = good;
    const size_t at = t.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return t.replace(at, from.size(), to);
  };
  const std::string bad[] = {
      "",
      "[1, 2]",
      "{\"format\": \"qleap-kv-sensitivity\"}",
      "{\"format\": 5}",  // wrong JSON types are FormatErrors too, not nlohmann's exceptions
      replaced("\"qleap-kv-sensitivity\"", "\"expert-profile\""),
      replaced("\"n_layers\": 3", "\"n_layers\": 4"),     // head count mismatch
      replaced("\"n_layers\": 3", "\"n_layers\": 3.5"),   // not an integer
      replaced("\"n_layers\": 3", "\"n_layers\": 1e30"),  // out of range
      replaced("\"n_kv_heads\": 2", "\"n_kv_heads\": -2"),
      replaced("\"version\": 1", "\"version\": 2"),
      replaced("\"layer\": 2", "\"layer\": 7"),     // index out of range
      replaced("\"layer\": 2", "\"layer\": 1"),     // a head listed twice
      replaced("\"heads\": [", "\"heads\": [7, "),  // one head too many, not an object
  };
  for (const std::string& t : bad) EXPECT_THROW(tq_sensitivity_from_json(t, "bad"), FormatError) << t;
  // Rates must be consecutive integers; errors finite and non-negative, one per rate.
  TqSensitivity odd = s;
  odd.rates = {2, 4, 5};
  EXPECT_THROW(tq_sensitivity_from_json(tq_sensitivity_to_json(odd), "bad"), FormatError);
  odd = s;
  odd.k_err[1][1] = -1;
  EXPECT_THROW(tq_sensitivity_from_json(tq_sensitivity_to_json(odd), "bad"), FormatError);
  odd = s;
  odd.check_tokens = 10;
  odd.check_kld_allocated = 0.5;
  odd.check_kld_uniform = 0.25;
  const TqSensitivity checked = tq_sensitivity_from_json(tq_sensitivity_to_json(odd), "ok");
  EXPECT_EQ(checked.check_tokens, 10);
  EXPECT_FALSE(checked.allocation_pays());
  EXPECT_TRUE(r.allocation_pays());  // unchecked (a profile from `qleap profile`)
  for (const auto& [from, to] : {std::pair{"\"tokens\": 10", "\"tokens\": -1"},
                                 {"\"kld_uniform\": 0.25", "\"kld_uniform\": \"x\""},
                                 {"\"diff_se\": 0.0", "\"diff_se\": -1"},
                                 {"\"check\": {", "\"check\": 5, \"x\": {"}}) {
    std::string t = tq_sensitivity_to_json(odd);
    const size_t at = t.find(from);
    ASSERT_NE(at, std::string::npos) << from;
    EXPECT_THROW(tq_sensitivity_from_json(t.replace(at, std::string(from).size(), to), "bad"), FormatError)
        << t;
  }
  odd = s;
  odd.v_err[2].pop_back();
  EXPECT_THROW(tq_sensitivity_from_json(tq_sensitivity_to_json(odd), "bad"), FormatError);
}

// Attention made local, as in real models: channels 0 and 1 of keys and queries rotate with the
// position (like a low RoPE frequency), adding 98 cos(pi (t - j) / 400) to the score of query t and key
// j: weights fall by e^-0.8 at distance 16, e^-3 at 32, e^-12 at 64.
KvData local_attention(const KvShape& s, int n, unsigned seed) {
  KvData d(s, n, seed);
  const int group = s.n_heads / s.n_kv_heads;
  for (auto& x : d.q) x *= 0.5f;
  for (int t = 0; t < n; ++t) {
    const float a = float(t) * 3.14159265f / 400, c = 28.0f * std::cos(a), sn = 28.0f * std::sin(a);
    for (int g = 0; g < s.n_kv_heads; ++g) {
      d.k[size_t(t) * s.kv_dim() + size_t(g) * s.head_dim] = c;
      d.k[size_t(t) * s.kv_dim() + size_t(g) * s.head_dim + 1] = sn;
      for (int h = g * group; h < (g + 1) * group; ++h) {
        d.q[size_t(t) * d.row() + size_t(h) * s.head_dim] = c;
        d.q[size_t(t) * d.row() + size_t(h) * s.head_dim + 1] = sn;
      }
    }
  }
  return d;
}

// Stores positions [0, n) and attends their queries in one batch.
std::vector<float> run(const KvData& d, KvCache& kv, int n) {
  ThreadPool pool(2);
  return d.step(kv, 0, n, pool);
}

std::string write_profile(const TqSensitivity& s, const std::string& name) {
  const std::string path = (std::filesystem::temp_directory_path() / name).string();
  save_tq_sensitivity(s, path);
  return path;
}

// Equal, strictly convex curves for every head and for K and V allocate the uniform rate to everyone:
// the cache is then bit-for-bit the uniform tq3 cache. A skewed profile moves bits between heads but
// keeps the bytes of tq3.
TEST(TqKvAlloc, ProfileBuildsPerHeadRatesWithTheUniformBytes) {
  const KvShape s{.n_layers = 2, .n_ctx = 200, .n_heads = 6, .n_kv_heads = 3, .head_dim = 64};
  TqSensitivity p = random_profile(2, 3, 64, 11);
  for (auto* err : {&p.k_err, &p.v_err})
    for (auto& e : *err) e = {1.0, 0.25, 0.0625};
  const std::string equal = write_profile(p, "qleap_tq_equal.kvsens.json");
  const KvData d(s, 200, 5);
  auto uniform = make_kv_cache("tq3", s);
  auto alloc = make_kv_cache("tq3:alloc=" + equal, s);
  EXPECT_EQ(alloc->bytes_per_token(), uniform->bytes_per_token());
  EXPECT_EQ(alloc->allocated_bytes(), uniform->allocated_bytes());
  EXPECT_EQ(run(d, *alloc, 200), run(d, *uniform, 200));

  p.k_err[1] = {100.0, 10.0, 1.0};  // layer 0, kv head 1: keys much more sensitive
  const std::string skew = write_profile(p, "qleap_tq_skew.kvsens.json");
  auto skewed = make_kv_cache("tq3:alloc=" + skew, s);
  EXPECT_EQ(skewed->bytes_per_token(), uniform->bytes_per_token());
  EXPECT_NE(run(d, *skewed, 200), run(d, *uniform, 200));
  // k4v3 has a budget of 3.5 bits: the bytes of k4v3, spread by the profile.
  EXPECT_EQ(make_kv_cache("k4v3:alloc=" + skew, s)->bytes_per_token(),
            make_kv_cache("k4v3", s)->bytes_per_token());
  // head_dim 8 (stories260K): half rates are not whole bytes (a uniform tq2.5 rounds each half up), so
  // the allocation takes whole-bit steps: the bytes of tq3 and k4v3 exactly, no more than tq2.5's.
  const KvShape small{.n_layers = 2, .n_ctx = 50, .n_heads = 6, .n_kv_heads = 3, .head_dim = 8};
  TqSensitivity ps = p;
  ps.head_dim = 8;
  const std::string small_path = write_profile(ps, "qleap_tq_small.kvsens.json");
  for (const char* base : {"tq3", "k4v3"})
    EXPECT_EQ(make_kv_cache(std::string(base) + ":alloc=" + small_path, small)->bytes_per_token(),
              make_kv_cache(base, small)->bytes_per_token())
        << base;
  EXPECT_LE(make_kv_cache("tq2.5:alloc=" + small_path, small)->bytes_per_token(),
            make_kv_cache("tq2.5", small)->bytes_per_token());

  // A profile of another shape, a missing file, and combinations that have no meaning are refused.
  const KvShape other{.n_layers = 3, .n_ctx = 200, .n_heads = 6, .n_kv_heads = 3, .head_dim = 64};
  EXPECT_THROW(make_kv_cache("tq3:alloc=" + skew, other), InvalidArgument);
  EXPECT_THROW(make_kv_cache("tq3:alloc=/nonexistent/x.json", s), IoError);
  EXPECT_THROW(make_kv_cache("tq3:e1:alloc=" + skew, s), InvalidArgument);
  EXPECT_THROW(make_kv_cache("tq3:alloc=", s), InvalidArgument);
  for (const std::string& f : {equal, skew, small_path}) std::filesystem::remove(f);
}

TEST(TqKvAlloc, NamesTakeThePathLast) {
  const auto spec = parse_tq_kv_type("tq3:w32:alloc=/tmp/a:b/c.json");
  ASSERT_TRUE(spec);
  EXPECT_EQ(spec->alloc_path, "/tmp/a:b/c.json");
  EXPECT_EQ(spec->window, 32);
  EXPECT_FALSE(parse_tq_kv_type("tq3:alloc="));
  EXPECT_FALSE(parse_tq_kv_type("tq3:measure"));
  EXPECT_TRUE(parse_tq_kv_type("tq3:alloc")->force_alloc);
  EXPECT_FALSE(parse_tq_kv_type("tq3")->force_alloc);  // measuring is tq_measure_sensitivity's, not a cache's
}

double rel_err(const std::vector<float>& a, const std::vector<float>& b, size_t from) {
  double e = 0, r = 0;
  for (size_t i = from; i < a.size(); ++i) {
    e += double(a[i] - b[i]) * (a[i] - b[i]);
    r += double(b[i]) * b[i];
  }
  return e / r;
}

// The calibration and the chunk rows a model pass over d would give: a recorder in the cache's place.
struct Recorded {
  KvCalibration cal;
  KvChunkRows rows;
};
Recorded record(const KvData& d, int n) {
  KvCalibrationRecorder rec(d.s, /*keep_rows=*/true);
  run(d, rec, n);
  return {rec.result(), rec.rows()};
}

// The measurement quantizes exactly like a cache with the same calibration (same centering, scales and
// rotations), so its key and value errors at 3 bits should add up to roughly what a tq3 cache really
// loses on the same chunk's last 128 queries; errors fall with the rate and with a longer window.
TEST(TqKvAlloc, MeasurementMatchesWhatTheCacheLoses) {
  const KvShape s{.n_layers = 1, .n_ctx = 400, .n_heads = 6, .n_kv_heads = 2, .head_dim = 64};
  const int n = 400;
  const KvData d = local_attention(s, n, 9);
  const Recorded r = record(d, n);
  ASSERT_EQ(r.rows.n, n);
  EXPECT_EQ(r.rows.scale, d.scale());
  const TqSensitivity sens = tq_measure_sensitivity(*parse_tq_kv_type("tq3:w32"), s, r.cal, r.rows, nullptr);
  EXPECT_EQ(sens.tokens, n);
  EXPECT_EQ(sens.window, 32);
  ASSERT_EQ(sens.rates, (std::vector<int>{2, 3, 4}));
  auto cache = make_kv_cache("tq3:w32", s);
  cache->calibrate(r.cal);
  const std::vector<float> out = run(d, *cache, n);

  const std::vector<float> ref = d.exact(0, n);
  const size_t from = size_t(n - 128) * d.row();
  // Per kv head: the real loss of the tq3 cache over that head's query heads.
  for (int g = 0; g < 2; ++g) {
    double e = 0, rr = 0;
    for (size_t t = size_t(n - 128); t < size_t(n); ++t)
      for (int h = g * 3; h < g * 3 + 3; ++h)
        for (int i = 0; i < 64; ++i) {
          const size_t at = t * d.row() + size_t(h) * 64 + size_t(i);
          e += double(out[at] - ref[at]) * (out[at] - ref[at]);
          rr += double(ref[at]) * ref[at];
        }
    const double real = e / rr, measured = sens.k_err[size_t(g)][1] + sens.v_err[size_t(g)][1];
    EXPECT_GT(measured, 0.85 * real) << g;
    EXPECT_LT(measured, 1.2 * real) << g;
    for (const auto* err : {&sens.k_err, &sens.v_err}) {
      EXPECT_GT((*err)[size_t(g)][0], 1.2 * (*err)[size_t(g)][1]) << g;
      EXPECT_GT((*err)[size_t(g)][1], 1.2 * (*err)[size_t(g)][2]) << g;
    }
  }
  EXPECT_GT(rel_err(out, ref, from), 1e-6);  // the records do lose something

  // A longer window leaves fewer positions to the records: every error shrinks.
  const TqSensitivity less = tq_measure_sensitivity(*parse_tq_kv_type("tq3:w128"), s, r.cal, r.rows, nullptr);
  for (int g = 0; g < 2; ++g)
    for (size_t q = 0; q < 3; ++q) {
      EXPECT_LT(less.k_err[size_t(g)][q], sens.k_err[size_t(g)][q]) << g << " " << q;
      EXPECT_LT(less.v_err[size_t(g)][q], sens.v_err[size_t(g)][q]) << g << " " << q;
    }
  // Too short a chunk (fewer than kTqMeasureMinTokens) is refused.
  const Recorded short_chunk = record(d, 100);
  EXPECT_THROW(
      tq_measure_sensitivity(*parse_tq_kv_type("tq3:w32"), s, short_chunk.cal, short_chunk.rows, nullptr),
      InvalidArgument);
}

// Per kv head, the relative output error of `out` against `ref` over the last 128 queries.
double head_loss(const KvShape& s, const std::vector<float>& out, const std::vector<float>& ref, int n,
                 int g) {
  const int group = s.n_heads / s.n_kv_heads;
  const size_t row = size_t(s.n_heads) * s.head_dim;
  double e = 0, rr = 0;
  for (size_t t = size_t(n - 128); t < size_t(n); ++t)
    for (int h = g * group; h < (g + 1) * group; ++h)
      for (int i = 0; i < s.head_dim; ++i) {
        const size_t at = t * row + size_t(h) * s.head_dim + size_t(i);
        e += double(out[at] - ref[at]) * (out[at] - ref[at]);
        rr += double(ref[at]) * ref[at];
      }
  return e / rr;
}

// The measurement replays attention as the model computes it: a sliding-window layer's queries see
// only their window, scores are soft-capped, and attention sinks join the softmax (Gemma 3 has 5 of 6
// layers sliding, window 512, and its calibration text is longer than that). Keys older than the
// window are made to attract the queries strongly, so a measurement that let queries see them would
// measure another attention than the cache's (checked below: off by far more than the tolerance). Also
// found by this test: the cache centered keys under soft-capping, which is not shift-invariant.
TEST(TqKvAlloc, MeasurementFollowsSlidingWindowsSoftcapAndSinks) {
  KvShape s{.n_layers = 1, .n_ctx = 400, .n_heads = 6, .n_kv_heads = 2, .head_dim = 64};
  const int n = 400;
  KvData d(s, n, 21);
  for (int t = 0; t < n; ++t)
    for (int g = 0; g < 2; ++g) {
      if (t < 150) {
        d.k[size_t(t) * s.kv_dim() + size_t(g) * 64 + 2] += 12.0f;
        for (int i = 0; i < 64; ++i) d.v[size_t(t) * s.kv_dim() + size_t(g) * 64 + size_t(i)] += 4.0f;
      }
      for (int h = g * 3; h < g * 3 + 3; ++h) d.q[size_t(t) * d.row() + size_t(h) * 64 + 2] += 3.0f;
    }
  s.windows = {100};  // queries 272.. see keys from 173 on: none of the attracting ones
  s.softcap = 30.0f;
  s.attn_sinks = {1.0f, 2.0f, -std::numeric_limits<float>::infinity(), 0.5f, 3.0f, 1.5f};
  const Recorded r = record(d, n);
  auto f32 = make_kv_cache("f32", s);
  const std::vector<float> ref = run(d, *f32, n);
  auto cache = make_kv_cache("tq3:w32", s);
  cache->calibrate(r.cal);
  const std::vector<float> out = run(d, *cache, n);
  const TqSensitivity sens = tq_measure_sensitivity(*parse_tq_kv_type("tq3:w32"), s, r.cal, r.rows, nullptr);
  KvShape no_window = s;
  no_window.windows.clear();
  const TqSensitivity blind =
      tq_measure_sensitivity(*parse_tq_kv_type("tq3:w32"), no_window, r.cal, r.rows, nullptr);
  for (int g = 0; g < 2; ++g) {
    const double real = head_loss(s, out, ref, n, g);
    const double measured = sens.k_err[size_t(g)][1] + sens.v_err[size_t(g)][1];
    const double wrong = blind.k_err[size_t(g)][1] + blind.v_err[size_t(g)][1];
    EXPECT_GT(measured, 0.85 * real) << g;
    EXPECT_LT(measured, 1.2 * real) << g;
    EXPECT_TRUE(wrong > 1.5 * real || wrong < real / 1.5) << g << ": " << wrong << " vs " << real;
  }
}

// Without alloc=, a TurboQuant cache spends its bits by the sensitivity the model's calibration
// carries (measured on the calibration text, runtime/kv_calibrate), at the window nearest its own:
// the same rates as passing that sensitivity as a profile, the bytes of the uniform type, and
// `uniform` turns it off. The sensitivity survives the calibration's JSON file.
TEST(TqKvAlloc, CalibrationSensitivityAllocatesWithoutAProfile) {
  const KvShape s{.n_layers = 2, .n_ctx = 200, .n_heads = 6, .n_kv_heads = 3, .head_dim = 64};
  const KvData d(s, 200, 5);
  KvCalibration cal = record(d, 200).cal;
  TqSensitivity w64 = random_profile(2, 3, 64, 11), w0 = w64;
  for (auto* p : {&w64, &w0})
    for (auto* err : {&p->k_err, &p->v_err})
      for (auto& e : *err) e = {1.0, 0.25, 0.0625};
  w64.window = 64;
  w0.window = 0;
  w64.k_err[1] = {100.0, 10.0, 1.0};  // layer 0, kv head 1: keys much more sensitive
  w0.v_err[4] = {100.0, 10.0, 1.0};   // layer 1, kv head 1: values
  cal.tq_sensitivity = {w0, w64};
  const std::string p64 = write_profile(w64, "qleap_tq_auto64.kvsens.json");
  const std::string p0 = write_profile(w0, "qleap_tq_auto0.kvsens.json");
  auto out = [&](const std::string& type) {
    auto kv = make_kv_cache(type, s);
    kv->calibrate(cal);
    kv->calibrate(cal);                          // again, as every new sequence does: nothing changes
    const std::string base = type.substr(0, 3);  // tq3 / tq4: the uniform type's bytes
    EXPECT_EQ(kv->bytes_per_token(), make_kv_cache(base + ":uniform", s)->bytes_per_token()) << type;
    return run(d, *kv, 200);
  };
  const std::vector<float> uniform = out("tq3:uniform");
  EXPECT_EQ(out("tq3"), out("tq3:alloc=" + p64));
  EXPECT_NE(out("tq3"), uniform);
  EXPECT_EQ(out("tq3:w0"), out("tq3:w0:alloc=" + p0));
  EXPECT_EQ(out("tq3:w8"), out("tq3:w8:alloc=" + p0));  // nearer to 0 than to 64
  EXPECT_NE(out("tq3:w0"), out("tq3:w0:alloc=" + p64));
  // tq4 is already at the highest measured rate: nothing to move.
  EXPECT_EQ(out("tq4"), out("tq4:uniform"));

  // The calibration's model-level check (runtime/kv_calibrate): where uniform rates did better on its
  // text, caches keep them, and `alloc` asks for the allocation anyway.
  EXPECT_EQ(out("tq3:alloc"), out("tq3"));
  cal.tq_sensitivity[1].check_tokens = 700;
  cal.tq_sensitivity[1].check_kld_allocated = 0.02;
  cal.tq_sensitivity[1].check_kld_uniform = 0.01;
  EXPECT_EQ(out("tq3"), uniform);
  EXPECT_EQ(out("tq3:alloc"), out("tq3:alloc=" + p64));
  EXPECT_EQ(out("tq3:w0"), out("tq3:w0:alloc=" + p0));  // w0's own check is not affected
  cal.tq_sensitivity[1].check_kld_allocated = 0.005;
  EXPECT_EQ(out("tq3"), out("tq3:alloc=" + p64));
  // Better, but by less than two standard errors of the paired differences: uniform rates.
  cal.tq_sensitivity[1].check_kld_allocated = 0.009;
  cal.tq_sensitivity[1].check_diff_se = 0.001;
  EXPECT_EQ(out("tq3"), uniform);
  cal.tq_sensitivity[1].check_diff_se = 0.0004;
  EXPECT_EQ(out("tq3"), out("tq3:alloc=" + p64));
  cal.tq_sensitivity[1].check_kld_allocated = 0.02;

  const KvCalibration back = kv_calibration_from_json(kv_calibration_to_json(cal));
  EXPECT_EQ(back.tq_sensitivity[1].check_tokens, 700);
  EXPECT_DOUBLE_EQ(back.tq_sensitivity[1].check_kld_allocated, 0.02);
  EXPECT_DOUBLE_EQ(back.tq_sensitivity[1].check_kld_uniform, 0.01);
  EXPECT_DOUBLE_EQ(back.tq_sensitivity[1].check_diff_se, 0.0004);
  EXPECT_FALSE(back.tq_sensitivity[1].allocation_pays());
  EXPECT_EQ(back.tq_sensitivity[0].check_tokens, 0);
  EXPECT_TRUE(back.tq_sensitivity[0].allocation_pays());
  ASSERT_EQ(back.tq_sensitivity.size(), 2u);
  EXPECT_EQ(back.tq_sensitivity[1].window, 64);
  EXPECT_EQ(back.tq_sensitivity[1].k_err, w64.k_err);
  EXPECT_EQ(back.tq_sensitivity[0].v_err, w0.v_err);
  for (const std::string& f : {p64, p0}) std::filesystem::remove(f);
}

}  // namespace
}  // namespace qleap
