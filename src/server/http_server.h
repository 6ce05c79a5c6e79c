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

#include "server/metrics.h"
#include "server/model_store.h"
#include "server/scheduler.h"

namespace httplib {
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace qleap::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 11435;
  std::string models_dir;      // "" -> default_models_dir()
  size_t max_body = 8u << 20;  // bytes; larger bodies get 413
  int http_threads = 0;        // 0: enough for parallel * loaded models + queue headroom
  SchedulerOptions sched;
  bool verbose = false;
};

// What every route handler needs.
struct ApiContext {
  ModelStore& store;
  Scheduler& sched;
  Metrics& metrics;
  const ServerOptions& opt;
};

class HttpServer {
 public:
  explicit HttpServer(const ServerOptions& opt);
  ~HttpServer();
  // Binds and serves until stop(); throws IoError when the address cannot be bound.
  void run(const std::function<void(int port)>& on_listening = {});
  void stop();

 private:
  ServerOptions opt_;
  Metrics metrics_;
  ModelStore store_;
  std::unique_ptr<Scheduler> sched_;
  std::unique_ptr<httplib::Server> http_;
  std::unique_ptr<ApiContext> ctx_;
};

// ---- shared by the route files ----
void register_ollama_routes(httplib::Server& srv, ApiContext& ctx);
void register_openai_routes(httplib::Server& srv, ApiContext& ctx);
void register_monitor_routes(httplib::Server& srv, ApiContext& ctx);

// RFC 3339 with nanoseconds, local offset as Ollama writes it ("2024-06-01T12:00:00.123456789Z").
std::string rfc3339(std::chrono::system_clock::time_point t);
void send_json(httplib::Response& res, int status, const nlohmann::json& j);

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
void stream_job(httplib::Response& res, const char* content_type, std::shared_ptr<Job> job,
                std::shared_ptr<Lease> lease, StreamCallbacks cb, Metrics& metrics);

// Runs f, turning exceptions into error responses: RequestError -> its status, ModelNotFound ->
// 404, InvalidArgument -> 400, anything else -> 500. openai: OpenAI error objects instead of
// Ollama's {"error": "..."}.
void guarded(httplib::Response& res, bool openai, Metrics& m, const std::function<void()>& f);

}  // namespace qleap::server
