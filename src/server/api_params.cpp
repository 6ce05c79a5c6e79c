#include "server/api_params.h"

#include <fmt/format.h>

#include "server/api_common.h"

namespace qleap::server {

using nlohmann::json;

namespace {

constexpr size_t kMaxEmbedInputs = 4096;
constexpr int kMaxTopLogprobs = 20;

const json& field(const json& body, const char* key) {
  static const json kNull;
  auto it = body.find(key);
  return it == body.end() ? kNull : *it;
}

std::string ollama_model(const json& body) {
  std::string m = get_string(body, "model");
  if (m.empty()) m = get_string(body, "name");
  if (m.empty()) throw RequestError(400, "model is required");
  return m;
}

std::string openai_model(const json& body) {
  const std::string m = get_string(body, "model");
  if (m.empty()) throw RequestError(400, "you must provide a model parameter");
  return m;
}

json format_field(const json& body) {
  const json& f = field(body, "format");
  if (!f.is_null() && !f.is_string() && !f.is_object())
    throw RequestError(400, "'format' must be \"json\" or a JSON schema object");
  return f;
}

// Ollama's top-level "logprobs" (bool) and "top_logprobs" (0..20).
void ollama_logprobs(const json& body, GenOptions& o) {
  o.logprobs = get_bool(body, "logprobs", false);
  o.top_logprobs = get_int(body, "top_logprobs", 0);
  if (o.top_logprobs < 0 || o.top_logprobs > kMaxTopLogprobs)
    throw RequestError(400, fmt::format("'top_logprobs' must be between 0 and {}", kMaxTopLogprobs));
}

bool images_in(const json& v, const char* what) {
  if (v.is_null()) return false;
  if (!v.is_array()) throw RequestError(400, fmt::format("'{}' must be an array of base64 strings", what));
  for (const auto& i : v) {
    if (!i.is_string()) throw RequestError(400, fmt::format("'{}' must be an array of base64 strings", what));
  }
  return !v.empty();
}

json tools_field(const json& body) {
  const json& t = field(body, "tools");
  if (t.is_null()) return json();
  if (!t.is_array()) throw RequestError(400, "'tools' must be an array");
  return t.empty() ? json() : t;
}

std::vector<int64_t> token_ids(const json& arr, const char* what) {
  std::vector<int64_t> ids;
  for (const auto& t : arr) {
    if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() > INT32_MAX)
      throw RequestError(400, fmt::format("'{}' holds an invalid token id", what));
    ids.push_back(t.get<int64_t>());
  }
  return ids;
}

json format_from_response_format(const json& rf) {
  if (rf.is_null()) return nullptr;
  if (!rf.is_object()) throw RequestError(400, "'response_format' must be an object");
  const std::string type = get_string(rf, "type", "text");
  if (type == "text") return nullptr;
  if (type == "json_object") return "json";
  if (type == "json_schema") {
    const json& js = field(rf, "json_schema");
    if (!js.is_object()) throw RequestError(400, "'response_format.json_schema' must be an object");
    const json& schema = field(js, "schema");
    if (schema.is_null()) return "json";
    if (!schema.is_object())
      throw RequestError(400, "'response_format.json_schema.schema' must be an object");
    return schema;
  }
  throw RequestError(400, fmt::format("unsupported response_format type '{}'", type));
}

ToolChoice parse_tool_choice(const json& v) {
  ToolChoice tc;
  if (v.is_null()) return tc;
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    if (s == "auto") return tc;
    if (s == "none") return tc.mode = ToolChoice::kNone, tc;
    if (s == "required") return tc.mode = ToolChoice::kRequired, tc;
    throw RequestError(400,
                       fmt::format("invalid 'tool_choice' '{}': use none, auto, required or an object", s));
  }
  if (!v.is_object()) throw RequestError(400, "'tool_choice' must be a string or an object");
  if (get_string(v, "type") != "function")
    throw RequestError(
        400, "'tool_choice' object must be {\"type\": \"function\", \"function\": {\"name\": ...}}");
  const json& fn = field(v, "function");
  if (!fn.is_object() || get_string(fn, "name").empty())
    throw RequestError(400, "'tool_choice.function.name' is required");
  tc.mode = ToolChoice::kFunction;
  tc.function = get_string(fn, "name");
  return tc;
}

// {"type": "function", "function": {"name", "parameters"}} (or the bare function object).
const json& tool_function(const json& tool) {
  if (!tool.is_object()) throw RequestError(400, "each tool must be an object");
  const json& fn = tool.contains("function") ? tool["function"] : tool;
  if (!fn.is_object() || get_string(fn, "name").empty())
    throw RequestError(400, "each tool needs a 'function' with a 'name'");
  return fn;
}

}  // namespace

