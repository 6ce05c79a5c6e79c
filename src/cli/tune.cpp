// `qleap tune MODEL`: measures a few candidate settings around the planner's choice (short prefill +
// decode on random tokens), stores the fastest for this model file and machine, and reports it
// against the default. Later `run`/`serve` invocations pick it up.
#include <fmt/format.h>

#include <chrono>
#include <ctime>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "autoconf/hardware.h"
#include "autoconf/memory_bandwidth.h"
#include "autoconf/planner.h"
#include "autoconf/tuner.h"
#include "cli/common.h"
#include "core/timer.h"
#include "gguf/gguf.h"
#include "model/model.h"

namespace qleap::cli {
namespace {

struct TuneCliOptions {
  std::string model;
  int n_prompt = 128;
  int n_gen = 32;
  int reps = 2;
  std::vector<std::string> kv_types = {"f16", "q8_0"};
  bool json = false;
  bool dry_run = false;
};

std::string now_iso() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::tm tm{};
  gmtime_r(&t, &tm);
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string label(const TuneSettings& s) {
  return fmt::format("threads {:>2}, batch {:>3}, KV {:<4}", s.threads, s.batch, s.kv_type);
}

void tune_command(const TuneCliOptions& o) {
  const std::string path = resolve_model(o.model);
  Stopwatch total;
  DetectOptions det;
  det.measure_bandwidth = false;
  const HardwareInfo hw = detect_hardware(det);
  auto model = load_model(path);
  const ModelInfo info = model_info_from_gguf(model->file());
  // The default to beat is what `run` does without tuning: the planner's CPU plan.
  HardwareInfo cpu_hw = hw;
  if (!build_has_gpu_offload()) cpu_hw.gpus.clear();
  const Plan plan = make_plan(cpu_hw, info, PlanRequest{});
  TuneSettings start{plan.threads, plan.batch, plan.kv_type};

  TuneOptions to;
  to.n_prompt = o.n_prompt;
  to.n_gen = o.n_gen;
  to.reps = o.reps;
  to.kv_types = o.kv_types;
  if (!o.json) {
    fmt::print("tuning {} on {} ({} cores): prefill {} + decode {} tokens, best of {}\n", path, hw.cpu_model,
               hw.physical_cores, to.n_prompt, to.n_gen, to.reps);
  }
  const TuneResult r = tune(model, hw, start, to, [&](const TuneMeasurement& m) {
    if (!o.json) {
      fmt::print("  {}  pp {:8.1f} tok/s  tg {:7.1f} tok/s  {:6.3f} s\n", label(m.settings), m.pp_tok_s,
                 m.tg_tok_s, m.seconds);
    }
  });

  // The machine's read bandwidth, best of many short probes; remembered for this machine so that a
  // later quick probe on a busy machine does not lower the planner's decode ceiling.
  BandwidthResult bw;
  {
    ThreadPool bw_pool(hw.physical_cores);
    bw = measure_read_bandwidth(bw_pool, size_t(256) << 20, 12);
  }
  if (!o.dry_run && bw.read_gbps > 0) {
    save_machine_bandwidth(tune_store_path(), machine_identity(hw),
                           RememberedBandwidth{bw.read_gbps, now_iso()});
  }
  if (!o.json) {
    fmt::print(
        "memory read bandwidth: {:.1f} GB/s (best of {} probes of {} with {} threads; median {:.1f}){}\n",
        bw.read_gbps, bw.probes, human_bytes(double(bw.buffer_bytes)), bw.threads, bw.median_gbps,
        bw.busy ? " - the machine looked busy: " + bw.note : "");
  }

  const TuneKey key{model_identity(path), machine_identity(hw)};
  TunedEntry e;
  e.settings = r.best.settings;
  e.pp_tok_s = r.best.pp_tok_s;
  e.tg_tok_s = r.best.tg_tok_s;
  e.baseline = r.baseline;
  e.model_path = path;
  e.tuned_at = now_iso();
  if (!o.dry_run) save_tuned(tune_store_path(), key, e);

  if (o.json) {
    nlohmann::json j;
    j["model"] = path;
    j["store"] = o.dry_run ? "" : tune_store_path();
    auto mj = [](const TuneMeasurement& m) {
      return nlohmann::json{{"threads", m.settings.threads}, {"batch", m.settings.batch},
                            {"kv_type", m.settings.kv_type}, {"pp_tok_s", m.pp_tok_s},
                            {"tg_tok_s", m.tg_tok_s},        {"seconds", m.seconds}};
    };
    j["default"] = mj(r.baseline);
    j["chosen"] = mj(r.best);
    j["confirmed"] = r.confirmed;
    for (const auto& m : r.all) j["measured"].push_back(mj(m));
    j["tune_seconds"] = total.elapsed();
    j["mem_bw"] = {{"gbps", bw.read_gbps}, {"median_gbps", bw.median_gbps},
                   {"probes", bw.probes},  {"busy", bw.busy},
                   {"note", bw.note},      {"cpu_share", bw.cpu_share}};
    std::cout << j.dump(2) << "\n";
    return;
  }
  fmt::print("default: {}  pp {:8.1f} tok/s  tg {:7.1f} tok/s\n", label(r.baseline.settings),
             r.baseline.pp_tok_s, r.baseline.tg_tok_s);
  fmt::print(
      "chosen:  {}  pp {:8.1f} tok/s  tg {:7.1f} tok/s  ({:+.1f}% prefill, {:+.1f}% decode, workload "
      "{:.2f}x)\n",
      label(r.best.settings), r.best.pp_tok_s, r.best.tg_tok_s,
      100.0 * (r.best.pp_tok_s / r.baseline.pp_tok_s - 1),
      100.0 * (r.best.tg_tok_s / r.baseline.tg_tok_s - 1), r.baseline.seconds / r.best.seconds);
  if (r.confirmed) {
    fmt::print("(default and chosen re-measured alternately at the end; the figures above are those)\n");
  } else if (r.all.size() > 1) {
    fmt::print(
        "(no candidate beat the default by 3% when re-measured alternately with it: keeping the default)\n");
  }
  if (o.dry_run) {
    fmt::print("not stored (--dry-run); tuning took {:.1f} s\n", total.elapsed());
  } else {
    fmt::print(
        "stored in {} (tuning took {:.1f} s); `qleap run`/`serve` use it for this model on this machine\n",
        tune_store_path(), total.elapsed());
  }
}

}  // namespace

void register_tune(CLI::App& app) {
  auto opt = std::make_shared<TuneCliOptions>();
  auto* cmd = app.add_subcommand(
      "tune", "Measure candidate settings for a model and store the fastest for this machine");
  cmd->add_option("model", opt->model,
                  "GGUF file or model name (default: " + std::string(kDefaultModel) + ")");
  cmd->add_option("-p,--n-prompt", opt->n_prompt, "prompt tokens per measurement")
      ->check(CLI::Range(1, 8192))
      ->capture_default_str();
  cmd->add_option("-n,--n-gen", opt->n_gen, "decoded tokens per measurement")
      ->check(CLI::Range(0, 4096))
      ->capture_default_str();
  cmd->add_option("-r,--reps", opt->reps, "repetitions (best of)")
      ->check(CLI::Range(1, 100))
      ->capture_default_str();
  cmd->add_option("--kv-types", opt->kv_types, "KV cache types to try (quality must be acceptable to you)")
      ->capture_default_str();
  cmd->add_flag("--dry-run", opt->dry_run, "measure and report, but do not store");
  cmd->add_flag("--json", opt->json, "machine-readable output");
  cmd->callback([opt] { tune_command(*opt); });
}

}  // namespace qleap::cli
