// gemma3, gemma2 and phi3 on the GPU (skipped without a CUDA device): the golden fixtures converted to
// F32 give, with every layer or only the last one offloaded, the CPU's logits and transformers' (the
// prompts run past the 8-10 position windows; prefill in chunks of 5 wraps the device ring caches; the
// rest of the prompt decodes token by token through the captured graph). Exercises the device ops
// these architectures add: GeGLU, the local layers' RoPE table, windowed ring attention, soft-capping.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "backend/cuda/cuda_api.h"
#include "gguf/convert.h"
#include "gguf_test_util.h"
#include "model/model.h"
#include "runtime/session.h"

namespace qleap {
namespace {

std::vector<float> run_logits(const std::shared_ptr<const Model>& model, const std::vector<int32_t>& ids,
                              int gpu_layers) {
  SessionOptions opt;
  opt.n_threads = 1;
  opt.kv_type = "f16";
  opt.n_batch = 5;
  opt.n_ctx = 64;
  opt.gpu_layers = gpu_layers;
  Session s(model, opt);
  const size_t n_pre = ids.size() / 2;
  std::vector<float> out = s.eval(std::vector<int32_t>(ids.begin(), ids.begin() + long(n_pre)), true);
  for (size_t i = n_pre; i < ids.size(); ++i) {
    const auto& d = s.eval({ids[i]});
    out.insert(out.end(), d.begin(), d.end());
  }
  return out;
}

class CudaArchGolden : public ::testing::TestWithParam<const char*> {};

TEST_P(CudaArchGolden, OffloadedLogitsMatchCpuAndTransformers) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device (GPU model tests run on a GPU machine)";
  const std::filesystem::path dir = std::filesystem::path(testing::fixtures_dir()) / GetParam();
  std::ifstream in(dir / "golden.json");
  const auto golden = nlohmann::json::parse(in);
  const auto ids = golden.at("prompts")[0].get<std::vector<int32_t>>();
  const auto hf = golden.at("logits")[0].get<std::vector<std::vector<float>>>();
  testing::TempDir tmp(std::string("cuda_arch_") + GetParam());
  ConvertOptions co;
  co.out_type = GgmlType::F32;
  convert_hf_to_gguf(dir.string(), tmp.file("m.gguf"), co);
  auto model = load_model(tmp.file("m.gguf"));
  const size_t nv = size_t(model->n_vocab());
  const auto cpu = run_logits(model, ids, 0);
  // The f16 cache alone moves these fixtures' large logits by more than float rounding: the GPU may
  // be as far from transformers as the CPU with the same cache, plus the GPU's own rounding.
  double cpu_err = 0;
  for (size_t j = 0; j < cpu.size(); ++j)
    cpu_err = std::max(cpu_err, double(std::fabs(cpu[j] - hf[j / nv][j % nv])));
  for (int ngl : {-1, 1}) {
    const auto gpu = run_logits(model, ids, ngl);
    ASSERT_EQ(gpu.size(), cpu.size());
    double gpu_err = 0;
    for (size_t j = 0; j < cpu.size(); ++j) {
      ASSERT_NEAR(gpu[j], cpu[j], 2e-2f) << GetParam() << " ngl " << ngl << " token " << j / nv;
      gpu_err = std::max(gpu_err, double(std::fabs(gpu[j] - hf[j / nv][j % nv])));
    }
    std::printf("[cuda arch] %s ngl %d: max abs err vs transformers %.3g (CPU %.3g)\n", GetParam(), ngl,
                gpu_err, cpu_err);
    EXPECT_LE(gpu_err, cpu_err + 2e-2) << GetParam() << " ngl " << ngl;
  }
}

INSTANTIATE_TEST_SUITE_P(Archs, CudaArchGolden,
                         ::testing::Values("gemma3", "gemma2", "phi3_longrope", "phi3_swa"),
                         [](const auto& info) { return std::string(info.param); });

}  // namespace
}  // namespace qleap
