// `qleap serve`: the Ollama- and OpenAI-compatible HTTP server (docs/api.md).
#include <fmt/format.h>
#include <pthread.h>
#include <signal.h>

#include <cstdlib>
#include <thread>

#include "cli/common.h"
#include "cli/expert_options.h"
#include "core/error.h"
#include "server/http_server.h"

namespace qleap::cli {
namespace {

struct ServeOptions {
  CommonOptions common;
  std::string host;
  int port = -1;
  std::string models;
  int parallel = 4;
  int max_queue = 128;
  int max_loaded = 3;
  double mem_budget_gib = 0;
  std::string keep_alive = "5m";
  size_t max_body_mib = 8;
  int max_connections = 1024;
  bool allow_local_pull = false;
  bool verbose = false;
  ExpertFlowCliOptions flow;
};

void serve_command(const ServeOptions& o) {
  server::ServerOptions so;
  serve_address(so.host, so.port);
  if (!o.host.empty()) parse_host(o.host, so.host, so.port);
  if (o.port >= 0) so.port = o.port;
  so.models_dir = o.models.empty() ? models_dir() : o.models;
  so.max_body = o.max_body_mib << 20;
  so.max_connections = o.max_connections;
  so.allow_local_pull = o.allow_local_pull;
  so.access = server::make_access_policy(so.host, std::getenv("QLEAP_ORIGINS"),
                                         std::getenv("QLEAP_ALLOWED_HOSTS"), std::getenv("QLEAP_API_KEY"));
  if (!server::is_loopback_host(so.host) && so.access.api_key.empty()) {
    fmt::print(stderr,
               "[qleap serve] warning: listening on {} beyond this machine without an API key; anyone who "
               "can reach it can use and change the model store (set QLEAP_API_KEY)\n",
               so.host);
  }
  so.verbose = o.verbose;
  so.sched.max_loaded = o.max_loaded;
  so.sched.mem_budget = uint64_t(o.mem_budget_gib * 1073741824.0);
  const auto ka = server::parse_keep_alive(nlohmann::json(o.keep_alive));
  so.sched.default_keep_alive = ka.value_or(300);
  so.sched.runner.n_ctx = o.common.ctx;
  so.sched.runner.n_threads = o.common.threads;
  so.sched.runner.kv_type = o.common.kv;
  so.sched.runner.n_batch = o.common.batch;
  so.sched.runner.parallel = o.parallel;
  so.sched.runner.max_queue = o.max_queue;
  // Per model at load time: flags the user gave win, the planner (or a `qleap tune` result) fills the
  // rest, with the KV cache sized for all parallel slots.
  so.sched.runner.configure = [common = o.common, quiet = !o.verbose](const std::string& path,
                                                                      server::RunnerOptions& ro) {
    const SessionOptions s = auto_session_options(common, path, quiet, nullptr, ro.parallel);
    ro.n_ctx = s.n_ctx;
    ro.n_threads = s.n_threads;
    ro.kv_type = s.kv_type;
    ro.n_batch = s.n_batch;
    ro.gpu_layers = s.gpu_layers;  // the same placement `qleap run` makes
    ro.kv_calibration_dir = s.kv_calibration_dir;
  };

  // ExpertFlow for MoE models (dense models ignore the flags: one server serves both). The profile,
  // if any, lives as long as the flow.
  check_expert_flow_options(o.flow);
  if (!o.flow.cache.empty()) {
    so.sched.runner.expert_flow = [flow = o.flow, quiet = !o.verbose](
                                      const Model& model, int max_rows) -> std::shared_ptr<ExpertFlow> {
      if (model.hparams().n_expert == 0) return nullptr;
      auto profile = std::make_shared<std::unique_ptr<ExpertProfile>>();
      std::unique_ptr<ExpertFlow> f = make_cli_expert_flow(flow, model, max_rows, quiet, *profile);
      if (!f) return nullptr;
      return std::shared_ptr<ExpertFlow>(f.release(), [profile](ExpertFlow* p) { delete p; });
    };
  }

  // SIGINT / SIGTERM stop the server from a dedicated thread (no work in a signal handler).
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);

  server::HttpServer srv(so);
  std::thread sig([&srv, set] {
    int s = 0;
    sigwait(&set, &s);
    srv.stop();
  });
  sig.detach();
  srv.run([&](int port) {
    fmt::print(stderr, "[qleap serve] listening on http://{}:{} (models: {}; {} slots per model, KV {})\n",
               so.host, port, so.models_dir, o.parallel,
               o.common.kv_opt->count() ? o.common.kv : "planned per model");
    fmt::print("listening on {}:{}\n", so.host, port);
    std::fflush(stdout);
  });
  fmt::print(stderr, "[qleap serve] stopped\n");
}

}  // namespace

void register_serve(CLI::App& app) {
  auto opt = std::make_shared<ServeOptions>();
  auto* cmd = app.add_subcommand("serve", "Ollama- and OpenAI-compatible HTTP server (see docs/api.md)");
  add_common_options(*cmd, opt->common, false);
  add_expert_flow_options(*cmd, opt->flow);
  cmd->add_option("--host", opt->host,
                  "address[:port] to listen on (default 127.0.0.1:11435; env QLEAP_HOST)");
  cmd->add_option("-p,--port", opt->port, "port (0: any free port, printed on stdout)")
      ->check(CLI::Range(0, 65535));
  cmd->add_option("--models", opt->models,
                  "model store directory (default $QLEAP_MODELS or ~/.qleap/models)");
  cmd->add_option("--parallel", opt->parallel, "parallel slots per model (continuous batching)")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  cmd->add_option("--max-queue", opt->max_queue, "queued requests per model before answering 503")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--max-loaded", opt->max_loaded, "models kept loaded at once (LRU unload)")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  cmd->add_option("--mem-budget", opt->mem_budget_gib,
                  "GiB for loaded models (weights + KV; default 3/4 of RAM)");
  cmd->add_option("--keep-alive", opt->keep_alive, "default keep_alive after the last request (-1: forever)")
      ->capture_default_str();
  cmd->add_option("--max-body", opt->max_body_mib, "largest request body in MiB (larger: 413)")
      ->capture_default_str();
  cmd->add_option("--max-connections", opt->max_connections,
                  "open HTTP connections at most (idle ones are closed first, then 503)")
      ->check(CLI::Range(16, 1 << 20))
      ->capture_default_str();
  cmd->add_flag("--allow-local-pull", opt->allow_local_pull,
                "let /api/pull import a file path on this machine (off: only `qleap pull PATH` can)");
  cmd->add_flag("-v,--verbose", opt->verbose, "log every request on stderr");
  cmd->callback([opt] { serve_command(*opt); });
}

}  // namespace qleap::cli
