#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/cpu_features.h"
#include "turboquant/tq_attention.h"
#include "turboquant/tq_kernels.h"

namespace qleap {
namespace {

std::vector<float> gaussian(TqRng& rng, size_t n, float scale = 1.0f) {
  std::vector<float> v(n);
  for (auto& x : v) x = scale * float(rng.next_gaussian());
  return v;
}

struct Packed {
  std::vector<uint8_t> k, v;
  size_t stride_k, stride_v;
};

Packed pack(const TqState& ks, const TqState& vs, const std::vector<float>& k, const std::vector<float>& v,
            int64_t n) {
  Packed p;
  // Pad the strides so that records are not contiguous (the cache may interleave other data).
  p.stride_k = ks.layout.bytes + 6;
  p.stride_v = vs.layout.bytes + 3;
  p.k.assign(p.stride_k * n, 0xcd);
  p.v.assign(p.stride_v * n, 0xcd);
  tq_quantize_rows(ks, n, k.data(), ks.layout.dim, p.k.data(), p.stride_k);
  tq_quantize_rows(vs, n, v.data(), vs.layout.dim, p.v.data(), p.stride_v);
  return p;
}

class TurboQuantAttention : public ::testing::TestWithParam<std::tuple<int, float>> {};

TEST_P(TurboQuantAttention, ScoresMatchDequantizedDotProducts) {
  const auto [d, bits] = GetParam();
  const TqState st = tq_make_state({d, bits}, 1, 0);
  TqRng rng(5);
  const int64_t n = 37;
  const int n_q = 5;  // more than one block of 4 query heads
  auto keys = gaussian(rng, size_t(n) * d);
  for (int64_t j = 0; j < n; ++j) keys[size_t(j) * d + 2] *= 15.0f;  // an outlier channel
  const Packed p = pack(st, st, keys, keys, n);
  const auto q = gaussian(rng, size_t(n_q) * d);
  std::vector<float> q_rot(size_t(n_q) * d), kh(d);
  for (int qi = 0; qi < n_q; ++qi) tq_rotate_query(st, &q[size_t(qi) * d], &q_rot[size_t(qi) * d]);
  // Reference: dot products with the dequantized keys, in double.
  std::vector<double> ref(size_t(n_q) * n), mag(size_t(n_q) * n);
  for (int64_t j = 0; j < n; ++j) {
    tq_dequantize(st, &p.k[size_t(j) * p.stride_k], kh.data());
    for (int qi = 0; qi < n_q; ++qi) {
      for (int i = 0; i < d; ++i) {
        ref[size_t(qi) * n + j] += double(q[size_t(qi) * d + i]) * kh[i];
        mag[size_t(qi) * n + j] += std::fabs(double(q[size_t(qi) * d + i]) * kh[i]);
      }
    }
  }
  const IsaLevel saved = isa_level();
  for (IsaLevel lvl : {IsaLevel::kScalar, IsaLevel::kAvx2, IsaLevel::kAvx512}) {
    set_isa_level(lvl);
    if (isa_level() != lvl) continue;  // not on this CPU
    std::vector<float> s(size_t(n_q) * n, -1.0f);
    tq_scores(st, q_rot.data(), n_q, p.k.data(), p.stride_k, n, s.data(), n);
    for (size_t o = 0; o < s.size(); ++o)
      EXPECT_NEAR(s[o], ref[o], 1e-5 * mag[o] + 1e-6) << o << " kernel " << tq_kernel_name(st.layout);
  }
  set_isa_level(saved);
}

// tq_decode_rows (what the tiled prefill reads) gives norm * c[idx] exactly, at every level, for a
// straight run and for one wrapped around a ring.
TEST_P(TurboQuantAttention, DecodedRowsAreNormTimesCentroids) {
  const auto [d, bits] = GetParam();
  const TqState st = tq_make_state({d, bits}, 2, 1);
  TqRng rng(9);
  const int64_t n = 21;
  auto x = gaussian(rng, size_t(n) * d);
  for (int64_t j = 0; j < n; ++j) x[size_t(j) * d + 1] *= 12.0f;
  const Packed p = pack(st, st, x, x, n);
  std::vector<float> ref(size_t(n) * d), unit(d);
  for (int64_t j = 0; j < n; ++j) {
    const uint8_t* rec = &p.k[size_t(j) * p.stride_k];
    tq_dequantize_rotated_unit(st, rec, unit.data());
    for (int i = 0; i < d; ++i) ref[size_t(j) * d + i] = tq_record_norm(st.layout, rec) * unit[size_t(i)];
  }
  const IsaLevel saved = isa_level();
  for (IsaLevel lvl : {IsaLevel::kScalar, IsaLevel::kAvx2, IsaLevel::kAvx512}) {
    set_isa_level(lvl);
    if (isa_level() != lvl) continue;
    const size_t row = size_t(d) + 3;  // rows need not be packed
    std::vector<float> got(size_t(n) * row, NAN);
    tq_decode_rows(st, p.k.data(), p.stride_k, n, got.data(), row);
    for (int64_t j = 0; j < n; ++j)
      for (int i = 0; i < d; ++i)
        ASSERT_EQ(got[size_t(j) * row + i], ref[size_t(j) * d + i])
            << j << " " << i << " " << tq_kernel_name(st.layout);
    // A run of 9 records from slot 16 of a ring of 21: slots 16..20, then 0..3.
    std::fill(got.begin(), got.end(), NAN);
    tq_decode_rows(st, &p.k[16 * p.stride_k], p.stride_k, 9, got.data(), row, TqWrap::of(n, 16, 9));
    for (int64_t c = 0; c < 9; ++c)
      for (int i = 0; i < d; ++i) ASSERT_EQ(got[size_t(c) * row + i], ref[size_t((16 + c) % n) * d + i]) << c;
  }
  set_isa_level(saved);
}

TEST_P(TurboQuantAttention, ValueAccumulationMatchesScalar) {
  const auto [d, bits] = GetParam();
  const TqState st = tq_make_state({d, bits}, 0, 2);
  TqRng rng(8);
  const int64_t n = 29;
  const auto vals = gaussian(rng, size_t(n) * d);
  const Packed p = pack(st, st, vals, vals, n);
  const auto args = tq_detail::kernel_args(st);
  const IsaLevel saved = isa_level();
  for (int n_q : {1, 2, 3, 6}) {  // every register-blocking variant, and more than one block of 4
    auto w = gaussian(rng, size_t(n_q) * n);
    w[3] = 0.0f;
    std::vector<float> a_scalar(size_t(n_q) * d, 0.5f);
    tq_detail::accum_scalar(args, w.data(), n, n_q, p.v.data(), p.stride_v, n, a_scalar.data());
    for (IsaLevel lvl : {IsaLevel::kAvx2, IsaLevel::kAvx512}) {
      set_isa_level(lvl);
      if (isa_level() != lvl) continue;
      std::vector<float> a(size_t(n_q) * d, 0.5f);
      tq_accumulate_values(st, w.data(), n, n_q, p.v.data(), p.stride_v, n, a.data());
      for (size_t i = 0; i < a.size(); ++i)
        EXPECT_NEAR(a[i], a_scalar[i], 1e-4)
            << i << " n_q " << n_q << " kernel " << tq_kernel_name(st.layout);
    }
  }
  set_isa_level(saved);
}

TEST_P(TurboQuantAttention, AttendMatchesDequantizeThenAttend) {
  const auto [d, bits] = GetParam();
  const TqState ks = tq_make_state({d, bits}, 4, 1);
  TqConfig vc{d, bits};
  vc.seed = 99;  // values use their own rotation
  const TqState vs = tq_make_state(vc, 4, 1);
  TqRng rng(21);
  const int64_t n = 70;
  const int n_q = 3;  // a GQA group
  const auto keys = gaussian(rng, size_t(n) * d), vals = gaussian(rng, size_t(n) * d);
  const Packed p = pack(ks, vs, keys, vals, n);
  const auto q = gaussian(rng, size_t(n_q) * d, 2.0f);
  const int64_t n_kv[n_q] = {70, 1, 45};  // decode-style full length, first position only, causal
  const float scale = 1.0f / std::sqrt(float(d));
  const IsaLevel saved = isa_level();
  for (IsaLevel lvl : {IsaLevel::kScalar, IsaLevel::kAvx2, IsaLevel::kAvx512}) {
    set_isa_level(lvl);
    if (isa_level() != lvl) continue;
    std::vector<float> out(size_t(n_q) * d, 7.0f), ref(size_t(n_q) * d);
    tq_attend(ks, vs, q.data(), n_q, d, n_kv, p.k.data(), p.stride_k, p.v.data(), p.stride_v, scale,
              out.data(), d);
    tq_attend_ref(ks, vs, q.data(), n_q, d, n_kv, p.k.data(), p.stride_k, p.v.data(), p.stride_v, scale,
                  ref.data(), d);
    for (size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out[i], ref[i], 2e-5) << i << " isa " << int(lvl);
  }
  set_isa_level(saved);
}

INSTANTIATE_TEST_SUITE_P(DimsBits, TurboQuantAttention,
                         ::testing::Combine(::testing::Values(16, 64, 128, 80),
                                            ::testing::Values(1.0f, 2.0f, 2.5f, 3.0f, 3.5f, 4.0f)));

TEST(TurboQuantAttentionMisc, QjlRecordsWorkInTheMsePath) {
  // The QJL tail only lengthens the record; the attention kernels must skip it.
  TqConfig cfg{64, 3.0f};
  cfg.qjl = true;
  const TqState st = tq_make_state(cfg, 0, 0);
  TqRng rng(4);
  const int64_t n = 19;
  const auto k = gaussian(rng, size_t(n) * 64), v = gaussian(rng, size_t(n) * 64), q = gaussian(rng, 2 * 64);
  const Packed p = pack(st, st, k, v, n);
  const int64_t n_kv[2] = {19, 7};
  std::vector<float> out(2 * 64), ref(2 * 64);
  tq_attend(st, st, q.data(), 2, 64, n_kv, p.k.data(), p.stride_k, p.v.data(), p.stride_v, 0.125f, out.data(),
            64);
  tq_attend_ref(st, st, q.data(), 2, 64, n_kv, p.k.data(), p.stride_k, p.v.data(), p.stride_v, 0.125f,
                ref.data(), 64);
  for (size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out[i], ref[i], 2e-5) << i;
}

TEST(TurboQuantAttentionMisc, CausalPrefillBlocksMatchReference) {
  // 9 queries in blocks of 4 with different context lengths, including an all-empty block.
  const int d = 32;
  const TqState ks = tq_make_state({d, 3.5f}, 1, 1), vs = tq_make_state({d, 2.5f}, 1, 1);
  TqRng rng(12);
  const int64_t n = 8;
  const auto k = gaussian(rng, size_t(n) * d), v = gaussian(rng, size_t(n) * d), q = gaussian(rng, 9 * d);
  const Packed p = pack(ks, vs, k, v, n);
  const int64_t n_kv[9] = {0, 0, 0, 0, 5, 5, 6, 6, 8};
  std::vector<float> out(9 * d, 3.0f), ref(9 * d);
  tq_attend(ks, vs, q.data(), 9, d, n_kv, p.k.data(), p.stride_k, p.v.data(), p.stride_v, 0.3f, out.data(),
            d);
  tq_attend_ref(ks, vs, q.data(), 9, d, n_kv, p.k.data(), p.stride_k, p.v.data(), p.stride_v, 0.3f,
                ref.data(), d);
  for (size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out[i], ref[i], 2e-5) << i;
}

TEST(TurboQuantAttentionMisc, GqaLayoutMatchesPerQueryReference) {
  // KvCache layout: 2 tokens x 6 query heads (3 per KV head); attend for KV head 1 (heads 3..5).
  const int d = 64, n_heads = 6, group = 3, kv_head = 1, pos0 = 4, n_tok = 2;
  const TqState ks = tq_make_state({d, 3.0f}, 2, kv_head),
                vs = tq_make_state({d, 3.0f, TqRotationKind::kDense}, 2, 9);
  TqRng rng(17);
  const int64_t n = pos0 + n_tok;
  const auto k = gaussian(rng, size_t(n) * d), v = gaussian(rng, size_t(n) * d);
  const auto q = gaussian(rng, size_t(n_tok) * n_heads * d);
  const Packed p = pack(ks, vs, k, v, n);
  std::vector<float> out(size_t(n_tok) * n_heads * d, 9.0f);
  const size_t row = size_t(n_heads) * d;
  tq_attend_gqa(ks, vs, pos0, n_tok, group, q.data() + kv_head * group * d, row, p.k.data(), p.stride_k,
                p.v.data(), p.stride_v, 0.125f, out.data() + kv_head * group * d, row);
  for (int t = 0; t < n_tok; ++t) {
    for (int h = 0; h < n_heads; ++h) {
      const float* o = &out[t * row + h * d];
      if (h / group != kv_head) {
        for (int i = 0; i < d; ++i) EXPECT_EQ(o[i], 9.0f);  // other KV head's slots untouched
        continue;
      }
      const int64_t m = pos0 + t + 1;
      std::vector<float> ref(d);
      tq_attend_ref(ks, vs, &q[t * row + h * d], 1, d, &m, p.k.data(), p.stride_k, p.v.data(), p.stride_v,
                    0.125f, ref.data(), d);
      for (int i = 0; i < d; ++i) EXPECT_NEAR(o[i], ref[i], 2e-5) << t << " " << h << " " << i;
    }
  }
}

TEST(TurboQuantAttentionMisc, EmptyContextGivesZeros) {
  const TqState st = tq_make_state({32, 3.0f}, 0, 0);
  std::vector<float> q(32, 1.0f), out(32, 5.0f);
  const int64_t n_kv = 0;
  tq_attend(st, st, q.data(), 1, 32, &n_kv, nullptr, 0, nullptr, 0, 1.0f, out.data(), 32);
  for (float v : out) EXPECT_EQ(v, 0.0f);
}

TEST(TurboQuantAttentionMisc, AttentionErrorShrinksWithBits) {
  // Synthetic data, end to end: attention output error vs exact float attention (relative L2).
  const int d = 128;
  const int64_t n = 256;
  TqRng rng(31);
  auto keys = gaussian(rng, size_t(n) * d), vals = gaussian(rng, size_t(n) * d);
  for (int64_t j = 0; j < n; ++j) keys[size_t(j) * d + 5] += 8.0f;  // outlier channel with an offset
  const auto q = gaussian(rng, d);
  const float scale = 1.0f / std::sqrt(float(d));
  std::vector<double> s(n), exact(d, 0.0);
  double mx = -1e30, sum = 0;
  for (int64_t j = 0; j < n; ++j) {
    double dd = 0;
    for (int i = 0; i < d; ++i) dd += double(q[i]) * keys[size_t(j) * d + i];
    s[j] = dd * scale;
    mx = std::max(mx, s[j]);
  }
  for (auto& v : s) sum += (v = std::exp(v - mx));
  for (int64_t j = 0; j < n; ++j)
    for (int i = 0; i < d; ++i) exact[i] += s[j] / sum * vals[size_t(j) * d + i];
  double prev = 1e30;
  for (float bits : {2.0f, 2.5f, 3.0f, 3.5f, 4.0f}) {
    const TqState st = tq_make_state({d, bits}, 0, 0);
    const Packed p = pack(st, st, keys, vals, n);
    std::vector<float> out(d);
    tq_attend(st, st, q.data(), 1, d, &n, p.k.data(), p.stride_k, p.v.data(), p.stride_v, scale, out.data(),
              d);
    double e = 0, nn = 0;
    for (int i = 0; i < d; ++i) {
      e += (out[i] - exact[i]) * (out[i] - exact[i]);
      nn += exact[i] * exact[i];
    }
    const double rel = std::sqrt(e / nn);
    std::printf("  attention output rel. L2 error, %.1f bits: %.4f\n", bits, rel);
    EXPECT_LT(rel, prev);
    prev = rel;
  }
  // Relative error is about sqrt(D(4)) ~ 0.1 for near-uniform attention over random values.
  EXPECT_LT(prev, 0.2);
}

}  // namespace
}  // namespace qleap
