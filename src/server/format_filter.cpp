// format: "json" / a JSON schema -> a TokenFilter over the JsonMatcher. Each step, every
// vocabulary piece is tried against the matcher (pieces whose first byte cannot continue are
// skipped as a group), and a piece is allowed only when the document can still be completed
// within the tokens left after it: the matcher's min_remaining() counts the bytes still needed,
// and every byte has a token of its own in byte-level vocabularies, so the output closes in time
// even when the model would rather ramble (stories260K) instead of ending at the length limit
// with half a document.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <mutex>

#include "sampling/json_grammar.h"
#include "sampling/json_grammar_schema.h"
#include "server/api_common.h"

namespace qleap::server {

namespace {

// What the filter needs to know about a vocabulary, built once per tokenizer: each token's text,
// the tokens sorted by text (so pieces sharing a prefix are probed from one matcher state, and a
// prefix that fails skips every piece that starts with it), and which pieces are plain string
// characters (see JsonMatcher::FreeString).
struct VocabIndex {
  std::vector<std::string> pieces;  // by id; empty: never allowed
  std::vector<uint8_t> eog;
  std::vector<int> sorted;     // ids with text, by text
  std::vector<uint16_t> lcp;   // common prefix of sorted[i - 1] and sorted[i]
  std::vector<int> plain;      // ids of plain pieces
  std::vector<int> cps;        // by id: code points of a plain piece
  std::vector<int> not_plain;  // ids with text that are not plain
  size_t max_len = 0;
  int32_t eos = -1;
};

bool plain_piece(const std::string& p, int& cps) {
  cps = 0;
  size_t i = 0;
  while (i < p.size()) {
    const auto c = static_cast<unsigned char>(p[i]);
    if (c < 0x20 || c == '"' || c == '\\') return false;
    int n = c < 0x80                   ? 0
            : (c >= 0xC2 && c <= 0xDF) ? 1
            : (c >= 0xE0 && c <= 0xEF) ? 2
            : (c >= 0xF0 && c <= 0xF4) ? 3
                                       : -1;
    if (n < 0 || i + size_t(n) >= p.size() + (n == 0 ? 1 : 0)) return false;
    for (int k = 1; k <= n; ++k) {
      const auto b = static_cast<unsigned char>(p[i + size_t(k)]);
      unsigned lo = 0x80, hi = 0xBF;
      if (k == 1 && c == 0xE0) lo = 0xA0;
      if (k == 1 && c == 0xED) hi = 0x9F;
      if (k == 1 && c == 0xF0) lo = 0x90;
      if (k == 1 && c == 0xF4) hi = 0x8F;
      if (b < lo || b > hi) return false;
    }
    i += size_t(n) + 1;
    ++cps;
  }
  return !p.empty();
}

std::shared_ptr<const VocabIndex> build_index(const Tokenizer& tok) {
  auto v = std::make_shared<VocabIndex>();
  const int n = tok.n_vocab();
  v->pieces.resize(size_t(n));
  v->eog.resize(size_t(n));
  v->cps.assign(size_t(n), 0);
  for (int i = 0; i < n; ++i) {
    v->eog[size_t(i)] = tok.is_eog(i);
    // Control tokens are not part of the text (the detokenizer drops them): never allowed.
    const TokenType ty = tok.token_type(i);
    if (ty == TokenType::kControl || ty == TokenType::kUnknown || v->eog[size_t(i)]) continue;
    std::string p = tok.token_to_piece(i);
    if (p.empty()) continue;
    v->max_len = std::max(v->max_len, p.size());
    int cps = 0;
    if (plain_piece(p, cps)) {
      v->plain.push_back(i);
      v->cps[size_t(i)] = cps;
    } else {
      v->not_plain.push_back(i);
    }
    v->pieces[size_t(i)] = std::move(p);
    v->sorted.push_back(i);
  }
  std::sort(v->sorted.begin(), v->sorted.end(),
            [&](int a, int b) { return v->pieces[size_t(a)] < v->pieces[size_t(b)]; });
  v->lcp.assign(v->sorted.size(), 0);
  for (size_t i = 1; i < v->sorted.size(); ++i) {
    const std::string& a = v->pieces[size_t(v->sorted[i - 1])];
    const std::string& b = v->pieces[size_t(v->sorted[i])];
    size_t k = 0;
    while (k < a.size() && k < b.size() && a[k] == b[k]) ++k;
    v->lcp[i] = uint16_t(std::min<size_t>(k, 65535));
  }
  v->eos = tok.eos();
  return v;
}

// One index per vocabulary, shared by the requests of a model (and dropped with it).
std::shared_ptr<const VocabIndex> vocab_index(const Tokenizer& tok) {
  static std::mutex mu;
  static std::map<const Tokenizer*, std::weak_ptr<const VocabIndex>> cache;
  std::lock_guard<std::mutex> lk(mu);
  if (auto it = cache.find(&tok); it != cache.end()) {
    if (auto v = it->second.lock()) {
      // The same object, not a new tokenizer at a reused address.
      bool same = int(v->pieces.size()) == tok.n_vocab() && v->eos == tok.eos();
      for (int i = 0; same && i < tok.n_vocab(); i += std::max(1, tok.n_vocab() / 61)) {
        same = v->pieces[size_t(i)].empty() || v->pieces[size_t(i)] == tok.token_to_piece(i);
      }
      if (same) return v;
    }
  }
  std::erase_if(cache, [](const auto& e) { return e.second.expired(); });
  auto v = build_index(tok);
  cache[&tok] = v;
  return v;
}

class JsonFilter : public TokenFilter {
 public:
  JsonFilter(std::shared_ptr<const JsonSchema> schema, const Tokenizer& tok, int budget)
      : matcher_(std::move(schema)), vocab_(vocab_index(tok)), budget_(std::max(1, budget)) {}

