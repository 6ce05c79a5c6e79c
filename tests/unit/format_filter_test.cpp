// The JSON format filter (server/format_filter.cpp) on a real vocabulary (stories260K): its fast
// paths (pieces probed in text order from shared prefixes, plain pieces inside free strings) allow
// exactly the tokens a piece-by-piece probe of the grammar allows, and it closes the document
// within the token budget.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "gguf/gguf.h"
#include "gguf_test_util.h"
#include "sampling/json_grammar.h"
#include "server/api_common.h"
#include "tokenizer/tokenizer.h"

namespace qleap::server {
namespace {

using nlohmann::json;

const json kSchema = json::parse(R"({"type":"object","properties":{"name":{"type":"string","maxLength":12},
    "n":{"type":"integer","minimum":-5,"maximum":300},"tags":{"type":"array","items":{"enum":["ab","a\"c"]}},
    "bio":{"type":"string","minLength":3}},"required":["name","n","bio"]})");

TEST(FormatFilter, SameTokensAsProbingEachPiece) {
  auto f = GgufFile::open(qleap::testing::stories_model());
  const Tokenizer tok = Tokenizer::from_gguf(*f);
  const int nv = tok.n_vocab();
  for (const char* prefix :
       {"", " {", "{\"na", "{\"name\": \"Bo", "{\"bio\":\"x", "{\"n\": 2", "{\"tags\":[\"a",
        "{\"tags\":[\"ab\",", "{\"name\":\"Bob\",\"bio\":\"hi there\"", "{\"n\":-"}) {
    const int budget = 1000;
    auto filter = make_format_filter(kSchema, tok, budget);
    JsonMatcher m(&kSchema);
    const std::vector<int32_t> ids = tok.encode(prefix, false, false);
    for (int32_t id : ids) {
      filter->accept(id);
      ASSERT_TRUE(m.feed(tok.token_to_piece(id))) << prefix;
    }
    std::vector<float> logits(size_t(nv), 0.0f);
    filter->apply(logits.data(), nv);
    int allowed = 0;
    for (int i = 0; i < nv; ++i) {
      const TokenType ty = tok.token_type(i);
      bool want;
      if (tok.is_eog(i)) {
        want = m.complete();
      } else if (ty == TokenType::kControl || ty == TokenType::kUnknown || tok.token_to_piece(i).empty()) {
        want = false;
      } else {
        int need = 0;
        want = m.probe(tok.token_to_piece(i), &need) && need <= budget - int(ids.size()) - 1;
      }
      EXPECT_EQ(std::isfinite(logits[size_t(i)]), want)
          << "prefix " << prefix << " token " << i << " [" << tok.token_to_piece(i) << "]";
      allowed += want;
    }
    EXPECT_GT(allowed, 0) << prefix;
  }
}

TEST(FormatFilter, ClosesTheDocumentWithinTheBudget) {
  auto f = GgufFile::open(qleap::testing::stories_model());
  const Tokenizer tok = Tokenizer::from_gguf(*f);
  const int nv = tok.n_vocab();
  std::mt19937 rng(11);
  for (int budget : {40, 55, 80, 150}) {
    for (int run = 0; run < 5; ++run) {
      auto filter = make_format_filter(kSchema, tok, budget);
      std::string text;
      int n = 0;
      for (; n < budget && !filter->complete(); ++n) {
        std::vector<float> logits(static_cast<size_t>(nv), 0.0f);
        for (float& x : logits) x = float(rng() % 1000) / 100.0f;  // a junk model
        filter->apply(logits.data(), nv);
        int best = -1;
        for (int i = 0; i < nv; ++i) {
          if (std::isfinite(logits[size_t(i)]) && (best < 0 || logits[size_t(i)] > logits[size_t(best)]))
            best = i;
        }
        ASSERT_GE(best, 0);
        filter->accept(best);
        if (!tok.is_eog(best)) text += tok.token_to_piece(best);
      }
      EXPECT_TRUE(filter->complete()) << "budget " << budget << ": " << text;
      EXPECT_LE(n, budget);
      EXPECT_FALSE(json::parse(text, nullptr, false).is_discarded()) << text;
    }
  }
}

}  // namespace
}  // namespace qleap::server
