// Request parsing shared by the Ollama and OpenAI routes: sampling / length options with their
// API defaults, keep_alive durations, stop sequences. Pure functions over nlohmann::json so they can
// be unit-tested and fuzzed without a model.
#pragma once
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "runtime/generation.h"
#include "sampling/sampler.h"

namespace qleap::server {

// A request the server refuses, with the HTTP status to answer.
struct RequestError : InvalidArgument {
  RequestError(int status, const std::string& msg) : InvalidArgument(msg), status(status) {}
  int status;
};

struct GenOptions {
  SamplerParams sampling;
  int num_predict = -1;  // < 0: until end of generation or full context
  int num_ctx = 0;       // 0: the loaded context; else the prompt + output are capped to it
  int num_keep = -1;     // tokens kept at the front when a prompt is truncated (-1: the BOS token)
  std::vector<std::string> stop;
  bool truncate = true;   // embeddings: false -> error when the input exceeds the context
  bool logprobs = false;  // report the log-probability of each generated token
  int top_logprobs = 0;   // ... and of this many most likely tokens at each position (0..20)
};

// JSON nesting (arrays and objects) deeper than this is refused with 400: parsing is iterative, but
// copying, printing and walking a document recurse.
constexpr int kMaxJsonDepth = 512;
// The deepest nesting in JSON text, found in one pass without recursion; counting stops at
// limit + 1. Brackets inside strings do not count.
int json_nesting_depth(std::string_view text, int limit = kMaxJsonDepth);
// Parses untrusted JSON text; a discarded value when it is invalid or nested deeper than
// kMaxJsonDepth.
nlohmann::json parse_json_bounded(std::string_view text);

// Ollama defaults (temperature 0.8, top_k 40, top_p 0.9, min_p 0, repeat_penalty 1.1 over 64).
GenOptions ollama_defaults();
// OpenAI defaults (temperature 1, top_p 1, no top_k / min_p / repeat penalty).
GenOptions openai_defaults();

// Applies an Ollama "options" object. Unknown keys are ignored; a known key with the wrong type
// throws RequestError(400).
void apply_ollama_options(const nlohmann::json& options, GenOptions& o);
// Applies the OpenAI body fields (temperature, top_p, seed, stop, max_tokens,
// max_completion_tokens, presence/frequency_penalty, plus Ollama-style top_k / min_p /
// repeat_penalty extensions).
void apply_openai_params(const nlohmann::json& body, GenOptions& o);

// keep_alive: a number of seconds, or a duration string ("5m", "1h30m", "10s", "300ms", "-1"). A
// negative value means forever. nullopt when absent / null. Throws RequestError(400) otherwise.
std::optional<double> parse_keep_alive(const nlohmann::json& v);

// Typed getters: absent or null -> def; wrong type -> RequestError(400) naming the field.
std::string get_string(const nlohmann::json& obj, const char* key, const std::string& def = "");
bool get_bool(const nlohmann::json& obj, const char* key, bool def);
double get_number(const nlohmann::json& obj, const char* key, double def);
int get_int(const nlohmann::json& obj, const char* key, int def);
// Parses a request body that must be a JSON object nested at most kMaxJsonDepth deep;
// RequestError(400) otherwise.
nlohmann::json parse_body(const std::string& body);

// Holds back generated text that could be the start of a stop sequence; stops at the first match.
using qleap::StopMatcher;  // runtime/generation.h

// Drops tokens from the front of a prompt (after the first num_keep) so that it leaves room to
// generate: as Ollama does, prompts of n_ctx tokens or more are cut to half the context (the
// first num_keep tokens and the end). Returns the number dropped.
int truncate_prompt(std::vector<int32_t>& tokens, int n_ctx, int num_keep);

}  // namespace qleap::server
