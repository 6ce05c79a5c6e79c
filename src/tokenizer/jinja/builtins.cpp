// Filters, tests, globals and the Python methods/operators templates use.
#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <limits>

#include "tokenizer/jinja/interpreter.h"

namespace qleap::jinja {

namespace {

[[noreturn]] void type_error(const std::string& msg) {
  throw ChatTemplateError(msg);
}

uint32_t next_cp(const std::string& s, size_t& i) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
  if (i + static_cast<size_t>(len) > s.size()) len = 1;
  uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1f) : len == 3 ? (c & 0x0f) : (c & 0x07);
  for (int k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3f);
  i += static_cast<size_t>(len);
  return cp;
}

// Code point that ends right before byte i (i > 0); sets i to its start.
uint32_t prev_cp(const std::string& s, size_t& i) {
  size_t start = i - 1;
  while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80 && i - start < 4) --start;
  size_t k = start;
  uint32_t cp = next_cp(s, k);
  if (k != i) {  // malformed: treat the last byte alone
    start = i - 1;
    cp = static_cast<unsigned char>(s[start]);
  }
  i = start;
  return cp;
}

// Python str.isspace() code points.
bool py_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f ||
         c == 0x3000;
}

std::string strip(const std::string& s, const Value* chars, bool left, bool right) {
  std::vector<uint32_t> set;
  const bool custom = chars && chars->is_string();
  if (chars && !chars->is_string() && !chars->is_none() && !chars->is_undefined()) {
    type_error("strip arg must be None or str");
  }
  if (custom) {
    for (size_t i = 0; i < chars->s.size();) set.push_back(next_cp(chars->s, i));
  }
  auto match = [&](uint32_t cp) {
    return custom ? std::find(set.begin(), set.end(), cp) != set.end() : py_space(cp);
  };
  size_t b = 0, e = s.size();
  if (left) {
    while (b < e) {
      size_t k = b;
      if (!match(next_cp(s, k))) break;
      b = k;
    }
  }
  if (right) {
    while (e > b) {
      size_t k = e;
      if (!match(prev_cp(s, k))) break;
      e = k;
    }
  }
  return s.substr(b, e - b);
}

