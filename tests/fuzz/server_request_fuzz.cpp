// libFuzzer target for the server's request handling without a model: any input must either be
// accepted or refused with a typed error (RequestError / InvalidArgument / std::invalid_argument ->
// HTTP 4xx); never crash, hang, leak or recurse without bound. Each input goes through
//  - the HTTP framing (request head, chunked body decoder) as raw bytes,
//  - body parsing (JSON depth limit) and the request parsers of both APIs: Ollama generate, chat,
//    embed and embeddings; OpenAI chat completions, completions and embeddings,
//  - the schemas those requests carry (format, response_format, forced tool calls) compiled for the
//    JSON grammar, and the grammar fed text from the request, checking its completion budget,
//  - options, keep_alive, stop sequences, model names, pull references, tool-call extraction.
// Seeds (tests/fuzz/corpus/server_request, made by make_corpus.py) are requests of both APIs with
// deep nesting, huge numbers and wrong types per field; server_request.dict lists the API's keys.
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "core/error.h"
#include "sampling/json_grammar.h"
#include "server/api_common.h"
#include "server/api_params.h"
#include "server/http_parse.h"
#include "server/model_store.h"
#include "server/request.h"

using nlohmann::json;
using namespace qleap::server;

namespace {

template <class F>
void expect_typed(F&& f) {
  try {
    f();
  } catch (const RequestError& e) {
    if (e.status < 400 || e.status > 599) __builtin_trap();
  } catch (const qleap::Error&) {
  } catch (const std::invalid_argument&) {
  }
}

void fuzz_http(const std::string& bytes) {
  RequestHead head;
  HttpError err;
  size_t used = 0;
  const ParseStatus st = parse_request_head(bytes, head, used, err);
  if (st == ParseStatus::kError && (err.status < 400 || err.status > 599)) __builtin_trap();
  if (st != ParseStatus::kDone) return;
  if (used > bytes.size()) __builtin_trap();
  if (head.chunked) {
    ChunkedDecoder d(1 << 16);
    std::string out;
    size_t n = 0;
    d.feed(std::string_view(bytes).substr(used), n, out, err);
    if (out.size() > (1 << 16)) __builtin_trap();
  }
}

// Feeds text to a matcher and checks what it promises: min_remaining() is 0 exactly when complete.
void fuzz_grammar(const json* schema, const std::string& text) {
  qleap::JsonMatcher m(schema);
  for (char c : text) {
    int need = 0;
    const bool ok = m.probe(std::string_view(&c, 1), &need);
    if (ok != m.feed(c)) __builtin_trap();
    if (ok && need != m.min_remaining()) __builtin_trap();
    if (m.complete() != (m.min_remaining() == 0)) __builtin_trap();
  }
}

void grammar_for(const json& format, const std::string& text) {
  expect_typed([&] {
    if (format.is_object()) {
      fuzz_grammar(&format, text);
    } else if (format.is_string()) {
      fuzz_grammar(nullptr, text);
    }
  });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string body(reinterpret_cast<const char*>(data), size);
  fuzz_http(body);
  json j;
  try {
    j = parse_body(body);
  } catch (const RequestError& e) {
    if (e.status != 400) __builtin_trap();
    // Not a JSON object: still exercise the text-level pieces.
    (void)parse_tool_calls(body);
    (void)json_nesting_depth(body);
    fuzz_grammar(nullptr, body.substr(0, 1024));
    return 0;
  }
  const std::string text = [&] {
    try {
      return get_string(j, "prompt", body.substr(0, 1024)).substr(0, 1024);
    } catch (const RequestError&) {
      return body.substr(0, 1024);
    }
  }();
  // Ollama
  expect_typed([&] {
    const OllamaGenerateParams p = parse_ollama_generate(j);
    StopMatcher s(p.opt.stop);
    (void)(s.push(p.prompt) + s.flush());
    grammar_for(p.format, text);
  });
  expect_typed([&] {
    const OllamaGenerateParams p = parse_ollama_chat(j);
    grammar_for(p.format, text);
  });
  expect_typed([&] { (void)parse_ollama_embed(j, false); });
  expect_typed([&] { (void)parse_ollama_embed(j, true); });
  // OpenAI
  expect_typed([&] {
    const OpenAiParams p = parse_openai_completion(j, true);
    const json call = tool_call_schema(p.tools, p.tool_choice);
    grammar_for(call.is_null() ? p.format : call, text);
  });
  expect_typed([&] { (void)parse_openai_completion(j, false); });
  expect_typed([&] { (void)parse_openai_embeddings(j); });
  // Pieces used by both.
  expect_typed([&] { (void)parse_keep_alive(j.contains("keep_alive") ? j["keep_alive"] : json()); });
  expect_typed([&] { (void)parse_model_name(get_string(j, "model")); });
  expect_typed([&] {
    const std::string m = get_string(j, "model");
    if (!m.empty() && m[0] != '/' && m[0] != '.' && m[0] != '~') (void)parse_pull_ref(m);
  });
  expect_typed([&] {
    // A schema anywhere at the top level, and the grammar fed the body itself.
    for (const char* key : {"format", "schema", "parameters"}) {
      if (j.contains(key) && j[key].is_object()) grammar_for(j[key], body.substr(0, 1024));
    }
  });
  expect_typed([&] { (void)parse_tool_calls(text); });
  return 0;
}
