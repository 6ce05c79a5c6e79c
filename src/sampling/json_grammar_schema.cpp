// Compiles a JSON schema into JsonSchema nodes (json_grammar_schema.h). The schema comes from a
// request, so every walk is bounded: $ref chains and merged sub-schemas by a depth limit, the
// table by a node limit.
#include "sampling/json_grammar_schema.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>
#include <set>
#include <stdexcept>

#include "sampling/json_grammar.h"

namespace qleap {

using nlohmann::json;
using namespace jg;

namespace {

constexpr int kMaxNodes = 4096;
constexpr int kMaxDepth = 128;

[[noreturn]] void fail(const std::string& msg) {
  throw std::invalid_argument(msg);
}

// Keywords that only describe: accepted and ignored.
bool is_annotation(const std::string& k) {
  static const std::set<std::string> kAnn = {
      "title",         "description",     "default",          "examples",      "$schema",
      "$id",           "$comment",        "format",           "deprecated",    "readOnly",
      "writeOnly",     "contentEncoding", "contentMediaType", "$defs",         "definitions",
      "discriminator", "strict",          "$anchor",          "contentSchema", "example"};
  return kAnn.count(k) != 0 || k.rfind("x-", 0) == 0;
}

// Keywords that constrain values in ways the recognizer does not enforce: refused.
bool is_unsupported(const std::string& k) {
  static const std::set<std::string> kNo = {"pattern",
                                            "patternProperties",
                                            "multipleOf",
                                            "uniqueItems",
                                            "not",
                                            "if",
                                            "then",
                                            "else",
                                            "dependentRequired",
                                            "dependentSchemas",
                                            "dependencies",
                                            "contains",
                                            "minContains",
                                            "maxContains",
                                            "prefixItems",
                                            "propertyNames",
                                            "unevaluatedProperties",
                                            "unevaluatedItems",
                                            "additionalItems",
                                            "$dynamicRef",
                                            "$recursiveRef",
                                            "oneOf"};
  return kNo.count(k) != 0;
}

int add_sat(int a, int b) {
  return a >= kNever || b >= kNever ? kNever : std::min(kNever, a + b);
}

uint8_t type_bit(const std::string& t) {
  if (t == "null") return kNull;
  if (t == "boolean") return kBool;
  if (t == "integer") return kInt;
  if (t == "number") return kInt | kFrac;
  if (t == "string") return kString;
  if (t == "array") return kArray;
  if (t == "object") return kObject;
  fail(fmt::format("unknown schema type '{}'", t));
}

uint8_t value_type(const json& v) {
  switch (v.type()) {
    case json::value_t::null:
      return kNull;
    case json::value_t::boolean:
      return kBool;
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
      return kInt;
    case json::value_t::number_float:
      return v.get<double>() == std::floor(v.get<double>()) ? kInt : kFrac;
    case json::value_t::string:
      return kString;
    case json::value_t::array:
      return kArray;
    default:
      return kObject;
  }
}

int nonneg_int(const json& s, const char* key, int def) {
  auto it = s.find(key);
  if (it == s.end()) return def;
  if (!it->is_number() || it->get<double>() < 0 || it->get<double>() != std::floor(it->get<double>()))
    fail(fmt::format("schema '{}' must be a non-negative integer", key));
  return int(std::min(it->get<double>(), 1e9));
}

// Both schemas apply (allOf, or an anyOf branch under its parent's keywords).
json merge(const json& a, const json& b) {
  json out = a;
  for (const auto& [k, v] : b.items()) {
    auto it = out.find(k);
    if (it == out.end()) {
      out[k] = v;
    } else if (k == "properties" && it->is_object() && v.is_object()) {
      for (const auto& [pk, pv] : v.items()) {
        auto p = it->find(pk);
        if (p == it->end()) {
          (*it)[pk] = pv;
        } else {
          *p = json{{"allOf", json::array({*p, pv})}};
        }
      }
    } else if (k == "required" && it->is_array() && v.is_array()) {
      for (const auto& r : v) {
        if (std::find(it->begin(), it->end(), r) == it->end()) it->push_back(r);
      }
    } else if (k == "type") {
      std::set<std::string> ta, tb;
      auto collect = [](const json& t, std::set<std::string>& dst) {
        if (t.is_string()) dst.insert(t.get<std::string>());
        if (t.is_array()) {
          for (const auto& x : t) {
            if (x.is_string()) dst.insert(x.get<std::string>());
          }
        }
      };
      collect(*it, ta);
      collect(v, tb);
      json both = json::array();
      for (const auto& t : ta) {
        if (tb.count(t) || (t == "integer" && tb.count("number"))) both.push_back(t);
      }
      for (const auto& t : tb) {
        if (t == "integer" && ta.count("number") && !ta.count("integer")) both.push_back(t);
      }
      if (both.empty()) fail("schema parts require incompatible types");
      out[k] = both;
    } else if ((k == "minimum" || k == "minLength" || k == "minItems" || k == "minProperties") &&
               it->is_number() && v.is_number()) {
      out[k] = std::max(it->get<double>(), v.get<double>());
    } else if ((k == "maximum" || k == "maxLength" || k == "maxItems" || k == "maxProperties") &&
               it->is_number() && v.is_number()) {
      out[k] = std::min(it->get<double>(), v.get<double>());
    } else if (k == "allOf" && it->is_array() && v.is_array()) {
      for (const auto& x : v) it->push_back(x);
    } else if (k == "anyOf") {
      // Two unions: both apply.
      out["allOf"] = json::array({json{{"anyOf", *it}}, json{{"anyOf", v}}});
      out.erase("anyOf");
    } else {
      out[k] = v;
    }
  }
  return out;
}

class Compiler {
 public:
  explicit Compiler(const json& root) : root_(root) {}

