// Scalar decoders and encoders against gguf-py (fixtures from tools/gen_quant_fixtures.py), plus
// round-trip error bounds for the encoders gguf-py lacks.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/matmul.h"
#include "core/error.h"
#include "core/fp16.h"
#include "quant/quant.h"

namespace qleap {
namespace {

std::string fixture_dir() {
  const char* env = std::getenv("QLEAP_SOURCE_DIR");
  return std::string(env != nullptr ? env : QLEAP_SOURCE_DIR) + "/tests/fixtures/quant/";
}

std::vector<uint8_t> read_bytes(const std::string& name) {
  std::ifstream in(fixture_dir() + name, std::ios::binary);
  if (!in) ADD_FAILURE() << "missing fixture " << name;
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::vector<float> read_floats(const std::string& name) {
  const auto b = read_bytes(name);
  std::vector<float> f(b.size() / 4);
  std::memcpy(f.data(), b.data(), f.size() * 4);
  return f;
}

class DecodeVsGgufPy : public ::testing::TestWithParam<const char*> {};

TEST_P(DecodeVsGgufPy, BitExact) {
  const GgmlType t = *type_from_name(GetParam());
  const auto blocks = read_bytes(std::string(GetParam()) + ".blocks");
  const auto ref = read_floats(std::string(GetParam()) + ".f32");
  ASSERT_FALSE(ref.empty());
  ASSERT_EQ(row_size(t, int64_t(ref.size())), blocks.size());
  std::vector<float> got(ref.size());
  dequantize_row_ref(t, blocks.data(), got.data(), int64_t(got.size()));
  for (size_t i = 0; i < ref.size(); ++i) {
    ASSERT_EQ(f32_to_bits(got[i]), f32_to_bits(ref[i]))
        << GetParam() << " element " << i << ": " << got[i] << " vs " << ref[i];
  }
  std::vector<float> fast(ref.size());
  dequantize_row(t, blocks.data(), fast.data(), int64_t(fast.size()));
  for (size_t i = 0; i < ref.size(); ++i) ASSERT_EQ(fast[i], ref[i]) << GetParam() << " element " << i;
}

INSTANTIATE_TEST_SUITE_P(QuantFormats, DecodeVsGgufPy,
                         ::testing::Values("F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL",
                                           "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ2_XXS", "IQ2_XS",
                                           "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "IQ4_XS", "TQ1_0",
                                           "TQ2_0", "MXFP4", "NVFP4", "I8", "I16", "I32", "I64", "F64"));

class EncodeVsGgufPy : public ::testing::TestWithParam<const char*> {};

TEST_P(EncodeVsGgufPy, BitExact) {
  const GgmlType t = *type_from_name(GetParam());
  const auto x = read_floats(std::string(GetParam()) + ".enc_in.f32");
  const auto ref = read_bytes(std::string(GetParam()) + ".enc.bin");
  ASSERT_EQ(row_size(t, int64_t(x.size())), ref.size());
  std::vector<uint8_t> got(ref.size());
  quantize_row_ref(t, x.data(), got.data(), int64_t(x.size()));
  const size_t ts = type_traits(t).type_size;
  for (size_t i = 0; i < ref.size(); ++i) {
    ASSERT_EQ(int(got[i]), int(ref[i])) << GetParam() << " block " << i / ts << " byte " << i % ts;
  }
}

INSTANTIATE_TEST_SUITE_P(QuantFormats, EncodeVsGgufPy,
                         ::testing::Values("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "BF16", "TQ1_0", "TQ2_0",
                                           "MXFP4"));

struct RmseCase {
  const char* type;
  double max_rel_rmse;  // RMSE / RMS(x) for Gaussian data
};

class EncodeRoundTrip : public ::testing::TestWithParam<RmseCase> {};

TEST_P(EncodeRoundTrip, RelativeRmseWithinBound) {
  const GgmlType t = *type_from_name(GetParam().type);
  ASSERT_TRUE(can_quantize(t));
  const int64_t n = 256 * 64;
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n));
  // Rows with varying magnitude and a few outliers, like real weights.
  for (int64_t i = 0; i < n; ++i)
    x[size_t(i)] = nd(rng) * (0.02f + 0.01f * float((i / 256) % 7)) + (i % 97 == 0 ? 0.2f : 0.0f);
  std::vector<uint8_t> q(row_size(t, n));
  quantize_row_ref(t, x.data(), q.data(), n);
  std::vector<float> y(static_cast<size_t>(n));
  dequantize_row_ref(t, q.data(), y.data(), n);
  double se = 0, ss = 0;
  for (int64_t i = 0; i < n; ++i) {
    se += double(y[size_t(i)] - x[size_t(i)]) * (y[size_t(i)] - x[size_t(i)]);
    ss += double(x[size_t(i)]) * x[size_t(i)];
  }
  const double rel = std::sqrt(se / ss);
  RecordProperty("rel_rmse", std::to_string(rel));
  std::printf("  %s relative RMSE %.5f\n", GetParam().type, rel);
  EXPECT_LT(rel, GetParam().max_rel_rmse);
  EXPECT_GT(rel, 0.0);  // a lossy format that reproduces the input exactly means the test is broken
}

// Bounds sit a little above what each format's bit budget gives on this data (4-bit ~0.1,
// 5-bit ~0.05, 6-bit ~0.025, 8-bit ~0.006 per 32, ~0.01 per 256; MXFP4's power-of-two scale ~0.12).
INSTANTIATE_TEST_SUITE_P(QuantFormats, EncodeRoundTrip,
                         ::testing::Values(RmseCase{"Q8_0", 0.008}, RmseCase{"Q8_K", 0.013},
                                           RmseCase{"Q4_0", 0.13}, RmseCase{"Q4_1", 0.11},
                                           RmseCase{"Q5_0", 0.065}, RmseCase{"Q5_1", 0.055},
                                           RmseCase{"IQ4_NL", 0.11}, RmseCase{"Q4_K", 0.11},
                                           RmseCase{"Q5_K", 0.055}, RmseCase{"Q6_K", 0.03},
                                           RmseCase{"IQ4_XS", 0.1}, RmseCase{"MXFP4", 0.14},
                                           RmseCase{"NVFP4", 0.1}),
                         [](const auto& info) { return std::string(info.param.type); });

// Ternary formats store ternary weights exactly: blocks of {-s, 0, s} with s an fp16 value come back
// bit for bit (Gaussian data is no test for them: they are meant for ternary-trained models).
TEST(EncodeTernary, ExactOnTernaryWeights) {
  std::mt19937 rng(3);
  const int64_t n = 256 * 16;
  std::vector<float> x(static_cast<size_t>(n));
  for (int64_t b = 0; b < n / 256; ++b) {
    const float s = fp16_to_fp32_ref(fp32_to_fp16_ref(0.001f * float(1 + b * 37)));
    for (int64_t i = 0; i < 256; ++i) x[size_t(b * 256 + i)] = s * float(int(rng() % 3) - 1);
    x[size_t(b * 256)] = s;  // every block holds its scale at least once
  }
  for (GgmlType t : {GgmlType::TQ1_0, GgmlType::TQ2_0}) {
    std::vector<uint8_t> q(row_size(t, n));
    quantize_row_ref(t, x.data(), q.data(), n);
    std::vector<float> y(static_cast<size_t>(n));
    dequantize_row_ref(t, q.data(), y.data(), n);
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(y[size_t(i)], x[size_t(i)]) << type_name(t) << " element " << i;
  }
}

TEST(QuantApi, BitsPerWeight) {
  const std::pair<const char*, double> want[] = {
      {"IQ1_S", 1.5625},   {"IQ1_M", 1.75},   {"IQ2_XXS", 2.0625}, {"IQ2_XS", 2.3125}, {"IQ2_S", 2.5625},
      {"IQ3_XXS", 3.0625}, {"IQ3_S", 3.4375}, {"IQ4_XS", 4.25},    {"TQ1_0", 1.6875},  {"TQ2_0", 2.0625},
      {"MXFP4", 4.25},     {"NVFP4", 4.5},    {"Q4_K", 4.5},       {"F64", 64.0},      {"I8", 8.0}};
  for (const auto& [name, bpw] : want) EXPECT_DOUBLE_EQ(bits_per_weight(*type_from_name(name)), bpw) << name;
  EXPECT_EQ(bits_per_weight(GgmlType(57)), 0.0);
}

TEST(QuantApi, RejectsPartialBlocksAndUnknownTypes) {
  std::vector<float> x(48, 1.0f);
  std::vector<uint8_t> q(64);
  EXPECT_THROW(quantize_row_ref(GgmlType::Q4_0, x.data(), q.data(), 48), InvalidArgument);
  EXPECT_THROW(dequantize_row_ref(GgmlType::Q4_0, q.data(), x.data(), 48), InvalidArgument);
  EXPECT_THROW(quantize_row_ref(GgmlType::Q2_K, x.data(), q.data(), 256), Unsupported);
  // Q1_0 is a type id gguf 0.19 knows by size but cannot decode; nor can this build.
  EXPECT_THROW(dequantize_row_ref(GgmlType::Q1_0, q.data(), x.data(), 128), Unsupported);
  EXPECT_THROW(dequantize_row_ref(GgmlType::IQ2_XXS, q.data(), x.data(), 100), InvalidArgument);
  std::vector<float> bad(256, 0.5f);
  bad[77] = std::numeric_limits<float>::infinity();
  std::vector<uint8_t> qk(512);
  EXPECT_THROW(quantize_row_ref(GgmlType::Q4_K, bad.data(), qk.data(), 256), InvalidArgument);
  bad[77] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(quantize_row_ref(GgmlType::Q8_0, bad.data(), qk.data(), 256), InvalidArgument);
}

}  // namespace
}  // namespace qleap
