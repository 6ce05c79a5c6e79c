// Helpers of the tests that rebuild a converted fixture in one of llama.cpp's other file layouts and
// compare the logits of the two files (model_file_variants_test.cpp, moe_test.cpp).
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "gguf/convert.h"
#include "gguf/gguf.h"
#include "gguf/gguf_writer.h"
#include "gguf_test_util.h"
#include "model/model.h"
#include "runtime/session.h"

namespace qleap::testing {

inline bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The golden fixture `name` converted to `type` weights as tmp/<name>.gguf; "" when the checkout has
// no such fixture.
inline std::string converted_fixture(const std::string& name, GgmlType type, const TempDir& tmp) {
  const auto dir = std::filesystem::path(fixtures_dir()) / name;
  if (!std::filesystem::exists(dir / "config.json")) return "";
  ConvertOptions opt;
  opt.out_type = type;
  const std::string out = tmp.file(name + ".gguf");
  convert_hf_to_gguf(dir.string(), out, opt);
  return out;
}

// A writer with src's metadata and alignment; the caller adds the tensors.
inline GgufWriter writer_like(const GgufFile& src) {
  GgufWriter w;
  w.set_alignment(uint32_t(src.alignment()));
  for (const auto& [k, v] : src.metadata())
    if (k != "general.alignment") w.set(k, v);
  return w;
}

// All-position logits of a 10-token prompt, then those of one decode step, f32 KV cache, 2 threads.
inline std::vector<float> prompt_and_step_logits(const std::string& path) {
  auto model = load_model(path);
  SessionOptions so;
  so.kv_type = "f32";
  so.n_threads = 2;
  Session s(model, so);
  std::vector<float> all = s.eval({3, 17, 250, 9, 9, 120, 64, 1, 200, 33}, true);
  const std::vector<float> step = s.eval({42});
  all.insert(all.end(), step.begin(), step.end());
  return all;
}

// How many of the two files' logits (prompt_and_step_logits) differ; -1 when their counts do.
inline int64_t logits_differing(const std::string& a, const std::string& b) {
  const std::vector<float> x = prompt_and_step_logits(a), y = prompt_and_step_logits(b);
  if (x.size() != y.size()) return -1;
  int64_t n = 0;
  for (size_t i = 0; i < x.size(); ++i) n += x[i] != y[i] ? 1 : 0;
  return n;
}

// Loading path fails with an E whose message names `needle`.
template <typename E>
void expect_load_error(const std::string& path, const std::string& needle) {
  try {
    load_model(path);
    ADD_FAILURE() << path << " loaded; expected an error naming " << needle;
  } catch (const E& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

}  // namespace qleap::testing
