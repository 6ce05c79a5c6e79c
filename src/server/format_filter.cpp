// format: "json" / a JSON schema -> a TokenFilter over the JsonMatcher: each step, every vocabulary
// piece is tried against a copy of the matcher state and the pieces that cannot continue a valid
// document get -inf.
#include <fmt/format.h>

#include <cmath>
#include <limits>

#include "sampling/json_grammar.h"
#include "server/api_common.h"

namespace qleap::server {

namespace {

class JsonFilter : public TokenFilter {
 public:
  JsonFilter(nlohmann::json schema, const Tokenizer& tok)
      : schema_(std::make_unique<nlohmann::json>(std::move(schema))),
        matcher_(schema_.get()),
        scratch_(matcher_) {
    const int n = tok.n_vocab();
    pieces_.resize(size_t(n));
    eog_.resize(size_t(n));
    for (int i = 0; i < n; ++i) {
      eog_[size_t(i)] = tok.is_eog(i);
      // Control tokens are not part of the text (the detokenizer drops them): never allowed.
      const TokenType ty = tok.token_type(i);
      if (ty != TokenType::kControl && ty != TokenType::kUnknown) pieces_[size_t(i)] = tok.token_to_piece(i);
    }
    eos_ = tok.eos();
  }

  void apply(float* logits, int n_vocab) override {
    const float ninf = -std::numeric_limits<float>::infinity();
    bool any = false;
    for (int i = 0; i < n_vocab && size_t(i) < pieces_.size(); ++i) {
      const std::string& p = pieces_[size_t(i)];
      bool ok;
      if (eog_[size_t(i)]) {
        ok = matcher_.complete();
      } else if (p.empty()) {
        ok = false;
      } else {
        scratch_ = matcher_;
        ok = scratch_.feed(p);
      }
      if (!ok) {
        logits[i] = ninf;
      } else {
        any = any || std::isfinite(logits[i]);
      }
    }
    // Nothing can continue (should not happen with byte-level vocabularies): allow ending.
    if (!any && eos_ >= 0 && eos_ < n_vocab) logits[eos_] = 0.0f;
  }

  void accept(int32_t token) override {
    if (token >= 0 && size_t(token) < pieces_.size() && !eog_[size_t(token)])
      matcher_.feed(pieces_[size_t(token)]);
  }

  bool complete() const override { return matcher_.complete(); }

 private:
  std::unique_ptr<nlohmann::json> schema_;  // stable address for the matcher
  JsonMatcher matcher_;
  JsonMatcher scratch_;
  std::vector<std::string> pieces_;
  std::vector<bool> eog_;
  int32_t eos_ = -1;
};

}  // namespace

std::unique_ptr<TokenFilter> make_format_filter(const nlohmann::json& format, const Tokenizer& tok) {
  if (format.is_null()) return nullptr;
  if (format.is_string()) {
    const std::string f = format.get<std::string>();
    if (f.empty()) return nullptr;
    if (f != "json")
      throw RequestError(400, fmt::format("invalid format '{}': use \"json\" or a JSON schema", f));
    return std::make_unique<JsonFilter>(nlohmann::json::object(), tok);
  }
  if (!format.is_object()) throw RequestError(400, "'format' must be \"json\" or a JSON schema object");
  try {
    validate_json_schema(format);
  } catch (const std::invalid_argument& e) {
    throw RequestError(400, fmt::format("invalid JSON schema in 'format': {}", e.what()));
  }
  return std::make_unique<JsonFilter>(format, tok);
}

}  // namespace qleap::server