  std::shared_ptr<const JsonSchema> run() {
    auto s = std::make_shared<JsonSchema>();
    out_ = s.get();
    s->root_ = compile_ref(root_);
    compute_shortest();
    if (s->nodes_[size_t(s->root_)].shortest >= kNever) fail("no JSON value satisfies this schema");
    return s;
  }

 private:
  int new_node() {
    if (int(out_->nodes_.size()) >= kMaxNodes) fail("schema too large");
    out_->nodes_.emplace_back();
    return int(out_->nodes_.size()) - 1;
  }

  // A schema that lives in the request document: compiled once (references may point back to it).
  int compile_ref(const json& s) {
    if (auto it = memo_.find(&s); it != memo_.end()) return it->second;
    const int id = new_node();
    memo_[&s] = id;
    fill(id, s);
    return id;
  }

  // A schema built here (a merge): compiled on its own.
  int compile_fresh(const json& s) {
    const int id = new_node();
    fill(id, s);
    return id;
  }

  const json& resolve(const std::string& ref) {
    if (ref.empty() || ref[0] != '#')
      fail(fmt::format("only local $ref (\"#/...\") is supported, got '{}'", ref));
    const json* cur = &root_;
    size_t i = 1;
    if (i < ref.size() && ref[i] != '/') fail(fmt::format("unsupported $ref '{}'", ref));
    while (i < ref.size()) {
      size_t j = ref.find('/', i + 1);
      if (j == std::string::npos) j = ref.size();
      std::string tok = ref.substr(i + 1, j - i - 1);
      std::string dec;
      for (size_t k = 0; k < tok.size(); ++k) {
        if (tok[k] == '~' && k + 1 < tok.size() && (tok[k + 1] == '0' || tok[k + 1] == '1')) {
          dec += tok[k + 1] == '0' ? '~' : '/';
          ++k;
        } else {
          dec += tok[k];
        }
      }
      if (cur->is_object() && cur->contains(dec)) {
        cur = &(*cur)[dec];
      } else if (cur->is_array() && !dec.empty() && std::all_of(dec.begin(), dec.end(), ::isdigit) &&
                 std::stoull(dec.substr(0, 9)) < cur->size()) {
        cur = &(*cur)[size_t(std::stoull(dec.substr(0, 9)))];
      } else {
        fail(fmt::format("$ref '{}' does not resolve", ref));
      }
      i = j;
    }
    return *cur;
  }

