// Tokenizers built from GGUF metadata (tokenizer.ggml.*):
//  - "llama": SentencePiece-style BPE over scores, U+2581 for spaces, byte fallback to <0xXX>.
//  - "gpt2":  byte-level BPE with merge ranks and a pre-tokenizer chosen by tokenizer.ggml.pre.
// Encoding follows the Hugging Face tokenizers semantics (the reference the tests compare with).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "gguf/gguf.h"
#include "tokenizer/pretokenize.h"

namespace qleap {

// Where SPM adds the space prefix (tokenizer.ggml.add_space_prefix) to the text.
enum class SpmPrefixMode {
  // Before every plain-text fragment (the whole text, and the text after each special token),
  // even one that already starts with a space: SentencePiece, llama.cpp, llama2.c and the
  // official Llama 2 / Mistral tokenizer.json (Prepend normalizer). The default.
  kEveryFragment,
  // Only before the text at the very start of the input, and only when it does not already start
  // with a space: HF Metaspace prepend_scheme "first", which transformers' GGUF loader builds.
  kFirstOnly,
};

enum class TokenType : int32_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6
};

class Tokenizer {
 public:
  // Throws Unsupported for an unknown tokenizer.ggml.model, FormatError for inconsistent metadata.
  static Tokenizer from_gguf(const GgufFile& f);

  // add_bos: prepend BOS when the model wants it (wants_bos()). parse_special: control and unknown
  // token strings in the text become their ids (longest match first); user-defined tokens are
  // always matched, as HF does for non-special added tokens.
  std::vector<int32_t> encode(std::string_view text, bool add_bos, bool parse_special) const;
  // skip_special drops control and unknown tokens. The result is valid UTF-8: byte sequences that
  // are not (a token split inside a character, invalid bytes) become U+FFFD, as in HF's decode;
  // token_to_piece() gives the raw bytes.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = true) const;
  // Raw bytes of one token (may be a partial UTF-8 sequence); empty for an out-of-range id.
  std::string token_to_piece(int32_t id) const;

  int32_t bos() const { return bos_; }
  int32_t eos() const { return eos_; }
  bool is_eog(int32_t id) const;
  int n_vocab() const { return int(tokens_.size()); }
  bool wants_bos() const { return add_bos_ && bos_ >= 0; }
  const std::string& model() const { return model_; }
  const std::string& pre() const { return pre_; }
  std::optional<int32_t> token_id(std::string_view piece) const;

  // Extras beyond the core API.
  TokenType token_type(int32_t id) const;
  const std::string& token_text(int32_t id) const { return tokens_.at(size_t(id)); }
  bool is_spm() const { return spm_; }
  bool add_space_prefix() const { return add_space_prefix_; }
  SpmPrefixMode spm_prefix_mode() const { return spm_prefix_mode_; }
  void set_spm_prefix_mode(SpmPrefixMode m) { spm_prefix_mode_ = m; }
  // Non-empty when tokenizer.ggml.pre is missing or not recognised and the GPT-2 regex is used
  // instead (also printed to stderr at load).
  const std::string& warning() const { return warning_; }

 private:
  // Transparent hashing so lookups by string_view do not allocate.
  struct StrHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  struct PairHash {
    size_t operator()(uint64_t k) const { return size_t(k * 0x9E3779B97F4A7C15ull >> 17) ^ size_t(k); }
  };
  struct Merge {
    int32_t rank;
    int32_t result;
  };

  void encode_text(std::string_view text, bool at_start, std::vector<int32_t>& out) const;
  void encode_spm(std::string_view text, bool at_start, std::vector<int32_t>& out) const;
  void encode_bpe_word(std::string_view word, std::vector<int32_t>& out) const;
  std::string compute_piece(size_t id) const;

  std::string model_, pre_, warning_;
  bool spm_ = false;
  PreTokenizer pre_kind_ = PreTokenizer::kGpt2;
  bool ignore_merges_ = false;
  std::vector<std::string> tokens_;
  std::vector<float> scores_;
  std::vector<TokenType> types_;
  std::vector<std::string> pieces_;  // decoded bytes of each token
  std::unordered_map<std::string, int32_t, StrHash, std::equal_to<>> token_index_;
  std::unordered_map<uint64_t, Merge, PairHash> merges_;  // key: (left id << 32) | right id
  // Matchable token strings bucketed by first byte, longest first within a bucket.
  std::vector<std::pair<std::string, int32_t>> specials_by_byte_[256];
  std::vector<bool> eog_;
  int32_t byte_tokens_[256];       // SPM <0xXX> ids, -1 when absent
  int32_t byte_char_tokens_[256];  // byte-level BPE: id of each byte's mapped character
  int32_t bos_ = -1, eos_ = -1, unk_ = -1;
  bool add_bos_ = false;
  bool add_space_prefix_ = false;
  SpmPrefixMode spm_prefix_mode_ = SpmPrefixMode::kEveryFragment;
};

// Streaming detokenizer: feeds pieces and returns only complete UTF-8 text, holding back an
// incomplete multi-byte tail until the next piece completes it. Control tokens are skipped and the
// SPM leading space is stripped, as in decode(). Bytes that can never form valid UTF-8 come out as
// U+FFFD so the output is always valid UTF-8.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok) : tok_(tok) {}
  std::string push(int32_t id);
  std::string flush();

 private:
  const Tokenizer& tok_;
  std::string pending_;
  bool started_ = false;
};

}  // namespace qleap
