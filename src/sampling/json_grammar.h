// Character-level recognizer for JSON text, optionally restricted by a JSON schema, used to
// constrain sampling (Ollama's format:"json" / format:<schema>, OpenAI's response_format, forced
// tool calls). It is a pushdown automaton whose state is a small copyable value, so the sampler can
// try every vocabulary piece against a copy of the current state; schema unions (anyOf) run as
// parallel stacks. Besides "can this byte continue a valid document", it answers "how many bytes at
// least until the document is complete" (min_remaining), which lets the sampler close the document
// before the token budget runs out.
//
// Schema keywords enforced (json_grammar_schema.cpp): type (incl. lists, integer), enum, const,
// properties (keys restricted to them, each at most once), required, additionalProperties (false,
// or a schema for the values of an object without properties), minProperties, maxProperties,
// items, minItems, maxItems, minLength, maxLength (code points), minimum, maximum,
// exclusiveMinimum, exclusiveMaximum, anyOf, allOf (merged), nullable, and local $ref
// ("#", "#/$defs/...", "#/definitions/...", any "#/..." pointer). Annotations (title, description,
// default, examples, format, $schema, $id, $comment, ...) are ignored. Keywords that constrain what
// this recognizer cannot enforce (pattern, multipleOf, uniqueItems, oneOf, not, if/then/else,
// prefixItems, ...) are refused: a schema is either enforced or rejected, never silently weakened.
//
// Property names and string enum values are compared after decoding JSON escapes (\n, \uXXXX,
// surrogate pairs); string contents must be valid UTF-8. Generated numbers: at most 15 integer
// digits; with bounds, no exponent and at most 6 fraction digits.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace qleap {

class JsonSchema;

class JsonMatcher {
 public:
  // Any JSON value.
  JsonMatcher();
  explicit JsonMatcher(std::shared_ptr<const JsonSchema> schema);
  // Compiles schema (nullptr or {} for any JSON value); throws std::invalid_argument.
  explicit JsonMatcher(const nlohmann::json* schema);
  ~JsonMatcher();
  JsonMatcher(const JsonMatcher&);
  JsonMatcher& operator=(const JsonMatcher&);

  // Feeds one byte; false (state unchanged) when it cannot continue a valid document.
  bool feed(char c);
  // Feeds bytes in order; on false the state is unspecified (probe() leaves it alone).
  bool feed(std::string_view s);
  // Would these bytes continue the document? remaining (when given) gets min_remaining() after
  // them. The state is not changed.
  bool probe(std::string_view s, int* remaining = nullptr) const;
  // A complete top-level value has been read.
  bool complete() const;
  // The fewest bytes that complete the document from here (0 once complete); kNever when no
  // continuation can.
  int min_remaining() const;
  static constexpr int kNever = 1 << 30;

  // Inside a string whose content is free (not a property name or enum value) and between
  // characters: then any run of plain characters (no quote, backslash or control byte; whole UTF-8
  // sequences) continues it, and the sampler need not probe each such piece.
  struct FreeString {
    int count = 0;      // code points so far
    int min_len = 0;    // of the string
    int max_len = -1;   // -1: none
    int remaining = 0;  // min_remaining() now
  };
  bool free_string(FreeString& out) const;

  // Runs of whitespace outside strings are capped so a model cannot pad forever.
  static constexpr int kMaxWhitespace = 4;
  // Nesting of arrays and objects in generated text.
  static constexpr int kMaxDepth = 64;

  struct Frame;
  struct Thread;
  using Stack = std::vector<Frame>;

 private:
  enum class StepResult { kFail, kOk, kBranch };
  StepResult feed_stack(Thread& t, char c) const;
  bool advance(std::vector<Thread>& threads, char c) const;
  bool value_start(Stack& st, char c) const;
  bool value_done(Stack& st) const;
  bool string_char(Stack& st, char c) const;
  bool number_char(Stack& st, char c) const;
  int stack_remaining(const Stack& st) const;
  int root_value_cost(int node, int depth) const;
  int min_remaining(const std::vector<Thread>& threads) const;

  std::shared_ptr<const JsonSchema> schema_;
  std::vector<Thread> threads_;  // alternatives (anyOf); an empty stack is a completed document
  mutable std::vector<Thread> tmp_;
};

// Throws std::invalid_argument on a schema the recognizer cannot enforce (see above) or that no
// value can satisfy.
void validate_json_schema(const nlohmann::json& schema);

}  // namespace qleap
