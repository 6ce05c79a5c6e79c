// The request bodies of the generation and embedding endpoints, parsed into plain values before
// any model is touched: every type and range check lives here (RequestError(400) naming the
// field), so the routes only do what needs the model, and the fuzzer drives both APIs' parsing
// without one.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "server/request.h"

namespace qleap::server {

// POST /api/generate and /api/chat.
struct OllamaGenerateParams {
  std::string model;
  bool chat = false;
  std::string prompt, system;    // generate
  bool raw = false;              // generate
  std::vector<int64_t> context;  // generate: token ids of an earlier answer
  nlohmann::json messages;       // chat: normalized (see normalize_messages)
  nlohmann::json tools;          // chat: null or a non-empty array
  GenOptions opt;
  bool stream = true;
  std::optional<double> keep_alive;
  nlohmann::json format;  // null, "json" or a schema object
  bool has_images = false;
  bool load_only = false;  // empty prompt and context / empty messages: load or unload the model
};
OllamaGenerateParams parse_ollama_generate(const nlohmann::json& body);
OllamaGenerateParams parse_ollama_chat(const nlohmann::json& body);

// /api/embed, /api/embeddings (legacy) and /v1/embeddings.
struct EmbedParams {
  std::string model;
  std::vector<std::string> texts;
  std::vector<std::vector<int64_t>> token_inputs;  // OpenAI token arrays, in order with texts
  std::vector<bool> is_tokens;                     // per input: token array (true) or text
  bool load_only = false;                          // Ollama: no input at all
  GenOptions opt;
  std::optional<double> keep_alive;
  bool truncate = true;
  std::string encoding = "float";  // OpenAI: float or base64
  int dimensions = 0;
};
EmbedParams parse_ollama_embed(const nlohmann::json& body, bool legacy);
EmbedParams parse_openai_embeddings(const nlohmann::json& body);

struct ToolChoice {
  enum Mode { kAuto, kNone, kRequired, kFunction } mode = kAuto;
  std::string function;  // kFunction
};

// POST /v1/chat/completions and /v1/completions.
struct OpenAiParams {
  std::string model;
  bool chat = true;
  nlohmann::json messages;  // chat: normalized
  std::string prompt;       // completions
  nlohmann::json tools;     // null, or a non-empty array (dropped by tool_choice "none")
  ToolChoice tool_choice;
  bool parallel_tool_calls = true;
  GenOptions opt;
  bool stream = false;
  bool include_usage = false;
  nlohmann::json format;  // from response_format: null, "json" or a schema
  bool has_images = false;
};
OpenAiParams parse_openai_completion(const nlohmann::json& body, bool chat);

// The schema a forced tool call must follow: {"name": <const>, "arguments": <parameters>}, for
// tool_choice "required" (any tool, anyOf) or {"type": "function", ...} (that tool); null for
// auto / none. RequestError(400) when a tool's definition is malformed.
nlohmann::json tool_call_schema(const nlohmann::json& tools, const ToolChoice& choice);

}  // namespace qleap::server
