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
// max_tokens: the most tokens the request may generate (num_predict / the room left in the
// context); the filter closes the document in time so that the output is complete JSON.
std::unique_ptr<TokenFilter> make_format_filter(const nlohmann::json& format, const Tokenizer& tok,
                                                int max_tokens);

// The most tokens a request can generate: num_predict, and the room its prompt leaves in the
// context (after truncation).
int generation_budget(const GenOptions& opt, int n_ctx, size_t prompt_tokens);

// Validates chat messages (array of objects with a string role; content a string, null or an
// array of {type:"text", text} parts, which are joined) and returns them in a form the template
// engine takes. RequestError(400) otherwise. Images (Ollama "images", OpenAI image parts) set
// *has_images (RequestError(400) when has_images is null) and are dropped.
nlohmann::json normalize_messages(const nlohmann::json& messages, bool* has_images = nullptr);

// 400 naming the model when a request carries images: this build has no vision models.
void refuse_images(const std::string& model_name);

// Tool calls in generated text: Hermes/Qwen "<tool_call>{...}</tool_call>" blocks, or the whole
// text being one {"name":..., "arguments"|"parameters": {...}} object (Llama 3.x). Returns an array
// of {"name", "arguments" (object)}; empty when the text holds none.
nlohmann::json parse_tool_calls(const std::string& text);

// The NDJSON / SSE fields for log-probabilities of generated tokens (runner.h LogprobEntry).
// Ollama and OpenAI chat: [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}].
nlohmann::json logprobs_json(const std::vector<LogprobEntry>& entries, size_t from, size_t to, bool with_top,
                             const Tokenizer& tok);
// Hands out a job's log-probability entries with the text they produced: take() returns the
// entries not yet sent whose token text fits in the `emitted` bytes of text sent so far (all of
// them when all is set), so a streamed chunk carries the entries of its own tokens.
class LogprobCursor {
 public:
  std::vector<LogprobEntry> take(Job& job, const Tokenizer& tok, size_t emitted, bool all);

 private:
  size_t sent_ = 0;
  size_t bytes_ = 0;  // text bytes of the entries sent
};
// OpenAI legacy completions: {tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}.
nlohmann::json completion_logprobs_json(const std::vector<LogprobEntry>& entries, size_t from, size_t to,
                                        bool with_top, const Tokenizer& tok, size_t text_offset);

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
