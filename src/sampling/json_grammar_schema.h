// A JSON schema compiled for JsonMatcher (json_grammar.h): a table of nodes, $ref resolved, anyOf
// branches and allOf parts merged with their parent's keywords, enum values split into decoded
// strings and canonical literals, and for each node the length of its shortest valid text.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace qleap {

namespace jg {

enum TypeBits : uint8_t {
  kNull = 1,
  kBool = 2,
  kInt = 4,   // integral numbers
  kFrac = 8,  // numbers with a fraction or exponent ("number")
  kString = 16,
  kArray = 32,
  kObject = 64,
  kAny = 127,
};

constexpr int kNever = 1 << 30;
constexpr int kMaxIntDigits = 15;         // any number
constexpr int kMaxBoundedIntDigits = 12;  // numbers with minimum / maximum
constexpr int kMaxBoundedFracDigits = 6;
constexpr int kMaxBoundedDigits = 15;
constexpr int kMaxProps = 64;

struct Prop {
  std::string name;  // decoded
  int encoded_len;   // JSON text of the key with quotes, as dump() writes it
  int node;
};

struct Node {
  uint8_t types = kAny;
  std::vector<int> any_of;  // a union: the value matches one of these nodes (nothing else applies)
  // enum / const: strings compared decoded; other values as their canonical JSON text.
  bool has_enum = false;
  std::vector<std::string> enum_strings;
  std::vector<std::string> enum_literals;
  // numbers
  bool has_min = false, has_max = false, excl_min = false, excl_max = false;
  double min = 0, max = 0;
  // strings (code points)
  int min_len = 0, max_len = -1;
  // arrays
  int items = -1;  // -1: any value
  int min_items = 0, max_items = -1;
  // objects: with props, keys are restricted to them; without, any key with values of `additional`
  std::vector<Prop> props;
  uint64_t required = 0;  // bit i: props[i] is required
  bool no_keys = false;   // additionalProperties: false and no properties
  int additional = -1;    // -1: any value
  int min_props = 0, max_props = -1;
  // length of the shortest valid text (kNever: none)
  int shortest = kNever;
  bool bounded() const { return has_min || has_max; }
};

}  // namespace jg

class JsonSchema {
 public:
  // Throws std::invalid_argument on what cannot be enforced or satisfied.
  static std::shared_ptr<const JsonSchema> compile(const nlohmann::json& schema);
  // The schema that accepts any JSON value.
  static std::shared_ptr<const JsonSchema> any();

  const jg::Node& node(int i) const { return nodes_[size_t(i)]; }
  int root() const { return root_; }
  // Shortest text of a value of node i (-1: any value, "0").
  int shortest(int i) const { return i < 0 ? 1 : nodes_[size_t(i)].shortest; }

  std::vector<jg::Node> nodes_;
  int root_ = -1;
};

namespace jg {

// Numbers under minimum / maximum (json_grammar_number.cpp). text is a prefix of a JSON number
// without exponent ("", "-", "12", "0.", "-3.25").
// The fewest bytes that make text a complete number within the node's bounds (kNever: none).
int number_remaining(const Node& n, std::string_view text);
// text is a complete number within the bounds (compared as the double a JSON parser reads).
bool number_in_bounds(const Node& n, std::string_view text);
// Length of the shortest number text within the bounds (kNever: none).
int shortest_number(const Node& n);

// Bytes that close an object holding `count` keys (the properties in `seen`) from a place where a key
// may follow (first: without a comma before it): the required keys still missing, enough keys for
// minProperties, and '}' (json_grammar_schema.cpp).
int object_close_cost(const Node& n, uint64_t seen, int count, bool first, const std::vector<Node>& nodes);
// Shortest text of a value of node n restricted to the given types (ignoring enum and anyOf).
int shortest_of_types(const Node& n, uint8_t types, const std::vector<Node>& nodes);

}  // namespace jg

}  // namespace qleap
