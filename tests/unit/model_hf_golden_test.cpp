// Logits of tiny random llama / qwen2 (tied embeddings, q/k/v bias) / qwen3 (q/k norm, head_dim 32 !=
// 64 / 4) / qwen3 + YaRN models against HF transformers (tools/gen_model_golden.py generated the
// GGUF files and reference logits in tests/fixtures/model_golden).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "model_test_util.h"
#include "runtime/session.h"

namespace qleap {
namespace {

const std::vector<int32_t> kTokens = {3,  17, 5,  39, 0,  22, 8,  8,  31, 12, 1,  2,  30, 44,
                                      45, 46, 90, 91, 7,  7,  7,  60, 61, 62, 63, 64, 65, 66,
                                      67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78};
constexpr int kVocab = 100;

class ModelHfGolden : public ::testing::TestWithParam<const char*> {};

TEST_P(ModelHfGolden, LogitsMatchTransformers) {
  const std::string base = testing::source_dir() + "/tests/fixtures/model_golden/" + GetParam();
  std::vector<float> ref(kTokens.size() * kVocab);
  std::ifstream in(base + ".f32", std::ios::binary);
  ASSERT_TRUE(in.read(reinterpret_cast<char*>(ref.data()), std::streamsize(ref.size() * 4))) << base;
  auto model = load_model(base + ".gguf");
  ASSERT_EQ(model->n_vocab(), kVocab);
  for (const char* kv : {"f32", "f16"}) {
    SessionOptions opt;
    opt.n_threads = 1;
    opt.kv_type = kv;
    opt.n_batch = 16;  // three chunks
    Session s(model, opt);
    const auto& got = s.eval(kTokens, true);
    ASSERT_EQ(got.size(), ref.size());
    const float tol = std::string(kv) == "f32" ? 1e-4f : 1e-2f;
    for (size_t j = 0; j < ref.size(); ++j) {
      ASSERT_NEAR(got[j], ref[j], tol) << kv << " token " << j / kVocab << " logit " << j % kVocab;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Archs, ModelHfGolden, ::testing::Values("llama", "qwen2", "qwen3", "qwen3_yarn"),
                         [](const auto& info) { return std::string(info.param); });

}  // namespace
}  // namespace qleap
