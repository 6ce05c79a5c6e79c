#include "runtime/passkey.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/timer.h"

namespace qleap {

namespace {

// The classic passkey-retrieval wording (Mohtashami & Jaggi, 2023), used by most long-context
// evaluations, so results are comparable with what users have seen elsewhere.
constexpr std::string_view kInstruction =
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. I will "
    "quiz you about the important information there.\n";
constexpr std::string_view kFiller =
    " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
constexpr std::string_view kQuestion = "\nWhat is the pass key? The pass key is";

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// First run of digits in s (empty when none).
std::string_view first_number(std::string_view s) {
  size_t b = 0;
  while (b < s.size() && !is_digit(s[b])) ++b;
  size_t e = b;
  while (e < s.size() && is_digit(s[e])) ++e;
  return s.substr(b, e - b);
}

}  // namespace

PasskeyPrompt make_passkey_prompt(const Tokenizer& tok, int n_tokens, double depth, const std::string& key) {
  if (!(depth >= 0.0 && depth <= 1.0))
    throw InvalidArgument(fmt::format("passkey: depth must be in [0, 1], got {}", depth));
  if (key.empty() || !std::all_of(key.begin(), key.end(), is_digit))
    throw InvalidArgument(fmt::format("passkey: the key must be digits, got '{}'", key));
  const std::vector<int32_t> head = tok.encode(kInstruction, tok.wants_bos(), false);
  const std::vector<int32_t> unit = tok.encode(kFiller, false, false);
  const std::vector<int32_t> needle = tok.encode(
      fmt::format(" The pass key is {}. Remember it. {} is the pass key.", key, key), false, false);
  const std::vector<int32_t> question = tok.encode(kQuestion, false, false);
  if (unit.empty()) throw InvalidArgument("passkey: the tokenizer encodes the filler to nothing");
  const int64_t fixed = int64_t(head.size() + needle.size() + question.size());
  const int64_t n_filler = int64_t(n_tokens) - fixed;
  if (n_filler < 2 * int64_t(unit.size())) {
    throw InvalidArgument(
        fmt::format("passkey: {} tokens leave no room for the filler (the instruction, needle "
                    "and question take {}; at least {} more are needed)",
                    n_tokens, fixed, 2 * unit.size()));
  }
  // The needle goes between two filler sentences (a repeat of the unit), at the boundary nearest the
  // depth asked; the filler after it is cut wherever the count is reached.
  const int64_t u = int64_t(unit.size());
  const int64_t whole_units = n_filler / u;
  const int64_t before_units =
      std::clamp<int64_t>(std::llround(depth * double(n_filler) / double(u)), 0, whole_units);
  PasskeyPrompt p;
  p.key = key;
  p.tokens.reserve(size_t(n_tokens));
  p.tokens = head;
  p.filler_begin = int(head.size());
  for (int64_t i = 0; i < before_units * u; ++i) p.tokens.push_back(unit[size_t(i % u)]);
  p.needle_pos = int(p.tokens.size());
  p.needle_len = int(needle.size());
  p.tokens.insert(p.tokens.end(), needle.begin(), needle.end());
  for (int64_t i = before_units * u; i < n_filler; ++i) p.tokens.push_back(unit[size_t(i % u)]);
  p.tokens.insert(p.tokens.end(), question.begin(), question.end());
  p.filler_tokens = int(n_filler);
  p.depth = double(before_units * u) / double(n_filler);
  return p;
}

std::string passkey_key(uint64_t seed, int trial, int digits) {
  if (digits < 1 || digits > 18) throw InvalidArgument(fmt::format("passkey: {} digits", digits));
  uint64_t x = seed ^ (uint64_t(uint32_t(trial)) * 0xD1B54A32D192ED03ull);
  uint64_t lo = 1;
  for (int i = 1; i < digits; ++i) lo *= 10;
  const uint64_t span = lo * 9;  // [10^(d-1), 10^d)
  return std::to_string(lo + splitmix64(x) % span);
}

bool passkey_found(std::string_view answer, std::string_view key) {
  return !key.empty() && first_number(answer) == key;
}

PasskeyTrial run_passkey(Session& s, const Tokenizer& tok, const PasskeyPrompt& p, int max_answer_tokens) {
  if (int(p.tokens.size()) + max_answer_tokens > s.n_ctx()) {
    throw InvalidArgument(
        fmt::format("passkey: {} prompt tokens + {} answer tokens do not fit the context of {}",
                    p.tokens.size(), max_answer_tokens, s.n_ctx()));
  }
  PasskeyTrial t;
  t.depth = p.depth;
  t.key = p.key;
  t.n_tokens = int(p.tokens.size());
  s.reset();
  Stopwatch sw;
  const std::vector<float>* logits = &s.eval(p.tokens);
  t.prompt_s = sw.elapsed();
  std::vector<int32_t> out;
  for (int i = 0; i < max_answer_tokens; ++i) {
    const float* l = logits->data();
    const int32_t next = int32_t(std::max_element(l, l + s.n_vocab()) - l);
    if (tok.is_eog(next)) break;
    out.push_back(next);
    const std::string text = tok.decode(out);
    // Stop once a number has started and ended: the answer is decided.
    const std::string_view num = first_number(text);
    if (!num.empty() && num.data() + num.size() < text.data() + text.size()) break;
    if (i + 1 < max_answer_tokens) logits = &s.eval({next});
  }
  t.answer = tok.decode(out);
  t.found = passkey_found(t.answer, p.key);
  return t;
}

}  // namespace qleap
