// The pieces of the Hugging Face search that need no network: reading a GGUF header from a prefix
// of the file (what the ranged GETs fetch), and naming a file's quantization.
#include <gtest/gtest.h>

#include <fstream>
#include <iterator>

#include "autoconf/planner.h"
#include "core/error.h"
#include "gguf/gguf.h"
#include "gguf_test_util.h"
#include "server/hf_search.h"

namespace qleap {
namespace {

std::vector<uint8_t> slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

TEST(GgufHeader, PrefixGivesTheSameShapeAsTheWholeFile) {
  const auto bytes = slurp(testing::stories_model());
  ASSERT_GT(bytes.size(), 1000u);
  const auto full = GgufFile::parse(bytes.data(), bytes.size());
  const ModelInfo want = model_info_from_gguf(*full);
  // The shortest prefix that parses is the header: metadata and tensor table, no tensor data.
  size_t lo = 0, hi = bytes.size();
  while (lo + 1 < hi) {
    const size_t mid = (lo + hi) / 2;
    try {
      GgufFile::parse_header(bytes.data(), mid, bytes.size());
      hi = mid;
    } catch (const FormatError&) {
      lo = mid;
    }
  }
  EXPECT_LE(hi, full->data_offset());
  const auto h = GgufFile::parse_header(bytes.data(), hi, bytes.size());
  EXPECT_EQ(h->file_size(), bytes.size());
  EXPECT_EQ(h->data_offset(), full->data_offset());
  ASSERT_EQ(h->tensors().size(), full->tensors().size());
  for (size_t i = 0; i < h->tensors().size(); ++i) {
    EXPECT_EQ(h->tensors()[i].name, full->tensors()[i].name);
    EXPECT_EQ(h->tensors()[i].nbytes, full->tensors()[i].nbytes);
    EXPECT_EQ(h->tensors()[i].data, nullptr);
  }
  const ModelInfo got = model_info_from_gguf(*h);
  EXPECT_EQ(got.weight_bytes(), want.weight_bytes());
  EXPECT_EQ(got.layer_bytes, want.layer_bytes);
  EXPECT_EQ(got.kv_bytes_per_token, want.kv_bytes_per_token);
  EXPECT_EQ(got.file_bytes, want.file_bytes);
}

TEST(GgufHeader, TensorsBeyondTheDeclaredSizeOrALongerPrefixAreErrors) {
  const auto bytes = slurp(testing::stories_model());
  const auto full = GgufFile::parse(bytes.data(), bytes.size());
  const size_t head = full->data_offset();
  EXPECT_THROW(GgufFile::parse_header(bytes.data(), head, bytes.size() - 1), FormatError);
  EXPECT_THROW(GgufFile::parse_header(bytes.data(), bytes.size(), bytes.size() - 1), FormatError);
  // Every prefix either parses or fails with FormatError, whatever size is declared.
  for (size_t n = 0; n < head; n += 97) {
    for (uint64_t declared : {uint64_t(n), uint64_t(bytes.size()), uint64_t(1) << 50}) {
      try {
        GgufFile::parse_header(bytes.data(), n, declared);
      } catch (const FormatError&) {
      }
    }
  }
}

TEST(HfSearch, QuantizationFromFileName) {
  using server::quant_of_file;
  EXPECT_EQ(quant_of_file("SmolLM2-135M-Instruct-Q4_K_M.gguf"), "Q4_K_M");
  EXPECT_EQ(quant_of_file("smollm2-135m-instruct-q8_0.gguf"), "Q8_0");
  EXPECT_EQ(quant_of_file("model.IQ2_XS.gguf"), "IQ2_XS");
  EXPECT_EQ(quant_of_file("sub/dir/Qwen2.5-Coder-1.5B-Instruct-BF16.gguf"), "BF16");
  EXPECT_EQ(quant_of_file("giant-F32-00001-of-00004.gguf"), "F32");
  EXPECT_EQ(quant_of_file("ggml-model.gguf"), "");
  EXPECT_EQ(quant_of_file("Q4.gguf"), "Q4");
}

}  // namespace
}  // namespace qleap
