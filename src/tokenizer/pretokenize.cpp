#include "tokenizer/pretokenize.h"

#include <algorithm>
#include <cstdint>

#include "tokenizer/unicode.h"

namespace qleap {
namespace {

// The only distinctions the regexes make: \p{L}, \p{N}, \s and everything else.
enum Cls : uint8_t { kL, kN, kWs, kOther };

struct Decoded {
  std::vector<uint32_t> cp;
  std::vector<uint8_t> cls;
  std::vector<uint32_t> off;  // byte offset of each code point, plus the end
};

void decode(std::string_view text, Decoded& d) {
  d.cp.clear();
  d.cls.clear();
  d.off.clear();
  size_t i = 0;
  while (i < text.size()) {
    size_t len = 1;
    const uint32_t c = utf8_decode(text.data() + i, text.size() - i, len);
    d.off.push_back(uint32_t(i));
    d.cp.push_back(c);
    Cls k = kOther;
    if (is_whitespace(c)) {
      k = kWs;
    } else {
      const UCat cat = ucat(c);
      k = cat == UCat::kLetter ? kL : cat == UCat::kNumber ? kN : kOther;
    }
    d.cls.push_back(k);
    i += len;
  }
  d.off.push_back(uint32_t(text.size()));
}

bool is_nl(uint32_t c) { return c == '\r' || c == '\n'; }

// Matches 's 't 're 've 'm 'll 'd at i; returns the length in code points or 0.
size_t contraction(const Decoded& d, size_t i, size_t n, bool ignore_case) {
  if (d.cp[i] != '\'' || i + 1 >= n) return 0;
  auto low = [&](uint32_t c) -> uint32_t {
    if (!ignore_case) return c;
    if (c >= 'A' && c <= 'Z') return c + 32;
    if (c == 0x17F) return 's';  // LATIN SMALL LETTER LONG S case-folds to 's'
    return c;
  };
  const uint32_t a = low(d.cp[i + 1]);
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (i + 2 >= n) return 0;
  const uint32_t b = low(d.cp[i + 2]);
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  return 0;
}

size_t run_of(const Decoded& d, size_t j, size_t n, Cls k) {
  while (j < n && d.cls[j] == k) ++j;
  return j;
}

// \s+(?!\S)|\s+ at a whitespace code point: a run followed by a non-space gives its last space to
// the next piece (so " word" stays together), unless the run is a single space.
size_t trailing_space_rule(const Decoded& d, size_t i, size_t n) {
  const size_t e = run_of(d, i, n, kWs);
  if (e == n) return e - i;
  return e - i >= 2 ? e - i - 1 : 1;
}

size_t match_gpt2(const Decoded& d, size_t i, size_t n) {
  if (size_t m = contraction(d, i, n, false)) return m;
  const size_t s = (d.cp[i] == ' ' && i + 1 < n) ? i + 1 : i;  // optional leading space
  const auto k = Cls(d.cls[s]);
  if (k == kL || k == kN || k == kOther) return run_of(d, s, n, k) - i;
  return trailing_space_rule(d, i, n);
}

size_t match_llama3(const Decoded& d, size_t i, size_t n, size_t max_digits) {
  if (size_t m = contraction(d, i, n, true)) return m;
  const auto k = Cls(d.cls[i]);
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (k == kL) return run_of(d, i, n, kL) - i;
  if (!is_nl(d.cp[i]) && k != kN && i + 1 < n && d.cls[i + 1] == kL) return run_of(d, i + 1, n, kL) - i;
  // \p{N}{1,3} (or \p{N})
  if (k == kN) return std::min(run_of(d, i, n, kN) - i, max_digits);
  // ?[^\s\p{L}\p{N}]+[\r\n]*
  const size_t s = (d.cp[i] == ' ' && i + 1 < n) ? i + 1 : i;
  if (d.cls[s] == kOther) {
    size_t e = run_of(d, s, n, kOther);
    while (e < n && is_nl(d.cp[e])) ++e;
    return e - i;
  }
  // \s*[\r\n]+ : the whitespace run up to and including its last newline.
  const size_t e = run_of(d, i, n, kWs);
  for (size_t p = e; p > i; --p) {
    if (is_nl(d.cp[p - 1])) return p - i;
  }
  return trailing_space_rule(d, i, n);
}

template <typename Match>
void split_range(const Decoded& d, size_t b, size_t e, std::string_view text, std::vector<std::string_view>& out,
                 Match match) {
  size_t i = b;
  while (i < e) {
    const size_t len = match(d, i, e);
    out.push_back(text.substr(d.off[i], d.off[i + len] - d.off[i]));
    i += len;
  }
}

}  // namespace

void pretokenize(PreTokenizer kind, std::string_view text, std::vector<std::string_view>& out) {
  thread_local Decoded d;
  decode(text, d);
  const size_t n = d.cp.size();
  switch (kind) {
    case PreTokenizer::kGpt2:
      split_range(d, 0, n, text, out, match_gpt2);
      break;
    case PreTokenizer::kLlama3:
      split_range(d, 0, n, text, out,
                  [](const Decoded& dd, size_t i, size_t e) { return match_llama3(dd, i, e, 3); });
      break;
    case PreTokenizer::kQwen2:
      split_range(d, 0, n, text, out,
                  [](const Decoded& dd, size_t i, size_t e) { return match_llama3(dd, i, e, 1); });
      break;
    case PreTokenizer::kDigitsGpt2: {
      size_t i = 0;
      while (i < n) {
        if (d.cls[i] == kN) {
          out.push_back(text.substr(d.off[i], d.off[i + 1] - d.off[i]));
          ++i;
          continue;
        }
        size_t e = i;
        while (e < n && d.cls[e] != kN) ++e;
        split_range(d, i, e, text, out, match_gpt2);  // the regex sees each stretch on its own
        i = e;
      }
      break;
    }
  }
}

}  // namespace qleap
