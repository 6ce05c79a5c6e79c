#include "sampling/json_grammar.h"

#include <algorithm>
#include <stdexcept>

#include "sampling/json_grammar_schema.h"
#include "sampling/json_grammar_state.h"

namespace qleap {

using nlohmann::json;
using namespace jg;

JsonMatcher::JsonMatcher() : JsonMatcher(JsonSchema::any()) {}

JsonMatcher::JsonMatcher(std::shared_ptr<const JsonSchema> schema) : schema_(std::move(schema)) {
  if (!schema_) schema_ = JsonSchema::any();
  Thread t;
  Frame root;
  root.node = schema_->root();
  t.st.push_back(root);
  threads_.push_back(std::move(t));
}

JsonMatcher::JsonMatcher(const json* schema)
    : JsonMatcher(schema && schema->is_object() && !schema->empty() ? JsonSchema::compile(*schema)
                                                                    : JsonSchema::any()) {}

JsonMatcher::~JsonMatcher() = default;
JsonMatcher::JsonMatcher(const JsonMatcher& o) : schema_(o.schema_), threads_(o.threads_) {}
// The scratch state is not copied: probing copies matchers often.
JsonMatcher& JsonMatcher::operator=(const JsonMatcher& o) {
  if (schema_ != o.schema_) schema_ = o.schema_;
  threads_ = o.threads_;
  return *this;
}

bool JsonMatcher::free_string(FreeString& out) const {
  if (threads_.size() != 1 || threads_[0].st.empty()) return false;
  const Frame& f = threads_[0].st.back();
  if (f.kind != Kind::kString || f.track || f.state != kStrNormal || f.utf8_left != 0) return false;
  const Node* n = f.is_key ? nullptr : node_of(*schema_, f.node);
  out.count = f.count;
  out.min_len = n ? n->min_len : 0;
  out.max_len = n ? n->max_len : -1;
  out.remaining = min_remaining();
  return true;
}

bool JsonMatcher::complete() const {
  for (const auto& t : threads_) {
    if (t.st.empty()) return true;
  }
  return false;
}

// ---- schema queries ----

// ---- strings ----

// The frame's text (plus an escape in progress) can still become `cand`. Property names and enum
// values are compared decoded, but an escape is taken only where one is needed or for a non-ASCII
// character: printable ASCII is written as itself, so that constrained keys read naturally (a
// model that does not expect a key otherwise wanders into "c\u006f\u006c..." spellings).
bool jg::candidate_ok(const JsonMatcher::Frame& f, const std::string& cand) {
  if (cand.size() < f.text.size() || cand.compare(0, f.text.size(), f.text) != 0) return false;
  if (f.state == kStrNormal) return true;
  const int32_t cp = code_point_at(cand, f.text.size());
  if (cp < 0 || (cp >= 0x20 && cp < 0x7F && cp != '"' && cp != '\\')) return false;
  if (f.state == kStrEscape) return true;
  if (f.state == kStrNeedBackslash || f.state == kStrNeedU) {
    return cp >= 0x10000 && escape_unit(uint32_t(cp), false) == f.high;
  }
  // Hex digits: the ones read so far must start the code unit that writes cp.
  const int d = f.state - kStrHex0;
  const bool low = f.high != 0;
  if (low && (cp < 0x10000 || escape_unit(uint32_t(cp), false) != f.high)) return false;
  const uint32_t unit = escape_unit(uint32_t(cp), low);
  return (unit >> (4 * (4 - d))) == f.acc;
}

// Fewest bytes that finish the frame's string as `cand`, closing quote included.
int jg::candidate_cost(const JsonMatcher::Frame& f, const std::string& cand) {
  if (f.state == kStrNormal) return encoded_len(std::string_view(cand).substr(f.text.size())) + 1;
  const int32_t cp = code_point_at(cand, f.text.size());
  if (cp < 0) return kNever;
  size_t after = f.text.size() + (cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4);
  const int rest = encoded_len(std::string_view(cand).substr(std::min(after, cand.size()))) + 1;
  int esc;
  if (f.state == kStrEscape) {
    esc = short_escape(uint32_t(cp)) ? 1 : (cp >= 0x10000 ? 11 : 5);
  } else if (f.state == kStrNeedBackslash) {
    esc = 6;
  } else if (f.state == kStrNeedU) {
    esc = 5;
  } else {
    esc = 4 - (f.state - kStrHex0) + (cp >= 0x10000 && f.high == 0 ? 6 : 0);
  }
  return esc + rest;
}

bool JsonMatcher::string_char(Stack& st, char ch) const {
  Frame& f = st.back();
  const auto c = static_cast<unsigned char>(ch);
  const JsonSchema& S = *schema_;
  const Node* n = f.is_key ? nullptr : node_of(S, f.node);
  const int max_len = n ? n->max_len : -1;
  auto room = [&] { return max_len < 0 || f.count < max_len; };
  bool appended = false;
  switch (f.state) {
    case kStrNormal:
      if (ch == '\\') {
        if (f.utf8_left || !room()) return false;
        f.state = kStrEscape;
        break;
      }
      if (c < 0x20 || ch == '"') return false;
      if (f.utf8_left) {
        if (c < f.utf8_lo || c > f.utf8_hi) return false;
        --f.utf8_left;
        f.utf8_lo = 0x80, f.utf8_hi = 0xBF;
      } else if (c >= 0x80) {
        if (!room()) return false;
        if (c >= 0xC2 && c <= 0xDF) {
          f.utf8_left = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
          f.utf8_left = 2;
          if (c == 0xE0) f.utf8_lo = 0xA0;
          if (c == 0xED) f.utf8_hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
          f.utf8_left = 3;
          if (c == 0xF0) f.utf8_lo = 0x90;
          if (c == 0xF4) f.utf8_hi = 0x8F;
        } else {
          return false;
        }
        ++f.count;
      } else {
        if (!room()) return false;
        ++f.count;
      }
      if (f.track) f.text += ch, appended = true;
      break;
    case kStrEscape:
      if (ch == 'u') {
        f.state = kStrHex0;
        f.acc = 0;
        break;
      }
      {
        uint32_t cp = 0;
        switch (ch) {
          case '"':
            cp = '"';
            break;
          case '\\':
            cp = '\\';
            break;
          case '/':
            cp = '/';
            break;
          case 'b':
            cp = '\b';
            break;
          case 'f':
            cp = '\f';
            break;
          case 'n':
            cp = '\n';
            break;
          case 'r':
            cp = '\r';
            break;
          case 't':
            cp = '\t';
            break;
          default:
            return false;
        }
        f.state = kStrNormal;
        ++f.count;
        if (f.track) append_utf8(cp, f.text), appended = true;
      }
      break;
    case kStrNeedBackslash:
      if (ch != '\\') return false;
      f.state = kStrNeedU;
      break;
    case kStrNeedU:
      if (ch != 'u') return false;
      f.state = kStrHex0;
      f.acc = 0;
      break;
    default: {  // hex digits
      const int v = hex_value(ch);
      if (v < 0) return false;
      const int d = f.state - kStrHex0;
      const uint16_t acc = uint16_t((f.acc << 4) | v);
      // Surrogates: a high half must be followed by a low half, a low half never stands alone.
      if (d == 1 && (acc >> 4) == 0xD) {
        const bool is_low = v >= 0xC;
        if (is_low != (f.high != 0)) return false;
      } else if (d == 1 && f.high != 0) {
        return false;
      } else if (d == 0 && f.high != 0 && v != 0xD) {
        return false;
      }
      f.acc = acc;
      if (d < 3) {
        f.state = uint8_t(f.state + 1);
        break;
      }
      if (acc >= 0xD800 && acc <= 0xDBFF) {
        f.high = acc;
        f.state = kStrNeedBackslash;
        break;
      }
      uint32_t cp = acc;
      if (f.high) cp = 0x10000 + ((uint32_t(f.high) - 0xD800) << 10) + (uint32_t(acc) - 0xDC00);
      f.high = 0;
      f.acc = 0;
      f.state = kStrNormal;
      ++f.count;
      if (f.track) append_utf8(cp, f.text), appended = true;
      break;
    }
  }
  (void)appended;
  if (!f.track) return true;
  // The text (with any escape in progress) must still lead to an allowed value.
  if (f.is_key) {
    const Frame& obj = st[st.size() - 2];
    const Node& on = S.node(obj.node);
    for (size_t i = 0; i < on.props.size(); ++i) {
      if ((obj.seen >> i & 1u) || !viable(S, on.props[i].node)) continue;
      if (candidate_ok(f, on.props[i].name)) return true;
    }
    return false;
  }
  for (const auto& s : n->enum_strings) {
    if (candidate_ok(f, s)) return true;
  }
  return false;
}

// ---- numbers ----

bool jg::number_terminal(const JsonSchema& S, const JsonMatcher::Frame& f) {
  const Node* n = node_of(S, f.node);
  if (n && n->bounded()) return number_in_bounds(*n, f.text);
  return f.state == kNumZero || f.state == kNumInt || f.state == kNumFrac || f.state == kNumExp;
}

bool JsonMatcher::number_char(Stack& st, char c) const {
  Frame& f = st.back();
  const Node* n = node_of(*schema_, f.node);
  const bool fracs = !n || (n->types & kFrac);
  if (n && n->bounded()) {
    if (!(is_digit(c) || c == '.' || c == '-')) return false;
    if (number_remaining(*n, f.text + c) >= kNever) return false;
    f.text += c;
    return true;
  }
  int int_digits = 0, frac_digits = 0, exp_digits = 0;
  {
    int part = 0;
    for (char x : f.text) {
      if (x == '.')
        part = 1;
      else if (x == 'e' || x == 'E')
        part = 2;
      else if (is_digit(x))
        (part == 0 ? int_digits : part == 1 ? frac_digits : exp_digits)++;
    }
  }
  switch (f.state) {
    case kNumSign:
      if (c == '0')
        f.state = kNumZero;
      else if (is_digit(c))
        f.state = kNumInt;
      else
        return false;
      break;
    case kNumZero:
    case kNumInt:
      if (is_digit(c) && f.state == kNumInt) {
        if (int_digits >= kMaxIntDigits) return false;
      } else if (c == '.' && fracs) {
        f.state = kNumDot;
      } else if ((c == 'e' || c == 'E') && fracs) {
        f.state = kNumE;
      } else {
        return false;
      }
      break;
    case kNumDot:
      if (!is_digit(c)) return false;
      f.state = kNumFrac;
      break;
    case kNumFrac:
      if (is_digit(c)) {
        if (frac_digits >= kMaxFracDigits) return false;
      } else if (c == 'e' || c == 'E') {
        f.state = kNumE;
      } else {
        return false;
      }
      break;
    case kNumE:
      if (c == '+' || c == '-')
        f.state = kNumESign;
      else if (is_digit(c))
        f.state = kNumExp;
      else
        return false;
      break;
    case kNumESign:
      if (!is_digit(c)) return false;
      f.state = kNumExp;
      break;
    case kNumExp:
      if (!is_digit(c) || exp_digits >= kMaxExpDigits) return false;
      break;
    default:
      return false;
  }
  f.text += c;
  return true;
}

// ---- enum literals (non-string enum / const values, as their canonical text) ----

bool jg::enum_extends(const Node& n, const std::string& t) {
  for (const auto& s : n.enum_literals) {
    if (s.size() > t.size() && s.compare(0, t.size(), t) == 0) return true;
  }
  return false;
}
bool jg::enum_exact(const Node& n, const std::string& t) {
  return std::find(n.enum_literals.begin(), n.enum_literals.end(), t) != n.enum_literals.end();
}

// ---- values ----

bool JsonMatcher::value_done(Stack& st) const {
  st.pop_back();
  if (st.empty()) return true;
  Frame& p = st.back();
  if (p.kind == Kind::kObject) {
    p.state = kObjAfterValue;
  } else {
    p.state = kArrAfterValue;
    ++p.count;
  }
  return true;
}

bool JsonMatcher::value_start(Stack& st, char c) const {
  const JsonSchema& S = *schema_;
  Frame& f = st.back();
  const int id = f.node;
  const Node* n = node_of(S, id);
  const uint8_t types = types_of(S, id);
  if (types == 0) return false;
  const bool nested = c == '{' || c == '[';
  if (nested && int(st.size()) >= kMaxDepth) return false;
  if (n && n->has_enum) {
    if (c == '"') {
      if (n->enum_strings.empty()) return false;
      f.kind = Kind::kString;
      f.state = kStrNormal;
      f.track = true;
      return true;
    }
    std::string t(1, c);
    if (!enum_extends(*n, t) && !enum_exact(*n, t)) return false;
    f.kind = Kind::kEnumLit;
    f.text = t;
    if (!enum_extends(*n, t)) value_done(st);
    return true;
  }
  switch (c) {
    case '{':
      if (!(types & kObject)) return false;
      f.kind = Kind::kObject;
      f.state = kObjFirst;
      return true;
    case '[':
      if (!(types & kArray)) return false;
      f.kind = Kind::kArray;
      f.state = kArrFirst;
      return true;
    case '"':
      if (!(types & kString)) return false;
      if (n && n->max_len >= 0 && n->max_len < n->min_len) return false;
      f.kind = Kind::kString;
      f.state = kStrNormal;
      return true;
    case 't':
    case 'f':
      if (!(types & kBool)) return false;
      f.kind = Kind::kLiteral;
      f.text = c == 't' ? "true" : "false";
      f.state = 1;
      return true;
    case 'n':
      if (!(types & kNull)) return false;
      f.kind = Kind::kLiteral;
      f.text = "null";
      f.state = 1;
      return true;
    default:
      if (c != '-' && !is_digit(c)) return false;
      if (!(types & (kInt | kFrac))) return false;
      if (n && n->bounded()) {
        if (number_remaining(*n, std::string(1, c)) >= kNever) return false;
        f.kind = Kind::kNumber;
        f.text = std::string(1, c);
        return true;
      }
      f.kind = Kind::kNumber;
      f.state = c == '-' ? kNumSign : c == '0' ? kNumZero : kNumInt;
      f.text = std::string(1, c);
      return true;
  }
}

// Can another key start in this object frame?
bool jg::key_possible(const JsonSchema& S, const JsonMatcher::Frame& obj) {
  if (obj.node < 0) return true;
  const Node& n = S.node(obj.node);
  if (n.max_props >= 0 && obj.count >= n.max_props) return false;
  if (n.props.empty()) return !n.no_keys && viable(S, n.additional);
  for (size_t i = 0; i < n.props.size(); ++i) {
    if (!(obj.seen >> i & 1u) && viable(S, n.props[i].node)) return true;
  }
  return false;
}

bool jg::object_can_close(const JsonSchema& S, const JsonMatcher::Frame& obj) {
  if (obj.node < 0) return true;
  const Node& n = S.node(obj.node);
  if (obj.count < n.min_props) return false;
  return (n.required & ~obj.seen) == 0;
}

// Feeds one byte to one stack. kBranch: the value starting here has a union schema; the caller
// splits the thread and feeds the byte to each branch.
JsonMatcher::StepResult JsonMatcher::feed_stack(Thread& t, char c) const {
  Stack& st = t.st;
  if (st.empty()) {
    if (!is_ws(c) || t.ws >= kMaxWhitespace) return StepResult::kFail;
    ++t.ws;
    return StepResult::kOk;
  }
  const JsonSchema& S = *schema_;
  Frame& top = st.back();
  const bool in_token = top.kind == Kind::kString || top.kind == Kind::kLiteral ||
                        top.kind == Kind::kEnumLit || (top.kind == Kind::kNumber && !is_ws(c));
  if (is_ws(c) && !in_token) {
    if (t.ws >= kMaxWhitespace) return StepResult::kFail;
    if (top.kind == Kind::kNumber) {
      if (!number_terminal(S, top)) return StepResult::kFail;
      value_done(st);
    }
    ++t.ws;
    return StepResult::kOk;
  }
  t.ws = 0;
  switch (top.kind) {
    case Kind::kValue:
      if (top.node >= 0 && !S.node(top.node).any_of.empty()) return StepResult::kBranch;
      return value_start(st, c) ? StepResult::kOk : StepResult::kFail;
    case Kind::kLiteral:
      if (top.state < top.text.size() && top.text[top.state] == c) {
        if (++top.state == top.text.size()) value_done(st);
        return StepResult::kOk;
      }
      return StepResult::kFail;
    case Kind::kEnumLit: {
      const Node& n = S.node(top.node);
      const std::string t2 = top.text + c;
      if (enum_extends(n, t2) || enum_exact(n, t2)) {
        top.text = t2;
        if (!enum_extends(n, t2)) value_done(st);
        return StepResult::kOk;
      }
      if (!enum_exact(n, top.text)) return StepResult::kFail;
      value_done(st);
      if (st.empty()) return StepResult::kFail;  // only whitespace may follow a top-level value
      return feed_stack(t, c);
    }
    case Kind::kString: {
      if (top.state == kStrNormal && c == '"' && top.utf8_left == 0) {
        if (top.is_key) {
          Frame& obj = st[st.size() - 2];
          int vs = -1;
          if (obj.node >= 0) {
            const Node& on = S.node(obj.node);
            if (on.props.empty()) {
              vs = on.additional;
            } else {
              bool found = false;
              for (size_t i = 0; i < on.props.size(); ++i) {
                if ((obj.seen >> i & 1u) || on.props[i].name != top.text) continue;
                obj.seen |= uint64_t(1) << i;
                vs = on.props[i].node;
                found = true;
                break;
              }
              if (!found) return StepResult::kFail;
            }
          }
          st.pop_back();
          Frame& o = st.back();
          ++o.count;
          o.state = kObjColon;
          o.value_node = vs;
          return StepResult::kOk;
        }
        const Node* n = node_of(S, top.node);
        if (n && top.count < n->min_len) return StepResult::kFail;
        if (n && n->has_enum &&
            std::find(n->enum_strings.begin(), n->enum_strings.end(), top.text) == n->enum_strings.end())
          return StepResult::kFail;
        value_done(st);
        return StepResult::kOk;
      }
      return string_char(st, c) ? StepResult::kOk : StepResult::kFail;
    }
    case Kind::kNumber: {
      if (number_char(st, c)) return StepResult::kOk;
      if (!number_terminal(S, top)) return StepResult::kFail;
      // The number ended; c belongs to the parent.
      value_done(st);
      if (st.empty()) return StepResult::kFail;  // only whitespace may follow a top-level number
      return feed_stack(t, c);
    }
    case Kind::kObject:
      switch (top.state) {
        case kObjFirst:
        case kObjKey:
          if (c == '"') {
            if (!key_possible(S, top)) return StepResult::kFail;
            Frame k;
            k.kind = Kind::kString;
            k.is_key = true;
            k.track = top.node >= 0 && !S.node(top.node).props.empty();
            st.push_back(std::move(k));
            return StepResult::kOk;
          }
          if (c == '}' && top.state == kObjFirst && object_can_close(S, top)) {
            value_done(st);
            return StepResult::kOk;
          }
          return StepResult::kFail;
        case kObjColon: {
          if (c != ':') return StepResult::kFail;
          Frame v;
          v.node = top.value_node;
          st.push_back(std::move(v));
          return StepResult::kOk;
        }
        case kObjAfterValue:
          if (c == ',') {
            if (!key_possible(S, top)) return StepResult::kFail;
            top.state = kObjKey;
            return StepResult::kOk;
          }
          if (c == '}' && object_can_close(S, top)) {
            value_done(st);
            return StepResult::kOk;
          }
          return StepResult::kFail;
      }
      return StepResult::kFail;
    case Kind::kArray: {
      const Node* n = node_of(S, top.node);
      if (top.state == kArrAfterValue) {
        if (c == ',') {
          if (n && n->max_items >= 0 && top.count >= n->max_items) return StepResult::kFail;
          top.state = kArrValue;
          return StepResult::kOk;
        }
        if (c == ']' && (!n || top.count >= n->min_items)) {
          value_done(st);
          return StepResult::kOk;
        }
        return StepResult::kFail;
      }
      if (c == ']' && top.state == kArrFirst) {
        if (n && n->min_items > 0) return StepResult::kFail;
        value_done(st);
        return StepResult::kOk;
      }
      if (top.state == kArrFirst && n && n->max_items == 0) return StepResult::kFail;
      top.state = kArrAfterValue;
      Frame v;
      v.node = n ? n->items : -1;
      st.push_back(std::move(v));
      return feed_stack(t, c);
    }
  }
  return StepResult::kFail;
}

bool JsonMatcher::advance(std::vector<Thread>& cur, char c) const {
  size_t w = 0;
  int expansions = 0;
  for (size_t i = 0; i < cur.size(); ++i) {
    const StepResult r = feed_stack(cur[i], c);
    if (r == StepResult::kOk) {
      if (w != i) std::swap(cur[w], cur[i]);
      ++w;
    } else if (r == StepResult::kBranch && ++expansions <= kMaxExpansions) {
      // One thread per branch of the union; each is fed c when the loop reaches it.
      const std::vector<int> branches = schema_->node(cur[i].st.back().node).any_of;
      for (int b : branches) {
        if (!viable(*schema_, b) || int(cur.size()) >= kMaxThreads + int(i) + 1) continue;
        Thread copy = cur[i];
        copy.st.back().node = b;
        cur.push_back(std::move(copy));
      }
    }
  }
  cur.resize(w);
  if (cur.size() > 1) {
    // Identical alternatives (branches that agree so far and from here on) count once.
    std::vector<Thread> uniq;
    for (auto& t : cur) {
      if (std::find(uniq.begin(), uniq.end(), t) == uniq.end()) uniq.push_back(std::move(t));
    }
    if (uniq.size() > size_t(kMaxThreads)) uniq.resize(size_t(kMaxThreads));
    cur.swap(uniq);
  }
  return !cur.empty();
}

bool JsonMatcher::feed(char c) {
  tmp_ = threads_;
  if (!advance(tmp_, c)) return false;
  threads_.swap(tmp_);
  return true;
}

bool JsonMatcher::feed(std::string_view s) {
  for (char c : s) {
    if (!advance(threads_, c)) return false;
  }
  return true;
}

bool JsonMatcher::probe(std::string_view s, int* remaining) const {
  tmp_ = threads_;
  for (char c : s) {
    if (!advance(tmp_, c)) return false;
  }
  if (remaining) *remaining = min_remaining(tmp_);
  return true;
}

}  // namespace qleap
