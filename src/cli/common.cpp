#include "cli/common.h"

#include <fmt/format.h>
#include <sys/resource.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <vector>

#include "core/error.h"

namespace qleap::cli {

namespace fs = std::filesystem;

std::string models_dir() {
  if (const char* env = std::getenv("QLEAP_MODELS"); env && *env) return env;
  const char* home = std::getenv("HOME");
  return std::string(home ? home : ".") + "/.qleap/models";
}

std::string resolve_model(const std::string& arg) {
  const std::string name = arg.empty() ? kDefaultModel : arg;
  std::error_code ec;
  if (fs::is_regular_file(name, ec)) return name;
  const fs::path dir = models_dir();
  std::vector<std::string> all, hits;
  if (fs::is_directory(dir, ec)) {
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      if (e.path().extension() != ".gguf") continue;
      const std::string fn = e.path().filename().string();
      all.push_back(fn);
      const std::string stem = e.path().stem().string();
      if (fn == name || stem == name) return e.path().string();
      std::string lower_fn = fn, lower_name = name;
      std::transform(lower_fn.begin(), lower_fn.end(), lower_fn.begin(), ::tolower);
      std::transform(lower_name.begin(), lower_name.end(), lower_name.begin(), ::tolower);
      if (lower_fn.rfind(lower_name, 0) == 0) hits.push_back(e.path().string());
    }
  }
  if (hits.size() == 1) return hits[0];
  std::string msg = hits.empty() ? fmt::format("model '{}' not found: not a file, and not in {}", name, dir.string())
                                 : fmt::format("model name '{}' is ambiguous in {}", name, dir.string());
  if (!all.empty()) {
    std::sort(all.begin(), all.end());
    msg += "\navailable models:";
    for (const auto& a : all) msg += "\n  " + a;
  } else {
    msg += "\n(the store is empty: run scripts/fetch_default_model.sh, or pass a path to a .gguf file)";
  }
  throw InvalidArgument(msg);
}

void add_common_options(CLI::App& cmd, CommonOptions& o, bool model_positional) {
  if (model_positional) {
    cmd.add_option("model", o.model, "GGUF file, or model name in the store (default: " + std::string(kDefaultModel) + ")");
  }
  cmd.add_option("-t,--threads", o.threads, "CPU threads (default: one per physical core)")->check(CLI::Range(0, 1024));
  cmd.add_option("-c,--ctx", o.ctx, "context length in tokens (default: min(model's, 4096))")->check(CLI::Range(0, 1 << 20));
  cmd.add_option("--kv", o.kv, "KV cache type: f32, f16, q8_0, q4_0; TurboQuant tq2, tq2.5, tq3, tq3.5, tq4 (bits per coordinate "
                 "for K and V), or kXvY for X-bit keys and Y-bit values (e.g. k4v3, k4v2, k3v2)")->capture_default_str();
  cmd.add_option("-b,--batch", o.batch, "prompt tokens per forward pass")->check(CLI::Range(1, 8192))->capture_default_str();
}

void add_sampling_options(CLI::App& cmd, SamplerParams& p) {
  cmd.add_option("--temp,--temperature", p.temperature, "sampling temperature; 0 = greedy")->capture_default_str();
  cmd.add_option("--top-k", p.top_k, "keep the k most likely tokens; 0 = off")->capture_default_str();
  cmd.add_option("--top-p", p.top_p, "nucleus sampling mass; 1 = off")->capture_default_str();
  cmd.add_option("--min-p", p.min_p, "drop tokens below min-p x the top probability; 0 = off")->capture_default_str();
  cmd.add_option("--repeat-penalty", p.repeat_penalty, "penalty for repeated tokens; 1 = off")->capture_default_str();
  cmd.add_option("--repeat-last-n", p.repeat_last_n, "window for the repeat penalty")->capture_default_str();
  cmd.add_option("--presence-penalty", p.presence_penalty, "OpenAI-style presence penalty")->capture_default_str();
  cmd.add_option("--frequency-penalty", p.frequency_penalty, "OpenAI-style frequency penalty")->capture_default_str();
  cmd.add_option("--seed", p.seed, "RNG seed (default: random)");
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  return u == 0 ? fmt::format("{:.0f} {}", b, units[u]) : fmt::format("{:.2f} {}", b, units[u]);
}

size_t peak_rss_bytes() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return size_t(ru.ru_maxrss) * 1024;
}

}  // namespace qleap::cli
