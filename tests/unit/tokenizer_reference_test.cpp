// Compares qleap's tokenizers with reference ids from HF transformers / tokenizers, written by
// tools/gen_tokenizer_fixtures.py into tests/fixtures/tokenizer/.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "gguf/gguf.h"
#include "tokenizer/tokenizer.h"

namespace qleap {
namespace {

std::string source_dir() {
  if (const char* e = std::getenv("QLEAP_SOURCE_DIR")) return e;
#ifdef QLEAP_SOURCE_DIR
  return QLEAP_SOURCE_DIR;
#else
  return ".";
#endif
}

std::string fixture_dir() {
  return source_dir() + "/tests/fixtures/tokenizer/";
}

nlohmann::json load_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path);
  return nlohmann::json::parse(in);
}

std::string show(const std::vector<int32_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(v[i]);
  }
  s += ']';
  return s;
}

void check_cases(const Tokenizer& tok, const nlohmann::json& j) {
  ASSERT_GT(j["cases"].size(), 20u);
  for (const auto& c : j["cases"]) {
    const std::string text = c["text"];
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    const auto plain = c["ids_plain"].get<std::vector<int32_t>>();
    const auto nobos = c["ids_nobos"].get<std::vector<int32_t>>();
    const std::string decoded = c["decoded"];
    const auto got = tok.encode(text, true, true);
    EXPECT_EQ(got, ids) << "text: '" << text << "' got " << show(got) << " want " << show(ids);
    const auto got_plain = tok.encode(text, true, false);
    EXPECT_EQ(got_plain, plain) << "(plain) text: '" << text << "' got " << show(got_plain) << " want "
                                << show(plain);
    const auto got_nobos = tok.encode(text, false, true);
    EXPECT_EQ(got_nobos, nobos) << "(no bos) text: '" << text << "'";
    EXPECT_EQ(tok.decode(ids), decoded) << "decode of the reference ids for '" << text << "'";
    if (decoded == text) {
      EXPECT_EQ(tok.decode(tok.encode(text, true, true)), text) << "round trip";
    }
  }
}

class TokenizerReference : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerReference, MatchesReferenceIds) {
  const nlohmann::json j = load_json(fixture_dir() + GetParam() + ".json");
  const auto f = GgufFile::open(fixture_dir() + j["gguf"].get<std::string>());
  Tokenizer tok = Tokenizer::from_gguf(*f);
  // *_first.json: references from transformers' GGUF loader (Metaspace prepend_scheme "first").
  if (GetParam().ends_with("_first")) tok.set_spm_prefix_mode(SpmPrefixMode::kFirstOnly);
  EXPECT_EQ(tok.model(), j["model"].get<std::string>());
  EXPECT_EQ(tok.pre(), j["pre"].get<std::string>());
  EXPECT_TRUE(tok.warning().empty()) << tok.warning();
  check_cases(tok, j);
}

INSTANTIATE_TEST_SUITE_P(TokenizerFixtures, TokenizerReference,
                         ::testing::Values("spm_stories260k", "spm_stories260k_first", "bpe_smollm",
                                           "bpe_gpt2", "bpe_llama3", "bpe_qwen2", "bpe_deepseek_llm"));

// The real stories260K model file (its metadata carries -1 ids written as 0xFFFFFFFF) tokenizes like
// the vocab-only fixture made from it.
TEST(TokenizerReferenceModels, Stories260KModelFile) {
  const std::string path = source_dir() + "/tests/fixtures/models/stories260K.gguf";
  ASSERT_TRUE(std::filesystem::exists(path)) << path;
  const auto f = GgufFile::open(path);
  const Tokenizer tok = Tokenizer::from_gguf(*f);
  EXPECT_EQ(tok.n_vocab(), 512);
  EXPECT_TRUE(tok.wants_bos());
  check_cases(tok, load_json(fixture_dir() + "spm_stories260k.json"));
}

// Full SmolLM2 vocabulary (49152 tokens) against the official pre-tokenizer's ids.
TEST(TokenizerReferenceModels, SmolLM2ModelFile) {
  std::string path;
  if (const char* e = std::getenv("QLEAP_DEFAULT_MODEL")) path = e;
  if (path.empty() || !std::filesystem::exists(path)) {
    const char* home = std::getenv("HOME");
    path = std::string(home ? home : "") + "/.qleap/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  }
  if (!std::filesystem::exists(path)) {
    GTEST_SKIP() << "SmolLM2 model not found (set QLEAP_DEFAULT_MODEL or run scripts/fetch_default_model.sh)";
  }
  const auto f = GgufFile::open(path);
  const Tokenizer tok = Tokenizer::from_gguf(*f);
  EXPECT_EQ(tok.n_vocab(), 49152);
  EXPECT_EQ(tok.pre(), "smollm");
  EXPECT_FALSE(tok.wants_bos());
  EXPECT_TRUE(tok.is_eog(2));  // <|im_end|>
  check_cases(tok, load_json(fixture_dir() + "smollm2_full.json"));
}

// Gemma 3's 262144-token SentencePiece-style vocabulary (tokenizer.ggml.model "llama" with scores, no
// space prefix, byte fallback, control and user-defined tokens) against transformers' GGUF loader
// (tools/gen_tokenizer_fixtures.py). The 253 MB model is not in the repository: $QLEAP_GEMMA3_MODEL
// points to it (skipped otherwise).
TEST(TokenizerReferenceModels, Gemma3ModelFile) {
  const char* e = std::getenv("QLEAP_GEMMA3_MODEL");
  if (e == nullptr || !*e || !std::filesystem::exists(e)) {
    GTEST_SKIP() << "Gemma 3 270M not found (set QLEAP_GEMMA3_MODEL to gemma-3-270m-q4_k_m.gguf)";
  }
  const auto f = GgufFile::open(e);
  const Tokenizer tok = Tokenizer::from_gguf(*f);
  EXPECT_EQ(tok.n_vocab(), 262144);
  EXPECT_TRUE(tok.is_spm());
  EXPECT_FALSE(tok.add_space_prefix());
  EXPECT_TRUE(tok.wants_bos());
  EXPECT_TRUE(tok.is_eog(1));    // <eos>
  EXPECT_TRUE(tok.is_eog(106));  // <end_of_turn>
  check_cases(tok, load_json(fixture_dir() + "gemma3_full.json"));
}

}  // namespace
}  // namespace qleap
