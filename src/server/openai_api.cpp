// OpenAI-compatible routes (/v1/...): chat/completions, completions, models, embeddings, with SSE
// streaming ("data: {...}\n\n" ... "data: [DONE]\n\n") and OpenAI error objects.
#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>

#include "server/api_common.h"
#include "server/api_params.h"

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

void completions(ApiContext& ctx, const HttpRequest& req, HttpResponse& res, bool chat) {
  const OpenAiParams p = parse_openai_completion(parse_body(req.body), chat);
  ++ctx.metrics.requests_total;
  if (p.has_images) refuse_images(ctx.store.get(p.model).name);
  // A forced tool call (tool_choice "required" or a named function) is generated under the schema
  // of the call itself, so the reply is always a well-formed call.
  const json call_schema = chat ? tool_call_schema(p.tools, p.tool_choice) : json();
  Acquired a = acquire_model(ctx, p.model);
  ModelRunner& r = **a.lease;
  auto job = std::make_shared<Job>();
  job->opt = p.opt;
  job->prompt = chat ? r.render_chat(p.messages, p.tools) : r.tokenize(p.prompt, false);
  job->filter = make_format_filter(call_schema.is_null() ? p.format : call_schema, r.tokenizer(),
                                   generation_budget(p.opt, r.n_ctx(), job->prompt.size()));
  const bool has_tools = chat && p.tools.is_array();
  const bool stream = p.stream, include_usage = p.include_usage, parallel = p.parallel_tool_calls;
  const bool want_lp = p.opt.logprobs, top_lp = p.opt.top_logprobs > 0;
  submit_or_503(r, job);

  const std::string id = new_id(chat ? "chatcmpl" : "cmpl");
  const int64_t created = unix_now();
  const std::string model = r.info().name;
  const Tokenizer* tok = &r.tokenizer();
  const char* object = chat ? (stream ? "chat.completion.chunk" : "chat.completion") : "text_completion";
  auto all_text = std::make_shared<std::string>();
  auto first = std::make_shared<bool>(true);
  auto lp = std::make_shared<LogprobCursor>();
  auto lp_offset = std::make_shared<size_t>(0);  // completions: text offset of the next token
  auto base = [=]() {
    json j = {{"id", id},
              {"object", object},
              {"created", created},
              {"model", model},
              {"system_fingerprint", "fp_qleap"}};
    if (stream && include_usage) j["usage"] = nullptr;
    return j;
  };
  // The logprobs field of a choice for the entries not sent yet (null when not asked for).
  auto logprobs = [=](bool all) -> json {
    if (!want_lp) return nullptr;
    const std::vector<LogprobEntry> e = lp->take(*job, *tok, all_text->size(), all);
    if (chat) return {{"content", logprobs_json(e, 0, e.size(), top_lp, *tok)}, {"refusal", nullptr}};
    json j = completion_logprobs_json(e, 0, e.size(), top_lp, *tok, *lp_offset);
    for (const auto& t : j["tokens"]) *lp_offset += t.get_ref<const std::string&>().size();
    return j;
  };
  auto choice_text = [=](const std::string& text, const json& reason, bool all) {
    json c = {{"index", 0}, {"logprobs", logprobs(all)}, {"finish_reason", reason}};
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
    j["choices"] = json::array({choice_text(text, nullptr, false)});
    return sse(j);
  };
  cb.final_chunk = [=]() -> std::string {
    if (!job->error.empty()) {
      json e = {
          {"error", {{"message", job->error}, {"type", "api_error"}, {"param", nullptr}, {"code", nullptr}}}};
      return stream ? sse(e) + "data: [DONE]\n\n" : e.dump();
    }
    json calls = has_tools ? parse_tool_calls(*all_text) : json::array();
    if (!parallel && calls.size() > 1) calls.erase(calls.begin() + 1, calls.end());
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
      json c = {{"index", 0}, {"logprobs", logprobs(true)}, {"finish_reason", reason}};
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
      json c = choice_text(calls.empty() ? *all_text : "", nullptr, true);
      if (!calls.empty()) c["delta"]["tool_calls"] = tool_calls, c["delta"]["content"] = nullptr;
      j["choices"] = json::array({c});
      out += sse(j);
    }
    json j = base();
    json c = {{"index", 0}, {"logprobs", logprobs(true)}, {"finish_reason", reason}};
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

void embeddings(ApiContext& ctx, const HttpRequest& req, HttpResponse& res) {
  const EmbedParams p = parse_openai_embeddings(parse_body(req.body));
  ++ctx.metrics.requests_total;
  Acquired a = acquire_model(ctx, p.model);
  ModelRunner& r = **a.lease;
  auto job = std::make_shared<Job>();
  job->kind = Job::kEmbed;
  for (size_t i = 0; i < p.texts.size(); ++i) {
    if (!p.is_tokens[i]) {
      job->inputs.push_back(r.tokenize(p.texts[i], false));
      continue;
    }
    std::vector<int32_t> ids;
    for (int64_t t : p.token_inputs[i]) {
      if (t >= r.tokenizer().n_vocab()) throw RequestError(400, "'input' holds an invalid token id");
      ids.push_back(int32_t(t));
    }
    job->inputs.push_back(std::move(ids));
  }
  submit_or_503(r, job);
  job->wait_all();
  if (!job->error.empty()) throw RequestError(500, job->error);
  json data = json::array();
  for (size_t i = 0; i < job->embeddings.size(); ++i) {
    std::vector<float> e = job->embeddings[i];
    if (p.dimensions > 0 && size_t(p.dimensions) < e.size()) {  // truncate and renormalise (Matryoshka-style)
      e.resize(size_t(p.dimensions));
      double n = 0;
      for (float v : e) n += double(v) * v;
      n = std::sqrt(n);
      for (float& v : e) v = n > 0 ? float(v / n) : 0.0f;
    }
    json emb = p.encoding == "base64" ? json(base64(e.data(), e.size() * sizeof(float))) : json(e);
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

void register_openai_routes(Router& srv, ApiContext& ctx) {
  srv.post("/v1/chat/completions", [&ctx](const HttpRequest& req, HttpResponse& res) {
    guarded(res, true, ctx.metrics, [&] { completions(ctx, req, res, true); });
  });
  srv.post("/v1/completions", [&ctx](const HttpRequest& req, HttpResponse& res) {
    guarded(res, true, ctx.metrics, [&] { completions(ctx, req, res, false); });
  });
  srv.post("/v1/embeddings", [&ctx](const HttpRequest& req, HttpResponse& res) {
    guarded(res, true, ctx.metrics, [&] { embeddings(ctx, req, res); });
  });
  srv.get("/v1/models", [&ctx](const HttpRequest&, HttpResponse& res) {
    guarded(res, true, ctx.metrics, [&] {
      json data = json::array();
      for (const auto& m : ctx.store.list()) data.push_back(model_object(m));
      send_json(res, 200, json{{"object", "list"}, {"data", data}});
    });
  });
  srv.get(
      "/v1/models/",
      [&ctx](const HttpRequest& req, HttpResponse& res) {
        guarded(res, true, ctx.metrics,
                [&] { send_json(res, 200, model_object(ctx.store.get(req.matches[1]))); });
      },
      true);
}

}  // namespace qleap::server
