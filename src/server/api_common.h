// Helpers shared by the Ollama and OpenAI route files.
#pragma once
#include <chrono>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "server/http_server.h"
#include "server/runner.h"
#include "server/scheduler.h"

namespace qleap::server {

// The JSON-mode / JSON-schema constraint for a request's format field ("json", a schema object,
// or OpenAI's response_format); nullptr when unconstrained. RequestError(400) on a bad schema.
std::unique_ptr<TokenFilter> make_format_filter(const nlohmann::json& format, const Tokenizer& tok);

// Validates chat messages (array of objects with a string role; content a string, null or an
// array of {type:"text", text} parts, which are joined) and returns them in a form the template
// engine takes. RequestError(400) otherwise.
nlohmann::json normalize_messages(const nlohmann::json& messages);

// Tool calls in generated text: Hermes/Qwen "<tool_call>{...}</tool_call>" blocks, or the whole
// text being one {"name":..., "arguments"|"parameters": {...}} object (Llama 3.x). Returns an array
// of {"name", "arguments" (object)}; empty when the text holds none.
nlohmann::json parse_tool_calls(const std::string& text);

// Acquires the model (404 when unknown) and measures the load time.
struct Acquired {
  std::shared_ptr<Lease> lease;
  double load_s = 0;
};
Acquired acquire_model(ApiContext& ctx, const std::string& name);

// Submits a job; RequestError(503) when the model's queue is full.
void submit_or_503(ModelRunner& r, const std::shared_ptr<Job>& job);

inline int64_t to_ns(double s) {
  return int64_t(s * 1e9);
}
inline double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace qleap::server
