// Pure request logic of the server: option parsing, keep_alive, stop sequences, prompt truncation,
// model names, pull references, the JSON grammar constraint.
#include <gtest/gtest.h>

#include "sampling/json_grammar.h"
#include "server/api_common.h"
#include "server/model_store.h"
#include "server/request.h"

namespace qleap::server {
namespace {

using nlohmann::json;

TEST(ServerRequest, OllamaOptions) {
  GenOptions o = ollama_defaults();
  EXPECT_FLOAT_EQ(o.sampling.temperature, 0.8f);
  EXPECT_EQ(o.sampling.top_k, 40);
  apply_ollama_options(json::parse(R"({"temperature":0,"top_k":5,"top_p":0.5,"min_p":0.1,"seed":42,
      "num_predict":7,"num_ctx":256,"stop":["a","b"],"repeat_penalty":1.3,"unknown":[1]})"),
                       o);
  EXPECT_EQ(o.sampling.temperature, 0.0f);
  EXPECT_EQ(o.sampling.top_k, 5);
  EXPECT_EQ(o.sampling.seed, 42u);
  EXPECT_EQ(o.num_predict, 7);
  EXPECT_EQ(o.num_ctx, 256);
  EXPECT_EQ(o.stop, (std::vector<std::string>{"a", "b"}));
  EXPECT_FLOAT_EQ(o.sampling.repeat_penalty, 1.3f);
  apply_ollama_options(json(), o);  // null: nothing
  EXPECT_THROW(apply_ollama_options(json::parse(R"({"temperature":"hot"})"), o), RequestError);
  EXPECT_THROW(apply_ollama_options(json::parse(R"({"num_predict":1.5})"), o), RequestError);
  EXPECT_THROW(apply_ollama_options(json::parse(R"({"top_k":1e12})"), o), RequestError);
  EXPECT_THROW(apply_ollama_options(json::parse(R"({"stop":[1]})"), o), RequestError);
  EXPECT_THROW(apply_ollama_options(json::parse(R"([1])"), o), RequestError);
}

TEST(ServerRequest, OpenAiParams) {
  GenOptions o = openai_defaults();
  apply_openai_params(json::parse(R"({"max_tokens":5,"temperature":0.2,"stop":"x","seed":3})"), o);
  EXPECT_EQ(o.num_predict, 5);
  EXPECT_EQ(o.stop, std::vector<std::string>{"x"});
  EXPECT_EQ(o.sampling.seed, 3u);
  apply_openai_params(json::parse(R"({"max_completion_tokens":9})"), o);
  EXPECT_EQ(o.num_predict, 9);
  EXPECT_THROW(apply_openai_params(json::parse(R"({"seed":"x"})"), o), RequestError);
}

TEST(ServerRequest, KeepAlive) {
  EXPECT_EQ(parse_keep_alive(json("5m")), 300.0);
  EXPECT_EQ(parse_keep_alive(json("1h30m")), 5400.0);
  EXPECT_EQ(parse_keep_alive(json("300ms")), 0.3);
  EXPECT_EQ(parse_keep_alive(json("-1")), -1.0);
  EXPECT_EQ(parse_keep_alive(json(-1)), -1.0);
  EXPECT_EQ(parse_keep_alive(json(0)), 0.0);
  EXPECT_EQ(parse_keep_alive(json("10")), 10.0);
  EXPECT_FALSE(parse_keep_alive(json()).has_value());
  EXPECT_THROW(parse_keep_alive(json("5 parsecs")), RequestError);
  EXPECT_THROW(parse_keep_alive(json("m")), RequestError);
  EXPECT_THROW(parse_keep_alive(json::array()), RequestError);
}

TEST(ServerRequest, StopMatcherHoldsBackPrefixes) {
  StopMatcher m({"</s>", "STOP"});
  EXPECT_EQ(m.push("hello <"), "hello ");
  EXPECT_EQ(m.push("/"), "");
  EXPECT_EQ(m.push("x"), "</x");
  EXPECT_EQ(m.push("ab ST"), "ab ");
  EXPECT_EQ(m.push("OP and more"), "");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.flush(), "");
  StopMatcher n({"abc"});
  EXPECT_EQ(n.push("xa"), "x");
  EXPECT_EQ(n.flush(), "a");
  StopMatcher none({});
  EXPECT_EQ(none.push("anything"), "anything");
}