OllamaGenerateParams parse_ollama_generate(const json& body) {
  OllamaGenerateParams p;
  p.model = ollama_model(body);
  p.prompt = get_string(body, "prompt");
  const json& ctx = field(body, "context");
  if (!ctx.is_null()) {
    if (!ctx.is_array()) throw RequestError(400, "'context' must be an array of integers");
    p.context = token_ids(ctx, "context");
  }
  p.opt = ollama_defaults();
  apply_ollama_options(field(body, "options"), p.opt);
  ollama_logprobs(body, p.opt);
  p.stream = get_bool(body, "stream", true);
  p.raw = get_bool(body, "raw", false);
  p.system = get_string(body, "system");
  get_string(body, "suffix");  // type check only; fill-in-the-middle is not supported
  p.keep_alive = parse_keep_alive(field(body, "keep_alive"));
  p.format = format_field(body);
  p.has_images = images_in(field(body, "images"), "images");
  p.load_only = p.prompt.empty() && p.context.empty();
  return p;
}

OllamaGenerateParams parse_ollama_chat(const json& body) {
  OllamaGenerateParams p;
  p.chat = true;
  p.model = ollama_model(body);
  const json& msgs = field(body, "messages");
  p.messages = normalize_messages(msgs.is_null() ? json::array() : msgs, &p.has_images);
  p.opt = ollama_defaults();
  apply_ollama_options(field(body, "options"), p.opt);
  ollama_logprobs(body, p.opt);
  p.stream = get_bool(body, "stream", true);
  p.tools = tools_field(body);
  p.keep_alive = parse_keep_alive(field(body, "keep_alive"));
  p.format = format_field(body);
  p.load_only = p.messages.empty();
  return p;
}

EmbedParams parse_ollama_embed(const json& body, bool legacy) {
  EmbedParams p;
  p.model = ollama_model(body);
  if (legacy) {
    const std::string s = get_string(body, "prompt");
    if (s.empty()) {
      p.load_only = true;
    } else {
      p.texts.push_back(s);
    }
  } else {
    const json& in = field(body, "input");
    const char* kType = "'input' must be a non-empty string or a non-empty array of non-empty strings";
    if (in.is_null()) {
      p.load_only = true;  // Ollama: loads the model and answers no embeddings
    } else if (in.is_string()) {
      if (in.get_ref<const std::string&>().empty()) throw RequestError(400, "'input' must not be empty");
      p.texts.push_back(in.get<std::string>());
    } else if (in.is_array()) {
      if (in.empty()) throw RequestError(400, "'input' must not be an empty array");
      for (const auto& s : in) {
        if (!s.is_string()) throw RequestError(400, kType);
        if (s.get_ref<const std::string&>().empty())
          throw RequestError(400, "'input' must not contain empty strings");
        p.texts.push_back(s.get<std::string>());
      }
    } else {
      throw RequestError(400, kType);
    }
  }
  p.is_tokens.assign(p.texts.size(), false);
  if (p.texts.size() > kMaxEmbedInputs)
    throw RequestError(400, fmt::format("too many inputs (at most {})", kMaxEmbedInputs));
  p.opt = ollama_defaults();
  apply_ollama_options(field(body, "options"), p.opt);
  p.truncate = get_bool(body, "truncate", true);
  p.keep_alive = parse_keep_alive(field(body, "keep_alive"));
  return p;
}

EmbedParams parse_openai_embeddings(const json& body) {
  EmbedParams p;
  p.model = openai_model(body);
  p.encoding = get_string(body, "encoding_format", "float");
  if (p.encoding != "float" && p.encoding != "base64")
    throw RequestError(400, "encoding_format must be float or base64");
  p.dimensions = get_int(body, "dimensions", 0);
  if (p.dimensions < 0) throw RequestError(400, "'dimensions' must be positive");
  const json& in = field(body, "input");
  const char* kType = "'input' must be a non-empty string, an array of non-empty strings or of token arrays";
  auto add_tokens = [&](const json& arr) {
    if (arr.empty()) throw RequestError(400, "'input' must not contain empty token arrays");
    p.token_inputs.push_back(token_ids(arr, "input"));
    p.texts.emplace_back();
    p.is_tokens.push_back(true);
  };
  auto add_text = [&](const json& s) {
    if (s.get_ref<const std::string&>().empty())
      throw RequestError(400, "'input' must not contain empty strings");
    p.texts.push_back(s.get<std::string>());
    p.token_inputs.emplace_back();
    p.is_tokens.push_back(false);
  };
  if (in.is_string()) {
    add_text(in);
  } else if (in.is_array() && !in.empty() && in[0].is_number()) {
    add_tokens(in);
  } else if (in.is_array() && !in.empty()) {
    for (const auto& s : in) {
      if (s.is_string()) {
        add_text(s);
      } else if (s.is_array()) {
        add_tokens(s);
      } else {
        throw RequestError(400, kType);
      }
    }
  } else {
    throw RequestError(400, kType);
  }
  if (p.texts.size() > kMaxEmbedInputs)
    throw RequestError(400, fmt::format("too many inputs (at most {})", kMaxEmbedInputs));
  return p;
}

