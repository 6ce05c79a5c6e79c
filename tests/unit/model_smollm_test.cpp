// The default real model (SmolLM2-135M-Instruct Q4_1, llama arch, 9/3 heads, tied embeddings) when it
// is available: batched prefill must agree with token-by-token decoding; prints decode speed.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/timer.h"
#include "model_test_util.h"
#include "runtime/session.h"

namespace qleap {
namespace {

std::shared_ptr<const Model> smollm() {
  const std::string p = testing::default_model_path();
  return p.empty() ? nullptr : load_model(p);
}

#define REQUIRE_SMOLLM()                                                                               \
  auto model = smollm();                                                                               \
  if (!model) {                                                                                        \
    GTEST_SKIP() << "$QLEAP_DEFAULT_MODEL not set (SmolLM2-135M-Instruct.Q4_1.gguf; scripts/test.sh " \
                    "sets it after scripts/fetch_default_model.sh)";                                  \
  }

// Until every weight format has a kernel in this build, the first eval may raise Unsupported.
bool can_run(const std::shared_ptr<const Model>& model) {
  try {
    SessionOptions opt;
    opt.n_ctx = 8;
    opt.n_threads = 1;
    Session s(model, opt);
    s.eval({1});
    return true;
  } catch (const Unsupported&) {
    return false;
  }
}

TEST(ModelSmolLM, HyperParameters) {
  REQUIRE_SMOLLM();
  const HParams& hp = model->hparams();
  EXPECT_EQ(model->arch(), "llama");
  EXPECT_EQ(hp.n_layers, 30);
  EXPECT_EQ(hp.n_embd, 576);
  EXPECT_EQ(hp.n_heads, 9);
  EXPECT_EQ(hp.n_kv_heads, 3);
  EXPECT_EQ(hp.head_dim, 64);
  EXPECT_EQ(hp.n_vocab, 49152);
  EXPECT_TRUE(model->weights().tied_embeddings);
}

TEST(ModelSmolLM, BatchEqualsIncrementalAndDecodeSpeed) {
  REQUIRE_SMOLLM();
  if (!can_run(model)) GTEST_SKIP() << "this build has no kernel for the model's weight types yet";
  // "<|im_start|>user\nWhat is 2+2?<|im_end|>\n" style ids: any in-vocab ids will do here.
  const std::vector<int32_t> seq = {1, 4093, 198, 1780, 314, 216, 34, 45, 34, 47, 2, 198, 1, 520, 9531, 198};
  SessionOptions opt;
  opt.n_threads = 2;
  opt.n_ctx = 256;
  opt.kv_type = "f32";
  Session batch(model, opt);
  const std::vector<float> all = batch.eval(seq, true);
  const int nv = batch.n_vocab();
  Session inc(model, opt);
  int same_top1 = 0;
  for (size_t t = 0; t < seq.size(); ++t) {
    const auto& l = inc.eval({seq[t]});
    float max_diff = 0, max_abs = 0;
    for (int j = 0; j < nv; ++j) {
      max_diff = std::max(max_diff, std::fabs(l[size_t(j)] - all[t * nv + j]));
      max_abs = std::max(max_abs, std::fabs(all[t * nv + j]));
    }
    // The AVX2 quantized kernels round activations to 8 bits; measured against the scalar float path
    // both their m = 1 and m > 1 paths sit ~0.3-1.2 logits (up to ~4% of the range) away, so the two
    // differ by that much too. (With QLEAP_ISA=scalar batch and incremental agree to 1e-3; F32 models
    // are held to 1e-4 in model_stories_test / model_session_test.)
    EXPECT_LT(max_diff, 0.06f * std::max(1.0f, max_abs)) << "token " << t;
    same_top1 += std::max_element(l.begin(), l.end()) - l.begin() ==
                 std::max_element(all.begin() + t * nv, all.begin() + (t + 1) * nv) - (all.begin() + t * nv);
  }
  EXPECT_GE(same_top1, int(seq.size()) - 2);

  // Decode speed: greedy continuation with the default (f16) cache.
  opt.kv_type = "f16";
  Session s(model, opt);
  const auto& l0 = s.eval(seq);
  int tok = int(std::max_element(l0.begin(), l0.end()) - l0.begin());
  const int n_decode = 32;
  Stopwatch sw;
  for (int i = 0; i < n_decode; ++i) {
    const auto& l = s.eval({tok});
    tok = int(std::max_element(l.begin(), l.end()) - l.begin());
  }
  const double tps = n_decode / sw.elapsed();
  std::printf("[ SmolLM2 ] decode %.2f tok/s (2 threads, %d tokens after a %zu-token prompt)\n", tps,
              n_decode, seq.size());
  RecordProperty("decode_tok_per_s", std::to_string(tps));
}

}  // namespace
}  // namespace qleap
