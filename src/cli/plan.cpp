// `qleap plan MODEL --ctx N`: what the planner would choose on this machine (GPU layers, expert
// placement, KV type, threads, batch) and why. --hardware FILE plans for another machine described
// by `qleap info --json`.
#include <fmt/format.h>

#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "autoconf/hardware.h"
#include "autoconf/planner.h"
#include "cli/common.h"
#include "core/error.h"
#include "gguf/gguf.h"

namespace qleap::cli {
namespace {

struct PlanOptions {
  CommonOptions common;
  std::string hardware;
  int parallel = 1;
  bool json = false;
};

void plan_command(const PlanOptions& o) {
  const std::string path = resolve_model(o.common.model);
  HardwareInfo hw;
  if (!o.hardware.empty()) {
    std::ifstream in(o.hardware);
    if (!in) throw IoError("cannot open " + o.hardware);
    try {
      hw = hardware_from_json(nlohmann::json::parse(in));
    } catch (const nlohmann::json::exception& e) {
      throw InvalidArgument(
          fmt::format("{}: not a `qleap info --json` machine description ({})", o.hardware, e.what()));
    }
  } else {
    hw = detect_hardware();
  }
  auto file = GgufFile::open(path);
  const bool kv_given = o.common.kv_opt && o.common.kv_opt->count() > 0;
  std::vector<std::string> kv_types = planner_kv_types();
  if (kv_given && std::find(kv_types.begin(), kv_types.end(), o.common.kv) == kv_types.end()) {
    kv_types.push_back(o.common.kv);
  }
  const ModelInfo info = model_info_from_gguf(*file, kv_types);
  PlanRequest req;
  req.n_ctx = o.common.ctx;
  req.threads = o.common.threads;
  req.kv_type = kv_given ? o.common.kv : "";
  req.batch = o.common.batch_opt && o.common.batch_opt->count() > 0 ? o.common.batch : 0;
  req.gpu_layers = parse_gpu_layers(o.common.gpu_layers);
  req.parallel = o.parallel;
  const Plan p = make_plan(hw, info, req);
  const bool offload_note = p.gpu_layers > 0 && !build_has_gpu_offload();
  if (o.json) {
    nlohmann::json j = {{"model", path}, {"hardware", to_json(hw)}, {"plan", to_json(p)}};
    j["gpu_offload_in_build"] = build_has_gpu_offload();
    std::cout << j.dump(2) << "\n";
    return;
  }
  fmt::print("file:        {}\n", path);
  fmt::print("machine:     {}, {} cores, {}, {} RAM available{}\n", hw.cpu_model, hw.physical_cores, hw.isa,
             human_bytes(double(hw.ram_available)),
             hw.best_gpu() ? fmt::format(", GPU {}", hw.best_gpu()->name) : std::string());
  fmt::print("{}", describe_plan(p, info));
  if (offload_note) {
    fmt::print(
        "note:        this build cannot offload layers to the GPU yet; `qleap run` will use the CPU plan\n");
  }
}

}  // namespace

void register_plan(CLI::App& app) {
  auto opt = std::make_shared<PlanOptions>();
  auto* cmd =
      app.add_subcommand("plan", "Show the settings the planner picks for a model on this machine, and why");
  add_common_options(*cmd, opt->common);
  cmd->add_option("--hardware", opt->hardware,
                  "plan for the machine described in this `qleap info --json` file");
  cmd->add_option("--parallel", opt->parallel,
                  "sequences served at once (`serve --parallel`), each with a KV cache")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  cmd->add_flag("--json", opt->json, "machine-readable output");
  cmd->callback([opt] { plan_command(*opt); });
}

}  // namespace qleap::cli