TEST(ServerRequest, TruncatePromptKeepsTheEnd) {
  std::vector<int32_t> t(100);
  for (int i = 0; i < 100; ++i) t[size_t(i)] = i;
  EXPECT_EQ(truncate_prompt(t, 200, 1), 0);
  EXPECT_EQ(t.size(), 100u);
  EXPECT_EQ(truncate_prompt(t, 40, 1), 80);
  ASSERT_EQ(t.size(), 20u);
  EXPECT_EQ(t[0], 0);
  EXPECT_EQ(t[1], 81);
  EXPECT_EQ(t.back(), 99);
}

TEST(ServerModelStore, Names) {
  EXPECT_EQ(parse_model_name("llama3").full(), "llama3:latest");
  EXPECT_EQ(parse_model_name("a/b:Q4_K_M").full(), "a/b:Q4_K_M");
  EXPECT_EQ(file_name_for(parse_model_name("x")), "x.gguf");
  EXPECT_EQ(file_name_for(parse_model_name("hf.co/o/r:Q4")), "hf.co%2Fo%2Fr@Q4.gguf");
  EXPECT_EQ(name_from_file("hf.co%2Fo%2Fr@Q4.gguf")->full(), "hf.co/o/r:Q4");
  EXPECT_EQ(name_from_file("SmolLM2-135M-Instruct.Q4_1.gguf")->full(), "SmolLM2-135M-Instruct.Q4_1:latest");
  EXPECT_FALSE(name_from_file("notes.txt"));
  for (const char* bad : {"", ":x", "x:", "../etc/passwd", "/abs", "a b", "a:b/c", "-x", "a\\b"}) {
    EXPECT_THROW(parse_model_name(bad), InvalidArgument) << bad;
  }
  EXPECT_EQ(format_parameter_size(134'515'008), "135M");
  EXPECT_EQ(format_parameter_size(7'241'732'096), "7.2B");
  EXPECT_EQ(file_type_name(15), "Q4_K_M");
}

TEST(ServerModelStore, PullRefs) {
  PullRef r = parse_pull_ref("hf.co/bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M");
  EXPECT_EQ(r.kind, PullRef::kHfRepo);
  EXPECT_EQ(r.repo, "bartowski/SmolLM2-135M-Instruct-GGUF");
  EXPECT_EQ(r.quant, "Q4_K_M");
  EXPECT_EQ(r.store_name.full(), "hf.co/bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M");
  r = parse_pull_ref("owner/repo/model-q8_0.gguf");
  EXPECT_EQ(r.kind, PullRef::kHfFile);
  EXPECT_EQ(r.file, "model-q8_0.gguf");
  EXPECT_EQ(r.store_name.full(), "model-q8_0:latest");
  r = parse_pull_ref("/tmp/x/my-model.gguf");
  EXPECT_EQ(r.kind, PullRef::kLocalFile);
  EXPECT_EQ(r.store_name.full(), "my-model:latest");
  EXPECT_THROW(parse_pull_ref("llama3"), InvalidArgument);
  EXPECT_THROW(parse_pull_ref("hf.co/onlyowner"), InvalidArgument);
}

TEST(ServerApi, ToolCallsAndMessages) {
  json c = parse_tool_calls(
      "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>");
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0]["name"], "get_weather");
  EXPECT_EQ(c[0]["arguments"]["city"], "Paris");
  c = parse_tool_calls(R"({"name":"f","parameters":{"x":1}})");
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0]["arguments"]["x"], 1);
  EXPECT_TRUE(parse_tool_calls("just text {not json").empty());
  json m = normalize_messages(
      json::parse(R"([{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},
      {"role":"assistant","content":null,"tool_calls":[{"function":{"name":"f","arguments":"{\"x\":2}"}}]}])"));
  EXPECT_EQ(m[0]["content"], "ab");
  EXPECT_EQ(m[1]["tool_calls"][0]["function"]["arguments"]["x"], 2);
  EXPECT_THROW(normalize_messages(json("x")), RequestError);
  EXPECT_THROW(normalize_messages(json::parse(R"([{"content":"x"}])")), RequestError);
  EXPECT_THROW(normalize_messages(json::parse(R"([{"role":"user","content":5}])")), RequestError);
}

