#include "cli/common.h"

#include <fmt/format.h>
#include <sys/resource.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <vector>

#include "autoconf/hardware.h"
#include "autoconf/planner.h"
#include "autoconf/tuner.h"
#include "backend/cpu/packed_weights.h"
#include "core/error.h"
#include "gguf/gguf.h"
#include "runtime/kv_calibrate.h"

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
  std::string msg = hits.empty()
                        ? fmt::format("model '{}' not found: not a file, and not in {}", name, dir.string())
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
    cmd.add_option("model", o.model,
                   "GGUF file, or model name in the store (default: " + std::string(kDefaultModel) + ")");
  }
  cmd.add_option("-t,--threads", o.threads, "CPU threads (default: one per physical core)")
      ->check(CLI::Range(0, 1024));
  cmd.add_option("-c,--ctx", o.ctx, "context length in tokens (default: min(model's, 4096))")
      ->check(CLI::Range(0, 1 << 20));
  o.kv_opt = cmd.add_option("--kv", o.kv,
                            "KV cache type: f32, f16, q8_0, q4_0, q8_0r, q4_0r (rotated); TurboQuant tq2, "
                            "tq2.5, tq3, tq3.5, tq4 "
                            "(bits per coordinate "
                            "for K and V), or kXvY for X-bit keys and Y-bit values (e.g. k4v3, k4v2, k3v2)")
                 ->capture_default_str();
  o.batch_opt = cmd.add_option("-b,--batch", o.batch, "prompt tokens per forward pass")
                    ->check(CLI::Range(1, 8192))
                    ->capture_default_str();
  cmd.add_option(
         "--gpu-layers,--ngl", o.gpu_layers,
         "decoder layers to run on the CUDA GPU: auto (planner), all (plus the output head), or a count "
         "(the last N layers; 0 = CPU only)")
      ->capture_default_str();
  cmd.add_flag_callback(
      "--no-repack", [] { set_repack_enabled(false); },
      "keep the weights in GGUF layout (no interleaved copy for the CPU kernels; same as QLEAP_REPACK=0)");
}

void add_sampling_options(CLI::App& cmd, SamplerParams& p) {
  cmd.add_option("--temp,--temperature", p.temperature, "sampling temperature; 0 = greedy")
      ->capture_default_str();
  cmd.add_option("--top-k", p.top_k, "keep the k most likely tokens; 0 = off")->capture_default_str();
  cmd.add_option("--top-p", p.top_p, "nucleus sampling mass; 1 = off")->capture_default_str();
  cmd.add_option("--min-p", p.min_p, "drop tokens below min-p x the top probability; 0 = off")
      ->capture_default_str();
  cmd.add_option("--repeat-penalty", p.repeat_penalty, "penalty for repeated tokens; 1 = off")
      ->capture_default_str();
  cmd.add_option("--repeat-last-n", p.repeat_last_n, "window for the repeat penalty")->capture_default_str();
  cmd.add_option("--presence-penalty", p.presence_penalty, "OpenAI-style presence penalty")
      ->capture_default_str();
  cmd.add_option("--frequency-penalty", p.frequency_penalty, "OpenAI-style frequency penalty")
      ->capture_default_str();
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

uint64_t parse_bytes(const std::string& s, const char* what) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  std::string unit = s.substr(std::min(used, s.size()));
  while (!unit.empty() && unit.front() == ' ') unit.erase(unit.begin());
  for (char& c : unit) c = char(std::toupper(static_cast<unsigned char>(c)));
  double mult = 0;
  const char* const prefixes = "KMGT";
  if (unit.empty() || unit == "B") {
    mult = 1;
  } else if (std::strchr(prefixes, unit[0]) != nullptr &&
             (unit.size() == 1 || unit.substr(1) == "IB" || unit.substr(1) == "B")) {
    const int k = int(std::strchr(prefixes, unit[0]) - prefixes) + 1;
    mult = std::pow(unit.substr(1) == "B" ? 1000.0 : 1024.0, k);
  }
  if (used == 0 || mult == 0 || !std::isfinite(v) || v <= 0 || v * mult >= 1.8e19) {
    throw InvalidArgument(fmt::format("{}: '{}' is not a size (e.g. 2GiB, 512MiB, 1.5G, or bytes)", what, s));
  }
  return uint64_t(v * mult);
}

size_t peak_rss_bytes() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return size_t(ru.ru_maxrss) * 1024;
}

