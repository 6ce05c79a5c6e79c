#include "server/http_server.h"

#include <fmt/chrono.h>
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <ctime>

#include "server/hf_search.h"
#include "server/live_status.h"
#include "server/runner.h"
#include "server/webui.h"

namespace qleap::server {

using nlohmann::json;

std::string rfc3339(std::chrono::system_clock::time_point t) {
  if (t == std::chrono::system_clock::time_point::max()) return "2318-01-01T00:00:00Z";  // "forever"
  const auto secs = std::chrono::time_point_cast<std::chrono::seconds>(t);
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(t - secs).count();
  const std::time_t tt = std::chrono::system_clock::to_time_t(secs);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ns);
}

void send_json(HttpResponse& res, int status, const json& j) {
  res.status = status;
  res.set_content(j.dump(-1, ' ', false, json::error_handler_t::replace), "application/json; charset=utf-8");
}

namespace {

// Mean expert-tier hit rate over the loaded models that run ExpertFlow; -1 when none does.
double expert_hit_rate(const Scheduler& sched) {
  double sum = 0;
  int n = 0;
  for (const auto& r : sched.loaded()) {
    const double h = r->status().expert_hit_rate;
    if (h >= 0) sum += h, ++n;
  }
  return n > 0 ? sum / n : -1.0;
}

// The status a job's error gets when it fails before its first output.
int job_error_status(const std::string& error) {
  if (error.find("context") != std::string::npos || error.find("prompt") != std::string::npos) return 400;
  if (error.find("unloaded") != std::string::npos) return 503;
  return 500;
}

}  // namespace

json error_body(bool openai, int status, const std::string& msg) {
  if (!openai) return {{"error", msg}};
  const char* type = status == 404   ? "not_found_error"
                     : status == 503 ? "server_overloaded"
                     : status == 401 ? "authentication_error"
                     : status == 403 ? "permission_error"
                     : status < 500  ? "invalid_request_error"
                                     : "api_error";
  return {{"error", {{"message", msg}, {"type", type}, {"param", nullptr}, {"code", nullptr}}}};
}

void guarded(HttpResponse& res, bool openai, Metrics& m, const std::function<void()>& f) {
  int status = 0;
  std::string msg;
  try {
    f();
    return;
  } catch (const RequestError& e) {
    status = e.status, msg = e.what();
  } catch (const ModelNotFound& e) {
    status = 404, msg = e.what();
  } catch (const InvalidArgument& e) {
    status = 400, msg = e.what();
  } catch (const nlohmann::json::exception& e) {
    status = 400, msg = fmt::format("invalid request: {}", e.what());
  } catch (const std::exception& e) {
    status = 500, msg = e.what();
  }
  if (status == 503) {
    ++m.requests_rejected_total;
  } else {
    ++m.requests_failed_total;
  }
  send_json(res, status, error_body(openai, status, msg));
}

void stream_job(HttpResponse& res, const char* content_type, std::shared_ptr<Job> job,
                std::shared_ptr<Lease> lease, StreamCallbacks cb, Metrics& metrics) {
  {
    // Most refusals (a prompt that cannot fit, a failed prefill) happen when the job starts; the
    // wait is bounded so that queued requests still get their headers and heartbeats.
    std::unique_lock<std::mutex> lk(job->mu);
    job->cv.wait_for(lk, std::chrono::seconds(2), [&] { return job->done || !job->pieces.empty(); });
    if (job->done && !job->error.empty() && job->pieces.empty()) {
      const std::string err = job->error;
      lk.unlock();
      throw RequestError(job_error_status(err), err);
    }
  }
  struct State {
    std::shared_ptr<Job> job;
    std::shared_ptr<Lease> lease;
    StreamCallbacks cb;
    Metrics* metrics;
    bool finished = false;
    std::chrono::steady_clock::time_point last_write = std::chrono::steady_clock::now();
  };
  auto st = std::make_shared<State>(State{std::move(job), std::move(lease), std::move(cb), &metrics});
  res.status = 200;
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      content_type,
      [st](size_t, DataSink& sink) {
        if (st->finished) {
          sink.done();
          return true;
        }
        std::vector<std::string> pieces;
        const bool done = st->job->wait_take(pieces, std::chrono::milliseconds(100));
        std::string out;
        for (const auto& p : pieces) out += st->cb.chunk(p);
        if (done) {
          out += st->cb.final_chunk();
          // The model is idle before the client sees the end, so its next request finds it so.
          st->lease.reset();
        }
        const auto now = std::chrono::steady_clock::now();
        if (out.empty() && now - st->last_write > std::chrono::seconds(1)) out = st->cb.heartbeat;
        if (!out.empty()) {
          if (!sink.write(out.data(), out.size())) return false;
          st->last_write = now;
        }
        if (done) {
          st->finished = true;
          sink.done();
        }
        return true;
      },
      [st](bool success) {
        if (!success || !st->finished) {
          bool done;
          {
            std::lock_guard<std::mutex> lk(st->job->mu);
            done = st->job->done;
          }
          if (!done) ++st->metrics->requests_cancelled_total;
          st->job->cancelled = true;
        }
        st->lease.reset();
      });
}

