// The golden fixtures as llama.cpp's own converter writes them (tests/golden/llamacpp/<fixture>.gguf,
// made by tools/convert_fixtures_llamacpp.py from a llama.cpp checkout, F32): the engine must run
// those files, the layout users download, as closely to transformers as it runs our converter's.
// Each file is held to its fixture's golden logits at every position (prefill in one batch and token
// by token) with the bound of that fixture's own test, and compared with our converter's file of the
// same fixture.
#include <gtest/gtest.h>

#if __has_include("runtime/session.h")
#include <algorithm>
#include <filesystem>
#include <set>

#include "../unit/golden_test_util.h"
#include "gguf/gguf.h"
#include "runtime/session.h"

namespace qleap {
namespace {

using testing::convert_fixture;
using testing::Golden;
using testing::load_golden;

std::string files_dir() {
  return testing::source_dir() + "/tests/golden/llamacpp";
}

std::vector<std::string> file_names() {
  std::vector<std::string> out;
  if (!std::filesystem::is_directory(files_dir())) return out;
  for (const auto& e : std::filesystem::directory_iterator(files_dir()))
    if (e.path().extension() == ".gguf") out.push_back(e.path().stem().string());
  std::sort(out.begin(), out.end());
  return out;
}

// The bound of the fixture's own F32 test: the hybrids, MLA and gpt-oss have float64 references or
// tighter tests (1e-4); golden_test.cpp holds the others to 1e-3.
double bound_for(const std::string& name) {
  if (name.rfind("qwen3_5", 0) == 0 || name == "qwen3_next" || name.rfind("deepseek", 0) == 0 ||
      name == "gpt_oss")
    return 1e-4;
  return 1e-3;
}

std::vector<float> prefill(const std::shared_ptr<const Model>& model, const std::vector<int32_t>& prompt,
                           int n_batch) {
  SessionOptions so;
  so.kv_type = "f32";
  so.n_threads = 2;
  so.n_batch = n_batch;
  Session s(model, so);
  return s.eval(prompt, /*all_logits=*/true);
}

// Every architecture the loader reads from llama.cpp's names has a file here: an empty or partial
// directory must not pass for a checked one.
TEST(LlamaCppFiles, CoverTheArchitectures) {
  std::set<std::string> archs;
  for (const std::string& n : file_names()) {
    auto f = GgufFile::open(files_dir() + "/" + n + ".gguf");
    archs.insert(f->get_string("general.architecture"));
  }
  for (const char* want : {"llama", "qwen2", "qwen3", "qwen2moe", "qwen3moe", "olmoe", "gemma2", "gemma3",
                           "phi3", "deepseek2", "gpt-oss", "qwen35", "qwen35moe", "qwen3next"})
    EXPECT_TRUE(archs.count(want)) << "no llama.cpp-converted file of " << want;
}

class LlamaCppFile : public ::testing::TestWithParam<std::string> {};

TEST_P(LlamaCppFile, MatchesTransformers) {
  const std::string name = GetParam();
  const Golden g = load_golden(name);
  auto theirs = load_model(files_dir() + "/" + name + ".gguf");
  testing::TempDir tmp("llamacpp_file_" + name);
  auto ours = load_model(convert_fixture(name, GgmlType::F32, tmp));
  for (size_t p = 0; p < g.prompts.size(); ++p) {
    for (int n_batch : {512, 1}) {
      const std::vector<float> lt = prefill(theirs, g.prompts[p], n_batch);
      const std::vector<float> lo = prefill(ours, g.prompts[p], n_batch);
      ASSERT_EQ(lt.size(), g.prompts[p].size() * g.logits[p][0].size());
      double vs_ours = 0;
      for (size_t i = 0; i < lt.size(); ++i) vs_ours = std::max(vs_ours, double(std::fabs(lt[i] - lo[i])));
      const double e = testing::max_abs_err(g.logits[p], lt.data());
      const double e_ours = testing::max_abs_err(g.logits[p], lo.data());
      std::printf(
          "[llamacpp file] %s prompt %zu n_batch %d: max abs err %.3g (our converter's file %.3g; "
          "the two files' logits differ by %.3g)\n",
          name.c_str(), p, n_batch, e, e_ours, vs_ours);
      EXPECT_LT(e, bound_for(name)) << "prompt " << p << " n_batch " << n_batch;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Files, LlamaCppFile, ::testing::ValuesIn(file_names()),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(LlamaCppFile);

}  // namespace
}  // namespace qleap
#endif
