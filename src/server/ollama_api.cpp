// Ollama API routes (/api/...): field names, defaults and error shapes as in Ollama's docs/api.md.
#include <fmt/format.h>

#include <chrono>

#include "gguf/gguf.h"
#include "server/api_common.h"
#include "server/api_params.h"

namespace qleap::server {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

// The Ollama API level these routes follow (clients check it).
constexpr const char* kOllamaApiVersion = "0.12.0";

json details_json(const ModelInfo& m) {
  return {{"parent_model", ""},
          {"format", "gguf"},
          {"family", m.family},
          {"families", json::array({m.family})},
          {"parameter_size", m.parameter_size},
          {"quantization_level", m.quantization_level}};
}

std::string model_field(const json& body) {
  std::string m = get_string(body, "model");
  if (m.empty()) m = get_string(body, "name");
  if (m.empty()) throw RequestError(400, "model is required");
  return m;
}

json gguf_value_json(const GgufValue& v) {
  switch (v.type) {
    case GgufType::STRING:
      return v.s;
    case GgufType::BOOL:
      return v.u != 0;
    case GgufType::FLOAT32:
    case GgufType::FLOAT64:
      return v.f;
    case GgufType::ARRAY:
      return nullptr;  // vocabularies etc.: Ollama omits them unless verbose
    default:
      return v.is_integer() ? json(v.as_int()) : json(nullptr);
  }
}

std::string now_str() {
  return rfc3339(std::chrono::system_clock::now());
}

// Final statistics shared by generate and chat.
void add_stats(json& j, const Job& job, double load_s, Clock::time_point t0) {
  j["done_reason"] = job.done_reason == "cancel" ? "stop" : job.done_reason;
  j["total_duration"] = to_ns(seconds_since(t0));
  j["load_duration"] = to_ns(load_s);
  j["prompt_eval_count"] = int(job.prompt.size());
  j["prompt_eval_duration"] = to_ns(job.prompt_s);
  j["eval_count"] = job.gen_tokens;
  j["eval_duration"] = to_ns(job.gen_s);
}

// Empty prompt / messages: Ollama loads (or, with keep_alive 0, unloads) the model and answers at once.
void load_only(ApiContext& ctx, const OllamaGenerateParams& p, HttpResponse& res) {
  std::string reason = "load";
  std::string full = p.model;
  if (p.keep_alive && *p.keep_alive == 0) {
    full = ctx.store.get(p.model).name;
    ctx.sched.unload(p.model);
    reason = "unload";
  } else {
    Acquired a = acquire_model(ctx, p.model);
    a.lease->keep_alive = p.keep_alive;
    full = (*a.lease)->info().name;
  }
  json j = {{"model", full}, {"created_at", now_str()}, {"done", true}, {"done_reason", reason}};
  if (p.chat) {
    j["message"] = {{"role", "assistant"}, {"content", ""}};
  } else {
    j["response"] = "";
  }
  send_json(res, 200, j);
}

// Shared tail of generate and chat: run the job, stream NDJSON or answer one object.
void run_generation(ApiContext& ctx, Acquired a, std::shared_ptr<Job> job, bool stream, bool chat, bool tools,
                    Clock::time_point t0, HttpResponse& res) {
  ModelRunner& r = **a.lease;
  const std::string name = r.info().name;
  submit_or_503(r, job);
  const double load_s = a.load_s;
  const Tokenizer* tok = &r.tokenizer();
  // With tools the reply is parsed for tool calls at the end, so it is sent as one piece.
  auto all_text = std::make_shared<std::string>();
  auto lp = std::make_shared<LogprobCursor>();
  // The log-probabilities of the tokens of the text sent so far (all of them at the end).
  auto logprobs = [=](bool all) {
    const std::vector<LogprobEntry> e = lp->take(*job, *tok, all_text->size(), all);
    return logprobs_json(e, 0, e.size(), job->opt.top_logprobs > 0, *tok);
  };
  auto frame = [name, chat](const std::string& text, bool done) {
    json j = {{"model", name}, {"created_at", now_str()}};
    if (chat) {
      j["message"] = {{"role", "assistant"}, {"content", text}};
    } else {
      j["response"] = text;
    }
    j["done"] = done;
    return j;
  };
  auto finalize = [=](bool streaming) {
    if (!job->error.empty()) return json{{"error", job->error}};
    json j = frame(streaming && !tools ? "" : *all_text, true);
    if (chat && tools) {
      json calls = parse_tool_calls(*all_text);
      if (!calls.empty()) {
        json tc = json::array();
        for (const auto& c : calls) tc.push_back({{"function", c}});
        j["message"]["tool_calls"] = tc;
        j["message"]["content"] = "";
      }
    }
    if (job->opt.logprobs) j["logprobs"] = logprobs(true);
    if (!chat) {
      std::vector<int32_t> context = job->prompt;
      context.insert(context.end(), job->output.begin(), job->output.end());
      j["context"] = context;
    }
    add_stats(j, *job, load_s, t0);
    return j;
  };
  StreamCallbacks cb;
  cb.chunk = [=](const std::string& text) -> std::string {
    *all_text += text;
    if (!stream || tools) return "";
    json j = frame(text, false);
    if (job->opt.logprobs) j["logprobs"] = logprobs(false);
    return j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
  };
  cb.final_chunk = [=]() -> std::string {
    return finalize(stream).dump(-1, ' ', false, json::error_handler_t::replace) + (stream ? "\n" : "");
  };
  stream_job(res, stream ? "application/x-ndjson" : "application/json; charset=utf-8", job, a.lease, cb,
             ctx.metrics);
}

// The model, checked for existence (404) before images are refused naming it (400).
std::string model_without_images(ApiContext& ctx, const std::string& model, bool has_images) {
  if (has_images) refuse_images(ctx.store.get(model).name);
  return model;
}

void generate(ApiContext& ctx, const HttpRequest& req, HttpResponse& res) {
  const auto t0 = Clock::now();
  const OllamaGenerateParams p = parse_ollama_generate(parse_body(req.body));
  ++ctx.metrics.requests_total;
  model_without_images(ctx, p.model, p.has_images);
  if (p.load_only) return load_only(ctx, p, res);
  Acquired a = acquire_model(ctx, p.model);
  a.lease->keep_alive = p.keep_alive;
  ModelRunner& r = **a.lease;
  auto job = std::make_shared<Job>();
  job->opt = p.opt;
  std::vector<int32_t> ids;
  for (int64_t t : p.context) {
    if (t >= r.tokenizer().n_vocab()) throw RequestError(400, "'context' holds an invalid token id");
    ids.push_back(int32_t(t));
  }
  if (p.raw || !r.has_chat_template()) {
    std::string text = p.raw || p.system.empty() ? p.prompt : p.system + "\n\n" + p.prompt;
    std::vector<int32_t> t = r.tokenizer().encode(text, ids.empty() && r.tokenizer().wants_bos(), p.raw);
    ids.insert(ids.end(), t.begin(), t.end());
  } else {
    json msgs = json::array();
    if (!p.system.empty()) msgs.push_back({{"role", "system"}, {"content", p.system}});
    msgs.push_back({{"role", "user"}, {"content", p.prompt}});
    std::vector<int32_t> t = r.render_chat(msgs, json());
    if (!ids.empty() && !t.empty() && t[0] == r.tokenizer().bos()) t.erase(t.begin());
    ids.insert(ids.end(), t.begin(), t.end());
  }
  if (ids.empty()) ids = r.tokenize("", false);
  job->prompt = std::move(ids);
  job->filter =
      make_format_filter(p.format, r.tokenizer(), generation_budget(p.opt, r.n_ctx(), job->prompt.size()));
  run_generation(ctx, std::move(a), job, p.stream, false, false, t0, res);
}

void chat(ApiContext& ctx, const HttpRequest& req, HttpResponse& res) {
  const auto t0 = Clock::now();
  const OllamaGenerateParams p = parse_ollama_chat(parse_body(req.body));
  ++ctx.metrics.requests_total;
  model_without_images(ctx, p.model, p.has_images);
  if (p.load_only) return load_only(ctx, p, res);
  Acquired a = acquire_model(ctx, p.model);
  a.lease->keep_alive = p.keep_alive;
  ModelRunner& r = **a.lease;
  auto job = std::make_shared<Job>();
  job->opt = p.opt;
  job->prompt = r.render_chat(p.messages, p.tools);
  job->filter =
      make_format_filter(p.format, r.tokenizer(), generation_budget(p.opt, r.n_ctx(), job->prompt.size()));
  run_generation(ctx, std::move(a), job, p.stream, true, p.tools.is_array(), t0, res);
}

void embed(ApiContext& ctx, const HttpRequest& req, HttpResponse& res, bool legacy) {
  const auto t0 = Clock::now();
  const EmbedParams p = parse_ollama_embed(parse_body(req.body), legacy);
  ++ctx.metrics.requests_total;
  Acquired a = acquire_model(ctx, p.model);
  a.lease->keep_alive = p.keep_alive;
  ModelRunner& r = **a.lease;
  auto job = std::make_shared<Job>();
  job->kind = Job::kEmbed;
  job->opt = p.opt;
  job->opt.truncate = p.truncate;
  for (const auto& s : p.texts) job->inputs.push_back(r.tokenize(s, false));
  if (!job->inputs.empty()) {
    submit_or_503(r, job);
    job->wait_all();
    if (!job->error.empty()) {
      throw RequestError(job->error.find("exceeds the context") != std::string::npos ? 400 : 500, job->error);
    }
  }
  if (legacy) {
    send_json(res, 200,
              json{{"embedding", job->embeddings.empty() ? std::vector<float>() : job->embeddings[0]}});
    return;
  }
  send_json(res, 200,
            json{{"model", r.info().name},
                 {"embeddings", job->embeddings},
                 {"total_duration", to_ns(seconds_since(t0))},
                 {"load_duration", to_ns(a.load_s)},
                 {"prompt_eval_count", job->prompt_tokens}});
}

void show(ApiContext& ctx, const HttpRequest& req, HttpResponse& res) {
  const json body = parse_body(req.body);
  const ModelInfo m = ctx.store.get(model_field(body));
  auto f = GgufFile::open(m.path);
  json info = json::object();
  for (const auto& [k, v] : f->metadata()) {
    if (k == "tokenizer.chat_template") continue;
    info[k] = gguf_value_json(v);
  }
  info["general.parameter_count"] = m.n_params;
  json caps = json::array({"completion"});
  if (m.chat_template.find("tools") != std::string::npos) caps.push_back("tools");
  caps.push_back("embedding");
  send_json(res, 200,
            json{{"license", m.license},
                 {"modelfile", fmt::format("# Modelfile generated by qleap\nFROM {}\n", m.path)},
                 {"parameters", ""},
                 {"template", m.chat_template},
                 {"details", details_json(m)},
                 {"model_info", info},
                 {"capabilities", caps},
                 {"modified_at", rfc3339(std::chrono::system_clock::from_time_t(m.modified_unix))}});
}

void pull(ApiContext& ctx, const HttpRequest& req, HttpResponse& res) {
  const json body = parse_body(req.body);
  const std::string ref = model_field(body);
  const bool stream = get_bool(body, "stream", true);
  // A path on the server's disk: whoever can reach the API could import (and so read back through
  // the API) any file the server can read. Only `qleap pull` or an explicit flag allow it.
  if (parse_pull_ref(ref).kind == PullRef::kLocalFile && !ctx.opt.allow_local_pull) {
    throw RequestError(403,
                       "pulling a local file path over the API is disabled: use `qleap pull PATH`, "
                       "or start the server with --allow-local-pull");
  }
  if (!stream) {
    ctx.store.pull(ref, nullptr);
    send_json(res, 200, json{{"status", "success"}});
    return;
  }
  auto store = &ctx.store;
  res.set_chunked_content_provider("application/x-ndjson", [store, ref](size_t, DataSink& sink) {
    auto line = [&sink](const json& j) {
      const std::string s = j.dump() + "\n";
      return sink.write(s.data(), s.size());
    };
    try {
      store->pull(ref, [&](const PullProgress& p) {
        json j = {{"status", p.status}};
        if (p.total) j["total"] = p.total, j["completed"] = p.completed;
        if (!p.digest.empty()) j["digest"] = p.digest;
        return line(j);
      });
      line(json{{"status", "success"}});
    } catch (const std::exception& e) {
      line(json{{"error", e.what()}});
    }
    sink.done();
    return true;
  });
}

}  // namespace

