// Replays inputs the fuzzers once crashed on (tests/fuzz/regressions/) through the parsers: each must
// parse or raise qleap::Error, with everything it exposes safe to read. Under the sanitizer build
// (tests/fuzz/run_fuzz.sh) they are also part of the seed corpus.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "core/error.h"
#include "gguf/gguf.h"
#include "gguf/safetensors.h"
#include "gguf_test_util.h"

namespace qleap {
namespace {

std::vector<uint8_t> slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

TEST(GgufReaderFuzz, RegressionInputsFailCleanly) {
  const auto dir = std::filesystem::path(testing::source_dir()) / "tests/fuzz/regressions";
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const auto bytes = slurp(e.path());
    ++n;
    SCOPED_TRACE(e.path().filename().string());
    try {
      if (e.path().extension() == ".safetensors") {
        auto f = SafetensorsFile::parse(bytes.data(), bytes.size());
        for (const auto& t : f->tensors()) {
          if (t.nbytes > 0) {
            EXPECT_LE(t.data + t.nbytes, bytes.data() + bytes.size());
          }
        }
      } else {
        auto f = GgufFile::parse(bytes.data(), bytes.size());
        for (const auto& [k, v] : f->metadata()) {
          try {
            (void)v.as_int();
          } catch (const Error&) {
          }
        }
        for (const auto& t : f->tensors()) EXPECT_LE(t.data + t.nbytes, bytes.data() + bytes.size());
      }
    } catch (const Error&) {
    }
  }
  EXPECT_GT(n, 0);
}

TEST(GgufReaderFuzz, FloatToIntegerIsChecked) {
  GgufValue v;
  v.type = GgufType::FLOAT32;
  v.f = 2e161;
  EXPECT_THROW(v.as_int(), FormatError);
  v.f = std::nan("");
  EXPECT_THROW(v.as_int(), FormatError);
  EXPECT_THROW(v.as_uint(), FormatError);
  v.f = -3.5;
  EXPECT_EQ(v.as_int(), -3);
}

}  // namespace
}  // namespace qleap
