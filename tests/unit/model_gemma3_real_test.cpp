// The real Gemma 3 270M Q4_K_M file against Hugging Face transformers running the same GGUF (weights
// dequantized to float32 by transformers' own loader, its own Gemma3ForCausalLM):
// tests/fixtures/models/gemma3_270m_reference.json, written by tools/gen_gemma3_reference.py. The
// 253 MB model is not in the repository: $QLEAP_GEMMA3_MODEL points to it (skipped otherwise).
//
// qleap multiplies Q4_K weights with activations quantized to 8 bits, transformers in float32 with the
// dequantized weights, so logits differ a little: the checks are the argmax wherever transformers'
// top-2 gap is clear, the per-token NLL and the text's perplexity, and the greedy continuations up to
// the first near-tie.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "model/model.h"
#include "model_test_util.h"
#include "runtime/session.h"

namespace qleap {
namespace {

// A gap this large between transformers' two best logits is far beyond the difference that 8-bit
// activations make (measured max |dNLL| below), so the argmax must agree there.
constexpr float kClearGap = 0.5f;

struct Fixture {
  std::shared_ptr<const Model> model;
  nlohmann::json ref;
};

Fixture load() {
  const char* e = std::getenv("QLEAP_GEMMA3_MODEL");
  Fixture f;
  if (e == nullptr || !*e || !std::filesystem::exists(e)) return f;
  std::ifstream in(testing::source_dir() + "/tests/fixtures/models/gemma3_270m_reference.json");
  f.ref = nlohmann::json::parse(in);
  f.model = load_model(e);
  return f;
}

#define SKIP_WITHOUT_GEMMA3(f)                                                                     \
  if (!(f).model) {                                                                                \
    GTEST_SKIP() << "Gemma 3 270M not found (set QLEAP_GEMMA3_MODEL to gemma-3-270m-q4_k_m.gguf)"; \
  }

double nll_of(const float* l, int nv, int32_t next) {
  float mx = l[0];
  for (int k = 1; k < nv; ++k) mx = std::max(mx, l[k]);
  double z = 0;
  for (int k = 0; k < nv; ++k) z += std::exp(double(l[k] - mx));
  return -(double(l[next] - mx) - std::log(z));
}

// Every position of a 133-token text in one prefill and in chunks of 32 (the local layers' window is
// 512, so this checks the forward, not the rings; the golden tests cross windows).
TEST(Gemma3Real, LogitsFollowTransformers) {
  const Fixture f = load();
  SKIP_WITHOUT_GEMMA3(f);
  const auto ids = f.ref.at("ids").get<std::vector<int32_t>>();
  const auto argmax = f.ref.at("argmax").get<std::vector<int32_t>>();
  const auto gap = f.ref.at("top2_gap").get<std::vector<float>>();
  const auto nll = f.ref.at("nll").get<std::vector<double>>();
  for (int n_batch : {512, 32}) {
    SessionOptions so;
    so.n_threads = 2;
    so.n_batch = n_batch;
    so.n_ctx = 256;
    Session s(f.model, so);
    const std::vector<float>& logits = s.eval(ids, /*all_logits=*/true);
    const int nv = s.n_vocab();
    int clear = 0, clear_agree = 0, agree = 0;
    double sum_ref = 0, sum_got = 0, max_dnll = 0;
    for (size_t i = 0; i < ids.size(); ++i) {
      const float* l = logits.data() + i * size_t(nv);
      const int32_t am = int32_t(std::max_element(l, l + nv) - l);
      agree += am == argmax[i];
      if (gap[i] > kClearGap) {
        ++clear;
        clear_agree += am == argmax[i];
      }
      if (i + 1 < ids.size()) {
        const double d = nll_of(l, nv, ids[i + 1]);
        sum_got += d;
        sum_ref += nll[i];
        max_dnll = std::max(max_dnll, std::fabs(d - nll[i]));
      }
    }
    const double n = double(nll.size()), ppl_ref = std::exp(sum_ref / n), ppl = std::exp(sum_got / n);
    std::printf(
        "[gemma3 270m] n_batch %d: argmax %d/%zu equal (%d/%d where the gap > %.1f), PPL %.4f vs "
        "transformers "
        "%.4f (%+.2f%%), max |dNLL| %.4f\n",
        n_batch, agree, ids.size(), clear_agree, clear, kClearGap, ppl, ppl_ref, 100 * (ppl / ppl_ref - 1),
        max_dnll);
    EXPECT_EQ(clear_agree, clear);
    EXPECT_LT(std::fabs(ppl / ppl_ref - 1), 0.02);
    EXPECT_LT(max_dnll, 0.5);
  }
}

// Greedy continuations equal transformers' until they part, and they may part only at a step where
// transformers' top-2 gap is within reach of the quantization difference (there either token is right).
TEST(Gemma3Real, GreedyTextFollowsTransformers) {
  const Fixture f = load();
  SKIP_WITHOUT_GEMMA3(f);
  SessionOptions so;
  so.n_threads = 2;
  so.n_ctx = 256;
  for (const auto& g : f.ref.at("greedy")) {
    Session s(f.model, so);
    const std::string prompt_text = g.at("prompt").get<std::string>();
    const auto prompt = g.at("ids").get<std::vector<int32_t>>();
    const auto want = g.at("continuation").get<std::vector<int32_t>>();
    const auto gap = g.at("top2_gap").get<std::vector<float>>();
    std::vector<float> l = s.eval(prompt);
    size_t same = 0;
    for (; same < want.size(); ++same) {
      const int32_t got = int32_t(std::max_element(l.begin(), l.end()) - l.begin());
      if (got != want[same]) {
        EXPECT_LE(gap[same], kClearGap) << "'" << prompt_text << "' parts from transformers at step " << same
                                        << " where its top-2 gap is " << gap[same];
        break;
      }
      l = s.eval({got});
    }
    std::printf("[gemma3 270m] '%s': the first %zu of %zu greedy tokens equal transformers'\n",
                prompt_text.c_str(), same, want.size());
  }
}

}  // namespace
}  // namespace qleap
