#include "runtime/passkey.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>

#include "core/error.h"
#include "gguf/gguf.h"
#include "model/model.h"
#include "model_test_util.h"

namespace qleap {
namespace {

size_t count(const std::string& s, const std::string& sub) {
  size_t n = 0;
  for (size_t i = s.find(sub); i != std::string::npos; i = s.find(sub, i + 1)) ++n;
  return n;
}

Tokenizer stories_tokenizer() {
  auto f = GgufFile::open(testing::stories_path());
  return Tokenizer::from_gguf(*f);
}

TEST(Passkey, PromptHasTheLengthAskedAndTheNeedleAtTheDepthAsked) {
  const Tokenizer tok = stories_tokenizer();
  for (int n : {400, 457, 1000}) {  // (the stories tokenizer is nearly per character)
    int last_pos = -1;
    for (double depth : {0.0, 0.1, 0.5, 0.9, 1.0}) {
      const PasskeyPrompt p = make_passkey_prompt(tok, n, depth, "71432");
      ASSERT_EQ(int(p.tokens.size()), n) << depth;
      EXPECT_EQ(p.key, "71432");
      if (tok.wants_bos()) {
        EXPECT_EQ(p.tokens[0], tok.bos());
      }
      // The needle sentence is where the prompt says, and the key appears nowhere else.
      const std::vector<int32_t> needle(p.tokens.begin() + p.needle_pos,
                                        p.tokens.begin() + p.needle_pos + p.needle_len);
      EXPECT_NE(tok.decode(needle).find("The pass key is 71432. Remember it. 71432 is the pass key."),
                std::string::npos)
          << tok.decode(needle);
      const std::string text = tok.decode(p.tokens);
      EXPECT_EQ(count(text, "71432"), 2u) << text;
      EXPECT_EQ(text.rfind("What is the pass key? The pass key is"),
                text.size() - std::string("What is the pass key? The pass key is").size());
      EXPECT_EQ(text.find("There is an important info hidden"), text.find_first_not_of(' '));
      // Depth: the filler tokens before the needle, at the sentence boundary nearest the depth asked
      // (within half a sentence, or within the cut last sentence at the end).
      const int question = int(tok.encode("\nWhat is the pass key? The pass key is", false, false).size());
      EXPECT_EQ(p.filler_tokens, n - p.filler_begin - p.needle_len - question);
      const int before = p.needle_pos - p.filler_begin;
      EXPECT_NEAR(p.depth, double(before) / p.filler_tokens, 1e-12);
      const int unit = int(tok.encode(" The grass is green. The sky is blue. The sun is yellow. Here we go. "
                                      "There and back again.",
                                      false, false)
                               .size());
      const double tail = p.filler_tokens % unit;
      EXPECT_LE(std::abs(before - depth * p.filler_tokens), std::max(unit / 2.0, tail) + 1)
          << n << " " << depth;
      EXPECT_EQ(before % unit, 0);        // at a sentence boundary
      EXPECT_GE(p.needle_pos, last_pos);  // (0 and 0.1 of a short haystack may share a boundary)
      last_pos = p.needle_pos;
    }
  }
}

TEST(Passkey, BadInputsAreErrors) {
  const Tokenizer tok = stories_tokenizer();
  EXPECT_THROW(make_passkey_prompt(tok, 500, -0.1, "123"), InvalidArgument);
  EXPECT_THROW(make_passkey_prompt(tok, 500, 1.5, "123"), InvalidArgument);
  EXPECT_THROW(make_passkey_prompt(tok, 500, std::numeric_limits<double>::quiet_NaN(), "123"),
               InvalidArgument);
  EXPECT_THROW(make_passkey_prompt(tok, 500, 0.5, ""), InvalidArgument);
  EXPECT_THROW(make_passkey_prompt(tok, 500, 0.5, "12a"), InvalidArgument);
  EXPECT_THROW(make_passkey_prompt(tok, 200, 0.5, "123"), InvalidArgument);  // no room for filler
  EXPECT_THROW(passkey_key(1, 0, 0), InvalidArgument);
}

TEST(Passkey, KeysAreSeededNumbersOfTheLengthAsked) {
  for (int trial = 0; trial < 50; ++trial) {
    const std::string k = passkey_key(7, trial);
    ASSERT_EQ(k.size(), 5u);
    EXPECT_NE(k[0], '0');
    EXPECT_EQ(k, passkey_key(7, trial));
  }
  EXPECT_NE(passkey_key(7, 0), passkey_key(7, 1));
  EXPECT_NE(passkey_key(7, 0), passkey_key(8, 0));
  EXPECT_EQ(passkey_key(3, 2, 9).size(), 9u);
}

TEST(Passkey, OnlyTheRightNumberIsScoredAsFound) {
  EXPECT_TRUE(passkey_found(" 71432.", "71432"));
  EXPECT_TRUE(passkey_found("71432 is the pass key", "71432"));
  EXPECT_TRUE(passkey_found(": 71432\n", "71432"));
  EXPECT_FALSE(passkey_found(" 7143.", "71432"));
  EXPECT_FALSE(passkey_found(" 714320", "71432"));
  EXPECT_FALSE(passkey_found(" 71423", "71432"));
  EXPECT_FALSE(passkey_found(" the grass is green", "71432"));
  EXPECT_FALSE(passkey_found("", "71432"));
  EXPECT_FALSE(passkey_found(" 12345 or 71432", "71432"));  // the first number counts
  EXPECT_FALSE(passkey_found(" 71432", ""));
}

TEST(Passkey, RunsEndToEndOnStories) {
  auto model = load_model(testing::stories_path());
  const Tokenizer tok = Tokenizer::from_gguf(model->file());
  for (const char* kv : {"f16", "tq3"}) {
    SessionOptions so;
    so.n_ctx = 512;
    so.n_threads = 1;
    so.kv_type = kv;
    Session s(model, so);
    const PasskeyPrompt p = make_passkey_prompt(tok, 480, 0.5, passkey_key(1, 0));
    const PasskeyTrial t = run_passkey(s, tok, p, 8);
    EXPECT_EQ(t.n_tokens, 480);
    EXPECT_EQ(t.key, p.key);
    EXPECT_EQ(t.found, passkey_found(t.answer, p.key)) << t.answer;
    // The cache holds the prompt and what was generated (at most 8 tokens, the last not evaluated).
    EXPECT_GE(s.n_past(), 480);
    EXPECT_LE(s.n_past(), 487);
    // Deterministic: the same prompt gives the same answer (the session is reset first).
    EXPECT_EQ(run_passkey(s, tok, p, 8).answer, t.answer);
    // Prompt + answer must fit the context.
    EXPECT_THROW(run_passkey(s, tok, make_passkey_prompt(tok, 505, 0.5, "123"), 8), InvalidArgument);
  }
}

// SmolLM2-135M retrieves a key from a short haystack with f16 (when $QLEAP_DEFAULT_MODEL is set), so the
// harness can also score a real retrieval as found.
TEST(Passkey, SmolLM2FindsTheKeyInAShortHaystack) {
  const std::string path = testing::default_model_path();
  if (path.empty()) GTEST_SKIP() << "QLEAP_DEFAULT_MODEL not set";
  auto model = load_model(path);
  const Tokenizer tok = Tokenizer::from_gguf(model->file());
  SessionOptions so;
  so.n_ctx = 512;
  so.kv_type = "f16";
  Session s(model, so);
  int found = 0;
  for (int i = 0; i < 3; ++i) {
    const PasskeyTrial t =
        run_passkey(s, tok, make_passkey_prompt(tok, 400, 0.25 * (i + 1), passkey_key(5, i)));
    found += t.found ? 1 : 0;
    EXPECT_EQ(t.found, passkey_found(t.answer, t.key));
  }
  EXPECT_EQ(found, 3);
}

}  // namespace
}  // namespace qleap
