// Shared pieces of the qleap subcommands: model lookup, flags that several commands take, and
// small formatting helpers.
#pragma once
#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>

#include "runtime/session.h"
#include "sampling/sampler.h"

namespace qleap::cli {

// Resolves a model argument: an existing file path, or a name looked up in the model store
// ($QLEAP_MODELS or ~/.qleap/models; "name", "name.gguf" or a unique prefix). Throws
// InvalidArgument listing what the store holds when nothing matches.
std::string resolve_model(const std::string& name_or_path);
std::string models_dir();
// The model used when none is given.
constexpr const char* kDefaultModel = "SmolLM2-135M-Instruct.Q4_1.gguf";

struct CommonOptions {
  std::string model;
  int threads = 0;  // 0: one per physical core
  int ctx = 0;      // 0: min(model context, 4096)
  std::string kv = "f16";
  int batch = 512;
  std::string gpu_layers = "auto";  // "auto", "all", or a count (-ngl)
  // Set by add_common_options; count() tells whether the user gave the flag (the planner fills the rest).
  CLI::Option* kv_opt = nullptr;
  CLI::Option* batch_opt = nullptr;
};
void add_common_options(CLI::App& cmd, CommonOptions& o, bool model_positional = true);

// Parses --gpu-layers: "auto" -> kGpuLayersAuto, "all" or negative -> kGpuLayersAll, else the count.
// Throws InvalidArgument.
int parse_gpu_layers(const std::string& s);

// Session options for `run`/`serve`: the flags the user gave, the rest from the planner (or from a
// stored `qleap tune` result for this model and machine). Prints a one-line summary on stderr
// unless quiet. gpu_layers receives the planned layer count (0 when this build cannot offload).
SessionOptions auto_session_options(const CommonOptions& o, const std::string& model_path, bool quiet,
                                    int* gpu_layers = nullptr, int parallel = 1);

void add_sampling_options(CLI::App& cmd, SamplerParams& p);

// QLEAP_HOST / --host: "host", "host:port", "http://host:port", ":port" (InvalidArgument on a bad port).
void parse_host(std::string s, std::string& host, int& port);
// Where `qleap serve` listens by default: 127.0.0.1:11435, or $QLEAP_HOST.
void serve_address(std::string& host, int& port);

std::string human_bytes(double bytes);
// A size such as "2GiB", "1.5G", "512MiB", "300M", "4096" (bytes): K/M/G/T with or without "iB" are
// binary (1024-based), "KB"/"MB"/"GB"/"TB" decimal. Throws InvalidArgument naming `what` otherwise.
uint64_t parse_bytes(const std::string& s, const char* what);
// Peak resident set size of this process, in bytes.
size_t peak_rss_bytes();

// Each subcommand file defines one of these; main.cpp wires them up.
void register_run(CLI::App& app);
void register_info(CLI::App& app);
void register_convert(CLI::App& app);
void register_bench(CLI::App& app);
void register_perplexity(CLI::App& app);
void register_serve(CLI::App& app);
void register_models(CLI::App& app);  // list, pull, rm, ps
void register_plan(CLI::App& app);
void register_tune(CLI::App& app);
void register_profile(CLI::App& app);
void register_compare(CLI::App& app);
void register_passkey(CLI::App& app);
void register_completion(CLI::App& app);  // needs every other subcommand registered first

}  // namespace qleap::cli