void Router::add(std::string method, std::string path, RouteHandler h, bool prefix) {
  routes_.push_back(Route{std::move(method), std::move(path), prefix, std::move(h)});
}

Router::Result Router::dispatch(HttpRequest& req, HttpResponse& res) const {
  const std::string method = req.method == "HEAD" ? "GET" : req.method;
  bool path_known = false;
  for (const Route& r : routes_) {
    const bool match =
        r.prefix ? req.path.size() > r.path.size() && req.path.compare(0, r.path.size(), r.path) == 0
                 : req.path == r.path;
    if (!match) continue;
    path_known = true;
    if (r.method != method) continue;
    req.matches = {req.path};
    if (r.prefix) req.matches.push_back(req.path.substr(r.path.size()));
    r.handler(req, res);
    return Result::kHandled;
  }
  return path_known ? Result::kWrongMethod : Result::kNoPath;
}

HttpServer::HttpServer(const ServerOptions& opt)
    : opt_(opt), store_(opt.models_dir.empty() ? default_models_dir() : opt.models_dir) {
  sched_ = std::make_unique<Scheduler>(store_, opt_.sched, metrics_);
  ctx_ = std::make_unique<ApiContext>(ApiContext{store_, *sched_, metrics_, opt_});
  TransportOptions to;
  to.host = opt_.host;
  to.port = opt_.port;
  to.max_body = opt_.max_body;
  to.max_connections = opt_.max_connections;
  transport_ =
      std::make_unique<HttpTransport>(to, [this](HttpRequest& req, HttpResponse& res) { handle(req, res); });
  ctx_->http = &transport_->stats();
  register_monitor_routes(router_, *ctx_);
  register_ollama_routes(router_, *ctx_);
  register_openai_routes(router_, *ctx_);
  register_search_routes(router_, *ctx_);
}

HttpServer::~HttpServer() {
  stop();
  transport_.reset();  // joins the request threads before the scheduler goes
  sched_.reset();
}

namespace {

// Access-Control-Request-Headers echoed back: a list of header names, nothing else.
std::string allowed_request_headers(const std::string& requested) {
  std::string out;
  for (char c : requested) {
    if (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == ',' || c == ' ') out += c;
  }
  return out.empty() ? "Authorization, Content-Type" : out;
}

}  // namespace

void HttpServer::handle(HttpRequest& req, HttpResponse& res) {
  const bool openai = req.path.rfind("/v1/", 0) == 0;
  auto deny = [&](int status, const std::string& msg) {
    send_json(res, status, error_body(openai, status, msg));
  };
  const AccessPolicy& pol = opt_.access;
  const std::string host = req.get_header_value("Host");
  const std::string origin = req.get_header_value("Origin");
  if (!host_allowed(pol, host)) {
    deny(403, fmt::format("host '{}' is not allowed (DNS rebinding protection): use an IP address or "
                          "localhost, or add the name to QLEAP_ALLOWED_HOSTS",
                          host));
  } else if (!origin.empty() && !origin_allowed(pol, origin, host)) {
    deny(403, fmt::format("origin '{}' is not allowed: add it to QLEAP_ORIGINS", origin));
  } else {
    if (!origin.empty()) {
      res.set_header("Access-Control-Allow-Origin", origin);
      res.set_header("Vary", "Origin");
    }
    if (req.method == "OPTIONS") {
      res.status = 204;
      res.set_header("Allow", "GET, HEAD, POST, DELETE, OPTIONS");
      if (!origin.empty()) {
        res.set_header("Access-Control-Allow-Methods", "GET, HEAD, POST, PUT, DELETE, OPTIONS");
        res.set_header("Access-Control-Allow-Headers",
                       allowed_request_headers(req.get_header_value("Access-Control-Request-Headers")));
        res.set_header("Access-Control-Max-Age", "86400");
      }
    } else if (!api_key_exempt(req.method, req.path) &&
               !api_key_ok(pol, req.get_header_value("Authorization"))) {
      res.set_header("WWW-Authenticate", "Bearer");
      deny(401, "missing or wrong API key: send \"Authorization: Bearer <key>\" (QLEAP_API_KEY)");
    } else {
      switch (router_.dispatch(req, res)) {
        case Router::Result::kHandled:
          break;
        case Router::Result::kNoPath:
          deny(404, "404 page not found");
          break;
        case Router::Result::kWrongMethod:
          deny(405, fmt::format("method {} not allowed on {}", req.method, req.path));
          break;
      }
    }
  }
  if (res.status >= 400 && res.body.empty() && !res.provider) {
    deny(res.status, res.status == 413 ? "request body too large" : fmt::format("HTTP error {}", res.status));
  }
  if (opt_.verbose)
    fmt::print(stderr, "[http] {} {} {} -> {}\n", req.remote_addr, req.method, req.path, res.status);
}