void register_ollama_routes(Router& srv, ApiContext& ctx) {
  auto route = [&ctx](void (*fn)(ApiContext&, const HttpRequest&, HttpResponse&)) {
    return [&ctx, fn](const HttpRequest& req, HttpResponse& res) {
      guarded(res, false, ctx.metrics, [&] { fn(ctx, req, res); });
    };
  };
  srv.get("/api/version", [](const HttpRequest&, HttpResponse& res) {
    send_json(res, 200, json{{"version", kOllamaApiVersion}});
  });
  srv.get("/api/tags", [&ctx](const HttpRequest&, HttpResponse& res) {
    guarded(res, false, ctx.metrics, [&] {
      json models = json::array();
      for (const auto& m : ctx.store.list()) {
        models.push_back({{"name", m.name},
                          {"model", m.name},
                          {"modified_at", rfc3339(std::chrono::system_clock::from_time_t(m.modified_unix))},
                          {"size", m.size},
                          {"digest", m.digest},
                          {"details", details_json(m)}});
      }
      send_json(res, 200, json{{"models", models}});
    });
  });
  srv.get("/api/ps", [&ctx](const HttpRequest&, HttpResponse& res) {
    guarded(res, false, ctx.metrics, [&] {
      json models = json::array();
      for (const auto& r : ctx.sched.loaded()) {
        const ModelInfo& m = r->info();
        const RunnerStatus s = r->status();
        models.push_back({{"name", m.name},
                          {"model", m.name},
                          {"size", Scheduler::runner_bytes(*r)},
                          {"digest", m.digest},
                          {"details", details_json(m)},
                          {"expires_at", rfc3339(r->expires_at)},
                          {"size_vram", 0},
                          {"context_length", s.n_ctx},
                          {"kv_type", s.kv_type},
                          {"parallel", s.parallel}});
      }
      send_json(res, 200, json{{"models", models}});
    });
  });
  srv.post("/api/generate", route(generate));
  srv.post("/api/chat", route(chat));
  srv.post("/api/embed",
           route([](ApiContext& c, const HttpRequest& q, HttpResponse& s) { embed(c, q, s, false); }));
  srv.post("/api/embeddings",
           route([](ApiContext& c, const HttpRequest& q, HttpResponse& s) { embed(c, q, s, true); }));
  srv.post("/api/show", route(show));
  srv.post("/api/pull", route(pull));
  srv.post("/api/copy", route([](ApiContext& c, const HttpRequest& q, HttpResponse& s) {
             const json body = parse_body(q.body);
             const std::string src = get_string(body, "source"), dst = get_string(body, "destination");
             if (src.empty() || dst.empty()) throw RequestError(400, "source and destination are required");
             c.store.copy(src, dst);
             s.status = 200;
           }));
  srv.del("/api/delete", route([](ApiContext& c, const HttpRequest& q, HttpResponse& s) {
            const json body = parse_body(q.body);
            const std::string name = model_field(body);
            c.store.get(name);  // 404 first
            c.sched.unload(name);
            c.store.remove(name);
            s.status = 200;
          }));
}

}  // namespace qleap::server
