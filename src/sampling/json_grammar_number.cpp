// Bounded numbers for the JSON grammar: which prefixes can still become a number within
// minimum / maximum, and how many bytes that takes at least. Candidates are built as exact decimal
// values (magnitudes scaled by 10^6 in 64-bit integers: at most 12 integer and 6 fraction digits)
// and each is checked the way a JSON parser reads it: the text's double against the bound.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "sampling/json_grammar_schema.h"

namespace qleap::jg {

namespace {

constexpr int64_t kScale = 1000000;  // 10^kMaxBoundedFracDigits

int64_t pow10(int n) {
  int64_t p = 1;
  while (n-- > 0) p *= 10;
  return p;
}

bool in_bounds_value(const Node& n, double d) {
  if (n.has_min && (n.excl_min ? !(d > n.min) : !(d >= n.min))) return false;
  if (n.has_max && (n.excl_max ? !(d < n.max) : !(d <= n.max))) return false;
  return true;
}

// The decimal -mag / 10^6 (or +) as a parser reads it.
bool point_in_bounds(const Node& n, bool neg, int64_t mag) {
  char buf[48];
  std::snprintf(buf, sizeof(buf), "%s%lld.%06lld", neg ? "-" : "", static_cast<long long>(mag / kScale),
                static_cast<long long>(mag % kScale));
  return in_bounds_value(n, std::strtod(buf, nullptr));
}

// Is there a grid point (multiple of step, a multiple of kScale or of a power of ten below it) in
// [a, a + w) whose value (negated when neg) lies within the bounds? Searched from the lower bound
// of the magnitudes, checking a few neighbours exactly.
bool find_point(const Node& n, bool neg, int64_t a, int64_t w, int64_t step) {
  const long double inf = INFINITY;
  const long double lo = neg ? (n.has_max ? -static_cast<long double>(n.max) : -inf)
                             : (n.has_min ? static_cast<long double>(n.min) : -inf);
  const long double hi = neg ? (n.has_min ? -static_cast<long double>(n.min) : inf)
                             : (n.has_max ? static_cast<long double>(n.max) : inf);
  const int64_t end = a + w;  // exclusive
  if (hi * kScale < static_cast<long double>(a) - step) return false;
  int64_t g = a;
  const long double start = lo * kScale;
  if (start > static_cast<long double>(a)) {
    if (start >= static_cast<long double>(end) + step) return false;
    const long double k = std::ceil(start / step);
    g = static_cast<int64_t>(k) * step;
  }
  for (int d = -2; d <= 3; ++d) {
    const int64_t c = g + d * step;
    if (c < a || c >= end) continue;
    if (point_in_bounds(n, neg, c)) return true;
  }
  return false;
}

struct Parsed {
  bool neg = false;
  std::string int_digits;
  bool dot = false;
  std::string frac_digits;
};

bool parse_prefix(std::string_view t, Parsed& p) {
  size_t i = 0;
  if (i < t.size() && t[i] == '-') p.neg = true, ++i;
  while (i < t.size() && t[i] >= '0' && t[i] <= '9') p.int_digits += t[i++];
  if (i < t.size() && t[i] == '.') {
    if (p.int_digits.empty()) return false;
    p.dot = true;
    ++i;
    while (i < t.size() && t[i] >= '0' && t[i] <= '9') p.frac_digits += t[i++];
  }
  if (i != t.size()) return false;
  if (p.int_digits.size() > 1 && p.int_digits[0] == '0') return false;
  if (int(p.int_digits.size()) > kMaxBoundedIntDigits || int(p.frac_digits.size()) > kMaxBoundedFracDigits ||
      int(p.int_digits.size() + p.frac_digits.size()) > kMaxBoundedDigits) {
    return false;
  }
  return true;
}

}  // namespace

bool number_in_bounds(const Node& n, std::string_view text) {
  Parsed p;
  if (!parse_prefix(text, p) || p.int_digits.empty() || (p.dot && p.frac_digits.empty())) return false;
  if (!(n.types & kFrac) && p.dot) return false;
  return in_bounds_value(n, std::strtod(std::string(text).c_str(), nullptr));
}

int number_remaining(const Node& n, std::string_view text) {
  Parsed p;
  if (!parse_prefix(text, p)) return kNever;
  const bool ints = (n.types & kInt) != 0, fracs = (n.types & kFrac) != 0;
  if (!ints && !fracs) return kNever;
  int best = kNever;
  auto consider = [&best](int cost) { best = std::min(best, cost); };
  const int used_int = int(p.int_digits.size());
  if (p.dot) {
    if (!fracs) return kNever;
    // x = int.frac, more fraction digits only.
    const int nf = int(p.frac_digits.size());
    if (nf > 0 && number_in_bounds(n, text)) return 0;
    const int64_t x = std::stoll(p.int_digits) * kScale +
                      (nf ? std::stoll(p.frac_digits) * pow10(kMaxBoundedFracDigits - nf) : 0);
    const int64_t w = pow10(kMaxBoundedFracDigits - nf);
    for (int f = 1; nf + f <= kMaxBoundedFracDigits && used_int + nf + f <= kMaxBoundedDigits; ++f) {
      if (find_point(n, p.neg, x, w, pow10(kMaxBoundedFracDigits - nf - f))) return f;
    }
    return kNever;
  }
  if (!p.int_digits.empty() && ints && number_in_bounds(n, text)) return 0;
  // Integer part: `more` further digits (none after a leading 0), then optionally '.' + f digits.
  auto try_int_part = [&](bool neg, int64_t base, int first_len, int extra_cost) {
    // base: the digits so far as a number; first_len: their count (0: none yet).
    const int max_more = kMaxBoundedIntDigits - first_len;
    for (int more = first_len == 0 ? 1 : 0; more <= max_more; ++more) {
      if (first_len > 0 && more > 0 && base == 0) break;  // no digit after a leading 0
      int64_t a, w;
      if (first_len == 0) {
        a = more == 1 ? 0 : pow10(more - 1);
        w = pow10(more) - a;
      } else {
        a = base * pow10(more);
        w = pow10(more);
      }
      a *= kScale;
      w *= kScale;
      const int cost = extra_cost + more;
      if (cost >= best) break;
      if (ints && more > 0 && find_point(n, neg, a, w, kScale)) consider(cost);
      if (fracs) {
        for (int f = 1; f <= kMaxBoundedFracDigits && first_len + more + f <= kMaxBoundedDigits; ++f) {
          if (cost + 1 + f >= best) break;
          if (find_point(n, neg, a, w, pow10(kMaxBoundedFracDigits - f))) {
            consider(cost + 1 + f);
            break;
          }
        }
      }
    }
  };
  if (p.int_digits.empty()) {
    if (p.neg) {
      try_int_part(true, 0, 0, 0);
    } else {
      try_int_part(false, 0, 0, 0);
      try_int_part(true, 0, 0, 1);  // a leading '-'
    }
  } else {
    try_int_part(p.neg, std::stoll(p.int_digits), used_int, 0);
  }
  return best;
}

int shortest_number(const Node& n) {
  if (!n.bounded()) return 1;
  return number_remaining(n, "");
}

}  // namespace qleap::jg
