#include "tokenizer/chat_template.h"

#include "tokenizer/jinja/interpreter.h"
#include "tokenizer/jinja/parser.h"

namespace qleap {

namespace {

// Everything that escapes the interpreter is a ChatTemplateError, so callers can map it to a
// client error; anything else reaching here would be an interpreter bug, reported the same way.
template <typename F>
auto guarded(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const ChatTemplateError&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw ChatTemplateError("chat template error: out of memory");
  } catch (const std::exception& e) {
    throw ChatTemplateError(std::string("chat template internal error: ") + e.what());
  }
}

}  // namespace

struct ChatTemplate::Parsed {
  jinja::Body body;
};

ChatTemplate::ChatTemplate(std::string source) : source_(std::move(source)) {
  parsed_ = std::make_unique<Parsed>();
  parsed_->body = guarded([&] { return jinja::parse_template(source_); });
}

ChatTemplate::~ChatTemplate() = default;
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;
ChatTemplate& ChatTemplate::operator=(ChatTemplate&&) noexcept = default;

namespace {

// transformers' _alias_reasoning_fields: {"thinking": r, **message, "reasoning_content": r}.
nlohmann::ordered_json alias_reasoning(const nlohmann::ordered_json& m) {
  if (!m.is_object()) return m;
  const nlohmann::ordered_json* reasoning = nullptr;
  for (const char* key : {"reasoning_content", "thinking", "reasoning"}) {
    auto it = m.find(key);
    if (it != m.end() && !it->is_null()) {
      reasoning = &*it;
      break;
    }
  }
  if (!reasoning) return m;
  nlohmann::ordered_json out = nlohmann::ordered_json::object();
  out["thinking"] = *reasoning;
  for (auto it = m.begin(); it != m.end(); ++it) out[it.key()] = it.value();
  out["reasoning_content"] = *reasoning;
  return out;
}

}  // namespace

std::string ChatTemplate::apply(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                const nlohmann::ordered_json& extra, std::optional<int64_t> now_unix) const {
  if (!messages.is_array()) throw ChatTemplateError("chat messages must be a JSON array");
  nlohmann::ordered_json msgs = nlohmann::ordered_json::array();
  for (const auto& m : messages) {
    if (!m.is_object()) throw ChatTemplateError("chat messages must be JSON objects, got: " + m.dump());
    msgs.push_back(alias_reasoning(m));
  }
  if (!extra.is_null() && !extra.is_object())
    throw ChatTemplateError("chat template variables must be an object");

  jinja::Value vars = jinja::Value::make_dict();
  vars.dict->set("messages", jinja::Value::from_json(msgs));
  vars.dict->set("tools", jinja::Value::none());
  vars.dict->set("documents", jinja::Value::none());
  vars.dict->set("add_generation_prompt", jinja::Value::boolean(add_generation_prompt));
  if (extra.is_object()) {
    for (auto it = extra.begin(); it != extra.end(); ++it) {
      if (it.key() == "messages" || it.key() == "add_generation_prompt") continue;
      vars.dict->set(it.key(), jinja::Value::from_json(it.value()));
    }
  }
  jinja::Interpreter interp(limits_);
  return guarded([&] { return interp.render(parsed_->body, vars, now_unix); });
}

std::string apply_chat_template(const std::string& tmpl, const nlohmann::ordered_json& messages,
                                bool add_generation_prompt, const nlohmann::ordered_json& extra) {
  return ChatTemplate(tmpl).apply(messages, add_generation_prompt, extra);
}

std::string apply_chat_template(const std::string& tmpl, const nlohmann::json& messages,
                                bool add_generation_prompt, const nlohmann::json& extra) {
  return ChatTemplate(tmpl).apply(nlohmann::ordered_json(messages), add_generation_prompt,
                                  nlohmann::ordered_json(extra));
}

std::string render_template(const std::string& tmpl, const nlohmann::ordered_json& variables,
                            std::optional<int64_t> now_unix, const jinja::RenderLimits& limits) {
  if (!variables.is_null() && !variables.is_object())
    throw ChatTemplateError("template variables must be an object");
  return guarded([&] {
    jinja::Body body = jinja::parse_template(tmpl);
    jinja::Value vars =
        variables.is_object() ? jinja::Value::from_json(variables) : jinja::Value::make_dict();
    jinja::Interpreter interp(limits);
    return interp.render(body, vars, now_unix);
  });
}

const std::string& default_chat_template() {
  static const std::string kChatml =
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
      "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% "
      "endif %}";
  return kChatml;
}

const std::string& harmony_chat_template() {
  // The harmony format gpt-oss is trained on (the layout its own template renders): a system message
  // with the model identity, dates, reasoning effort and channels; the conversation's system message as
  // the developer's instructions; assistant turns in the final channel (their reasoning, when given,
  // only on a last assistant turn without a generation prompt, as the model's template does).
  static const std::string kHarmony = R"TMPL(
{%- if model_identity is not defined -%}{%- set model_identity = "You are ChatGPT, a large language model trained by OpenAI." -%}{%- endif -%}
{%- if reasoning_effort is not defined -%}{%- set reasoning_effort = "medium" -%}{%- endif -%}
{{- "<|start|>system<|message|>" + model_identity + "\nKnowledge cutoff: 2024-06\nCurrent date: " + strftime_now("%Y-%m-%d") + "\n\nReasoning: " + reasoning_effort + "\n\n# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>" -}}
{%- if messages and (messages[0].role == "system" or messages[0].role == "developer") -%}
  {{- "<|start|>developer<|message|># Instructions\n\n" + messages[0].content + "\n\n<|end|>" -}}
  {%- set loop_messages = messages[1:] -%}
{%- else -%}
  {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
  {%- if message.role == "assistant" -%}
    {%- if loop.last and not add_generation_prompt -%}
      {%- if message.thinking -%}{{- "<|start|>assistant<|channel|>analysis<|message|>" + message.thinking + "<|end|>" -}}{%- endif -%}
      {{- "<|start|>assistant<|channel|>final<|message|>" + message.content + "<|return|>" -}}
    {%- else -%}
      {{- "<|start|>assistant<|channel|>final<|message|>" + message.content + "<|end|>" -}}
    {%- endif -%}
  {%- elif message.role == "user" -%}
    {{- "<|start|>user<|message|>" + message.content + "<|end|>" -}}
  {%- elif message.role == "tool" -%}
    {{- "<|start|>functions." + (message.name if message.name else "tool") + " to=assistant<|channel|>commentary<|message|>" + message.content + "<|end|>" -}}
  {%- else -%}
    {{- raise_exception("harmony: unexpected role " + message.role) -}}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- "<|start|>assistant" -}}{%- endif -%}
)TMPL";
  return kHarmony;
}

const std::string& default_chat_template(std::string_view arch) {
  // google/gemma-3-*-it's tokenizer.chat_template (tests/fixtures/chat/templates/gemma3-it.jinja, which
  // the chat tests render against transformers): GGUFs of Gemma models often leave it out, and
  // ChatML's markers mean nothing to them.
  static const std::string kGemma = R"TMPL({{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
)TMPL";
  if (arch == "gemma" || arch == "gemma2" || arch == "gemma3") return kGemma;
  if (arch == "gpt-oss") return harmony_chat_template();
  return default_chat_template();
}

}  // namespace qleap