std::string ascii_upper(std::string s) {
  for (auto& c : s) {
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 32);
  }
  return s;
}
std::string ascii_lower(std::string s) {
  for (auto& c : s) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
  }
  return s;
}
bool is_alpha(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

// Python str.title() (ASCII letters are cased; other bytes count as uncased).
std::string py_title(const std::string& s) {
  std::string out = s;
  bool prev_cased = false;
  for (auto& c : out) {
    if (is_alpha(c)) {
      c = prev_cased ? ascii_lower(std::string(1, c))[0] : ascii_upper(std::string(1, c))[0];
      prev_cased = true;
    } else {
      prev_cased = false;
    }
  }
  return out;
}

std::string capitalize(const std::string& s) {
  if (s.empty()) return s;
  return ascii_upper(s.substr(0, 1)) + ascii_lower(s.substr(1));
}

std::vector<std::string> split(const std::string& s, const Value* sep, int64_t maxsplit) {
  std::vector<std::string> out;
  if (!sep || sep->is_none()) {
    size_t i = 0;
    while (i < s.size()) {
      size_t k = i;
      while (i < s.size()) {  // skip whitespace
        k = i;
        if (!py_space(next_cp(s, k))) break;
        i = k;
      }
      if (i >= s.size()) break;
      if (maxsplit >= 0 && static_cast<int64_t>(out.size()) >= maxsplit) {
        std::string rest = s.substr(i);
        out.push_back(strip(rest, nullptr, false, true));
        return out;
      }
      size_t start = i;
      while (i < s.size()) {
        k = i;
        if (py_space(next_cp(s, k))) break;
        i = k;
      }
      out.push_back(s.substr(start, i - start));
    }
    return out;
  }
  if (!sep->is_string()) type_error("split: separator must be a string");
  if (sep->s.empty()) type_error("empty separator");
  size_t start = 0;
  while (true) {
    if (maxsplit >= 0 && static_cast<int64_t>(out.size()) >= maxsplit) break;
    size_t p = s.find(sep->s, start);
    if (p == std::string::npos) break;
    out.push_back(s.substr(start, p - start));
    start = p + sep->s.size();
  }
  out.push_back(s.substr(start));
  return out;
}

std::string replace(const std::string& s, const std::string& from, const std::string& to, int64_t count) {
  if (from.empty()) {
    std::string out;
    int64_t n = 0;
    auto chars = utf8_chars(s);
    for (const auto& ch : chars) {
      if (count < 0 || n < count) {
        out += to;
        ++n;
      }
      out += ch;
    }
    if (count < 0 || n < count) out += to;
    return out;
  }
  std::string out;
  size_t start = 0;
  int64_t n = 0;
  while (count < 0 || n < count) {
    size_t p = s.find(from, start);
    if (p == std::string::npos) break;
    out.append(s, start, p - start);
    out += to;
    start = p + from.size();
    ++n;
  }
  out.append(s, start, std::string::npos);
  return out;
}

Value str_list(const std::vector<std::string>& parts) {
  std::vector<Value> items;
  items.reserve(parts.size());
  for (const auto& p : parts) items.push_back(Value::string(p));
  return Value::make_list(std::move(items));
}

int64_t arg_int(const CallArgs& a, const std::string& name, size_t idx, int64_t dflt) {
  const Value* v = a.get(name, idx);
  if (!v || v->is_none() || v->is_undefined()) return dflt;
  return v->as_int();
}

bool arg_bool(const CallArgs& a, const std::string& name, size_t idx, bool dflt) {
  const Value* v = a.get(name, idx);
  return v ? v->truthy() : dflt;
}

std::string require_str(const Value* v, const char* what) {
  if (!v || !v->is_string()) type_error(std::string(what) + ": expected a string argument");
  return v->s;
}

// Python str.format with {} / {0} / {name} fields (no format specs).
std::string py_format(const std::string& fmt, const CallArgs& a) {
  std::string out;
  size_t auto_idx = 0;
  for (size_t i = 0; i < fmt.size(); ++i) {
    const char c = fmt[i];
    if (c == '{' && i + 1 < fmt.size() && fmt[i + 1] == '{') {
      out += '{';
      ++i;
    } else if (c == '}' && i + 1 < fmt.size() && fmt[i + 1] == '}') {
      out += '}';
      ++i;
    } else if (c == '{') {
      const size_t end = fmt.find('}', i);
      if (end == std::string::npos) type_error("format: unmatched '{'");
      std::string field = fmt.substr(i + 1, end - i - 1);
      if (field.find_first_of(":!") != std::string::npos)
        type_error("format: format specs are not supported");
      const Value* v = nullptr;
      if (field.empty()) {
        v = auto_idx < a.pos.size() ? &a.pos[auto_idx] : nullptr;
        ++auto_idx;
      } else if (std::all_of(field.begin(), field.end(), [](char d) { return d >= '0' && d <= '9'; })) {
        size_t idx = 0;
        auto r = std::from_chars(field.data(), field.data() + field.size(), idx);
        v = (r.ec == std::errc() && idx < a.pos.size()) ? &a.pos[idx] : nullptr;
      } else {
        for (const auto& kv : a.kw) {
          if (kv.first == field) v = &kv.second;
        }
      }
      if (!v) type_error("format: missing argument for field '" + field + "'");
      out += to_str(*v);
      i = end;
    } else if (c == '}') {
      type_error("format: single '}' encountered");
    } else {
      out += c;
    }
  }
  return out;
}

Value attribute_of(const Value& v, const std::string& path) {
  Value cur = v;
  size_t start = 0;
  while (true) {
    const size_t dot = path.find('.', start);
    const std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    const bool numeric =
        !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    int64_t index = 0;
    const bool parsed =
        numeric && std::from_chars(part.data(), part.data() + part.size(), index).ec == std::errc();
    cur = parsed ? get_item(cur, Value::integer(index)) : get_attr(cur, part);
    if (dot == std::string::npos) return cur;
    start = dot + 1;
  }
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&#34;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

double py_round(double x, int64_t digits) {
  if (!std::isfinite(x)) return x;
  if (digits == 0) return std::nearbyint(x);  // ties to even, like Python
  if (digits > 0 && digits < 300) {
    char buf[512];
    std::snprintf(buf, sizeof(buf), "%.*f", static_cast<int>(digits), x);  // correctly rounded
    return std::strtod(buf, nullptr);
  }
  const double p = std::pow(10.0, static_cast<double>(-digits));
  return std::nearbyint(x / p) * p;
}

Value to_int(const Value& v, int64_t dflt) {
  switch (v.kind) {
    case Kind::kInt:
      return v;
    case Kind::kBool:
      return Value::integer(v.b ? 1 : 0);
    case Kind::kFloat:
      if (!std::isfinite(v.f)) return Value::integer(dflt);
      return Value::integer(static_cast<int64_t>(v.f));
    case Kind::kString: {
      std::string t = strip(v.s, nullptr, true, true);
      std::string digits;
      for (char c : t) {
        if (c != '_') digits += c;
      }
      char* end = nullptr;
      errno = 0;
      long long r = std::strtoll(digits.c_str(), &end, 10);
      if (!digits.empty() && end && *end == '\0' && errno == 0) return Value::integer(r);
      double d = std::strtod(digits.c_str(), &end);
      if (!digits.empty() && end && *end == '\0' && std::isfinite(d))
        return Value::integer(static_cast<int64_t>(d));
      return Value::integer(dflt);
    }
    default:
      return Value::integer(dflt);
  }
}

Value to_float(const Value& v, double dflt) {
  switch (v.kind) {
    case Kind::kInt:
    case Kind::kBool:
    case Kind::kFloat:
      return Value::number(v.as_double());
    case Kind::kString: {
      std::string t = strip(v.s, nullptr, true, true);
      char* end = nullptr;
      double d = std::strtod(t.c_str(), &end);
      if (!t.empty() && end && *end == '\0') return Value::number(d);
      return Value::number(dflt);
    }
    default:
      return Value::number(dflt);
  }
}

size_t length_of(const Value& v) {
  switch (v.kind) {
    case Kind::kString:
      return utf8_length(v.s);
    case Kind::kList:
      return v.list->size();
    case Kind::kDict:
      return v.dict->items.size();
    case Kind::kUndefined:
      return 0;
    default:
      type_error(std::string("object of type '") + type_name(v) + "' has no len()");
  }
}

Value items_of(const Value& v) {
  std::vector<Value> out;
  if (v.is_dict()) {
    for (const auto& kv : v.dict->items) {
      Value t = Value::make_list({Value::string(kv.first), kv.second});
      t.is_tuple = true;
      out.push_back(std::move(t));
    }
  } else if (!v.is_undefined()) {
    type_error(std::string("items: expected a mapping, got ") + type_name(v));
  }
  return Value::make_list(std::move(out));
}

Value keys_of(const Value& d) {
  std::vector<Value> out;
  for (const auto& kv : d.dict->items) out.push_back(Value::string(kv.first));
  return Value::make_list(std::move(out));
}

Value values_of(const Value& d) {
  std::vector<Value> out;
  for (const auto& kv : d.dict->items) out.push_back(kv.second);
  return Value::make_list(std::move(out));
}

// Shifts a CallArgs left by `n` positional arguments (for select/map forwarding).
CallArgs drop_front(const CallArgs& a, size_t n) {
  CallArgs out;
  for (size_t k = n; k < a.pos.size(); ++k) out.pos.push_back(a.pos[k]);
  out.kw = a.kw;
  return out;
}

Value select_impl(Interpreter& in, const Value& seq, const CallArgs& a, bool by_attr, bool keep) {
  std::vector<Value> out;
  const size_t test_at = by_attr ? 1 : 0;
  std::string attr;
  if (by_attr) attr = require_str(a.get("attribute", 0), "selectattr");
  const Value* test = a.pos.size() > test_at ? &a.pos[test_at] : nullptr;
  CallArgs targs = drop_front(a, test_at + 1);
  for (const auto& item : iterate(seq)) {
    Value probe = by_attr ? attribute_of(item, attr) : item;
    bool ok = test ? apply_test(in, require_str(test, "select"), probe, targs) : probe.truthy();
    if (ok == keep) out.push_back(item);
  }
  return Value::make_list(std::move(out));
}

std::string sort_key_str(const Value& v, bool case_sensitive) {
  return case_sensitive ? v.s : ascii_lower(v.s);
}

bool sort_less(const Value& a, const Value& b, bool case_sensitive) {
  if (!case_sensitive && a.is_string() && b.is_string()) {
    return sort_key_str(a, false) < sort_key_str(b, false);
  }
  return less_than(a, b);
}

}  // namespace

std::vector<Value> iterate(const Value& v) {
  switch (v.kind) {
    case Kind::kList:
      return *v.list;
    case Kind::kDict: {
      std::vector<Value> out;
      for (const auto& kv : v.dict->items) out.push_back(Value::string(kv.first));
      return out;
    }
    case Kind::kString: {
      std::vector<Value> out;
      for (auto& ch : utf8_chars(v.s)) out.push_back(Value::string(std::move(ch)));
      return out;
    }
    case Kind::kUndefined:
      return {};
    default:
      type_error(std::string("'") + type_name(v) + "' object is not iterable");
  }
}

Value get_attr(const Value& obj, const std::string& name) {
  if (obj.kind == Kind::kDict || obj.kind == Kind::kNamespace) {
    if (const Value* v = obj.dict->find(name)) return *v;
  }
  return Value::undefined(name);
}

Value get_item(const Value& obj, const Value& key) {
  if (obj.is_dict() || obj.kind == Kind::kNamespace) {
    if (key.is_string()) {
      if (const Value* v = obj.dict->find(key.s)) return *v;
    } else if (key.is_integer() || key.kind == Kind::kFloat) {
      // JSON keys are strings; Python would not find an int key either.
    }
    return Value::undefined(key.is_string() ? key.s : to_str(key));
  }
  if ((obj.is_list() || obj.is_string()) && key.is_integer()) {
    int64_t i = key.as_int();
    if (obj.is_list()) {
      const int64_t n = static_cast<int64_t>(obj.list->size());
      if (i < 0) i += n;
      if (i < 0 || i >= n) return Value::undefined();
      return (*obj.list)[static_cast<size_t>(i)];
    }
    auto chars = utf8_chars(obj.s);
    const int64_t n = static_cast<int64_t>(chars.size());
    if (i < 0) i += n;
    if (i < 0 || i >= n) return Value::undefined();
    return Value::string(chars[static_cast<size_t>(i)]);
  }
  if (key.is_string()) return get_attr(obj, key.s);
  return Value::undefined();
}

Value slice(const Value& obj, const Value& start_v, const Value& stop_v, const Value& step_v) {
  const int64_t step = step_v.is_none() ? 1 : step_v.as_int();
  if (step == 0) type_error("slice step cannot be zero");
  std::vector<Value> items;
  bool is_str = obj.is_string();
  if (obj.is_list()) {
    items = *obj.list;
  } else if (is_str) {
    items = iterate(obj);
  } else if (obj.is_undefined()) {
    return Value::undefined();
  } else {
    type_error(std::string("'") + type_name(obj) + "' object is not subscriptable");
  }
  const int64_t n = static_cast<int64_t>(items.size());
  auto norm = [&](const Value& v, int64_t dflt, bool is_stop) -> int64_t {
    if (v.is_none()) return dflt;
    int64_t x = v.as_int();
    if (x < 0) x += n;
    if (step > 0) return std::clamp<int64_t>(x, 0, n);
    (void)is_stop;
    return std::clamp<int64_t>(x, -1, n - 1);
  };
  const int64_t start = norm(start_v, step > 0 ? 0 : n - 1, false);
  const int64_t stop = norm(stop_v, step > 0 ? n : -1, true);
  std::vector<Value> out;
  if (step > 0) {
    for (int64_t k = start; k < stop; k += step) out.push_back(items[static_cast<size_t>(k)]);
  } else {
    for (int64_t k = start; k > stop; k += step) out.push_back(items[static_cast<size_t>(k)]);
  }
  if (is_str) {
    std::string s;
    for (const auto& v : out) s += v.s;
    return Value::string(std::move(s));
  }
  Value r = Value::make_list(std::move(out));
  r.is_tuple = obj.is_tuple;
  return r;
}

bool contains(const Value& container, const Value& item) {
  switch (container.kind) {
    case Kind::kString:
      if (!item.is_string()) type_error("'in <string>' requires string as left operand");
      return container.s.find(item.s) != std::string::npos;
    case Kind::kList:
      for (const auto& v : *container.list) {
        if (equals(v, item)) return true;
      }
      return false;
    case Kind::kDict:
      return item.is_string() && container.dict->find(item.s) != nullptr;
    case Kind::kUndefined:
      return false;
    default:
      type_error(std::string("argument of type '") + type_name(container) + "' is not iterable");
  }
}

Value binary_op(const std::string& op, const Value& a, const Value& b, const Interpreter& in) {
  if (op == "~") return Value::string(to_str(a) + to_str(b));
  if (a.is_undefined() || b.is_undefined()) {
    const Value& u = a.is_undefined() ? a : b;
    type_error("'" + (u.s.empty() ? std::string("value") : u.s) + "' is undefined");
  }
  const bool nums = a.is_number() && b.is_number();
  const bool any_float = a.kind == Kind::kFloat || b.kind == Kind::kFloat;
  auto unsupported = [&]() -> Value {
    type_error("unsupported operand type(s) for " + op + ": '" + type_name(a) + "' and '" + type_name(b) +
               "'");
  };
  if (op == "+") {
    if (nums) {
      if (any_float) return Value::number(a.as_double() + b.as_double());
      int64_t r;
      if (__builtin_add_overflow(a.as_int(), b.as_int(), &r)) type_error("integer overflow");
      return Value::integer(r);
    }
    if (a.is_string() && b.is_string()) {
      if (a.s.size() + b.s.size() > in.limits().max_output) type_error("string too large");
      return Value::string(a.s + b.s);
    }
    if (a.is_list() && b.is_list()) {
      std::vector<Value> items = *a.list;
      items.insert(items.end(), b.list->begin(), b.list->end());
      in.check_collection(items.size());
      return Value::make_list(std::move(items));
    }
    if (a.is_string())
      type_error(std::string("can only concatenate str (not \"") + type_name(b) + "\") to str");
    return unsupported();
  }
  if (op == "*") {
    if (nums) {
      if (any_float) return Value::number(a.as_double() * b.as_double());
      int64_t r;
      if (__builtin_mul_overflow(a.as_int(), b.as_int(), &r)) type_error("integer overflow");
      return Value::integer(r);
    }
    const Value* seq = (a.is_string() || a.is_list()) ? &a : (b.is_string() || b.is_list()) ? &b : nullptr;
    const Value* cnt = seq == &a ? &b : &a;
    if (seq && cnt->is_integer()) {
      const int64_t n = std::max<int64_t>(0, cnt->as_int());
      if (seq->is_string()) {
        if (static_cast<double>(seq->s.size()) * static_cast<double>(n) >
            static_cast<double>(in.limits().max_output)) {
          type_error("string too large");
        }
        std::string out;
        for (int64_t k = 0; k < n; ++k) out += seq->s;
        return Value::string(std::move(out));
      }
      in.check_collection(seq->list->size() * static_cast<size_t>(n));
      std::vector<Value> out;
      for (int64_t k = 0; k < n; ++k) out.insert(out.end(), seq->list->begin(), seq->list->end());
      return Value::make_list(std::move(out));
    }
    return unsupported();
  }
  if (!nums) return unsupported();
  if (op == "-") {
    if (any_float) return Value::number(a.as_double() - b.as_double());
    int64_t r;
    if (__builtin_sub_overflow(a.as_int(), b.as_int(), &r)) type_error("integer overflow");
    return Value::integer(r);
  }
  if (op == "/") {
    if (b.as_double() == 0.0) type_error("division by zero");
    return Value::number(a.as_double() / b.as_double());
  }
  if (op == "//" || op == "%") {
    if (b.as_double() == 0.0)
      type_error(op == "//" ? "integer division or modulo by zero" : "modulo by zero");
    if (any_float) {
      const double x = a.as_double(), y = b.as_double();
      double m = std::fmod(x, y);
      if (m != 0.0 && ((m < 0) != (y < 0))) m += y;
      if (op == "%") return Value::number(m);
      return Value::number(std::floor((x - m) / y + 0.5 * 0));
    }
    const int64_t x = a.as_int(), y = b.as_int();
    if (x == std::numeric_limits<int64_t>::min() && y == -1) type_error("integer overflow");
    int64_t q = x / y, m = x % y;
    if (m != 0 && ((m < 0) != (y < 0))) {
      --q;
      m += y;
    }
    return Value::integer(op == "//" ? q : m);
  }
  if (op == "**") {
    if (!any_float && b.as_int() >= 0) {
      int64_t r = 1, base = a.as_int();
      for (int64_t e = b.as_int(); e > 0; --e) {
        if (__builtin_mul_overflow(r, base, &r)) type_error("integer overflow");
        if (r == 0 || r == 1) break;
      }
      return Value::integer(r);
    }
    return Value::number(std::pow(a.as_double(), b.as_double()));
  }
  return unsupported();
}

bool call_method(Interpreter& in, const Value& obj, const std::string& name, const CallArgs& a, Value& out) {
  (void)in;
  if (obj.is_string()) {
    const std::string& s = obj.s;
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
      out = Value::string(strip(s, a.get("chars", 0), name != "rstrip", name != "lstrip"));
    } else if (name == "split") {
      out = str_list(split(s, a.get("sep", 0), arg_int(a, "maxsplit", 1, -1)));
    } else if (name == "splitlines") {
      std::vector<std::string> lines;
      size_t start = 0;
      for (size_t k = 0; k < s.size(); ++k) {
        if (s[k] == '\n' || s[k] == '\r') {
          lines.push_back(s.substr(start, k - start));
          if (s[k] == '\r' && k + 1 < s.size() && s[k + 1] == '\n') ++k;
          start = k + 1;
        }
      }
      if (start < s.size()) lines.push_back(s.substr(start));
      out = str_list(lines);
    } else if (name == "startswith" || name == "endswith") {
      const Value* p = a.get("prefix", 0);
      if (!p) p = a.get("suffix", 0);
      std::vector<std::string> cands;
      if (p && p->is_string()) {
        cands.push_back(p->s);
      } else if (p && p->is_list()) {
        for (const auto& e : *p->list) cands.push_back(require_str(&e, name.c_str()));
      } else {
        type_error(name + " first arg must be str or a tuple of str");
      }
      bool r = false;
      for (const auto& c : cands) {
        if (name == "startswith") {
          r |= s.compare(0, c.size(), c) == 0 && s.size() >= c.size();
        } else {
          r |= s.size() >= c.size() && s.compare(s.size() - c.size(), c.size(), c) == 0;
        }
      }
      out = Value::boolean(r);
    } else if (name == "upper") {
      out = Value::string(ascii_upper(s));
    } else if (name == "lower") {
      out = Value::string(ascii_lower(s));
    } else if (name == "title") {
      out = Value::string(py_title(s));
    } else if (name == "capitalize") {
      out = Value::string(capitalize(s));
    } else if (name == "replace") {
      out = Value::string(replace(s, require_str(a.get("old", 0), "replace"),
                                  require_str(a.get("new", 1), "replace"), arg_int(a, "count", 2, -1)));
    } else if (name == "format") {
      out = Value::string(py_format(s, a));
    } else if (name == "count") {
      const std::string sub = require_str(a.get("sub", 0), "count");
      int64_t n = 0;
      if (sub.empty()) {
        n = static_cast<int64_t>(utf8_length(s)) + 1;
      } else {
        for (size_t p = s.find(sub); p != std::string::npos; p = s.find(sub, p + sub.size())) ++n;
      }
      out = Value::integer(n);
    } else if (name == "find") {
      const std::string sub = require_str(a.get("sub", 0), "find");
      const size_t p = s.find(sub);
      out = Value::integer(p == std::string::npos ? -1 : static_cast<int64_t>(utf8_length(s.substr(0, p))));
    } else if (name == "join") {
      const Value* it = a.get("iterable", 0);
      if (!it) type_error("join() takes exactly one argument");
      std::string r;
      bool first = true;
      for (const auto& e : iterate(*it)) {
        if (!e.is_string()) type_error("sequence item: expected str instance");
        if (!first) r += s;
        first = false;
        r += e.s;
      }
      out = Value::string(std::move(r));
    } else if (name == "isdigit" || name == "isalpha" || name == "isalnum" || name == "isspace" ||
               name == "islower" || name == "isupper") {
      bool r = !s.empty();
      bool cased = false;
      for (char c : s) {
        const bool d = c >= '0' && c <= '9';
        if (name == "isdigit") r &= d;
        if (name == "isalpha") r &= is_alpha(c);
        if (name == "isalnum") r &= is_alpha(c) || d;
        if (name == "isspace") r &= py_space(static_cast<unsigned char>(c));
        if (name == "islower") {
          r &= !(c >= 'A' && c <= 'Z');
          cased |= c >= 'a' && c <= 'z';
        }
        if (name == "isupper") {
          r &= !(c >= 'a' && c <= 'z');
          cased |= c >= 'A' && c <= 'Z';
        }
      }
      if (name == "islower" || name == "isupper") r = r && cased;
      out = Value::boolean(r);
    } else {
      return false;
    }
    return true;
  }
  if (obj.is_dict()) {
    if (name == "get") {
      const Value* k = a.get("key", 0);
      if (!k) type_error("get expected at least 1 argument");
      Value v = k->is_string() ? get_attr(obj, k->s) : Value::undefined();
      if (k->is_string() && obj.dict->find(k->s)) {
        out = v;
      } else {
        const Value* d = a.get("default", 1);
        out = d ? *d : Value::none();
      }
    } else if (name == "items") {
      out = items_of(obj);
    } else if (name == "keys") {
      out = keys_of(obj);
    } else if (name == "values") {
      out = values_of(obj);
    } else if (name == "pop" || name == "update" || name == "setdefault" || name == "clear" ||
               name == "popitem") {
      type_error("unsafe: dict." + name + "() is not allowed in an immutable sandbox");
    } else {
      return false;
    }
    return true;
  }
  if (obj.is_list()) {
    if (name == "append" || name == "extend" || name == "pop" || name == "insert" || name == "remove" ||
        name == "sort" || name == "reverse" || name == "clear") {
      type_error("unsafe: list." + name + "() is not allowed in an immutable sandbox");
    }
    if (name == "index" || name == "count") {
      const Value* x = a.get("x", 0);
      if (!x) type_error(name + "() takes exactly one argument");
      int64_t n = 0, idx = -1;
      for (size_t k = 0; k < obj.list->size(); ++k) {
        if (equals((*obj.list)[k], *x)) {
          ++n;
          if (idx < 0) idx = static_cast<int64_t>(k);
        }
      }
      if (name == "index" && idx < 0) type_error("value is not in list");
      out = Value::integer(name == "index" ? idx : n);
      return true;
    }
  }
  return false;
}