int parse_gpu_layers(const std::string& s) {
  if (s == "auto" || s.empty()) return kGpuLayersAuto;
  if (s == "all") return kGpuLayersAll;
  int n = 0;
  size_t used = 0;
  try {
    n = std::stoi(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != s.size() || n < -1)
    throw InvalidArgument(
        fmt::format("--gpu-layers: expected auto, all, -1 (all) or a count >= 0, got '{}'", s));
  return n < 0 ? kGpuLayersAll : n;
}

SessionOptions auto_session_options(const CommonOptions& o, const std::string& model_path, bool quiet,
                                    int* gpu_layers, int parallel) {
  const bool kv_given = o.kv_opt && o.kv_opt->count() > 0;
  const bool batch_given = o.batch_opt && o.batch_opt->count() > 0;
  PlanRequest req;
  req.n_ctx = o.ctx;
  req.threads = o.threads;
  req.kv_type = kv_given ? o.kv : "";
  req.batch = batch_given ? o.batch : 0;
  req.gpu_layers = parse_gpu_layers(o.gpu_layers);
  req.parallel = parallel;

  DetectOptions det;
  det.measure_bandwidth = false;  // only the planner's speed estimate uses it
  HardwareInfo hw = detect_hardware(det);
  auto file = GgufFile::open(model_path);
  // A stored `qleap tune` result for this model on this machine fills what the user left open (its
  // KV type, e.g. q8_0, may be outside the planner's defaults: sized too).
  const auto t = load_tuned(tune_store_path(), TuneKey{model_identity(model_path), machine_identity(hw)});
  std::vector<std::string> kv_types = planner_kv_types();
  for (const std::string& k : {kv_given ? o.kv : std::string(), t ? t->settings.kv_type : std::string()})
    if (!k.empty() && std::find(kv_types.begin(), kv_types.end(), k) == kv_types.end()) kv_types.push_back(k);
  const ModelInfo info = model_info_from_gguf(*file, kv_types);

  std::string tuned_note;
  if (t) {
    if (req.threads == 0) req.threads = t->settings.threads;
    if (req.batch == 0) req.batch = t->settings.batch;
    if (!kv_given && info.has_kv(t->settings.kv_type)) req.kv_type = t->settings.kv_type;
    tuned_note = fmt::format("using tuned plan from {} (measured {:.1f} tok/s decode)", tune_store_path(),
                             t->tg_tok_s);
  }

  Plan plan = make_plan(hw, info, req);
  int ngl = plan.gpu_layers;
  // The planner also places MoE models (attention on the GPU, experts in RAM), which the engine
  // cannot run yet: MoE layers have no device path (model/blocks.cpp prepare_layer).
  const bool moe_on_gpu = ngl > 0 && info.is_moe() && req.gpu_layers == kGpuLayersAuto;
  if (ngl > 0 && (!build_has_gpu_offload() || moe_on_gpu)) {
    if (!quiet) {
      std::cerr << fmt::format(
          "[plan wanted {} GPU layers on {}, but {}: planning for the CPU]\n", ngl, plan.gpu_name,
          moe_on_gpu ? "MoE layers run on the CPU only (experts can go to the GPU with --expert-tier cuda)"
                     : "GPU offload is unavailable in this build");
    }
    hw.gpus.clear();
    plan = make_plan(hw, info, req);
    ngl = 0;
  }
  // An explicit count goes to the session as given: it places the layers, or says why it cannot
  // (no CUDA device) instead of the request vanishing in the plan.
  const int session_gpu_layers =
      req.gpu_layers == kGpuLayersAuto ? ngl : (req.gpu_layers == kGpuLayersAll ? -1 : req.gpu_layers);
  if (gpu_layers) *gpu_layers = session_gpu_layers;
  if (!quiet) {
    if (!tuned_note.empty()) std::cerr << "[" << tuned_note << "]\n";
    std::cerr << fmt::format("[plan: ctx {}, KV {}, {} threads, batch {}, {}{}]\n", plan.n_ctx, plan.kv_type,
                             plan.threads, plan.batch,
                             ngl > 0 ? fmt::format("{} GPU layers", ngl) : std::string("CPU only"),
                             plan.fits ? "" : "; does NOT fit in memory, see `qleap plan`");
    // Say why a compressed cache was chosen (the planner's reason names what f16 would have needed).
    if (!kv_given && plan.kv_type != planner_kv_types().front()) {
      for (const auto& r : plan.reasons)
        if (r.rfind("KV " + planner_kv_types().front() + " would need", 0) == 0)
          std::cerr << "[" << r << "]\n";
    }
  }
  SessionOptions so = to_session_options(plan);
  so.gpu_layers = session_gpu_layers;
  so.kv_calibration_dir = default_kv_calibration_dir();
  return so;
}

// QLEAP_HOST / --host: "host", "host:port", "http://host:port", ":port".
void parse_host(std::string s, std::string& host, int& port) {
  for (const char* p : {"http://", "https://"}) {
    if (s.rfind(p, 0) == 0) s = s.substr(std::string_view(p).size());
  }
  if (!s.empty() && s.back() == '/') s.pop_back();
  const size_t c = s.rfind(':');
  if (c != std::string::npos && s.find(']') == std::string::npos && s.find(':') == c) {
    const std::string ps = s.substr(c + 1);
    char* end = nullptr;
    const long v = std::strtol(ps.c_str(), &end, 10);
    if (ps.empty() || *end || v < 0 || v > 65535)
      throw InvalidArgument(fmt::format("invalid port in '{}'", s));
    port = int(v);
    s.resize(c);
  }
  if (!s.empty()) host = s;
}

void serve_address(std::string& host, int& port) {
  host = "127.0.0.1";
  port = 11435;
  if (const char* env = std::getenv("QLEAP_HOST"); env && *env) parse_host(env, host, port);
}

}  // namespace qleap::cli
