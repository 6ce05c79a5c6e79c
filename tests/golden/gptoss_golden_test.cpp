// gpt-oss against transformers (fixture gpt_oss from tools/gen_golden.py, float32 reference): attention
// sinks, alternating sliding-window (16 in the fixture) and full layers, YaRN without truncation, the
// MoE with biases and the clamped SwiGLU. F32 within 1e-4 at every position of prompts that cross the
// window, in one prefill chunk, in chunks that split it and token by token; decode steps equal to
// prefill; F16 / Q8_0 weights, q8_0 / TurboQuant KV and MXFP4 experts close; the converted file's layout.
#include <gtest/gtest.h>

#if __has_include("runtime/session.h")
#include <set>

#include "../unit/golden_test_util.h"
#include "gguf/gguf.h"
#include "runtime/session.h"

namespace qleap {
namespace {

using testing::Closeness;
using testing::Golden;
using testing::RoutingLog;

const char* const kName = "gpt_oss";

Golden load_golden() {
  return testing::load_golden(kName);
}

std::string convert(GgmlType type, testing::TempDir& tmp) {
  return testing::convert_fixture(kName, type, tmp);
}

TEST(GptOssGolden, F32MatchesTransformersInEveryChunking) {
  testing::TempDir tmp("gptoss_f32");
  auto model = load_model(convert(GgmlType::F32, tmp));
  EXPECT_EQ(model->arch(), "gpt-oss");
  const Golden g = load_golden();
  ASSERT_GT(g.prompts[0].size(), 2u * 16);  // crosses the window twice
  for (int n_batch : {512, 7, 1}) {
    SessionOptions so;
    so.kv_type = "f32";
    so.n_threads = 2;
    so.n_batch = n_batch;
    for (size_t p = 0; p < g.prompts.size(); ++p) {
      Session s(model, so);
      const std::vector<float>& logits = s.eval(g.prompts[p], /*all_logits=*/true);
      const double e = testing::max_abs_err(g.logits[p], logits.data());
      std::printf(
          "[golden] gpt_oss F32 n_batch %d prompt %zu (%zu tokens): max abs err %.3g (max |logit| %.3g)\n",
          n_batch, p, g.prompts[p].size(), e, g.max_ref);
      EXPECT_LT(e, 1e-4) << "n_batch " << n_batch << " prompt " << p;
    }
  }
}

// Decode steps (one row per slot of the continuous batch) against a prefill of the same tokens.
TEST(GptOssGolden, DecodeEqualsPrefill) {
  testing::TempDir tmp("gptoss_decode");
  auto model = load_model(convert(GgmlType::F32, tmp));
  const Golden g = load_golden();
  const std::vector<int32_t>& prompt = g.prompts[0];
  EngineOptions opt;
  opt.kv_type = "f32";
  opt.n_threads = 2;
  const double e = testing::decode_vs_prefill(model, prompt, opt);
  const int n = int(prompt.size());
  std::printf("[golden] gpt_oss decode vs prefill over %d tokens: max abs diff %.3g\n", n, e);
  EXPECT_LT(e, 1e-4);
}

testing::PromptRun runner(const std::shared_ptr<const Model>& model, const std::string& kv) {
  EngineOptions opt;
  opt.n_threads = 2;
  opt.kv_type = kv;
  opt.calibrate_kv = false;  // the fixture carries no tokenizer for the calibration text
  return [model, opt](const std::vector<int32_t>& prompt, RoutingLog& log) {
    return testing::prefill_logits(model, prompt, opt, &log);
  };
}

Closeness compare(const std::shared_ptr<const Model>& model, const std::string& kv, const Golden& g,
                  const std::vector<RoutingLog>& f32_routes, double clear_gap) {
  return testing::compare_to_golden(g, f32_routes, runner(model, kv), clear_gap);
}

std::vector<RoutingLog> f32_routing(const Golden& g, testing::TempDir& tmp) {
  return testing::reference_routing(g, runner(load_model(convert(GgmlType::F32, tmp)), "f32"));
}

void report(const std::string& what, const Closeness& c, const Golden& g) {
  testing::print_closeness("gpt_oss " + what, c, g);
}

// Quantized weights, and KV cache types, each against transformers. Bounds relative to the largest
// logit, about 2x the largest measured (docs/models.md); the argmax must agree wherever the reference's
// top-2 gap exceeds the bound. TurboQuant keeps the last 64 positions exact by default, all of these
// prompts; ":w0" makes every position a 3- or 4-bit record, which on this tiny model (routing margins of
// 0.02) changes most routing decisions: those runs are checked for finite, bounded logits only (the
// sink arithmetic on TurboQuant records is checked against float attention in attn_sinks_test).
TEST(GptOssGolden, QuantizedWeightsAndKvTypesClose) {
  const Golden g = load_golden();
  testing::TempDir tmp("gptoss_q");
  const std::vector<RoutingLog> routes = f32_routing(g, tmp);
  struct Case {
    GgmlType type;
    const char* kv;
    double rel_tol;
    bool bound_flips;
  };
  for (const Case& k : {Case{GgmlType::F16, "f16", 2e-2, true}, Case{GgmlType::Q8_0, "f16", 0.5, true},
                        Case{GgmlType::F32, "q8_0", 0.2, true}, Case{GgmlType::F32, "tq4", 1e-2, true},
                        Case{GgmlType::F32, "tq3", 1e-2, true}, Case{GgmlType::F32, "tq4:w0", 1.5, false},
                        Case{GgmlType::F32, "tq3:w0", 1.5, false}}) {
    auto model = load_model(convert(k.type, tmp));
    const Closeness c = compare(model, k.kv, g, routes, k.rel_tol * g.max_ref);
    report(std::string(type_name(k.type)) + " weights, " + k.kv + " KV", c, g);
    EXPECT_EQ(c.non_finite, 0) << type_name(k.type) << " " << k.kv;
    EXPECT_LT(c.max_err, k.rel_tol * g.max_ref) << type_name(k.type) << " " << k.kv;
    if (!k.bound_flips) continue;
    EXPECT_EQ(c.clear_mismatch, 0) << type_name(k.type) << " " << k.kv;
    EXPECT_LE(c.flipped, c.positions / 5) << type_name(k.type) << " " << k.kv;
  }
}

// The experts requantized to MXFP4 (the format of the released gpt-oss files) by `qleap convert --type
// MXFP4` on a GGUF (llama.cpp's MXFP4_MOE: experts only). The MXFP4 expert path must give the logits of
// the same model with those MXFP4 weights decoded to F32 (same values, other kernels); against
// transformers, 4-bit experts on this tiny model change about half the routing decisions, so that is
// only reported and bounded loosely.
TEST(GptOssGolden, Mxfp4ExpertsMatchTheirDecodedWeights) {
  const Golden g = load_golden();
  testing::TempDir tmp("gptoss_mxfp4");
  const std::vector<RoutingLog> routes = f32_routing(g, tmp);
  const std::string f32 = convert(GgmlType::F32, tmp), mx = tmp.file("gpt_oss_mxfp4.gguf"),
                    back = tmp.file("gpt_oss_mxfp4_f32.gguf");
  requantize_gguf(f32, mx, GgmlType::MXFP4, nullptr, 2);
  requantize_gguf(mx, back, GgmlType::F32, nullptr, 2);
  {
    const auto f = GgufFile::open(mx);
    EXPECT_EQ(f->tensor("blk.0.ffn_gate_exps.weight").type, GgmlType::MXFP4);
    EXPECT_EQ(f->tensor("blk.3.ffn_down_exps.weight").type, GgmlType::MXFP4);
    EXPECT_EQ(f->tensor("blk.0.attn_q.weight").type, GgmlType::F32);  // experts only
    EXPECT_EQ(f->tensor("blk.0.ffn_gate_inp.weight").type, GgmlType::F32);
    EXPECT_EQ(f->tensor("blk.0.ffn_gate_exps.bias").type, GgmlType::F32);
    EXPECT_EQ(GgufFile::open(back)->tensor("blk.0.ffn_gate_exps.weight").type, GgmlType::F32);
  }
  auto mx_model = load_model(mx), back_model = load_model(back);
  // The MXFP4 kernels round the activations to 8 bits (as llama.cpp's do), the F32 ones do not: a routing
  // decision near a tie may change; those positions are left out and counted.
  double e = 0;
  int flipped = 0, positions = 0;
  for (const auto& prompt : g.prompts) {
    RoutingLog a, b;
    const std::vector<float> la = runner(mx_model, "f32")(prompt, a);
    const std::vector<float> lb = runner(back_model, "f32")(prompt, b);
    std::set<int> flips;
    for (const auto& [key, ids] : b.chosen)
      if (a.chosen[key] != ids) flips.insert(key.second);
    const size_t nv = size_t(g.logits[0][0].size());
    for (size_t pos = 0; pos < prompt.size(); ++pos, ++positions) {
      if (flips.count(int(pos))) {
        ++flipped;
        continue;
      }
      for (size_t v = 0; v < nv; ++v) e = std::max(e, double(std::fabs(la[pos * nv + v] - lb[pos * nv + v])));
    }
  }
  std::printf(
      "[golden] gpt_oss MXFP4 experts vs the same weights decoded to F32: max abs diff %.3g (%.2g of max "
      "|logit| "
      "%.3g) at %d/%d positions (%d with a routing change)\n",
      e, e / g.max_ref, g.max_ref, positions - flipped, positions, flipped);
  EXPECT_LT(e, 0.2 * g.max_ref);
  EXPECT_LE(flipped, positions / 4);
  const Closeness c = compare(mx_model, "f32", g, routes, 1.5 * g.max_ref);
  report("MXFP4 experts vs transformers", c, g);
  EXPECT_EQ(c.non_finite, 0);
  EXPECT_LT(c.max_err, 1.5 * g.max_ref);
}

// What the converter writes: llama.cpp's gpt-oss names, F32 biases, sinks and router.
TEST(GptOssGolden, FileLayout) {
  testing::TempDir tmp("gptoss_layout");
  const auto f = GgufFile::open(convert(GgmlType::Q8_0, tmp));
  EXPECT_EQ(f->architecture(), "gpt-oss");
  EXPECT_EQ(f->find_arch("attention.sliding_window")->as_int(), 16);
  EXPECT_EQ(f->find_arch("expert_count")->as_int(), 4);
  EXPECT_EQ(f->find_arch("expert_used_count")->as_int(), 2);
  EXPECT_EQ(f->find_arch("rope.scaling.type")->as_string(), "yarn");
  EXPECT_FALSE(f->find_arch("rope.scaling.yarn_truncate")->as_bool());
  const GgufTensor& gate = f->tensor("blk.1.ffn_gate_exps.weight");
  EXPECT_EQ(gate.shape, (std::vector<int64_t>{64, 32, 4}));
  EXPECT_EQ(gate.type, GgmlType::Q8_0);
  EXPECT_EQ(f->tensor("blk.1.ffn_down_exps.weight").shape, (std::vector<int64_t>{32, 64, 4}));
  for (const char* t : {"blk.1.ffn_gate_exps.bias", "blk.1.ffn_up_exps.bias"}) {
    EXPECT_EQ(f->tensor(t).shape, (std::vector<int64_t>{32, 4})) << t;
    EXPECT_EQ(f->tensor(t).type, GgmlType::F32) << t;
  }
  EXPECT_EQ(f->tensor("blk.1.ffn_down_exps.bias").shape, (std::vector<int64_t>{64, 4}));
  EXPECT_EQ(f->tensor("blk.1.attn_sinks.weight").shape, (std::vector<int64_t>{4}));
  EXPECT_EQ(f->tensor("blk.1.ffn_gate_inp.weight").type, GgmlType::F32);
  for (const char* t : {"blk.1.ffn_gate_inp.bias", "blk.1.attn_output.bias", "blk.1.attn_q.bias",
                        "blk.1.post_attention_norm.weight", "output.weight"})
    EXPECT_NE(f->find_tensor(t), nullptr) << t;
  EXPECT_EQ(f->find_tensor("blk.1.ffn_norm.weight"), nullptr);
}

}  // namespace
}  // namespace qleap

#endif  // __has_include("runtime/session.h")
