// `qleap list`, `qleap pull`, `qleap rm` (the model store, shared with the server) and `qleap ps`
// (asks a running server).
#include <fmt/format.h>
#include <httplib.h>

#include <cstdlib>
#include <ctime>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "core/error.h"
#include "server/model_store.h"

namespace qleap::cli {
namespace {

std::string ago(int64_t unix) {
  const double s = std::difftime(std::time(nullptr), std::time_t(unix));
  if (s < 120) return "just now";
  if (s < 7200) return fmt::format("{:.0f} minutes ago", s / 60);
  if (s < 172800) return fmt::format("{:.0f} hours ago", s / 3600);
  return fmt::format("{:.0f} days ago", s / 86400);
}

void list_command() {
  server::ModelStore store(models_dir());
  const auto models = store.list();
  fmt::print("{:<48} {:<8} {:<8} {:<10} {:>10}  {}\n", "NAME", "FAMILY", "PARAMS", "QUANT", "SIZE",
             "MODIFIED");
  for (const auto& m : models) {
    fmt::print("{:<48} {:<8} {:<8} {:<10} {:>10}  {}\n", m.name, m.family, m.parameter_size,
               m.quantization_level, human_bytes(double(m.size)), ago(m.modified_unix));
  }
  if (models.empty()) fmt::print(stderr, "(no models in {})\n", store.dir());
}

void pull_command(const std::string& ref) {
  server::ModelStore store(models_dir());
  uint64_t last = 0;
  const auto info = store.pull(ref, [&](const server::PullProgress& p) {
    if (p.total && p.completed != last) {
      fmt::print(stderr, "\r{} {:.1f}% ({} / {})", p.status, 100.0 * double(p.completed) / double(p.total),
                 human_bytes(double(p.completed)), human_bytes(double(p.total)));
      last = p.completed;
    } else if (!p.total) {
      fmt::print(stderr, "{}\n", p.status);
    }
    return true;
  });
  fmt::print(stderr, "\n");
  fmt::print("pulled {} ({}, {} {})\n", info.name, human_bytes(double(info.size)), info.parameter_size,
             info.quantization_level);
}

void rm_command(const std::vector<std::string>& names) {
  server::ModelStore store(models_dir());
  for (const auto& n : names) {
    store.remove(n);
    fmt::print("deleted '{}'\n", n);
  }
}

void ps_command(const std::string& host_arg) {
  std::string host = host_arg;
  if (host.empty()) {
    const char* env = std::getenv("QLEAP_HOST");
    host = env && *env ? env : "127.0.0.1:11435";
  }
  if (host.rfind("http", 0) != 0) host = "http://" + host;
  httplib::Client cli(host);
  cli.set_connection_timeout(3);
  auto res = cli.Get("/api/ps");
  if (!res) throw IoError(fmt::format("cannot reach a qleap server at {}: is `qleap serve` running?", host));
  const auto j = nlohmann::json::parse(res->body, nullptr, false);
  if (res->status != 200 || j.is_discarded())
    throw IoError(fmt::format("{} answered HTTP {}", host, res->status));
  fmt::print("{:<40} {:>10} {:>8} {:>6} {:>9}  {}\n", "NAME", "SIZE", "CONTEXT", "KV", "PARALLEL", "UNTIL");
  for (const auto& m : j.value("models", nlohmann::json::array())) {
    fmt::print("{:<40} {:>10} {:>8} {:>6} {:>9}  {}\n", m.value("name", ""),
               human_bytes(m.value("size", 0.0)), m.value("context_length", 0), m.value("kv_type", ""),
               m.value("parallel", 0), m.value("expires_at", ""));
  }
}

}  // namespace

void register_models(CLI::App& app) {
  app.add_subcommand("list", "List the models in the store ($QLEAP_MODELS or ~/.qleap/models)")
      ->callback(list_command);
  auto ref = std::make_shared<std::string>();
  auto* pull = app.add_subcommand("pull",
                                  "Add a model to the store: a local .gguf path, hf.co/OWNER/REPO[:QUANT] "
                                  "or OWNER/REPO/FILE.gguf from Hugging Face");
  pull->add_option("model", *ref, "what to pull")->required();
  pull->callback([ref] { pull_command(*ref); });
  auto names = std::make_shared<std::vector<std::string>>();
  auto* rm = app.add_subcommand("rm", "Delete models from the store");
  rm->add_option("models", *names, "model names (name[:tag])")->required();
  rm->callback([names] { rm_command(*names); });
  auto host = std::make_shared<std::string>();
  auto* ps = app.add_subcommand("ps", "Models loaded in a running `qleap serve`");
  ps->add_option("--host", *host, "server address (default $QLEAP_HOST or 127.0.0.1:11435)");
  ps->callback([host] { ps_command(*host); });
}

}  // namespace qleap::cli