bool accepts(const json* schema, const std::string& s) {
  JsonMatcher m(schema);
  return m.feed(s) && m.complete();
}
bool prefix_ok(const json* schema, const std::string& s) {
  JsonMatcher m(schema);
  return m.feed(s);
}

TEST(JsonGrammar, AnyJson) {
  for (const char* ok : {"{}", "[]", "{\"a\": [1, 2.5e-3, -0, true, false, null, \"x\\n\\u00e9\"]}", "\"s\"",
                         "[{\"a\":{}}]", " {\"k\" : \"v\"}"}) {
    EXPECT_TRUE(accepts(nullptr, ok)) << ok;
  }
  for (const char* bad :
       {"{a}", "[1,]", "{\"a\" 1}", "01", "[1 2]", "tru e", "\"a\nb\"", "{\"a\":}", "}", "[1]]"}) {
    EXPECT_FALSE(accepts(nullptr, bad)) << bad;
  }
  EXPECT_TRUE(prefix_ok(nullptr, "{\"a\": [1, 2"));
  EXPECT_FALSE(accepts(nullptr, "{\"a\": [1, 2"));
  // Whitespace runs are capped.
  EXPECT_FALSE(prefix_ok(nullptr, "{          "));
  // A failed byte leaves the state unchanged.
  JsonMatcher m;
  EXPECT_TRUE(m.feed('['));
  EXPECT_FALSE(m.feed('}'));
  EXPECT_TRUE(m.feed("1]"));
  EXPECT_TRUE(m.complete());
}

TEST(JsonGrammar, Schema) {
  const json schema = json::parse(R"({"type":"object","properties":{
      "name":{"type":"string"},"age":{"type":"integer"},"tags":{"type":"array","items":{"type":"string"}},
      "color":{"enum":["red","green"]}},"required":["name","age"]})");
  validate_json_schema(schema);
  EXPECT_TRUE(accepts(&schema, R"({"name":"Bo","age":3})"));
  EXPECT_TRUE(accepts(&schema, R"({"age": 3, "name": "Bo", "tags": ["a","b"], "color": "green"})"));
  EXPECT_FALSE(accepts(&schema, R"({"name":"Bo"})"));         // required age missing
  EXPECT_FALSE(prefix_ok(&schema, R"({"nam3")"));             // not a property
  EXPECT_FALSE(prefix_ok(&schema, R"({"age":3.5)"));          // integer
  EXPECT_FALSE(prefix_ok(&schema, R"({"age":"3")"));          // wrong type
  EXPECT_FALSE(prefix_ok(&schema, R"({"name":"a","name")"));  // duplicate key
  EXPECT_FALSE(prefix_ok(&schema, R"({"color":"blue")"));     // not in enum
  EXPECT_FALSE(prefix_ok(&schema, R"({"tags":[1)"));          // items type
  EXPECT_FALSE(prefix_ok(&schema, "[1]"));                    // not an object
  EXPECT_THROW(validate_json_schema(json("x")), std::invalid_argument);
  EXPECT_THROW(validate_json_schema(json::parse(R"({"type":5})")), std::invalid_argument);
}

}  // namespace
}  // namespace qleap::server
