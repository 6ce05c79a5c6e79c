#include "tokenizer/unicode.h"

#include <memory>

namespace qleap {
namespace unicode_detail {

const uint8_t* flag_table() {
  static const std::unique_ptr<uint8_t[]> table = [] {
    auto t = std::make_unique<uint8_t[]>(kMaxCodePoint + 1);  // zero-initialized: unassigned
    for (size_t i = 0; i < kNumCategoryRanges; ++i) {
      const CategoryRange& r = kCategoryRanges[i];
      for (uint32_t cp = r.lo; cp <= r.hi; ++cp) t[cp] = r.cat;
    }
    for (size_t i = 0; i < kNumWhiteSpaceRanges; ++i) {
      for (uint32_t cp = kWhiteSpaceRanges[i].lo; cp <= kWhiteSpaceRanges[i].hi; ++cp) t[cp] |= 8;
    }
    return t;
  }();
  return table.get();
}

}  // namespace unicode_detail

uint32_t utf8_decode(const char* s, size_t n, size_t& len) {
  const auto* u = reinterpret_cast<const uint8_t*>(s);
  len = 1;
  if (n == 0) return 0xFFFD;
  const size_t need = utf8_seq_len(u[0]);
  if (need == 1) return u[0];
  if (need == 0 || need > n) return 0xFFFD;
  uint32_t cp = u[0] & (0xFF >> (need + 1));
  for (size_t i = 1; i < need; ++i) {
    if ((u[i] & 0xC0) != 0x80) return 0xFFFD;
    cp = (cp << 6) | (u[i] & 0x3F);
  }
  // Reject overlong forms, surrogates and values beyond U+10FFFF.
  if ((need == 3 && cp < 0x800) || (need == 4 && (cp < 0x10000 || cp > kMaxCodePoint)) ||
      (cp >= 0xD800 && cp <= 0xDFFF)) {
    return 0xFFFD;
  }
  len = need;
  return cp;
}

void utf8_append(uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

size_t utf8_incomplete_tail(std::string_view s) {
  // Look back at most 3 bytes for a lead byte whose sequence runs past the end.
  const size_t n = s.size();
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const auto c = uint8_t(s[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: keep looking for the lead
    const size_t need = utf8_seq_len(c);
    return (need > back) ? back : 0;
  }
  return 0;
}

size_t utf8_check(const char* s, size_t n, size_t& bad_len, bool& truncated) {
  const auto* u = reinterpret_cast<const uint8_t*>(s);
  bad_len = 1;
  truncated = false;
  if (n == 0) return 0;
  const uint8_t b0 = u[0];
  if (b0 < 0x80) return 1;
  size_t need = 0;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    if (b0 == 0xE0) lo = 0xA0;  // no overlong forms
    if (b0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return 0;
  }
  for (size_t k = 1; k < need; ++k) {
    if (k >= n) {
      bad_len = k;
      truncated = true;
      return 0;
    }
    const uint8_t lo_k = k == 1 ? lo : 0x80, hi_k = k == 1 ? hi : 0xBF;
    if (u[k] < lo_k || u[k] > hi_k) {
      bad_len = k;
      return 0;
    }
  }
  return need;
}

std::string utf8_sanitize(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    size_t bad = 1;
    bool truncated = false;
    const size_t len = utf8_check(s.data() + i, s.size() - i, bad, truncated);
    if (len) {
      out.append(s, i, len);
      i += len;
    } else {
      out += "\xEF\xBF\xBD";
      i += bad;
    }
  }
  return out;
}

}  // namespace qleap
