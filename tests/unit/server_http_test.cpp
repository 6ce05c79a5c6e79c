// The server's HTTP framing (http_parse), access policy (http_policy), JSON depth limit and the
// request parsers of both APIs (api_params).
#include <gtest/gtest.h>

#include "server/api_params.h"
#include "server/http_parse.h"
#include "server/http_policy.h"
#include "server/request.h"

namespace qleap::server {
namespace {

using nlohmann::json;

ParseStatus parse(const std::string& s, RequestHead& h, HttpError& e, size_t* used = nullptr) {
  size_t n = 0;
  const ParseStatus st = parse_request_head(s, h, n, e);
  if (used) *used = n;
  return st;
}

TEST(HttpParse, RequestHead) {
  RequestHead h;
  HttpError e;
  size_t used = 0;
  const std::string req =
      "POST /api/chat?x=1 HTTP/1.1\r\nHost: localhost:11435\r\nContent-Length: 5\r\n\r\nhello";
  ASSERT_EQ(parse(req, h, e, &used), ParseStatus::kDone);
  EXPECT_EQ(h.method, "POST");
  EXPECT_EQ(h.path, "/api/chat");
  EXPECT_EQ(h.query, "x=1");
  EXPECT_EQ(h.host, "localhost:11435");
  EXPECT_EQ(h.content_length, 5u);
  EXPECT_TRUE(h.keep_alive);
  EXPECT_EQ(req.substr(used), "hello");
  EXPECT_EQ(parse("GET / HTTP/1.1\r\nHost: x", h, e), ParseStatus::kIncomplete);
  ASSERT_EQ(parse("\r\nGET /v1/models/a%3Ab HTTP/1.0\n\n", h, e), ParseStatus::kDone);  // LF only, 1.0
  EXPECT_EQ(h.path, "/v1/models/a:b");
  EXPECT_FALSE(h.keep_alive);
  ASSERT_EQ(parse("GET http://127.0.0.1:5/health HTTP/1.1\r\nHost: evil\r\n\r\n", h, e), ParseStatus::kDone);
  EXPECT_EQ(h.host, "127.0.0.1:5");
  EXPECT_EQ(h.path, "/health");
}

TEST(HttpParse, RefusesMalformedFraming) {
  struct Case {
    const char* req;
    int status;
  };
  const Case cases[] = {
      {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400},
      {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", 413},
      {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\n", 400},
      {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400},
      {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
      {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501},
      {"GET / HTTP/1.1\r\n\r\n", 400},  // no Host
      {"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
      {"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400},
      {"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400},
      {"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505},
      {"GET /  HTTP/1.1\r\nHost: a\r\n\r\n", 400},
      {"GET / HTTP/1.1\r\nHost: a\r\nExpect: magic\r\n\r\n", 417},
      {"GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n", 400},
      {"\x16\x03\x01\x02\x00", 400},  // a TLS handshake: refused before any line end
      {"hello\r\n\r\n", 400},
  };
  for (const auto& c : cases) {
    RequestHead h;
    HttpError e;
    EXPECT_EQ(parse(c.req, h, e), ParseStatus::kError) << c.req;
    EXPECT_EQ(e.status, c.status) << c.req;
  }
  RequestHead h;
  HttpError e;
  EXPECT_EQ(parse("GET /" + std::string(9000, 'a'), h, e), ParseStatus::kError);
  EXPECT_EQ(e.status, 414);
  std::string many = "GET / HTTP/1.1\r\nHost: a\r\n";
  for (int i = 0; i < 200; ++i) many += "X-" + std::to_string(i) + ": 1\r\n";
  EXPECT_EQ(parse(many + "\r\n", h, e), ParseStatus::kError);
  EXPECT_EQ(e.status, 431);
}

TEST(HttpParse, ChunkedBodies) {
  ChunkedDecoder d(100);
  std::string out;
  HttpError e;
  size_t used = 0;
  const std::string body = "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT";
  // Byte by byte: incremental decoding gives the same result.
  size_t pos = 0;
  ParseStatus st = ParseStatus::kIncomplete;
  while (st == ParseStatus::kIncomplete && pos < body.size()) {
    st = d.feed(std::string_view(body).substr(pos, 1), used, out, e);
    pos += used;
  }
  ASSERT_EQ(st, ParseStatus::kDone);
  EXPECT_EQ(out, "hello world");
  EXPECT_EQ(body.substr(pos), "NEXT");
  ChunkedDecoder big(10);
  out.clear();
  EXPECT_EQ(big.feed("b\r\n", used, out, e), ParseStatus::kError);
  EXPECT_EQ(e.status, 413);
  ChunkedDecoder bad(100);
  EXPECT_EQ(bad.feed("zz\r\n", used, out, e), ParseStatus::kError);
  EXPECT_EQ(e.status, 400);
  ChunkedDecoder nocrlf(100);
  EXPECT_EQ(nocrlf.feed("1\r\naXY", used, out, e), ParseStatus::kError);
}

TEST(HttpPolicy, HostsAndOrigins) {
  const AccessPolicy p =
      make_access_policy("127.0.0.1", "https://my.app,http://*.example.org", "box.lan", nullptr);
  for (const char* ok : {"", "127.0.0.1", "127.0.0.1:11435", "localhost:1", "[::1]:11435", "192.168.1.7:80",
                         "LOCALHOST", "app.localhost", "box.lan:11435"}) {
    EXPECT_TRUE(host_allowed(p, ok)) << ok;
  }
  for (const char* bad : {"evil.example", "evil.example:11435", "127.0.0.1.nip.io", "localhost.evil.com",
                          "[::1", "a b", "x:y"}) {
    EXPECT_FALSE(host_allowed(p, bad)) << bad;
  }
  for (const char* ok :
       {"http://localhost", "http://localhost:3000", "https://127.0.0.1:8443", "http://[::1]:5173",
        "app://obsidian.md", "tauri://localhost", "file://", "https://my.app", "http://a.example.org"}) {
    EXPECT_TRUE(origin_allowed(p, ok, "127.0.0.1:11435")) << ok;
  }
  for (const char* bad :
       {"http://evil.example", "null", "https://my.app.evil.com", "http://localhost.evil.com"}) {
    EXPECT_FALSE(origin_allowed(p, bad, "127.0.0.1:11435")) << bad;
  }
  // Same origin: the web UI opened on the LAN address.
  EXPECT_TRUE(origin_allowed(p, "http://192.168.1.7:11435", "192.168.1.7:11435"));
  EXPECT_FALSE(origin_allowed(p, "http://192.168.1.7:11435", "192.168.1.7:80"));
  EXPECT_TRUE(is_loopback_host("127.0.0.1"));
  EXPECT_TRUE(is_loopback_host("[::1]"));
  EXPECT_TRUE(is_loopback_host("localhost"));
  EXPECT_FALSE(is_loopback_host("0.0.0.0"));
}

TEST(HttpPolicy, ApiKey) {
  const AccessPolicy none = make_access_policy("127.0.0.1", nullptr, nullptr, nullptr);
  EXPECT_TRUE(api_key_ok(none, ""));
  const AccessPolicy p = make_access_policy("0.0.0.0", nullptr, nullptr, "s3cret");
  EXPECT_TRUE(api_key_ok(p, "Bearer s3cret"));
  EXPECT_TRUE(api_key_ok(p, "bearer s3cret"));
  for (const char* bad : {"", "s3cret", "Bearer s3cre", "Bearer s3cret2", "Basic s3cret", "Bearer "}) {
    EXPECT_FALSE(api_key_ok(p, bad)) << bad;
  }
  EXPECT_TRUE(api_key_exempt("GET", "/health"));
  EXPECT_TRUE(api_key_exempt("GET", "/ui/app.js"));
  EXPECT_TRUE(api_key_exempt("OPTIONS", "/api/chat"));
  EXPECT_FALSE(api_key_exempt("POST", "/health"));
  EXPECT_FALSE(api_key_exempt("GET", "/api/tags"));
}

TEST(ServerJson, NestingIsBounded) {
  EXPECT_EQ(json_nesting_depth("{\"a\":[1,{\"b\":\"[[[[\"}]}"), 3);
  EXPECT_EQ(json_nesting_depth(R"("\"[[")"), 0);
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  EXPECT_EQ(json_nesting_depth(deep), kMaxJsonDepth + 1);
  EXPECT_TRUE(parse_json_bounded(deep).is_discarded());
  EXPECT_THROW(parse_body("{\"a\":" + deep + "}"), RequestError);
  const std::string ok = std::string(kMaxJsonDepth - 1, '[') + std::string(kMaxJsonDepth - 1, ']');
  EXPECT_NO_THROW(parse_body("{\"a\":" + ok + "}"));
}

TEST(ServerApiParams, OllamaAndOpenAi) {
  auto g = parse_ollama_generate(json::parse(R"({"model":"m","prompt":"p","images":["aGk="],"logprobs":true,
      "top_logprobs":3,"options":{"num_ctx":1}})"));
  EXPECT_TRUE(g.has_images);
  EXPECT_TRUE(g.opt.logprobs);
  EXPECT_EQ(g.opt.top_logprobs, 3);
  EXPECT_THROW(parse_ollama_generate(json::parse(R"({"model":"m","top_logprobs":21})")), RequestError);
  auto c = parse_ollama_chat(
      json::parse(R"({"model":"m","messages":[{"role":"user","content":"x","images":["aGk="]}]})"));
  EXPECT_TRUE(c.has_images);
  EXPECT_THROW(parse_ollama_embed(json::parse(R"({"model":"m","input":""})"), false), RequestError);
  EXPECT_THROW(parse_ollama_embed(json::parse(R"({"model":"m","input":[""]})"), false), RequestError);
  EXPECT_THROW(parse_ollama_embed(json::parse(R"({"model":"m","input":[]})"), false), RequestError);
  EXPECT_TRUE(parse_ollama_embed(json::parse(R"({"model":"m"})"), false).load_only);
  EXPECT_THROW(parse_openai_embeddings(json::parse(R"({"model":"m","input":[""]})")), RequestError);
  EXPECT_THROW(parse_openai_embeddings(json::parse(R"({"model":"m","input":[[]]})")), RequestError);
  EXPECT_THROW(parse_openai_embeddings(json::parse(R"({"model":"m","input":""})")), RequestError);

  const json tools = json::parse(R"([{"type":"function","function":{"name":"get_weather","parameters":{
      "type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}},
      {"type":"function","function":{"name":"noop"}}])");
  json body = {{"model", "m"}, {"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"tools", tools}};
  body["tool_choice"] = {{"type", "function"}, {"function", {{"name", "get_weather"}}}};
  auto o = parse_openai_completion(body, true);
  EXPECT_EQ(o.tool_choice.mode, ToolChoice::kFunction);
  const json schema = tool_call_schema(o.tools, o.tool_choice);
  EXPECT_EQ(schema["properties"]["name"]["const"], "get_weather");
  EXPECT_EQ(schema["properties"]["arguments"]["required"][0], "city");
  body["tool_choice"] = "required";
  EXPECT_EQ(tool_call_schema(tools, parse_openai_completion(body, true).tool_choice)["anyOf"].size(), 2u);
  body["tool_choice"] = {{"type", "function"}, {"function", {{"name", "missing"}}}};
  EXPECT_THROW(parse_openai_completion(body, true), RequestError);
  body["tool_choice"] = "sometimes";
  EXPECT_THROW(parse_openai_completion(body, true), RequestError);
  body["tool_choice"] = "none";
  EXPECT_TRUE(parse_openai_completion(body, true).tools.is_null());
  body.erase("tool_choice");
  body["parallel_tool_calls"] = false;
  EXPECT_FALSE(parse_openai_completion(body, true).parallel_tool_calls);
  body["top_logprobs"] = 2;
  EXPECT_THROW(parse_openai_completion(body, true), RequestError);  // needs logprobs: true
  body["logprobs"] = true;
  EXPECT_EQ(parse_openai_completion(body, true).opt.top_logprobs, 2);
  body["messages"][0]["content"] = json::parse(R"([{"type":"image_url","image_url":{"url":"data:x"}}])");
  EXPECT_TRUE(parse_openai_completion(body, true).has_images);
  auto legacy = parse_openai_completion(json::parse(R"({"model":"m","prompt":"x","logprobs":2})"), false);
  EXPECT_TRUE(legacy.opt.logprobs);
  EXPECT_EQ(legacy.opt.top_logprobs, 2);
}

}  // namespace
}  // namespace qleap::server
