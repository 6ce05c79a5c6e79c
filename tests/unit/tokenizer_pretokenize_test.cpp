// Hand-written pre-tokenizer regexes against the HF tokenizers pre-tokenizers (pretokenize.json
// from tools/gen_tokenizer_fixtures.py: fixture texts plus 400 seeded random strings per kind).
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tokenizer/pretokenize.h"
#include "tokenizer/unicode.h"

namespace qleap {
namespace {

std::string fixture(const std::string& name) {
  const char* e = std::getenv("QLEAP_SOURCE_DIR");
#ifdef QLEAP_SOURCE_DIR
  const std::string root = e ? e : QLEAP_SOURCE_DIR;
#else
  const std::string root = e ? e : ".";
#endif
  return root + "/tests/fixtures/tokenizer/" + name;
}

std::vector<std::string> split(PreTokenizer kind, const std::string& text) {
  std::vector<std::string_view> v;
  pretokenize(kind, text, v);
  return {v.begin(), v.end()};
}

TEST(TokenizerPretokenize, MatchesHfPreTokenizers) {
  std::ifstream in(fixture("pretokenize.json"));
  ASSERT_TRUE(in) << "missing pretokenize.json";
  const auto j = nlohmann::json::parse(in);
  const std::pair<const char*, PreTokenizer> kinds[] = {{"gpt2", PreTokenizer::kGpt2},
                                                        {"smollm", PreTokenizer::kDigitsGpt2},
                                                        {"llama-bpe", PreTokenizer::kLlama3},
                                                        {"qwen2", PreTokenizer::kQwen2},
                                                        {"deepseek-llm", PreTokenizer::kDeepseekLlm}};
  for (const auto& [name, kind] : kinds) {
    const auto& rows = j.at(name);
    ASSERT_GT(rows.size(), 400u);
    int failures = 0;
    for (const auto& row : rows) {
      const std::string text = row[0];
      const auto want = row[1].get<std::vector<std::string>>();
      const auto got = split(kind, text);
      if (got != want && ++failures <= 5) {
        std::string g, w;
        for (auto& s : got) g += "[" + s + "]";
        for (auto& s : want) w += "[" + s + "]";
        ADD_FAILURE() << name << ": '" << text << "'\n got  " << g << "\n want " << w;
      }
    }
    EXPECT_EQ(failures, 0) << name;
  }
}

std::string unhex(const std::string& h) {
  std::string out;
  for (size_t i = 0; i + 1 < h.size(); i += 2) out += char(std::stoi(h.substr(i, 2), nullptr, 16));
  return out;
}

TEST(TokenizerPretokenize, LossyUtf8MatchesPython) {
  std::ifstream in(fixture("pretokenize.json"));
  ASSERT_TRUE(in);
  const auto j = nlohmann::json::parse(in);
  const auto& rows = j.at("utf8_lossy");
  ASSERT_GE(rows.size(), 300u);
  for (const auto& row : rows) {
    EXPECT_EQ(utf8_sanitize(unhex(row[0])), unhex(row[1])) << row[0];
  }
}

TEST(TokenizerPretokenize, KnownSplits) {
  using V = std::vector<std::string>;
  EXPECT_EQ(split(PreTokenizer::kGpt2, "  hello world  "), (V{" ", " hello", " world", "  "}));
  EXPECT_EQ(split(PreTokenizer::kGpt2, "I'M don't"), (V{"I", "'", "M", " don", "'t"}));
  EXPECT_EQ(split(PreTokenizer::kLlama3, "I'M 1234567"), (V{"I", "'M", " ", "123", "456", "7"}));
  EXPECT_EQ(split(PreTokenizer::kQwen2, "x 123"), (V{"x", " ", "1", "2", "3"}));
  EXPECT_EQ(split(PreTokenizer::kLlama3, "a\n\n\nb"), (V{"a", "\n\n\n", "b"}));
  EXPECT_EQ(split(PreTokenizer::kDigitsGpt2, "a  12"), (V{"a", "  ", "1", "2"}));
  EXPECT_EQ(split(PreTokenizer::kDeepseekLlm, "Hi 日本 42!\n  "),
            (V{"Hi", " ", "日本", " ", "42", "!", "\n", "  "}));
  EXPECT_TRUE(split(PreTokenizer::kGpt2, "").empty());
  EXPECT_TRUE(split(PreTokenizer::kDeepseekLlm, "").empty());
}

}  // namespace
}  // namespace qleap
