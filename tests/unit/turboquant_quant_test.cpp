#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "core/error.h"
#include "turboquant/tq_quant.h"

namespace qleap {
namespace {

std::vector<float> gaussian(TqRng& rng, int d) {
  std::vector<float> v(d);
  for (auto& x : v) x = float(rng.next_gaussian());
  return v;
}

// Gaussian with a few channels scaled up (the outlier channels typical of attention keys).
std::vector<float> with_outliers(TqRng& rng, int d) {
  auto v = gaussian(rng, d);
  for (int c : {3, 17, 40}) v[c % d] *= 20.0f;
  return v;
}

double sq(double x) {
  return x * x;
}

TEST(TurboQuantQuant, LayoutSizes) {
  EXPECT_EQ(tq_bytes_per_vector({128, 4.0f}), 64u + 2);
  EXPECT_EQ(tq_bytes_per_vector({128, 3.0f}), 48u + 2);
  EXPECT_EQ(tq_bytes_per_vector({128, 2.0f}), 32u + 2);
  EXPECT_EQ(tq_bytes_per_vector({128, 1.0f}), 16u + 2);
  EXPECT_EQ(tq_bytes_per_vector({128, 2.5f}), 24u + 16 + 2);  // 64 x 3 bits + 64 x 2 bits
  EXPECT_EQ(tq_bytes_per_vector({128, 3.5f}), 32u + 24 + 2);
  TqConfig c{64, 3.0f};
  c.qjl = true;
  const TqLayout l = tq_layout(c);
  EXPECT_EQ(l.norm_offset, 24u);
  EXPECT_EQ(l.qjl_offset, 26u);
  EXPECT_EQ(l.gamma_offset, 34u);
  EXPECT_EQ(l.bytes, 36u);
  const TqLayout h = tq_layout({128, 2.5f});
  EXPECT_EQ(h.split, 64);
  EXPECT_EQ(h.bits_hi, 3);
  EXPECT_EQ(h.bits_lo, 2);
  EXPECT_THROW(tq_layout({128, 2.2f}), InvalidArgument);
  EXPECT_THROW(tq_layout({128, 5.0f}), InvalidArgument);
  EXPECT_THROW(tq_layout({1, 3.0f}), InvalidArgument);
  EXPECT_THROW(tq_layout({96, 3.0f, TqRotationKind::kHadamard}), InvalidArgument);
}

TEST(TurboQuantQuant, ModelStatesHaveIndependentRotationsAndSharedCodebooks) {
  const auto states = tq_make_states({64, 2.5f}, 3, 2);
  ASSERT_EQ(states.size(), 6u);
  for (size_t i = 0; i < states.size(); ++i) {
    EXPECT_EQ(states[i].cb_hi, states[0].cb_hi);
    EXPECT_EQ(states[i].cb_lo, states[0].cb_lo);
    for (size_t j = 0; j < i; ++j)
      EXPECT_NE(states[i].rotation.signs, states[j].rotation.signs) << i << " " << j;
  }
  // Same (layer, head) -> same state, so a cache rebuilt later decodes old records.
  EXPECT_EQ(tq_make_state({64, 2.5f}, 2, 1).rotation.signs, states[2 * 2 + 1].rotation.signs);
}

TEST(TurboQuantQuant, PackUnpackRoundTrip) {
  TqRng rng(3);
  for (int bits = 1; bits <= 8; ++bits) {
    for (int n : {1, 7, 8, 13, 128}) {
      std::vector<uint8_t> idx(n), back(n), packed((n * bits + 7) / 8);
      for (auto& v : idx) v = uint8_t(rng.next_u64() & ((1u << bits) - 1));
      tq_pack_indices(idx.data(), n, bits, packed.data());
      tq_unpack_indices(packed.data(), n, bits, back.data());
      EXPECT_EQ(idx, back) << bits << " " << n;
    }
  }
  // LSB-first: index i at bits [i*b, i*b+b).
  const uint8_t idx[3] = {5, 2, 7};
  uint8_t p[2];
  tq_pack_indices(idx, 3, 3, p);
  EXPECT_EQ(p[0], uint8_t(5 | (2 << 3) | ((7 & 3) << 6)));
  EXPECT_EQ(p[1], uint8_t(7 >> 2));
}

TEST(TurboQuantQuant, ZeroVectorDequantizesToZero) {
  const TqState st = tq_make_state({64, 3.0f}, 0, 0);
  std::vector<float> x(64, 0.0f), y(64, 1.0f);
  std::vector<uint8_t> rec(st.layout.bytes, 0xff);
  tq_quantize(st, x.data(), rec.data());
  tq_dequantize(st, rec.data(), y.data());
  for (float v : y) EXPECT_EQ(v, 0.0f);
}

TEST(TurboQuantQuant, NonFiniteAndHugeInputs) {
  const TqState st = tq_make_state({32, 2.0f}, 0, 0);
  std::vector<uint8_t> rec(st.layout.bytes);
  std::vector<float> x(32, 1.0f), y(32);
  x[5] = std::nanf("");
  tq_quantize(st, x.data(), rec.data());  // no crash; stored as a zero vector
  tq_dequantize(st, rec.data(), y.data());
  for (float v : y) EXPECT_EQ(v, 0.0f);
  std::fill(x.begin(), x.end(), 1e5f);  // norm 5.7e5 > fp16 max: saturates instead of inf
  tq_quantize(st, x.data(), rec.data());
  EXPECT_EQ(tq_record_norm(st.layout, rec.data()), 65504.0f);
  tq_dequantize(st, rec.data(), y.data());
  for (float v : y) EXPECT_TRUE(std::isfinite(v));
}

TEST(TurboQuantQuant, QuantizeIsNearestCentroid) {
  // Every stored index must be the nearest centroid of the rotated coordinate.
  const TqState st = tq_make_state({128, 3.5f}, 2, 1);
  TqRng rng(9);
  const auto x = gaussian(rng, 128);
  std::vector<uint8_t> rec(st.layout.bytes);
  tq_quantize(st, x.data(), rec.data());
  double n = 0;
  for (float v : x) n += double(v) * v;
  std::vector<float> y(128), c(128);
  for (int i = 0; i < 128; ++i) y[i] = float(x[i] / std::sqrt(n));
  rotate_forward(st.rotation, y.data(), y.data());
  tq_dequantize_rotated_unit(st, rec.data(), c.data());
  for (int i = 0; i < 128; ++i) {
    const TqCodebook& cb = i < st.layout.split ? *st.cb_hi : *st.cb_lo;
    double best = 1e9;
    for (double cc : cb.centroids) best = std::min(best, std::fabs(cc - y[i]));
    EXPECT_NEAR(std::fabs(c[i] - y[i]), best, 1e-6) << i;
  }
  EXPECT_NEAR(tq_record_norm(st.layout, rec.data()), std::sqrt(n), 1e-3 * std::sqrt(n));
}

struct Distortion {
  double mse;     // E||x - x_hat||^2 / ||x||^2
  double ip_rel;  // RMS of (<q, x_hat> - <q, x>) / (||q|| ||x||)
};

Distortion measure(const TqConfig& cfg, bool outliers, int trials) {
  TqRng rng(1234);
  const int d = cfg.dim;
  Distortion r{0, 0};
  std::vector<uint8_t> rec(tq_bytes_per_vector(cfg));
  std::vector<float> xh(d);
  TqState st;
  for (int t = 0; t < trials; ++t) {
    // A fresh head (rotation) every 50 vectors: averages over rotations too.
    if (t % 50 == 0) st = tq_make_state(cfg, t / 50, 0);
    const auto x = outliers ? with_outliers(rng, d) : gaussian(rng, d);
    const auto q = gaussian(rng, d);
    tq_quantize(st, x.data(), rec.data());
    tq_dequantize(st, rec.data(), xh.data());
    double e = 0, nx = 0, nq = 0, ip = 0, iph = 0;
    for (int i = 0; i < d; ++i) {
      e += sq(double(x[i]) - xh[i]);
      nx += sq(x[i]);
      nq += sq(q[i]);
      ip += double(q[i]) * x[i];
      iph += double(q[i]) * xh[i];
    }
    r.mse += e / nx;
    r.ip_rel += sq((iph - ip) / std::sqrt(nx * nq));
  }
  r.mse /= trials;
  r.ip_rel = std::sqrt(r.ip_rel / trials);
  return r;
}

TEST(TurboQuantQuant, MeasuredDistortionMatchesTheCodebook) {
  // Synthetic data. With a Haar (dense) rotation the rotated unit vector is uniform on the sphere
  // for ANY input, so the measured MSE must match the codebook's analytic D(b) for Gaussian and
  // outlier-heavy vectors alike. The Hadamard rotation is only pseudo-random: Gaussian inputs still
  // match, but a vector dominated by a few channels rotates into a few discrete levels +-a+-b+-c,
  // so its error differs from D(b) (measured lower here); we only bound it.
  for (int d : {64, 128}) {
    for (float bits : {1.0f, 2.0f, 2.5f, 3.0f, 3.5f, 4.0f}) {
      const TqConfig cfg{d, bits};
      const TqConfig dense{d, bits, TqRotationKind::kDense};
      const TqLayout l = tq_layout(cfg);
      const double expect = (l.split * tq_codebook(l.bits_hi, d).coord_mse +
                             (d - l.split) * tq_codebook(l.bits_lo, d).coord_mse);
      const Distortion g = measure(cfg, false, 2000), o = measure(cfg, true, 2000);
      const Distortion od = measure(dense, true, 1000);
      std::printf(
          "  d=%3d bits=%.1f bytes=%3zu  analytic D=%.5f | hadamard: gaussian mse=%.5f ip_rms=%.5f  "
          "outlier mse=%.5f ip_rms=%.5f | dense: outlier mse=%.5f ip_rms=%.5f\n",
          d, bits, l.bytes, expect, g.mse, g.ip_rel, o.mse, o.ip_rel, od.mse, od.ip_rel);
      // fp16 norm and float rounding add ~1e-6; sampling noise of 1000-2000 vectors is a few percent.
      EXPECT_NEAR(g.mse, expect, 0.06 * expect + 1e-5);
      EXPECT_NEAR(od.mse, expect, 0.08 * expect + 1e-5);
      EXPECT_LT(o.mse, 1.1 * expect);
      // For a random q independent of x the inner-product error is about sqrt(D / d).
      EXPECT_NEAR(g.ip_rel, std::sqrt(expect / d), 0.1 * std::sqrt(expect / d));
      EXPECT_NEAR(od.ip_rel, std::sqrt(expect / d), 0.1 * std::sqrt(expect / d));
    }
  }
}

// <y, c>^2 / <c, c> for cells idx: what the scale search maximizes (||y||^2 minus it is the error at the
// least-squares scale).
double ls_gain(const TqState& st, const float* y, const uint8_t* idx) {
  double yc = 0, cc = 0;
  for (int i = 0; i < st.layout.dim; ++i) {
    const double c = i < st.layout.split ? st.cb_hi->centroids_f[idx[i]] : st.cb_lo->centroids_f[idx[i]];
    yc += y[i] * c;
    cc += c * c;
  }
  return yc > 0 ? yc * yc / cc : 0.0;
}

TEST(TurboQuantQuant, ScaleSearchFindsTheBestAssignmentScale) {
  // The sweep over assignment scales must find what a brute-force grid over the same range finds (or
  // better: the grid can miss narrow intervals), and never lose to the plain unit-scale assignment.
  TqRng rng(7);
  for (int d : {16, 64, 128}) {
    for (float bits : {2.0f, 2.5f, 3.0f, 4.0f}) {
      TqConfig cfg{d, bits};
      cfg.ls_norm = true;
      cfg.scale_search = true;
      const TqState st = tq_make_state(cfg, 0, 0);
      TqConfig plain_cfg = cfg;
      plain_cfg.scale_search = false;
      const TqState plain = tq_make_state(plain_cfg, 0, 0);
      const TqLayout& l = st.layout;
      std::vector<uint8_t> idx(static_cast<size_t>(d)), g(static_cast<size_t>(d));
      for (int trial = 0; trial < 40; ++trial) {
        std::vector<float> y = trial % 2 ? with_outliers(rng, d) : gaussian(rng, d);
        double n2 = 0;
        for (float v : y) n2 += double(v) * v;
        for (float& v : y) v = float(v / std::sqrt(n2));
        const double f = tq_assign_cells(st, y.data(), idx.data());
        const double found = ls_gain(st, y.data(), idx.data());
        ASSERT_GT(f, 0.0);
        tq_assign_cells(plain, y.data(), g.data());
        EXPECT_GE(found, ls_gain(st, y.data(), g.data()) - 1e-7);
        double grid = 0;
        for (int s = 0; s <= 2000; ++s) {
          const double a = std::pow(kTqScaleRange, 1.0 - 2.0 * s / 2000.0);
          for (int i = 0; i < d; ++i) {
            const TqCodebook& cb = i < l.split ? *st.cb_hi : *st.cb_lo;
            const int b = i < l.split ? l.bits_hi : l.bits_lo;
            int k = 0;
            while (k < (1 << b) - 1 && float(y[size_t(i)] / a) >= cb.thresholds_f[size_t(k)]) ++k;
            g[size_t(i)] = uint8_t(k);
          }
          grid = std::max(grid, ls_gain(st, y.data(), g.data()));
        }
        EXPECT_GE(found, grid - 1e-6) << "d=" << d << " bits=" << bits;
      }
    }
  }
}

TEST(TurboQuantQuant, ScaleSearchLowersTheDistortion) {
  // Same records, smarter encoder: the measured MSE of Gaussian vectors drops below the codebook's
  // D(b) (simulated for d = 64: about -10 % at 3 bits, -22 % at 4 bits, -2 % at 2 bits).
  for (int d : {64, 128}) {
    for (float bits : {2.0f, 3.0f, 3.5f, 4.0f}) {
      TqConfig ls{d, bits};
      ls.ls_norm = true;
      TqConfig ss = ls;
      ss.scale_search = true;
      const Distortion a = measure(ls, false, 1500), b = measure(ss, false, 1500);
      std::printf("  d=%3d bits=%.1f  ls-norm mse=%.5f  scale search mse=%.5f (%.3fx)\n", d, bits, a.mse,
                  b.mse, b.mse / a.mse);
      EXPECT_LT(b.mse, a.mse);
      // Measured (seeded, so deterministic): 0.905x at d = 64 and 0.944x at d = 128 for 3 bits, 0.79x /
      // 0.85x for 4 bits (the norm of a longer vector pins its scale down better).
      if (bits >= 3.0f) {
        EXPECT_LT(b.mse, (d == 64 ? 0.95 : 0.97) * a.mse);
      }
    }
  }
}

TEST(TurboQuantQuant, DenseRotationWorksForNonPowerOfTwo) {
  const TqConfig cfg{80, 3.0f};  // kAuto -> dense
  const Distortion g = measure(cfg, true, 500);
  const double expect = tq_codebook(3, 80).vector_mse();
  EXPECT_NEAR(g.mse, expect, 0.1 * expect);
}

TEST(TurboQuantQuant, QjlInnerProductIsUnbiased) {
  // TurboQuant_prod: the MSE reconstruction shrinks inner products with a correlated query
  // (E<x, x_hat_mse> = 1 - D for unit x), the QJL-corrected estimate does not. Random S per trial.
  const int d = 128, trials = 1500;
  for (float bits : {1.0f, 2.0f, 3.0f}) {
    TqConfig cfg{d, bits};
    cfg.qjl = true;
    TqRng rng(77);
    std::vector<uint8_t> rec(tq_bytes_per_vector(cfg));
    std::vector<float> xh(d);
    double s_mse = 0, s_qjl = 0, ss_qjl = 0, ss_mse = 0;
    for (int t = 0; t < trials; ++t) {
      const TqState st = tq_make_state(cfg, t, 0);
      auto x = gaussian(rng, d);
      double n = 0;
      for (float v : x) n += double(v) * v;
      for (auto& v : x) v = float(v / std::sqrt(n));  // unit: norm exactly 1 in fp16
      // q = x + noise: strongly correlated with x, where the MSE bias shows.
      std::vector<float> q(d);
      for (int i = 0; i < d; ++i) q[i] = x[i] + float(rng.next_gaussian() / std::sqrt(double(d)));
      double ip = 0;
      for (int i = 0; i < d; ++i) ip += double(q[i]) * x[i];
      tq_quantize(st, x.data(), rec.data());
      tq_dequantize(st, rec.data(), xh.data());
      double ip_mse = 0;
      for (int i = 0; i < d; ++i) ip_mse += double(q[i]) * xh[i];
      const double e_mse = ip_mse - ip, e_qjl = tq_qjl_inner_product(st, q.data(), rec.data()) - ip;
      s_mse += e_mse;
      ss_mse += e_mse * e_mse;
      s_qjl += e_qjl;
      ss_qjl += e_qjl * e_qjl;
    }
    const double m_mse = s_mse / trials, m_qjl = s_qjl / trials;
    const double var_qjl = ss_qjl / trials - m_qjl * m_qjl, var_mse = ss_mse / trials - m_mse * m_mse;
    const double se = std::sqrt(var_qjl / trials);
    const double dmse = tq_codebook(int(bits), d).vector_mse();
    std::printf(
        "  bits=%.0f+qjl: mse-only bias=%+.5f (expected about -D=%.5f, var %.2e)  qjl bias=%+.6f "
        "(se %.6f) var=%.2e\n",
        bits, m_mse, -dmse, var_mse, m_qjl, se, var_qjl);
    EXPECT_LT(std::fabs(m_qjl), 4 * se);
    EXPECT_LT(m_mse, -0.5 * dmse);  // the biased estimator is measurably biased
  }
}

}  // namespace
}  // namespace qleap
