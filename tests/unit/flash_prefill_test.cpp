// Tiled prefill attention against the double-precision reference, at every ISA level this CPU has.
#include "kv/flash_prefill.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/cpu_features.h"
#include "core/fp16.h"
#include "isa_test_util.h"

namespace qleap {
namespace {
using testing_util::IsaGuard;

struct Case {
  int n_heads, n_kv_heads, head_dim, pos0, n_q;
};

template <class T>
void check_case(const Case& c, int threads) {
  const int n_ctx = c.pos0 + c.n_q + 3;
  std::mt19937 rng(uint32_t(c.head_dim * 131 + c.pos0 * 7 + c.n_q + c.n_heads));
  std::normal_distribution<float> nd;
  // Head-major storage like the caches: [head][position][dim], with a gap between heads.
  const size_t pos_stride = size_t(c.head_dim), head_stride = size_t(n_ctx + 5) * pos_stride;
  std::vector<T> k(head_stride * size_t(c.n_kv_heads)), v(k.size());
  for (size_t i = 0; i < k.size(); ++i) {
    // A few large scores so the running maximum moves between key blocks.
    const float kx = nd(rng) * (i % 97 == 0 ? 4.0f : 1.0f), vx = nd(rng);
    if constexpr (sizeof(T) == 2) {
      k[i] = fp32_to_fp16(kx);
      v[i] = fp32_to_fp16(vx);
    } else {
      k[i] = kx;
      v[i] = vx;
    }
  }
  std::vector<float> q(size_t(c.n_q) * c.n_heads * c.head_dim);
  for (auto& x : q) x = nd(rng);
  const FlashShape s{c.n_q, c.pos0, c.n_heads, c.n_kv_heads, c.head_dim, 1.0f / std::sqrt(float(c.head_dim))};
  const KvRowsView<T> kv{k.data(), v.data(), head_stride, pos_stride};
  std::vector<float> ref(q.size()), got(q.size(), NAN);
  attention_prefill_ref(s, kv, q.data(), ref.data());
  ASSERT_TRUE(flash_prefill_supported(s));
  ThreadPool pool(threads);
  flash_prefill(s, kv, q.data(), got.data(), pool);
  // AMX (32 queries and up, head_dim a multiple of 32) multiplies split bf16 parts (hi*hi + hi*lo +
  // lo*hi): f16 keys and values exactly, queries and probabilities to 16 bits; its error must stay
  // near fp32 rounding (plain bf16 products missed this by two orders of magnitude).
  // The f32 cache keeps fp32 products at every level.
  const bool amx = sizeof(T) == 2 && isa_level() == IsaLevel::kAmx && c.n_q >= 32 && c.head_dim % 32 == 0 &&
                   flash_prefill_amx_enabled();
  for (size_t i = 0; i < ref.size(); ++i) {
    const double tol = amx ? 1e-4 + 1e-4 * std::fabs(ref[i]) : 2e-5 + 2e-5 * std::fabs(ref[i]);
    ASSERT_NEAR(got[i], ref[i], tol) << "isa=" << isa_name(isa_level()) << " hd=" << c.head_dim
                                     << " heads=" << c.n_heads << "/" << c.n_kv_heads << " pos0=" << c.pos0
                                     << " n_q=" << c.n_q << " i=" << i;
  }
}

TEST(FlashPrefill, MatchesReferenceAtEveryIsaLevel) {
  IsaGuard guard;
  const Case cases[] = {
      {6, 2, 64, 0, 67},  {9, 3, 64, 37, 5},    {12, 2, 128, 0, 40}, {8, 8, 64, 130, 4},
      {4, 1, 80, 10, 33}, {16, 2, 128, 300, 9}, {3, 3, 32, 0, 100},
  };
  int ran = 0;
  const bool saved_amx = flash_prefill_amx_enabled();
  for (IsaLevel lvl : {IsaLevel::kAvx2, IsaLevel::kAvx512, IsaLevel::kAmx}) {
    set_isa_level(lvl);
    if (isa_level() != lvl) continue;
    ++ran;
    // At the AMX level, both with the tile kernel and without it.
    for (bool amx : {false, true}) {
      if (amx && lvl != IsaLevel::kAmx) continue;
      set_flash_prefill_amx(amx);
      for (const Case& c : cases) {
        check_case<uint16_t>(c, 1);
        check_case<float>(c, 3);
      }
    }
  }
  set_flash_prefill_amx(saved_amx);
  if (ran == 0) GTEST_SKIP() << "no AVX2 on this CPU";
}

// A prompt block deep into a long context (SmolLM2- and Qwen2.5-like heads): thousands of keys per
// row, so the online softmax's running maximum, lazy rescaling and fp32 sums run over many key blocks.
TEST(FlashPrefill, LongCausalPrefillMatchesReference) {
  IsaGuard guard;
  const Case cases[] = {{9, 3, 64, 4000, 48}, {12, 2, 128, 2100, 33}};
  int ran = 0;
  const bool saved_amx = flash_prefill_amx_enabled();
  for (IsaLevel lvl : {IsaLevel::kAvx2, IsaLevel::kAvx512, IsaLevel::kAmx}) {
    set_isa_level(lvl);
    if (isa_level() != lvl) continue;
    ++ran;
    set_flash_prefill_amx(lvl == IsaLevel::kAmx);
    for (const Case& c : cases) {
      check_case<uint16_t>(c, 2);
      check_case<float>(c, 2);
    }
  }
  set_flash_prefill_amx(saved_amx);
  if (ran == 0) GTEST_SKIP() << "no AVX2 on this CPU";
}

// Rows from a source (what the TurboQuant cache hands over): two sets of rows, the exact band that
// makes each query read its last `band` positions from the second set, a sliding window, and per-token
// sinks with their shares, against a double-precision reference written out per query.
struct TwoSetSource final : FlashSource {
  int hd = 0;
  std::vector<float> base_k, base_v, exact_k, exact_v;  // [kv head][position][hd]
  int64_t n_pos = 0;
  const float* at(const std::vector<float>& x, int g, int64_t j) const {
    return x.data() + (size_t(g) * size_t(n_pos) + size_t(j)) * size_t(hd);
  }
  void rows(int g, int64_t j0, int n, float* k, float* v) const override {
    for (int i = 0; i < n; ++i) {
      std::copy_n(at(base_k, g, j0 + i), hd, k + size_t(i) * hd);
      std::copy_n(at(base_v, g, j0 + i), hd, v + size_t(i) * hd);
    }
  }
  void exact_rows(int g, int64_t j0, int n, float* k, float* v) const override {
    for (int i = 0; i < n; ++i) {
      const bool held = j0 + i >= band_lo && j0 + i < band_hi;
      for (int c = 0; c < hd; ++c) {
        k[size_t(i) * hd + c] = held ? at(exact_k, g, j0 + i)[c] : 1e30f;  // never read where not held
        v[size_t(i) * hd + c] = held ? at(exact_v, g, j0 + i)[c] : 0.0f;
      }
    }
  }
};

TEST(FlashPrefill, SourceWithBandWindowAndSinksMatchesReference) {
  IsaGuard guard;
  struct SCase {
    int n_heads, n_kv_heads, hd, pos0, n_q, band, band_lo, window;
    bool sinks;
  };
  const SCase cases[] = {
      {9, 3, 64, 0, 67, 8, 0, 0, false},     {6, 2, 64, 150, 40, 64, 120, 0, true},
      {4, 1, 32, 300, 70, 16, 1, 100, true}, {8, 2, 16, 10, 100, 0, 0, 33, false},
      {12, 2, 128, 70, 9, 64, 30, 0, false},
  };
  int ran = 0;
  for (IsaLevel lvl : {IsaLevel::kAvx2, IsaLevel::kAvx512}) {
    set_isa_level(lvl);
    if (isa_level() != lvl) continue;
    ++ran;
    for (const SCase& c : cases) {
      std::mt19937 rng(uint32_t(c.hd * 17 + c.pos0 + c.n_q));
      std::normal_distribution<float> nd;
      TwoSetSource src;
      src.hd = c.hd;
      src.n_pos = c.pos0 + c.n_q;
      src.band = c.band;
      src.band_lo = c.band_lo;
      src.band_hi = src.n_pos;
      for (auto* x : {&src.base_k, &src.base_v, &src.exact_k, &src.exact_v}) {
        x->resize(size_t(c.n_kv_heads) * size_t(src.n_pos) * c.hd);
        for (float& f : *x) f = nd(rng) * (x == &src.base_k ? 1.5f : 1.0f);
      }
      std::vector<float> q(size_t(c.n_q) * c.n_heads * c.hd), sinks(size_t(c.n_q) * c.n_heads);
      for (float& f : q) f = nd(rng);
      for (float& f : sinks) f = nd(rng) * 3.0f;
      FlashShape s{c.n_q, c.pos0, c.n_heads, c.n_kv_heads, c.hd, 1.0f / std::sqrt(float(c.hd))};
      std::vector<float> share(sinks.size(), NAN), got(q.size(), NAN);
      if (c.sinks) {
        s.sinks = sinks.data();
        s.sinks_stride = size_t(c.n_heads);
        s.sink_share = share.data();
      }
      s.window = c.window;
      ASSERT_TRUE(flash_prefill_supported(s));
      ThreadPool pool(2);
      flash_prefill(s, src, q.data(), got.data(), pool);
      const int group = c.n_heads / c.n_kv_heads;
      for (int t = 0; t < c.n_q; ++t)
        for (int h = 0; h < c.n_heads; ++h) {
          const int64_t p = c.pos0 + t, g = h / group;
          const int64_t lo = c.window > 0 ? std::max<int64_t>(0, p - c.window + 1) : 0;
          const float* qh = &q[(size_t(t) * c.n_heads + h) * c.hd];
          auto exact = [&](int64_t j) {
            return c.band > 0 && j >= p + 1 - c.band && j >= src.band_lo && j < src.band_hi;
          };
          std::vector<double> sc;
          double mx = -1e300;
          for (int64_t j = lo; j <= p; ++j) {
            const float* k = src.at(exact(j) ? src.exact_k : src.base_k, int(g), j);
            double d = 0;
            for (int i = 0; i < c.hd; ++i) d += double(qh[i]) * k[i];
            sc.push_back(d * s.scale);
            mx = std::max(mx, sc.back());
          }
          const double sink = c.sinks ? double(sinks[size_t(t) * c.n_heads + h]) : -1e300;
          mx = std::max(mx, sink);
          double l = c.sinks ? std::exp(sink - mx) : 0.0;
          std::vector<double> o(size_t(c.hd), 0.0);
          for (int64_t j = lo; j <= p; ++j) {
            const double w = std::exp(sc[size_t(j - lo)] - mx);
            l += w;
            const float* v = src.at(exact(j) ? src.exact_v : src.base_v, int(g), j);
            for (int i = 0; i < c.hd; ++i) o[size_t(i)] += w * v[i];
          }
          for (int i = 0; i < c.hd; ++i) {
            const double r = o[size_t(i)] / l;
            ASSERT_NEAR(got[(size_t(t) * c.n_heads + h) * c.hd + i], r, 2e-5 + 2e-5 * std::fabs(r))
                << isa_name(lvl) << " hd=" << c.hd << " pos0=" << c.pos0 << " t=" << t << " h=" << h;
          }
          if (c.sinks) {
            EXPECT_NEAR(share[size_t(t) * c.n_heads + h], std::exp(sink - mx) / l, 1e-5) << t << " " << h;
          }
        }
    }
  }
  if (ran == 0) GTEST_SKIP() << "no AVX2 on this CPU";
}

TEST(FlashPrefill, ScalarLevelAndSingleQueriesAreLeftToTheCaches) {
  IsaGuard guard;
  set_isa_level(IsaLevel::kScalar);
  EXPECT_FALSE(flash_prefill_supported(FlashShape{64, 0, 4, 2, 64, 1.0f}));
  set_isa_level(guard.saved);
  EXPECT_FALSE(flash_prefill_supported(FlashShape{1, 100, 4, 2, 64, 1.0f}));
  EXPECT_FALSE(flash_prefill_supported(FlashShape{64, 0, 4, 2, 60, 1.0f}));  // head_dim not a multiple of 8
}

}  // namespace
}  // namespace qleap
