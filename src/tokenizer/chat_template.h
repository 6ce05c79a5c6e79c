// Chat templates: renders a model's tokenizer.chat_template (a Jinja template) the way HF
// transformers' apply_chat_template(..., tokenize=False) does, with our own Jinja-subset
// interpreter (src/tokenizer/jinja). Environment as in transformers: trim_blocks, lstrip_blocks,
// loop controls, raise_exception, strftime_now, namespace, dict and a tojson filter that calls
// json.dumps(ensure_ascii=False).
//
// Variables the template sees: messages, add_generation_prompt, tools (none unless given),
// documents (none unless given), and every key of `extra` (bos_token, eos_token, tools,
// date_string, enable_thinking, ...). As in transformers, a message carrying reasoning under
// reasoning_content / thinking / reasoning gets both `thinking` and `reasoning_content` set.
//
// Object key order matters (tojson output, dict iteration): nlohmann::json sorts keys, so callers
// that parse request JSON should use nlohmann::ordered_json to keep the client's order.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "tokenizer/jinja/interpreter.h"  // RenderLimits
#include "tokenizer/jinja/value.h"        // ChatTemplateError

namespace qleap {

namespace jinja {
struct Stmt;
}

class ChatTemplate {
 public:
  // Parses the template once; throws ChatTemplateError (with line/column) on syntax errors.
  explicit ChatTemplate(std::string source);
  ~ChatTemplate();
  ChatTemplate(ChatTemplate&&) noexcept;
  ChatTemplate& operator=(ChatTemplate&&) noexcept;

  // now_unix fixes what strftime_now() sees (tests); default: the current time.
  std::string apply(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                    const nlohmann::ordered_json& extra = nlohmann::ordered_json::object(),
                    std::optional<int64_t> now_unix = std::nullopt) const;
  const std::string& source() const { return source_; }
  // Bounds on recursion, output size and work per render (defaults suit any real template).
  void set_limits(const jinja::RenderLimits& limits) { limits_ = limits; }

 private:
  std::string source_;
  jinja::RenderLimits limits_;
  struct Parsed;
  std::unique_ptr<Parsed> parsed_;
};

// messages: JSON array of {role, content, [tool_calls], [name], ...}; extra: bos_token, eos_token,
// tools, date_string, any other variables. Throws ChatTemplateError.
std::string apply_chat_template(const std::string& tmpl, const nlohmann::json& messages,
                                bool add_generation_prompt,
                                const nlohmann::json& extra = nlohmann::json::object());
std::string apply_chat_template(const std::string& tmpl, const nlohmann::ordered_json& messages,
                                bool add_generation_prompt,
                                const nlohmann::ordered_json& extra = nlohmann::ordered_json::object());

// Renders any template with the chat environment and exactly these top-level variables (no
// messages/tools defaults). For tools and tests.
std::string render_template(const std::string& tmpl, const nlohmann::ordered_json& variables,
                            std::optional<int64_t> now_unix = std::nullopt,
                            const jinja::RenderLimits& limits = {});

// A fallback for models without tokenizer.chat_template: chatml.
const std::string& default_chat_template();
// The fallback for a model of this architecture (general.architecture): Gemma's turn format for the
// gemma architectures, harmony for gpt-oss, chatml for the others.
const std::string& default_chat_template(std::string_view arch);
// The harmony format (gpt-oss): <|start|>system<|message|>...<|end|>, the conversation's system message as
// a developer message, <|start|>user<|message|>...<|end|>, ..., <|start|>assistant. Variables beyond the
// chat ones: model_identity, reasoning_effort (default "medium").
const std::string& harmony_chat_template();

}  // namespace qleap
