// Internal to the JSON grammar (json_grammar*.cpp): the matcher's frames and the helpers its parts
// share.
#pragma once
#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>

#include "sampling/json_grammar.h"
#include "sampling/json_grammar_schema.h"

namespace qleap {

namespace jg {
enum class Kind : uint8_t { kValue, kObject, kArray, kString, kNumber, kLiteral, kEnumLit };
}  // namespace jg

struct JsonMatcher::Frame {
  jg::Kind kind = jg::Kind::kValue;
  uint8_t state = 0;
  bool is_key = false;
  bool track = false;     // string: keep the decoded text (enum value or property name)
  uint8_t utf8_left = 0;  // string: continuation bytes still expected
  uint8_t utf8_lo = 0x80, utf8_hi = 0xBF;
  uint16_t acc = 0;         // string: \u digits so far
  uint16_t high = 0;        // string: a high surrogate waiting for its low half
  int32_t node = -1;        // schema node (-1: any value)
  int32_t value_node = -1;  // object: node of the value after the current key
  int32_t count = 0;        // object: keys; array: items done; string: code points
  uint64_t seen = 0;        // object: properties used
  std::string text;         // string: decoded text when tracked; number / literal / enum text

  bool operator==(const Frame& o) const {
    return kind == o.kind && state == o.state && is_key == o.is_key && track == o.track &&
           utf8_left == o.utf8_left && utf8_lo == o.utf8_lo && utf8_hi == o.utf8_hi && acc == o.acc &&
           high == o.high && node == o.node && value_node == o.value_node && count == o.count &&
           seen == o.seen && text == o.text;
  }
};

struct JsonMatcher::Thread {
  Stack st;
  int ws = 0;  // whitespace run
  bool operator==(const Thread& o) const { return ws == o.ws && st == o.st; }
};

namespace jg {

// Object frame states.
constexpr uint8_t kObjFirst = 0, kObjKey = 1, kObjColon = 2, kObjAfterValue = 3;
// Array frame states.
constexpr uint8_t kArrFirst = 0, kArrValue = 1, kArrAfterValue = 2;
// String frame states: kStrHex0 + n while n of the 4 hex digits of \u are read.
constexpr uint8_t kStrNormal = 0, kStrEscape = 1, kStrHex0 = 2, kStrNeedBackslash = 6, kStrNeedU = 7;
// Unbounded number states.
constexpr uint8_t kNumSign = 0, kNumZero = 1, kNumInt = 2, kNumDot = 3, kNumFrac = 4, kNumE = 5,
                  kNumESign = 6, kNumExp = 7;
constexpr int kMaxThreads = 32;
constexpr int kMaxExpansions = 64;
constexpr int kMaxFracDigits = 15;
constexpr int kMaxExpDigits = 2;

inline bool is_ws(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}
inline bool is_digit(char c) {
  return c >= '0' && c <= '9';
}
inline int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

inline int add_sat(int a, int b) {
  return a >= kNever || b >= kNever ? kNever : std::min(kNever, a + b);
}

inline void append_utf8(uint32_t cp, std::string& out) {
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

// The code point of UTF-8 text at byte p (-1 when there is none).
inline int32_t code_point_at(const std::string& s, size_t p) {
  if (p >= s.size()) return -1;
  const auto b = static_cast<unsigned char>(s[p]);
  const int n = b < 0x80 ? 0 : b >= 0xF0 ? 3 : b >= 0xE0 ? 2 : b >= 0xC0 ? 1 : -1;
  if (n < 0 || p + size_t(n) >= s.size() + (n == 0 ? 1 : 0)) return -1;
  uint32_t cp = n == 0 ? b : n == 1 ? (b & 0x1F) : n == 2 ? (b & 0x0F) : (b & 0x07);
  for (int i = 1; i <= n; ++i) cp = (cp << 6) | (static_cast<unsigned char>(s[p + size_t(i)]) & 0x3F);
  return int32_t(cp);
}

inline char short_escape(uint32_t cp) {
  switch (cp) {
    case '"':
      return '"';
    case '\\':
      return '\\';
    case '\b':
      return 'b';
    case '\f':
      return 'f';
    case '\n':
      return 'n';
    case '\r':
      return 'r';
    case '\t':
      return 't';
    default:
      return 0;
  }
}

// Bytes dump() writes for s inside quotes.
inline int encoded_len(std::string_view s) {
  int n = 0;
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      n += 2;
    } else if (c < 0x20) {
      n += short_escape(c) ? 2 : 6;
    } else {
      ++n;
    }
  }
  return n;
}

// The \u code unit that writes cp: the high surrogate for code points above the BMP (or the low
// one when low).
inline uint32_t escape_unit(uint32_t cp, bool low) {
  if (cp < 0x10000) return cp;
  const uint32_t v = cp - 0x10000;
  return low ? 0xDC00 + (v & 0x3FF) : 0xD800 + (v >> 10);
}

inline const Node* node_of(const JsonSchema& s, int id) {
  return id < 0 ? nullptr : &s.node(id);
}

inline uint8_t types_of(const JsonSchema& s, int id) {
  return id < 0 ? uint8_t(kAny) : s.node(id).types;
}

inline bool viable(const JsonSchema& s, int id) {
  return s.shortest(id) < kNever;
}

// The frame's decoded text (plus an escape in progress) can still become cand.
bool candidate_ok(const JsonMatcher::Frame& f, const std::string& cand);
// Fewest bytes that finish the frame's string as cand, closing quote included.
int candidate_cost(const JsonMatcher::Frame& f, const std::string& cand);
bool number_terminal(const JsonSchema& S, const JsonMatcher::Frame& f);
bool enum_extends(const Node& n, const std::string& t);
bool enum_exact(const Node& n, const std::string& t);
// Can another key start in this object frame? May it close now?
bool key_possible(const JsonSchema& S, const JsonMatcher::Frame& obj);
bool object_can_close(const JsonSchema& S, const JsonMatcher::Frame& obj);

}  // namespace jg

}  // namespace qleap
