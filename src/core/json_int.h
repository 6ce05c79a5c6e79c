// Integers read from JSON files a user hands us (expert profiles, HF tokenizer and config files).
// nlohmann's get<int>() of a double or of an out-of-range integer is a plain cast, undefined behaviour
// for a double beyond the target's range (a literal like 1e30, or one past 2^64, is stored as a
// double), so these check the type and range first and throw FormatError.
#pragma once
#include <fmt/format.h>

#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <vector>

#include "core/error.h"

namespace qleap {

template <class T, class Json>
T json_integer(const Json& v, const char* what) {
  static_assert(std::is_integral_v<T>);
  bool ok = false;
  T out{};
  if (v.is_number_unsigned()) {
    const uint64_t u = v.template get<uint64_t>();
    ok = u <= uint64_t(std::numeric_limits<T>::max());
    out = T(u);
  } else if (v.is_number_integer()) {
    const int64_t s = v.template get<int64_t>();
    ok = std::is_signed_v<T> ? s >= int64_t(std::numeric_limits<T>::min()) &&
                                   (sizeof(T) >= 8 || s <= int64_t(std::numeric_limits<T>::max()))
                             : s >= 0 && uint64_t(s) <= uint64_t(std::numeric_limits<T>::max());
    out = T(s);
  }
  if (!ok) throw FormatError(fmt::format("{}: expected an integer in range, got {}", what, v.dump()));
  return out;
}

template <class T, class Json>
std::vector<T> json_integers(const Json& v, const char* what) {
  if (!v.is_array()) throw FormatError(fmt::format("{}: expected an array of integers", what));
  std::vector<T> out;
  out.reserve(v.size());
  for (const auto& x : v) out.push_back(json_integer<T>(x, what));
  return out;
}

}  // namespace qleap
