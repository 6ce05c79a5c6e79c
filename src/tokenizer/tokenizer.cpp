#include "tokenizer/tokenizer.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <queue>

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace qleap {
namespace {

constexpr std::string_view kSpmSpace = "\xE2\x96\x81";  // U+2581 LOWER ONE EIGHTH BLOCK

// GPT-2's reversible byte -> code point map: printable bytes map to themselves, the rest to
// U+0100 onwards, so every byte sequence becomes printable text.
struct ByteUnicode {
  uint32_t byte_to_cp[256];
  std::unordered_map<uint32_t, uint8_t> cp_to_byte;
  ByteUnicode() {
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
      byte_to_cp[b] = printable ? b : next++;
      cp_to_byte[byte_to_cp[b]] = uint8_t(b);
    }
  }
};
const ByteUnicode& byte_unicode() {
  static const ByteUnicode bu;
  return bu;
}

// Element i of a numeric GGUF array as int64, whichever integer width the file used.
int64_t array_int(const GgufValue& v, size_t i) {
  if (!v.arr_i.empty()) return v.arr_i[i];
  if (!v.arr_u.empty()) return int64_t(v.arr_u[i]);
  if (!v.arr_f.empty()) return int64_t(v.arr_f[i]);
  throw FormatError("expected a numeric array");
}

const GgufValue* find_array(const GgufFile& f, std::string_view key, GgufType elem, bool numeric) {
  const GgufValue* v = f.find(key);
  if (!v) return nullptr;
  const bool ok =
      v->is_array() && (numeric ? (v->elem_type != GgufType::STRING && v->elem_type != GgufType::ARRAY &&
                                   v->elem_type != GgufType::BOOL)
                                : v->elem_type == elem);
  if (!ok) throw FormatError(fmt::format("{} has the wrong type", key));
  return v;
}

// Optional token id: absent or -1 (also written as 0xFFFFFFFF) means none; anything else must be
// a valid index.
int32_t optional_id(const GgufFile& f, std::string_view key, size_t n_vocab) {
  const GgufValue* v = f.find(key);
  if (!v) return -1;
  const int64_t id = v->as_int();
  if (id == -1 || id == 0xFFFFFFFFll) return -1;
  if (id < 0 || uint64_t(id) >= n_vocab) {
    throw FormatError(fmt::format("{} = {} is outside the vocabulary of {} tokens", key, id, n_vocab));
  }
  return int32_t(id);
}

// Maps tokenizer.ggml.pre to a pre-tokenizer; false when the name is unknown (GPT-2 is used).
bool resolve_pre(const std::string& pre, PreTokenizer& kind, bool& ignore_merges) {
  ignore_merges = false;
  if (pre == "default" || pre == "gpt2" || pre == "gpt-2" || pre == "olmo") {
    kind = PreTokenizer::kGpt2;
  } else if (pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3" || pre == "falcon3") {
    kind = PreTokenizer::kLlama3;
    ignore_merges = true;  // Llama 3's tokenizer.json sets ignore_merges
  } else if (pre == "smaug-bpe" || pre == "dbrx") {
    kind = PreTokenizer::kLlama3;
  } else if (pre == "qwen2" || pre == "deepseek-r1-qwen" || pre == "stablelm2") {
    kind = PreTokenizer::kQwen2;
  } else if (pre == "smollm" || pre == "starcoder" || pre == "refact") {
    kind = PreTokenizer::kDigitsGpt2;
  } else if (pre == "deepseek-llm") {
    kind = PreTokenizer::kDeepseekLlm;
  } else {
    kind = PreTokenizer::kGpt2;
    return false;
  }
  return true;
}

bool is_eog_text(std::string_view s) {
  static const char* const kNames[] = {
      "<|im_end|>", "<|eot_id|>",      "<end_of_turn>", "<|endoftext|>", "<|end|>",
      "<|eom_id|>", "<|end_of_text|>", "<|return|>",    "<|call|>",      "<｜end▁of▁sentence｜>"};
  for (const char* n : kNames) {
    if (s == n) return true;
  }
  return false;
}

}  // namespace

