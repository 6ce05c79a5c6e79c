#include "sampling/json_grammar.h"

#include <stdexcept>

namespace qleap {

using nlohmann::json;

namespace {

// Object frame states.
constexpr uint8_t kObjFirst = 0, kObjKey = 1, kObjColon = 2, kObjAfterValue = 3;
// Array frame states.
constexpr uint8_t kArrFirst = 0, kArrValue = 1, kArrAfterValue = 2;
// String frame states.
constexpr uint8_t kStrNormal = 0, kStrEscape = 1, kStrHex1 = 2, kStrHex4 = 5;
// Number frame states.
constexpr uint8_t kNumSign = 0, kNumZero = 1, kNumInt = 2, kNumDot = 3, kNumFrac = 4, kNumE = 5,
                  kNumESign = 6, kNumExp = 7;

bool is_ws(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}
bool is_digit(char c) {
  return c >= '0' && c <= '9';
}
bool is_hex(char c) {
  return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

const json* schema_of(const json* s) {
  return s && s->is_object() && !s->empty() ? s : nullptr;
}

const json* properties(const json* s) {
  if (!s) return nullptr;
  auto it = s->find("properties");
  return it != s->end() && it->is_object() && !it->empty() ? &*it : nullptr;
}

}  // namespace

void validate_json_schema(const json& schema) {
  if (!schema.is_object()) throw std::invalid_argument("a JSON schema must be an object");
  if (auto t = schema.find("type"); t != schema.end() && !t->is_string() && !t->is_array()) {
    throw std::invalid_argument("schema 'type' must be a string or an array");
  }
  if (auto p = schema.find("properties"); p != schema.end()) {
    if (!p->is_object()) throw std::invalid_argument("schema 'properties' must be an object");
    if (p->size() > 32) throw std::invalid_argument("schema objects may have at most 32 properties");
    for (const auto& [k, v] : p->items()) validate_json_schema(v);
  }
  if (auto i = schema.find("items"); i != schema.end() && i->is_object()) validate_json_schema(*i);
  if (auto e = schema.find("enum"); e != schema.end() && (!e->is_array() || e->empty())) {
    throw std::invalid_argument("schema 'enum' must be a non-empty array");
  }
}

JsonMatcher::JsonMatcher(const json* schema) {
  Frame root{Kind::kValue};
  root.schema = schema_of(schema);
  stack_.push_back(root);
}

bool JsonMatcher::allows_type(const json* s, const char* type) const {
  if (!s) return true;
  if (auto c = s->find("const"); c != s->end()) {
    const std::string t = type;
    return (c->is_string() && t == "string") || (c->is_number() && (t == "number" || t == "integer")) ||
           (c->is_boolean() && t == "boolean") || (c->is_null() && t == "null") ||
           (c->is_object() && t == "object") || (c->is_array() && t == "array");
  }
  if (auto e = s->find("enum"); e != s->end() && e->is_array()) {
    for (const auto& v : *e) {
      const std::string t = type;
      if ((v.is_string() && t == "string") || (v.is_number() && (t == "number" || t == "integer")) ||
          (v.is_boolean() && t == "boolean") || (v.is_null() && t == "null")) {
        return true;
      }
    }
    return false;
  }
  auto t = s->find("type");
  if (t == s->end()) return true;
  auto match = [type](const json& v) {
    if (!v.is_string()) return false;
    const std::string& n = v.get_ref<const std::string&>();
    return n == type || (n == "number" && std::string(type) == "integer");
  };
  if (t->is_string()) return match(*t);
  if (t->is_array()) {
    for (const auto& v : *t) {
      if (match(v)) return true;
    }
  }
  return false;
}

// Enum / const strings: the text so far must be a prefix of (or, when whole, equal to) one of them.
bool JsonMatcher::string_prefix_ok(const Frame& f, bool whole) const {
  const json* s = f.schema;
  if (!s) return true;
  std::vector<const json*> opts;
  if (auto c = s->find("const"); c != s->end()) opts.push_back(&*c);
  if (auto e = s->find("enum"); e != s->end() && e->is_array()) {
    for (const auto& v : *e) opts.push_back(&v);
  }
  if (opts.empty()) return true;
  for (const json* v : opts) {
    if (!v->is_string()) continue;
    const std::string& o = v->get_ref<const std::string&>();
    if (whole ? o == f.text : o.compare(0, f.text.size(), f.text) == 0) return true;
  }
  return false;
}

bool JsonMatcher::key_prefix_ok(const Frame& obj, const std::string& key, bool whole) const {
  const json* props = properties(obj.schema);
  if (!props) return true;
  uint32_t i = 0;
  for (const auto& [k, v] : props->items()) {
    const bool unused = !(obj.seen >> i & 1u);
    ++i;
    if (!unused) continue;
    if (whole ? k == key : k.compare(0, key.size(), key) == 0) return true;
  }
  return false;
}

bool JsonMatcher::object_can_close(const Frame& obj) const {
  const json* props = properties(obj.schema);
  if (!props || !obj.schema) return true;
  auto req = obj.schema->find("required");
  if (req == obj.schema->end() || !req->is_array()) return true;
  for (const auto& r : *req) {
    if (!r.is_string()) continue;
    uint32_t i = 0;
    bool found = false;
    for (const auto& [k, v] : props->items()) {
      if (k == r.get_ref<const std::string&>()) {
        found = (obj.seen >> i & 1u) != 0;
        break;
      }
      ++i;
    }
    if (!found) return false;
  }
  return true;
}

bool JsonMatcher::feed_value_start(char c) {
  const json* schema = stack_.back().schema;
  Frame f{Kind::kValue};
  f.schema = schema;
  switch (c) {
    case '{':
      if (!allows_type(schema, "object")) return false;
      f.kind = Kind::kObject;
      f.state = kObjFirst;
      break;
    case '[':
      if (!allows_type(schema, "array")) return false;
      f.kind = Kind::kArray;
      f.state = kArrFirst;
      break;
    case '"':
      if (!allows_type(schema, "string")) return false;
      f.kind = Kind::kString;
      f.state = kStrNormal;
      if (!string_prefix_ok(f, false)) return false;
      break;
    case 't':
    case 'f':
      if (!allows_type(schema, "boolean")) return false;
      f.kind = Kind::kLiteral;
      f.text = c == 't' ? "true" : "false";
      f.state = 1;
      break;
    case 'n':
      if (!allows_type(schema, "null")) return false;
      f.kind = Kind::kLiteral;
      f.text = "null";
      f.state = 1;
      break;
    default: {
      if (c != '-' && !is_digit(c)) return false;
      if (!allows_type(schema, "integer")) return false;
      f.kind = Kind::kNumber;
      // "integer" (and not "number") in the schema: no fraction or exponent.
      f.integer = schema != nullptr && !allows_type(schema, "number");
      f.state = c == '-' ? kNumSign : c == '0' ? kNumZero : kNumInt;
      break;
    }
  }
  stack_.back() = std::move(f);
  return true;
}

// The top frame's value is complete: pop it and advance the parent.
bool JsonMatcher::value_done() {
  stack_.pop_back();
  if (stack_.empty()) {
    done_ = true;
    return true;
  }
  Frame& p = stack_.back();
  p.state = p.kind == Kind::kObject ? kObjAfterValue : kArrAfterValue;
  return true;
}

bool JsonMatcher::string_char(Frame& f, char c) {
  switch (f.state) {
    case kStrNormal:
      if (c == '\\') {
        f.state = kStrEscape;
        return true;
      }
      if (static_cast<unsigned char>(c) < 0x20) return false;
      if (c == '"') return false;  // handled by the caller
      f.text += c;
      return true;
    case kStrEscape:
      if (c == 'u') {
        f.state = kStrHex1;
        return true;
      }
      if (c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' || c == 'r' || c == 't') {
        static const char kMap[] = {'"', '"',  '\\', '\\', '/', '/',  'b', '\b',
                                    'f', '\f', 'n',  '\n', 'r', '\r', 't', '\t'};
        for (size_t i = 0; i < sizeof(kMap); i += 2) {
          if (kMap[i] == c) f.text += kMap[i + 1];
        }
        f.state = kStrNormal;
        return true;
      }
      return false;
    default:  // \uXXXX digits (kept as "\uXXXX" text for prefix checks; rare in enums)
      if (!is_hex(c)) return false;
      f.state = f.state == kStrHex4 ? kStrNormal : uint8_t(f.state + 1);
      return true;
  }
}

bool JsonMatcher::number_char(Frame& f, char c, bool& ends) {
  ends = false;
  switch (f.state) {
    case kNumSign:
      if (c == '0') return f.state = kNumZero, true;
      if (is_digit(c)) return f.state = kNumInt, true;
      return false;
    case kNumZero:
    case kNumInt:
      if (is_digit(c) && f.state == kNumInt) return true;
      if (c == '.' && !f.integer) return f.state = kNumDot, true;
      if ((c == 'e' || c == 'E') && !f.integer) return f.state = kNumE, true;
      ends = true;
      return true;
    case kNumDot:
      if (is_digit(c)) return f.state = kNumFrac, true;
      return false;
    case kNumFrac:
      if (is_digit(c)) return true;
      if (c == 'e' || c == 'E') return f.state = kNumE, true;
      ends = true;
      return true;
    case kNumE:
      if (c == '+' || c == '-') return f.state = kNumESign, true;
      if (is_digit(c)) return f.state = kNumExp, true;
      return false;
    case kNumESign:
      if (is_digit(c)) return f.state = kNumExp, true;
      return false;
    case kNumExp:
      if (is_digit(c)) return true;
      ends = true;
      return true;
  }
  return false;
}

bool JsonMatcher::feed(std::string_view s) {
  for (char c : s) {
    if (!feed(c)) return false;
  }
  return true;
}

bool JsonMatcher::feed(char c) {
  if (done_) {
    if (!is_ws(c) || ws_run_ >= kMaxWhitespace) return false;
    ++ws_run_;
    return true;
  }
  // Whitespace between tokens (not inside strings, numbers or literals).
  Frame& top = stack_.back();
  const bool in_token =
      top.kind == Kind::kString || top.kind == Kind::kLiteral || (top.kind == Kind::kNumber && !is_ws(c));
  if (is_ws(c) && !in_token) {
    if (top.kind == Kind::kNumber) {
      // Whitespace ends a number when it is in a terminal state.
      bool ends = false;
      Frame saved = top;
      if (!number_char(top, c, ends) || !ends) {
        top = saved;
        return false;
      }
      top = saved;
      if (ws_run_ >= kMaxWhitespace) return false;
      value_done();
      ++ws_run_;
      return true;
    }
    if (ws_run_ >= kMaxWhitespace) return false;
    ++ws_run_;
    return true;
  }
  const int ws_saved = ws_run_;
  ws_run_ = 0;
  switch (top.kind) {
    case Kind::kValue:
      if (feed_value_start(c)) return true;
      ws_run_ = ws_saved;
      return false;
    case Kind::kLiteral: {
      if (top.state < top.text.size() && top.text[top.state] == c) {
        if (++top.state == top.text.size()) value_done();
        return true;
      }
      ws_run_ = ws_saved;
      return false;
    }
    case Kind::kString: {
      if (top.state == kStrNormal && c == '"') {
        if (top.is_key) {
          Frame& obj = stack_[stack_.size() - 2];
          if (!key_prefix_ok(obj, top.text, true)) return ws_run_ = ws_saved, false;
          // Mark the property used and remember its schema for the value.
          const json* vs = nullptr;
          if (const json* props = properties(obj.schema)) {
            uint32_t i = 0;
            for (const auto& [k, v] : props->items()) {
              if (k == top.text) {
                obj.seen |= 1u << i;
                vs = schema_of(&v);
                break;
              }
              ++i;
            }
          }
          stack_.pop_back();
          stack_.back().state = kObjColon;
          stack_.back().value_schema = vs;
          return true;
        }
        if (!string_prefix_ok(top, true)) return ws_run_ = ws_saved, false;
        value_done();
        return true;
      }
      Frame saved = top;
      if (!string_char(top, c)) return top = saved, ws_run_ = ws_saved, false;
      if (top.is_key) {
        if (!key_prefix_ok(stack_[stack_.size() - 2], top.text, false))
          return top = saved, ws_run_ = ws_saved, false;
      } else if (!string_prefix_ok(top, false)) {
        return top = saved, ws_run_ = ws_saved, false;
      }
      return true;
    }
    case Kind::kNumber: {
      bool ends = false;
      Frame saved = top;
      if (!number_char(top, c, ends)) return top = saved, ws_run_ = ws_saved, false;
      if (!ends) return true;
      top = saved;
      // The number ended; c belongs to the parent.
      const std::vector<Frame> backup = stack_;
      value_done();
      if (done_) {
        stack_ = backup;
        done_ = false;
        ws_run_ = ws_saved;
        return false;  // only whitespace may follow a top-level number
      }
      if (feed(c)) return true;
      stack_ = backup;
      ws_run_ = ws_saved;
      return false;
    }
    case Kind::kObject:
      switch (top.state) {
        case kObjFirst:
        case kObjKey:
          if (c == '"') {
            if (!key_prefix_ok(top, "", false)) return ws_run_ = ws_saved, false;
            Frame k{Kind::kString};
            k.is_key = true;
            stack_.push_back(std::move(k));
            return true;
          }
          if (c == '}' && top.state == kObjFirst && object_can_close(top)) return value_done();
          ws_run_ = ws_saved;
          return false;
        case kObjColon:
          if (c == ':') {
            Frame v{Kind::kValue};
            v.schema = top.value_schema;
            stack_.push_back(std::move(v));
            return true;
          }
          ws_run_ = ws_saved;
          return false;
        case kObjAfterValue:
          if (c == ',') {
            // Another key only when one is still possible.
            if (properties(top.schema) && !key_prefix_ok(top, "", false)) return ws_run_ = ws_saved, false;
            top.state = kObjKey;
            return true;
          }
          if (c == '}' && object_can_close(top)) return value_done();
          ws_run_ = ws_saved;
          return false;
      }
      return false;
    case Kind::kArray:
      if (top.state == kArrAfterValue) {
        if (c == ',') return top.state = kArrValue, true;
        if (c == ']') return value_done();
        ws_run_ = ws_saved;
        return false;
      }
      if (c == ']' && top.state == kArrFirst) return value_done();
      {
        const json* items = nullptr;
        if (top.schema) {
          auto it = top.schema->find("items");
          if (it != top.schema->end() && it->is_object()) items = schema_of(&*it);
        }
        const uint8_t saved_state = top.state;
        top.state = kArrAfterValue;
        Frame v{Kind::kValue};
        v.schema = items;
        stack_.push_back(std::move(v));
        if (feed_value_start(c)) return true;
        stack_.pop_back();
        stack_.back().state = saved_state;
        ws_run_ = ws_saved;
        return false;
      }
  }
  return false;
}

}  // namespace qleap
