// `qleap serve`: an HTTP server with the Ollama API (/api/...), the OpenAI API (/v1/...),
// monitoring (/health, /metrics, /api/qleap/status) and the web UI (/ and /ui/...).
// See docs/api.md for every endpoint.
#pragma once
#include <atomic>
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "server/http_policy.h"
#include "server/http_transport.h"
#include "server/http_types.h"
#include "server/metrics.h"
#include "server/model_store.h"
#include "server/scheduler.h"

namespace qleap::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 11435;
  std::string models_dir;         // "" -> default_models_dir()
  size_t max_body = 8u << 20;     // bytes; larger bodies get 413
  int max_connections = 1024;     // open connections (see http_transport.h)
  AccessPolicy access;            // Host / Origin / API key checks (http_policy.h)
  bool allow_local_pull = false;  // /api/pull of a path on the server's disk
  SchedulerOptions sched;
  bool verbose = false;
};

// What every route handler needs.
struct ApiContext {
  ModelStore& store;
  Scheduler& sched;
  Metrics& metrics;
  const ServerOptions& opt;
  const TransportStats* http = nullptr;
};

using RouteHandler = std::function<void(const HttpRequest& req, HttpResponse& res)>;

// Routes by method and path: exact paths, or prefixes (a path registered with prefix = true
// matches every path that starts with it; req.matches[1] is the rest).
class Router {
 public:
  void get(std::string path, RouteHandler h, bool prefix = false) {
    add("GET", std::move(path), std::move(h), prefix);
  }
  void post(std::string path, RouteHandler h) { add("POST", std::move(path), std::move(h), false); }
  void del(std::string path, RouteHandler h) { add("DELETE", std::move(path), std::move(h), false); }
  void add(std::string method, std::string path, RouteHandler h, bool prefix);
  enum class Result { kHandled, kNoPath, kWrongMethod };
  // HEAD runs the GET route (the transport sends no body).
  Result dispatch(HttpRequest& req, HttpResponse& res) const;

 private:
  struct Route {
    std::string method, path;
    bool prefix;
    RouteHandler handler;
  };
  std::vector<Route> routes_;
};

class HttpServer {
 public:
  explicit HttpServer(const ServerOptions& opt);
  ~HttpServer();
  // Binds and serves until stop(); throws IoError when the address cannot be bound.
  void run(const std::function<void(int port)>& on_listening = {});
  void stop();

 private:
  void handle(HttpRequest& req, HttpResponse& res);

  ServerOptions opt_;
  Metrics metrics_;
  ModelStore store_;
  std::unique_ptr<Scheduler> sched_;
  Router router_;
  std::unique_ptr<ApiContext> ctx_;
  std::unique_ptr<HttpTransport> transport_;
};

// ---- shared by the route files ----
void register_ollama_routes(Router& srv, ApiContext& ctx);
void register_openai_routes(Router& srv, ApiContext& ctx);
void register_monitor_routes(Router& srv, ApiContext& ctx);

// RFC 3339 with nanoseconds, local offset as Ollama writes it ("2024-06-01T12:00:00.123456789Z").
std::string rfc3339(std::chrono::system_clock::time_point t);
void send_json(HttpResponse& res, int status, const nlohmann::json& j);
// An error body: Ollama's {"error": msg}, or OpenAI's {"error": {message, type, param, code}}.
nlohmann::json error_body(bool openai, int status, const std::string& msg);

// Streams a job's text: chunk(text) for each piece, then final_chunk() when done; both return the
// bytes to write (already framed: NDJSON lines or SSE events). A client that disconnects cancels
// the job; the lease is released when the stream ends either way.
struct StreamCallbacks {
  std::function<std::string(const std::string& text)> chunk;
  std::function<std::string()> final_chunk;
  // Written after a second without output, so that a client that went away is noticed (a write
  // fails) even while a request waits in the queue: " " before JSON, ": ping\n\n" for SSE.
  std::string heartbeat = " ";
};
class Lease;
struct Job;
//
// Before the status line is sent it waits (a bounded time) for the job to start, so that a request
// the runner refuses (e.g. a prompt that does not fit the context) is answered with its 4xx status
// instead of a 200 carrying an error.
void stream_job(HttpResponse& res, const char* content_type, std::shared_ptr<Job> job,
                std::shared_ptr<Lease> lease, StreamCallbacks cb, Metrics& metrics);

// Runs f, turning exceptions into error responses: RequestError -> its status, ModelNotFound ->
// 404, InvalidArgument -> 400, anything else -> 500. openai: OpenAI error objects instead of
// Ollama's {"error": "..."}.
void guarded(HttpResponse& res, bool openai, Metrics& m, const std::function<void()>& f);

}  // namespace qleap::server