Value apply_filter(Interpreter& in, const std::string& name, const Value& v, const CallArgs& a) {
  if (name == "trim") {
    if (v.is_undefined()) return Value::string("");
    return Value::string(strip(v.is_string() ? v.s : to_str(v), a.get("chars", 0), true, true));
  }
  if (name == "length" || name == "count") return Value::integer(static_cast<int64_t>(length_of(v)));
  if (name == "upper") return Value::string(ascii_upper(to_str(v)));
  if (name == "lower") return Value::string(ascii_lower(to_str(v)));
  if (name == "capitalize") return Value::string(capitalize(to_str(v)));
  if (name == "title") {
    // Jinja's title: words start after whitespace, '-', '(', '{', '[', '<'.
    const std::string s = to_str(v);
    std::string out;
    bool start = true;
    for (char c : s) {
      const bool sep = c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v' ||
                       c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
      if (sep) {
        out += c;
        start = true;
      } else {
        out += start ? ascii_upper(std::string(1, c)) : ascii_lower(std::string(1, c));
        start = false;
      }
    }
    return Value::string(out);
  }
  if (name == "tojson") {
    JsonOptions o;
    if (const Value* e = a.get("ensure_ascii", 99)) o.ensure_ascii = e->truthy();
    if (const Value* i = a.get("indent", 0); i && !i->is_none()) {
      if (i->is_string()) type_error("tojson: string indents are not supported");
      o.indent = static_cast<int>(std::max<int64_t>(0, i->as_int()));
    }
    if (const Value* s = a.get("separators", 99); s && s->is_list() && s->list->size() == 2) {
      o.item_sep = require_str(&(*s->list)[0], "separators");
      o.key_sep = require_str(&(*s->list)[1], "separators");
    }
    if (const Value* s = a.get("sort_keys", 99)) o.sort_keys = s->truthy();
    return Value::string(to_json(v, o));
  }
  if (name == "safe") return v;
  if (name == "string") return Value::string(to_str(v));
  if (name == "e" || name == "escape") return Value::string(html_escape(to_str(v)));
  if (name == "int") return to_int(v, arg_int(a, "default", 0, 0));
  if (name == "float") {
    const Value* d = a.get("default", 0);
    return to_float(v, d ? d->as_double() : 0.0);
  }
  if (name == "join") {
    const Value* sep = a.get("d", 0);
    const Value* attr = a.get("attribute", 1);
    std::string out;
    bool first = true;
    for (const auto& e : iterate(v)) {
      if (!first) out += sep ? to_str(*sep) : "";
      first = false;
      out += to_str(attr ? attribute_of(e, to_str(*attr)) : e);
    }
    return Value::string(out);
  }
  if (name == "default" || name == "d") {
    const Value* d = a.get("default_value", 0);
    const bool boolean = arg_bool(a, "boolean", 1, false);
    if (v.is_undefined() || (boolean && !v.truthy())) return d ? *d : Value::string("");
    return v;
  }
  if (name == "first" || name == "last") {
    auto items = iterate(v);
    if (items.empty()) return Value::undefined();
    return name == "first" ? items.front() : items.back();
  }
  if (name == "replace") {
    return Value::string(
        replace(to_str(v), to_str(*a.get("old", 0)), to_str(*a.get("new", 1)), arg_int(a, "count", 2, -1)));
  }
  if (name == "items") return items_of(v);
  if (name == "list") return Value::make_list(iterate(v));
  if (name == "reverse") {
    if (v.is_string()) {
      auto chars = utf8_chars(v.s);
      std::string out;
      for (auto it = chars.rbegin(); it != chars.rend(); ++it) out += *it;
      return Value::string(out);
    }
    auto items = iterate(v);
    std::reverse(items.begin(), items.end());
    return Value::make_list(std::move(items));
  }
  if (name == "sort") {
    const bool rev = arg_bool(a, "reverse", 0, false);
    const bool cs = arg_bool(a, "case_sensitive", 1, false);
    const Value* attr = a.get("attribute", 2);
    auto items = iterate(v);
    std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
      const Value kx = attr ? attribute_of(x, to_str(*attr)) : x;
      const Value ky = attr ? attribute_of(y, to_str(*attr)) : y;
      return rev ? sort_less(ky, kx, cs) : sort_less(kx, ky, cs);
    });
    return Value::make_list(std::move(items));
  }
  if (name == "unique") {
    const bool cs = arg_bool(a, "case_sensitive", 0, false);
    const Value* attr = a.get("attribute", 1);
    std::vector<Value> out, seen;
    for (const auto& e : iterate(v)) {
      Value key = attr ? attribute_of(e, to_str(*attr)) : e;
      if (!cs && key.is_string()) key = Value::string(ascii_lower(key.s));
      bool dup = false;
      for (const auto& s : seen) dup |= equals(s, key);
      if (!dup) {
        seen.push_back(key);
        out.push_back(e);
      }
    }
    return Value::make_list(std::move(out));
  }
  if (name == "selectattr") return select_impl(in, v, a, true, true);
  if (name == "rejectattr") return select_impl(in, v, a, true, false);
  if (name == "select") return select_impl(in, v, a, false, true);
  if (name == "reject") return select_impl(in, v, a, false, false);
  if (name == "map") {
    std::vector<Value> out;
    if (const Value* attr = a.get("attribute", 99)) {
      const Value* dflt = a.get("default", 99);
      for (const auto& e : iterate(v)) {
        Value r = attribute_of(e, to_str(*attr));
        out.push_back(r.is_undefined() && dflt ? *dflt : r);
      }
    } else {
      if (a.pos.empty()) type_error("map: expected a filter name or attribute=");
      const std::string f = require_str(&a.pos[0], "map");
      CallArgs rest = drop_front(a, 1);
      for (const auto& e : iterate(v)) out.push_back(apply_filter(in, f, e, rest));
    }
    return Value::make_list(std::move(out));
  }
  if (name == "abs") {
    if (v.kind == Kind::kFloat) return Value::number(std::fabs(v.f));
    return Value::integer(std::llabs(v.as_int()));
  }
  if (name == "round") {
    const int64_t prec = arg_int(a, "precision", 0, 0);
    const Value* m = a.get("method", 1);
    const std::string method = m ? to_str(*m) : "common";
    const double x = v.as_double();
    if (method == "ceil" || method == "floor") {
      const double p = std::pow(10.0, static_cast<double>(prec));
      return Value::number((method == "ceil" ? std::ceil(x * p) : std::floor(x * p)) / p);
    }
    if (method != "common") type_error("method must be common, ceil or floor");
    return Value::number(py_round(x, prec));
  }
  if (name == "wordcount") {
    const std::string s = to_str(v);
    int64_t n = 0;
    bool in_word = false;
    for (unsigned char c : s) {
      const bool w = (c >= '0' && c <= '9') || is_alpha(static_cast<char>(c)) || c == '_' || c >= 0x80;
      if (w && !in_word) ++n;
      in_word = w;
    }
    return Value::integer(n);
  }
  if (name == "sum" || name == "min" || name == "max") {
    const Value* attr = a.get("attribute", name == "sum" ? 0 : 1);
    auto items = iterate(v);
    if (attr) {
      for (auto& e : items) e = attribute_of(e, to_str(*attr));
    }
    if (name == "sum") {
      const Value* start = a.get("start", 1);
      Value acc = start ? *start : Value::integer(0);
      for (const auto& e : items) acc = binary_op("+", acc, e, in);
      return acc;
    }
    if (items.empty()) return Value::undefined();
    const bool cs = arg_bool(a, "case_sensitive", 0, false);
    Value best = items[0];
    for (const auto& e : items) {
      if (name == "min" ? sort_less(e, best, cs) : sort_less(best, e, cs)) best = e;
    }
    return best;
  }
  if (name == "indent") {
    const Value* w = a.get("width", 0);
    const std::string pad =
        w && w->is_string() ? w->s : std::string(static_cast<size_t>(w ? w->as_int() : 4), ' ');
    const bool first = arg_bool(a, "first", 1, false);
    const bool blank = arg_bool(a, "blank", 2, false);
    const std::string s = to_str(v);
    std::string out;
    size_t start = 0;
    bool is_first = true;
    while (start <= s.size()) {
      size_t nl = s.find('\n', start);
      std::string line = s.substr(start, nl == std::string::npos ? std::string::npos : nl - start);
      if ((!is_first || first) && (blank || !line.empty())) out += pad;
      out += line;
      if (nl == std::string::npos) break;
      out += '\n';
      start = nl + 1;
      is_first = false;
    }
    return Value::string(out);
  }
  if (name == "dictsort") {
    if (!v.is_dict()) type_error("dictsort: expected a mapping");
    auto items = items_of(v);
    std::stable_sort(items.list->begin(), items.list->end(), [](const Value& x, const Value& y) {
      return ascii_lower((*x.list)[0].s) < ascii_lower((*y.list)[0].s);
    });
    return items;
  }
  if (name == "batch") {
    const int64_t n = arg_int(a, "linecount", 0, 1);
    if (n <= 0) type_error("batch: size must be positive");
    std::vector<Value> out, cur;
    for (const auto& e : iterate(v)) {
      cur.push_back(e);
      if (static_cast<int64_t>(cur.size()) == n) {
        out.push_back(Value::make_list(std::move(cur)));
        cur.clear();
      }
    }
    if (!cur.empty()) out.push_back(Value::make_list(std::move(cur)));
    return Value::make_list(std::move(out));
  }
  type_error("no filter named '" + name + "'");
}

