// The value type of the chat-template interpreter: the Python objects a Jinja template sees
// (None, bool, int, float, str, list/tuple, dict, namespace, callables) plus Jinja's Undefined.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"

namespace qleap {

// A chat template failed to parse or render. Syntax errors carry "line L, column C"; a template's
// own raise_exception(msg) produces exactly msg.
struct ChatTemplateError : InvalidArgument {
  using InvalidArgument::InvalidArgument;
};

namespace jinja {

struct Value;
class Interpreter;

struct Dict {
  // Insertion-ordered like a Python dict; chat data dicts are small so a linear scan is fine.
  std::vector<std::pair<std::string, Value>> items;
  const Value* find(const std::string& key) const;
  Value* find(const std::string& key);
  void set(const std::string& key, Value v);
};

struct CallArgs {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
  // Named or positional argument `name` at position `index`; nullptr when absent.
  const Value* get(const std::string& name, size_t index) const;
};

using NativeFn = std::function<Value(Interpreter&, const CallArgs&)>;
struct Callable {
  std::string name;
  NativeFn fn;
};

enum class Kind { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kNamespace, kCallable };

struct Value {
  Kind kind = Kind::kUndefined;
  bool b = false;
  bool is_tuple = false;  // only changes how a list prints: (1, 2)
  int64_t i = 0;
  double f = 0.0;
  std::string s;  // string payload; for Undefined, the missing name
  std::shared_ptr<std::vector<Value>> list;
  std::shared_ptr<Dict> dict;  // dict and namespace
  std::shared_ptr<Callable> fn;

  Value() = default;
  static Value undefined(std::string name = {});
  static Value none();
  static Value boolean(bool v);
  static Value integer(int64_t v);
  static Value number(double v);
  static Value string(std::string v);
  static Value make_list(std::vector<Value> items = {});
  static Value make_dict();
  static Value make_namespace();
  static Value callable(std::string name, NativeFn fn);
  static Value from_json(const nlohmann::ordered_json& j);

  bool is_undefined() const { return kind == Kind::kUndefined; }
  bool is_none() const { return kind == Kind::kNone; }
  bool is_string() const { return kind == Kind::kString; }
  bool is_list() const { return kind == Kind::kList; }
  bool is_dict() const { return kind == Kind::kDict; }
  bool is_number() const { return kind == Kind::kInt || kind == Kind::kFloat || kind == Kind::kBool; }
  bool is_integer() const { return kind == Kind::kInt || kind == Kind::kBool; }
  bool truthy() const;
  double as_double() const;  // numbers only
  int64_t as_int() const;    // ints and bools only
};

const char* type_name(const Value& v);
// Python str(): what {{ v }} prints. Undefined prints as "".
std::string to_str(const Value& v);
// Python repr(), used for items inside printed lists and dicts.
std::string repr(const Value& v);
// Python repr(float): shortest round-trip digits, "1.0", "1e-05", "1e+20", "inf", "nan".
std::string format_float(double d);
// json.dumps(v, ensure_ascii, indent, separators, sort_keys) as transformers' tojson filter calls it.
struct JsonOptions {
  bool ensure_ascii = false;
  int indent = -1;       // < 0: single line
  std::string item_sep;  // empty: Python's default for the indent mode
  std::string key_sep;
  bool sort_keys = false;
};
std::string to_json(const Value& v, const JsonOptions& opt);
// Python ==, and < for sort/comparisons (throws ChatTemplateError for unorderable types).
bool equals(const Value& a, const Value& b);
bool less_than(const Value& a, const Value& b);

// UTF-8 helpers: Python indexes strings by code point.
std::vector<std::string> utf8_chars(const std::string& s);
size_t utf8_length(const std::string& s);

}  // namespace jinja
}  // namespace qleap
