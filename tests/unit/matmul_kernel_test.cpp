// Every SIMD matmul kernel against the scalar reference, at every ISA level this CPU supports
// (an AVX-512 machine runs the AVX-512 kernels automatically), on odd shapes and thread counts.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/matmul.h"
#include "backend/cpu/matmul_kernels.h"
#include "backend/cpu/packed_weights.h"
#include "core/cpu_features.h"
#include "core/error.h"
#include "core/fp16.h"
#include "core/thread_pool.h"
#include "isa_test_util.h"
#include "quant/block_mxfp4.h"
#include "quant/block_nvfp4.h"
#include "quant/block_q6_k.h"
#include "quant/quant.h"
#include "random_weights.h"

namespace qleap {
namespace {
using testing_util::dequantized_rows;
using testing_util::IsaGuard;
using testing_util::random_weights;
using testing_util::supported_levels;

// Error bound: the kernels quantize activations to int8 per block (32 or 256 values), so each
// x_c carries an error of at most d/2 (d = block absmax / 127), roughly uniform. Bound the dot
// product error by 6 standard deviations of that sum, plus float rounding.
double tolerance(const std::vector<float>& wrow, const float* x, int64_t cols, int act_block) {
  double var = 0, mag = 0;
  for (int64_t b = 0; b < cols; b += act_block) {
    float amax = 0;
    for (int64_t c = b; c < b + act_block && c < cols; ++c) amax = std::max(amax, std::fabs(x[c]));
    const double d = act_block > 1 ? amax / 127.0 : 0.0;
    for (int64_t c = b; c < b + act_block && c < cols; ++c) {
      var += double(wrow[size_t(c)]) * wrow[size_t(c)] * d * d / 12.0;
      mag += std::fabs(double(wrow[size_t(c)]) * x[c]);
    }
  }
  return 6.0 * std::sqrt(var) + 2e-5 * mag + 1e-6;
}

// The AMX tile path rounds weights and activations to bf16 (8 significant bits, round to nearest:
// relative error uniform in +-2^-8 each) and accumulates in fp32.
double tolerance_bf16(const std::vector<float>& wrow, const float* x, int64_t cols) {
  double var = 0, mag = 0;
  const double e = std::ldexp(1.0, -8);
  for (int64_t c = 0; c < cols; ++c) {
    const double p = double(wrow[size_t(c)]) * x[c];
    var += p * p * 2.0 * e * e / 3.0;
    mag += std::fabs(p);
  }
  return 6.0 * std::sqrt(var) + 2e-5 * mag + 1e-6;
}

int act_block_of(GgmlType t) {
  switch (t) {
    case GgmlType::F32:
    case GgmlType::F16:
    case GgmlType::BF16:
      return 1;
    default:
      // The 256-weight formats run against Q8_K activations, the others (including NVFP4's 64) Q8A.
      return type_traits(t).block_size == 256 ? 256 : 32;
  }
}

class MatmulKernel : public ::testing::TestWithParam<const char*> {};

TEST_P(MatmulKernel, MatchesReferenceAtEveryIsaLevel) {
  const GgmlType t = *type_from_name(GetParam());
  const int64_t bs = type_traits(t).block_size;
  IsaGuard guard;
  std::mt19937 rng(1234);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  struct Shape {
    int64_t rows, cols;
  };
  const int64_t unit = std::max<int64_t>(bs, 32);
  // The last shape spans several AMX row panels and k chunks (512 columns each).
  const Shape shapes[] = {{37, unit * 3},
                          {8, unit},
                          {13, unit * 2 + (bs == 1 ? 5 : 0)},
                          {150, unit >= 256 ? unit * 3 : 640 + (bs == 1 ? 5 : 0)}};
  ThreadPool pool1(1), pool3(3);
  for (IsaLevel lvl : supported_levels()) {
    set_isa_level(lvl);
    for (const Shape& s : shapes) {
      const auto w = random_weights(t, s.rows, s.cols, rng);
      const WeightView wv{t, w.data(), s.cols, s.rows, row_size(t, s.cols)};
      const auto wrows = dequantized_rows(t, w.data(), s.rows, s.cols);
      // 33 and 67: the AMX tile path (32 rows and up) with partial token tiles; 67 is also more
      // activation rows than one prefill chunk (64).
      std::vector<int64_t> ms = {1, 2, 3, 4, 5, 9, 33};
      if (s.rows <= 8 || lvl == IsaLevel::kAmx) ms.push_back(67);
      for (int64_t m : ms) {
        std::vector<float> x(size_t(m * s.cols));
        for (auto& v : x) v = nd(rng) * (1.0f + float(&v - x.data()) * 0.001f);
        std::vector<float> ref(size_t(m * s.rows)), got(size_t(m * s.rows), NAN);
        matmul_ref(wv, x.data(), m, ref.data());
        for (ThreadPool* pool : {&pool1, &pool3}) {
          std::fill(got.begin(), got.end(), NAN);
          matmul(wv, x.data(), m, got.data(), *pool);
          for (int64_t tt = 0; tt < m; ++tt) {
            for (int64_t r = 0; r < s.rows; ++r) {
              const float* xt = x.data() + tt * s.cols;
              double tol =
                  tolerance(wrows[size_t(r)], xt, s.cols, lvl == IsaLevel::kScalar ? 1 : act_block_of(t));
              if (lvl == IsaLevel::kAmx) tol = std::max(tol, tolerance_bf16(wrows[size_t(r)], xt, s.cols));
              const size_t i = size_t(tt * s.rows + r);
              ASSERT_NEAR(got[i], ref[i], tol)
                  << GetParam() << " isa=" << isa_name(lvl) << " rows=" << s.rows << " cols=" << s.cols
                  << " m=" << m << " t=" << tt << " r=" << r << " threads=" << pool->size();
            }
          }
        }
      }
      // get_row (SIMD decoders where present) must be bit-exact with the scalar decoder.
      std::vector<float> row(size_t(s.cols));
      for (int64_t r = 0; r < s.rows; ++r) {
        get_row(wv, r, row.data());
        for (int64_t c = 0; c < s.cols; ++c)
          ASSERT_EQ(row[size_t(c)], wrows[size_t(r)][size_t(c)]) << GetParam() << " r=" << r << " c=" << c;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllFormats, MatmulKernel,
                         ::testing::Values("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                                           "IQ4_NL", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ2_XXS",
                                           "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "IQ4_XS",
                                           "TQ1_0", "TQ2_0", "MXFP4", "NVFP4"),
                         [](const auto& info) { return std::string(info.param); });

// The grid i-quants decode (one activation row) with gathers or with broadcast loads and blends,
// picked per CPU (fast_gather); both forms against the reference at every level, and bit-identical
// to each other (the same integer sums in the same order).
class IquantDecodeForms : public ::testing::TestWithParam<const char*> {};

TEST_P(IquantDecodeForms, GatherAndBlendMatchReference) {
  const GgmlType t = *type_from_name(GetParam());
  IsaGuard guard;
  const bool saved_gather = fast_gather();
  std::mt19937 rng(77);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  constexpr int64_t rows = 19, cols = 256 * 5;
  constexpr size_t nr = rows, nc = cols;
  const auto w = random_weights(t, rows, cols, rng);
  const WeightView wv{t, w.data(), cols, rows, row_size(t, cols)};
  const auto wrows = dequantized_rows(t, w.data(), rows, cols);
  std::vector<float> x(nc);
  for (auto& v : x) v = nd(rng);
  std::vector<float> ref(nr);
  matmul_ref(wv, x.data(), 1, ref.data());
  ThreadPool pool(1);
  for (IsaLevel lvl : supported_levels()) {
    if (lvl == IsaLevel::kScalar) continue;
    set_isa_level(lvl);
    std::vector<float> got[2];
    for (int g = 0; g < 2; ++g) {
      set_fast_gather(g == 1);
      got[g].assign(nr, NAN);
      matmul(wv, x.data(), 1, got[g].data(), pool);
      for (int64_t r = 0; r < rows; ++r) {
        ASSERT_NEAR(got[g][size_t(r)], ref[size_t(r)], tolerance(wrows[size_t(r)], x.data(), cols, 256))
            << GetParam() << " isa=" << isa_name(lvl) << " gather=" << g << " r=" << r;
      }
    }
    for (int64_t r = 0; r < rows; ++r)
      EXPECT_EQ(got[0][size_t(r)], got[1][size_t(r)]) << GetParam() << " isa=" << isa_name(lvl) << " r=" << r;
  }
  set_fast_gather(saved_gather);
}

INSTANTIATE_TEST_SUITE_P(GridIquants, IquantDecodeForms,
                         ::testing::Values("IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S",
                                           "IQ1_M"),
                         [](const auto& info) { return std::string(info.param); });

TEST(MatmulKernelApi, RejectsBadShapesAndTypes) {
  std::vector<uint8_t> w(1024);
  ThreadPool pool(1);
  float x[48] = {}, y[4] = {};
  EXPECT_THROW(matmul(WeightView{GgmlType::Q4_0, w.data(), 48, 1, 18 * 2}, x, 1, y, pool), InvalidArgument);
  EXPECT_THROW(matmul(WeightView{GgmlType::Q1_0, w.data(), 128, 1, 18}, x, 1, y, pool), Unsupported);
  EXPECT_THROW(get_row(WeightView{GgmlType::Q4_0, w.data(), 32, 1, 18}, 1, y), InvalidArgument);
}

// Weights repacked at load (packed_weights.h): decode, small batches and prefill read the interleaved
// copy; every level and token count against the reference, rows not a multiple of 16.
class PackedMatmul : public ::testing::TestWithParam<const char*> {};

TEST_P(PackedMatmul, MatchesReferenceAtEveryIsaLevel) {
  const GgmlType t = *type_from_name(GetParam());
  const int64_t sbv = type_traits(t).block_size;  // 32, 64 (NVFP4) or 256
  IsaGuard guard;
  std::mt19937 rng(99);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  struct Shape {
    int64_t rows, cols;
  };
  // 37 and 150 end in a group whose second 8-row half (AVX2) is empty, 45 in one with 5 of its 8 rows.
  const Shape shapes[] = {{37, sbv * 3}, {16, sbv}, {45, sbv}, {150, sbv == 256 ? 768 : 640}};
  ThreadPool pool1(1), pool3(3);
  for (const Shape& s : shapes) {
    const auto w = random_weights(t, s.rows, s.cols, rng);
    const auto wrows = dequantized_rows(t, w.data(), s.rows, s.cols);
    for (IsaLevel lvl : supported_levels()) {
      if (lvl == IsaLevel::kScalar) continue;
      set_isa_level(lvl);
      // Repacked at this level: the layout can depend on it (Q5_K's fifth bits).
      WeightView wv{t, w.data(), s.cols, s.rows, row_size(t, s.cols)};
      WeightView* views[] = {&wv};
      const auto prepared = PreparedWeights::prepare(views, false);
      // Q5_0 / Q5_1 / Q2_K / Q3_K are repacked at the AVX2 level only.
      if (!packed_at_every_level(t) && lvl >= IsaLevel::kAvx512) {
        ASSERT_EQ(wv.packed, nullptr) << GetParam();
      } else {
        ASSERT_NE(wv.packed, nullptr) << GetParam();
        ASSERT_EQ(prepared->matrices(), 1);
        EXPECT_EQ(wv.packed->fifth_planes, t == GgmlType::Q5_K && lvl == IsaLevel::kAvx2) << GetParam();
        // Same bits as GGUF, within 4% (K-quant scales stored as bytes: Q3_K +3.6%) plus the 16-row
        // padding.
        const double gguf = double(wv.row_bytes) * double((s.rows + 15) / 16 * 16);
        EXPECT_LE(double(prepared->bytes()), gguf * 1.04 + 64 * double((s.rows + 15) / 16)) << GetParam();
      }
      for (int64_t m : {1, 2, 3, 5, 9, 33, 67}) {
        std::vector<float> x(size_t(m * s.cols));
        for (auto& v : x) v = nd(rng);
        std::vector<float> ref(size_t(m * s.rows)), got(size_t(m * s.rows), NAN);
        matmul_ref(wv, x.data(), m, ref.data());
        for (ThreadPool* pool : {&pool1, &pool3}) {
          std::fill(got.begin(), got.end(), NAN);
          matmul(wv, x.data(), m, got.data(), *pool);
          for (int64_t tt = 0; tt < m; ++tt) {
            for (int64_t r = 0; r < s.rows; ++r) {
              const float* xt = x.data() + tt * s.cols;
              double tol = tolerance(wrows[size_t(r)], xt, s.cols, 32);
              if (lvl == IsaLevel::kAmx) tol = std::max(tol, tolerance_bf16(wrows[size_t(r)], xt, s.cols));
              const size_t i = size_t(tt * s.rows + r);
              ASSERT_NEAR(got[i], ref[i], tol) << GetParam() << " isa=" << isa_name(lvl) << " rows=" << s.rows
                                               << " m=" << m << " t=" << tt << " r=" << r;
            }
          }
        }
        // Row-exact mode: each activation row bit-identical to a call with that row alone.
        if (m > 1 && m < 10) {
          std::vector<float> one(size_t(s.rows));
          {
            RowExactMatmul exact;
            matmul(wv, x.data(), m, got.data(), pool3);
          }
          for (int64_t tt = 0; tt < m; ++tt) {
            matmul(wv, x.data() + tt * s.cols, 1, one.data(), pool1);
            for (int64_t r = 0; r < s.rows; ++r)
              ASSERT_EQ(got[size_t(tt * s.rows + r)], one[size_t(r)])
                  << GetParam() << " isa=" << isa_name(lvl) << " m=" << m << " t=" << tt << " r=" << r;
          }
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(PackableFormats, PackedMatmul,
                         ::testing::Values("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K",
                                           "Q5_K", "Q6_K", "IQ4_XS", "IQ4_NL", "MXFP4", "NVFP4"),
                         [](const auto& info) { return std::string(info.param); });

TEST(PackedMatmulApi, RepackCanBeTurnedOffAndSkipsOtherFormats) {
  std::mt19937 rng(3);
  const auto w4 = random_weights(GgmlType::Q4_0, 20, 64, rng);
  const auto w5 = random_weights(GgmlType::F16, 20, 64, rng);
  WeightView a{GgmlType::Q4_0, w4.data(), 64, 20, row_size(GgmlType::Q4_0, 64)};
  WeightView b{GgmlType::F16, w5.data(), 64, 20, row_size(GgmlType::F16, 64)};
  WeightView c = a;  // shares a's bytes: one copy
  WeightView* views[] = {&a, &b, &c};
  set_repack_enabled(false);
  EXPECT_EQ(PreparedWeights::prepare(views, false)->matrices(), 0);
  EXPECT_EQ(a.packed, nullptr);
  set_repack_enabled(true);
  if (!repack_enabled()) GTEST_SKIP() << "no AVX2: repacking stays off";
  const auto p = PreparedWeights::prepare(views, false);
  EXPECT_EQ(p->matrices(), 1);
  EXPECT_NE(a.packed, nullptr);
  EXPECT_EQ(c.packed, a.packed);
  EXPECT_EQ(b.packed, nullptr);
  EXPECT_NE(p->describe().find("Q4_0: 1"), std::string::npos) << p->describe();
}

// The repacked MXFP4 kernels build each row's scale 2^(e - 128) from the exponent byte's bits: every
// exponent up to 252, the subnormal ones (e < 2) included, one row each. They compute
// a * (code + 12) - 12 a, so the activation is scaled down for the large exponents; -12 a itself
// passes FLT_MAX above 252, and a matrix with such an exponent (no finite weight quantizes to one)
// keeps the GGUF kernels.
TEST(PackedMatmulApi, Mxfp4ScalesForEveryExponent) {
  if (!repack_enabled()) GTEST_SKIP() << "no AVX2: repacking stays off";
  IsaGuard guard;
  const int64_t cols = 32;
  ThreadPool pool(1);
  for (const int64_t rows : {253, 256}) {
    std::vector<BlockMxfp4> w(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) {
      w[size_t(r)] = BlockMxfp4{};
      w[size_t(r)].e = uint8_t(r);
      w[size_t(r)].qs[0] = 0x01;  // weight 0: code 1 (doubled E2M1 value 1), the rest zero
    }
    WeightView wv{GgmlType::MXFP4, w.data(), cols, rows, sizeof(BlockMxfp4)};
    WeightView* views[] = {&wv};
    const auto prepared = PreparedWeights::prepare(views, false);
    ASSERT_EQ(wv.packed != nullptr, rows == 253);
    struct Pass {
      float x0;
      int e0, e1;  // the rows checked
    };
    for (const Pass ps : {Pass{1.0f, 0, 200}, Pass{std::ldexp(1.0f, -60), 100, int(rows) - 1}}) {
      for (IsaLevel lvl : supported_levels()) {
        if (lvl == IsaLevel::kScalar) continue;
        set_isa_level(lvl);
        for (int64_t m : {1, 9}) {
          std::vector<float> xm(size_t(m * cols), 0.0f), y(size_t(m * rows), NAN);
          for (int64_t t = 0; t < m; ++t) xm[size_t(t * cols)] = ps.x0;
          matmul(wv, xm.data(), m, y.data(), pool);
          for (int64_t t = 0; t < m; ++t)
            for (int r = ps.e0; r <= ps.e1; ++r) {
              const float want = e8m0_to_fp32_half(uint8_t(r)) * ps.x0;
              ASSERT_NEAR(y[size_t(t * rows + r)], want, 1e-6 * want + 1e-42)
                  << "isa=" << isa_name(lvl) << " rows=" << rows << " m=" << m << " e=" << r;
            }
        }
      }
    }
  }
}

// The repacked NVFP4 kernels look each UE4M3 scale byte up in kUe4m3Half: every byte (0 and 0x7F
// read as zero, the top bit ignored), one row each, through each of a block's four groups.
TEST(PackedMatmulApi, Nvfp4ScalesForEveryByte) {
  if (!repack_enabled()) GTEST_SKIP() << "no AVX2: repacking stays off";
  IsaGuard guard;
  const int64_t rows = 256, cols = 64;
  std::vector<BlockNvfp4> w(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    w[size_t(r)] = BlockNvfp4{};
    for (int g = 0; g < 4; ++g) w[size_t(r)].d[g] = uint8_t(r);
  }
  WeightView wv{GgmlType::NVFP4, w.data(), cols, rows, sizeof(BlockNvfp4)};
  ThreadPool pool(1);
  for (int g = 0; g < 4; ++g) {
    // Weight 16 g + 8 (a high nibble): code 1 (doubled E2M1 value 1), the rest zero.
    for (auto& b : w) {
      std::fill(std::begin(b.qs), std::end(b.qs), uint8_t(0));
      b.qs[8 * g] = 0x10;
    }
    WeightView v = wv;
    WeightView* views[] = {&v};
    const auto prepared = PreparedWeights::prepare(views, false);
    ASSERT_NE(v.packed, nullptr);
    for (IsaLevel lvl : supported_levels()) {
      if (lvl == IsaLevel::kScalar) continue;
      set_isa_level(lvl);
      for (int64_t m : {1, 9}) {
        std::vector<float> xm(size_t(m * cols), 0.0f), y(size_t(m * rows), NAN);
        for (int64_t t = 0; t < m; ++t) xm[size_t(t * cols + 16 * g + 8)] = 1.0f;
        matmul(v, xm.data(), m, y.data(), pool);
        for (int64_t t = 0; t < m; ++t)
          for (int r = 0; r < rows; ++r) {
            const float want = ue4m3_to_fp32_half(uint8_t(r));
            ASSERT_NEAR(y[size_t(t * rows + r)], want, 1e-6 * want)
                << "isa=" << isa_name(lvl) << " m=" << m << " group=" << g << " byte=" << r;
          }
      }
    }
  }
}

// Several matrices repacked by one prepare() share one arena (over 1 MiB here: the huge-page
// mapping on Linux): each copy 64-byte aligned, none overlapping, each decoding its own matrix.
TEST(PackedMatmulApi, MatricesShareOneArenaAndDecodeCorrectly) {
  if (!repack_enabled()) GTEST_SKIP() << "no AVX2: repacking stays off";
  IsaGuard guard;
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  struct M {
    GgmlType t;
    int64_t rows, cols;
  };
  const M ms[] = {{GgmlType::Q4_0, 1000, 1024}, {GgmlType::Q8_0, 520, 2048}, {GgmlType::Q4_1, 37, 64}};
  std::vector<std::vector<uint8_t>> bytes;
  std::vector<WeightView> views;
  for (const M& m : ms) {
    bytes.push_back(random_weights(m.t, m.rows, m.cols, rng));
    views.push_back(WeightView{m.t, bytes.back().data(), m.cols, m.rows, row_size(m.t, m.cols)});
  }
  std::vector<WeightView*> vp;
  for (auto& v : views) vp.push_back(&v);
  const auto prepared = PreparedWeights::prepare(vp, false);
  ASSERT_EQ(prepared->matrices(), 3);
  EXPECT_GT(prepared->bytes(), size_t(1) << 20);
  for (size_t i = 0; i < views.size(); ++i) {
    const PackedMatrix* p = views[i].packed;
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p->data) % 64, 0u);
    const size_t n = packed_bytes(p->type, p->rows, p->cols);
    for (size_t j = 0; j < views.size(); ++j) {
      if (j == i) continue;
      const uint8_t* o = views[j].packed->data;
      EXPECT_TRUE(o >= p->data + n ||
                  o + packed_bytes(views[j].type, views[j].rows, views[j].cols) <= p->data);
    }
  }
  ThreadPool pool(2);
  for (IsaLevel lvl : supported_levels()) {
    if (lvl == IsaLevel::kScalar) continue;
    set_isa_level(lvl);
    for (size_t i = 0; i < views.size(); ++i) {
      const WeightView& wv = views[i];
      std::vector<float> x(size_t(wv.cols)), ref(size_t(wv.rows)), got(size_t(wv.rows), NAN);
      for (auto& v : x) v = nd(rng);
      matmul_ref(wv, x.data(), 1, ref.data());
      matmul(wv, x.data(), 1, got.data(), pool);
      std::vector<float> wrow(size_t(wv.cols));
      for (int64_t r = 0; r < wv.rows; ++r) {
        dequantize_row_ref(wv.type, bytes[i].data() + size_t(r) * wv.row_bytes, wrow.data(), wv.cols);
        ASSERT_NEAR(got[size_t(r)], ref[size_t(r)], tolerance(wrow, x.data(), wv.cols, 32))
            << type_name(wv.type) << " isa=" << isa_name(lvl) << " r=" << r;
      }
    }
  }
}

// Q5_K's fifth bits are laid out per ISA level (bit planes for AVX2, masks for AVX-512 / AMX): a copy
// made for another level (the level changed after loading) must go to the GGUF rows, not be misread.
// The copy here is garbage: read, it gives wrong results; with the other level's flag it must not be.
TEST(PackedMatmulApi, Q5KCopyOfAnotherLevelIsNotRead) {
  if (!repack_enabled()) GTEST_SKIP() << "no AVX2: repacking stays off";
  IsaGuard guard;
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t rows = 40, cols = 512;
  const GgmlType t = GgmlType::Q5_K;
  const auto w = random_weights(t, rows, cols, rng);
  std::vector<float> x(size_t(2 * cols)), ref(size_t(2 * rows)), got(size_t(2 * rows));
  for (auto& v : x) v = nd(rng);
  WeightView wv{t, w.data(), cols, rows, row_size(t, cols)};
  matmul_ref(wv, x.data(), 2, ref.data());
  const auto wrows = dequantized_rows(t, w.data(), rows, cols);
  ThreadPool pool(1);
  for (IsaLevel lvl : supported_levels()) {
    if (lvl == IsaLevel::kScalar) continue;
    set_isa_level(lvl);
    const size_t n = packed_bytes(t, rows, cols);
    std::vector<uint8_t> buf(n + 64);
    auto* dst = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(buf.data()) + 63) & ~uintptr_t(63));
    PackedMatrix pm;
    repack(wv, dst, &pm);
    std::memset(dst, 0x5A, n);
    wv.packed = &pm;
    for (const bool other : {false, true}) {
      pm.fifth_planes = (lvl == IsaLevel::kAvx2) != other;
      for (int64_t m : {1, 2}) {
        matmul(wv, x.data(), m, got.data(), pool);
        int off = 0;  // results outside the tolerance
        for (int64_t tt = 0; tt < m; ++tt) {
          for (int64_t r = 0; r < rows; ++r) {
            const size_t i = size_t(tt * rows + r);
            const double tol = tolerance(wrows[size_t(r)], x.data() + tt * cols, cols, 32);
            off += !(std::fabs(double(got[i]) - double(ref[i])) <= tol);
          }
        }
        if (other) {
          EXPECT_EQ(off, 0) << isa_name(lvl) << " m=" << m;
        } else if (lvl == IsaLevel::kAvx2) {
          // The control (the garbage copy is what the kernels read) was checked at the AVX2 level only;
          // the VNNI levels' routing for m <= 2 has not run on such a CPU.
          EXPECT_GT(off, 0) << isa_name(lvl) << " m=" << m << ": the copy was not read";
        }
      }
    }
    wv.packed = nullptr;
  }
}

// Q6_K decode sums a sub-block exactly in 32 bits (VNNI) or pairs of products in 16 bits (AVX2):
// the largest quants (0 and 63) with the largest scales (-128, 127) against activations at +-127
// after quantization must not overflow at any level, alone or in a row-exact batch.
TEST(PackedMatmulApi, Q6KExtremeQuantsAndScalesDoNotOverflow) {
  if (!repack_enabled()) GTEST_SKIP() << "no AVX2: repacking stays off";
  IsaGuard guard;
  const int64_t rows = 20, cols = 1536, nsb = cols / 256;
  std::vector<uint8_t> w(row_size(GgmlType::Q6_K, cols) * size_t(rows));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t b = 0; b < nsb; ++b) {
      BlockQ6_K blk;
      // Rows 0 mod 4: every quant 63; 1: every quant 0; 2, 3: by bit pattern.
      const uint8_t fill = r % 4 == 0 ? 0xFF : r % 4 == 1 ? 0x00 : r % 4 == 2 ? 0xF0 : 0x3C;
      std::memset(blk.ql, fill, sizeof(blk.ql));
      std::memset(blk.qh, fill, sizeof(blk.qh));
      for (int s = 0; s < 16; ++s) blk.scales[s] = int8_t((r + s) % 2 == 0 ? 127 : -128);
      blk.d = fp32_to_fp16_ref(r % 3 == 0 ? 1.0f : 0.5f);
      std::memcpy(w.data() + size_t(r) * row_size(GgmlType::Q6_K, cols) + size_t(b) * sizeof(blk), &blk,
                  sizeof(blk));
    }
  }
  WeightView wv{GgmlType::Q6_K, w.data(), cols, rows, row_size(GgmlType::Q6_K, cols)};
  WeightView* views[] = {&wv};
  const auto prepared = PreparedWeights::prepare(views, false);
  ASSERT_NE(wv.packed, nullptr);
  const int64_t m = 5;
  std::vector<float> x(size_t(m * cols));
  for (int64_t t = 0; t < m; ++t)
    for (int64_t c = 0; c < cols; ++c)
      x[size_t(t * cols + c)] = t == 0 ? 1.0f : t == 1 ? -1.0f : ((c / (t + 1)) % 2 == 0 ? 2.0f : -2.0f);
  std::vector<float> ref(static_cast<size_t>(m * rows)), got(static_cast<size_t>(m * rows)),
      one(static_cast<size_t>(rows));
  matmul_ref(wv, x.data(), m, ref.data());
  std::vector<float> wrow(static_cast<size_t>(cols));
  ThreadPool pool(2);
  for (IsaLevel lvl : supported_levels()) {
    if (lvl == IsaLevel::kScalar) continue;
    set_isa_level(lvl);
    {
      RowExactMatmul exact;
      matmul(wv, x.data(), m, got.data(), pool);
    }
    for (int64_t t = 0; t < m; ++t) {
      matmul(wv, x.data() + t * cols, 1, one.data(), pool);
      for (int64_t r = 0; r < rows; ++r) {
        dequantize_row_ref(GgmlType::Q6_K, w.data() + size_t(r) * wv.row_bytes, wrow.data(), cols);
        const size_t i = size_t(t * rows + r);
        ASSERT_NEAR(got[i], ref[i], tolerance(wrow, x.data() + t * cols, cols, 32))
            << "isa=" << isa_name(lvl) << " t=" << t << " r=" << r;
        ASSERT_EQ(one[size_t(r)], got[i]) << "isa=" << isa_name(lvl) << " t=" << t << " r=" << r;
      }
    }
  }
}

// The AMX prefill path for the formats without a repacked layout (i-quants, ternary, FP4): the tile
// kernel must take them (tile_matmul returns true), compute within the bf16 bound alone (it has no
// int8 activation rounding), and matmul() must route prefill batches to it (bit-identical results).
class AmxTileMatmul : public ::testing::TestWithParam<const char*> {};

TEST_P(AmxTileMatmul, TakesTheFormatAndMatchesReference) {
  const GgmlType t = *type_from_name(GetParam());
  IsaGuard guard;
  set_isa_level(IsaLevel::kAmx);
  if (isa_level() != IsaLevel::kAmx) GTEST_SKIP() << "no AMX on this CPU (or the OS refused it)";
  const kern::IsaKernels* k = kern::kernels_amx();
  ASSERT_NE(k->tile_matmul, nullptr);
  std::mt19937 rng(77);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t unit = std::max<int64_t>(type_traits(t).block_size, 32);
  struct Shape {
    int64_t rows, cols;
  };
  // 150 x 1536: several row panels and k chunks; 21 rows: a partial 16-row group.
  const Shape shapes[] = {{21, unit * 2}, {150, unit * (unit == 256 ? 6 : 48)}};
  ThreadPool pool(2);
  for (const Shape& s : shapes) {
    const auto w = random_weights(t, s.rows, s.cols, rng);
    const WeightView wv{t, w.data(), s.cols, s.rows, row_size(t, s.cols)};
    const auto wrows = dequantized_rows(t, w.data(), s.rows, s.cols);
    for (int64_t m : {32, 45, 64}) {
      std::vector<float> x(size_t(m * s.cols));
      for (auto& v : x) v = nd(rng);
      std::vector<float> ref(size_t(m * s.rows)), tiles(size_t(m * s.rows), NAN),
          got(size_t(m * s.rows), NAN);
      matmul_ref(wv, x.data(), m, ref.data());
      ASSERT_TRUE(k->tile_matmul(wv, x.data(), m, tiles.data(), pool)) << GetParam();
      matmul(wv, x.data(), m, got.data(), pool);
      for (int64_t tt = 0; tt < m; ++tt) {
        for (int64_t r = 0; r < s.rows; ++r) {
          const size_t i = size_t(tt * s.rows + r);
          ASSERT_NEAR(tiles[i], ref[i], tolerance_bf16(wrows[size_t(r)], x.data() + tt * s.cols, s.cols))
              << GetParam() << " rows=" << s.rows << " cols=" << s.cols << " m=" << m << " t=" << tt
              << " r=" << r;
          ASSERT_EQ(got[i], tiles[i]) << GetParam() << " m=" << m << " t=" << tt << " r=" << r;
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(IquantTernaryFp4, AmxTileMatmul,
                         ::testing::Values("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S",
                                           "IQ4_XS", "IQ4_NL", "TQ1_0", "TQ2_0", "MXFP4", "NVFP4"),
                         [](const auto& info) { return std::string(info.param); });

// Activations that Q8_K holds exactly (integers in [-127, 127], every 256-block reaching 127): the
// kernels' integer sums then equal the exact dot product up to float rounding, so one wrong grid
// entry, sign or scale fails here, where the activation-rounding tolerance above could let a
// single weight slip. Decode (m = 1) and small batches (m = 3) at every level.
class IntegerExactMatmul : public ::testing::TestWithParam<const char*> {};

TEST_P(IntegerExactMatmul, MatchesExactDotOnInt8Activations) {
  const GgmlType t = *type_from_name(GetParam());
  IsaGuard guard;
  std::mt19937 rng(77);
  std::uniform_int_distribution<int> ud(-127, 127);
  const int64_t rows = 37, cols = 768;
  const auto w = random_weights(t, rows, cols, rng);
  const WeightView wv{t, w.data(), cols, rows, row_size(t, cols)};
  const auto wrows = dequantized_rows(t, w.data(), rows, cols);
  ThreadPool pool(1);
  for (IsaLevel lvl : supported_levels()) {
    set_isa_level(lvl);
    for (int64_t m : {1, 3}) {
      std::vector<float> x(size_t(m * cols));
      for (auto& v : x) v = float(ud(rng));
      for (int64_t b = 0; b < m * cols / 256; ++b)
        x[size_t(256 * b + (rng() % 256))] = (rng() & 1) ? 127.0f : -127.0f;
      std::vector<float> got(size_t(m * rows), NAN);
      matmul(wv, x.data(), m, got.data(), pool);
      for (int64_t tt = 0; tt < m; ++tt) {
        for (int64_t r = 0; r < rows; ++r) {
          double exact = 0, mag = 0;
          for (int64_t c = 0; c < cols; ++c) {
            const double p = double(wrows[size_t(r)][size_t(c)]) * x[size_t(tt * cols + c)];
            exact += p;
            mag += std::fabs(p);
          }
          ASSERT_NEAR(got[size_t(tt * rows + r)], exact, 1e-5 * mag + 1e-6)
              << GetParam() << " isa=" << isa_name(lvl) << " m=" << m << " t=" << tt << " r=" << r;
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Q8KFormats, IntegerExactMatmul,
                         ::testing::Values("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S",
                                           "IQ4_XS", "TQ1_0", "TQ2_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
                                           "Q6_K"),
                         [](const auto& info) { return std::string(info.param); });

// The tolerance must be tight enough to catch a kernel bug: a single flipped weight nibble moves
// the result far outside it.
TEST(MatmulKernelApi, ToleranceDetectsACorruptedWeight) {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t cols = 256;
  auto w = random_weights(GgmlType::Q4_0, 1, cols, rng);
  std::vector<float> x(static_cast<size_t>(cols)), row(static_cast<size_t>(cols));
  for (auto& v : x) v = nd(rng);
  const WeightView wv{GgmlType::Q4_0, w.data(), cols, 1, row_size(GgmlType::Q4_0, cols)};
  float ref = 0, bad = 0;
  matmul_ref(wv, x.data(), 1, &ref);
  dequantize_row_ref(GgmlType::Q4_0, w.data(), row.data(), cols);
  const double tol = tolerance(row, x.data(), cols, 32);
  w[2] ^= 0x08;  // flip the top bit of element 0's nibble
  matmul_ref(wv, x.data(), 1, &bad);
  EXPECT_GT(std::fabs(bad - ref), tol * 0.5) << "tol=" << tol;
}

}  // namespace
}  // namespace qleap