Tokenizer Tokenizer::from_gguf(const GgufFile& f) {
  Tokenizer t;
  t.model_ = f.get_string("tokenizer.ggml.model");
  if (t.model_.empty()) throw FormatError("tokenizer.ggml.model is missing");
  if (t.model_ == "llama") {
    t.spm_ = true;
  } else if (t.model_ != "gpt2") {
    throw Unsupported(
        fmt::format("tokenizer model '{}' is not supported (only 'llama' and 'gpt2')", t.model_));
  }

  const GgufValue* tokens = find_array(f, "tokenizer.ggml.tokens", GgufType::STRING, false);
  if (!tokens || tokens->arr_s.empty()) throw FormatError("tokenizer.ggml.tokens is missing or empty");
  if (tokens->arr_s.size() > size_t(INT32_MAX)) throw FormatError("tokenizer.ggml.tokens is too large");
  t.tokens_ = tokens->arr_s;
  const size_t n = t.tokens_.size();

  t.scores_.assign(n, 0.0f);
  if (const GgufValue* s = find_array(f, "tokenizer.ggml.scores", GgufType::FLOAT32, true)) {
    if (s->array_size() != n) {
      throw FormatError(
          fmt::format("tokenizer.ggml.scores has {} entries for {} tokens", s->array_size(), n));
    }
    for (size_t i = 0; i < n; ++i)
      t.scores_[i] = s->arr_f.empty() ? float(array_int(*s, i)) : float(s->arr_f[i]);
  }
  t.types_.assign(n, TokenType::kNormal);
  if (const GgufValue* ty = find_array(f, "tokenizer.ggml.token_type", GgufType::INT32, true)) {
    if (ty->array_size() != n) {
      throw FormatError(
          fmt::format("tokenizer.ggml.token_type has {} entries for {} tokens", ty->array_size(), n));
    }
    for (size_t i = 0; i < n; ++i) {
      const int64_t v = array_int(*ty, i);
      if (v < 0 || v > 6) throw FormatError(fmt::format("token {} has invalid type {}", i, v));
      t.types_[i] = v == 0 ? TokenType::kNormal : TokenType(v);  // 0 = undefined in some converters
    }
  }

  t.token_index_.reserve(n);
  for (size_t i = 0; i < n; ++i) t.token_index_.emplace(t.tokens_[i], int32_t(i));  // first wins

  t.bos_ = optional_id(f, "tokenizer.ggml.bos_token_id", n);
  t.eos_ = optional_id(f, "tokenizer.ggml.eos_token_id", n);
  t.unk_ = optional_id(f, "tokenizer.ggml.unknown_token_id", n);
  const int32_t eot = optional_id(f, "tokenizer.ggml.eot_token_id", n);
  const int32_t eom = optional_id(f, "tokenizer.ggml.eom_token_id", n);
  t.add_bos_ = f.get_bool("tokenizer.ggml.add_bos_token", t.spm_);
  t.add_space_prefix_ = t.spm_ && f.get_bool("tokenizer.ggml.add_space_prefix", true);
  t.pre_ = f.get_string("tokenizer.ggml.pre");

  std::fill(std::begin(t.byte_tokens_), std::end(t.byte_tokens_), -1);
  std::fill(std::begin(t.byte_char_tokens_), std::end(t.byte_char_tokens_), -1);
  if (t.spm_) {
    if (t.unk_ < 0) {
      if (auto it = t.token_index_.find("<unk>"); it != t.token_index_.end()) t.unk_ = it->second;
    }
    for (int b = 0; b < 256; ++b) {
      if (auto it = t.token_index_.find(fmt::format("<0x{:02X}>", b)); it != t.token_index_.end()) {
        t.byte_tokens_[b] = it->second;
      }
    }
  } else {
    if (!resolve_pre(t.pre_, t.pre_kind_, t.ignore_merges_)) {
      t.warning_ = t.pre_.empty() ? std::string("tokenizer.ggml.pre is missing")
                                  : fmt::format("unknown tokenizer.ggml.pre '{}'", t.pre_);
      t.warning_ +=
          ": using the GPT-2 pre-tokenizer, which may split text differently from the model's own "
          "tokenizer";
      std::fprintf(stderr, "qleap: warning: %s\n", t.warning_.c_str());
    }
    const ByteUnicode& bu = byte_unicode();
    for (int b = 0; b < 256; ++b) {
      std::string s;
      utf8_append(bu.byte_to_cp[b], s);
      if (auto it = t.token_index_.find(s); it != t.token_index_.end()) t.byte_char_tokens_[b] = it->second;
    }
    const GgufValue* merges = find_array(f, "tokenizer.ggml.merges", GgufType::STRING, false);
    if (!merges) throw FormatError("tokenizer.ggml.merges is missing (required for a gpt2 tokenizer)");
    t.merges_.reserve(merges->arr_s.size());
    std::string joined;
    for (size_t r = 0; r < merges->arr_s.size(); ++r) {
      const std::string& m = merges->arr_s[r];
      const size_t sp = m.find(' ', 1);
      if (sp == std::string::npos) throw FormatError(fmt::format("merge {} '{}' has no separator", r, m));
      const std::string_view a(m.data(), sp), b(m.data() + sp + 1, m.size() - sp - 1);
      joined.assign(a);
      joined.append(b);
      const auto ia = t.token_index_.find(a);
      const auto ib = t.token_index_.find(b);
      const auto ij = t.token_index_.find(joined);
      if (ia == t.token_index_.end() || ib == t.token_index_.end() || ij == t.token_index_.end()) {
        throw FormatError(fmt::format("merge {} '{}' refers to a token that is not in the vocabulary", r, m));
      }
      const uint64_t key = (uint64_t(uint32_t(ia->second)) << 32) | uint32_t(ib->second);
      t.merges_.emplace(key, Merge{int32_t(r), ij->second});  // a repeated pair keeps its best rank
    }
  }

  // Strings split out of the text before tokenization (see encode()).
  for (size_t i = 0; i < n; ++i) {
    const TokenType ty = t.types_[i];
    if ((ty == TokenType::kControl || ty == TokenType::kUserDefined || ty == TokenType::kUnknown) &&
        !t.tokens_[i].empty()) {
      t.specials_by_byte_[uint8_t(t.tokens_[i][0])].emplace_back(t.tokens_[i], int32_t(i));
    }
  }
  for (auto& bucket : t.specials_by_byte_) {
    std::stable_sort(bucket.begin(), bucket.end(),
                     [](const auto& x, const auto& y) { return x.first.size() > y.first.size(); });
  }

  t.pieces_.resize(n);
  for (size_t i = 0; i < n; ++i) t.pieces_[i] = t.compute_piece(i);

  t.eog_.assign(n, false);
  for (int32_t id : {t.eos_, eot, eom}) {
    if (id >= 0) t.eog_[size_t(id)] = true;
  }
  for (size_t i = 0; i < n; ++i) {
    const TokenType ty = t.types_[i];
    if ((ty == TokenType::kControl || ty == TokenType::kUserDefined) && is_eog_text(t.tokens_[i]))
      t.eog_[i] = true;
  }
  // Harmony (gpt-oss): <|end|> closes one message (the reasoning) and the turn goes on; <|return|> and
  // <|call|> end it.
  if (const auto ret = t.token_id("<|return|>"), end = t.token_id("<|end|>"), start = t.token_id("<|start|>");
      ret && end && start)
    t.eog_[size_t(*end)] = false;
  return t;
}

