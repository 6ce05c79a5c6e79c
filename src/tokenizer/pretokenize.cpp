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

bool is_nl(uint32_t c) {
  return c == '\r' || c == '\n';
}

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
void split_range(const Decoded& d, size_t b, size_t e, std::string_view text,
                 std::vector<std::string_view>& out, Match match) {
  size_t i = b;
  while (i < e) {
    const size_t len = match(d, i, e);
    out.push_back(text.substr(d.off[i], d.off[i + len] - d.off[i]));
    i += len;
  }
}

// DeepSeek LLM character classes, as code point ranges (the tokenizer.json spells them as
// character ranges; a few endpoints such as U+2126 OHM SIGN are not in NFC form, so they are
// written here as numbers).
struct CpRange {
  uint32_t lo, hi;
};
constexpr CpRange kDsLetters[] = {
    {0x41, 0x5A},       {0x61, 0x7A},       {0xB5, 0xB5},       {0xC0, 0xD6},       {0xD8, 0xF6},
    {0xF8, 0x1BA},      {0x1BC, 0x1BF},     {0x1C4, 0x293},     {0x295, 0x2AF},     {0x370, 0x373},
    {0x376, 0x377},     {0x37B, 0x37D},     {0x37F, 0x37F},     {0x386, 0x386},     {0x388, 0x38A},
    {0x38C, 0x38C},     {0x38E, 0x3A1},     {0x3A3, 0x3F5},     {0x3F7, 0x481},     {0x48A, 0x52F},
    {0x531, 0x556},     {0x10A0, 0x10C5},   {0x13A0, 0x13F5},   {0x13F8, 0x13FD},   {0x1C90, 0x1CBA},
    {0x1CBD, 0x1CBF},   {0x1D00, 0x1D2B},   {0x1D6B, 0x1D77},   {0x1D79, 0x1D9A},   {0x1E00, 0x1F15},
    {0x1F18, 0x1F1D},   {0x1F20, 0x1F45},   {0x1F48, 0x1F4D},   {0x1F50, 0x1F57},   {0x1F59, 0x1F59},
    {0x1F5B, 0x1F5B},   {0x1F5D, 0x1F5D},   {0x1F5F, 0x1F7D},   {0x1F80, 0x1FB4},   {0x1FB6, 0x1FBC},
    {0x1FBE, 0x1FBE},   {0x1FC2, 0x1FC4},   {0x1FC6, 0x1FCC},   {0x1FD0, 0x1FD3},   {0x1FD6, 0x1FDB},
    {0x1FE0, 0x1FEC},   {0x1FF2, 0x1FF4},   {0x1FF6, 0x1FFC},   {0x2102, 0x2102},   {0x2107, 0x2107},
    {0x210A, 0x2113},   {0x2115, 0x2115},   {0x2119, 0x211D},   {0x2124, 0x2124},   {0x2126, 0x2126},
    {0x2128, 0x2128},   {0x212A, 0x212D},   {0x212F, 0x2134},   {0x2139, 0x2139},   {0x213C, 0x213F},
    {0x2145, 0x2149},   {0x214E, 0x214E},   {0x2183, 0x2184},   {0x2C00, 0x2C7B},   {0x2C7E, 0x2CE4},
    {0x2CEB, 0x2CEE},   {0x2CF2, 0x2CF3},   {0xA640, 0xA66D},   {0xA680, 0xA69B},   {0xA722, 0xA76F},
    {0xA771, 0xA787},   {0xA78B, 0xA78E},   {0xAB70, 0xABBF},   {0xFB00, 0xFB06},   {0xFB13, 0xFB17},
    {0xFF21, 0xFF3A},   {0xFF41, 0xFF5A},   {0x10400, 0x1044F}, {0x104B0, 0x104D3}, {0x104D8, 0x104FB},
    {0x10C80, 0x10CB2}, {0x10CC0, 0x10CF2}, {0x118A0, 0x118DF}, {0x1E900, 0x1E943},
};
constexpr CpRange kDsPunct[] = {{0x21, 0x2F},     {0x3A, 0x7E},     {0xFF01, 0xFF0F},
                                {0xFF1A, 0xFF5E}, {0x2018, 0x201F}, {0x3000, 0x3002}};