bool apply_test(Interpreter& in, const std::string& name, const Value& v, const CallArgs& a) {
  (void)in;
  auto arg = [&](size_t k) -> const Value& {
    if (k >= a.pos.size()) type_error("test '" + name + "' needs an argument");
    return a.pos[k];
  };
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "string") return v.is_string();
  if (name == "mapping") return v.is_dict();
  if (name == "iterable") return v.is_list() || v.is_dict() || v.is_string() || v.is_undefined();
  if (name == "sequence") return v.is_list() || v.is_dict() || v.is_string();
  if (name == "number") return v.is_number();
  if (name == "integer") return v.kind == Kind::kInt;
  if (name == "float") return v.kind == Kind::kFloat;
  if (name == "boolean") return v.kind == Kind::kBool;
  if (name == "true") return v.kind == Kind::kBool && v.b;
  if (name == "false") return v.kind == Kind::kBool && !v.b;
  if (name == "callable") return v.kind == Kind::kCallable;
  if (name == "equalto" || name == "eq" || name == "==" || name == "sameas") return equals(v, arg(0));
  if (name == "ne" || name == "!=") return !equals(v, arg(0));
  if (name == "lt" || name == "lessthan" || name == "<") return less_than(v, arg(0));
  if (name == "le" || name == "<=") return !less_than(arg(0), v);
  if (name == "gt" || name == "greaterthan" || name == ">") return less_than(arg(0), v);
  if (name == "ge" || name == ">=") return !less_than(v, arg(0));
  if (name == "in") return contains(arg(0), v);
  if (name == "odd") return v.as_int() % 2 != 0;
  if (name == "even") return v.as_int() % 2 == 0;
  if (name == "divisibleby") {
    const int64_t d = arg(0).as_int();
    if (d == 0) type_error("division by zero");
    return v.as_int() % d == 0;
  }
  if (name == "lower") return v.is_string() && ascii_lower(v.s) == v.s;
  if (name == "upper") return v.is_string() && ascii_upper(v.s) == v.s;
  type_error("no test named '" + name + "'");
}