void HttpServer::run(const std::function<void(int)>& on_listening) {
  const int port = transport_->bind();
  if (on_listening) on_listening(port);
  transport_->serve();
}

void HttpServer::stop() {
  if (transport_) transport_->stop();
}

// ---- monitoring, root, web UI ----

void register_monitor_routes(Router& srv, ApiContext& ctx) {
  auto root = [](const HttpRequest& req, HttpResponse& res) {
    const bool browser = req.get_header_value("Accept").find("text/html") != std::string::npos;
    if (browser) {
      if (const webui::Asset* a = webui::find_asset("/")) {
        res.set_content(std::string(a->body), std::string(a->content_type));
        return;
      }
    }
    res.set_content("qleap is running", "text/plain; charset=utf-8");
  };
  srv.get("/", root);
  auto ui = [](const HttpRequest& req, HttpResponse& res) {
    const webui::Asset* a = webui::find_asset(req.path);
    if (!a) {
      send_json(res, 404, json{{"error", "no web UI in this build"}});
      return;
    }
    res.set_content(std::string(a->body), std::string(a->content_type));
  };
  srv.get("/ui", ui);
  srv.get("/ui/", ui, true);
  srv.get("/ui/", ui);
  srv.get("/health", [&ctx](const HttpRequest&, HttpResponse& res) {
    json models = json::array();
    for (const auto& r : ctx.sched.loaded()) models.push_back(r->info().name);
    send_json(res, 200, json{{"status", "ok"}, {"loaded_models", models}});
  });
  srv.get("/api/qleap/status", [&ctx](const HttpRequest&, HttpResponse& res) {
    json models = json::array();
    int queue = 0;
    for (const auto& r : ctx.sched.loaded()) {
      const RunnerStatus s = r->status();
      queue += s.queue_depth;
      models.push_back({{"name", s.name},
                        {"size_ram", Scheduler::runner_bytes(*r)},
                        {"size_vram", 0},
                        {"kv_type", s.kv_type},
                        {"kv_bytes_used", s.kv_bytes_used},
                        {"kv_bytes_allocated", s.kv_bytes_allocated},
                        {"kv_bytes_per_token", s.kv_bytes_per_token},
                        {"kv_compression_vs_f16", s.kv_compression_vs_f16},
                        {"parallel", s.parallel},
                        {"active_slots", s.active_slots},
                        {"queue_depth", s.queue_depth},
                        {"context_length", s.n_ctx},
                        {"expires_at", rfc3339(r->expires_at)}});
      models.back().update(live_status_fields(s));
    }
    Metrics& m = ctx.metrics;
    const double hit = expert_hit_rate(ctx.sched);
    send_json(res, 200,
              json{{"models", models},
                   {"queue_depth", queue},
                   {"requests_total", m.requests_total.load()},
                   {"tokens_generated_total", m.tokens_generated_total.load()},
                   {"tokens_prompt_total", m.tokens_prompt_total.load()},
                   {"gen_tok_per_s", m.gen_rate.rate()},
                   {"prompt_tok_per_s", m.prompt_rate.rate()},
                   {"ram_used_bytes", process_rss_bytes()},
                   {"ram_total_bytes", physical_memory_bytes()},
                   {"vram_used_bytes", 0},
                   {"expert_cache_hit_rate", hit < 0 ? json(nullptr) : json(hit)}});
  });
  srv.get("/metrics", [&ctx](const HttpRequest&, HttpResponse& res) {
    Metrics& m = ctx.metrics;
    std::string out;
    auto metric = [&out](const char* name, const char* type, const char* help, const std::string& samples) {
      out += fmt::format("# HELP {} {}\n# TYPE {} {}\n{}", name, help, name, type, samples);
    };
    auto one = [](const char* name, double v) { return fmt::format("{} {}\n", name, v); };
    metric("qleap_requests_total", "counter", "Generation and embedding requests received.",
           one("qleap_requests_total", double(m.requests_total.load())));
    metric("qleap_requests_failed_total", "counter", "Requests answered with an error (4xx/5xx, not 503).",
           one("qleap_requests_failed_total", double(m.requests_failed_total.load())));
    metric("qleap_requests_rejected_total", "counter", "Requests rejected with 503 because a queue was full.",
           one("qleap_requests_rejected_total", double(m.requests_rejected_total.load())));
    metric("qleap_requests_cancelled_total", "counter", "Requests whose client disconnected before the end.",
           one("qleap_requests_cancelled_total", double(m.requests_cancelled_total.load())));
    metric("qleap_tokens_generated_total", "counter", "Tokens generated.",
           one("qleap_tokens_generated_total", double(m.tokens_generated_total.load())));
    metric("qleap_tokens_prompt_total", "counter", "Prompt tokens evaluated (cached prefixes excluded).",
           one("qleap_tokens_prompt_total", double(m.tokens_prompt_total.load())));
    metric("qleap_generation_tokens_per_second", "gauge", "Tokens generated over the last 10 s, per second.",
           one("qleap_generation_tokens_per_second", m.gen_rate.rate()));
    metric("qleap_prompt_tokens_per_second", "gauge",
           "Prompt tokens evaluated over the last 10 s, per second.",
           one("qleap_prompt_tokens_per_second", m.prompt_rate.rate()));
    metric("qleap_model_loads_total", "counter", "Model loads.",
           one("qleap_model_loads_total", double(m.model_loads_total.load())));
    metric("qleap_model_unloads_total", "counter", "Model unloads.",
           one("qleap_model_unloads_total", double(m.model_unloads_total.load())));
    std::string queue, active, slots, kv_used, kv_alloc, mem, experts;
    for (const auto& r : ctx.sched.loaded()) {
      const RunnerStatus s = r->status();
      const std::string l = fmt::format("{{model=\"{}\"}}", s.name);
      if (s.expert_hit_rate >= 0)
        experts += fmt::format("qleap_expert_cache_hit_rate{} {}\n", l, s.expert_hit_rate);
      queue += fmt::format("qleap_queue_depth{} {}\n", l, s.queue_depth);
      active += fmt::format("qleap_active_slots{} {}\n", l, s.active_slots);
      slots += fmt::format("qleap_parallel_slots{} {}\n", l, s.parallel);
      kv_used += fmt::format("qleap_kv_cache_used_bytes{} {}\n", l, s.kv_bytes_used);
      kv_alloc += fmt::format("qleap_kv_cache_allocated_bytes{} {}\n", l, s.kv_bytes_allocated);
      mem += fmt::format("qleap_model_memory_bytes{} {}\n", l, Scheduler::runner_bytes(*r));
    }
    metric("qleap_queue_depth", "gauge", "Requests waiting for a slot.", queue);
    metric("qleap_active_slots", "gauge", "Slots generating now.", active);
    metric("qleap_parallel_slots", "gauge", "Slots per loaded model.", slots);
    metric("qleap_kv_cache_used_bytes", "gauge", "KV cache bytes holding tokens.", kv_used);
    metric("qleap_kv_cache_allocated_bytes", "gauge", "KV cache bytes allocated.", kv_alloc);
    metric("qleap_model_memory_bytes", "gauge", "Weights (mapped file) plus KV cache per loaded model.", mem);
    if (const TransportStats* h = ctx.http) {
      metric("qleap_http_connections_open", "gauge", "Open HTTP connections.",
             one("qleap_http_connections_open", double(h->connections_open.load())));
      metric("qleap_http_connections_total", "counter", "HTTP connections accepted.",
             one("qleap_http_connections_total", double(h->connections_total.load())));
      metric("qleap_http_connections_rejected_total", "counter",
             "Connections answered 503 at the connection limit.",
             one("qleap_http_connections_rejected_total", double(h->connections_rejected_total.load())));
      metric("qleap_http_connections_evicted_total", "counter",
             "Idle or slow connections closed to make room at the connection limit.",
             one("qleap_http_connections_evicted_total", double(h->connections_evicted_total.load())));
      metric("qleap_http_bad_requests_total", "counter",
             "Requests refused by the transport (malformed framing, oversized, timed out).",
             one("qleap_http_bad_requests_total", double(h->bad_requests_total.load())));
    }
    metric("qleap_process_resident_bytes", "gauge", "Resident memory of the server process.",
           one("qleap_process_resident_bytes", double(process_rss_bytes())));
    if (!experts.empty())
      metric("qleap_expert_cache_hit_rate", "gauge",
             "Share of routed experts computed on the expert tier (serve --expert-cache).", experts);
    res.set_content(out, "text/plain; version=0.0.4; charset=utf-8");
  });
}

}  // namespace qleap::server