  struct DepthGuard {
    explicit DepthGuard(int& d) : d_(d) {
      if (++d_ > kMaxDepth) fail("schema nested too deeply");
    }
    ~DepthGuard() { --d_; }
    int& d_;
  };

  void fill(int id, const json& s) {
    DepthGuard guard(depth_);
    auto node = [&]() -> Node& { return out_->nodes_[size_t(id)]; };
    if (s.is_boolean()) {
      if (!s.get<bool>()) node().types = 0;
      return;
    }
    if (!s.is_object()) fail("a JSON schema must be an object");
    bool constraints = false;
    for (const auto& [k, v] : s.items()) {
      if (is_unsupported(k)) {
        fail(fmt::format("schema keyword '{}' is not supported by the JSON grammar{}", k,
                         k == "oneOf" ? " (use anyOf)" : ""));
      }
      if (!is_annotation(k) && k != "$ref") constraints = true;
    }
    if (auto r = s.find("$ref"); r != s.end()) {
      if (!r->is_string()) fail("schema '$ref' must be a string");
      const json& target = resolve(r->get<std::string>());
      if (!constraints) {
        // Alias: share the target's node (this is what makes recursive schemas finite).
        const int t = compile_ref(target);
        node().any_of = {t};
        return;
      }
      json rest = s;
      rest.erase("$ref");
      if (!target.is_object()) fail("$ref must point at a schema object");
      json merged = merge(target, rest);
      const int t = compile_fresh(merged);
      node().any_of = {t};
      return;
    }
    if (auto a = s.find("allOf"); a != s.end()) {
      if (!a->is_array() || a->empty()) fail("schema 'allOf' must be a non-empty array");
      json merged = s;
      merged.erase("allOf");
      for (const auto& part : *a) {
        const json* p = &part;
        // A part that is only a reference merges the referenced schema.
        if (p->is_object() && p->size() == 1 && p->contains("$ref") && (*p)["$ref"].is_string())
          p = &resolve((*p)["$ref"].get<std::string>());
        if (p->is_boolean()) {
          if (!p->get<bool>()) merged = json{{"type", json::array()}};
          continue;
        }
        if (!p->is_object()) fail("each 'allOf' part must be a schema object");
        merged = merge(merged, *p);
      }
      const int t = compile_fresh(merged);
      node().any_of = {t};
      return;
    }
    if (auto a = s.find("anyOf"); a != s.end()) {
      if (!a->is_array() || a->empty()) fail("schema 'anyOf' must be a non-empty array");
      json base = s;
      base.erase("anyOf");
      bool base_constrains = false;
      for (const auto& [k, v] : base.items()) base_constrains = base_constrains || !is_annotation(k);
      std::vector<int> branches;
      for (const auto& b : *a) {
        if (b.is_boolean()) {
          branches.push_back(compile_fresh(b.get<bool>() && !base_constrains ? json::object() : base));
          if (!b.get<bool>()) out_->nodes_[size_t(branches.back())].types = 0;
          continue;
        }
        if (!b.is_object()) fail("each 'anyOf' branch must be a schema object");
        branches.push_back(base_constrains ? compile_fresh(merge(base, b)) : compile_ref(b));
      }
      node().any_of = std::move(branches);
      return;
    }
    plain(id, s);
  }