OpenAiParams parse_openai_completion(const json& body, bool chat) {
  OpenAiParams p;
  p.chat = chat;
  p.model = openai_model(body);
  if (get_int(body, "n", 1) != 1) throw RequestError(400, "only n = 1 is supported");
  p.opt = openai_defaults();
  apply_openai_params(body, p.opt);
  p.stream = get_bool(body, "stream", false);
  const json& so = field(body, "stream_options");
  if (!so.is_null() && !so.is_object()) throw RequestError(400, "'stream_options' must be an object");
  p.include_usage = so.is_object() && get_bool(so, "include_usage", false);
  if (chat) {
    p.messages = normalize_messages(field(body, "messages"), &p.has_images);
    if (p.messages.empty()) throw RequestError(400, "'messages' must not be empty");
    p.tools = tools_field(body);
    p.tool_choice = parse_tool_choice(field(body, "tool_choice"));
    p.parallel_tool_calls = get_bool(body, "parallel_tool_calls", true);
    if (p.tools.is_array()) {
      for (const auto& t : p.tools) tool_function(t);
    }
    if (p.tool_choice.mode == ToolChoice::kNone) p.tools = json();
    if ((p.tool_choice.mode == ToolChoice::kRequired || p.tool_choice.mode == ToolChoice::kFunction) &&
        !p.tools.is_array()) {
      throw RequestError(400, "'tool_choice' requires 'tools'");
    }
    if (p.tool_choice.mode == ToolChoice::kFunction) {
      bool found = false;
      for (const auto& t : p.tools)
        found = found || get_string(tool_function(t), "name") == p.tool_choice.function;
      if (!found)
        throw RequestError(
            400, fmt::format("'tool_choice' names '{}', which is not in 'tools'", p.tool_choice.function));
    }
    // logprobs: bool; top_logprobs: 0..20, only with logprobs.
    p.opt.logprobs = get_bool(body, "logprobs", false);
    const json& top = field(body, "top_logprobs");
    p.opt.top_logprobs = get_int(body, "top_logprobs", 0);
    if (p.opt.top_logprobs < 0 || p.opt.top_logprobs > kMaxTopLogprobs)
      throw RequestError(400, fmt::format("'top_logprobs' must be between 0 and {}", kMaxTopLogprobs));
    if (!top.is_null() && !p.opt.logprobs)
      throw RequestError(400, "'top_logprobs' requires 'logprobs': true");
  } else {
    const json& pr = field(body, "prompt");
    if (pr.is_null()) {
      p.prompt = "";
    } else if (pr.is_string()) {
      p.prompt = pr.get<std::string>();
    } else if (pr.is_array() && pr.size() == 1 && pr[0].is_string()) {
      p.prompt = pr[0].get<std::string>();
    } else {
      throw RequestError(400, "'prompt' must be a string (or an array holding one string)");
    }
    // Legacy completions: logprobs is the number of alternatives (0..20) or null.
    if (!field(body, "logprobs").is_null()) {
      p.opt.logprobs = true;
      p.opt.top_logprobs = get_int(body, "logprobs", 0);
      if (p.opt.top_logprobs < 0 || p.opt.top_logprobs > kMaxTopLogprobs)
        throw RequestError(400, fmt::format("'logprobs' must be between 0 and {}", kMaxTopLogprobs));
    }
  }
  p.format = format_from_response_format(field(body, "response_format"));
  return p;
}

json tool_call_schema(const json& tools, const ToolChoice& choice) {
  if (choice.mode != ToolChoice::kRequired && choice.mode != ToolChoice::kFunction) return nullptr;
  if (!tools.is_array() || tools.empty()) return nullptr;
  json defs = json::object(), definitions = json::object();
  json calls = json::array();
  for (const auto& t : tools) {
    const json& fn = tool_function(t);
    const std::string name = get_string(fn, "name");
    if (choice.mode == ToolChoice::kFunction && name != choice.function) continue;
    json params =
        fn.contains("parameters") && !fn["parameters"].is_null() ? fn["parameters"] : json::object();
    if (!params.is_object())
      throw RequestError(400, fmt::format("tool '{}': 'parameters' must be an object", name));
    // Definitions move to the root, where "#/$defs/..." references resolve.
    for (const char* key : {"$defs", "definitions"}) {
      if (auto d = params.find(key); d != params.end()) {
        if (d->is_object()) {
          json& target = std::string(key) == "$defs" ? defs : definitions;
          for (const auto& [k, v] : d->items()) target[k] = v;
        }
        params.erase(key);
      }
    }
    if (params.empty()) params = {{"type", "object"}};
    calls.push_back({{"type", "object"},
                     {"properties", {{"name", {{"type", "string"}, {"const", name}}}, {"arguments", params}}},
                     {"required", {"name", "arguments"}},
                     {"additionalProperties", false}});
  }
  if (calls.empty()) return nullptr;
  json schema = calls.size() == 1 ? calls[0] : json{{"anyOf", calls}};
  if (!defs.empty()) schema["$defs"] = defs;
  if (!definitions.empty()) schema["definitions"] = definitions;
  return schema;
}

}  // namespace qleap::server