TokenType Tokenizer::token_type(int32_t id) const {
  return (id >= 0 && size_t(id) < types_.size()) ? types_[size_t(id)] : TokenType::kUnused;
}

bool Tokenizer::is_eog(int32_t id) const {
  return id >= 0 && size_t(id) < eog_.size() && eog_[size_t(id)];
}

std::optional<int32_t> Tokenizer::token_id(std::string_view piece) const {
  const auto it = token_index_.find(piece);
  if (it == token_index_.end()) return std::nullopt;
  return it->second;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos, bool parse_special) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 2);
  if (add_bos && wants_bos()) out.push_back(bos_);

  // Split out special-token strings (leftmost, then longest), encode the text between them.
  size_t start = 0;  // start of the pending plain-text fragment
  size_t i = 0;
  while (i < text.size()) {
    int32_t hit = -1;
    size_t hit_len = 0;
    for (const auto& [s, id] : specials_by_byte_[uint8_t(text[i])]) {
      if (!parse_special && types_[size_t(id)] != TokenType::kUserDefined) continue;
      if (text.compare(i, s.size(), s) == 0) {
        hit = id;
        hit_len = s.size();
        break;  // longest first
      }
    }
    if (hit < 0) {
      ++i;
      continue;
    }
    if (i > start) encode_text(text.substr(start, i - start), start == 0, out);
    out.push_back(hit);
    i += hit_len;
    start = i;
  }
  if (start < text.size()) encode_text(text.substr(start), start == 0, out);
  return out;
}

void Tokenizer::encode_text(std::string_view text, bool at_start, std::vector<int32_t>& out) const {
  if (spm_) {
    encode_spm(text, at_start, out);
    return;
  }
  thread_local std::vector<std::string_view> words;
  words.clear();
  pretokenize(pre_kind_, text, words);
  for (std::string_view w : words) encode_bpe_word(w, out);
}

namespace {

struct Symbol {
  int32_t prev, next;
  uint32_t pos, len;  // byte range in the (escaped) text
  int32_t id;         // byte-level BPE: current token id
};

}  // namespace