constexpr CpRange kDsCjk[] = {{0x4E00, 0x9FA5}, {0x800, 0x4E00}, {0xAC00, 0xD7FF}};

template <size_t N>
bool in_ranges(const CpRange (&r)[N], uint32_t c) {
  for (const CpRange& x : r) {
    if (c >= x.lo && c <= x.hi) return true;
  }
  return false;
}

using Range = std::pair<uint32_t, uint32_t>;  // code point indices [first, second)

// Isolating split of every piece: `next(d, p, e)` returns the match starting at p, or {p, p}
// when none starts there; the text between matches becomes pieces of its own.
template <typename Next>
void isolate(const Decoded& d, std::vector<Range>& pieces, Next next) {
  std::vector<Range> out;
  out.reserve(pieces.size() * 2);
  for (const auto& [b, e] : pieces) {
    uint32_t gap = b, p = b;
    while (p < e) {
      const uint32_t m = next(d, p, e);
      if (m == p) {
        ++p;
        continue;
      }
      if (gap < p) out.emplace_back(gap, p);
      out.emplace_back(p, m);
      p = gap = m;
    }
    if (gap < e) out.emplace_back(gap, e);
  }
  pieces.swap(out);
}

template <size_t N>
uint32_t ws_opt_run(const Decoded& d, uint32_t p, uint32_t e, const CpRange (&set)[N]) {
  // \s?[set]+
  uint32_t s = p;
  if (d.cls[p] == kWs && p + 1 < e && in_ranges(set, d.cp[p + 1])) s = p + 1;
  if (!in_ranges(set, d.cp[s])) return p;
  while (s < e && in_ranges(set, d.cp[s])) ++s;
  return s;
}

void split_deepseek_llm(const Decoded& d, std::vector<Range>& pieces) {
  isolate(d, pieces, [](const Decoded& dd, uint32_t p, uint32_t) { return is_nl(dd.cp[p]) ? p + 1 : p; });
  isolate(d, pieces,
          [](const Decoded& dd, uint32_t p, uint32_t e) { return ws_opt_run(dd, p, e, kDsLetters); });
  isolate(d, pieces,
          [](const Decoded& dd, uint32_t p, uint32_t e) { return ws_opt_run(dd, p, e, kDsPunct); });
  // \s+$ : only the whitespace run that ends a piece can match.
  std::vector<Range> out;
  out.reserve(pieces.size() + 8);
  for (const auto& [b, e] : pieces) {
    uint32_t t = e;
    while (t > b && d.cls[t - 1] == kWs) --t;
    if (t > b && t < e) out.emplace_back(b, t);
    out.emplace_back(t == e ? b : t, e);
  }
  pieces.swap(out);
  isolate(d, pieces, [](const Decoded& dd, uint32_t p, uint32_t e) {
    uint32_t q = p;
    while (q < e && in_ranges(kDsCjk, dd.cp[q])) ++q;
    return q;
  });
  isolate(d, pieces, [](const Decoded& dd, uint32_t p, uint32_t e) {
    uint32_t q = p;
    while (q < e && dd.cls[q] == kN) ++q;
    return q;
  });
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
    case PreTokenizer::kDeepseekLlm: {
      std::vector<Range> pieces;
      if (n > 0) pieces.emplace_back(0, uint32_t(n));
      split_deepseek_llm(d, pieces);
      for (const auto& [b, e] : pieces) out.push_back(text.substr(d.off[b], d.off[e] - d.off[b]));
      break;
    }
  }
}

}  // namespace qleap