  void apply(float* logits, int n_vocab) override {
    const float ninf = -std::numeric_limits<float>::infinity();
    const VocabIndex& v = *vocab_;
    const int remaining = budget_ - accepted_;  // tokens left, this one included
    const bool complete = matcher_.complete();
    allowed_.clear();
    JsonMatcher::FreeString fs;
    if (matcher_.free_string(fs)) {
      // Inside free string content: plain pieces continue it without being probed.
      for (int id : v.plain) {
        const int c = v.cps[size_t(id)];
        if (fs.max_len >= 0 && fs.count + c > fs.max_len) continue;
        allowed_.emplace_back(id, fs.remaining - std::min(c, std::max(0, fs.min_len - fs.count)));
      }
      for (int id : v.not_plain) {
        int need = 0;
        if (matcher_.probe(v.pieces[size_t(id)], &need)) allowed_.emplace_back(id, need);
      }
    } else {
      probe_sorted(v);
    }
    int min_need = JsonMatcher::kNever;
    for (const auto& a : allowed_) min_need = std::min(min_need, a.second);
    // Within budget: pieces after which the document can still be finished in time. Past it (a
    // budget smaller than the schema's shortest document): the pieces that get closest.
    const int threshold = std::max(remaining - 1, min_need);
    keep_.assign(size_t(n_vocab), 0);
    for (const auto& [id, need] : allowed_) {
      if (need <= threshold && id < n_vocab) keep_[size_t(id)] = 1;
    }
    bool any = false;
    for (int i = 0; i < n_vocab; ++i) {
      const bool ok = size_t(i) < v.eog.size() && v.eog[size_t(i)] ? complete : keep_[size_t(i)] != 0;
      if (!ok) {
        logits[i] = ninf;
      } else {
        any = any || std::isfinite(logits[i]);
      }
    }
    // Nothing can continue (a vocabulary without the needed bytes): allow ending.
    if (!any && v.eos >= 0 && v.eos < n_vocab) logits[v.eos] = 0.0f;
  }

  void accept(int32_t token) override {
    ++accepted_;
    const VocabIndex& v = *vocab_;
    if (token >= 0 && size_t(token) < v.pieces.size() && !v.eog[size_t(token)])
      matcher_.feed(v.pieces[size_t(token)]);
  }

  bool complete() const override { return matcher_.complete(); }

 private:
  // Every piece, in text order: states_[k] is the matcher after the first k bytes of the current
  // piece, reused for the next piece as far as they share a prefix.
  void probe_sorted(const VocabIndex& v) {
    states_.resize(v.max_len + 1);
    states_[0] = matcher_;
    size_t valid = 0;   // states_[0..valid] hold the current piece's prefixes
    size_t failed = 0;  // > 0: the previous piece's first `failed` bytes cannot continue
    for (size_t i = 0; i < v.sorted.size(); ++i) {
      const int id = v.sorted[i];
      const std::string& p = v.pieces[size_t(id)];
      const size_t l = v.lcp[i];
      if (failed > 0 && l >= failed) continue;
      failed = 0;
      valid = std::min(valid, l);
      bool ok = true;
      for (size_t k = valid; k < p.size(); ++k) {
        states_[k + 1] = states_[k];
        if (!states_[k + 1].feed(std::string_view(&p[k], 1))) {
          failed = k + 1;
          ok = false;
          break;
        }
        valid = k + 1;
      }
      if (ok) allowed_.emplace_back(id, states_[p.size()].min_remaining());
    }
  }

  JsonMatcher matcher_;
  std::shared_ptr<const VocabIndex> vocab_;
  int budget_;
  int accepted_ = 0;
  std::vector<JsonMatcher> states_;
  std::vector<std::pair<int, int>> allowed_;
  std::vector<uint8_t> keep_;
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
