// `qleap info`: what a GGUF file holds (metadata, tensor types, memory needed), or the machine
// when no model is given (CPU, RAM, measured bandwidth, GPUs).
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "autoconf/hardware.h"
#include "autoconf/readiness.h"
#include "backend/cpu/matmul.h"
#include "backend/cpu/packed_weights.h"
#include "cli/common.h"
#include "core/cpu_features.h"
#include "gguf/gguf.h"
#include "model/model.h"
#include "runtime/session.h"

namespace qleap::cli {
namespace {

struct InfoOptions {
  std::string model;
  bool tensors = false;
  bool json = false;
  int ctx = 4096;
  int batch = 512;
  std::string kv = "f16";
};

// The default model's download size and its f16 KV cache at the default context (4096 positions x
// 30 layers x 3 KV heads x 64 x K and V x 2 bytes), for the memory check when it is not in the store.
constexpr uint64_t kDefaultModelBytes = 98362432;
constexpr uint64_t kDefaultKvBytes = uint64_t(4096) * 30 * 3 * 64 * 2 * 2;

std::vector<std::string> machine_warnings(const HardwareInfo& hw) {
  ReadinessInput in;
  in.hw = &hw;
  std::error_code ec;
  const auto size = std::filesystem::file_size(models_dir() + "/" + kDefaultModel, ec);
  in.default_model_bytes = ec ? kDefaultModelBytes : uint64_t(size);
  in.default_kv_bytes = kDefaultKvBytes;
  int port = 0;
  std::string host;
  serve_address(host, port);
  in.serve_addr = fmt::format("{}:{}", host, port);
  in.port_in_use = tcp_port_in_use(host, port);
  return readiness_warnings(in);
}

void print_machine(bool json) {
  const HardwareInfo hw = detect_hardware();
  const std::vector<std::string> warnings = machine_warnings(hw);
  if (json) {
    nlohmann::json j = to_json(hw);
    j["warnings"] = warnings;
    std::cout << j.dump(2) << "\n";
    return;
  }
  const auto& f = cpu_features();
  fmt::print("CPU:        {}\n", hw.cpu_model);
  fmt::print("cores:      {} physical, {} logical (default threads: {})\n", hw.physical_cores,
             hw.logical_cpus, hw.physical_cores);
  fmt::print(
      "SIMD:       {} (avx2={} fma={} f16c={} avx512f={} avx512bw={} avx512vnni={} avx512bf16={} amx-int8={} "
      "amx-bf16={})\n",
      hw.isa, f.avx2, f.fma, f.f16c, f.avx512f, f.avx512bw, f.avx512vnni, f.avx512bf16, f.amx_int8,
      f.amx_bf16);
  if (!amx_note().empty()) fmt::print("note:       {}\n", amx_note());
  fmt::print("matmul:     {}\n", matmul_path_summary());
  fmt::print("RAM:        {} total, {} available\n", human_bytes(double(hw.ram_total)),
             human_bytes(double(hw.ram_available)));
  if (hw.mem_bw_source == "remembered") {
    fmt::print(
        "memory bw:  {:.1f} GB/s read (remembered from `qleap tune`; probe now {:.1f} GB/s, {} threads)\n",
        hw.mem_bw_gbps, hw.mem_bw_probe_gbps, hw.physical_cores);
  } else {
    fmt::print("memory bw:  {:.1f} GB/s read (best of 5 probes, {} threads{})\n", hw.mem_bw_gbps,
               hw.physical_cores,
               hw.mem_bw_busy ? "; machine looked busy, run `qleap tune` on a quiet machine" : "");
  }
  if (hw.gpus.empty()) fmt::print("GPUs:       none detected (NVIDIA via libcuda.so.1, AMD via sysfs)\n");
  for (const auto& g : hw.gpus) {
    std::string line = fmt::format("GPU {} {}:  {}", g.vendor, g.index, g.name);
    if (g.vram_total) {
      line += fmt::format(", VRAM {} total", human_bytes(double(g.vram_total)));
      if (g.vram_free) line += fmt::format(" / {} free", human_bytes(double(g.vram_free)));
    }
    if (g.vendor == "nvidia") line += fmt::format(", compute capability {}.{}", g.cc_major, g.cc_minor);
    line += g.supported ? ", supported" : ", unsupported";
    if (!g.note.empty()) line += " (" + g.note + ")";
    fmt::print("{}\n", line);
  }
  for (const auto& n : hw.notes) fmt::print("note:       {}\n", n);
  for (const auto& w : warnings) fmt::print("warning:    {}\n", w);
  if (warnings.empty()) fmt::print("ready:      nothing to fix before `qleap run` / `qleap serve`\n");
}

void info_command(const InfoOptions& o) {
  if (o.model.empty()) {
    print_machine(o.json);
    return;
  }
  const std::string path = resolve_model(o.model);
  auto file = GgufFile::open(path);

  std::map<std::string, std::pair<int, uint64_t>> by_type;
  for (const auto& t : file->tensors()) {
    auto& e = by_type[type_name(t.type)];
    e.first++;
    e.second += t.nbytes;
  }
  // Storage bits per weight of each tensor type, from its block layout.
  std::map<std::string, double> bpw;
  for (const auto& t : file->tensors()) bpw[type_name(t.type)] = bits_per_weight(t.type);
  int64_t n_params = 0;
  for (const auto& t : file->tensors()) n_params += t.n_elements();

  // KV bytes come from the cache implementation itself, so the figure is what a session allocates.
  size_t kv_per_token = 0, kv_fixed = 0;  // fixed: not per token (TurboQuant's exact sink and window)
  std::string kv_note;
  std::string repacked = "not loaded";
  size_t repacked_bytes = 0, released_bytes = 0;
  try {
    auto model = load_model(path);
    // What a CPU run repacks (a GPU run repacks only the layers left on the CPU).
    model->prepare_host(0, model->hparams().n_layers, true, true);
    repacked = model->prepared().describe();
    repacked_bytes = model->prepared().bytes();
    released_bytes = model->prepared().released_bytes();
    // At the context of the estimate: exact rows (TurboQuant's recent window) are capped by it. The
    // records are allocated but never touched, so this costs address space, not memory.
    // The run's batch: a sliding-window layer's ring holds window + min(batch, 64) - 1 positions.
    SessionOptions po{std::max(o.ctx, 16), 1, o.kv, std::max(1, o.batch)};
    po.calibrate_kv = false;  // sizes only
    Session probe(model, po);
    const KvUsage u = probe.kv_usage();
    kv_per_token = u.bytes_per_token;
    kv_fixed = u.fixed_bytes;
  } catch (const std::exception& e) {
    kv_note = e.what();
  }

  if (o.json) {
    nlohmann::json j;
    j["path"] = path;
    j["version"] = file->version();
    j["alignment"] = file->alignment();
    j["n_tensors"] = file->tensors().size();
    j["n_params"] = n_params;
    j["tensor_bytes"] = file->tensor_bytes();
    for (const auto& [k, v] : file->metadata()) j["metadata"][k] = v.to_display(16);
    for (const auto& [k, v] : by_type) {
      j["types"][k] = {{"count", v.first}, {"bytes", v.second}, {"bits_per_weight", bpw.at(k)}};
    }
    j["kv_bytes_per_token"] = kv_per_token;
    j["kv_fixed_bytes"] = kv_fixed;
    j["repacked_bytes"] = repacked_bytes;
    j["released_gguf_bytes"] = released_bytes;
    j["cpu_kernels"] = matmul_path_summary();
    if (o.tensors) {
      for (const auto& t : file->tensors()) {
        j["tensors"].push_back(
            {{"name", t.name}, {"type", type_name(t.type)}, {"shape", t.shape}, {"bytes", t.nbytes}});
      }
    }
    std::cout << j.dump(2) << "\n";
    return;
  }

  fmt::print("file:        {}\n", path);
  fmt::print("GGUF:        v{}, {} metadata keys, {} tensors, alignment {}\n", file->version(),
             file->metadata().size(), file->tensors().size(), file->alignment());
  fmt::print("arch:        {}   name: {}\n", file->architecture(), file->get_string("general.name", "?"));
  fmt::print("parameters:  {:.1f} M\n", double(n_params) / 1e6);
  if (const GgufValue* ne = file->find_arch("expert_count"); ne != nullptr && ne->as_int() > 0) {
    // Only k of the n experts run per token: the parameters a token touches.
    const GgufValue* nu = file->find_arch("expert_used_count");
    const double n = double(ne->as_int()), k = nu ? double(nu->as_int()) : 0.0;
    double expert_params = 0;
    for (const auto& t : file->tensors()) {
      if (t.name.find("_exps.") != std::string::npos) expert_params += double(t.n_elements());
    }
    fmt::print("experts:     {:.0f} per layer, {:.0f} per token; {:.1f} M parameters active per token\n", n,
               k, (double(n_params) - expert_params * (1.0 - k / n)) / 1e6);
  }
  fmt::print("weights:     {} ({:.2f} bits/weight)\n", human_bytes(double(file->tensor_bytes())),
             8.0 * double(file->tensor_bytes()) / double(std::max<int64_t>(1, n_params)));
  fmt::print("tensor types:\n");
  for (const auto& [k, v] : by_type) {
    fmt::print("  {:<7} {:>4} tensors  {:>9}  {:.4g} bits/weight\n", k, v.first,
               human_bytes(double(v.second)), bpw.at(k));
  }
  if (kv_per_token) {
    const double kv_total = double(kv_per_token) * o.ctx + double(kv_fixed);
    fmt::print("KV cache ({}): {} per token{}; {} at ctx {}\n", o.kv, human_bytes(double(kv_per_token)),
               kv_fixed ? fmt::format(" + {} fixed", human_bytes(double(kv_fixed))) : "",
               human_bytes(kv_total), o.ctx);
    fmt::print("memory estimate at ctx {}: {} (weights, mmapped) + {} (KV)\n", o.ctx,
               human_bytes(double(file->tensor_bytes())), human_bytes(kv_total));
  } else {
    fmt::print("KV cache: cannot size ({})\n", kv_note);
  }
  fmt::print("CPU kernels: {}\n", matmul_path_summary());
  fmt::print("repacked:    {}{}\n", repacked,
             repacked_bytes ? fmt::format(" for the CPU kernels; their GGUF pages ({}) are released after "
                                          "repacking (--no-repack / QLEAP_REPACK=0: keep GGUF layout)",
                                          human_bytes(double(released_bytes)))
                            : "");
  fmt::print("metadata:\n");
  for (const auto& [k, v] : file->metadata()) fmt::print("  {:<44} {}\n", k, v.to_display());
  if (o.tensors) {
    fmt::print("tensors:\n");
    for (const auto& t : file->tensors()) {
      std::string shape;
      for (size_t d = 0; d < t.shape.size(); ++d) shape += (d ? " x " : "") + std::to_string(t.shape[d]);
      fmt::print("  {:<36} {:<7} [{}] {}\n", t.name, type_name(t.type), shape, human_bytes(double(t.nbytes)));
    }
  }
}

}  // namespace

void register_info(CLI::App& app) {
  auto opt = std::make_shared<InfoOptions>();
  auto* cmd = app.add_subcommand(
      "info", "Show a model's metadata, tensor types and memory needs (no model: this machine)");
  cmd->add_option("model", opt->model, "GGUF file or model name");
  cmd->add_flag("--tensors", opt->tensors, "list every tensor");
  cmd->add_flag("--json", opt->json, "machine-readable output");
  cmd->add_option("-c,--ctx", opt->ctx, "context length for the memory estimate")->capture_default_str();
  cmd->add_option("--kv", opt->kv, "KV cache type for the estimate")->capture_default_str();
  cmd->add_option("-b,--batch", opt->batch,
                  "prompt tokens per forward pass, as `run -b` (sliding-window layers keep window + "
                  "min(batch, 64) - 1 positions)")
      ->check(CLI::Range(1, 8192))
      ->capture_default_str();
  cmd->add_flag_callback(
      "--no-repack", [] { set_repack_enabled(false); }, "report without the interleaved weight copy");
  cmd->callback([opt] { info_command(*opt); });
}

}  // namespace qleap::cli
