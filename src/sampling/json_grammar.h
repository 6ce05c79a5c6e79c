// Character-level recognizer for JSON text, optionally restricted by a JSON-schema subset, used to
// constrain sampling (Ollama's format:"json" / format:<schema>, OpenAI's response_format). It is
// a pushdown automaton whose state is a small copyable value, so the sampler can try every
// vocabulary piece against a copy of the current state.
//
// Schema subset: "type" (object, array, string, number, integer, boolean, null, or a list of
// them), object "properties" (when present, keys are restricted to them and each may appear once)
// and "required" (the object cannot close before they appear), array "items", "enum" (of strings,
// numbers, booleans or null) and "const". Other keywords are ignored (accepted, not enforced).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace qleap {

class JsonMatcher {
 public:
  // schema: nullptr or an empty object for any JSON value. The schema must outlive the matcher.
  explicit JsonMatcher(const nlohmann::json* schema = nullptr);

  // Feeds one byte; false (state unchanged) when it cannot continue a valid document.
  bool feed(char c);
  bool feed(std::string_view s);
  // A complete top-level value has been read.
  bool complete() const { return done_; }

  // Runs of whitespace outside strings are capped so a model cannot pad forever.
  static constexpr int kMaxWhitespace = 4;

 private:
  enum class Kind : uint8_t { kValue, kObject, kArray, kString, kNumber, kLiteral };
  struct Frame {
    explicit Frame(Kind k) : kind(k) {}
    Kind kind;
    uint8_t state = 0;
    const nlohmann::json* schema = nullptr;
    const nlohmann::json* value_schema = nullptr;  // object: schema of the value after the key
    std::string text;      // key or string so far (for enums / property names), literal target
    uint32_t seen = 0;     // object: bit i set when property i appeared
    bool is_key = false;   // string frame is an object key
    bool integer = false;  // number must be an integer
  };
  // Replaces the kValue frame on top with the value that c starts.
  bool feed_value_start(char c);
  bool value_done();
  bool string_char(Frame& f, char c);
  bool number_char(Frame& f, char c, bool& ends);
  bool allows_type(const nlohmann::json* schema, const char* type) const;
  bool key_prefix_ok(const Frame& obj, const std::string& key, bool whole) const;
  bool string_prefix_ok(const Frame& f, bool whole) const;
  bool object_can_close(const Frame& obj) const;

  std::vector<Frame> stack_;
  bool done_ = false;
  int ws_run_ = 0;
};

// Throws std::invalid_argument on a schema this recognizer cannot use (not an object, bad "type").
void validate_json_schema(const nlohmann::json& schema);

}  // namespace qleap