void install_globals(Frame& frame) {
  frame.vars["raise_exception"] =
      Value::callable("raise_exception", [](Interpreter&, const CallArgs& a) -> Value {
        const Value* m = a.get("message", 0);
        throw RaisedError(m ? to_str(*m) : std::string("raise_exception() called"));
      });
  frame.vars["range"] = Value::callable("range", [](Interpreter& in, const CallArgs& a) {
    int64_t start = 0, stop = 0, step = 1;
    if (a.pos.size() == 1) {
      stop = a.pos[0].as_int();
    } else if (a.pos.size() >= 2) {
      start = a.pos[0].as_int();
      stop = a.pos[1].as_int();
      if (a.pos.size() >= 3) step = a.pos[2].as_int();
    } else {
      type_error("range expected at least 1 argument");
    }
    if (step == 0) type_error("range() arg 3 must not be zero");
    const double count =
        std::ceil((static_cast<double>(stop) - static_cast<double>(start)) / static_cast<double>(step));
    in.check_collection(count > 0 ? static_cast<size_t>(count) : 0);
    std::vector<Value> out;
    for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) out.push_back(Value::integer(k));
    return Value::make_list(std::move(out));
  });
  frame.vars["namespace"] = Value::callable("namespace", [](Interpreter&, const CallArgs& a) {
    Value ns = Value::make_namespace();
    for (const auto& p : a.pos) {
      if (!p.is_dict()) type_error("namespace() positional argument must be a dict");
      for (const auto& kv : p.dict->items) ns.dict->set(kv.first, kv.second);
    }
    for (const auto& kv : a.kw) {
      if (!kv.first.empty() && kv.first[0] == '_') type_error("namespace attributes cannot start with '_'");
      ns.dict->set(kv.first, kv.second);
    }
    return ns;
  });
  frame.vars["dict"] = Value::callable("dict", [](Interpreter&, const CallArgs& a) {
    Value d = Value::make_dict();
    for (const auto& p : a.pos) {
      if (p.is_dict()) {
        for (const auto& kv : p.dict->items) d.dict->set(kv.first, kv.second);
      } else {
        for (const auto& item : iterate(p)) {
          if (!item.is_list() || item.list->size() != 2) type_error("dict(): expected key/value pairs");
          d.dict->set(to_str((*item.list)[0]), (*item.list)[1]);
        }
      }
    }
    for (const auto& kv : a.kw) d.dict->set(kv.first, kv.second);
    return d;
  });
  frame.vars["strftime_now"] = Value::callable("strftime_now", [](Interpreter& in, const CallArgs& a) {
    const std::string fmt = require_str(a.get("format", 0), "strftime_now");
    std::time_t t = in.now_unix() ? static_cast<std::time_t>(*in.now_unix()) : std::time(nullptr);
    std::tm tm{};
    localtime_r(&t, &tm);
    char buf[512];
    const size_t n = fmt.empty() ? 0 : std::strftime(buf, sizeof(buf), fmt.c_str(), &tm);
    if (n == 0 && !fmt.empty()) type_error("strftime_now: format produced no output or is too long");
    return Value::string(std::string(buf, n));
  });
}

}  // namespace qleap::jinja