void Tokenizer::encode_spm(std::string_view text, bool at_start, std::vector<int32_t>& out) const {
  // Spaces become U+2581 and the fragment gets one more in front (see SpmPrefixMode for where).
  std::string s;
  s.reserve(text.size() + 8);
  bool prefix = add_space_prefix_ && !text.empty();
  if (spm_prefix_mode_ == SpmPrefixMode::kFirstOnly) {
    prefix = prefix && at_start && text[0] != ' ' && !text.starts_with(kSpmSpace);
  }
  if (prefix) s.append(kSpmSpace);
  for (char c : text) {
    if (c == ' ') {
      s.append(kSpmSpace);
    } else {
      s += c;
    }
  }

  std::vector<Symbol> sym;
  for (size_t i = 0; i < s.size();) {
    size_t len = 1;
    utf8_decode(s.data() + i, s.size() - i, len);  // an invalid byte is its own symbol (byte fallback)
    sym.push_back({int32_t(sym.size()) - 1, int32_t(sym.size()) + 1, uint32_t(i), uint32_t(len), -1});
    i += len;
  }
  if (sym.empty()) return;
  sym.back().next = -1;

  // Greedy: repeatedly merge the adjacent pair whose concatenation is the highest-scoring token
  // (leftmost on ties). Stale queue entries are detected by the recorded combined length.
  struct Cand {
    float score;
    int32_t left;
    uint32_t len;
    bool operator<(const Cand& o) const { return score != o.score ? score < o.score : left > o.left; }
  };
  std::priority_queue<Cand> pq;
  auto try_pair = [&](int32_t l) {
    if (l < 0 || sym[size_t(l)].next < 0) return;
    const Symbol& a = sym[size_t(l)];
    const Symbol& b = sym[size_t(a.next)];
    const auto it = token_index_.find(std::string_view(s.data() + a.pos, a.len + b.len));
    if (it == token_index_.end()) return;
    pq.push({scores_[size_t(it->second)], l, a.len + b.len});
  };
  for (size_t i = 0; i + 1 < sym.size(); ++i) try_pair(int32_t(i));
  while (!pq.empty()) {
    const Cand c = pq.top();
    pq.pop();
    Symbol& a = sym[size_t(c.left)];
    if (a.len == 0 || a.next < 0) continue;
    Symbol& b = sym[size_t(a.next)];
    if (a.len + b.len != c.len) continue;
    a.len += b.len;
    b.len = 0;
    a.next = b.next;
    if (a.next >= 0) sym[size_t(a.next)].prev = c.left;
    try_pair(a.prev);
    try_pair(c.left);
  }
  for (int32_t i = 0; i >= 0; i = sym[size_t(i)].next) {
    const Symbol& a = sym[size_t(i)];
    const auto it = token_index_.find(std::string_view(s.data() + a.pos, a.len));
    if (it != token_index_.end()) {
      out.push_back(it->second);
      continue;
    }
    bool all_bytes = true;
    for (uint32_t k = 0; k < a.len; ++k) all_bytes &= byte_tokens_[uint8_t(s[a.pos + k])] >= 0;
    if (all_bytes) {
      for (uint32_t k = 0; k < a.len; ++k) out.push_back(byte_tokens_[uint8_t(s[a.pos + k])]);
    } else if (unk_ >= 0) {
      out.push_back(unk_);
    }
  }
}

