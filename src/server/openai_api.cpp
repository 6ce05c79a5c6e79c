// OpenAI-compatible routes (/v1/...): chat/completions, completions, models, embeddings, with SSE
// streaming ("data: {...}\n\n" ... "data: [DONE]\n\n") and OpenAI error objects.
#include <fmt/format.h>
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <cstring>

#include "server/api_common.h"

namespace qleap::server {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string new_id(const char* prefix) {
  static std::atomic<uint64_t> counter{0};
  const uint64_t n = ++counter;
  return fmt::format("{}-{:x}{:06x}", prefix, uint64_t(unix_now()), n & 0xFFFFFF);
}

std::string base64(const void* data, size_t n) {
  static const char* kAlpha = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const auto* p = static_cast<const uint8_t*>(data);
  std::string out;
  out.reserve((n + 2) / 3 * 4);
  for (size_t i = 0; i < n; i += 3) {
    const uint32_t v =
        uint32_t(p[i]) << 16 | (i + 1 < n ? uint32_t(p[i + 1]) << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
    out += kAlpha[(v >> 18) & 63];
    out += kAlpha[(v >> 12) & 63];
    out += i + 1 < n ? kAlpha[(v >> 6) & 63] : '=';
    out += i + 2 < n ? kAlpha[v & 63] : '=';
  }
  return out;
}

std::string sse(const json& j) {
  return "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

std::string finish_reason(const Job& job, bool tool_calls) {
  if (tool_calls) return "tool_calls";
  return job.done_reason == "length" ? "length" : "stop";
}

json usage(const Job& job) {
  const int p = int(job.prompt.size());
  return {{"prompt_tokens", p}, {"completion_tokens", job.gen_tokens}, {"total_tokens", p + job.gen_tokens}};
}

json format_from_response_format(const json& rf) {
  if (rf.is_null()) return nullptr;
  if (!rf.is_object()) throw RequestError(400, "'response_format' must be an object");
  const std::string type = get_string(rf, "type", "text");
  if (type == "text") return nullptr;
  if (type == "json_object") return "json";
  if (type == "json_schema") {
    const json js = rf.value("json_schema", json::object());
    if (!js.is_object()) throw RequestError(400, "'response_format.json_schema' must be an object");
    return js.value("schema", json::object());
  }
  throw RequestError(400, fmt::format("unsupported response_format type '{}'", type));
}

void completions(ApiContext& ctx, const httplib::Request& req, httplib::Response& res, bool chat) {
  const json body = parse_body(req.body);
  const std::string name = get_string(body, "model");
  if (name.empty()) throw RequestError(400, "you must provide a model parameter");
  ++ctx.metrics.requests_total;
  if (get_int(body, "n", 1) != 1) throw RequestError(400, "only n = 1 is supported");
  GenOptions opt = openai_defaults();
  apply_openai_params(body, opt);
  const bool stream = get_bool(body, "stream", false);
  const json so = body.value("stream_options", json());
  const bool include_usage = so.is_object() && get_bool(so, "include_usage", false);
  json messages, tools;
  std::string prompt;
  if (chat) {
    messages = normalize_messages(body.value("messages", json()));
    if (messages.empty()) throw RequestError(400, "'messages' must not be empty");
    tools = body.value("tools", json());
    if (!tools.is_null() && !tools.is_array()) throw RequestError(400, "'tools' must be an array");
    if (get_string(body, "tool_choice", "auto") == "none") tools = json();
  } else {
    const json p = body.value("prompt", json(""));
    if (p.is_string()) {
      prompt = p.get<std::string>();
    } else if (p.is_array() && p.size() == 1 && p[0].is_string()) {
      prompt = p[0].get<std::string>();
    } else {
      throw RequestError(400, "'prompt' must be a string (or an array holding one string)");
    }
  }
  const json format = format_from_response_format(body.value("response_format", json()));
  Acquired a = acquire_model(ctx, name);
  ModelRunner& r = **a.lease;
  auto job = std::make_shared<Job>();
  job->opt = opt;
  job->filter = make_format_filter(format, r.tokenizer());
  job->prompt = chat ? r.render_chat(messages, tools) : r.tokenize(prompt, false);
  const bool has_tools = chat && tools.is_array() && !tools.empty();
  submit_or_503(r, job);

  const std::string id = new_id(chat ? "chatcmpl" : "cmpl");
  const int64_t created = unix_now();
  const std::string model = r.info().name;
  const char* object = chat ? (stream ? "chat.completion.chunk" : "chat.completion") : "text_completion";
  auto all_text = std::make_shared<std::string>();
  auto first = std::make_shared<bool>(true);
  auto base = [=]() {
    json j = {{"id", id},
              {"object", object},
              {"created", created},
              {"model", model},
              {"system_fingerprint", "fp_qleap"}};
    if (stream && include_usage) j["usage"] = nullptr;
    return j;
  };
  auto choice_text = [=](const std::string& text, const json& reason) {
    json c = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", reason}};
    if (chat) {
      json delta = {{"content", text}};
      if (*first) delta["role"] = "assistant";
      *first = false;
      c["delta"] = delta;
    } else {
      c["text"] = text;
    }
    return c;
  };
  StreamCallbacks cb;
  cb.heartbeat = stream ? ": ping\n\n" : " ";
  cb.chunk = [=](const std::string& text) -> std::string {
    *all_text += text;
    if (!stream || has_tools) return "";
    json j = base();
    j["choices"] = json::array({choice_text(text, nullptr)});
    return sse(j);
  };
  cb.final_chunk = [=]() -> std::string {
    if (!job->error.empty()) {
      json e = {
          {"error", {{"message", job->error}, {"type", "api_error"}, {"param", nullptr}, {"code", nullptr}}}};
      return stream ? sse(e) + "data: [DONE]\n\n" : e.dump();
    }
    json calls = has_tools ? parse_tool_calls(*all_text) : json::array();
    json tool_calls = json::array();
    for (size_t i = 0; i < calls.size(); ++i) {
      tool_calls.push_back(
          {{"index", i},
           {"id", fmt::format("call_{}_{}", id.substr(id.size() - 6), i)},
           {"type", "function"},
           {"function", {{"name", calls[i]["name"]}, {"arguments", calls[i]["arguments"].dump()}}}});
    }
    const std::string reason = finish_reason(*job, !calls.empty());
    if (!stream) {
      json j = base();
      json c = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", reason}};
      if (chat) {
        json msg = {{"role", "assistant"}, {"content", calls.empty() ? json(*all_text) : json(nullptr)}};
        if (!calls.empty()) msg["tool_calls"] = tool_calls;
        c["message"] = msg;
      } else {
        c["text"] = *all_text;
      }
      j["choices"] = json::array({c});
      j["usage"] = usage(*job);
      return j.dump(-1, ' ', false, json::error_handler_t::replace);
    }
    std::string out;
    if (has_tools) {  // the held-back reply, as content or as tool calls
      json j = base();
      json c = choice_text(calls.empty() ? *all_text : "", nullptr);
      if (!calls.empty()) c["delta"]["tool_calls"] = tool_calls, c["delta"]["content"] = nullptr;
      j["choices"] = json::array({c});
      out += sse(j);
    }
    json j = base();
    json c = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", reason}};
    if (chat) {
      c["delta"] = json::object();
    } else {
      c["text"] = "";
    }
    j["choices"] = json::array({c});
    out += sse(j);
    if (include_usage) {
      json u = base();
      u["choices"] = json::array();
      u["usage"] = usage(*job);
      out += sse(u);
    }
    return out + "data: [DONE]\n\n";
  };
  stream_job(res, stream ? "text/event-stream" : "application/json", job, a.lease, cb, ctx.metrics);
}

void embeddings(ApiContext& ctx, const httplib::Request& req, httplib::Response& res) {
  const json body = parse_body(req.body);
  const std::string name = get_string(body, "model");
  if (name.empty()) throw RequestError(400, "you must provide a model parameter");
  ++ctx.metrics.requests_total;
  const std::string encoding = get_string(body, "encoding_format", "float");
  if (encoding != "float" && encoding != "base64")
    throw RequestError(400, "encoding_format must be float or base64");
  const int dims = get_int(body, "dimensions", 0);
  Acquired a = acquire_model(ctx, name);
  ModelRunner& r = **a.lease;
  auto job = std::make_shared<Job>();
  job->kind = Job::kEmbed;
  const json in = body.value("input", json());
  auto add_tokens = [&](const json& arr) {
    std::vector<int32_t> ids;
    for (const auto& t : arr) {
      if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= r.tokenizer().n_vocab()) {
        throw RequestError(400, "'input' holds an invalid token id");
      }
      ids.push_back(int32_t(t.get<int64_t>()));
    }
    job->inputs.push_back(ids);
  };
  if (in.is_string()) {
    job->inputs.push_back(r.tokenize(in.get<std::string>(), false));
  } else if (in.is_array() && !in.empty() && in[0].is_number()) {
    add_tokens(in);
  } else if (in.is_array() && !in.empty()) {
    for (const auto& s : in) {
      if (s.is_string()) {
        job->inputs.push_back(r.tokenize(s.get<std::string>(), false));
      } else if (s.is_array()) {
        add_tokens(s);
      } else {
        throw RequestError(400, "'input' must be a string, an array of strings or of token arrays");
      }
    }
  } else {
    throw RequestError(400, "'input' must be a non-empty string or array");
  }
  if (job->inputs.size() > 4096) throw RequestError(400, "too many inputs (at most 4096)");
  for (const auto& i : job->inputs) {
    if (i.empty()) throw RequestError(400, "'input' must not contain empty strings");
  }
  submit_or_503(r, job);
  job->wait_all();
  if (!job->error.empty()) throw RequestError(500, job->error);
  json data = json::array();
  for (size_t i = 0; i < job->embeddings.size(); ++i) {
    std::vector<float> e = job->embeddings[i];
    if (dims > 0 && size_t(dims) < e.size()) {  // truncate and renormalise (Matryoshka-style)
      e.resize(size_t(dims));
      double n = 0;
      for (float v : e) n += double(v) * v;
      n = std::sqrt(n);
      for (float& v : e) v = n > 0 ? float(v / n) : 0.0f;
    }
    json emb = encoding == "base64" ? json(base64(e.data(), e.size() * sizeof(float))) : json(e);
    data.push_back({{"object", "embedding"}, {"embedding", emb}, {"index", i}});
  }
  send_json(res, 200,
            json{{"object", "list"},
                 {"data", data},
                 {"model", r.info().name},
                 {"usage", {{"prompt_tokens", job->prompt_tokens}, {"total_tokens", job->prompt_tokens}}}});
}

json model_object(const ModelInfo& m) {
  return {{"id", m.name}, {"object", "model"}, {"created", m.modified_unix}, {"owned_by", "library"}};
}

}  // namespace

void register_openai_routes(httplib::Server& srv, ApiContext& ctx) {
  srv.Post("/v1/chat/completions", [&ctx](const httplib::Request& req, httplib::Response& res) {
    guarded(res, true, ctx.metrics, [&] { completions(ctx, req, res, true); });
  });
  srv.Post("/v1/completions", [&ctx](const httplib::Request& req, httplib::Response& res) {
    guarded(res, true, ctx.metrics, [&] { completions(ctx, req, res, false); });
  });
  srv.Post("/v1/embeddings", [&ctx](const httplib::Request& req, httplib::Response& res) {
    guarded(res, true, ctx.metrics, [&] { embeddings(ctx, req, res); });
  });
  srv.Get("/v1/models", [&ctx](const httplib::Request&, httplib::Response& res) {
    guarded(res, true, ctx.metrics, [&] {
      json data = json::array();
      for (const auto& m : ctx.store.list()) data.push_back(model_object(m));
      send_json(res, 200, json{{"object", "list"}, {"data", data}});
    });
  });
  srv.Get(R"(/v1/models/(.+))", [&ctx](const httplib::Request& req, httplib::Response& res) {
    guarded(res, true, ctx.metrics,
            [&] { send_json(res, 200, model_object(ctx.store.get(req.matches[1].str()))); });
  });
}

}  // namespace qleap::server