  void plain(int id, const json& s) {
    Node n;
    if (auto t = s.find("type"); t != s.end()) {
      n.types = 0;
      if (t->is_string()) {
        n.types = type_bit(t->get<std::string>());
      } else if (t->is_array()) {
        for (const auto& x : *t) {
          if (!x.is_string()) fail("schema 'type' must be a string or an array of strings");
          n.types |= type_bit(x.get<std::string>());
        }
      } else {
        fail("schema 'type' must be a string or an array");
      }
    }
    if (auto nb = s.find("nullable"); nb != s.end() && nb->is_boolean() && nb->get<bool>()) n.types |= kNull;
    // numbers
    auto num = [&](const char* key) -> const json* {
      auto it = s.find(key);
      if (it == s.end()) return nullptr;
      if (!it->is_number() && !it->is_boolean()) fail(fmt::format("schema '{}' must be a number", key));
      return &*it;
    };
    if (const json* v = num("minimum"); v && v->is_number()) n.has_min = true, n.min = v->get<double>();
    if (const json* v = num("maximum"); v && v->is_number()) n.has_max = true, n.max = v->get<double>();
    if (const json* v = num("exclusiveMinimum")) {
      if (v->is_boolean()) {
        n.excl_min = v->get<bool>() && n.has_min;
      } else if (!n.has_min || v->get<double>() >= n.min) {
        n.has_min = n.excl_min = true;
        n.min = v->get<double>();
      }
    }
    if (const json* v = num("exclusiveMaximum")) {
      if (v->is_boolean()) {
        n.excl_max = v->get<bool>() && n.has_max;
      } else if (!n.has_max || v->get<double>() <= n.max) {
        n.has_max = n.excl_max = true;
        n.max = v->get<double>();
      }
    }
    if ((n.has_min && !std::isfinite(n.min)) || (n.has_max && !std::isfinite(n.max)))
      fail("schema number bounds must be finite");
    // strings
    n.min_len = nonneg_int(s, "minLength", 0);
    n.max_len = nonneg_int(s, "maxLength", -1);
    // arrays
    if (auto it = s.find("items"); it != s.end()) {
      if (it->is_array()) fail("schema 'items' as an array (tuples) is not supported by the JSON grammar");
      if (!it->is_object() && !it->is_boolean()) fail("schema 'items' must be a schema");
      n.items = compile_ref(*it);
    }
    n.min_items = nonneg_int(s, "minItems", 0);
    n.max_items = nonneg_int(s, "maxItems", -1);
    // objects
    n.min_props = nonneg_int(s, "minProperties", 0);
    n.max_props = nonneg_int(s, "maxProperties", -1);
    std::vector<std::string> required;
    if (auto r = s.find("required"); r != s.end()) {
      if (!r->is_array()) fail("schema 'required' must be an array of strings");
      for (const auto& x : *r) {
        if (!x.is_string()) fail("schema 'required' must be an array of strings");
        required.push_back(x.get<std::string>());
      }
    }
    int additional = -1;
    bool additional_false = false;
    if (auto a = s.find("additionalProperties"); a != s.end()) {
      if (a->is_boolean()) {
        additional_false = !a->get<bool>();
      } else if (a->is_object()) {
        additional = compile_ref(*a);
      } else {
        fail("schema 'additionalProperties' must be a boolean or a schema");
      }
    }
    std::map<std::string, const json*> props;
    if (auto p = s.find("properties"); p != s.end()) {
      if (!p->is_object()) fail("schema 'properties' must be an object");
      for (const auto& [k, v] : p->items()) props[k] = &v;
    }
    for (const auto& r : required) {
      if (props.count(r)) continue;
      // A required key the schema does not describe: its value follows additionalProperties.
      if (additional_false) fail(fmt::format("required property '{}' is not allowed by the schema", r));
      static const json kAnySchema = json::object();
      props[r] = additional >= 0 ? nullptr : &kAnySchema;
    }
    if (int(props.size()) > kMaxProps)
      fail(fmt::format("schema objects may have at most {} properties", kMaxProps));
    for (const auto& [k, v] : props) {
      Prop pr;
      pr.name = k;
      pr.encoded_len = int(json(k).dump().size());
      pr.node = v ? compile_ref(*v) : additional;
      const bool req = std::find(required.begin(), required.end(), k) != required.end();
      if (req) n.required |= uint64_t(1) << n.props.size();
      n.props.push_back(std::move(pr));
    }
    if (n.props.empty()) {
      n.no_keys = additional_false;
      n.additional = additional;
    }
    // enum / const
    std::vector<const json*> values;
    bool has_values = false;
    if (auto c = s.find("const"); c != s.end()) has_values = true, values.push_back(&*c);
    if (auto e = s.find("enum"); e != s.end()) {
      if (!e->is_array() || e->empty()) fail("schema 'enum' must be a non-empty array");
      if (has_values) {
        // const and enum: the const value, when the enum has it.
        if (std::find(e->begin(), e->end(), *values[0]) == e->end()) values.clear();
      } else {
        for (const auto& v : *e) values.push_back(&v);
      }
      has_values = true;
    }
    if (has_values) {
      n.has_enum = true;
      uint8_t seen = 0;
      for (const json* v : values) {
        const uint8_t t = value_type(*v);
        if (!(n.types & t) && !(t == kInt && (n.types & kFrac))) continue;
        if (v->is_string()) {
          const std::string& str = v->get_ref<const std::string&>();
          if (!string_length_ok(n, str)) continue;
          n.enum_strings.push_back(str);
        } else {
          if (v->is_number() && n.bounded()) {
            const double d = v->get<double>();
            if ((n.has_min && (n.excl_min ? !(d > n.min) : !(d >= n.min))) ||
                (n.has_max && (n.excl_max ? !(d < n.max) : !(d <= n.max))))
              continue;
          }
          if (json_depth(*v) > 32) fail("schema enum values nested too deeply");
          n.enum_literals.push_back(v->dump());
        }
        seen |= t == kFrac ? uint8_t(kFrac | kInt) : t;
      }
      n.types &= seen;
    }
    out_->nodes_[size_t(id)] = std::move(n);
  }

