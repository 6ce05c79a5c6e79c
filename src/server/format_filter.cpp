// format: "json" / a JSON schema -> a TokenFilter over the JsonMatcher. Each step, every
// vocabulary piece is tried against the matcher (pieces whose first byte cannot continue are
// skipped as a group), and a piece is allowed only when the document can still be completed
// within the tokens left after it: the matcher's min_remaining() counts the bytes still needed,
// and every byte has a token of its own in byte-level vocabularies, so the output closes in time
// even when the model would rather ramble (stories260K) instead of ending at the length limit
// with half a document.
#include <fmt/format.h>

#include <array>
#include <cmath>
#include <limits>

#include "sampling/json_grammar.h"
#include "sampling/json_grammar_schema.h"
#include "server/api_common.h"

namespace qleap::server {

namespace {

class JsonFilter : public TokenFilter {
 public:
  JsonFilter(std::shared_ptr<const JsonSchema> schema, const Tokenizer& tok, int budget)
      : matcher_(std::move(schema)), budget_(std::max(1, budget)) {
    const int n = tok.n_vocab();
    pieces_.resize(size_t(n));
    eog_.resize(size_t(n));
    for (int i = 0; i < n; ++i) {
      eog_[size_t(i)] = tok.is_eog(i);
      // Control tokens are not part of the text (the detokenizer drops them): never allowed.
      const TokenType ty = tok.token_type(i);
      if (ty != TokenType::kControl && ty != TokenType::kUnknown) pieces_[size_t(i)] = tok.token_to_piece(i);
      if (!eog_[size_t(i)] && !pieces_[size_t(i)].empty())
        by_first_[static_cast<unsigned char>(pieces_[size_t(i)][0])].push_back(i);
    }
    eos_ = tok.eos();
  }

  void apply(float* logits, int n_vocab) override {
    const float ninf = -std::numeric_limits<float>::infinity();
    const int remaining = budget_ - accepted_;  // tokens left, this one included
    const bool complete = matcher_.complete();
    allowed_.clear();
    int min_need = JsonMatcher::kNever;
    for (int b = 0; b < 256; ++b) {
      const auto& group = by_first_[size_t(b)];
      if (group.empty() || !matcher_.probe(std::string_view(reinterpret_cast<const char*>(&b), 1))) continue;
      for (int id : group) {
        if (id >= n_vocab) continue;
        int need = 0;
        if (!matcher_.probe(pieces_[size_t(id)], &need)) continue;
        allowed_.emplace_back(id, need);
        min_need = std::min(min_need, need);
      }
    }
    // Within budget: pieces after which the document can still be finished in time. Past it (a
    // budget smaller than the schema's shortest document): the pieces that get closest.
    const int threshold = std::max(remaining - 1, min_need);
    keep_.assign(size_t(n_vocab), 0);
    for (const auto& [id, need] : allowed_) {
      if (need <= threshold) keep_[size_t(id)] = 1;
    }
    bool any = false;
    for (int i = 0; i < n_vocab; ++i) {
      const bool ok = size_t(i) < eog_.size() && eog_[size_t(i)] ? complete : keep_[size_t(i)] != 0;
      if (!ok) {
        logits[i] = ninf;
      } else {
        any = any || std::isfinite(logits[i]);
      }
    }
    // Nothing can continue (a vocabulary without the needed bytes): allow ending.
    if (!any && eos_ >= 0 && eos_ < n_vocab) logits[eos_] = 0.0f;
  }

  void accept(int32_t token) override {
    ++accepted_;
    if (token >= 0 && size_t(token) < pieces_.size() && !eog_[size_t(token)])
      matcher_.feed(pieces_[size_t(token)]);
  }

  bool complete() const override { return matcher_.complete(); }

 private:
  JsonMatcher matcher_;
  int budget_;
  int accepted_ = 0;
  std::vector<std::string> pieces_;
  std::vector<bool> eog_;
  std::array<std::vector<int>, 256> by_first_;
  std::vector<std::pair<int, int>> allowed_;
  std::vector<uint8_t> keep_;
  int32_t eos_ = -1;
};

}  // namespace

std::unique_ptr<TokenFilter> make_format_filter(const nlohmann::json& format, const Tokenizer& tok,
                                                int max_tokens) {
  if (format.is_null()) return nullptr;
  if (format.is_string()) {
    const std::string f = format.get<std::string>();
    if (f.empty()) return nullptr;
    if (f != "json")
      throw RequestError(400, fmt::format("invalid format '{}': use \"json\" or a JSON schema", f));
    return std::make_unique<JsonFilter>(JsonSchema::any(), tok, max_tokens);
  }
  if (!format.is_object()) throw RequestError(400, "'format' must be \"json\" or a JSON schema object");
  std::shared_ptr<const JsonSchema> schema;
  try {
    schema = format.empty() ? JsonSchema::any() : JsonSchema::compile(format);
  } catch (const std::invalid_argument& e) {
    throw RequestError(400, fmt::format("invalid JSON schema: {}", e.what()));
  }
  return std::make_unique<JsonFilter>(std::move(schema), tok, max_tokens);
}

}  // namespace qleap::server
