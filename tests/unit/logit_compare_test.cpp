// compare_logits / CompareStats (what `qleap compare` reports) against closed-form values.
#include "runtime/logit_compare.h"

#include <gtest/gtest.h>

#include <cmath>

#include "gguf/gguf.h"
#include "gguf_test_util.h"
#include "tokenizer/tokenizer.h"

namespace qleap {
namespace {

TEST(LogitCompare, IdenticalLogitsHaveZeroDivergence) {
  const float a[4] = {1.0f, -2.0f, 0.5f, 3.0f};
  const TokenCompare r = compare_logits(a, a, 4, 2);
  EXPECT_NEAR(r.kld, 0.0, 1e-12);
  EXPECT_EQ(r.top1_base, 3);
  EXPECT_EQ(r.top1_test, 3);
  const double lse = std::log(std::exp(1.0) + std::exp(-2.0) + std::exp(0.5) + std::exp(3.0));
  EXPECT_NEAR(r.nll_base, lse - 0.5, 1e-9);
  EXPECT_NEAR(r.nll_test, r.nll_base, 1e-12);
}

TEST(LogitCompare, TwoTokenKlMatchesClosedForm) {
  // P = (p, 1-p) with p = sigmoid(1), Q = (q, 1-q) with q = sigmoid(-1); a constant shift of the
  // logits must not matter.
  const float base[2] = {1.0f, 0.0f}, test[2] = {9.0f, 10.0f};
  const double p = 1 / (1 + std::exp(-1.0)), q = 1 / (1 + std::exp(1.0));
  const double kl = p * std::log(p / q) + (1 - p) * std::log((1 - p) / (1 - q));
  const TokenCompare r = compare_logits(base, test, 2, -1);
  EXPECT_NEAR(r.kld, kl, 1e-9);
  EXPECT_EQ(r.top1_base, 0);
  EXPECT_EQ(r.top1_test, 1);
  EXPECT_EQ(r.nll_base, 0.0);  // no target
}

TEST(LogitCompare, StatsSummarize) {
  CompareStats st;
  TokenCompare a, b;
  a.kld = 0.1;
  a.nll_base = 1.0;
  a.nll_test = 1.5;
  b.kld = 0.3;
  b.nll_base = 2.0;
  b.nll_test = 2.1;
  b.top1_test = 5;  // disagrees with top1_base = 0
  st.add(a);
  st.add(b);
  EXPECT_EQ(st.count(), 2);
  EXPECT_NEAR(st.mean_kld(), 0.2, 1e-12);
  EXPECT_NEAR(st.se_kld(), std::sqrt(0.02 / 2), 1e-12);  // sample var 0.02, n 2
  EXPECT_NEAR(st.max_kld(), 0.3, 1e-12);
  EXPECT_NEAR(st.top1_agreement(), 0.5, 1e-12);
  EXPECT_NEAR(st.ppl_base(), std::exp(1.5), 1e-9);
  EXPECT_NEAR(st.ppl_test(), std::exp(1.8), 1e-9);
  EXPECT_NEAR(st.ppl_ratio_minus_1(), std::exp(0.3) - 1, 1e-9);
  // Paired differences 0.5 and 0.1: mean 0.3, sample sd 0.2828, se 0.2.
  EXPECT_NEAR(st.se_ppl_ratio(), std::exp(0.3) * 0.2, 1e-9);
}

// The perplexity protocol's chunks are llama-perplexity's: the text tokenized with BOS where the model
// wants one (stories260K), then cut, each chunk's first token replaced by BOS; without (bpe_qwen2,
// whose file adds none) the text's own first token is the first chunk's, replaced by nothing.
TEST(PerplexityChunks, CutAsLlamaPerplexityCutsThem) {
  const std::string text =
      "Once upon a time there was a little girl who liked to play in the park. She had a red ball and a "
      "blue kite, and every day she ran to the top of the hill to fly the kite in the wind.";
  for (const char* path :
       {"/tests/fixtures/models/stories260K.gguf", "/tests/fixtures/tokenizer/bpe_qwen2.gguf"}) {
    const auto f = GgufFile::open(testing::source_dir() + path);
    const Tokenizer tok = Tokenizer::from_gguf(*f);
    std::vector<int32_t> all = tok.encode(text, false, false);
    if (tok.wants_bos()) all.insert(all.begin(), tok.bos());
    const int n = 8;
    size_t n_tokens = 0;
    const auto chunks = perplexity_chunks(tok, text, n, 0, &n_tokens);
    EXPECT_EQ(n_tokens, all.size()) << path;
    ASSERT_EQ(chunks.size(), all.size() / n) << path;
    ASSERT_GE(chunks.size(), 3u) << path;
    for (size_t c = 0; c < chunks.size(); ++c) {
      std::vector<int32_t> want(all.begin() + long(c * n), all.begin() + long((c + 1) * n));
      if (tok.wants_bos()) want[0] = tok.bos();
      EXPECT_EQ(chunks[c], want) << path << " chunk " << c;
    }
    EXPECT_EQ(perplexity_chunks(tok, text, n, 2).size(), 2u);
    EXPECT_TRUE(perplexity_chunks(tok, text, int(all.size()) + 1, 0).empty());
  }
  const Tokenizer spm = Tokenizer::from_gguf(
      *GgufFile::open(testing::source_dir() + "/tests/fixtures/models/stories260K.gguf"));
  EXPECT_TRUE(spm.wants_bos());  // the case above that tests the BOS
}

}  // namespace
}  // namespace qleap
