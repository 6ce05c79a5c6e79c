// KV cache implementations against a straightforward double-precision causal attention.
#include "kv/kv_cache.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>

#include "core/cpu_features.h"
#include "core/error.h"
#include "core/fp16.h"
#include "kv/flash_prefill.h"

namespace qleap {
namespace {

// out[t, h, :] = softmax_j(q[t,h] . k[j, h/g] * scale) v[j, h/g], j in [0, pos0 + t].
std::vector<float> reference_attention(const KvShape& s, const std::vector<float>& k,
                                       const std::vector<float>& v, int pos0, int n_q,
                                       const std::vector<float>& q, float scale) {
  const int hd = s.head_dim, kvd = s.kv_dim(), g = s.n_heads / s.n_kv_heads;
  std::vector<float> out(size_t(n_q) * s.n_heads * hd);
  for (int t = 0; t < n_q; ++t) {
    for (int h = 0; h < s.n_heads; ++h) {
      const float* qh = q.data() + (size_t(t) * s.n_heads + h) * hd;
      const int n_keys = pos0 + t + 1;
      std::vector<double> sc(static_cast<size_t>(n_keys));
      double mx = -1e300;
      for (int j = 0; j < n_keys; ++j) {
        double d = 0;
        for (int i = 0; i < hd; ++i) d += double(qh[i]) * k[size_t(j) * kvd + (h / g) * hd + i];
        sc[size_t(j)] = d * scale;
        mx = std::max(mx, sc[size_t(j)]);
      }
      double sum = 0;
      for (auto& x : sc) sum += (x = std::exp(x - mx));
      for (int i = 0; i < hd; ++i) {
        double acc = 0;
        for (int j = 0; j < n_keys; ++j) acc += sc[size_t(j)] * v[size_t(j) * kvd + (h / g) * hd + i];
        out[(size_t(t) * s.n_heads + h) * hd + i] = float(acc / sum);
      }
    }
  }
  return out;
}

struct Case {
  const char* type;
  int head_dim;
  float tol;
  int n_heads = 6;
  int n_kv_heads = 2;
};

class KvAttention : public ::testing::TestWithParam<Case> {};

TEST_P(KvAttention, MatchesReference) {
  const Case c = GetParam();
  KvShape s{
      .n_layers = 2, .n_ctx = 300, .n_heads = c.n_heads, .n_kv_heads = c.n_kv_heads, .head_dim = c.head_dim};
  auto kv = make_kv_cache(c.type, s);
  EXPECT_STREQ(kv->type_name(), c.type);
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  const int n = 260, kvd = s.kv_dim();
  std::vector<float> k(size_t(n) * kvd), v(size_t(n) * kvd), q(size_t(n) * s.n_heads * s.head_dim);
  for (auto& x : k) x = nd(rng);
  for (auto& x : v) x = nd(rng);
  for (auto& x : q) x = nd(rng);
  const float scale = 1.0f / std::sqrt(float(s.head_dim));
  // Store in uneven pieces into layer 1 (layer 0 gets different data that must not leak in).
  std::vector<float> junk(size_t(n) * kvd, 100.0f);
  kv->store(0, 0, n, junk.data(), junk.data());
  kv->store(1, 0, 100, k.data(), v.data());
  kv->store(1, 100, 1, k.data() + 100 * kvd, v.data() + 100 * kvd);
  kv->store(1, 101, n - 101, k.data() + 101 * kvd, v.data() + 101 * kvd);

  // Pools of 2 and 4 threads with a long single query exercise the split-key path and its merge.
  for (const int threads : {1, 2, 4})
    for (const auto& [pos0, n_q] :
         {std::pair{0, 1}, std::pair{0, 40}, std::pair{150, 1}, std::pair{259, 1}, std::pair{200, 60}}) {
      ThreadPool pool(threads);
      std::vector<float> qq(q.begin() + size_t(pos0) * s.n_heads * s.head_dim,
                            q.begin() + size_t(pos0 + n_q) * s.n_heads * s.head_dim);
      std::vector<float> out(qq.size());
      kv->attend(1, pos0, n_q, qq.data(), out.data(), scale, pool);
      const auto ref = reference_attention(s, k, v, pos0, n_q, qq, scale);
      float max_err = 0;
      for (size_t i = 0; i < out.size(); ++i) max_err = std::max(max_err, std::fabs(out[i] - ref[i]));
      // The f16 cache's prompt blocks use the AMX flash kernel where it applies (bf16 products:
      // kv/flash_prefill.cpp, error bound as in flash_prefill_test.cpp).
      const bool bf16 = std::string(c.type) == "f16" && isa_level() == IsaLevel::kAmx && n_q >= 32 &&
                        c.head_dim % 32 == 0 && flash_prefill_amx_enabled();
      const float tol = bf16 ? std::max(c.tol, 1.5e-2f) : c.tol;
      EXPECT_LT(max_err, tol) << "pos0 " << pos0 << " n_q " << n_q << " threads " << threads;
    }
}

INSTANTIATE_TEST_SUITE_P(
    Types, KvAttention,
    ::testing::Values(Case{"f32", 64, 1e-5f}, Case{"f32", 8, 1e-5f}, Case{"f16", 64, 3e-3f},
                      Case{"f16", 8, 3e-3f}, Case{"q8_0", 64, 3e-2f}, Case{"q8_0", 8, 3e-2f},
                      Case{"q8_0", 40, 3e-2f}, Case{"f32", 16, 1e-5f, 20, 2}, Case{"f16", 32, 3e-3f, 3, 3},
                      Case{"q8_0", 32, 3e-2f, 4, 1}, Case{"q4_0", 64, 0.5f}, Case{"q4_0", 8, 0.5f},
                      Case{"q4_0", 40, 0.5f}, Case{"q8_0r", 64, 3e-2f}, Case{"q8_0r", 8, 3e-2f},
                      Case{"q8_0r", 40, 3e-2f}, Case{"q8_0r", 32, 3e-2f, 4, 1}, Case{"q4_0r", 64, 0.5f},
                      Case{"q4_0r", 8, 0.5f}, Case{"q4_0r", 40, 0.5f}),
    [](const auto& info) {
      const Case& c = info.param;
      return std::string(c.type) + "_hd" + std::to_string(c.head_dim) + "_h" + std::to_string(c.n_heads) +
             "_kv" + std::to_string(c.n_kv_heads);
    });

TEST(KvCache, BytesPerTokenMatchesAllocation) {
  KvShape s{.n_layers = 3, .n_ctx = 17, .n_heads = 4, .n_kv_heads = 2, .head_dim = 64};
  EXPECT_EQ(make_kv_cache("f32", s)->bytes_per_token(), 3u * 2 * 128 * 4);
  EXPECT_EQ(make_kv_cache("f16", s)->bytes_per_token(), 3u * 2 * 128 * 2);
  EXPECT_EQ(make_kv_cache("q8_0", s)->bytes_per_token(), 3u * 2 * 4 * 34);
  EXPECT_EQ(make_kv_cache("q4_0", s)->bytes_per_token(), 3u * 2 * 4 * 18);
  s.head_dim = 8;  // kv_dim 16: one zero-padded block per row
  EXPECT_EQ(make_kv_cache("q8_0", s)->bytes_per_token(), 3u * 2 * 34);
  EXPECT_EQ(make_kv_cache("q4_0", s)->bytes_per_token(), 3u * 2 * 18);
  for (const char* t : {"f32", "f16", "q8_0", "q4_0", "q8_0r", "q4_0r"}) {
    auto kv = make_kv_cache(t, s);
    EXPECT_EQ(kv->allocated_bytes(), kv->bytes_per_token() * 17) << t;
  }
  // The rotation changes the values, not the format.
  s.head_dim = 64;
  EXPECT_EQ(make_kv_cache("q8_0r", s)->bytes_per_token(), make_kv_cache("q8_0", s)->bytes_per_token());
  EXPECT_EQ(make_kv_cache("q4_0r", s)->bytes_per_token(), make_kv_cache("q4_0", s)->bytes_per_token());
}

// Keys with a large outlier channel (as in Qwen-family models): the block scale of plain q4_0 is set
// by the outlier, so the other channels of its block lose their resolution; rotated, the outlier is
// spread over the head and every block keeps a fair scale.
TEST(KvCache, RotationRescuesOutlierChannels) {
  KvShape s{.n_layers = 1, .n_ctx = 200, .n_heads = 4, .n_kv_heads = 2, .head_dim = 64};
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  const int n = 200, kvd = s.kv_dim();
  std::vector<float> k(size_t(n) * kvd), v(k.size()), q(size_t(n) * s.q_dim());
  for (auto& x : k) x = nd(rng);
  for (auto& x : v) x = nd(rng);
  for (auto& x : q) x = nd(rng);
  for (int t = 0; t < n; ++t)
    for (int g = 0; g < 2; ++g) k[size_t(t) * kvd + size_t(g) * 64 + 5] = 40.0f + nd(rng);
  const float scale = 0.125f;
  const int pos0 = 150, n_q = 50;
  std::vector<float> qq(q.begin() + pos0 * s.q_dim(), q.end());
  const auto ref = reference_attention(s, k, v, pos0, n_q, qq, scale);
  auto rel_err = [&](const char* type) {
    auto kv = make_kv_cache(type, s);
    kv->store(0, 0, n, k.data(), v.data());
    ThreadPool pool(1);
    std::vector<float> out(qq.size());
    kv->attend(0, pos0, n_q, qq.data(), out.data(), scale, pool);
    double e = 0, r = 0;
    for (size_t i = 0; i < out.size(); ++i) {
      e += double(out[i] - ref[i]) * (out[i] - ref[i]);
      r += double(ref[i]) * ref[i];
    }
    return std::sqrt(e / r);
  };
  const double plain = rel_err("q4_0"), rotated = rel_err("q4_0r");
  EXPECT_LT(rotated, 0.5 * plain) << "q4_0 " << plain << " q4_0r " << rotated;
  EXPECT_LT(rel_err("q8_0r"), 0.05);
}

TEST(KvCache, RejectsBadTypeShapeAndRange) {
  KvShape s{.n_layers = 1, .n_ctx = 8, .n_heads = 4, .n_kv_heads = 2, .head_dim = 8};
  EXPECT_THROW(make_kv_cache("q3_0", s), InvalidArgument);
  KvShape bad = s;
  bad.n_kv_heads = 3;
  EXPECT_THROW(make_kv_cache("f16", bad), InvalidArgument);
  auto kv = make_kv_cache("f16", s);
  std::vector<float> x(16 * 9);
  EXPECT_THROW(kv->store(0, 4, 5, x.data(), x.data()), InvalidArgument);
  EXPECT_THROW(kv->store(1, 0, 1, x.data(), x.data()), InvalidArgument);
}

}  // namespace
}  // namespace qleap