void Tokenizer::encode_bpe_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_ || word.size() == 1) {
    // A word that is itself a token is emitted whole (HF ignore_merges; trivially so for one byte).
    std::string mapped;
    for (char c : word) utf8_append(byte_unicode().byte_to_cp[uint8_t(c)], mapped);
    const auto it = token_index_.find(mapped);
    if (it != token_index_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  thread_local std::vector<Symbol> sym;
  sym.clear();
  for (size_t i = 0; i < word.size(); ++i) {
    sym.push_back({int32_t(i) - 1, int32_t(i) + 1, uint32_t(i), 1, byte_char_tokens_[uint8_t(word[i])]});
  }
  sym.back().next = -1;

  struct Cand {
    int32_t rank;
    int32_t left;
    int32_t lid, rid;
    bool operator<(const Cand& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  thread_local std::vector<Cand> heap;
  heap.clear();
  auto try_pair = [&](int32_t l) {
    if (l < 0) return;
    const Symbol& a = sym[size_t(l)];
    if (a.next < 0 || a.id < 0) return;
    const int32_t rid = sym[size_t(a.next)].id;
    if (rid < 0) return;
    const auto it = merges_.find((uint64_t(uint32_t(a.id)) << 32) | uint32_t(rid));
    if (it == merges_.end()) return;
    heap.push_back({it->second.rank, l, a.id, rid});
    std::push_heap(heap.begin(), heap.end());
  };
  for (size_t i = 0; i + 1 < sym.size(); ++i) try_pair(int32_t(i));
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end());
    const Cand c = heap.back();
    heap.pop_back();
    Symbol& a = sym[size_t(c.left)];
    if (a.len == 0 || a.id != c.lid || a.next < 0) continue;
    Symbol& b = sym[size_t(a.next)];
    if (b.id != c.rid) continue;
    a.id = merges_.at((uint64_t(uint32_t(c.lid)) << 32) | uint32_t(c.rid)).result;
    a.len += b.len;
    b.len = 0;
    a.next = b.next;
    if (a.next >= 0) sym[size_t(a.next)].prev = c.left;
    try_pair(a.prev);
    try_pair(c.left);
  }
  for (int32_t i = 0; i >= 0; i = sym[size_t(i)].next) {
    const int32_t id = sym[size_t(i)].id;
    // A byte whose character is missing from the vocabulary (SmolLM2 lacks a few control and
    // never-valid UTF-8 bytes) is dropped, as HF's BPE does without an unk token; emitting unk
    // would put <|endoftext|> into the prompt for such models.
    if (id >= 0) out.push_back(id);
  }
}

std::string Tokenizer::compute_piece(size_t id) const {
  const std::string& text = tokens_[id];
  const TokenType ty = types_[id];
  if (ty == TokenType::kControl || ty == TokenType::kUnknown) return text;
  std::string out;
  if (spm_) {
    if (ty == TokenType::kByte) {
      for (int b = 0; b < 256; ++b) {
        if (byte_tokens_[b] == int32_t(id)) return std::string(1, char(b));
      }
    }
    for (size_t i = 0; i < text.size();) {
      if (text.compare(i, kSpmSpace.size(), kSpmSpace) == 0) {
        out += ' ';
        i += kSpmSpace.size();
      } else {
        out += text[i++];
      }
    }
    return out;
  }
  if (ty == TokenType::kUserDefined) return text;
  const auto& map = byte_unicode().cp_to_byte;
  for (size_t i = 0; i < text.size();) {
    size_t len = 1;
    const uint32_t cp = utf8_decode(text.data() + i, text.size() - i, len);
    const auto it = map.find(cp);
    if (it != map.end()) {
      out += char(it->second);
    } else {
      out.append(text, i, len);  // not a byte-level character: keep it as is
    }
    i += len;
  }
  return out;
}

std::string Tokenizer::token_to_piece(int32_t id) const {
  return (id >= 0 && size_t(id) < pieces_.size()) ? pieces_[size_t(id)] : std::string();
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  std::string out;
  for (int32_t id : ids) {
    const TokenType ty = token_type(id);
    if (skip_special && (ty == TokenType::kControl || ty == TokenType::kUnknown)) continue;
    if (id >= 0 && size_t(id) < pieces_.size()) out += pieces_[size_t(id)];
  }
  if (add_space_prefix_ && !out.empty() && out[0] == ' ') out.erase(0, 1);  // the prefix encode added
  return utf8_sanitize(out);
}

std::string StreamDecoder::push(int32_t id) {
  const TokenType ty = tok_.token_type(id);
  if (ty == TokenType::kControl || ty == TokenType::kUnknown) return {};
  std::string piece = tok_.token_to_piece(id);
  if (!started_ && !piece.empty()) {
    started_ = true;
    if (tok_.add_space_prefix() && piece[0] == ' ') piece.erase(0, 1);
  }
  pending_ += piece;
  // Emit everything except an incomplete (but so far valid) sequence at the very end; invalid
  // bytes become U+FFFD exactly as decode() does.
  std::string out;
  size_t i = 0;
  while (i < pending_.size()) {
    size_t bad = 1;
    bool truncated = false;
    const size_t len = utf8_check(pending_.data() + i, pending_.size() - i, bad, truncated);
    if (len) {
      out.append(pending_, i, len);
      i += len;
    } else if (truncated) {
      break;
    } else {
      out += "\xEF\xBF\xBD";
      i += bad;
    }
  }
  pending_.erase(0, i);
  return out;
}

std::string StreamDecoder::flush() {
  // Only an incomplete sequence can remain; like a lossy UTF-8 decode it becomes one U+FFFD.
  std::string out;
  if (!pending_.empty()) utf8_append(0xFFFD, out);
  pending_.clear();
  return out;
}

}  // namespace qleap
