// End to end on the GPU: the tiny HF-golden models and stories260K give the same logits with all
// layers, some layers or no layers offloaded (prefill in chunks, then single-token decode through
// the captured CUDA graph), and stories260K's greedy text still equals the llama2.c reference.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "backend/cuda/cuda_api.h"
#include "core/error.h"
#include "model_test_util.h"
#include "runtime/session.h"

namespace qleap {
namespace {

#define REQUIRE_GPU() \
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device (GPU model tests run on a GPU machine)"

const std::vector<int32_t> kTokens = {3,  17, 5,  39, 0,  22, 8,  8,  31, 12, 1,  2,  30, 44,
                                      45, 46, 90, 91, 7,  7,  7,  60, 61, 62, 63, 64, 65, 66,
                                      67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78};

// Logits of kTokens: the first 30 as a prefill (all logits), then one token at a time.
std::vector<float> run_logits(const std::shared_ptr<const Model>& model, int gpu_layers) {
  SessionOptions opt;
  opt.n_threads = 1;
  opt.kv_type = "f16";
  opt.n_batch = 16;
  opt.n_ctx = 64;
  opt.gpu_layers = gpu_layers;
  Session s(model, opt);
  EXPECT_EQ(s.placement().n_gpu_layers, gpu_layers < 0 ? model->hparams().n_layers : gpu_layers);
  std::vector<float> out;
  const std::vector<int32_t> pre(kTokens.begin(), kTokens.begin() + 30);
  const auto& l = s.eval(pre, true);
  out.insert(out.end(), l.begin(), l.end());
  for (size_t i = 30; i < kTokens.size(); ++i) {
    const auto& d = s.eval({kTokens[i]});
    out.insert(out.end(), d.begin(), d.end());
  }
  return out;
}

class CudaModelGolden : public ::testing::TestWithParam<const char*> {};

TEST_P(CudaModelGolden, OffloadedLogitsMatchCpuAndTransformers) {
  REQUIRE_GPU();
  const std::string base = testing::source_dir() + "/tests/fixtures/model_golden/" + GetParam();
  auto model = load_model(base + ".gguf");
  const int nv = model->n_vocab();
  std::vector<float> hf(kTokens.size() * size_t(nv));
  std::ifstream in(base + ".f32", std::ios::binary);
  ASSERT_TRUE(in.read(reinterpret_cast<char*>(hf.data()), std::streamsize(hf.size() * 4))) << base;
  const auto cpu = run_logits(model, 0);
  for (int ngl : {-1, 1}) {
    const auto gpu = run_logits(model, ngl);
    ASSERT_EQ(gpu.size(), cpu.size());
    for (size_t j = 0; j < cpu.size(); ++j) {
      ASSERT_NEAR(gpu[j], cpu[j], 2e-3f) << "ngl " << ngl << " token " << j / nv << " logit " << j % nv;
      ASSERT_NEAR(gpu[j], hf[j], 1e-2f) << "vs HF: ngl " << ngl << " token " << j / nv;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Archs, CudaModelGolden, ::testing::Values("llama", "qwen2", "qwen3", "qwen3_yarn"),
                         [](const auto& info) { return std::string(info.param); });

int argmax(const std::vector<float>& x) {
  int best = 0;
  for (int i = 1; i < int(x.size()); ++i) {
    if (x[size_t(i)] > x[size_t(best)]) best = i;
  }
  return best;
}

TEST(CudaModelStories, GreedyTextMatchesLlama2cWithFullAndPartialOffload) {
  REQUIRE_GPU();
  const std::string path = testing::stories_path();
  ASSERT_TRUE(std::filesystem::exists(path)) << path;
  auto model = load_model(path);
  std::string expected = testing::read_text(testing::stories_expected_path());
  ASSERT_FALSE(expected.empty());
  if (expected.back() == '\n') expected.pop_back();
  const auto& voc = model->file().find("tokenizer.ggml.tokens")->arr_s;
  for (int ngl : {-1, 3}) {
    SessionOptions opt;
    opt.n_threads = 1;
    opt.gpu_layers = ngl;
    Session s(model, opt);
    std::string text;
    int tok = 1, prev = 1;
    for (int pos = 0; pos < 200; ++pos) {
      const auto& logits = s.eval({tok});
      const int next = argmax(logits);
      if (next == 1) break;
      text += testing::decode_piece(voc, prev, next);
      prev = tok = next;
    }
    EXPECT_EQ(text, expected) << "ngl " << ngl;
  }
}

TEST(CudaModelStories, PrefillAndDecodeLogitsMatchCpu) {
  REQUIRE_GPU();
  const std::string path = testing::stories_path();
  ASSERT_TRUE(std::filesystem::exists(path)) << path;
  auto model = load_model(path);
  std::vector<int32_t> toks;
  for (int i = 0; i < 300; ++i) toks.push_back(int32_t(1 + (i * 37) % 500));
  std::vector<float> ref;
  for (int ngl : {0, -1, 2}) {
    SessionOptions opt;
    opt.n_threads = 1;
    opt.n_batch = 128;
    opt.gpu_layers = ngl;
    Session s(model, opt);
    std::vector<float> got = s.eval(toks, true);
    for (int i = 0; i < 20; ++i) {
      const auto& d = s.eval({int32_t(5 + i)});
      got.insert(got.end(), d.begin(), d.end());
    }
    if (ngl == 0) {
      ref = got;
      continue;
    }
    ASSERT_EQ(got.size(), ref.size());
    double max_err = 0;
    for (size_t j = 0; j < ref.size(); ++j) max_err = std::max(max_err, double(std::fabs(got[j] - ref[j])));
    EXPECT_LT(max_err, 2e-3) << "ngl " << ngl;
  }
}

TEST(CudaModel, GpuLayersWithoutDeviceFallsBackToCpu) {
  if (cuda::device_count() > 0) GTEST_SKIP() << "a CUDA device is present";
  auto model = load_model(testing::source_dir() + "/tests/fixtures/model_golden/llama.gguf");
  SessionOptions opt;
  opt.n_threads = 1;
  opt.gpu_layers = -1;
  Session s(model, opt);
  EXPECT_FALSE(s.placement().any_gpu());
  EXPECT_FALSE(s.placement().note.empty());
  EXPECT_EQ(s.eval({1, 2, 3}).size(), size_t(model->n_vocab()));
}

}  // namespace
}  // namespace qleap