  static bool string_length_ok(const Node& n, const std::string& s) {
    int cps = 0;
    for (unsigned char c : s) cps += (c & 0xC0) != 0x80;
    return cps >= n.min_len && (n.max_len < 0 || cps <= n.max_len);
  }

  static int json_depth(const json& v) {
    // Values come from a request bounded at 512 levels; this walk is bounded by the caller's check.
    int d = 0;
    std::vector<std::pair<const json*, int>> st = {{&v, 1}};
    while (!st.empty()) {
      auto [p, lvl] = st.back();
      st.pop_back();
      d = std::max(d, lvl);
      if (p->is_structured()) {
        for (const auto& c : *p) st.push_back({&c, lvl + 1});
      }
    }
    return d;
  }

  int compute(const Node& n) const {
    const auto& nodes = out_->nodes_;
    auto L = [&](int i) { return i < 0 ? 1 : nodes[size_t(i)].shortest; };
    if (!n.any_of.empty()) {
      int best = kNever;
      for (int b : n.any_of) best = std::min(best, L(b));
      return best;
    }
    if (n.types == 0) return kNever;
    if (n.has_enum) {
      int best = kNever;
      for (const auto& s : n.enum_strings) best = std::min(best, int(json(s).dump().size()));
      for (const auto& s : n.enum_literals) best = std::min(best, int(s.size()));
      return best;
    }
    return shortest_of_types(n, n.types, nodes);
  }

  static int mul_sat(int k, int v) {
    if (v >= kNever) return kNever;
    return int(std::min<int64_t>(kNever, int64_t(k) * v));
  }

