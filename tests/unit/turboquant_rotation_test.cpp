#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/cpu_features.h"
#include "core/error.h"
#include "turboquant/rotation.h"

namespace qleap {
namespace {

std::vector<float> gaussian(TqRng& rng, int d) {
  std::vector<float> v(d);
  for (auto& x : v) x = float(rng.next_gaussian());
  return v;
}

double dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += double(a[i]) * b[i];
  return s;
}

struct RotCase {
  int dim;
  TqRotationKind kind;
};

class TurboQuantRotation : public ::testing::TestWithParam<RotCase> {};

TEST_P(TurboQuantRotation, PreservesNormsAndInnerProductsAndInverts) {
  const auto [d, kind] = GetParam();
  const TqRotation r = make_rotation(d, kind, tq_head_seed(kTqDefaultSeed, 3, 1));
  EXPECT_NE(r.kind, TqRotationKind::kAuto);
  TqRng rng(42);
  for (int t = 0; t < 20; ++t) {
    const auto x = gaussian(rng, d), z = gaussian(rng, d);
    std::vector<float> rx(d), rz(d), back(d);
    rotate_forward(r, x.data(), rx.data());
    rotate_forward(r, z.data(), rz.data());
    const double nx = std::sqrt(dot(x, x));
    EXPECT_NEAR(std::sqrt(dot(rx, rx)), nx, 1e-5 * nx);
    EXPECT_NEAR(dot(rx, rz), dot(x, z), 1e-5 * nx * std::sqrt(dot(z, z)));
    rotate_inverse(r, rx.data(), back.data());
    for (int i = 0; i < d; ++i) EXPECT_NEAR(back[i], x[i], 1e-5) << i;
    // In place.
    std::vector<float> y = x;
    rotate_forward(r, y.data(), y.data());
    for (int i = 0; i < d; ++i) EXPECT_FLOAT_EQ(y[i], rx[i]);
  }
}

TEST_P(TurboQuantRotation, RowsAreOrthonormal) {
  const auto [d, kind] = GetParam();
  const TqRotation r = make_rotation(d, kind, 7);
  // Columns of R: images of the basis vectors.
  std::vector<std::vector<float>> cols(d, std::vector<float>(d));
  for (int j = 0; j < d; ++j) {
    std::vector<float> e(d, 0.0f);
    e[j] = 1.0f;
    rotate_forward(r, e.data(), cols[j].data());
  }
  for (int a = 0; a < d; ++a)
    for (int b = a; b < d; ++b) EXPECT_NEAR(dot(cols[a], cols[b]), a == b ? 1.0 : 0.0, 1e-6) << a << "," << b;
}

INSTANTIATE_TEST_SUITE_P(
    Kinds, TurboQuantRotation,
    ::testing::Values(RotCase{8, TqRotationKind::kHadamard}, RotCase{64, TqRotationKind::kHadamard},
                      RotCase{128, TqRotationKind::kAuto}, RotCase{16, TqRotationKind::kDense},
                      RotCase{80, TqRotationKind::kAuto}, RotCase{96, TqRotationKind::kDense}));

TEST(TurboQuantRotationMisc, SeedsAreDeterministicAndDistinct) {
  EXPECT_EQ(tq_head_seed(1, 2, 3), tq_head_seed(1, 2, 3));
  EXPECT_NE(tq_head_seed(1, 2, 3), tq_head_seed(1, 3, 2));
  EXPECT_NE(tq_head_seed(1, 0, 0), tq_head_seed(2, 0, 0));
  const auto a = make_rotation(32, TqRotationKind::kDense, 5),
             b = make_rotation(32, TqRotationKind::kDense, 5);
  EXPECT_EQ(a.matrix, b.matrix);
  const auto c = make_rotation(32, TqRotationKind::kDense, 6);
  EXPECT_NE(a.matrix, c.matrix);
  EXPECT_EQ(make_rotation(80, TqRotationKind::kAuto, 1).kind, TqRotationKind::kDense);
  EXPECT_EQ(make_rotation(64, TqRotationKind::kAuto, 1).kind, TqRotationKind::kHadamard);
}

// The AVX2 transform makes the same butterflies: bit-identical to the scalar one at every size, so a
// cache's records do not depend on the CPU.
TEST(TurboQuantRotationMisc, VectorTransformIsBitIdenticalToScalar) {
  const IsaLevel saved = isa_level();
  set_isa_level(IsaLevel::kAvx2);
  const bool avx2 = isa_level() >= IsaLevel::kAvx2;
  set_isa_level(saved);
  if (!avx2) GTEST_SKIP() << "no AVX2 on this CPU";
  TqRng rng(3);
  for (int n = 1; n <= 2048; n *= 2) {
    std::vector<float> x(static_cast<size_t>(n));
    for (auto& v : x) v = float(rng.next_gaussian()) * (rng.next_u64() % 7 == 0 ? 100.0f : 1.0f);
    std::vector<float> a = x, b = x;
    set_isa_level(IsaLevel::kScalar);
    fwht(a.data(), n);
    set_isa_level(IsaLevel::kAvx2);
    fwht(b.data(), n);
    set_isa_level(saved);
    for (int i = 0; i < n; ++i) ASSERT_EQ(a[size_t(i)], b[size_t(i)]) << n << " " << i;
  }
}

TEST(TurboQuantRotationMisc, RejectsBadArguments) {
  EXPECT_THROW(make_rotation(0, TqRotationKind::kDense, 1), InvalidArgument);
  EXPECT_THROW(make_rotation(96, TqRotationKind::kHadamard, 1), InvalidArgument);
}

TEST(TurboQuantRotationMisc, HadamardSpreadsAnOutlierChannel) {
  // A one-hot vector (the extreme outlier) becomes flat: every coordinate is +-1/sqrt(d).
  const int d = 128;
  const auto r = make_rotation(d, TqRotationKind::kHadamard, 11);
  std::vector<float> e(d, 0.0f), y(d);
  e[17] = 1.0f;
  rotate_forward(r, e.data(), y.data());
  for (float v : y) EXPECT_NEAR(std::fabs(v), 1.0 / std::sqrt(double(d)), 1e-6);
}

}  // namespace
}  // namespace qleap
