#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "core/error.h"
#include "turboquant/codebook.h"

namespace qleap {
namespace {

// Independent check of the closed-form cell integrals: composite Simpson in t (x = sin t), where the
// integrand cos^(d-2) t is smooth.
double simpson_theta(double a, double b, int dim, const std::function<double(double)>& g) {
  const double ta = std::asin(std::clamp(a, -1.0, 1.0)), tb = std::asin(std::clamp(b, -1.0, 1.0));
  const int n = 4000;
  const double h = (tb - ta) / n;
  auto f = [&](double t) { return g(std::sin(t)) * std::pow(std::cos(t), dim - 2); };
  double s = f(ta) + f(tb);
  for (int i = 1; i < n; ++i) s += f(ta + i * h) * (i % 2 ? 4 : 2);
  return s * h / 3;
}

TEST(TurboQuantCodebook, CellMomentsMatchQuadrature) {
  for (int d : {3, 8, 64, 128}) {
    const double z = simpson_theta(-1, 1, d, [](double) { return 1.0; });
    for (auto [a, b] : {std::pair{-1.0, -0.05}, std::pair{-0.1, 0.2}, std::pair{0.03, 1.0}}) {
      double m0, m1, m2;
      tq_cell_moments(a, b, d, &m0, &m1, &m2);
      EXPECT_NEAR(m0, simpson_theta(a, b, d, [](double) { return 1.0; }) / z, 1e-9) << d;
      EXPECT_NEAR(m1, simpson_theta(a, b, d, [](double x) { return x; }) / z, 1e-9) << d;
      EXPECT_NEAR(m2, simpson_theta(a, b, d, [](double x) { return x * x; }) / z, 1e-9) << d;
    }
  }
}

class TurboQuantCodebookBits : public ::testing::TestWithParam<std::tuple<int, int>> {};

TEST_P(TurboQuantCodebookBits, SortedSymmetricAndAtTheLloydFixedPoint) {
  const auto [bits, d] = GetParam();
  const TqCodebook& cb = tq_codebook(bits, d);
  const int k = 1 << bits;
  ASSERT_EQ(int(cb.centroids.size()), k);
  ASSERT_EQ(int(cb.thresholds.size()), k - 1);
  const double sigma = 1.0 / std::sqrt(double(d));
  for (int i = 0; i < k; ++i) {
    EXPECT_NEAR(cb.centroids[i], -cb.centroids[k - 1 - i], 1e-12) << i;
    if (i + 1 < k) {
      EXPECT_LT(cb.centroids[i], cb.centroids[i + 1]);
      EXPECT_DOUBLE_EQ(cb.thresholds[i], 0.5 * (cb.centroids[i] + cb.centroids[i + 1]));
    }
  }
  // Each centroid is the conditional mean of its cell, measured by independent quadrature.
  for (int i = 0; i < k; ++i) {
    const double lo = i == 0 ? -1.0 : cb.thresholds[i - 1];
    const double hi = i == k - 1 ? 1.0 : cb.thresholds[i];
    const double m0 = simpson_theta(lo, hi, d, [](double) { return 1.0; });
    const double m1 = simpson_theta(lo, hi, d, [](double x) { return x; });
    EXPECT_NEAR(cb.centroids[i], m1 / m0, 1e-7 * sigma) << "cell " << i;
  }
  // Float copies agree and are zero padded.
  ASSERT_GE(cb.centroids_f.size(), 16u);
  for (int i = 0; i < k; ++i) EXPECT_FLOAT_EQ(cb.centroids_f[i], float(cb.centroids[i]));
  for (size_t i = k; i < cb.centroids_f.size(); ++i) EXPECT_EQ(cb.centroids_f[i], 0.0f);
}

INSTANTIATE_TEST_SUITE_P(BitsDims, TurboQuantCodebookBits,
                         ::testing::Combine(::testing::Values(1, 2, 3, 4),
                                            ::testing::Values(3, 8, 16, 64, 128)));

TEST(TurboQuantCodebook, DistortionMatchesThePaperForLargeD) {
  // TurboQuant (Zandieh et al. 2025), Theorem 1: D_mse ~ 0.36, 0.117, 0.03, 0.009 for b = 1..4
  // (the Gaussian Lloyd-Max limits 1 - 2/pi = 0.3634, 0.1175, 0.03454, 0.009497).
  const double limit[4] = {1.0 - 2.0 / 3.14159265358979323846, 0.1175, 0.03454, 0.009497};
  for (int b = 1; b <= 4; ++b) {
    EXPECT_NEAR(tq_codebook(b, 4096).vector_mse(), limit[b - 1], 0.002 * limit[b - 1] + 2e-5) << b;
    // At d = 128 the density is a bit lighter-tailed than the Gaussian: slightly lower distortion.
    const double d128 = tq_codebook(b, 128).vector_mse();
    EXPECT_LT(d128, limit[b - 1]);
    EXPECT_GT(d128, 0.97 * limit[b - 1]);
  }
  // The paper's upper bound sqrt(3) pi / 2 * 4^-b holds for every b and d.
  for (int d : {8, 64, 128})
    for (int b = 1; b <= 4; ++b)
      EXPECT_LT(tq_codebook(b, d).vector_mse(),
                std::sqrt(3.0) * 3.14159265358979323846 / 2 * std::pow(4.0, -b));
}

TEST(TurboQuantCodebook, UniformDensityAtD3GivesTheUniformQuantizer) {
  // d = 3: each coordinate of a random unit vector is uniform on [-1, 1] (Archimedes), so Lloyd-Max
  // is the uniform quantizer with MSE step^2 / 12 per coordinate.
  for (int b = 1; b <= 4; ++b) {
    const TqCodebook& cb = tq_codebook(b, 3);
    const int k = 1 << b;
    for (int i = 0; i < k; ++i) EXPECT_NEAR(cb.centroids[i], -1.0 + (2.0 * i + 1.0) / k, 1e-9);
    EXPECT_NEAR(cb.coord_mse, (2.0 / k) * (2.0 / k) / 12.0, 1e-12);
  }
}

TEST(TurboQuantCodebook, DensityIntegratesToOne) {
  for (int d : {4, 16, 128}) {
    double m0, m1, m2;
    tq_cell_moments(-1, 1, d, &m0, &m1, &m2);
    EXPECT_NEAR(m0, 1.0, 1e-12);
    EXPECT_NEAR(m1, 0.0, 1e-12);
    EXPECT_NEAR(m2, 1.0 / d, 1e-12);  // E[x_i^2] = 1/d for a unit vector
  }
}

TEST(TurboQuantCodebook, RejectsBadArguments) {
  EXPECT_THROW(compute_lloyd_max(0, 128), InvalidArgument);
  EXPECT_THROW(compute_lloyd_max(9, 128), InvalidArgument);
  EXPECT_THROW(compute_lloyd_max(2, 1), InvalidArgument);
}

}  // namespace
}  // namespace qleap