 public:
  // Cost of closing an object that has `count` keys (those in `seen`), from a position where a key
  // may start (first: no comma needed before it), through its '}'.
  static int object_cost(const Node& n, uint64_t seen, int count, bool first,
                         const std::vector<Node>& nodes) {
    auto L = [&](int i) { return i < 0 ? 1 : nodes[size_t(i)].shortest; };
    int cost = 1;  // '}'
    int keys = 0;
    if (n.props.empty()) {
      if (n.no_keys) return count >= n.min_props ? 1 : kNever;
      const int need = std::max(0, n.min_props - count);
      if (n.max_props >= 0 && n.min_props > n.max_props) return kNever;
      for (int i = 0; i < need; ++i)
        cost = add_sat(cost, add_sat(4 + L(n.additional), (first && i == 0) ? 0 : 1));
      return cost;
    }
    std::vector<int> optional;
    for (size_t i = 0; i < n.props.size(); ++i) {
      if (seen >> i & 1u) continue;
      const int c = add_sat(n.props[i].encoded_len + 1, L(n.props[i].node));
      if (n.required >> i & 1u) {
        cost = add_sat(cost, add_sat(c, (first && keys == 0) ? 0 : 1));
        ++keys;
      } else if (c < kNever) {
        optional.push_back(c);
      }
    }
    int total = count + keys;
    if (total < n.min_props) {
      std::sort(optional.begin(), optional.end());
      for (int c : optional) {
        if (total >= n.min_props) break;
        cost = add_sat(cost, add_sat(c, (first && keys == 0) ? 0 : 1));
        ++keys, ++total;
      }
      if (total < n.min_props) return kNever;
    }
    if (n.max_props >= 0 && total > n.max_props) return kNever;
    return cost;
  }

 private:
  void compute_shortest() {
    auto& nodes = out_->nodes_;
    for (size_t iter = 0; iter <= nodes.size() + 2; ++iter) {
      bool changed = false;
      for (auto& n : nodes) {
        const int v = compute(n);
        if (v < n.shortest) n.shortest = v, changed = true;
      }
      if (!changed) break;
    }
    // A node no value can satisfy starts nothing.
    for (auto& n : nodes) {
      if (n.shortest >= kNever) n.types = 0;
    }
  }

  const json& root_;
  JsonSchema* out_ = nullptr;
  std::map<const json*, int> memo_;
  int depth_ = 0;
};

}  // namespace

namespace jg {

int shortest_of_types(const Node& n, uint8_t types, const std::vector<Node>& nodes) {
  auto L = [&](int i) { return i < 0 ? 1 : nodes[size_t(i)].shortest; };
  int best = kNever;
  if (types & (kNull | kBool)) best = std::min(best, 4);
  if (types & (kInt | kFrac)) best = std::min(best, shortest_number(n));
  if ((types & kString) && (n.max_len < 0 || n.max_len >= n.min_len)) best = std::min(best, 2 + n.min_len);
  if ((types & kArray) && (n.max_items < 0 || n.max_items >= n.min_items)) {
    int c = 2;
    if (n.min_items > 0) {
      const int item = L(n.items);
      const int items = item >= kNever ? kNever : int(std::min<int64_t>(kNever, int64_t(n.min_items) * item));
      c = add_sat(c, add_sat(n.min_items - 1, items));
    }
    best = std::min(best, c);
  }
  if (types & kObject) best = std::min(best, add_sat(1, object_close_cost(n, 0, 0, true, nodes)));
  return best;
}

int object_close_cost(const Node& n, uint64_t seen, int count, bool first, const std::vector<Node>& nodes) {
  return Compiler::object_cost(n, seen, count, first, nodes);
}
}  // namespace jg

std::shared_ptr<const JsonSchema> JsonSchema::compile(const json& schema) {
  if (!schema.is_object()) fail("a JSON schema must be an object");
  return Compiler(schema).run();
}

std::shared_ptr<const JsonSchema> JsonSchema::any() {
  static const std::shared_ptr<const JsonSchema> kAny = [] {
    auto s = std::make_shared<JsonSchema>();
    s->root_ = -1;
    return s;
  }();
  return kAny;
}

void validate_json_schema(const json& schema) {
  (void)JsonSchema::compile(schema);
}

}  // namespace qleap
