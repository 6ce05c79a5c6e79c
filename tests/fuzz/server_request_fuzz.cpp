// libFuzzer target for the server's request parsing: any body must either be accepted or raise a
// typed error (RequestError / InvalidArgument -> HTTP 4xx); never crash, hang or leak. Covers body
// parsing, Ollama options, OpenAI parameters, keep_alive, chat messages, model names, tool-call
// extraction, stop sequences and the JSON grammar (schema taken from the body's "format").
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "core/error.h"
#include "sampling/json_grammar.h"
#include "server/api_common.h"
#include "server/model_store.h"
#include "server/request.h"

using nlohmann::json;
using namespace qleap::server;

template <class F>
void expect_typed(F&& f) {
  try {
    f();
  } catch (const qleap::Error&) {
  } catch (const std::invalid_argument&) {
  }
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string body(reinterpret_cast<const char*>(data), size);
  json j;
  try {
    j = parse_body(body);
  } catch (const RequestError& e) {
    if (e.status != 400) __builtin_trap();
    // Not JSON: still exercise the text-level pieces.
    (void)parse_tool_calls(body);
    qleap::JsonMatcher m;
    m.feed(body);
    return 0;
  }
  expect_typed([&] {
    GenOptions o = ollama_defaults();
    apply_ollama_options(j.contains("options") ? j["options"] : json(), o);
    StopMatcher s(o.stop);
    std::string out = s.push(get_string(j, "prompt")) + s.flush();
    (void)out;
  });
  expect_typed([&] {
    GenOptions o = openai_defaults();
    apply_openai_params(j, o);
  });
  expect_typed([&] { (void)parse_keep_alive(j.contains("keep_alive") ? j["keep_alive"] : json()); });
  expect_typed([&] { (void)normalize_messages(j.contains("messages") ? j["messages"] : json::array()); });
  expect_typed([&] { (void)parse_model_name(get_string(j, "model")); });
  expect_typed([&] {
    const std::string m = get_string(j, "model");
    if (!m.empty() && m[0] != '/' && m[0] != '.' && m[0] != '~') (void)parse_pull_ref(m);
  });
  expect_typed([&] {
    (void)get_int(j, "num", 0);
    (void)get_number(j, "x", 0);
    (void)get_bool(j, "stream", true);
  });
  expect_typed([&] {
    const json& f = j.contains("format") ? j["format"] : j;
    if (f.is_object()) qleap::validate_json_schema(f);
    qleap::JsonMatcher m(f.is_object() ? &f : nullptr);
    const std::string text = get_string(j, "prompt", body);
    for (char c : text) m.feed(c);
    (void)m.complete();
  });
  (void)parse_tool_calls(get_string(j, "prompt", ""));
  return 0;
}
