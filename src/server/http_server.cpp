#include "server/http_server.h"

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <httplib.h>

#include <algorithm>
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

void send_json(httplib::Response& res, int status, const json& j) {
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

json error_body(bool openai, int status, const std::string& msg) {
  if (!openai) return {{"error", msg}};
  const char* type = status == 404   ? "not_found_error"
                     : status == 503 ? "server_overloaded"
                     : status < 500  ? "invalid_request_error"
                                     : "api_error";
  return {{"error", {{"message", msg}, {"type", type}, {"param", nullptr}, {"code", nullptr}}}};
}

}  // namespace

void guarded(httplib::Response& res, bool openai, Metrics& m, const std::function<void()>& f) {
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

void stream_job(httplib::Response& res, const char* content_type, std::shared_ptr<Job> job,
                std::shared_ptr<Lease> lease, StreamCallbacks cb, Metrics& metrics) {
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
      [st](size_t, httplib::DataSink& sink) {
        if (st->finished) {
          sink.done();
          return true;
        }
        std::vector<std::string> pieces;
        const bool done = st->job->wait_take(pieces, std::chrono::milliseconds(100));
        std::string out;
        for (const auto& p : pieces) out += st->cb.chunk(p);
        if (done) out += st->cb.final_chunk();
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

HttpServer::HttpServer(const ServerOptions& opt)
    : opt_(opt), store_(opt.models_dir.empty() ? default_models_dir() : opt.models_dir) {
  sched_ = std::make_unique<Scheduler>(store_, opt_.sched, metrics_);
  http_ = std::make_unique<httplib::Server>();
  ctx_ = std::make_unique<ApiContext>(ApiContext{store_, *sched_, metrics_, opt_});
  // A streaming response holds its connection thread, so every slot and every queue place needs
  // one: beyond them requests would wait inside the HTTP library, unbounded and unseen.
  const SchedulerOptions& so = opt_.sched;
  const int n_threads =
      opt_.http_threads > 0
          ? opt_.http_threads
          : std::min(2048, so.runner.parallel * std::max(1, so.max_loaded) + so.runner.max_queue + 16);
  http_->new_task_queue = [n_threads] { return new httplib::ThreadPool(size_t(n_threads)); };
  http_->set_payload_max_length(opt_.max_body);
  http_->set_read_timeout(60);
  http_->set_write_timeout(60);
  http_->set_keep_alive_max_count(1000);
  http_->set_error_handler([](const httplib::Request&, httplib::Response& res) {
    if (!res.body.empty()) return;
    const std::string msg = res.status == 413   ? "request body too large"
                            : res.status == 404 ? "404 page not found"
                                                : fmt::format("HTTP error {}", res.status);
    res.set_content(json{{"error", msg}}.dump(), "application/json; charset=utf-8");
  });
  http_->set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string msg = "internal error";
    try {
      if (ep) std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      msg = e.what();
    } catch (...) {
    }
    send_json(res, 500, json{{"error", msg}});
  });
  if (opt_.verbose) {
    http_->set_logger([](const httplib::Request& req, const httplib::Response& res) {
      fmt::print(stderr, "[http] {} {} -> {}\n", req.method, req.path, res.status);
    });
  }
  register_monitor_routes(*http_, *ctx_);
  register_ollama_routes(*http_, *ctx_);
  register_openai_routes(*http_, *ctx_);
  register_search_routes(*http_, *ctx_);
}

HttpServer::~HttpServer() {
  stop();
  http_.reset();  // joins the connection threads before the scheduler goes
  sched_.reset();
}

void HttpServer::run(const std::function<void(int)>& on_listening) {
  int port = opt_.port;
  if (port == 0) {
    port = http_->bind_to_any_port(opt_.host);
    if (port <= 0) throw IoError(fmt::format("cannot bind {}: address in use or not available", opt_.host));
  } else if (!http_->bind_to_port(opt_.host, port)) {
    throw IoError(fmt::format("cannot bind {}:{}: address in use or not available", opt_.host, port));
  }
  if (on_listening) on_listening(port);
  http_->listen_after_bind();
}

void HttpServer::stop() {
  if (http_) http_->stop();
}

// ---- monitoring, root, web UI ----

void register_monitor_routes(httplib::Server& srv, ApiContext& ctx) {
  auto root = [](const httplib::Request& req, httplib::Response& res) {
    const bool browser = req.get_header_value("Accept").find("text/html") != std::string::npos;
    if (browser) {
      if (const webui::Asset* a = webui::find_asset("/")) {
        res.set_content(std::string(a->body), std::string(a->content_type));
        return;
      }
    }
    res.set_content("qleap is running", "text/plain; charset=utf-8");
  };
  srv.Get("/", root);
  srv.Get(R"(/ui(/.*)?)", [](const httplib::Request& req, httplib::Response& res) {
    const webui::Asset* a = webui::find_asset(req.path);
    if (!a) {
      send_json(res, 404, json{{"error", "no web UI in this build"}});
      return;
    }
    res.set_content(std::string(a->body), std::string(a->content_type));
  });
  srv.Get("/health", [&ctx](const httplib::Request&, httplib::Response& res) {
    json models = json::array();
    for (const auto& r : ctx.sched.loaded()) models.push_back(r->info().name);
    send_json(res, 200, json{{"status", "ok"}, {"loaded_models", models}});
  });
  srv.Get("/api/qleap/status", [&ctx](const httplib::Request&, httplib::Response& res) {
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
  srv.Get("/metrics", [&ctx](const httplib::Request&, httplib::Response& res) {
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
    metric("qleap_process_resident_bytes", "gauge", "Resident memory of the server process.",
           one("qleap_process_resident_bytes", double(process_rss_bytes())));
    if (!experts.empty())
      metric("qleap_expert_cache_hit_rate", "gauge",
             "Share of routed experts computed on the expert tier (serve --expert-cache).", experts);
    res.set_content(out, "text/plain; version=0.0.4; charset=utf-8");
  });
}

}  // namespace qleap::server
